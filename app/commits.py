"""A commit's aggregate: the latest scan of each of its images, their most severe findings, and their baselines.

What ingest, a re-post and the commit page all read to say a commit's state: each image's latest scan judged under
the current policy (`evaluate`), then aggregated by app.policy.commit_verdict.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import sqlalchemy as sa

from app import policy
from app.clock import database_now
from app.models import (
    FINDING_PAYLOAD_COLUMNS,
    SEVERITIES,
    Finding,
    PolicyException,
    PullRequestHead,
    PullRequestLink,
    ScanRun,
)
from app.policy.exceptions import ActiveException, Matcher

SEVERITY_ORDER = sa.case({s: i for i, s in enumerate(SEVERITIES)}, value=Finding.severity, else_=len(SEVERITIES))
FINDING_COLUMNS = FINDING_PAYLOAD_COLUMNS


_LATEST_IDS = (
    sa.select(sa.func.max(ScanRun.id))
    .where(
        ScanRun.org_id == sa.bindparam("org"),
        ScanRun.repo_full_name == sa.bindparam("repo"),
        ScanRun.commit_sha == sa.bindparam("sha"),
    )
    .group_by(ScanRun.image_ref)
)
LATEST = (
    sa.select(
        ScanRun.id,
        ScanRun.image_ref,
        ScanRun.image_name,
        ScanRun.status,
        ScanRun.fixable,
        ScanRun.pr_number,
        ScanRun.signature_status,
        ScanRun.signature_issuer,
        ScanRun.signature_subject,
        *(getattr(ScanRun, s) for s in SEVERITIES),
        ScanRun.accepted,
    )
    .where(ScanRun.id.in_(_LATEST_IDS))
    .order_by(ScanRun.image_ref)
)


def _top_findings_statement() -> sa.Select[Any]:
    # Those that blocked when the scan was judged first: the candidates `listed` judges under the policy now.
    blocked_first = sa.case((Finding.blocking.is_(True), 0), else_=1)
    rank = sa.func.row_number().over(
        partition_by=Finding.scan_run_id, order_by=(blocked_first, SEVERITY_ORDER, Finding.package, Finding.cve_id)
    )
    ranked = (
        sa.select(Finding.scan_run_id, *(getattr(Finding, c) for c in FINDING_COLUMNS), rank.label("rank"))
        .where(Finding.scan_run_id.in_(sa.bindparam("ids", expanding=True)), Finding.cve_id.is_not(None))
        .subquery()
    )
    return sa.select(ranked).where(ranked.c.rank <= sa.bindparam("limit")).order_by(ranked.c.rank)


# Built once: building this subquery took about a millisecond a call, more than running it.
TOP_FINDINGS = _top_findings_statement()


def top_findings_many(conn: sa.Connection, scan_ids: Sequence[int], limit: int = 5) -> dict[int, list[dict[str, Any]]]:
    """The most severe findings of each of several scans, in one query."""
    if not scan_ids:
        return {}
    found: dict[int, list[dict[str, Any]]] = {i: [] for i in scan_ids}
    for row in conn.execute(TOP_FINDINGS, {"ids": list(scan_ids), "limit": limit}).mappings():
        found[row["scan_run_id"]].append({c: row[c] for c in FINDING_COLUMNS})
    return found


class LatestScan(NamedTuple):
    """The latest scan of one image of a commit, as the commit's aggregate uses it (whatever it was judged at upload:
    the aggregate judges it under the current policy, `evaluate`)."""

    id: int
    image_ref: str
    image_name: str | None
    status: str
    fixable: int
    pr_number: int | None
    signature_status: str
    signature_issuer: str | None
    signature_subject: str | None
    critical: int
    high: int
    medium: int
    low: int
    unknown: int
    accepted: int  # the unique uploaded findings stored: the counts above less the scan's synthetic findings


def latest_scans(conn: sa.Connection, org_id: int, repo: str, sha: str) -> list[LatestScan]:
    """The latest scan of each image of a commit."""
    return [LatestScan(*row) for row in conn.execute(LATEST, {"org": org_id, "repo": repo, "sha": sha})]


# The same as one JSON array (PostgreSQL), for a statement that reads it beside other things: `latest_from_json`.
_latest = LATEST.subquery("latest")
LATEST_JSON = sa.select(
    sa.func.coalesce(
        sa.func.json_agg(sa.func.json_build_array(*(_latest.c[f] for f in LatestScan._fields))),
        sa.literal_column("'[]'::json"),
    )
).scalar_subquery()


def latest_from_json(value: list[list[Any]]) -> list[LatestScan]:
    """LATEST's rows read as one JSON array (by image ref, as LATEST gives them)."""
    return sorted((LatestScan(*row) for row in value), key=lambda scan: scan.image_ref)


# ---------------------------------------------------------------- baselines (spec section 3)


def _newest_scan(*where: sa.ColumnElement[bool]) -> sa.Select[Any]:
    """The newest scan of an image name in a repository (never the scan asking) that also meets `where`."""
    return (
        sa.select(ScanRun.id)
        .where(
            ScanRun.org_id == sa.bindparam("org"),
            ScanRun.repo_full_name == sa.bindparam("repo"),
            ScanRun.image_name == sa.bindparam("name"),
            ScanRun.id != sa.bindparam("self"),
            *where,
        )
        .order_by(ScanRun.id.desc())
        .limit(1)
    )


# A scan stored under the base branch's ref whose commit is (or was) the head of a pull request into that branch was
# not built from the branch: its workflow ran for the pull request with the base's ref (`pull_request_target` gives
# `github.ref` = the base). Every head a pull request had is kept (PullRequestHead), whenever its scan came; a head
# that itself reached that base (a fast-forward merge: some pull request into it has it as its merge commit) is the
# base's. When the base's newest scan is such a head's, the base as it is now is unknown: there is no baseline (an
# older scan of the branch, or of the pull request's base commit, would count as existing what the base fixed since).
_ph = PullRequestHead.__table__
_BY_BRANCH = _newest_scan(ScanRun.ref == sa.bindparam("ref")).add_columns(ScanRun.commit_sha)
# Probed for the one scan _BY_BRANCH found (an EXISTS over every newest scan was planned as a hash of both tables).
_A_HEAD_INTO_ITS_REF = sa.select(
    sa.select(_ph.c.id)
    .where(
        _ph.c.org_id == sa.bindparam("org"),
        _ph.c.repo_full_name == sa.bindparam("repo"),
        _ph.c.head_sha == sa.bindparam("sha"),
        _ph.c.base_ref == sa.bindparam("ref"),
        ~sa.select(PullRequestLink.id)
        .where(
            PullRequestLink.org_id == sa.bindparam("org"),
            PullRequestLink.repo_full_name == sa.bindparam("repo"),
            PullRequestLink.merge_sha == sa.bindparam("sha"),
            PullRequestLink.base_ref == sa.bindparam("ref"),
        )
        .exists(),
    )
    .exists()
)
_BY_COMMIT = _newest_scan(ScanRun.commit_sha == sa.bindparam("sha"))
# The bases of the open pull requests whose head is the commit (two are enough to tell it has more than one).
_PR_BASE = (
    sa.select(PullRequestLink.base_ref, PullRequestLink.base_sha)
    .where(
        PullRequestLink.org_id == sa.bindparam("org"),
        PullRequestLink.repo_full_name == sa.bindparam("repo"),
        PullRequestLink.head_sha == sa.bindparam("sha"),
        PullRequestLink.state == "open",
    )
    .distinct()
    .limit(2)
)
_KEYS = sa.select(Finding.cve_id, Finding.package).where(
    Finding.scan_run_id == sa.bindparam("scan"), Finding.cve_id.is_not(None)
)


# Why a scan has no baseline under block_on new (the check run says which, after "no baseline: every finding counts").
NO_PULL_REQUEST = "no open pull request known with this commit as its head"
MANY_BASES = "open pull requests with this head into different bases"
NO_BASE_SCAN = "no scan of this image from the base branch or at the base commit"
BASE_IS_A_HEAD = "the base branch's newest scan of this image is of a pull request's head, not of the branch"


def pr_base(conn: sa.Connection, org_id: int, repo: str, sha: str) -> tuple[str | None, str | None] | None:
    """The base (refs/heads/<branch>, commit) of the open pull request whose head is this commit; None: no PR known,
    or open pull requests into different bases (one commit status serves them all: every finding counts, which
    fails closed for each)."""
    return pr_base_or_why(conn, org_id, repo, sha)[0]


def pr_base_or_why(
    conn: sa.Connection, org_id: int, repo: str, sha: str
) -> tuple[tuple[str | None, str | None] | None, str | None]:
    """pr_base, and when it is None why not (NO_PULL_REQUEST, MANY_BASES)."""
    rows = conn.execute(_PR_BASE, {"org": org_id, "repo": repo, "sha": sha}).all()
    if len(rows) == 1:
        return (rows[0].base_ref, rows[0].base_sha), None
    return None, MANY_BASES if rows else NO_PULL_REQUEST


def baseline_or_why(
    conn: sa.Connection,
    org_id: int,
    repo: str,
    image_name: str | None,
    base_ref: str | None,
    base_sha: str | None,
    scan_id: int = 0,
) -> tuple[int | None, str | None]:
    """The baseline of a scan (`scan_id`, never its own) of `image_name` in `repo`, and when there is none why
    (NO_BASE_SCAN, BASE_IS_A_HEAD): the newest scan of that image name built from the pull request's base branch (when
    that is a pull request head's, _A_HEAD_INTO_ITS_REF, none), else the newest of it at the base commit. None: no
    baseline, every finding is new."""
    if image_name is None:  # a scan stored before image names were (migration 0013): nothing is the same image
        return None, NO_BASE_SCAN
    params = {"org": org_id, "repo": repo, "name": image_name, "self": scan_id}
    if base_ref is not None:
        newest = conn.execute(_BY_BRANCH, {**params, "ref": base_ref}).one_or_none()
        if newest is not None:
            head = {"org": org_id, "repo": repo, "sha": newest.commit_sha, "ref": base_ref}
            if conn.execute(_A_HEAD_INTO_ITS_REF, head).scalar():
                return None, BASE_IS_A_HEAD  # not even the base commit's scan: it may be older than a fix
            return int(newest.id), None
    if base_sha is not None:
        found = conn.execute(_BY_COMMIT, {**params, "sha": base_sha}).scalar()
        if found is not None:
            return int(found), None
    return None, NO_BASE_SCAN


@dataclass(frozen=True)
class Baseline:
    """What an upload's findings are compared with under block_on new: the baseline scan and its (advisory id,
    package) pairs; scan_id None when no pull request is known or no baseline was found (every finding counts)."""

    scan_id: int | None
    keys: frozenset[tuple[str, str]] = frozenset()
    why_none: str | None = None  # with no scan: why (NO_PULL_REQUEST, MANY_BASES, NO_BASE_SCAN)


def baseline_at(
    conn: sa.Connection,
    org_id: int,
    repo: str,
    image_name: str | None,
    base: tuple[str | None, str | None] | None,
    why: str | None,
) -> Baseline:
    """The baseline of an upload of `image_name` whose pull request's base is `base`, with its keys (`base` and
    `why` as pr_base_or_why gives them): two indexed reads at most."""
    found = None
    if base is not None:
        found, why = baseline_or_why(conn, org_id, repo, image_name, *base)
    if found is None:
        return Baseline(None, frozenset(), why or NO_BASE_SCAN)
    return Baseline(found, frozenset(baseline_keys(conn, found)))


def baseline_keys(conn: sa.Connection, scan_id: int) -> set[tuple[str, str]]:
    """What a finding is the same as in a baseline by: (advisory id, package). A finding emptied by retention has
    none, so what it was counts as new (fails closed)."""
    # The driver's rows as they come (plain tuples): building SQLAlchemy rows for 10,000 keys cost 3x the query.
    return set(conn.execute(_KEYS, {"scan": scan_id}).cursor.fetchall())


# ---------------------------------------------------------------- the aggregate under the current policy


def _rows_statement(compare: bool) -> sa.Select[Any]:
    """A scan's findings as the blocking rule reads them: severity, fixable, `new` against the baseline's (advisory
    id, package) pairs when `compare` (else NULL), and what exceptions match by. Synthetic findings are left out
    (the current policy makes its own); findings emptied by retention come with a NULL severity (`redacted`)."""
    fixable = sa.func.coalesce(Finding.fixed_version, sa.literal_column("''")) != sa.literal_column("''")
    new: sa.ColumnElement[Any] = sa.null()
    base = sa.select(Finding.cve_id, Finding.package).where(Finding.scan_run_id == sa.bindparam("base"))
    keys = base.distinct().subquery("base")
    rows = sa.select(
        Finding.severity, fixable.label("fixable"), Finding.cve_id, Finding.package, Finding.vendor_ids
    ).where(
        Finding.scan_run_id == sa.bindparam("scan"),
        sa.func.coalesce(Finding.synthetic, sa.false()) == sa.false(),
    )
    if compare:
        new = keys.c.cve_id.is_(None)
        rows = rows.outerjoin(keys, sa.and_(keys.c.cve_id == Finding.cve_id, keys.c.package == Finding.package))
    return rows.add_columns(new.label("new"))


def _bucket_statement(compare: bool) -> sa.Select[Any]:
    """`_rows_statement` counted by (severity, fixable, new), for a scan no exception applies to."""
    rows = _rows_statement(compare).subquery("f")
    return sa.select(rows.c.severity, rows.c.fixable, rows.c.new, sa.func.count()).group_by(
        rows.c.severity, rows.c.fixable, rows.c.new
    )


ROWS = {compare: _rows_statement(compare) for compare in (False, True)}  # built once
BUCKETS = {compare: _bucket_statement(compare) for compare in (False, True)}


def buckets(
    conn: sa.Connection, scan_id: int, baseline_id: int | None, matcher: Matcher | None = None
) -> tuple[dict[policy.Bucket, int], set[int]]:
    """How a stored scan's findings fall into the blocking rule's buckets, compared with `baseline_id` if any, and
    the exceptions of `matcher` that covered one. Counted by the database when no exception applies to the scan;
    else its findings are read and matched here (one query either way). Findings emptied by retention are counted
    in the bucket of severity None (see `redacted`)."""
    params = {"scan": scan_id, "base": baseline_id}
    compare = baseline_id is not None
    if not matcher:
        rows = conn.execute(BUCKETS[compare], params)
        return {
            (sev, bool(fixable), None if new is None else bool(new), False): n for sev, fixable, new, n in rows
        }, set()
    counted: Counter[policy.Bucket] = Counter()
    used: set[int] = set()
    for row in conn.execute(ROWS[compare], params):
        if row.severity is None:  # emptied by retention: nothing left to match
            counted[(None, False, None, False)] += 1
            continue
        covering = matcher.match(row.cve_id, row.package, row.vendor_ids)
        if covering is not None:
            used.add(covering)
        counted[
            (row.severity, bool(row.fixable), None if row.new is None else bool(row.new), covering is not None)
        ] += 1
    return dict(counted), used


_ACTIVE = sa.select(
    PolicyException.id,
    PolicyException.advisory_id,
    PolicyException.reason,
    PolicyException.expires_at,
    PolicyException.package_name,
    PolicyException.repo_full_name,
    PolicyException.image,
).where(
    PolicyException.org_id == sa.bindparam("org"),
    PolicyException.revoked_at.is_(None),
    PolicyException.expires_at > database_now(),
)


def active_exceptions(conn: sa.Connection, org_id: int) -> list[ActiveException]:
    """The org's exceptions in force now, on the database's clock."""
    return [ActiveException(*row) for row in conn.execute(_ACTIVE, {"org": org_id})]


def evaluate(
    conn: sa.Connection,
    pol: policy.Policy,
    org_id: int,
    repo: str,
    sha: str,
    scans: Sequence[LatestScan],
    tops: dict[int, list[dict[str, Any]]] | None = None,
    exceptions: Sequence[ActiveException] | None = None,
) -> list[policy.ImageResult]:
    """Each scan judged under the policy as it is now (spec section 4): its findings against the baseline it has
    now (block_on new) and the exceptions active now, its signature against the signing rules now. A query for the
    pull request's base and one for the exceptions (unless given), then per scan one for its baseline and one
    counting its findings. `tops` may hold the scans' top findings already read."""
    if not scans:
        return []
    base, why = pr_base_or_why(conn, org_id, repo, sha) if pol.block_on == "new" else (None, None)
    if exceptions is None:
        exceptions = active_exceptions(conn, org_id)
    if tops is None:  # more than are listed: listed, those that block now first (`listed`)
        tops = top_findings_many(conn, [s.id for s in scans], CANDIDATES)
    results = []
    for s in scans:
        baseline_id, why_none = None, why
        if base is not None:
            baseline_id, why_none = baseline_or_why(conn, org_id, repo, s.image_name, *base, scan_id=s.id)
        matcher = Matcher(exceptions, repo, s.image_name) if exceptions else None
        counted, used = buckets(conn, s.id, baseline_id, matcher)
        readable_fixable = sum(n for (severity, fixed, _, _), n in counted.items() if severity is not None and fixed)
        counted, removed = redacted(counted, s, baseline_id is not None)
        signature = policy.Signature(s.signature_status, s.signature_issuer, s.signature_subject)
        synthetic = policy.signature_findings(pol, signature, s.image_ref)
        counts, fixable = dict.fromkeys(SEVERITIES, 0), 0
        for (severity, fixed, _, _), n in counted.items():
            if severity in counts:
                counts[severity] += n
            fixable += n if fixed else 0
        counts["critical"] += len(synthetic)
        judged = policy.tally(pol, counted, len(synthetic))
        keys = baseline_keys(conn, baseline_id) if baseline_id is not None else None
        top = [*synthetic, *listed(pol, tops.get(s.id, []), keys, matcher)]
        status = policy.scan_status(pol, judged.blocks)
        covering = tuple(e for e in exceptions if e.id in used)
        if removed:  # those put back count as fixable to judge them; shown, the scan's stored count of them
            fixable = max(readable_fixable, s.fixable)
        no_baseline = (why_none or NO_BASE_SCAN) if pol.block_on == "new" and baseline_id is None else None
        results.append(
            policy.ImageResult(
                s.image_ref, status, counts, fixable, s.id, top, judged, baseline_id, covering, removed, no_baseline
            )
        )
    return results


CANDIDATES = 10  # a scan's findings read to list five: those that blocked at upload first, then the most severe


def listed(
    pol: policy.Policy,
    candidates: Sequence[dict[str, Any]],
    keys: set[tuple[str, str]] | None,
    matcher: Matcher | None,
    limit: int = 5,
) -> list[dict[str, Any]]:
    """The findings a scan's summary lists, judged under the policy now (`keys`: its baseline's, None: not compared):
    those that block first, then the most severe, as an upload's own (policy.top_findings)."""
    uploaded = [f for f in candidates if not f.get("synthetic")]

    def blocks(f: dict[str, Any]) -> bool:
        new = None if keys is None else (f["cve_id"], f["package"]) not in keys
        excepted = matcher is not None and matcher.covering(f) is not None
        return policy.reason(pol, f["severity"], bool(f["fixed_version"]), new, excepted) is None

    return [dict(f) for f in policy.top_findings(uploaded, [blocks(f) for f in uploaded], limit)]


def redacted(
    counted: dict[policy.Bucket, int], scan: LatestScan, compared: bool
) -> tuple[dict[policy.Bucket, int], int]:
    """`counted` with the scan's findings emptied by retention (the bucket of severity None) put back by the
    severities the scan stored, judged as fixable, new and not excepted: what they were can no longer be read, so
    they block wherever their severity could (a gate fails closed); and how many were put back. A scan's stored
    counts hold its synthetic findings (critical) too: those beyond `accepted`, which the current policy makes afresh
    (emptied, they are not put back)."""
    counted = dict(counted)
    emptied = sum(n for (severity, *_), n in counted.items() if severity is None)  # synthetic ones too
    for key in [k for k in counted if k[0] is None]:
        del counted[key]
    if not emptied:
        return counted, 0
    stored = {severity: int(getattr(scan, severity) or 0) for severity in SEVERITIES}
    stored["critical"] -= max(0, sum(stored.values()) - int(scan.accepted or 0))  # less the synthetic ones
    readable = Counter[str]()
    for (severity, *_), n in counted.items():
        readable[str(severity)] += n
    new = True if compared else None
    removed = 0
    for severity in SEVERITIES:
        gone = max(0, stored[severity] - readable[severity])
        if gone:
            key = (severity, True, new, False)
            counted[key] = counted.get(key, 0) + gone
            removed += gone
    return counted, removed
