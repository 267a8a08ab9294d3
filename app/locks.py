"""The locks a write transaction takes, always in this order, so that no two writers wait on each other in a cycle.

1. The commit: one commit's aggregate (the latest judged scan of each image and the outbox item posting them).
   Uploads and re-posts of one commit take turns; uploads to other commits of the org go on. A pull_request delivery
   takes its head commit's too (`commit`), so an upload of that head in flight (as a pull request's head, or as a scan
   under its base's ref) is stored before the delivery links and looks for the head's scans, or after, and reads the
   pull request as the delivery left it.
2. The policy: the org's settings, shared. Uploads read the policy together; a settings change (which locks the row
   for update) waits for the uploads in flight and they for it, so it applies wholly before or after each.
   `commit_and_policy` takes both.
3. The image (under block_on new only): one image name of a repository. An upload reads its baseline under it, and
   asks for the pull requests it may be the baseline of to be re-posted under it (`app.reposts.ask_for_base`), so a
   base's scan and a head's upload in flight at once take turns: the head reads the base's new scan, or the base's
   scan finds the head's and asks for it again. Only uploads take it, each holding its commit and policy already.
4. The refs (under block_on new only): git refs of a repository, such as a pull request's base branch. An upload
   takes, shared, its own ref's (the pull requests into it it asks for, `app.reposts.ask_for_base`) and its pull
   request's base's (its baseline is read through it), in sorted order; a pull_request delivery takes its base's,
   exclusively, after its head commit's, before it links or asks for anything. So a delivery and an upload in flight
   never miss each other: the delivery waits for the uploads holding its base and then finds their scans (and asks
   for them again), or the upload waits for the delivery and reads the pull request as it left it. Uploads never
   wait for each other here (the image orders them).
5. The org's chain head (`app.chain.lock_head`, `app.findings.service`), taken last and held to the commit: appends
   to the org's chain are one at a time, so everything that can be prepared is prepared before it.

PostgreSQL takes each lock as written (1, 3 and 4 are advisory locks keyed by 64 bits of a hash: two keys that
collide only take turns). SQLite has one writer at a time (`app.db.write_transaction`), which
holds all of them at once: there the functions only read, or do nothing.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from app import policy, prepared
from app.models import OrgSettings

_settings = OrgSettings.__table__
POLICY_SHARED = (
    sa.select(
        _settings.c.enabled,
        _settings.c.block_action,
        _settings.c.require_signed,
        _settings.c.allowed_issuers,
        _settings.c.retention_days,
        _settings.c.block_threshold,
        _settings.c.ignore_unfixed,
        _settings.c.block_on,
    )
    .where(_settings.c.org_id == sa.bindparam("org"))
    .with_for_update(read=True)
)


def commit_and_policy(conn: sa.Connection, org_id: int, repo: str, sha: str) -> policy.Policy:
    """Lock one commit of a repository of the org, then read the org's policy with its settings row locked in share
    mode, both until the transaction ends (see `lock_commit_and_read`)."""
    return lock_commit_and_read(conn, org_id, repo, sha)[0]


def lock_commit_and_read(
    conn: sa.Connection, org_id: int, repo: str, sha: str, *columns: sa.ColumnElement[Any]
) -> tuple[policy.Policy, Any]:
    """`commit_and_policy` and `columns` read in the same statement: the policy, and the row read. `columns` may use
    the parameters `org`, `repo` and `sha` (the commit's).

    One statement on PostgreSQL (the commit's lock is an advisory lock). The commit's key is 64 bits of a hash: two
    commits that share a key only take turns, which is harmless. A locking read returns the newest settings even
    when a change committed while this waited. An org without a settings row (made by hand) gets one with the
    defaults first, so that there is a row to lock.
    """
    postgres = conn.dialect.name == "postgresql"
    statement, params = _statement(postgres, columns), {"org": org_id, "repo": repo, "sha": sha}
    if postgres:
        params["key"] = _key("commit", org_id, repo, sha)
    row = next(iter(prepared.run(conn, statement, params)), None)
    if row is None:
        insert = postgresql.insert if postgres else sqlite.insert
        conn.execute(
            insert(_settings).values(org_id=org_id).on_conflict_do_nothing(index_elements=[_settings.c.org_id])
        )  # the columns' defaults
        (row,) = prepared.run(conn, statement, params)
    return policy.Policy.from_settings(row), row


# An advisory lock's key: 64 bits of a hash of what it locks, XORed with a hash of the schema the app's tables are in
# (apps on other schemas of one database, such as the tests' workers, don't share keys).
_KEY = sa.bindparam("key", type_=sa.BigInteger).op("#")(sa.func.hashtextextended(sa.func.current_schema(), 0))
_ADVISORY_LOCK = sa.select(sa.func.pg_advisory_xact_lock(_KEY))
_ADVISORY_LOCK_SHARED = sa.select(sa.func.pg_advisory_xact_lock_shared(_KEY))


def _key(kind: str, org_id: int, repo: str, name: str) -> int:
    """The 64-bit key of an advisory lock on one `kind` of thing (commit, image, ref) named `name` in a repository."""
    digest = hashlib.sha256(f"fremforge/{kind}\n{org_id}\n{repo}\n{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def commit(conn: sa.Connection, org_id: int, repo: str, sha: str) -> None:
    """Lock one commit of a repository of the org until the transaction ends (1. above, without the policy: a
    pull_request delivery's head). On SQLite the one writer holds it already."""
    if conn.dialect.name == "postgresql":
        conn.execute(_ADVISORY_LOCK, {"key": _key("commit", org_id, repo, sha)})


def image(conn: sa.Connection, org_id: int, repo: str, image_name: str) -> None:
    """Lock one image of a repository of the org until the transaction ends (3. above). On SQLite the one writer
    holds it already."""
    if conn.dialect.name == "postgresql":
        conn.execute(_ADVISORY_LOCK, {"key": _key("image", org_id, repo, image_name)})


def refs(conn: sa.Connection, org_id: int, repo: str, *names: str | None, shared: bool) -> None:
    """Lock these git refs of a repository of the org (None aside) until the transaction ends, in sorted order (4.
    above): `shared` (uploads, which only exclude deliveries) or not (a delivery). On SQLite the one writer holds them
    already."""
    if conn.dialect.name == "postgresql":
        statement = _ADVISORY_LOCK_SHARED if shared else _ADVISORY_LOCK
        for name in sorted({n for n in names if n is not None}):
            conn.execute(statement, {"key": _key("ref", org_id, repo, name)})


@functools.cache
def _statement(postgres: bool, columns: tuple[sa.ColumnElement[Any], ...]) -> sa.Select[Any]:
    statement = POLICY_SHARED.add_columns(*columns)
    if postgres:
        statement = statement.add_columns(sa.func.pg_advisory_xact_lock(_KEY))
    return statement
