"""installation_repositories events: keep the repositories an org's installation reaches in step."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.github.handlers.common import OrgRef, add_repositories, full_names, org_ref, remove_repositories
from app.github.handlers.installation import post_again
from app.github.router import Context, Router, get, need_int

router = Router()


@router.register("installation_repositories", "added")
def installation_repositories_added(session: Session, payload: dict[str, Any], ctx: Context) -> str | None:
    org = _org(session, payload)
    if org is None:
        return "ignored"
    add_repositories(session, org.id, full_names(payload.get("repositories_added"), "repositories_added"))
    return post_again(session, org.id, ctx)  # what was refused while they were out of the app's reach


@router.register("installation_repositories", "removed")
def installation_repositories_removed(session: Session, payload: dict[str, Any], ctx: Context) -> str | None:
    org = _org(session, payload)
    if org is None:
        return "ignored"
    names = full_names(payload.get("repositories_removed"), "repositories_removed")
    if names:
        remove_repositories(session, org.id, names)
    return None


def _org(session: Session, payload: dict[str, Any]) -> OrgRef | None:
    """The org holding the installation, else the org of the installation's account."""
    return org_ref(session, need_int(payload, "installation", "id"), get(payload, "installation", "account", "login"))
