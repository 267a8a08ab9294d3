"""installation_repositories events: keep the repositories an org's installation reaches in step."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.github.handlers.common import OrgRef, add_repositories, full_names, org_ref, remove_repositories
from app.github.handlers.installation import linked_org, post_again
from app.github.router import Context, Router, get, need_int

router = Router()


@router.register("installation_repositories", "added")
def installation_repositories_added(session: Session, payload: dict[str, Any], ctx: Context) -> str | None:
    org = _org(session, payload)
    if org is None:
        return "ignored"
    added = full_names(payload.get("repositories_added"), "repositories_added")
    add_repositories(session, org.id, added)
    linked = linked_org(session, need_int(payload, "installation", "id"))
    if linked is None or linked.id != org.id:  # not the org's installation now (suspended, another org's)
        return None
    return post_again(session, org.id, ctx, [name.lower() for name in added])  # refused while out of its reach


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
