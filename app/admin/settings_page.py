"""The policy page: the org's settings as a form."""

from __future__ import annotations

import re
from typing import Any

from flask import current_app, flash, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from pydantic_core import ErrorDetails
from werkzeug.datastructures import MultiDict

from app import db, orgs
from app.admin.auth import admin_required
from app.admin.blueprint import bp
from app.admin.pages import SECTION, WHOLE_NUMBER, org_and_settings
from app.db import write_transaction
from app.models import BLOCK_THRESHOLDS
from app.policy import settings as policy_settings
from app.web import urls

MAX_RETENTION_DAYS = policy_settings.MAX_RETENTION_DAYS


BLOCK_ACTION_HELP = {
    "none": "Store the findings and post nothing. Scans are marked skipped; statuses posted earlier stay as they are.",
    "warn": "Store the findings and post success, naming the counts in the description. Never blocks a merge.",
    "block_pull": (
        "Post failure when any image of the commit has a high or critical finding, so branch protection "
        "that requires fremforge/image-scan blocks the merge."
    ),
}


SETTING_LABELS = {
    "enabled": "Scanning enabled",
    "block_action": "Block action",
    "require_signed": "Require signed images",
    "allowed_issuers": "Allowed issuers",
    "retention_days": "Retention (days)",
    "block_threshold": "Block threshold",
    "ignore_unfixed": "Ignore unfixed findings",
    "block_on": "Block on",
}
BLOCK_ON_HELP = {
    "all": "Every finding that meets the threshold blocks, old or new.",
    "new": (
        "Only findings the pull request introduces block: those its base branch's scan of the same image does not "
        "have. Without such a scan, every finding counts."
    ),
}


@bp.route(SECTION + "/settings", methods=["GET", "POST"])
@admin_required
def settings(slug: str) -> ResponseReturnValue:
    org, current = org_and_settings(slug)
    values = policy_settings.as_dict(current)
    form = {**values, "allowed_issuers": issuers_text(values["allowed_issuers"])}
    errors: dict[str, str] = {}
    if request.method == "POST":
        changes, form, errors = parse_settings_form(request.form)
        if not errors:
            session = db.session()
            with write_transaction(session):
                row = orgs.settings_for_update(session, org.id)
                repost = urls.for_request() if current_app.config["GITHUB_APP_CONFIGURED"] else None
                changed = policy_settings.apply(session, row, changes, g.admin.actor, repost)
            if changed:
                flash("Saved: " + ", ".join(SETTING_LABELS[k].lower() for k in changed) + ".", "success")
            else:
                flash("Saved. Nothing changed.", "success")
            return redirect(url_for("admin.settings", slug=slug))
    return render_template(
        "admin/settings.html",
        org=org,
        nav="settings",
        form=form,
        errors=errors,
        block_actions=BLOCK_ACTION_HELP,
        thresholds=BLOCK_THRESHOLDS,
        block_on=BLOCK_ON_HELP,
        max_days=MAX_RETENTION_DAYS,
    ), (422 if errors else 200)


def issuers_text(issuers: list[dict[str, Any]]) -> str:
    return "\n".join(f"{i['issuer']} {i.get('subject_pattern') or ''}".strip() for i in issuers if i.get("issuer"))


def parse_settings_form(form: MultiDict[str, str]) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """The settings form as a change for settings.service, the form as typed (to show again) and errors per field."""
    shown: dict[str, Any] = {
        "enabled": "enabled" in form,
        "block_action": form.get("block_action", ""),
        "require_signed": "require_signed" in form,
        "allowed_issuers": form.get("allowed_issuers", ""),
        "retention_days": form.get("retention_days", "").strip(),
        "block_threshold": form.get("block_threshold", ""),
        "ignore_unfixed": "ignore_unfixed" in form,
        "block_on": form.get("block_on", ""),
    }
    errors: dict[str, str] = {}
    doc: dict[str, Any] = {k: shown[k] for k in ("enabled", "block_action", "require_signed", "ignore_unfixed")}
    doc |= {k: shown[k] for k in ("block_threshold", "block_on") if k in form}  # a form without them keeps them
    if WHOLE_NUMBER.fullmatch(shown["retention_days"]):
        doc["retention_days"] = int(shown["retention_days"])
    else:
        errors["retention_days"] = f"Enter a whole number of days, from 1 to {MAX_RETENTION_DAYS}."
    lines: list[int] = []  # the textarea's line number of each issuer, for messages
    issuers = []
    for n, line in enumerate(shown["allowed_issuers"].splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            lines.append(n)
            issuers.append(policy_settings.parse_issuer_option(re.sub(r"\s+", " ", line, count=1)))
    doc["allowed_issuers"] = issuers
    try:
        changes = policy_settings.parse_change(doc)
    except policy_settings.ValidationError as exc:
        changes = {}
        for e in exc.errors(include_url=False):
            field, message = _settings_error(e, lines)
            errors.setdefault(field, message)
    order = list(SETTING_LABELS)  # the form's order, for the summary above it
    errors = dict(sorted(errors.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    return changes, shown, errors


def _settings_error(e: ErrorDetails, lines: list[int]) -> tuple[str, str]:
    """One pydantic error of SettingsChange as (form field, a sentence for beside that field)."""
    loc = e.get("loc") or ("",)
    field = str(loc[0])
    if field == "retention_days":
        return field, f"Enter a whole number of days, from 1 to {MAX_RETENTION_DAYS}."
    if field == "block_action":
        return field, "Choose none, warn or block_pull."
    if field == "block_threshold":
        return field, "Choose critical, high, medium or low."
    if field == "block_on":
        return field, "Choose all or new."
    if field == "allowed_issuers":
        if len(loc) >= 3 and isinstance(loc[1], int):
            line = lines[loc[1]] if loc[1] < len(lines) else loc[1] + 1
            if loc[2] == "issuer":
                return field, f"Line {line}: the issuer must be an https:// URL, at most 1024 characters."
            reason = str(e.get("msg", "is not valid")).removeprefix("Value error, ")
            return field, f"Line {line}: the subject pattern {reason}"
        return field, "At most 100 issuers."
    return field or "form", str(e.get("msg", "is not valid"))


def setting_text(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        if value and all(isinstance(v, dict) and "issuer" in v for v in value):
            return "; ".join(f"{v['issuer']} {v.get('subject_pattern') or ''}".strip() for v in value)
        return ", ".join(str(v) for v in value) if value else "(none)"
    return str(value)
