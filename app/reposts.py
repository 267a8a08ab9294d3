"""Re-posting: what changes a verdict re-posts the affected commits' aggregates under the current policy (spec
section 4) — a settings change (every commit that is the head of an open pull request or was scanned in the last
RECENT), a pull request's link or base learnt (its head commit), a new scan of a pull request's base under block_on
new (the heads whose baseline it may be).

The `ask_*` functions record the commits in the same transaction as the change: one row per commit however often
asked, each statement upserting its rows in key order (`_asking`), and never more than one such statement in a
transaction that another ask may run beside (two, each in key order, could deadlock with a third), so a burst of
changes makes at most one outbox item per commit each time the worker comes round. The worker
(`app.github.outbox.repost_asked`) leases a batch of rows on the database's clock (`claim`) and stores each commit's
outbox item with `outbox.repost` (the commit's lock, then the policy as it is by then), in a transaction of its own
that also removes the row (`DONE`) — unless it was asked again meanwhile (its version moved): then it stays for the
next round. A worker that dies mid-batch leaves its rows to be leased again when the lease ends: nothing is lost.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app import clock
from app.db import write_transaction
from app.models import Org, PullRequestLink, Repost, ScanRun
from app.web.urls import Urls

RECENT = timedelta(days=7)
# A worker that dies holding a batch holds it this long: with the worker's round, re-posted within a minute (spec
# section 4). A batch is left (its rest leased again) once half of it has passed: `outbox.repost_asked`.
LEASE = timedelta(seconds=30)
BATCH = 200

_reposts = Repost.__table__
_scans = ScanRun.__table__
_links = PullRequestLink.__table__
_orgs = Org.__table__

# The commits a change of the org's policy affects: scanned in the last RECENT, or the head of an open pull request
# (with a scan: a head never scanned has nothing to post).
_RECENT = sa.select(_scans.c.org_id, _scans.c.repo_full_name, _scans.c.commit_sha).where(
    _scans.c.org_id == sa.bindparam("org"), _scans.c.created_at >= sa.bindparam("since")
)


def _head_scanned(*where: sa.ColumnElement[bool]) -> sa.Exists:
    """Whether the pull request's head has a scan (that also meets `where`)."""
    return (
        sa.select(_scans.c.id)
        .where(
            _scans.c.org_id == _links.c.org_id,
            _scans.c.repo_full_name == _links.c.repo_full_name,
            _scans.c.commit_sha == _links.c.head_sha,
            *where,
        )
        .exists()
    )


_SCANNED = _head_scanned()
# A semi-join the planner runs as one index probe per open pull request, whatever the tables' statistics say.
_OPEN_HEADS = sa.select(_links.c.org_id, _links.c.repo_full_name, _links.c.head_sha).where(
    _links.c.org_id == sa.bindparam("org"), _links.c.state == "open", _SCANNED
)
_AFFECTED = sa.union(_RECENT, _OPEN_HEADS).subquery("affected")


def _upsert(dialect: str, source: sa.Select[Any]) -> Any:
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(_reposts).from_select(
        ["org_id", "repo_full_name", "commit_sha", "base_url", "version", "requested_at"], source
    )
    return insert.on_conflict_do_update(
        index_elements=["org_id", "repo_full_name", "commit_sha"],
        set_={
            "version": _reposts.c.version + 1,
            "base_url": insert.excluded.base_url,
            "requested_at": insert.excluded.requested_at,
            "claimed_until": None,
        },
    )


def _asking(org: sa.ColumnElement[Any], repo: sa.ColumnElement[Any], sha: sa.ColumnElement[Any]) -> sa.Select[Any]:
    """The rows of `reposts` asking for these commits, as the upsert's source takes them: in key order, so that two
    asks of many rows at once (a settings change, a retention run) lock the rows they share in one order and never
    wait on each other in a cycle."""
    return sa.select(
        org, repo, sha, sa.bindparam("base_url", type_=sa.String), sa.literal(1), sa.bindparam("now", type_=sa.DateTime)
    ).order_by(org, repo, sha)


# SQLite parses INSERT ... SELECT ... ON CONFLICT only when the SELECT has a WHERE clause.
_FROM_AFFECTED = _asking(_AFFECTED.c.org_id, _AFFECTED.c.repo_full_name, _AFFECTED.c.commit_sha).where(sa.true())
ASK_FOR_ORG = {dialect: _upsert(dialect, _FROM_AFFECTED) for dialect in ("postgresql", "sqlite")}  # built once
_IN_REPOS = _AFFECTED.c.repo_full_name.in_(sa.bindparam("repos", expanding=True))
ASK_FOR_REPOS = {
    dialect: _upsert(
        dialect, _asking(_AFFECTED.c.org_id, _AFFECTED.c.repo_full_name, _AFFECTED.c.commit_sha).where(_IN_REPOS)
    )
    for dialect in ("postgresql", "sqlite")
}


# The heads of the open pull requests whose baseline a new scan of `repo` may be (block_on new): built from their base
# branch (`ref`), or at their base commit (`sha`); the scan's own commit aside, with a scan of the same image (a head's
# baseline is per image: `image`, the condition on the scan's image name).
def _based_on(image: sa.ColumnElement[bool]) -> tuple[sa.ColumnElement[bool], ...]:
    return (
        _links.c.org_id == sa.bindparam("org"),
        _links.c.repo_full_name == sa.bindparam("repo"),
        _links.c.state == "open",
        sa.or_(_links.c.base_ref == sa.bindparam("ref"), _links.c.base_sha == sa.bindparam("sha")),
        _links.c.head_sha != sa.bindparam("sha"),
        _head_scanned(image),
    )


_PR_HEADS = (_links.c.org_id, _links.c.repo_full_name, _links.c.head_sha)
# DISTINCT: two open pull requests may share a head (two branches at one commit), and an upsert may not meet one row
# twice (PostgreSQL: "ON CONFLICT DO UPDATE command cannot affect row a second time").
_BASED_ON = _asking(*_PR_HEADS).where(*_based_on(_scans.c.image_name == sa.bindparam("name"))).distinct()
ASK_FOR_BASE = {dialect: _upsert(dialect, _BASED_ON) for dialect in ("postgresql", "sqlite")}
# A pull request's delivery: the heads based on its head's scans of these images (`names`), and (with `head`) its own
# head, in one statement, so that its rows are locked in key order like any other ask's (two statements, each in key
# order, could lock a row an org-wide ask then waits for, and wait for one it holds: a deadlock).
_HEAD = sa.select(
    sa.bindparam("org", type_=sa.Integer), sa.bindparam("repo", type_=sa.String), sa.bindparam("sha", type_=sa.String)
).where(sa.bindparam("head", type_=sa.Boolean))
_FOR_PULL_REQUEST = sa.union(
    sa.select(*_PR_HEADS).where(*_based_on(_scans.c.image_name.in_(sa.bindparam("names", expanding=True)))), _HEAD
).subquery("for_pull_request")
ASK_FOR_PULL_REQUEST = {
    dialect: _upsert(
        dialect,
        _asking(_FOR_PULL_REQUEST.c.org_id, _FOR_PULL_REQUEST.c.repo_full_name, _FOR_PULL_REQUEST.c.head_sha).where(
            sa.true()
        ),
    )
    for dialect in ("postgresql", "sqlite")
}


def ask_for_org(conn: sa.Connection, org_id: int, urls: Urls) -> int:
    """Ask for every commit the org's policy decides to be posted again (its settings changed); how many."""
    now = clock.now_of(conn)
    params = {"org": org_id, "since": now - RECENT, "base_url": urls.base_url, "now": now}
    return int(conn.execute(ASK_FOR_ORG[conn.dialect.name], params).rowcount or 0)


def ask_for_repos(conn: sa.Connection, org_id: int, repos: list[str], urls: Urls) -> int:
    """ask_for_org, for the commits of these repositories (full names, lower case) only; how many."""
    if not repos:
        return 0
    now = clock.now_of(conn)
    params = {"org": org_id, "since": now - RECENT, "base_url": urls.base_url, "now": now, "repos": repos}
    return int(conn.execute(ASK_FOR_REPOS[conn.dialect.name], params).rowcount or 0)


def ask_for_base(
    conn: sa.Connection, org_id: int, repo: str, ref: str | None, sha: str, image_name: str, urls: Urls
) -> None:
    """Ask for the heads of the open pull requests a new scan of `image_name` at `sha` (built from `ref`) may be the
    baseline of: their `new` findings are judged against it now (block_on new), so a fix on the base branch is not
    left green on a pull request that brings the finding back."""
    params = {"org": org_id, "repo": repo, "ref": ref, "sha": sha, "name": image_name, "base_url": urls.base_url}
    conn.execute(ASK_FOR_BASE[conn.dialect.name], {**params, "now": clock.now_of(conn)})


def ask_for_pull_request(
    conn: sa.Connection, org_id: int, repo: str, base_ref: str, sha: str, names: list[str], head: bool, urls: Urls
) -> None:
    """A pull request's delivery: `ask_for_base` for each of the images `names` its head `sha` was scanned as under
    its base's ref, and (with `head`) `ask` for the head itself; in one statement (ASK_FOR_PULL_REQUEST)."""
    if not names and not head:
        return
    params = {"org": org_id, "repo": repo, "ref": base_ref, "sha": sha, "names": names, "head": head}
    conn.execute(
        ASK_FOR_PULL_REQUEST[conn.dialect.name], {**params, "base_url": urls.base_url, "now": clock.now_of(conn)}
    )


_DUE = (
    sa.select(_reposts.c.org_id, _reposts.c.repo_full_name, _reposts.c.commit_sha)
    .where(sa.or_(_reposts.c.claimed_until.is_(None), _reposts.c.claimed_until <= sa.bindparam("now")))
    .order_by(_reposts.c.requested_at)
    .limit(sa.bindparam("limit"))
)
_KEY = sa.tuple_(_reposts.c.org_id, _reposts.c.repo_full_name, _reposts.c.commit_sha)
DONE = sa.delete(_reposts).where(
    _reposts.c.org_id == sa.bindparam("org"),
    _reposts.c.repo_full_name == sa.bindparam("repo"),
    _reposts.c.commit_sha == sa.bindparam("sha"),
    _reposts.c.version == sa.bindparam("version"),
)


def claim(session: Session, limit: int = BATCH) -> list[sa.Row[Any]]:
    """Lease up to `limit` asked commits (oldest asked first) until LEASE from now on the database's clock: their
    keys, versions, base URLs and orgs' slugs."""
    with write_transaction(session):
        conn = session.connection()
        now = clock.now_of(conn)
        due = _DUE
        if conn.dialect.name == "postgresql":
            due = due.with_for_update(skip_locked=True)
        keys = conn.execute(due, {"now": now, "limit": limit}).all()
        if not keys:
            return []
        conn.execute(sa.update(_reposts).where(_KEY.in_([tuple(k) for k in keys])).values(claimed_until=now + LEASE))
        rows = conn.execute(
            sa.select(_reposts, _orgs.c.slug)
            .join(_orgs, _orgs.c.id == _reposts.c.org_id)
            .where(_KEY.in_([tuple(k) for k in keys]))
            .order_by(_reposts.c.requested_at)
        ).all()
        return list(rows)


def pending(conn: sa.Connection, org_id: int) -> int:
    """How many commits of the org wait to be posted again."""
    return int(
        conn.execute(sa.select(sa.func.count()).select_from(_reposts).where(_reposts.c.org_id == org_id)).scalar_one()
    )
