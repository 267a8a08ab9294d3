"""Thin views of the findings API: upload a scan, list scans, read one scan with its findings."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import sqlalchemy as sa
from flask import Blueprint, current_app, request
from flask.typing import ResponseReturnValue
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app import advisories, db, fields, policy
from app.findings import queries, schemas, service
from app.github.outbox import delivery_state
from app.models import Finding, Org, OrgSettings, OutboxItem, ScanRun, utcnow
from app.web import auth, bodies, cursors, idempotency, urls
from app.web.errors import forbidden, not_found

bp = Blueprint("findings_api", __name__, url_prefix="/api/v1/orgs/<slug>/image-scans")


@bp.post("/findings")
def upload(slug: str) -> ResponseReturnValue:
    org, _, settings = auth.for_request(slug, "findings:write")
    key = idempotency.key_of(request.headers.get(idempotency.HEADER))
    body = bodies.read_body(
        request.content_type,
        request.headers.get("Content-Encoding"),
        bodies.request_body,
        current_app.config["MAX_UPLOAD_BYTES"],
    )
    held = None
    if key is not None:  # one statement more (app.web.idempotency): the key claimed, or its first answer sent again
        claimed = idempotency.claim(db.session(), org.id, key, idempotency.fingerprint(body, request.query_string))
        if isinstance(claimed, idempotency.Replay):
            return claimed.body, claimed.status, idempotency.REPLAYED
        held = claimed
    try:
        upload = schemas.parse_upload(body, request.args, current_app.config["MAX_FINDINGS"])
        del body  # the findings are out of it: up to 64 MiB less held while they are stored
        if upload.repo_owner.lower() != org.github_login.lower():
            raise forbidden(
                f"The repository {upload.repo_full_name} is outside this organisation's GitHub account "
                f"({org.github_login})."
            )
        return _store(org, settings, upload, held)
    except BaseException:
        if held is not None:
            idempotency.release(db.session(), held)  # nothing was stored: a retry runs afresh
        raise


def _store(
    org: Org, settings: OrgSettings, upload: schemas.Upload, held: idempotency.Claim | None
) -> tuple[dict[str, Any], int]:
    """Store a valid upload (unless the policy is disabled) and answer it; with an Idempotency-Key `held`, the answer
    is stored with the upload, in ingest's transaction."""
    result = None
    links = urls.for_request()
    if settings.enabled:
        deliver = current_app.config["GITHUB_APP_CONFIGURED"]
        expected = policy.Policy.from_settings(settings)
        may_except = settings.exceptions_until is not None and settings.exceptions_until > utcnow()

        def answer(r: service.IngestResult) -> tuple[sa.Executable, dict[str, Any]]:
            assert held is not None
            return idempotency.answer(held, 202, r.body(links.scan(org.slug, r.scan_run_id)))

        also = answer if held is not None else None
        seen = settings.exceptions_version  # read with the policy, before ingest reads the exceptions themselves
        result = service.ingest(db.session(), org, upload, links, deliver, expected, may_except, also, seen)
    if result is None:  # disabled: the body was validated, then dropped
        disabled = {"accepted": 0, "status": "disabled"}
        if held is not None:
            idempotency.finish(db.session(), held, 202, disabled)
        return disabled, 202
    return result.body(links.scan(org.slug, result.scan_run_id)), 202


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    repo: schemas.RepoFullName | None = None  # GitHub's naming rules: any other name is a 422
    commit_sha: schemas.CommitSha | None = None  # a full SHA (any letter case): a short one would match nothing
    image_ref: Annotated[str, StringConstraints(max_length=1024)] | None = None
    image_name: Annotated[str, StringConstraints(max_length=1024)] | None = None
    ref: Annotated[str, StringConstraints(max_length=255)] | None = None
    pr: Annotated[int, Field(ge=1, le=fields.MAX_INT32)] | None = None
    status: Literal["success", "failure", "skipped"] | None = None
    limit: Annotated[int, Field(ge=1, le=1000)] = 50
    cursor: Annotated[str, StringConstraints(max_length=200)] | None = None


@bp.get("")
def list_scans(slug: str) -> dict[str, Any]:
    org, _, _ = auth.for_request(slug, "findings:read")
    q = bodies.validate_query(ListQuery)
    try:
        before = queries.decode_cursor(q.cursor) if q.cursor else None
    except queries.BadCursor:
        raise cursors.bad_cursor() from None
    session = db.session()
    rows, next_id = queries.list_scans(
        session,
        org.id,
        repo=q.repo,
        commit_sha=q.commit_sha,
        image_ref=q.image_ref,
        image_name=q.image_name,
        ref=q.ref,
        pr=q.pr,
        status=q.status,
        before_id=before,
        limit=q.limit,
    )
    items = queries.outbox_by_scan(session, [r.id for r in rows])
    return {
        "items": [scan_json(org.slug, r, items.get(r.id)) for r in rows],
        "next_cursor": queries.encode_cursor(next_id) if next_id is not None else None,
    }


@bp.get("/<int:scan_run_id>")
def get_scan(slug: str, scan_run_id: int) -> dict[str, Any]:
    org, _, _ = auth.for_request(slug, "findings:read")
    session = db.session()
    scan = session.get(ScanRun, scan_run_id) if scan_run_id <= fields.MAX_INT32 else None
    if scan is None or scan.org_id != org.id:
        raise not_found(f"There is no scan {scan_run_id} in {slug!r}.")
    item = queries.outbox_by_scan(session, [scan.id]).get(scan.id)
    body = scan_json(org.slug, scan, item)
    page, next_key = queries.findings_page(session, scan.id, None, FINDINGS_PAGE_MAX)
    body["findings"] = [finding_json(f) for f in page]
    body["findings_next_cursor"] = queries.encode_finding_cursor(scan.id, next_key) if next_key is not None else None
    return body


FINDINGS_PAGE_MAX = 1000  # findings in one answer: a 100,000-finding scan is read in pages, never at once


class FindingsQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    limit: Annotated[int, Field(ge=1, le=FINDINGS_PAGE_MAX)] = FINDINGS_PAGE_MAX
    cursor: Annotated[str, StringConstraints(max_length=4000)] | None = None


@bp.get("/<int:scan_run_id>/findings")
def list_findings(slug: str, scan_run_id: int) -> dict[str, Any]:
    """A scan's findings, most severe first, a page at a time."""
    org, _, _ = auth.for_request(slug, "findings:read")
    q = bodies.validate_query(FindingsQuery)
    try:
        after = queries.decode_finding_cursor(q.cursor, scan_run_id) if q.cursor else None
    except queries.BadCursor:
        raise cursors.bad_cursor() from None
    session = db.session()
    scan = session.get(ScanRun, scan_run_id) if scan_run_id <= fields.MAX_INT32 else None
    if scan is None or scan.org_id != org.id:
        raise not_found(f"There is no scan {scan_run_id} in {slug!r}.")
    page, next_key = queries.findings_page(session, scan.id, after, q.limit)
    return {
        "items": [finding_json(f) for f in page],
        "next_cursor": queries.encode_finding_cursor(scan.id, next_key) if next_key is not None else None,
    }


def scan_json(slug: str, s: ScanRun, item: OutboxItem | None) -> dict[str, Any]:
    commit_status = None
    if item is not None:
        commit_status = {
            "context": item.commit_status["context"],
            "state": item.commit_status["state"],
            "description": item.commit_status["description"],
            "target_url": item.commit_status.get("target_url"),
            "delivery": delivery_state(item),
        }
    return {
        "scan_run_id": s.id,
        "image_ref": s.image_ref,
        "ref": s.ref,
        "commit_sha": s.commit_sha,
        "repo_full_name": s.repo_full_name,
        "pr": s.pr_number,
        "status": s.status,
        "block_action": s.block_action,
        "severity_counts": s.severity_counts,
        "fixable": s.fixable,
        "blocking": s.blocking,
        "baseline_scan_id": s.baseline_scan_id,
        "accepted": s.accepted,
        "duplicates": s.duplicates,
        "signature_status": s.signature_status,
        "signature_issuer": s.signature_issuer,
        "signature_subject": s.signature_subject,
        "created_at": s.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "url": urls.for_request().scan(slug, s.id),
        "commit_status": commit_status,
    }


def gate_json(f: Finding) -> dict[str, Any]:
    """How the gate judged a finding at upload; not payload, so a finding emptied by retention still says it."""
    return {"blocking": bool(f.blocking), "new": f.new, "exception_id": f.exception_id}


def finding_json(f: Finding) -> dict[str, Any]:
    if f.redacted_at is not None:
        return {
            "seq": f.seq,
            "redacted": True,
            "payload_hash": f.payload_hash,
            "chain_hash": f.chain_hash,
            **gate_json(f),
        }
    assert f.cve_id is not None  # only redaction empties the payload
    return {
        "seq": f.seq,
        "cve_id": f.cve_id,
        "severity": f.severity,
        "package_name": f.package,
        "installed_version": f.installed_version,
        "fixed_version": f.fixed_version,
        "fixable": bool(f.fixed_version),
        "target": f.target,
        "title": f.title,
        "primary_url": f.primary_url,
        "references": f.references or [],
        "vendor_ids": f.vendor_ids or [],
        "advisories": [
            {"id": i, "url": u} for i, u in advisories.pages(f.cve_id, f.vendor_ids or (), f.references or ())
        ],
        "synthetic": bool(f.synthetic),
        "truncated": bool(f.truncated),
        **gate_json(f),
        "redacted": False,
        "payload_hash": f.payload_hash,
        "chain_hash": f.chain_hash,
    }
