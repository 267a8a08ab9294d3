"""installation events: link an org to the app's installation on its account, unlink and relink it."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from app import logs, orgs, reposts
from app.github.handlers.common import (
    add_repositories,
    full_names,
    installation_holders,
    org_by_login,
    other_org_with_login,
    remove_repositories,
)
from app.github.router import Context, Router, get, need_int, need_str
from app.models import Org

log = logging.getLogger(__name__)
router = Router()


@router.register("installation", "created")
def installation_created(session: Session, payload: dict[str, Any], ctx: Context) -> str | None:
    """Link (or create) the account's org and record the repositories the installation can reach; what was refused
    while the app was not installed is posted again (`post_again`)."""
    org = _link(session, payload)
    if org is None:
        return "ignored"
    names = full_names(payload.get("repositories"), "repositories")
    # A fresh installation: what it lists is all it reaches (rows left from an earlier one go).
    remove_repositories(session, org.id)
    add_repositories(session, org.id, names)
    return post_again(session, org.id, ctx)


@router.register("installation", "unsuspend")
def installation_unsuspend(session: Session, payload: dict[str, Any], ctx: Context) -> str | None:
    """Link the org again; what GitHub refused while the installation was suspended is posted again."""
    org = _link(session, payload)
    return post_again(session, org.id, ctx) if org is not None else "ignored"


@router.register("installation", "new_permissions_accepted")
def installation_new_permissions_accepted(session: Session, payload: dict[str, Any], ctx: Context) -> str | None:
    """The account accepted the permissions the app asks for: what they refused (a 403) is posted again, for the org
    linked to that installation (not one it was suspended from: GitHub refuses it still)."""
    org = linked_org(session, need_int(payload, "installation", "id"))
    return post_again(session, org.id, ctx) if org is not None else "ignored"


def linked_org(session: Session, inst_id: int) -> Org | None:
    """The one org linked to installation `inst_id` now (none when suspended, unknown or held twice)."""
    linked = [org for org in installation_holders(session, inst_id) if org.installation_id == inst_id]
    return linked[0] if len(linked) == 1 else None


def post_again(session: Session, org_id: int, ctx: Context, repos: list[str] | None = None) -> str | None:
    """Ask for the org's commits (of `repos` only, when given) to be posted again, as a settings change does
    (`app.reposts.ask_for_org`: the open pull requests' heads and the commits scanned in the last week): what GitHub
    refused while the app could not post there (suspended, uninstalled, a repository out of its reach, a permission
    missing) ended failed, and a commit that turned red meanwhile would stay green."""
    if not ctx.deliver:
        return None
    conn = session.connection()
    asked = (
        reposts.ask_for_org(conn, org_id, ctx.urls)
        if repos is None
        else reposts.ask_for_repos(conn, org_id, repos, ctx.urls)
    )
    return "queued" if asked else None


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
    """The installation's org, now holding its id (and no other org holding it).

    An installation id belongs to one org at a time. Its org is the one holding the id (or whose suspension unlinked
    it), else the org whose GitHub login is the account's, else a new one (its slug the login, spec section 5). An
    installation belongs to one account for life, so its org found under another login means the account was
    renamed: the org takes the new login (its uploads name the new owner) - unless another org has that login
    already (made by hand before the installation was known). Then no second org is linked: the installation stays
    with its org under its old login, and a warning names both for an admin to settle.
    """
    inst_id = need_int(payload, "installation", "id")
    login = need_str(payload, "installation", "account", "login")
    orgs.lock_installation(session, inst_id)
    org = _installations_org(session, inst_id, login) or org_by_login(session, login)
    if org is None:
        try:
            slug = _free_slug(session, login)
            org = orgs.create(session, slug, github_login=login, installation_id=inst_id)
        except ValueError as exc:  # a login that cannot be a slug (managed users' `name_shortcode`)
            log.warning("github.installation.cannot_create_org installation=%s reason=%r", inst_id, str(exc))
            return None
        logs.name_org(org.slug)  # the delivery's lines from here on name it
        log.info("github.installation.org_created org=%s installation=%s", org.slug, inst_id)
    else:
        if org.github_login.lower() != login.lower():  # found by the installation: its account was renamed
            _take_login(session, org, login)
        org.installation_id = inst_id
        org.suspended_installation_id = None
        log.info("github.installation.linked org=%s installation=%s", org.slug, inst_id)
    session.flush()
    return org


def _take_login(session: Session, org: Org, login: str) -> None:
    """The installation's org takes its renamed account's login, unless another org has that login."""
    other = other_org_with_login(session, login, org.id)
    if other is None:
        log.info("github.installation.account_renamed org=%s from=%s to=%s", org.slug, org.github_login, login)
        org.github_login = login
        return
    log.warning(
        "github.installation.login_taken org=%s login=%s other=%s: the account %s is %s now, the login of the org %s; "
        "the installation stays with %s, under its login",
        org.slug,
        login,
        other,
        org.github_login,
        login,
        other,
        org.slug,
    )


def _unlink(session: Session, payload: dict[str, Any]) -> Org | None:
    inst_id = need_int(payload, "installation", "id")
    orgs.lock_installation(session, inst_id)
    org = _installations_org(session, inst_id, get(payload, "installation", "account", "login"))
    if org is None or org.installation_id != inst_id:  # unknown, or suspended already
        log.info("github.installation.unknown installation=%s action=%s", inst_id, payload.get("action"))
        return None
    org.installation_id = None
    session.flush()
    log.info("github.installation.unlinked org=%s installation=%s action=%s", org.slug, inst_id, payload["action"])
    return org


def _installations_org(session: Session, inst_id: int, login: Any) -> Org | None:
    """The org holding the installation, linked or suspended; None when none does.

    Where an older version left it on more than one org, the one keeping it is the one with the account's login (the
    org its repository events go to then, see common.org_ref), else a linked one, else the first made; the others
    give it up, with a warning naming them.
    """
    holders = installation_holders(session, inst_id)
    if not holders:
        return None
    folded = login.lower() if isinstance(login, str) else None
    org = min(holders, key=lambda o: (o.github_login.lower() != folded, o.installation_id != inst_id, o.id))
    others = [o for o in holders if o is not org]
    if others:
        log.warning(
            "github.installation.held_twice installation=%s kept=%s unlinked=%s",
            inst_id,
            org.slug,
            ",".join(o.slug for o in others),
        )
        for other in others:
            if other.installation_id == inst_id:
                other.installation_id = None
            if other.suspended_installation_id == inst_id:
                other.suspended_installation_id = None
    logs.name_org(org.slug)
    return org


def _free_slug(session: Session, login: str) -> str:
    """The login itself, or login-2, login-3... where an org of another account took that slug (in any letter case:
    no two orgs' slugs differ only by it)."""
    slug, n = login, 1
    while orgs.slug_like(session, slug) is not None:
        n += 1
        slug = f"{login}-{n}"
    return slug
