"""The org's policy as pure functions: a scan's findings and signature -> its verdict; images -> the commit's."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import regex

from app.models import (
    BLOCK_THRESHOLDS,
    DEFAULT_BLOCK_ACTION,
    DEFAULT_BLOCK_ON,
    DEFAULT_BLOCK_THRESHOLD,
    DEFAULT_ENABLED,
    DEFAULT_IGNORE_UNFIXED,
    DEFAULT_REQUIRE_SIGNED,
    DEFAULT_RETENTION_DAYS,
    SEVERITIES,
)

CONTEXT = "fremforge/image-scan"
UNSIGNED_ID = "FREMFORGE-UNSIGNED-IMAGE"
UNTRUSTED_ID = "FREMFORGE-UNTRUSTED-SIGNER"
DESCRIPTION_LIMIT = 140
SUBJECT_MATCH_SECONDS = 0.05


@dataclass(frozen=True)
class AllowedIssuer:
    issuer: str
    subject_pattern: str | None = None

    def admits(self, issuer: str | None, subject: str | None) -> bool:
        if issuer is None or issuer.rstrip("/") != self.issuer.rstrip("/"):
            return False
        if self.subject_pattern is None:
            return True
        if subject is None:
            return False
        try:  # patterns are the org's, subjects the uploader's: bounded time, never a stuck worker
            return regex.search(self.subject_pattern, subject, timeout=SUBJECT_MATCH_SECONDS) is not None
        except TimeoutError:
            return False


@dataclass(frozen=True)
class Policy:
    enabled: bool = DEFAULT_ENABLED
    block_action: str = DEFAULT_BLOCK_ACTION
    require_signed: bool = DEFAULT_REQUIRE_SIGNED
    allowed_issuers: tuple[AllowedIssuer, ...] = ()
    retention_days: int = DEFAULT_RETENTION_DAYS
    block_threshold: str = DEFAULT_BLOCK_THRESHOLD
    ignore_unfixed: bool = DEFAULT_IGNORE_UNFIXED
    block_on: str = DEFAULT_BLOCK_ON

    @classmethod
    def from_settings(cls, s: Any) -> Policy:
        return cls(
            enabled=s.enabled,
            block_action=s.block_action,
            require_signed=s.require_signed,
            allowed_issuers=tuple(
                AllowedIssuer(i["issuer"], i.get("subject_pattern")) for i in (s.allowed_issuers or [])
            ),
            retention_days=s.retention_days,
            block_threshold=s.block_threshold,
            ignore_unfixed=s.ignore_unfixed,
            block_on=s.block_on,
        )


@dataclass(frozen=True)
class Signature:
    status: str = "unknown"  # signed | unsigned | unknown
    issuer: str | None = None
    subject: str | None = None


def signature_findings(policy: Policy, sig: Signature, image_ref: str) -> list[dict[str, Any]]:
    """The synthetic critical finding that makes block_pull enforce signing, or none."""
    if not policy.require_signed:
        return []
    if sig.status != "signed":
        cve_id, title = (
            UNSIGNED_ID,
            (f"The image is not signed (signature_status: {sig.status}) and this organisation requires signed images."),
        )
    elif policy.allowed_issuers and not any(a.admits(sig.issuer, sig.subject) for a in policy.allowed_issuers):
        cve_id, title = (
            UNTRUSTED_ID,
            (
                f"The image is signed by {sig.issuer or 'an unnamed issuer'}"
                f"{' as ' + sig.subject if sig.subject else ''}, which is not in this organisation's allowed issuers."
            ),
        )
    else:
        return []
    return [
        {
            "cve_id": cve_id,
            "severity": "critical",
            "package": "image-signature",
            "installed_version": sig.status,
            "fixed_version": None,
            "target": image_ref,
            "title": title,
            "primary_url": None,
            "references": [],
            "vendor_ids": [],
            "synthetic": True,
        }
    ]


def count(findings: Iterable[Mapping[str, Any]]) -> tuple[dict[str, int], int]:
    """Severity counts and the number of fixable findings (those with a fixed version)."""
    counts = dict.fromkeys(SEVERITIES, 0)
    fixable = 0
    for f in findings:
        counts[f["severity"]] += 1
        if f["fixed_version"]:
            fixable += 1
    return counts, fixable


# Severities at least as severe as each threshold; unknown meets none.
_AT_LEAST = {t: frozenset(BLOCK_THRESHOLDS[: BLOCK_THRESHOLDS.index(t) + 1]) for t in BLOCK_THRESHOLDS}


def blocks(policy: Policy, finding: Mapping[str, Any], new: bool = True) -> bool:
    """Whether a finding blocks a merge under `block_pull` (spec section 3): its severity is at least the threshold
    (unknown never is), it has a fixed version or unfixed ones are not ignored, and it is new or every finding
    counts. A synthetic signing finding always blocks. `new`: whether the pull request introduces it; a scan without
    a baseline has every finding new (it fails closed)."""
    if finding.get("synthetic"):
        return True
    if finding["severity"] not in _AT_LEAST[policy.block_threshold]:
        return False
    if policy.ignore_unfixed and not finding["fixed_version"]:
        return False
    return new or policy.block_on == "all"


def blocking(policy: Policy, findings: Iterable[Mapping[str, Any]]) -> int:
    """How many findings block (every finding new: no baseline is known to this upload)."""
    return sum(1 for f in findings if blocks(policy, f))


def scan_status(policy: Policy, blocking: int) -> str:
    """This scan's own verdict under the policy, from how many of its findings block: success, failure, skipped."""
    if policy.block_action == "none":
        return "skipped"
    if policy.block_action == "block_pull" and blocking:
        return "failure"
    return "success"


@dataclass(frozen=True)
class ImageResult:
    """The latest judged scan of one image of a commit."""

    image_ref: str
    status: str
    counts: Mapping[str, int]
    fixable: int
    scan_run_id: int | None = None
    top_findings: Sequence[Mapping[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class CommitVerdict:
    state: str  # success | failure
    description: str
    images: tuple[ImageResult, ...]
    block_action: str


def commit_verdict(block_action: str, images: Iterable[ImageResult]) -> CommitVerdict | None:
    """Aggregate the latest scan of each image: failure when any of them blocks. None: post nothing."""
    if block_action == "none":
        return None
    images = tuple(sorted(images, key=lambda i: i.image_ref))
    state = "failure" if any(i.status == "failure" for i in images) else "success"
    return CommitVerdict(state, describe(state, block_action, images), images, block_action)


def describe(state: str, block_action: str, images: tuple[ImageResult, ...]) -> str:
    """A commit status description within GitHub's 140 characters: `2 images · 3 critical, 5 high · blocking`."""
    totals = {s: sum(i.counts[s] for i in images) for s in SEVERITIES}
    n = len(images)
    parts = [f"{n} image" + ("" if n == 1 else "s")]
    named = [f"{totals[s]} {s}" for s in SEVERITIES if totals[s]]
    parts.append(", ".join(named) if named else "no findings")
    if state == "failure":
        parts.append("blocking")
    elif block_action == "warn" and (totals["critical"] or totals["high"]):
        parts.append("warning only")
    text = " · ".join(parts)
    if len(text) > DESCRIPTION_LIMIT:  # shorten the counts, never the image count or the verdict
        room = DESCRIPTION_LIMIT - (len(text) - len(parts[1])) - 1
        parts[1] = parts[1][: max(room, 0)] + "…"
        text = " · ".join(parts)[:DESCRIPTION_LIMIT]
    return text
