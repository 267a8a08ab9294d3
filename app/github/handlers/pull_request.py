"""pull_request events: learn which pull request a head commit belongs to, and link its scans."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app import fields, locks, reposts
from app.github.handlers.common import org_of_repository_event, upsert_for
from app.github.router import BadPayload, Context, Router, get, need_int, need_str
from app.models import PullRequestHead, PullRequestLink, ScanRun, utcnow

router = Router()
_links = PullRequestLink.__table__
_scans = ScanRun.__table__

LINK_SCANS = (
    sa.update(_scans)
    .where(
        _scans.c.org_id == sa.bindparam("org"),
        _scans.c.repo_full_name == sa.bindparam("repo"),
        _scans.c.commit_sha == sa.bindparam("sha"),
    )
    .values(pr_number=sa.bindparam("number"))
)
# Every head a pull request had into its base, kept (app.commits: such a head's scans under the base's ref are never
# the base's baseline).
_heads = PullRequestHead.__table__
REMEMBER_HEAD = {
    dialect: upsert_for(dialect, _heads).on_conflict_do_nothing(
        index_elements=["org_id", "repo_full_name", "head_sha", "base_ref", "number"]
    )
    for dialect in ("postgresql", "sqlite")
}


# How much older than the close a `reopened` may be stamped and still reopen (GitHub's example payloads: 45 s); a
# reopen older than that is an old delivery, and the later close stands.
REOPEN_SKEW = timedelta(minutes=5)


def _upsert_link_statement(dialect: str) -> Any:
    # GitHub does not promise delivery order, and anyone may redeliver an old event: a row changes only for an event
    # at least as new (by the PR's updated_at) as the one it holds. A row stamped in the future (before such stamps
    # were taken as the time of receipt) yields too.
    insert = upsert_for(dialect, _links)
    newer = (insert.excluded.updated_at >= _links.c.updated_at) | (_links.c.updated_at > sa.bindparam("future"))
    # One more case, in which only the state changes: a `reopened` of the same head on a closed, unmerged PR stamped
    # up to REOPEN_SKEW before the close. GitHub's own example payloads reopen with an older updated_at than they
    # close with, and when in doubt the PR is open (its head judged against its base and kept posted; taken for
    # closed, it stops being re-posted). Nothing else is taken from such an event, nor its stamp.
    reopens = (
        sa.bindparam("reopens", type_=sa.Boolean)
        & (_links.c.state == "closed")
        & _links.c.merge_sha.is_(None)
        & (_links.c.head_sha == insert.excluded.head_sha)
        & (_links.c.updated_at <= sa.bindparam("reopen_until", type_=sa.DateTime))  # at most REOPEN_SKEW older
    )

    def if_newer(column: str) -> Any:
        return sa.case((newer, insert.excluded[column]), else_=_links.c[column])

    return insert.on_conflict_do_update(
        index_elements=["org_id", "repo_full_name", "number"],
        set_={
            "head_sha": if_newer("head_sha"),
            "base_ref": if_newer("base_ref"),
            "base_sha": if_newer("base_sha"),
            "state": insert.excluded.state,
            "updated_at": if_newer("updated_at"),
            "merge_sha": if_newer("merge_sha"),
        },
        where=newer | reopens,
    )


UPSERT_LINK = {dialect: _upsert_link_statement(dialect) for dialect in ("postgresql", "sqlite")}  # built once


@router.register("pull_request", "opened", "synchronize", "reopened", "edited")
def pull_request_head(session: Session, payload: dict[str, Any], ctx: Context) -> str | None:
    """The PR is open at this head commit (or was edited: its base may have changed): remember it with its base,
    link the commit's scans stored so far to it, and, when there are any, ask for the commit to be posted again:
    its baseline (block_on new) may be new to it.

    Scans uploaded later take the number at ingest (queries.PR_OF_COMMIT, a subquery of the scan insert); uploads in
    flight are waited for (`_lock`).
    """
    state = "closed" if get(payload, "pull_request", "state") == "closed" else "open"  # an edited closed PR stays so
    link = _upsert_link(session, payload, state)
    if link is None:
        return "ignored"
    conn = session.connection()
    _lock(conn, link)
    names = _images_under_base(conn, link, ctx)
    head = False
    if state != "closed":
        scanned = conn.execute(LINK_SCANS, link).rowcount
        head = bool(scanned and link["changed"] and ctx.deliver)
    _ask(conn, link, names, head, ctx)
    return "queued" if head else None


@router.register("pull_request", "closed")
def pull_request_closed(session: Session, payload: dict[str, Any], ctx: Context) -> str | None:
    """Mark the PR closed (merged or not); its scans keep their PR number."""
    link = _upsert_link(session, payload, "closed")
    if link is None:
        return "ignored"
    conn = session.connection()
    _lock(conn, link)
    _ask(conn, link, _images_under_base(conn, link, ctx), False, ctx)
    return None


def _lock(conn: sa.Connection, link: dict[str, Any]) -> None:
    """The head commit's lock, then the base's (app.locks): the uploads in flight of that head, or reading their
    baseline through that base, or scanning the base (asking for the pull requests into it), are stored before this
    links and looks for scans; the later ones read the pull request as this leaves it."""
    locks.commit(conn, link["org"], link["repo"], link["sha"])
    locks.refs(conn, link["org"], link["repo"], link["base_ref"], shared=False)


# The images of the head's scans stored under the pull request's base ref.
_HEAD_SCANS_UNDER_BASE = (
    sa.select(_scans.c.image_name)
    .where(
        _scans.c.org_id == sa.bindparam("org"),
        _scans.c.repo_full_name == sa.bindparam("repo"),
        _scans.c.commit_sha == sa.bindparam("sha"),
        _scans.c.ref == sa.bindparam("base_ref"),
        _scans.c.image_name.is_not(None),
    )
    .distinct()
)


def _images_under_base(conn: sa.Connection, link: dict[str, Any], ctx: Context) -> list[str]:
    """A head newly known as a pull request's (or newly known to have reached its base, a fast-forward merge) changes
    what its scans under the base's ref are: a baseline or not (app.commits). The images of those scans, whose open
    pull requests into that base, judged against them, are to be posted again."""
    if not link["base_changed"] or not ctx.deliver:
        return []
    return list(conn.scalars(_HEAD_SCANS_UNDER_BASE, link))


def _ask(conn: sa.Connection, link: dict[str, Any], names: list[str], head: bool, ctx: Context) -> None:
    """Ask for the open pull requests based on the head's scans of `names`, and with `head` for the head itself, to be
    posted again (under the locks `_lock` took): one statement, its rows locked in key order (app.reposts)."""
    reposts.ask_for_pull_request(conn, link["org"], link["repo"], link["base_ref"], link["sha"], names, head, ctx.urls)


def _upsert_link(session: Session, payload: dict[str, Any], state: str) -> dict[str, Any] | None:
    org = org_of_repository_event(session, payload)
    if org is None:
        return None
    repo = need_str(payload, "repository", "full_name").lower()
    number = need_int(payload, "pull_request", "number", below=fields.MAX_INT32 + 1)
    sha = need_str(payload, "pull_request", "head", "sha").lower()
    if not fields.SHA.fullmatch(sha) or len(repo) > 200:
        raise BadPayload("pull_request.head.sha must be a commit SHA and repository.full_name owner/name")
    stamp = _github_time(get(payload, "pull_request", "updated_at")) or utcnow()
    base_ref, base_sha = _base(payload)
    conn = session.connection()
    changed = conn.execute(
        UPSERT_LINK[conn.dialect.name],
        {
            "org_id": org.id,
            "repo_full_name": repo,
            "number": number,
            "head_sha": sha,
            "base_ref": base_ref,
            "base_sha": base_sha,
            "state": state,
            "updated_at": stamp,
            "merge_sha": _merge_sha(payload) if state == "closed" else None,
            "future": utcnow() + FUTURE_SKEW,
            "reopens": get(payload, "action") == "reopened" and state == "open",
            "reopen_until": stamp + REOPEN_SKEW,
        },
    ).rowcount
    remembered = 0
    if base_ref is not None:  # whatever its state or age: it was a head into that base
        head = {"org_id": org.id, "repo_full_name": repo, "head_sha": sha, "base_ref": base_ref, "number": number}
        remembered = conn.execute(REMEMBER_HEAD[conn.dialect.name].values(**head)).rowcount
    # changed: the event was at least as new as what was known (an older one redelivered changes nothing)
    fast_forwarded = bool(changed) and state == "closed" and _merge_sha(payload) == sha
    link = {"org": org.id, "repo": repo, "sha": sha, "number": number, "changed": bool(changed)}
    return {**link, "base_ref": base_ref, "base_changed": base_ref is not None and bool(remembered or fast_forwarded)}


def _merge_sha(payload: dict[str, Any]) -> str | None:
    """The merge commit of a pull request closed by a merge (None: closed unmerged, or not said)."""
    sha = get(payload, "pull_request", "merge_commit_sha")
    if get(payload, "pull_request", "merged") is not True or not isinstance(sha, str):
        return None
    sha = sha.lower()
    return sha if fields.SHA.fullmatch(sha) else None


def _base(payload: dict[str, Any]) -> tuple[str | None, str | None]:
    """The PR's base as (refs/heads/<branch>, commit SHA); None for what is missing or not a branch or a SHA: a scan
    of the head then has no baseline by it, and every finding counts (fails closed)."""
    branch, sha = get(payload, "pull_request", "base", "ref"), get(payload, "pull_request", "base", "sha")
    ref = f"refs/heads/{branch}" if isinstance(branch, str) and branch else None
    base_ref = ref if ref is not None and fields.is_git_ref(ref) else None
    base_sha = sha.lower() if isinstance(sha, str) and fields.SHA.fullmatch(sha.lower()) else None
    return base_ref, base_sha


def _github_time(value: Any) -> datetime | None:
    """GitHub's ISO-8601 time (`2019-05-15T15:20:33Z`) as the naive UTC the database keeps; None when unreadable or
    later than FUTURE_SKEW from now (such a stamp would hold the row against every later event)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    except (ValueError, OverflowError):  # OverflowError: year 1 with an offset east of UTC
        return None
    return parsed if parsed <= utcnow() + FUTURE_SKEW else None


FUTURE_SKEW = timedelta(hours=1)  # GitHub's clock ahead of ours by at most this
