"""The admin pages of Admin → Code security → Image scanning: scans, a scan, a commit, settings, tokens, audit."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask import abort, current_app, flash, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import (
    BadRequest,
    HTTPException,
    InternalServerError,
    ServiceUnavailable,
    UnprocessableEntity,
    default_exceptions,
)

from app import advisories, db, orgs, policy, tokens
from app.admin.auth import admin_required
from app.admin.blueprint import bp
from app.db import write_transaction
from app.errors import DATABASE_UNAVAILABLE, ApiError, note_database_unavailable
from app.findings import queries, schemas
from app.github.outbox import delivery_state
from app.models import (
    SCAN_STATUSES,
    SEVERITIES,
    ApiToken,
    AuditEvent,
    Finding,
    Org,
    OrgSettings,
    OutboxItem,
    ScanRun,
    utcnow,
)
from app.settings import service as settings_service

log = logging.getLogger(__name__)

SECTION = "/orgs/<slug>/code-security/image-scanning"
SCANS_PER_PAGE = 50
FINDINGS_PER_PAGE = 500
SCANS_PER_COMMIT = 200
EVENTS_PER_PAGE = 50
MAX_INT32 = 2**31 - 1
SHA_RE = re.compile(r"[0-9a-f]{40}")
WHOLE_NUMBER = re.compile(r"[0-9]{1,9}")
MAX_DAYS = 3650  # a token's longest expiry (tokens.create checks it too)
MAX_RETENTION_DAYS = settings_service.MAX_RETENTION_DAYS

BLOCK_ACTION_HELP = {
    "none": "Store the findings and post nothing. Scans are marked skipped; statuses posted earlier stay as they are.",
    "warn": "Store the findings and post success, naming the counts in the description. Never blocks a merge.",
    "block_pull": (
        "Post failure when any image of the commit has a high or critical finding, so branch protection "
        "that requires fremforge/image-scan blocks the merge."
    ),
}
SCOPE_HELP = {
    "findings:write": "upload scan results (what a CI workflow needs)",
    "findings:read": "list scans and read their findings",
    "settings:write": "read and change this policy through the API",
}
SETTING_LABELS = {
    "enabled": "Scanning enabled",
    "block_action": "Block action",
    "require_signed": "Require signed images",
    "allowed_issuers": "Allowed issuers",
    "retention_days": "Retention (days)",
}
ACTION_LABELS = {
    "settings.changed": "Settings changed",
    "token.created": "Token created",
    "token.revoked": "Token revoked",
    "admin.signed_in": "Signed in",
    "admin.sign_in": "Signed in",
    "admin.signed_out": "Signed out",
    "retention.run": "Retention run",
}
WORKFLOW_SNIPPET = """\
    env:
      IMAGE: ghcr.io/${{ github.repository }}:${{ github.sha }}
      SHA: ${{ github.event.pull_request.head.sha || github.sha }}
      FREMFORGE_URL: @URL@
    steps:
      # ... build and push $IMAGE ...
      - name: Scan the image
        run: trivy image --format json --output trivy.json "$IMAGE"
      - name: Upload the findings to fremforge
        env:
          FREMFORGE_TOKEN: ${{ secrets.FREMFORGE_TOKEN }}
        run: |
          gzip -c trivy.json > trivy.json.gz
          curl --fail-with-body -sS "$FREMFORGE_URL/api/v1/orgs/@SLUG@/image-scans/findings" \\
            --url-query "image_ref=$IMAGE" --url-query "commit_sha=$SHA" \\
            --url-query "repo_full_name=$GITHUB_REPOSITORY" \\
            -H "Authorization: Bearer $FREMFORGE_TOKEN" \\
            -H "Content-Type: application/json" -H "Content-Encoding: gzip" \\
            --data-binary @trivy.json.gz
"""


# -- the section's pages ---------------------------------------------------------------------------------------------


@bp.get("/orgs/<slug>")
@admin_required
def org_home(slug: str) -> ResponseReturnValue:
    return redirect(url_for("admin.scans", slug=slug))


@bp.get(SECTION)
@admin_required
def scans(slug: str) -> ResponseReturnValue:
    """The scans, newest first: filters, keyset pagination; a fixed number of queries whatever the page size."""
    org, settings = _org_and_settings(slug)
    filters, errors, before = _scan_filters(request.args)
    rows: list[ScanRun] = []
    wishes: dict[int, OutboxItem] = {}
    next_id = None
    if not errors:
        session = db.session()
        rows, next_id = queries.list_scans(
            session,
            org.id,
            repo=filters.get("repo"),
            commit_sha=filters.get("commit"),
            image_ref=filters.get("image"),
            pr=int(filters["pr"]) if filters.get("pr") else None,
            status=filters.get("status"),
            before_id=before,
            limit=SCANS_PER_PAGE,
        )
        wishes = queries.outbox_by_scan(session, [r.id for r in rows])
    older = url_for("admin.scans", slug=slug, **filters, cursor=queries.encode_cursor(next_id)) if next_id else None
    return render_template(
        "admin/scans.html",
        org=org,
        settings=settings,
        nav="scans",
        rows=[(r, posted(r, wishes.get(r.id))) for r in rows],
        filters=filters,
        errors=errors,
        filtered=bool(filters),
        paged=before is not None,
        older=older,
        workflow=_workflow_snippet(slug) if not rows and not filters and before is None else None,
    ), (400 if errors else 200)


@bp.get(SECTION + "/scans/<int:scan_id>")
@admin_required
def scan(slug: str, scan_id: int) -> ResponseReturnValue:
    org = _org(slug)
    session = db.session()
    found = session.get(ScanRun, scan_id) if scan_id <= MAX_INT32 else None
    if found is None or found.org_id != org.id:
        abort(404, description=f"There is no scan {scan_id} in {slug}.")
    severity = request.args.get("severity") or None
    if severity not in (None, *SEVERITIES):
        severity = None
    page = _page_number(request.args.get("page"))
    shown = _findings_page(session, found.id, severity, page)
    more = len(shown) > FINDINGS_PER_PAGE
    wish = queries.outbox_by_scan(session, [found.id]).get(found.id)
    return render_template(
        "admin/scan.html",
        org=org,
        nav="scans",
        scan=found,
        post=posted(found, wish),
        wish=wish,
        findings=[finding_view(f, found) for f in shown[:FINDINGS_PER_PAGE]],
        severity=severity,
        page=page,
        more=more,
        per_page=FINDINGS_PER_PAGE,
    )


@bp.get(SECTION + "/commits/<sha>")
@admin_required
def commit(slug: str, sha: str) -> ResponseReturnValue:
    """Every image scanned for a commit and the aggregate state posted for it: the target_url sent to GitHub."""
    org = _org(slug)
    sha = sha.lower()
    if not SHA_RE.fullmatch(sha):
        abort(404, description="A commit is named by its full 40-character SHA.")
    session = db.session()
    repo = (request.args.get("repo") or "").strip().lower()
    if not repo:
        repos = session.scalars(
            sa.select(ScanRun.repo_full_name)
            .where(ScanRun.org_id == org.id, ScanRun.commit_sha == sha)
            .distinct()
            .order_by(ScanRun.repo_full_name)
        ).all()
        if not repos:
            abort(404, description=f"No scan of commit {sha} in {slug}.")
        if len(repos) == 1:
            return redirect(url_for("admin.commit", slug=slug, sha=sha, repo=repos[0]))
        return render_template("admin/commit_repos.html", org=org, nav="scans", sha=sha, repos=repos)
    rows, more = queries.list_scans(session, org.id, repo=repo, commit_sha=sha, limit=SCANS_PER_COMMIT)
    if not rows:
        abort(404, description=f"No scan of commit {sha} in {repo}.")
    judged = {r.id for r in queries.latest_judged_rows(session.connection(), org.id, repo, sha)}
    wishes = queries.outbox_by_scan(session, [r.id for r in rows])
    newest = session.scalars(
        sa.select(OutboxItem)
        .where(OutboxItem.org_id == org.id, OutboxItem.repo_full_name == repo, OutboxItem.commit_sha == sha)
        .order_by(OutboxItem.id.desc())
        .limit(1)
    ).first()
    queries.note_shown_before(session, [newest])
    return render_template(
        "admin/commit.html",
        org=org,
        nav="scans",
        sha=sha,
        repo=repo,
        pr=next((r.pr_number for r in rows if r.pr_number), None),
        rows=[(r, posted(r, wishes.get(r.id))) for r in rows],
        judged=judged,
        more=more is not None,
        aggregate=newest,
        aggregate_delivery=delivery_state(newest),
    )


@bp.route(SECTION + "/settings", methods=["GET", "POST"])
@admin_required
def settings(slug: str) -> ResponseReturnValue:
    org, current = _org_and_settings(slug)
    values = settings_service.as_dict(current)
    form = {**values, "allowed_issuers": issuers_text(values["allowed_issuers"])}
    errors: dict[str, str] = {}
    if request.method == "POST":
        changes, form, errors = parse_settings_form(request.form)
        if not errors:
            session = db.session()
            with write_transaction(session):
                row = orgs.settings_for_update(session, org.id)
                changed = settings_service.apply(session, row, changes, g.admin.actor)
            if changed:
                flash("Saved: " + ", ".join(SETTING_LABELS[k].lower() for k in changed) + ".", "success")
            else:
                flash("Saved. Nothing changed.", "success")
            return redirect(url_for("admin.settings", slug=slug))
    return render_template(
        "admin/settings.html",
        org=org,
        nav="settings",
        form=form,
        errors=errors,
        block_actions=BLOCK_ACTION_HELP,
        max_days=MAX_RETENTION_DAYS,
    ), (422 if errors else 200)


@bp.get(SECTION + "/tokens")
@admin_required
def token_list(slug: str) -> ResponseReturnValue:
    return _tokens_page(_org(slug), {"name": "", "scopes": ["findings:write"], "expires_days": "365"}, {})


@bp.post(SECTION + "/tokens")
@admin_required
def token_create(slug: str) -> ResponseReturnValue:
    org = _org(slug)
    form, errors = _parse_token_form(request.form)
    if errors:
        return _tokens_page(org, form, errors, 422)
    session = db.session()
    try:
        with write_transaction(session):
            new = tokens.create(
                session,
                org,
                form["scopes"],
                form["name"],
                int(form["expires_days"]) if form["expires_days"] else None,
                actor=g.admin.actor,
            )
    except ValueError as exc:  # the service's own checks, should the form's ever fall behind them
        return _tokens_page(org, form, {"name": str(exc)}, 422)
    html = render_template(
        "admin/token_created.html",
        org=org,
        nav="tokens",
        token=new.record,
        secret=new.secret,
        api_url=_public_url(),
    )
    # The secret is on this page only: never keep it in a cache or the browser's history.
    return html, 201, {"Cache-Control": "no-store", "Pragma": "no-cache"}


@bp.post(SECTION + "/tokens/<int:token_id>/revoke")
@admin_required
def token_revoke(slug: str, token_id: int) -> ResponseReturnValue:
    org = _org(slug)
    session = db.session()
    with write_transaction(session):
        record = session.get(ApiToken, token_id) if token_id <= MAX_INT32 else None
        if record is None or record.org_id != org.id:
            abort(404, description=f"There is no token {token_id} in {slug}.")
        already = record.revoked_at is not None
        tokens.revoke(session, record.id, actor=g.admin.actor)
    if already:
        flash(f"The token “{record.name}” was revoked already.", "info")
    else:
        flash(f"Revoked the token “{record.name}” ({record.prefix}…). It stops working at once.", "success")
    return redirect(url_for("admin.token_list", slug=slug))


@bp.get(SECTION + "/audit")
@admin_required
def audit(slug: str) -> ResponseReturnValue:
    """The org's audit events, newest first, paged by chain sequence number."""
    org = _org(slug)
    before = request.args.get("before", "")
    q = sa.select(AuditEvent).where(AuditEvent.org_id == org.id)
    if before:
        if not re.fullmatch(r"[0-9]{1,18}", before):
            abort(400, description="That page link is not valid; start again from the newest events.")
        q = q.where(AuditEvent.seq < int(before))
    events = list(db.session().scalars(q.order_by(AuditEvent.seq.desc()).limit(EVENTS_PER_PAGE + 1)))
    older = None
    if len(events) > EVENTS_PER_PAGE:
        events = events[:EVENTS_PER_PAGE]
        older = url_for("admin.audit", slug=slug, before=events[-1].seq)
    return render_template(
        "admin/audit.html",
        org=org,
        nav="audit",
        events=[event_view(e) for e in events],
        older=older,
        paged=bool(before),
    )


@bp.errorhandler(HTTPException)
def error_page(err: HTTPException) -> ResponseReturnValue:
    """Errors of the admin pages as a page in their frame, not Werkzeug's bare one (nor the API's JSON)."""
    if err.code is None or err.code < 400:
        return err
    return render_template("admin/error.html", error=err), err.code


@bp.errorhandler(Exception)
def unexpected_error_page(err: Exception) -> ResponseReturnValue:
    """Anything else as a page too; the app's own client errors (a NUL in the URL...) keep their status."""
    if isinstance(err, ApiError):
        return error_page(default_exceptions.get(err.status, BadRequest)(err.message))
    if isinstance(err, sa_exc.DataError):
        log.warning("admin.unstorable_value path=%s error=%s", request.path, type(err.orig).__name__)
        return error_page(UnprocessableEntity("A value cannot be stored (too long or malformed)."))
    if db.unavailable(err):  # an outage, or a lock held past its budget: 503, try again shortly
        headers = note_database_unavailable(err)
        return render_template("admin/error.html", error=ServiceUnavailable(DATABASE_UNAVAILABLE)), 503, headers
    log.exception("admin.unhandled_error path=%s", request.path)
    return error_page(InternalServerError("Something went wrong on our side; it was logged. Try again later."))


# -- helpers the pages share -----------------------------------------------------------------------------------------


def _org(slug: str) -> Org:
    org = orgs.by_slug(db.session(), slug)
    if org is None:
        abort(404, description=f"There is no organisation {slug}.")
    return org


def _org_and_settings(slug: str) -> tuple[Org, OrgSettings]:
    """The org and its policy in one query; the defaults for an org whose settings row is missing."""
    row = (
        db.session()
        .execute(
            sa.select(Org, OrgSettings).outerjoin(OrgSettings, OrgSettings.org_id == Org.id).where(Org.slug == slug)
        )
        .one_or_none()
    )
    if row is None:
        abort(404, description=f"There is no organisation {slug}.")
    org, found = row
    if found is None:
        found = OrgSettings(
            org_id=org.id,
            enabled=True,
            block_action="warn",
            require_signed=False,
            allowed_issuers=[],
            retention_days=365,
        )
    return org, found


def _scan_filters(args: MultiDict[str, str]) -> tuple[dict[str, str], dict[str, str], int | None]:
    """The list's filters as typed (blank ones dropped), an error per bad field, and the cursor's scan id."""
    filters = {k: (args.get(k) or "").strip() for k in ("repo", "image", "commit", "pr", "status")}
    filters = {k: v for k, v in filters.items() if v}
    errors: dict[str, str] = {}
    if "repo" in filters and not schemas.is_repo_full_name(filters["repo"]):
        errors["repo"] = "Enter a repository as owner/name, as GitHub names them."
    if len(filters.get("image", "")) > 1024:
        errors["image"] = "An image reference is at most 1024 characters."
    if "commit" in filters and not SHA_RE.fullmatch(filters["commit"].lower()):
        errors["commit"] = "Enter the commit's full 40-character SHA."
    if "pr" in filters:
        number = filters["pr"].removeprefix("#")
        if not WHOLE_NUMBER.fullmatch(number) or not 1 <= int(number) <= MAX_INT32:
            errors["pr"] = "Enter a pull request number, such as 42."
        else:
            filters["pr"] = number
    if "status" in filters and filters["status"] not in SCAN_STATUSES:
        errors["status"] = "Choose success, failure or skipped."
    before = None
    cursor = args.get("cursor")
    if cursor:
        try:
            before = queries.decode_cursor(cursor)
        except queries.BadCursor:
            errors["cursor"] = "That page link is not valid; start again from the newest scans."
    return filters, errors, before


def posted(scan: ScanRun, wish: OutboxItem | None) -> dict[str, Any]:
    """What a scan asked to post for its commit, and how the delivery went, in words for a table cell."""
    if wish is None:
        why = "block action none" if scan.status == "skipped" else "nothing to post"
        return {"state": None, "short": f"nothing posted ({why})", "detail": None, "delivery": None}
    state = delivery_state(wish) or {}
    short = state["detail"]
    if wish.state == "delivered" and wish.delivered_at is not None:
        same_day = wish.delivered_at.date() == utcnow().date()
        short = f"delivered {wish.delivered_at:%H:%M}" if same_day else f"delivered {wish.delivered_at:%Y-%m-%d}"
    return {
        "state": wish.commit_status.get("state"),
        "description": wish.commit_status.get("description"),
        "short": short,
        "detail": state["detail"],
        "delivery": wish.state,
    }


def _page_number(text: str | None) -> int:
    if text and WHOLE_NUMBER.fullmatch(text) and 1 <= int(text) <= 100_000:
        return int(text)
    return 1


def _findings_page(session: Session, scan_id: int, severity: str | None, page: int) -> list[Finding]:
    """One page of a scan's findings in the order of queries.findings_of, plus one to tell whether more follow."""
    q = sa.select(Finding).where(Finding.scan_run_id == scan_id)
    if severity:
        q = q.where(Finding.severity == severity)
    q = q.order_by(queries.SEVERITY_ORDER, Finding.package, Finding.cve_id, Finding.seq)
    return list(session.scalars(q.offset((page - 1) * FINDINGS_PER_PAGE).limit(FINDINGS_PER_PAGE + 1)))


@dataclass(frozen=True)
class FindingView:
    finding: Finding
    links: list[tuple[str, str]]  # (advisory id, url): the finding's own id first
    explanation: str | None  # for the app's own synthetic findings


def finding_view(f: Finding, scan: ScanRun) -> FindingView:
    if f.redacted_at is not None or f.cve_id is None:
        return FindingView(f, [], None)
    explanation = None
    if f.synthetic or f.cve_id.upper().startswith("FREMFORGE-"):
        explanation = synthetic_explanation(f.cve_id, scan)
    return FindingView(f, advisories.links(f.cve_id, f.vendor_ids or (), f.references or ()), explanation)


def synthetic_explanation(cve_id: str, scan: ScanRun) -> str:
    """The app's own signing findings in words: why the image got it, and what would clear it."""
    if cve_id == policy.UNSIGNED_ID:
        return (
            f"This image is not signed (signature status: {scan.signature_status}), and this organisation's "
            "policy requires signed images. Sign it in the workflow (for example with cosign keyless signing) "
            "and upload with signature_status=signed, or turn off “Require signed images” in Settings."
        )
    if cve_id == policy.UNTRUSTED_ID:
        who = scan.signature_issuer or "an issuer that was not named"
        subject = f" with the subject {scan.signature_subject}" if scan.signature_subject else " without a subject"
        return (
            f"This image is signed by {who}{subject}, which matches none of this organisation's allowed issuers. "
            "Sign it with a trusted identity, or add the issuer (and a subject pattern) in Settings."
        )
    return "A finding made by fremforge itself, not by the scanner."


def issuers_text(issuers: list[dict[str, Any]]) -> str:
    return "\n".join(f"{i['issuer']} {i.get('subject_pattern') or ''}".strip() for i in issuers if i.get("issuer"))


def parse_settings_form(form: MultiDict[str, str]) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """The settings form as a change for settings.service, the form as typed (to show again) and errors per field."""
    shown: dict[str, Any] = {
        "enabled": "enabled" in form,
        "block_action": form.get("block_action", ""),
        "require_signed": "require_signed" in form,
        "allowed_issuers": form.get("allowed_issuers", ""),
        "retention_days": form.get("retention_days", "").strip(),
    }
    errors: dict[str, str] = {}
    doc: dict[str, Any] = {k: shown[k] for k in ("enabled", "block_action", "require_signed")}
    if WHOLE_NUMBER.fullmatch(shown["retention_days"]):
        doc["retention_days"] = int(shown["retention_days"])
    else:
        errors["retention_days"] = f"Enter a whole number of days, from 1 to {MAX_RETENTION_DAYS}."
    lines: list[int] = []  # the textarea's line number of each issuer, for messages
    issuers = []
    for n, line in enumerate(shown["allowed_issuers"].splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            lines.append(n)
            issuers.append(settings_service.parse_issuer_option(re.sub(r"\s+", " ", line, count=1)))
    doc["allowed_issuers"] = issuers
    try:
        changes = settings_service.parse_change(doc)
    except settings_service.ValidationError as exc:
        changes = {}
        for e in exc.errors(include_url=False):
            field, message = _settings_error(e, lines)
            errors.setdefault(field, message)
    order = list(SETTING_LABELS)  # the form's order, for the summary above it
    errors = dict(sorted(errors.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    return changes, shown, errors


def _settings_error(e: Any, lines: list[int]) -> tuple[str, str]:
    """One pydantic error of SettingsChange as (form field, a sentence for beside that field)."""
    loc = e.get("loc") or ("",)
    field = str(loc[0])
    if field == "retention_days":
        return field, f"Enter a whole number of days, from 1 to {MAX_RETENTION_DAYS}."
    if field == "block_action":
        return field, "Choose none, warn or block_pull."
    if field == "allowed_issuers":
        if len(loc) >= 3 and isinstance(loc[1], int):
            line = lines[loc[1]] if loc[1] < len(lines) else loc[1] + 1
            if loc[2] == "issuer":
                return field, f"Line {line}: the issuer must be an https:// URL, at most 1024 characters."
            reason = str(e.get("msg", "is not valid")).removeprefix("Value error, ")
            return field, f"Line {line}: the subject pattern {reason}"
        return field, "At most 100 issuers."
    return field or "form", str(e.get("msg", "is not valid"))


def _parse_token_form(form: MultiDict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    shown: dict[str, Any] = {
        "name": form.get("name", "").strip(),
        "scopes": [s for s in form.getlist("scopes") if s in tokens.SCOPES],
        "expires_days": form.get("expires_days", "").strip(),
    }
    errors: dict[str, str] = {}
    if not 1 <= len(shown["name"]) <= 100:
        errors["name"] = "Give the token a name of 1 to 100 characters, such as the repository that will use it."
    if not shown["scopes"] or len(shown["scopes"]) != len(form.getlist("scopes")):
        errors["scopes"] = "Choose at least one scope."
    days = shown["expires_days"]
    if days and not (WHOLE_NUMBER.fullmatch(days) and 1 <= int(days) <= MAX_DAYS):
        errors["expires_days"] = f"Enter a number of days from 1 to {MAX_DAYS}, or leave it empty for no expiry."
    return shown, errors


def _tokens_page(org: Org, form: dict[str, Any], errors: dict[str, str], status: int = 200) -> ResponseReturnValue:
    now = utcnow()
    records = sorted(tokens.list_for(db.session(), org.id), key=lambda t: t.id, reverse=True)
    return render_template(
        "admin/tokens.html",
        org=org,
        nav="tokens",
        tokens=[(t, tokens.state(t, now)) for t in records],
        form=form,
        errors=errors,
        scopes=SCOPE_HELP,
        max_days=MAX_DAYS,
    ), status


def event_view(e: AuditEvent) -> dict[str, Any]:
    """An audit event for the page: what happened in words, and its details as (label, old, new) or (label, value)."""
    details = e.details or {}
    rows: list[tuple[str, str, str | None]] = []
    if e.action == "settings.changed":
        for key, diff in (details.get("changes") or {}).items():
            rows.append((SETTING_LABELS.get(key, key), setting_text(diff.get("old")), setting_text(diff.get("new"))))
    else:
        for key, value in details.items():
            rows.append((key.replace("_", " "), setting_text(value), None))
    return {
        "event": e,
        "label": ACTION_LABELS.get(e.action or "", e.action or "(removed by retention)"),
        "rows": rows,
        "redacted": e.redacted_at is not None,
    }


def setting_text(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        if value and all(isinstance(v, dict) and "issuer" in v for v in value):
            return "; ".join(f"{v['issuer']} {v.get('subject_pattern') or ''}".strip() for v in value)
        return ", ".join(str(v) for v in value) if value else "(none)"
    return str(value)


def _public_url() -> str:
    return current_app.config.get("PUBLIC_URL") or request.host_url.rstrip("/")


def _workflow_snippet(slug: str) -> str:
    return WORKFLOW_SNIPPET.replace("@URL@", _public_url()).replace("@SLUG@", slug)


@bp.app_template_global("github_web_url")
def github_web_url() -> str:
    """github.com, or a GitHub Enterprise host's web root (its API is at /api/v3)."""
    api = str(current_app.config.get("GITHUB_API_URL") or "https://api.github.com").rstrip("/")
    if api == "https://api.github.com":
        return "https://github.com"
    return api.removesuffix("/api/v3")


@bp.app_template_filter("utc")
def utc_filter(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    return "—" if value is None else f"{value:{fmt}} UTC"


@bp.context_processor
def _admin_helpers() -> dict[str, Any]:
    return {"severities": SEVERITIES}
