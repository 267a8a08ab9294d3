"""The scans pages of Admin → Code security → Image scanning: the list, one scan, one commit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask import abort, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session
from werkzeug.datastructures import MultiDict

from app import advisories, commits, db, exceptions, fields, policy
from app.admin import insights_pages
from app.admin.auth import admin_required
from app.admin.blueprint import bp
from app.admin.pages import SECTION, WHOLE_NUMBER, org_and_settings, org_of, page_number, public_url
from app.clock import now_of
from app.findings import queries
from app.github.outbox import delivery_state
from app.insights import advisories as insight_advisories
from app.models import (
    SCAN_STATUSES,
    SEVERITIES,
    Finding,
    OutboxItem,
    PolicyException,
    Repost,
    ScanRun,
    utcnow,
)
from app.policy.exceptions import ActiveException, Matcher

SCANS_PER_PAGE = 50


FINDINGS_PER_PAGE = 500


SCANS_PER_COMMIT = 200


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
            --url-query "repo_full_name=$GITHUB_REPOSITORY" --url-query "ref=$GITHUB_REF" \\
            -H "Authorization: Bearer $FREMFORGE_TOKEN" \\
            -H "Content-Type: application/json" -H "Content-Encoding: gzip" \\
            --data-binary @trivy.json.gz
"""


@bp.get("/orgs/<slug>")
@admin_required
def org_home(slug: str) -> ResponseReturnValue:
    return redirect(url_for("admin.scans", slug=slug))


@bp.get(SECTION)
@admin_required
def scans(slug: str) -> ResponseReturnValue:
    """The scans, newest first: filters, keyset pagination; a fixed number of queries whatever the page size."""
    org, settings = org_and_settings(slug)
    filters, errors, before = _scan_filters(request.args)
    rows: list[ScanRun] = []
    items: dict[int, OutboxItem] = {}
    next_id = None
    trend = None
    if not errors:
        session = db.session()
        wanted: dict[str, Any] = {
            "repo": filters.get("repo"),
            "commit_sha": filters.get("commit"),
            "image_ref": filters.get("image"),
            "ref": filters.get("ref"),
            "pr": int(filters["pr"]) if filters.get("pr") else None,
            "image_name": filters.get("name"),
            "status": filters.get("status"),
            "before_id": before,
            "limit": SCANS_PER_PAGE,
        }
        rows, next_id = queries.list_scans(session, org.id, **wanted)
        items = queries.outbox_by_scan(session, [r.id for r in rows])
        if rows and not filters and before is None:  # the org's trend, above its newest scans
            trend = insights_pages.trend_of(session, org)
    # Typed as url_for's **values (Any): mypy would match a dict[str, str] against its keyword-only _external too.
    query: dict[str, Any] = filters
    older = url_for("admin.scans", slug=slug, **query, cursor=queries.encode_cursor(next_id)) if next_id else None
    return render_template(
        "admin/scans.html",
        org=org,
        settings=settings,
        nav="scans",
        rows=[(r, posted(r, items.get(r.id))) for r in rows],
        filters=filters,
        errors=errors,
        filtered=bool(filters),
        paged=before is not None,
        older=older,
        workflow=_workflow_snippet(slug) if not rows and not filters and before is None else None,
        trend=trend,
    ), (400 if errors else 200)


@bp.get(SECTION + "/scans/<int:scan_id>")
@admin_required
def scan(slug: str, scan_id: int) -> ResponseReturnValue:
    org = org_of(slug)
    session = db.session()
    found = session.get(ScanRun, scan_id) if scan_id <= fields.MAX_INT32 else None
    if found is None or found.org_id != org.id:
        abort(404, description=f"There is no scan {scan_id} in {slug}.")
    severity = request.args.get("severity") or None
    if severity not in (None, *SEVERITIES):
        severity = None
    page = page_number(request.args.get("page"))
    shown = _findings_page(session, found.id, severity, page)
    more = len(shown) > FINDINGS_PER_PAGE
    shown = shown[:FINDINGS_PER_PAGE]
    notes = ExceptionNotes.of(session, org.id, found, shown)
    item = queries.outbox_by_scan(session, [found.id]).get(found.id)
    return render_template(
        "admin/scan.html",
        org=org,
        nav="scans",
        scan=found,
        post=posted(found, item),
        item=item,
        findings=[finding_view(f, found, notes, org.slug) for f in shown],
        severity=severity,
        page=page,
        more=more,
        per_page=FINDINGS_PER_PAGE,
    )


@bp.get(SECTION + "/commits/<sha>")
@admin_required
def commit(slug: str, sha: str) -> ResponseReturnValue:
    """Every image scanned for a commit and the aggregate state posted for it: the target_url sent to GitHub."""
    org = org_of(slug)
    sha = sha.lower()
    if not fields.SHA.fullmatch(sha):
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
    conn, pol = session.connection(), policy.Policy.from_settings(org_and_settings(slug)[1])
    latest = commits.latest_scans(conn, org.id, repo, sha)
    judged = {r.id for r in latest}
    current = None
    if pol.enabled:  # the aggregate as a re-post would build it now (spec section 4)
        current = policy.commit_verdict(
            pol.block_action, commits.evaluate(conn, pol, org.id, repo, sha, latest), pol.block_on
        )
    items = queries.outbox_by_scan(session, [r.id for r in rows])
    newest = session.scalars(
        sa.select(OutboxItem)
        .where(OutboxItem.org_id == org.id, OutboxItem.repo_full_name == repo, OutboxItem.commit_sha == sha)
        .order_by(OutboxItem.id.desc())
        .limit(1)
    ).first()
    queries.note_shown_before(session, [newest])
    posted_now = (newest.commit_status.get("state"), newest.commit_status.get("description")) if newest else None
    return render_template(
        "admin/commit.html",
        org=org,
        nav="scans",
        sha=sha,
        repo=repo,
        pr=next((r.pr_number for r in rows if r.pr_number), None),
        rows=[(r, posted(r, items.get(r.id))) for r in rows],
        judged=judged,
        more=more is not None,
        aggregate=newest,
        aggregate_delivery=delivery_state(newest),
        current=current,
        pol=pol,
        not_blocking_labels=policy.NOT_BLOCKING,
        # What GitHub was last asked to show and what the current policy makes of the commit now: when they differ,
        # the page says so (and whether a re-post is on its way).
        differs=posted_now != ((current.state, current.description) if current else None),
        repost_queued=session.get(Repost, (org.id, repo, sha)) is not None,
    )


def _scan_filters(args: MultiDict[str, str]) -> tuple[dict[str, str], dict[str, str], int | None]:
    """The list's filters as typed (blank ones dropped), an error per bad field, and the cursor's scan id."""
    filters = {k: (args.get(k) or "").strip() for k in ("repo", "name", "image", "ref", "commit", "pr", "status")}
    filters = {k: v for k, v in filters.items() if v}
    errors: dict[str, str] = {}
    if "repo" in filters and not fields.is_repo_full_name(filters["repo"]):
        errors["repo"] = "Enter a repository as owner/name, as GitHub names them."
    if len(filters.get("image", "")) > 1024:
        errors["image"] = "An image reference is at most 1024 characters."
    if "name" in filters and (len(filters["name"]) > 1024 or fields.image_name(filters["name"]) != filters["name"]):
        errors["name"] = "Enter an image name without tag or digest, such as ghcr.io/acme/api."
    if len(filters.get("ref", "")) > fields.GIT_REF_MAX:
        errors["ref"] = "A git ref is at most 255 characters, such as refs/heads/main."
    if "commit" in filters and not fields.SHA.fullmatch(filters["commit"].lower()):
        errors["commit"] = "Enter the commit's full 40-character SHA."
    if "pr" in filters:
        number = filters["pr"].removeprefix("#")
        if not WHOLE_NUMBER.fullmatch(number) or not 1 <= int(number) <= fields.MAX_INT32:
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


def posted(scan: ScanRun, item: OutboxItem | None) -> dict[str, Any]:
    """What a scan asked to post for its commit, and how the delivery went, in words for a table cell."""
    if item is None:
        why = "block action none" if scan.status == "skipped" else "nothing to post"
        return {"state": None, "short": f"nothing posted ({why})", "detail": None, "delivery": None}
    state = delivery_state(item) or {}
    short = state["detail"]
    if item.state == "delivered" and item.delivered_at is not None:
        same_day = item.delivered_at.date() == utcnow().date()
        short = f"delivered {item.delivered_at:%H:%M}" if same_day else f"delivered {item.delivered_at:%Y-%m-%d}"
    return {
        "state": item.commit_status.get("state"),
        "description": item.commit_status.get("description"),
        "short": short,
        "detail": state["detail"],
        "delivery": item.state,
    }


def _findings_page(session: Session, scan_id: int, severity: str | None, page: int) -> list[Finding]:
    """One page of a scan's findings in the order of queries.findings_of, plus one to tell whether more follow."""
    q = sa.select(Finding).where(Finding.scan_run_id == scan_id)
    if severity:
        q = q.where(Finding.severity == severity)
    q = q.order_by(queries.SEVERITY_ORDER, Finding.package, Finding.cve_id, Finding.seq)
    return list(session.scalars(q.offset((page - 1) * FINDINGS_PER_PAGE).limit(FINDINGS_PER_PAGE + 1)))


@dataclass(frozen=True)
class ExceptionNote:
    """An exception beside a finding: the one that covered it at upload, or an active one covering it now."""

    id: int
    reason: str
    expires_at: datetime
    state: str  # active, expired or revoked
    now: bool  # covers the finding now, though it did not at upload (made since, or the upload's was another)


@dataclass(frozen=True)
class FindingView:
    finding: Finding
    links: list[tuple[str, str]]  # (advisory id, url): the finding's own id first
    explanation: str | None  # for the app's own synthetic findings
    marks: list[tuple[str, str]]  # how the gate judged it at upload: (mark, words), see gate_marks
    exceptions: tuple[ExceptionNote, ...] = ()  # what covered it at upload, then what covers it now
    accept_url: str | None = None  # the exceptions page's form, prefilled for this finding (None: nothing to accept)
    searchable: bool = False  # its id can be looked up in the advisory search (the row links there)


class ExceptionNotes:
    """The exceptions beside a page of findings: those the findings name (their exception_id, in any state) and the
    org's active ones that cover one of them now, read in one query."""

    def __init__(self, rows: Sequence[PolicyException], now: datetime, scan: ScanRun) -> None:
        self.by_id = {r.id: r for r in rows}
        self.now = now
        active = [
            ActiveException(r.id, r.advisory_id, r.reason, r.expires_at, r.package_name, r.repo_full_name, r.image)
            for r in rows
            if exceptions.state_of(r, now) == "active"
        ]
        self.matcher = Matcher(active, scan.repo_full_name, scan.image_name) if active else None

    @classmethod
    def of(cls, session: Session, org_id: int, scan: ScanRun, findings: Sequence[Finding]) -> ExceptionNotes:
        now = now_of(session.connection())
        stored = {f.exception_id for f in findings if f.exception_id is not None}
        ids = {
            str(i).lower() for f in findings if f.cve_id and not f.synthetic for i in (f.cve_id, *(f.vendor_ids or ()))
        }
        e = PolicyException
        wanted: list[sa.ColumnElement[bool]] = []
        if stored:
            wanted.append(e.id.in_(sorted(stored)))
        if ids:
            wanted.append(
                sa.and_(e.revoked_at.is_(None), e.expires_at > now, sa.func.lower(e.advisory_id).in_(sorted(ids)))
            )
        rows = list(session.scalars(sa.select(e).where(e.org_id == org_id, sa.or_(*wanted)))) if wanted else []
        return cls(rows, now, scan)

    def note(self, exception_id: int, now: bool) -> ExceptionNote | None:
        row = self.by_id.get(exception_id)
        if row is None:  # an id the finding keeps, of an exception this page cannot read (none should be)
            return None
        return ExceptionNote(row.id, row.reason, row.expires_at, exceptions.state_of(row, self.now), now)

    def of_finding(self, f: Finding) -> tuple[ExceptionNote, ...]:
        notes = []
        if f.exception_id is not None and (at_upload := self.note(f.exception_id, False)) is not None:
            notes.append(at_upload)
        covering = self.covering(f)
        if covering is not None and covering != f.exception_id and (now := self.note(covering, True)) is not None:
            notes.append(now)
        return tuple(notes)

    def covering(self, f: Finding) -> int | None:
        """The active exception covering the finding now, as an upload would match it."""
        if self.matcher is None or f.redacted_at is not None:
            return None
        return self.matcher.covering(
            {"cve_id": f.cve_id, "package": f.package, "vendor_ids": f.vendor_ids, "synthetic": f.synthetic}
        )


def gate_marks(f: Finding) -> list[tuple[str, str]]:
    """A finding's flags as stored at upload, in words: blocking; new, or existing on the base (block_on new with a
    baseline); excepted. Not payload: a finding emptied by retention still has them."""
    marks = []
    if f.blocking:
        marks.append(("blocking", "blocking"))
    if f.new is True:
        marks.append(("new", "new"))
    elif f.new is False:
        marks.append(("existing", policy.NOT_BLOCKING[policy.EXISTING]))
    if f.exception_id is not None:
        marks.append(("excepted", f"excepted (exception {f.exception_id})"))
    return marks


def accept_url(f: Finding, scan: ScanRun, org_slug: str) -> str | None:
    """The exceptions page's create form, prefilled with what the finding is (the advisory, its package, this
    scan's repository and image name): opening it creates nothing. None for what no exception can cover."""
    if f.redacted_at is not None or not f.cve_id or f.synthetic or f.cve_id.lower().startswith("fremforge-"):
        return None
    return url_for(
        "admin.exceptions_list",
        slug=org_slug,
        advisory_id=f.cve_id,
        package_name=f.package,
        repo_full_name=scan.repo_full_name,
        image=scan.image_name,
        scan=scan.id,
        _anchor="create",
    )


def finding_view(
    f: Finding, scan: ScanRun, notes: ExceptionNotes | None = None, slug: str | None = None
) -> FindingView:
    """A finding for its row: advisory links, marks, the exceptions beside it, and (with the org's `slug`, when no
    active exception covers it now) the link to accept its risk."""
    marks = gate_marks(f)
    found = notes.of_finding(f) if notes is not None else ()
    covered_now = notes is not None and notes.covering(f) is not None
    accept = None if covered_now or slug is None else accept_url(f, scan, slug)
    if f.redacted_at is not None or f.cve_id is None:
        return FindingView(f, [], None, marks, found)
    explanation = None
    if f.synthetic or f.cve_id.upper().startswith("FREMFORGE-"):
        explanation = synthetic_explanation(f.cve_id, scan)
    links = advisories.pages(f.cve_id, f.vendor_ids or (), f.references or ())
    return FindingView(f, links, explanation, marks, found, accept, explanation is None and searchable(f.cve_id))


def searchable(advisory_id: str) -> bool:
    """Whether the advisory search takes `advisory_id` as it is (an id with odd characters links nowhere)."""
    try:
        insight_advisories.parse(advisory_id)
    except insight_advisories.BadQuery:
        return False
    return not advisory_id.endswith("*")


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


def _workflow_snippet(slug: str) -> str:
    return WORKFLOW_SNIPPET.replace("@URL@", public_url()).replace("@SLUG@", slug)
