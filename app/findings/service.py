"""Ingest: store one validated upload, its chain entries, its verdict and its outbox item in one transaction."""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.orm import Session

from app import chain, commits, fields, locks, policy, prepared, reposts
from app.db import write_transaction
from app.findings import latest as image_latest
from app.findings import queries, store
from app.findings.schemas import Upload
from app.github import checks, outbox
from app.models import GENESIS_HASH, SEVERITIES, ChainHead, Org, OrgSettings, ScanRun, utcnow
from app.policy.exceptions import ActiveException, Matcher
from app.web.urls import Urls

_heads = ChainHead.__table__
_scans = ScanRun.__table__
# Statements built once; the per-request path stays below the ORM.
_SCAN_COLUMNS = (
    "id",
    "org_id",
    "image_ref",
    "image_name",
    "ref",
    "commit_sha",
    "repo_full_name",
    "signature_status",
    "signature_issuer",
    "signature_subject",
    "status",
    "block_action",
    "fixable",
    "accepted",
    "duplicates",
    "created_at",
    "blocking",
    "baseline_scan_id",
    "block_on",
    *SEVERITIES,
)
INSERT_SCAN = sa.insert(_scans).values(
    {
        **{c: sa.bindparam(f"s_{c}", type_=_scans.c[c].type) for c in _SCAN_COLUMNS},
        "pr_number": sa.func.coalesce(
            queries.PR_OF_COMMIT.scalar_subquery(), queries.PR_OF_EARLIER_SCAN.scalar_subquery()
        ),
    }
)


# The id the next scan gets, read before it is stored: PostgreSQL's sequence; on SQLite, whose one writer at a time
# holds the database, the id SQLite itself would give (one past the largest).
NEXT_SCAN_ID = {
    "postgresql": sa.func.nextval(sa.func.pg_get_serial_sequence("scan_runs", "id")).label("scan"),
    "sqlite": sa.select(sa.func.coalesce(sa.func.max(_scans.c.id), 0) + 1).scalar_subquery().label("scan"),
}


# What the statement locking the commit and reading the policy (locks.lock_commit_and_read) also reads. Both: the
# version of the org's exceptions (moved by every change to them). PostgreSQL: the next scan id. SQLite, whose one
# writer holds every lock from the start: also the org's chain head and the latest scan of each of the commit's
# images (one statement, not three; read before this upload's scan is stored).
_head_of_org = _heads.c.org_id == sa.bindparam("org")
_latest = commits.LATEST.subquery("latest")
_exceptions_version = OrgSettings.__table__.c.exceptions_version
READ_WITH_POLICY = {
    "postgresql": (NEXT_SCAN_ID["postgresql"], _exceptions_version),
    "sqlite": (
        NEXT_SCAN_ID["sqlite"],
        _exceptions_version,
        sa.select(_heads.c.seq).where(_head_of_org).scalar_subquery().label("head_seq"),
        sa.select(_heads.c.head_hash).where(_head_of_org).scalar_subquery().label("head_hash"),
        sa.type_coerce(
            sa.select(
                sa.func.json_group_array(sa.func.json_array(*(_latest.c[f] for f in commits.LatestScan._fields)))
            ).scalar_subquery(),
            sa.JSON,
        ).label("latest"),
    ),
}


# PostgreSQL: the scan inserted, the org's chain head locked and read, and the latest scan of each of the commit's
# images as stored before this one (the statement's snapshot does not hold its own insert), in one statement.
STORE_SCAN_AND_LOCK_HEAD = (
    sa.select(_heads.c.seq, _heads.c.head_hash, commits.LATEST_JSON.label("latest"))
    .where(_heads.c.org_id == sa.bindparam("org"))
    .with_for_update(of=_heads)
    .add_cte(INSERT_SCAN.cte("scan"))
)


@dataclass(frozen=True)
class IngestResult:
    scan_run_id: int
    accepted: int
    duplicates: int
    status: str
    severity_counts: dict[str, int]
    fixable: int
    commit_status: dict[str, Any] | None

    def body(self, url: str) -> dict[str, Any]:
        return {
            "scan_run_id": self.scan_run_id,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "status": self.status,
            "severity_counts": self.severity_counts,
            "fixable": self.fixable,
            "commit_status": self.commit_status,
            "url": url,
        }


SYNTHETIC: policy.Bucket = ("synthetic", False, None, False)  # the synthetic findings' entry in blocking_of


@dataclass(frozen=True)
class Assessment:
    """An upload judged under a policy: what ingest stores and posts, made before any lock is taken."""

    findings: list[dict[str, Any]]  # the upload's, and the synthetic one of an unsigned image where signing counts
    buckets: list[policy.Bucket]  # each uploaded finding's (severity, fixable, new, excepted), in order
    blocking_of: dict[policy.Bucket, bool]  # whether a finding of each bucket counts toward the verdict
    exception_ids: list[int | None] | None  # each uploaded finding's covering exception; None: none applied
    counts: dict[str, int]
    fixable: int
    status: str
    blocking: int  # the findings that counted toward the verdict (block_pull only)
    image: policy.ImageResult  # without its scan id, which the database gives
    section: str  # the image's part of the check run (checks.image_section)


def assess(
    upload: Upload,
    pol: policy.Policy,
    base: commits.Baseline | None = None,
    exceptions: Sequence[ActiveException] = (),
    search: checks.SearchUrl | None = None,
) -> Assessment:
    """Judge an upload under `pol`, its findings compared with `base` (block_on new; None: not compared) and
    matched against the org's active `exceptions`; its check-run section's findings linked by `search` (the org's
    advisory search page of an id)."""
    synthetic = policy.signature_findings(pol, upload.signature, upload.image_ref)
    findings = upload.findings + synthetic
    keys = base.keys if base is not None and base.scan_id is not None else None
    matcher = Matcher(exceptions, upload.repo_full_name, fields.image_name(upload.image_ref)) if exceptions else None
    exception_ids = [matcher.covering(f) for f in upload.findings] if matcher else None
    covered = exception_ids or itertools.repeat(None)
    buckets: list[policy.Bucket] = [
        (
            f["severity"],
            bool(f["fixed_version"]),
            None if keys is None else (f["cve_id"], f["package"]) not in keys,
            e is not None,
        )
        for f, e in zip(upload.findings, covered, strict=False)
    ]
    counted = Counter(buckets)
    judged = policy.tally(pol, counted, len(synthetic))
    gating = pol.block_action == "block_pull"
    blocking_of = {b: gating and policy.reason(pol, *b) is None for b in counted}
    blocking_of[SYNTHETIC] = gating  # a synthetic signing finding blocks whenever anything can
    counts, fixable = policy.count(findings)
    status = policy.scan_status(pol, judged.blocks)
    baseline_id = base.scan_id if base is not None else None
    used = set(exception_ids or ()) - {None}
    covering = tuple(e for e in exceptions if e.id in used)
    would = {b: policy.reason(pol, *b) is None for b in counted}  # under warn too: what would block is listed first
    top = policy.top_findings(findings, [would[b] for b in buckets] + [True] * len(synthetic))
    why = base.why_none if base is not None and base.scan_id is None else None
    image = policy.ImageResult(
        upload.image_ref, status, counts, fixable, None, top, judged, baseline_id, covering, no_baseline=why
    )
    section = checks.image_section(image, pol.block_action, pol.block_on, search)
    blocking = judged.blocks if gating else 0
    return Assessment(findings, buckets, blocking_of, exception_ids, counts, fixable, status, blocking, image, section)


def _compared(
    conn: sa.Connection, org_id: int, upload: Upload, pol: policy.Policy, lock: bool = False
) -> commits.Baseline | None:
    """The upload's baseline when the policy asks for one (block_on new). With `lock` (under the upload's image
    lock) its own ref and its pull request's base are locked first (`app.locks.refs`), the base before it is read."""
    if pol.block_on != "new":
        return None
    repo, name = upload.repo_full_name, fields.image_name(upload.image_ref)
    base, why = commits.pr_base_or_why(conn, org_id, repo, upload.commit_sha)
    if lock:
        locks.refs(conn, org_id, repo, upload.ref, base[0] if base is not None else None, shared=True)
    return commits.baseline_at(conn, org_id, repo, name, base, why)


def ingest(
    session: Session,
    org: Org,
    upload: Upload,
    urls: Urls,
    deliver: bool,
    expected: policy.Policy | None = None,
    may_except: bool = True,
    also: Callable[[IngestResult], tuple[sa.Executable, dict[str, Any]]] | None = None,
    exceptions_seen: int | None = None,
) -> IngestResult | None:
    """Store the scan with its findings appended to the org's chain, and the outbox item posting its commit's state.

    Locks in the order of `app.locks`: the commit (its aggregate) with the policy (shared), and last the org's
    chain head. The upload is assessed before any lock under the `expected` policy (as the request read it; its
    baseline and the org's active exceptions read then too), and again only if the locked policy differs or the
    exceptions changed: read again under the lock unless their version is still `exceptions_seen` (as the request
    read it with the policy, before reading them; None: unknown), so an exception revoked while the upload was in
    flight (whose re-posts only find commits already stored) is not applied to it. Its payload hashes, its rows
    and (unless the commit has other images) its outbox item are made before the head is locked. The commit's
    other images are judged under the locked policy (`commits.evaluate`). The image's latest scan moves with it;
    the search's index rows of that scan are the worker's (`app.insights.index`). None when the policy is disabled
    (nothing stored). On PostgreSQL three statements and the commit, the head held for the last (more when the
    commit has other images). `also` gives, from the result, one more statement and its
    parameters, run with the last (an Idempotency-Key's answer, `app.web.idempotency.answer`).
    """
    now = utcnow()
    search = functools.partial(urls.advisory_search, org.slug)  # as outbox.new_item links the check run's findings
    on_postgresql = session.get_bind().dialect.name == "postgresql"
    repo, sha = upload.repo_full_name, upload.commit_sha
    assessed, exceptions = None, None
    if expected is not None and expected.enabled:
        conn = session.connection()
        exceptions = commits.active_exceptions(conn, org.id) if may_except else []
        assessed = assess(upload, expected, _compared(conn, org.id, upload, expected), exceptions, search)
    with write_transaction(session):
        conn = session.connection()
        pol, row = locks.lock_commit_and_read(conn, org.id, repo, sha, *READ_WITH_POLICY[conn.dialect.name])
        if not pol.enabled:
            return None
        if exceptions is None or row.exceptions_version != exceptions_seen:  # changed since they were read, or unread
            fresh = commits.active_exceptions(conn, org.id)
            if fresh != exceptions:
                exceptions, assessed = fresh, None
        compared = None
        if pol.block_on == "new":  # the baseline read again under the image's lock: a base's scan may just have landed
            locks.image(conn, org.id, repo, fields.image_name(upload.image_ref))
            compared = _compared(conn, org.id, upload, pol, lock=True)
            if assessed is not None and compared is not None and assessed.image.baseline_scan_id != compared.scan_id:
                assessed = None
            reposts.ask_for_base(conn, org.id, repo, upload.ref, sha, fields.image_name(upload.image_ref), urls)
        if assessed is None or pol != expected:
            assessed = assess(upload, pol, compared, exceptions, search)
        scan_id, findings, stamp = row.scan, assessed.findings, chain.timestamp(now)
        # PostgreSQL, up to ONE_STATEMENT_ROWS rows: one statement, its rows' JSON made from their payloads (below).
        one_statement = on_postgresql and len(findings) <= store.ONE_STATEMENT_ROWS
        made = (chain.canonical(chain.finding_payload(org.id, scan_id, stamp, f)) for f in findings)
        payloads = list(made) if one_statement else made  # held only when their JSON is made from them
        hashes = chain.hashes_of("finding", payloads)
        scan = {
            "s_id": scan_id,
            "s_org_id": org.id,
            "s_image_ref": upload.image_ref,
            "s_image_name": fields.image_name(upload.image_ref),
            "s_ref": upload.ref,
            "s_commit_sha": sha,
            "s_repo_full_name": repo,
            "s_signature_status": upload.signature.status,
            "s_signature_issuer": upload.signature.issuer,
            "s_signature_subject": upload.signature.subject,
            "s_status": assessed.status,
            "s_block_action": pol.block_action,
            "s_fixable": assessed.fixable,
            "s_accepted": len(upload.findings),
            "s_duplicates": upload.duplicates,
            "s_created_at": now,
            "s_blocking": assessed.blocking,
            "s_baseline_scan_id": assessed.image.baseline_scan_id,
            "s_block_on": pol.block_on,
            **{f"s_{k}": v for k, v in assessed.counts.items()},
            "pr_org": org.id,
            "pr_repo": repo,
            "pr_sha": sha,
            "org": org.id,
            "repo": repo,
            "sha": sha,
        }
        # The outbox item as if the commit had no other image (most often so), made before the org's chain is
        # locked; made again under the lock when the commit has others.
        images = [dataclasses.replace(assessed.image, scan_run_id=scan_id)]
        sections = {upload.image_ref: assessed.section}
        item = outbox.new_item(org, repo, sha, scan_id, images, pol, urls, deliver, sections=sections)
        # The rows' JSON made now but for their chain links.
        unlinked = store.unlinked_json(payloads, _flags(assessed)) if one_statement else None
        seq, head_hash, latest = _store_scan_and_lock_head(conn, org.id, repo, sha, scan, row)
        # The org's chain is held from here to the commit: the aggregate, the rows' links, then one statement.
        others = [s for s in latest if s.image_ref != upload.image_ref]
        if others:
            images += commits.evaluate(conn, pol, org.id, repo, sha, others, exceptions=exceptions)
            item = outbox.new_item(org, repo, sha, scan_id, images, pol, urls, deliver, sections=sections)
        entries, new_seq, new_hash = chain.link(seq, head_hash, hashes)
        a = assessed
        asked = item.asked if item is not None else None
        result = IngestResult(scan_id, len(upload.findings), upload.duplicates, a.status, a.counts, a.fixable, asked)
        statements, params = (item.statements, item.params) if item is not None else ((), {})
        # The image's latest scan moved and the org's trend changed, first: SQLAlchemy takes the column defaults of
        # an INSERT in a WITH from the last one, the outbox item's.
        name = scan["s_image_name"]
        statements = (*image_latest.MOVE[conn.dialect.name], *statements)
        moved = image_latest.move_params(org.id, repo, name, scan_id, now, assessed.counts)
        params = {**params, **moved}
        if also is not None:
            # Before the outbox item's: SQLAlchemy takes the column defaults of an INSERT in a WITH from the last one.
            statement, more = also(result)
            statements, params = (statement, *statements), {**params, **more}
        store.insert(
            conn,
            _finding_rows(conn.dialect.name, org.id, scan_id, now, entries, assessed),
            len(findings),
            store.Head(org.id, new_seq, new_hash) if new_seq != seq else None,
            statements,
            params,
            store.linked_json(unlinked, entries) if unlinked is not None else None,
        )
    return result


def _store_scan_and_lock_head(
    conn: sa.Connection, org_id: int, repo: str, sha: str, scan: dict[str, Any], read: Any
) -> tuple[int, str, list[commits.LatestScan]]:
    """Insert the scan, then lock the org's chain head: its (seq, hash), and the commit's latest scans stored before.

    One statement on PostgreSQL; on SQLite, where its one writer holds everything, the insert alone (the rest was
    `read` with the policy: READ_WITH_POLICY).
    """
    row: Any  # (seq, head_hash, latest)
    if conn.dialect.name == "postgresql":
        found = next(iter(prepared.run(conn, STORE_SCAN_AND_LOCK_HEAD, scan)), None)
        row = (found.seq, found.head_hash, found.latest) if found is not None else None
    else:
        prepared.run(conn, INSERT_SCAN, scan)
        row = (read.head_seq, read.head_hash, read.latest) if read.head_seq is not None else None
    if row is None:  # an org made by hand, without its chain head
        conn.execute(sa.insert(_heads).values(org_id=org_id, seq=0, head_hash=GENESIS_HASH))
        latest = [j for j in commits.latest_scans(conn, org_id, repo, sha) if j.id != scan["s_id"]]
        return 0, GENESIS_HASH, latest
    seq, head_hash, latest_json = row
    return seq, head_hash, commits.latest_from_json(latest_json)


def _unlinked_rows(
    dialect: str, org_id: int, scan_id: int, now: Any, assessed: Assessment
) -> Iterator[tuple[Any, ...]]:
    """The findings as rows in store.UNLINKED_COLUMNS order (all but their chain links), made as they are used."""
    created = store.sqlite_datetime(now) if dialect == "sqlite" else now
    dumps = orjson.dumps
    for f, (blocks, new, exception_id) in zip(assessed.findings, _flags(assessed), strict=True):
        yield (
            org_id,
            scan_id,
            created,
            f["cve_id"],
            f["severity"],
            f["package"],
            f["installed_version"],
            f["fixed_version"],
            f["target"],
            f["title"],
            f["primary_url"],
            dumps(f["references"]).decode(),
            dumps(f["vendor_ids"]).decode(),
            f["synthetic"],
            f.get("truncated") or None,  # NULL unless cut, as for findings stored before the column
            blocks,
            new,
            exception_id,
        )


def _finding_rows(
    dialect: str, org_id: int, scan_id: int, now: Any, entries: list[tuple[int, str, str]], assessed: Assessment
) -> Iterator[tuple[Any, ...]]:
    """The findings as rows in store.COLUMNS order, made as they are written, not all held at once."""
    for (seq, ph, ch), row in zip(entries, _unlinked_rows(dialect, org_id, scan_id, now, assessed), strict=True):
        yield (row[0], row[1], seq, ph, ch, *row[2:])


def _flags(assessed: Assessment) -> Iterator[tuple[bool, bool | None, int | None]]:
    """Each finding's (blocking, new, exception_id): the uploaded ones by their bucket, then the synthetic ones."""
    blocking_of, covered = assessed.blocking_of, assessed.exception_ids or itertools.repeat(None)
    for b, e in zip(assessed.buckets, covered, strict=False):
        yield blocking_of[b], b[2], e
    for _ in range(len(assessed.findings) - len(assessed.buckets)):
        yield blocking_of[SYNTHETIC], None, None
