"""Advisory search: every image whose latest scan has an advisory, as its id or as a vendor id (spec section 6).

It reads the latest_advisories index (each image's latest scan's advisory ids, added by the worker:
app.insights.index): the rows of the id asked, or of the prefix's range, a page at a time in the
index's order, so its cost follows the page, not how many images, scans or findings the org has. A latest scan the
worker has not indexed yet (stored since its last round, or the worker stopped) is read from its findings instead,
in the same order: the answer is the same either way. Two queries whatever the answer: the page, and the exceptions
in force.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from app import commits
from app.fields import MAX_INT64
from app.insights import index
from app.models import Finding, Image, LatestAdvisory, ScanRun
from app.policy.exceptions import ActiveException, Matcher
from app.web import cursors

MAX_QUERY = 200
CURSOR = "a"  # the kind of the search's cursors (app.web.cursors.encode_key): an advisory id and a finding seq
MIN_PREFIX = 4  # "CVE-2024-*" is a search; "C*" would be every finding of every image
# Advisory ids as scanners give them: CVE-2021-44228, GHSA-jfh8-c2jp-5v3q, DSA-4807-1, RHSA-2020:1234, GO-2022-0001...
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+/-]*")


class BadQuery(ValueError):
    """Not an advisory id nor an id prefix (the message says why)."""


@dataclass(frozen=True)
class Query:
    """An advisory id (exact) or an id prefix (`CVE-2024-*`), letter case ignored: kept in upper case."""

    text: str
    prefix: bool

    @property
    def shown(self) -> str:
        return self.text + ("*" if self.prefix else "")


def parse(q: str) -> Query:
    """`CVE-2021-44228` (that id) or `CVE-2021-*` (ids starting so; at least MIN_PREFIX characters before the `*`)."""
    q = q.strip()
    prefix = q.endswith("*")
    text = q[:-1] if prefix else q
    if not text:
        raise BadQuery("is empty: give an advisory id such as CVE-2021-44228, or a prefix such as CVE-2021-*")
    if len(text) > MAX_QUERY:
        raise BadQuery(f"is longer than {MAX_QUERY} characters")
    if not _ID.fullmatch(text):
        raise BadQuery("is not an advisory id: letters, digits and . _ : + / - only, such as CVE-2021-44228")
    if prefix and len(text) < MIN_PREFIX:
        raise BadQuery(f"needs at least {MIN_PREFIX} characters before the *, such as CVE-2021-*")
    return Query(text.upper(), prefix)


@dataclass(frozen=True)
class Hit:
    """A finding of an image's latest scan that has the advisory."""

    image_id: int
    repo_full_name: str
    image_name: str
    scan_run_id: int
    image_ref: str
    ref: str | None
    commit_sha: str
    pr_number: int | None
    scanned_at: datetime
    finding_id: int
    cve_id: str
    vendor_ids: list[str]
    package: str | None
    installed_version: str | None
    fixed_version: str | None
    severity: str | None
    exception: ActiveException | None  # the exception in force now that covers it
    matched_as: str  # "id": the finding's own id has the advisory; "vendor id": one of its vendor ids


def matches(query: Query, advisory_id: str | None) -> bool:
    text = (advisory_id or "").upper()
    return text.startswith(query.text) if query.prefix else text == query.text


Key = tuple[str, int]  # where a page of the search ends: (advisory id, finding seq), the index's own order
HIGHEST = "\U0010ffff"  # sorts after every character: [prefix, prefix + HIGHEST) holds every id starting so


@functools.cache
def _statement(dialect: str, prefix: bool, paged: bool) -> sa.Select[Any]:
    """The page: the index rows of the id `q` (or, for a `prefix`, in the range [q, q_end)), with the advisory ids of
    the latest scans not indexed yet, in the index's order (descending), `limit` of them (a page and one more), after
    (after_id, after_seq) when `paged`; then only those rows' findings (by org and seq), scans and images. Built once
    per dialect and kind: its values are parameters (`_parameters`)."""
    la = LatestAdvisory
    limit = sa.bindparam("limit", type_=sa.Integer)

    def wanted(advisory_id: sa.ColumnElement[str] | Any, seq: sa.ColumnElement[int] | Any) -> sa.ColumnElement[bool]:
        q = sa.bindparam("q", type_=sa.String)
        found = sa.and_(advisory_id >= q, advisory_id < sa.bindparam("q_end")) if prefix else advisory_id == q
        if not paged:
            return found
        after = sa.tuple_(sa.bindparam("after_id", type_=sa.String), sa.bindparam("after_seq", type_=sa.BigInteger))
        return sa.and_(found, sa.tuple_(advisory_id, seq) < after)

    org = sa.bindparam("org", type_=sa.Integer)
    # The latest scans read from the index, and those read from their findings: one or the other, never both.
    indexed = Image.indexed_scan_id == Image.latest_scan_id
    in_index = (
        sa.select(la.advisory_id, la.seq, la.scan_run_id)
        .where(la.org_id == org, wanted(la.advisory_id, la.seq))
        .where(la.scan_run_id.in_(sa.select(Image.latest_scan_id).where(Image.org_id == org, indexed)))
        .order_by(la.advisory_id.desc(), la.seq.desc())
        .limit(limit)
        .subquery("in_index")
    )
    unindexed = Image.indexed_scan_id.is_distinct_from(Image.latest_scan_id)  # NULL: never indexed
    unindexed_scans = sa.select(Image.latest_scan_id).where(Image.org_id == org, unindexed)
    ids = index.advisory_ids(
        dialect,
        Finding.org_id == org,
        Finding.scan_run_id.in_(unindexed_scans),
        match=lambda advisory_id: wanted(advisory_id, Finding.seq),
    ).subquery("ids")
    from_findings = (
        sa.select(ids.c.advisory_id, ids.c.seq, ids.c.scan_run_id)
        .order_by(ids.c.advisory_id.desc(), ids.c.seq.desc())
        .limit(limit)
        .subquery("from_findings")
    )
    both = sa.union_all(sa.select(*in_index.c), sa.select(*from_findings.c)).subquery("both")
    found = sa.select(*both.c).order_by(both.c.advisory_id.desc(), both.c.seq.desc()).limit(limit)
    page = found.subquery("page")
    return (
        sa.select(
            Image.id.label("image_id"),
            Image.repo_full_name,
            Image.image_name,
            page.c.scan_run_id,
            ScanRun.image_ref,
            ScanRun.ref,
            ScanRun.commit_sha,
            ScanRun.pr_number,
            ScanRun.created_at,
            Finding.id.label("finding_id"),
            Finding.cve_id,
            Finding.vendor_ids,
            Finding.package,
            Finding.installed_version,
            Finding.fixed_version,
            Finding.severity,
            page.c.advisory_id,
            page.c.seq,
        )
        .select_from(page)
        .join(ScanRun, ScanRun.id == page.c.scan_run_id)
        .join(
            Image,
            sa.and_(
                Image.org_id == ScanRun.org_id,
                Image.repo_full_name == ScanRun.repo_full_name,
                Image.image_name == ScanRun.image_name,
            ),
        )
        .join(Finding, sa.and_(Finding.org_id == sa.bindparam("org"), Finding.seq == page.c.seq))
        .order_by(page.c.advisory_id.desc(), page.c.seq.desc())
    )


def _parameters(org_id: int, query: Query, after: Key | None, limit: int) -> dict[str, Any]:
    params: dict[str, Any] = {"org": org_id, "q": query.text, "q_end": query.text + HIGHEST, "limit": limit + 1}
    if after is not None:
        params["after_id"], params["after_seq"] = after
    return params


def encode_cursor(key: Key) -> str:
    return cursors.encode_key(CURSOR, *key)


def decode_cursor(cursor: str) -> Key:
    """The key a search cursor names; cursors.BadCursor if it is none the search gave out."""
    return cursors.decode_key(CURSOR, cursor, MAX_INT64, MAX_QUERY)


def search(
    session: Any, org_id: int, query: Query, after: Key | None = None, limit: int = 50
) -> tuple[list[Hit], Key | None]:
    """Up to `limit` findings of the org's images' latest scans that have the advisory (by the latest_advisories
    index: the rows of that id only; a latest scan not indexed yet by its findings), after the key `after`; and the
    key to go on from when more follow. Newest finding first for an id; for a prefix, by id descending (the newest
    advisories first), then newest first."""
    dialect = session.get_bind().dialect.name
    statement = _statement(dialect, query.prefix, after is not None)
    rows = session.execute(statement, _parameters(org_id, query, after, limit)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    exceptions = commits.active_exceptions(session.connection(), org_id)  # read even for no rows: always two queries
    hits = []
    for row in rows:
        r = row._mapping
        vendor_ids = list(r["vendor_ids"] or ())
        matcher = Matcher(exceptions, r["repo_full_name"], r["image_name"])
        covering = matcher.match(r["cve_id"], r["package"], vendor_ids) if matcher else None
        hits.append(
            Hit(
                image_id=r["image_id"],
                repo_full_name=r["repo_full_name"],
                image_name=r["image_name"],
                scan_run_id=r["scan_run_id"],
                image_ref=r["image_ref"],
                ref=r["ref"],
                commit_sha=r["commit_sha"],
                pr_number=r["pr_number"],
                scanned_at=r["created_at"],
                finding_id=r["finding_id"],
                cve_id=r["cve_id"],
                vendor_ids=vendor_ids,
                package=r["package"],
                installed_version=r["installed_version"],
                fixed_version=r["fixed_version"],
                severity=r["severity"],
                exception=matcher.get(covering) if covering is not None else None,
                matched_as="id" if matches(query, r["cve_id"]) else "vendor id",
            )
        )
    last = rows[-1]._mapping if more and rows else None
    return hits, (last["advisory_id"], last["seq"]) if last is not None else None
