"""Read and change an org's policy; every change is validated whole and recorded in the audit chain."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import regex
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from app import reposts
from app.chain import audit
from app.models import OrgSettings, utcnow
from app.policy import patterns
from app.web.urls import Urls

MAX_RETENTION_DAYS = 3650


def _regex(value: str) -> str:
    if patterns.verbose(value):
        raise ValueError("turns on verbose mode (the x flag), which a subject pattern may not use")
    size = patterns.expanded_size(value)
    if size > patterns.MAX_EXPANDED:
        raise ValueError(
            f"is too costly to compile: its counted repeats written out come to {size:,} characters, "
            f"over {patterns.MAX_EXPANDED:,}"
        )
    try:
        regex.compile(value)
    except regex.error as exc:
        raise ValueError(f"is not a valid regular expression: {exc}") from None
    return value


class AllowedIssuerBody(BaseModel):
    """An allowed issuer as the settings API and page take it (app.policy.AllowedIssuer is what is judged with):
    `{"issuer": URL, "subject_pattern": REGEX | null}`, or the issuer's URL alone (spec §3: "a list of OIDC issuer
    URLs, each optionally with a subject pattern")."""

    model_config = ConfigDict(strict=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _url_alone(cls, value: Any) -> Any:
        return {"issuer": value} if isinstance(value, str) else value

    issuer: Annotated[str, StringConstraints(pattern=r"^https://\S+$", max_length=1024)]
    subject_pattern: Annotated[str, StringConstraints(max_length=1024), AfterValidator(_regex)] | None = None


class SettingsChange(BaseModel):
    """A partial update: fields left out keep their value; null is not a value."""

    model_config = ConfigDict(strict=True, extra="forbid")

    enabled: bool = None  # type: ignore[assignment]
    block_action: Literal["none", "warn", "block_pull"] = None  # type: ignore[assignment]
    require_signed: bool = None  # type: ignore[assignment]
    allowed_issuers: Annotated[list[AllowedIssuerBody], Field(max_length=100)] = None  # type: ignore[assignment]
    retention_days: Annotated[int, Field(ge=1, le=MAX_RETENTION_DAYS)] = None  # type: ignore[assignment]
    block_threshold: Literal["critical", "high", "medium", "low"] = None  # type: ignore[assignment]
    ignore_unfixed: bool = None  # type: ignore[assignment]
    block_on: Literal["all", "new"] = None  # type: ignore[assignment]


def parse_change(doc: Any) -> dict[str, Any]:
    """The fields to change, validated; raises pydantic's ValidationError."""
    change = SettingsChange.model_validate(doc)
    return change.model_dump(include=change.model_fields_set)


def parse_issuer_option(text: str) -> dict[str, Any]:
    """`URL [SUBJECT_REGEX]` as the CLI takes it."""
    issuer, _, pattern = text.strip().partition(" ")
    return {"issuer": issuer, "subject_pattern": pattern.strip() or None}


def as_dict(s: OrgSettings) -> dict[str, Any]:
    return {
        "enabled": s.enabled,
        "block_action": s.block_action,
        "require_signed": s.require_signed,
        "allowed_issuers": [
            {"issuer": i["issuer"], "subject_pattern": i.get("subject_pattern")} for i in s.allowed_issuers or []
        ],
        "retention_days": s.retention_days,
        "block_threshold": s.block_threshold,
        "ignore_unfixed": s.ignore_unfixed,
        "block_on": s.block_on,
    }


# The settings a verdict depends on: changing one re-posts the org's open pull request heads and recent commits.
VERDICT_SETTINGS = frozenset(
    {"enabled", "block_action", "require_signed", "allowed_issuers", "block_threshold", "ignore_unfixed", "block_on"}
)


def apply(
    session: Any, settings: OrgSettings, changes: dict[str, Any], actor: str, repost: Urls | None = None
) -> dict[str, Any]:
    """Apply validated changes in the caller's write transaction; record old -> new; return what changed.

    A change a verdict depends on asks for the affected commits to be posted again (`app.reposts`), with links
    under `repost`; None: nothing is posted (no GitHub App configured)."""
    before = as_dict(settings)
    changed = {k: {"old": before[k], "new": v} for k, v in changes.items() if before[k] != v}
    if not changed:
        return {}
    for key, diff in changed.items():
        setattr(settings, key, diff["new"])
    settings.updated_at = utcnow()
    audit.record(session, settings.org_id, audit.Action.SETTINGS_CHANGED, actor, {"changes": changed})
    if repost is not None and VERDICT_SETTINGS & changed.keys():
        session.flush()  # the new settings are what the worker judges by; it waits for this transaction's lock
        reposts.ask_for_org(session.connection(), settings.org_id, repost)
    return changed


__all__ = ["ValidationError", "apply", "as_dict", "parse_change", "parse_issuer_option"]
