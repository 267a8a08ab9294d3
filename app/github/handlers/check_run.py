"""check_run events: "Re-run" on our check run posts the commit's current state again, as a new run."""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app import fields
from app.github import outbox
from app.github.handlers.common import org_of_repository_event
from app.github.router import BadPayload, Context, Router, get, need_str
from app.models import CheckRunRecord, utcnow
from app.policy import CONTEXT

log = logging.getLogger(__name__)
router = Router()
_records = CheckRunRecord.__table__

FORGET_RUN = (
    sa.update(_records)
    .where(
        _records.c.org_id == sa.bindparam("org"),
        _records.c.repo_full_name == sa.bindparam("repo"),
        _records.c.commit_sha == sa.bindparam("sha"),
    )
    # create_attempted_at goes too: the worker would otherwise find the old run and update it in place.
    .values(github_id=None, create_attempted_at=None, updated_at=sa.bindparam("now"))
)


@router.register("check_run", "rerequested")
def check_run_rerequested(session: Session, payload: dict[str, Any], ctx: Context) -> str | None:
    """Forget the commit's run so the worker creates a new one, and queue the commit's current aggregate."""
    if get(payload, "check_run", "name") != CONTEXT:  # another app's check run
        return "ignored"
    org = org_of_repository_event(session, payload)
    if org is None:
        return "ignored"
    repo = need_str(payload, "repository", "full_name").lower()
    sha = need_str(payload, "check_run", "head_sha").lower()
    if not fields.SHA.fullmatch(sha):
        raise BadPayload("check_run.head_sha must be a commit SHA")
    conn = session.connection()
    conn.execute(FORGET_RUN, {"org": org.id, "repo": repo, "sha": sha, "now": utcnow()})
    status = outbox.repost(conn, org, repo, sha, ctx.urls, ctx.deliver)
    # DEBUG: the view logs the delivery's one INFO line (github.webhook.queued or .handled, with the delivery id).
    log.debug("github.check_run.rerequested org=%s repo=%s sha=%s queued=%s", org.slug, repo, sha, status is not None)
    return "queued" if status is not None else None
