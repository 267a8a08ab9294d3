"""The locks a write transaction takes, always in this order, so that no two writers wait on each other in a cycle.

1. The commit: one commit's aggregate (the latest judged scan of each image and the outbox item posting them).
   Uploads and re-posts of one commit take turns; uploads to other commits of the org go on. A pull_request delivery
   takes its head commit's too (`commit`), so an upload of that head in flight is stored before the delivery links
   the head's scans (or after, and reads the pull request as the delivery left it).
2. The policy: the org's settings, shared. Uploads read the policy together; a settings change (which locks the row
   for update) waits for the uploads in flight and they for it, so it applies wholly before or after each.
   `commit_and_policy` takes both.
3. The image (under block_on new only): one image name of a repository. An upload reads its baseline under it, and
   asks for the pull requests it may be the baseline of to be re-posted under it (`app.reposts.ask_for_base`), so a
   base's scan and a head's upload in flight at once take turns: the head reads the base's new scan, or the base's
   scan finds the head's and asks for it again. Only uploads take it, each holding its commit and policy already.
4. The base (under block_on new only): a pull request's base branch, by its git ref. An upload takes its pull
   request's base's before reading its baseline through it; a pull_request delivery that makes a head known as a
   pull request's (or as fast-forwarded into its base) takes its base's, after the head commit's, before asking for
   the pull requests judged against that head's scans under the base's ref. So the delivery either finds the upload's
   scan (and asks for it again) or the upload reads the head as known. (A scan of that head under the base's ref in
   flight holds the head commit's lock: the delivery waits for it at 1.)
5. The org's chain head (`app.chain.lock_head`, `app.findings.service`), taken last and held to the commit: appends
   to the org's chain are one at a time, so everything that can be prepared is prepared before it.

PostgreSQL takes each lock as written (1, 3 and 4 are advisory locks keyed by 64 bits of a hash: two keys that
collide only take turns, which is harmless). SQLite has one writer at a time (`app.db.write_transaction`), which
holds all of them at once: there the functions only read, or do nothing.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from app import policy
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
) -> tuple[policy.Policy, sa.Row[Any]]:
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
    row = conn.execute(statement, params).one_or_none()
    if row is None:
        insert = postgresql.insert if postgres else sqlite.insert
        conn.execute(
            insert(_settings).values(org_id=org_id).on_conflict_do_nothing(index_elements=[_settings.c.org_id])
        )  # the columns' defaults
        row = conn.execute(statement, params).one()
    return policy.Policy.from_settings(row), row


_ADVISORY_LOCK = sa.select(sa.func.pg_advisory_xact_lock(sa.bindparam("key", type_=sa.BigInteger)))


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


def ref(conn: sa.Connection, org_id: int, repo: str, name: str) -> None:
    """Lock one git ref of a repository of the org until the transaction ends (4. above). On SQLite the one writer
    holds it already."""
    if conn.dialect.name == "postgresql":
        conn.execute(_ADVISORY_LOCK, {"key": _key("ref", org_id, repo, name)})


@functools.cache
def _statement(postgres: bool, columns: tuple[sa.ColumnElement[Any], ...]) -> sa.Select[Any]:
    statement = POLICY_SHARED.add_columns(*columns)
    if postgres:
        statement = statement.add_columns(sa.func.pg_advisory_xact_lock(sa.bindparam("key", type_=sa.BigInteger)))
    return statement
