"""Test data builders: orgs, tokens, upload bodies, and a census of stored rows."""

from __future__ import annotations

import gzip
import json
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from app import db, orgs, tokens
from app.db import Base, write_transaction
from app.models import Org
from app.policy import settings as policy_settings
from tests import paths

SHA = "0123456789abcdef0123456789abcdef01234567"
SHA2 = "89abcdef0123456789abcdef0123456789abcdef"
REPO = "acme/api"
FIXTURES = paths.FIXTURES
TRIVY_REPORTS = sorted((FIXTURES / "trivy").glob("*.json")) + sorted((FIXTURES / "trivy-defectdojo").glob("*.json"))
ALL_SCOPES = list(tokens.SCOPES)


def make_org(app: Flask, slug: str = "acme", github_login: str | None = None, **policy: Any) -> Org:
    with app.app_context():
        session = db.session()
        with write_transaction(session):
            org = orgs.create(session, slug, github_login)
            if policy:
                policy_settings.apply(
                    session, orgs.settings_of(session, org.id), policy_settings.parse_change(policy), actor="test"
                )
        return org


def set_policy(app: Flask, slug: str, **policy: Any) -> None:
    with app.app_context():
        session = db.session()
        org = orgs.by_slug(session, slug)
        assert org is not None
        with write_transaction(session):
            policy_settings.apply(
                session, orgs.settings_of(session, org.id), policy_settings.parse_change(policy), actor="test"
            )


def make_token(app: Flask, slug: str = "acme", scopes: list[str] | None = None, expires_days: int | None = None) -> str:
    with app.app_context():
        session = db.session()
        org = orgs.by_slug(session, slug)
        assert org is not None
        with write_transaction(session):
            return tokens.create(session, org, scopes or ALL_SCOPES, "test", expires_days).secret


def finding(
    cve_id: str = "CVE-2023-1234",
    severity: str = "high",
    package: str = "openssl",
    installed: str = "3.0.1",
    fixed: str | None = "3.0.7",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "cve_id": cve_id,
        "severity": severity,
        "package_name": package,
        "installed_version": installed,
        "fixed_version": fixed,
        **extra,
    }


def seed(
    findings: list[dict[str, Any]] | None = None,
    image_ref: str = "ghcr.io/acme/api:1",
    sha: str = SHA,
    repo: str = REPO,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "image_ref": image_ref,
        "commit_sha": sha,
        "repo_full_name": repo,
        "findings": [finding()] if findings is None else findings,
        **extra,
    }


def post(
    client: FlaskClient,
    token: str | None,
    body: Any = None,
    *,
    slug: str = "acme",
    raw: bytes | None = None,
    gz: bool = False,
    content_type: str = "application/json",
    query: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    data = raw if raw is not None else json.dumps(body).encode()
    hdrs = {"Content-Type": content_type, **(headers or {})}
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    if gz:
        data = gzip.compress(data)
        hdrs["Content-Encoding"] = "gzip"
    return client.post(f"/api/v1/orgs/{slug}/image-scans/findings", data=data, headers=hdrs, query_string=query)


def stored_scan(client: FlaskClient, token: str, slug: str = "acme", **seed_fields: Any) -> int:
    """Upload `seed(**seed_fields)` to org `slug`; the id of the scan stored (the answer must be a 202)."""
    r = post(client, token, seed(**seed_fields), slug=slug)
    assert r.status_code == 202, r.get_json()
    return int(r.get_json()["scan_run_id"])


def census(app: Flask) -> dict[str, int]:
    """Rows per table: what a refused request must leave unchanged."""
    with app.app_context():
        session = db.session()
        return {
            t.name: session.scalar(sa.select(sa.func.count()).select_from(t)) or 0 for t in Base.metadata.sorted_tables
        }
