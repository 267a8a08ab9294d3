"""installation events: link an org to the app's installation on its account, unlink and relink it."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from app import logs, orgs
from app.github.handlers.common import (
    add_repositories,
    full_names,
    org_by_installation,
    org_by_login,
    org_by_suspended_installation,
    remove_repositories,
)
from app.github.router import Context, Router, need_int, need_str
from app.models import Org

log = logging.getLogger(__name__)
router = Router()


@router.register("installation", "created")
def installation_created(session: Session, payload: dict[str, Any], ctx: Context) -> str | None:
    """Link (or create) the account's org and record the repositories the installation can reach."""
    org = _link(session, payload)
    if org is None:
        return "ignored"
    names = full_names(payload.get("repositories"), "repositories")
    # A fresh installation: what it lists is all it reaches (rows left from an earlier one go).
    remove_repositories(session, org.id)
    add_repositories(session, org.id, names)
    return None


@router.register("installation", "unsuspend")
def installation_unsuspend(session: Session, payload: dict[str, Any], ctx: Context) -> str | None:
    return None if _link(session, payload) is not None else "ignored"


@router.register("installation", "deleted")
def installation_deleted(session: Session, payload: dict[str, Any], ctx: Context) -> str | None:
    """Unlink the org; the uninstalled app reaches none of its repositories any more."""
    org = _unlink(session, payload)
    if org is None:
        return "ignored"
    remove_repositories(session, org.id)
    return None


@router.register("installation", "suspend")
def installation_suspend(session: Session, payload: dict[str, Any], ctx: Context) -> str | None:
    """Unlink the org; its repositories and the installation's id are kept for the unsuspend."""
    org = _unlink(session, payload)
    if org is None:
        return "ignored"
    org.suspended_installation_id = need_int(payload, "installation", "id")
    return None


def _link(session: Session, payload: dict[str, Any]) -> Org | None:
    """The org whose GitHub login is the account's (else the one holding the installation, or whose suspension
    unlinked it, else a new one, its slug the login in lower case), now holding the installation id. An org found by
    the installation under another login takes the account's login now: an installation belongs to one account for
    life, so the account was renamed (and its uploads name the new login)."""
    inst_id = need_int(payload, "installation", "id")
    login = need_str(payload, "installation", "account", "login")
    org = (
        org_by_login(session, login)
        or org_by_installation(session, inst_id)
        or org_by_suspended_installation(session, inst_id)
    )
    if org is None:
        try:
            slug = _free_slug(session, login.lower())
            org = orgs.create(session, slug, github_login=login, installation_id=inst_id)
        except ValueError as exc:  # a login that cannot be a slug (managed users' `name_shortcode`)
            log.warning("github.installation.cannot_create_org installation=%s reason=%r", inst_id, str(exc))
            return None
        logs.name_org(org.slug)  # the delivery's lines from here on name it
        log.info("github.installation.org_created org=%s installation=%s", org.slug, inst_id)
    else:
        if org.github_login.lower() != login.lower():  # found by the installation: its account was renamed
            log.info("github.installation.account_renamed org=%s from=%s to=%s", org.slug, org.github_login, login)
            org.github_login = login
        org.installation_id = inst_id
        org.suspended_installation_id = None
        log.info("github.installation.linked org=%s installation=%s", org.slug, inst_id)
    session.flush()
    return org


def _unlink(session: Session, payload: dict[str, Any]) -> Org | None:
    inst_id = need_int(payload, "installation", "id")
    org = org_by_installation(session, inst_id)
    if org is None:
        log.info("github.installation.unknown installation=%s action=%s", inst_id, payload.get("action"))
        return None
    org.installation_id = None
    session.flush()
    log.info("github.installation.unlinked org=%s installation=%s action=%s", org.slug, inst_id, payload["action"])
    return org


def _free_slug(session: Session, login: str) -> str:
    """The login itself, or login-2, login-3... where an org of another account took that slug (in any letter case:
    no two orgs' slugs differ only by it)."""
    slug, n = login, 1
    while orgs.slug_like(session, slug) is not None:
        n += 1
        slug = f"{login}-{n}"
    return slug
