"""Outbox rows given up on during a GitHub outage: which failures count as transient (what a try that found GitHub
away records), and which rows are put back once GitHub answers again (app.github.redeliver), a limited number of
times; retention keeps such a row's check run body until then (app.chain.retention). Pure rules and SQL conditions,
shared by the delivery code and retention, with no GitHub client in sight.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from app.models import OutboxItem

# What a try that found GitHub away records (classify): a row given up on after such tries, or after 5xx answers, was
# given up for a transient reason and is put back once GitHub answers again (app.github.redeliver), MAX_REVIVALS
# times at most: a row that keeps failing while GitHub answers is not retried forever.
UNREACHABLE = "could not reach GitHub"
NO_ANSWER = "GitHub did not answer in time"
# A 2xx answer that is not what GitHub's API describes (a proxy's page, a cut-off body): GitHub was not heard, so the
# row is retried and, given up on, put back once GitHub answers again (as after an outage), so that an older green
# does not stay. The circuit stays closed: one endpoint's odd answers do not hold up the other rows.
UNREADABLE = "could not read GitHub's answer"
TRANSIENT_ERRORS = (UNREACHABLE, NO_ANSWER, UNREADABLE)  # what a row's last_error starts with after such a try
MAX_REVIVALS = 10


def failed_in_outage(status_code: int | None, error: str | None) -> bool:
    """Whether a row given up on was given up for a transient reason: its last try found GitHub unreachable, got no
    answer in time, got an answer it could not read, or got a 5xx (or 429) answer. 404/422 after their tries, "not
    installed", bad credentials, other 4xx answers and errors of our own are permanent."""
    if status_code is not None:
        return status_code >= 500 or status_code == 429
    return error is not None and error.startswith(TRANSIENT_ERRORS)


def revivable(item: Any) -> bool:
    """Whether a failed outbox item is put back to pending once GitHub answers again (if still the newest of its
    commit): given up on in an outage, revived fewer than MAX_REVIVALS times, its check run body not trimmed by
    retention."""
    return (
        item.state == "failed"
        and failed_in_outage(item.last_status_code, item.last_error)
        and (item.revivals or 0) < MAX_REVIVALS
        and item.redacted_at is None
    )


_outbox = OutboxItem.__table__
# `revivable` in SQL: what app.github.redeliver puts back once GitHub answers (when still the newest of its commit).
REVIVABLE = sa.and_(
    _outbox.c.state == "failed",
    sa.or_(  # never NULL, whatever the row holds: retention negates it (a NULL there would keep a row for ever)
        sa.func.coalesce(_outbox.c.last_status_code, 0) >= 500,
        sa.func.coalesce(_outbox.c.last_status_code, 0) == 429,
        sa.and_(
            _outbox.c.last_status_code.is_(None),
            sa.or_(*(sa.func.coalesce(_outbox.c.last_error, "").startswith(prefix) for prefix in TRANSIENT_ERRORS)),
        ),
    ),
    _outbox.c.revivals < MAX_REVIVALS,
    _outbox.c.redacted_at.is_(None),
)
# A newer item of the same commit: the row's state is never posted.
_newer = _outbox.alias("newer")
HAS_NEWER = (
    sa.select(_newer.c.id)
    .where(
        _newer.c.org_id == _outbox.c.org_id,
        _newer.c.repo_full_name == _outbox.c.repo_full_name,
        _newer.c.commit_sha == _outbox.c.commit_sha,
        _newer.c.id > _outbox.c.id,
    )
    .exists()
)
# Given up on in an outage and still the newest of its commit: put back once GitHub answers (app.github.redeliver),
# so retention keeps its check run body (what it is posted with) until then.
AWAITING_REVIVAL = sa.and_(REVIVABLE, ~HAS_NEWER)
