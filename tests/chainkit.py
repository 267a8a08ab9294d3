"""Helpers for the chain tests: build an org's chain of an exact length, run SQL as an attacker would, and ask
the command line for its verdict."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from app import db
from app.models import Org
from tests.factories import finding, make_org, make_token, post, seed

FUTURE = "2100-01-01T00:00:00Z"  # `retention run --now` far enough ahead to age out everything


def build_chain(app: Flask, client: FlaskClient, slug: str = "acme", size: int = 1000, per_upload: int = 100) -> str:
    """An org whose chain holds exactly `size` entries: 2 audit events (seq 1, 2), then findings; its token."""
    make_org(app, slug, block_action="block_pull")  # audit event: settings.changed
    token = make_token(app, slug)  # audit event: token.created
    left, n = size - 2, 0
    while left > 0:
        count = min(per_upload, left)
        findings = [finding(f"CVE-2024-{n + i:05d}", ("low", "high", "medium")[i % 3]) for i in range(count)]
        body = seed(findings, image_ref=f"ghcr.io/{slug}/app:{n}")
        response = post(client, token, body, slug=slug)
        assert response.status_code == 202, response.get_data(as_text=True)
        left, n = left - count, n + count
    return token


def org_id(app: Flask, slug: str) -> int:
    with app.app_context():
        return db.session().scalars(sa.select(Org.id).where(Org.slug == slug)).one()


def sql(app: Flask, *statements: str, **params: Any) -> None:
    """Run statements in one transaction, straight on the database (as someone with database access would)."""
    engine = app.extensions["fremforge.db"].engine
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(sa.text(statement), params)


def scalar(app: Flask, statement: str, **params: Any) -> Any:
    with app.extensions["fremforge.db"].engine.connect() as conn:
        return conn.execute(sa.text(statement), params).scalar()


def verdict(app: Flask, slug: str = "acme", *args: str) -> tuple[int, dict[str, Any]]:
    """`flask chain verify SLUG --json [args]`: its exit code and verdict."""
    result = app.test_cli_runner().invoke(args=["chain", "verify", slug, "--json", *args])
    assert (result.exit_code in (0, 1) and result.exception is None) or result.exit_code == 1, result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, json.loads(result.stdout)


def fake_hash(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()
