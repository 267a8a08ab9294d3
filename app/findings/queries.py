"""Read-side queries over scans and findings, shared by the API and the admin pages (a commit's aggregate:
app.commits)."""

from __future__ import annotations

import base64
from collections.abc import Sequence

import orjson
import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.commits import SEVERITY_ORDER
from app.models import SEVERITIES, Finding, OutboxItem, PullRequestLink, ScanRun
from app.web import cursors

# The open pull request whose head is a commit (the newest, if several), from pull_request webhooks; else the one
# an earlier scan of the commit was stored with. Subqueries of the scan's INSERT: ingest pays no round trip for them.
PR_OF_COMMIT = sa.select(sa.func.max(PullRequestLink.number)).where(
    PullRequestLink.org_id == sa.bindparam("pr_org"),
    PullRequestLink.repo_full_name == sa.bindparam("pr_repo"),
    PullRequestLink.head_sha == sa.bindparam("pr_sha"),
    PullRequestLink.state == "open",
)
PR_OF_EARLIER_SCAN = (
    sa.select(ScanRun.pr_number)
    .where(
        ScanRun.org_id == sa.bindparam("pr_org"),
        ScanRun.repo_full_name == sa.bindparam("pr_repo"),
        ScanRun.commit_sha == sa.bindparam("pr_sha"),
        ScanRun.pr_number.is_not(None),
    )
    .order_by(ScanRun.id.desc())
    .limit(1)
)


def findings_of(session: Session, scan_run_id: int) -> list[Finding]:
    """Every finding of a scan, most severe first, then by package."""
    return list(
        session.scalars(
            sa.select(Finding)
            .where(Finding.scan_run_id == scan_run_id)
            .order_by(SEVERITY_ORDER, Finding.package, Finding.cve_id, Finding.seq)
        )
    )


# A page of findings in that order, keyed by the last row's sort key (stable, and cheap however deep the page).
# A finding emptied by retention sorts last (no severity), with '' for its package and id.
_PAGE_KEY = (SEVERITY_ORDER, sa.func.coalesce(Finding.package, ""), sa.func.coalesce(Finding.cve_id, ""), Finding.seq)
FindingKey = tuple[int, str, str, int]


def findings_page(
    session: Session, scan_run_id: int, after: FindingKey | None, limit: int
) -> tuple[list[Finding], FindingKey | None]:
    """Up to `limit` findings of a scan after `after`, most severe first; and the key to go on from, if more follow."""
    q = sa.select(Finding).where(Finding.scan_run_id == scan_run_id).order_by(*_PAGE_KEY).limit(limit + 1)
    if after is not None:
        q = q.where(sa.tuple_(*_PAGE_KEY) > sa.tuple_(*(sa.literal(v) for v in after)))
    rows = list(session.scalars(q))
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    rank = SEVERITIES.index(last.severity) if last.severity in SEVERITIES else len(SEVERITIES)
    return rows[:limit], (rank, last.package or "", last.cve_id or "", last.seq)


def encode_finding_cursor(scan_id: int, key: FindingKey) -> str:
    """The cursor of scan `scan_id`'s findings after `key`: it names the scan, so that it reads no other's."""
    return base64.urlsafe_b64encode(b"f:" + orjson.dumps([scan_id, *key])).decode().rstrip("=")


def decode_finding_cursor(cursor: str, scan_id: int) -> FindingKey:
    """The key a cursor of scan `scan_id`'s findings holds; BadCursor for any other text, another scan's included."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        if not raw.startswith(b"f:"):
            raise ValueError
        scan, rank, package, cve_id, seq = orjson.loads(raw[2:])
        if not (
            scan == scan_id
            and type(scan) is int
            and type(rank) is int  # not a bool, which is an int to isinstance
            and 0 <= rank <= len(SEVERITIES)
            and _cursor_text(package)
            and _cursor_text(cve_id)
            and type(seq) is int
            and 0 <= seq < 2**63
        ):
            raise ValueError
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise BadCursor(cursor) from None
    return rank, package, cve_id, seq


def _cursor_text(value: object) -> bool:
    """Whether a cursor's text part could be a stored package or advisory id (no NUL, at most 1,024 characters)."""
    return isinstance(value, str) and len(value) <= 1024 and "\x00" not in value


def outbox_by_scan(session: Session, scan_ids: Sequence[int]) -> dict[int, OutboxItem]:
    """Each scan's outbox item, with `shown_before` set (see note_shown_before)."""
    if not scan_ids:
        return {}
    rows = list(session.scalars(sa.select(OutboxItem).where(OutboxItem.scan_run_id.in_(scan_ids))))
    note_shown_before(session, rows)
    return {r.scan_run_id: r for r in rows}


def note_shown_before(session: Session, items: Sequence[OutboxItem | None]) -> None:
    """Set `shown_before` on each outbox item whose status is not on GitHub: the state of the commit's newest older
    outbox item whose status was posted, which is what GitHub still shows (one query for all of them)."""
    waiting = [w for w in items if w is not None and w.state in ("pending", "failed") and not w.status_posted]
    if not waiting:
        return
    commits = {(w.org_id, w.repo_full_name, w.commit_sha) for w in waiting}
    posted = session.execute(
        sa.select(
            OutboxItem.id, OutboxItem.org_id, OutboxItem.repo_full_name, OutboxItem.commit_sha, OutboxItem.commit_status
        )
        .where(
            sa.tuple_(OutboxItem.org_id, OutboxItem.repo_full_name, OutboxItem.commit_sha).in_(list(commits)),
            OutboxItem.status_posted.is_(True),
        )
        .order_by(OutboxItem.id)
    ).all()
    for item in waiting:
        older = [
            p
            for p in posted
            if (p.org_id, p.repo_full_name, p.commit_sha) == (item.org_id, item.repo_full_name, item.commit_sha)
            and p.id < item.id
        ]
        if older:
            item.shown_before = older[-1].commit_status.get("state")


BadCursor = cursors.BadCursor


def encode_cursor(scan_id: int) -> str:
    return cursors.encode("s", scan_id)


def decode_cursor(cursor: str) -> int:
    return cursors.decode("s", cursor)


def list_scans(
    session: Session,
    org_id: int,
    *,
    repo: str | None = None,
    commit_sha: str | None = None,
    image_ref: str | None = None,
    image_name: str | None = None,
    ref: str | None = None,
    pr: int | None = None,
    status: str | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> tuple[list[ScanRun], int | None]:
    """One page of scans, newest first (keyset on id); and the id to continue from, if there is more. `image_name`:
    every tag and digest of one image (an image page's "its scans")."""
    q = sa.select(ScanRun).where(ScanRun.org_id == org_id)
    if repo:
        q = q.where(ScanRun.repo_full_name == repo.lower())
    if commit_sha:
        q = q.where(ScanRun.commit_sha == commit_sha.lower())
    if image_ref:
        q = q.where(ScanRun.image_ref == image_ref)
    if image_name:
        q = q.where(ScanRun.image_name == image_name)
    if ref:
        q = q.where(ScanRun.ref == ref)
    if pr is not None:
        q = q.where(ScanRun.pr_number == pr)
    if status:
        q = q.where(ScanRun.status == status)
    if before_id is not None:
        q = q.where(ScanRun.id < before_id)
    rows = list(session.scalars(q.order_by(ScanRun.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].id if more and rows else None)
