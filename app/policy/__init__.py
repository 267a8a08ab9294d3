"""The org's policy as pure functions: a scan's findings and signature -> its verdict; images -> the commit's."""

from __future__ import annotations

import heapq
import itertools
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
from app.policy import patterns
from app.policy.exceptions import ActiveException

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
        if subject is None or patterns.too_costly(self.subject_pattern):  # stored before they were measured
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

# Why a finding does not block (spec section 3), as the check run and the admin pages name it.
BELOW_THRESHOLD = "below_threshold"
UNFIXED = "unfixed"
EXISTING = "existing"
EXCEPTED = "excepted"
NOT_BLOCKING = {
    BELOW_THRESHOLD: "below the threshold",
    UNFIXED: "unfixed",
    EXISTING: "existing on the base",
    EXCEPTED: "excepted",
}


def reason(
    policy: Policy,
    severity: str | None,
    fixable: bool,
    new: bool | None,
    excepted: bool = False,
    synthetic: bool = False,
) -> str | None:
    """Why a finding does not block under the policy's blocking rule, or None when it blocks (spec section 3).

    A finding blocks when no active exception covers it (`excepted`, app.policy.exceptions), its severity is at
    least the threshold (unknown never is), it has a fixed version or unfixed ones are not ignored, and it is new or
    every finding counts. `new`: whether the pull request introduces it, None when no baseline is known (it counts
    as new: fails closed). A synthetic signing finding always blocks.
    """
    if synthetic:
        return None
    if excepted:
        return EXCEPTED
    if severity not in _AT_LEAST[policy.block_threshold]:
        return BELOW_THRESHOLD
    if policy.ignore_unfixed and not fixable:
        return UNFIXED
    if policy.block_on == "new" and new is False:
        return EXISTING
    return None


def blocks(policy: Policy, finding: Mapping[str, Any], new: bool | None = None, excepted: bool = False) -> bool:
    """Whether a finding (a dict as uploads and the database give it) meets the blocking rule (`reason`)."""
    synthetic = bool(finding.get("synthetic"))
    return reason(policy, finding["severity"], bool(finding["fixed_version"]), new, excepted, synthetic) is None


def blocking(policy: Policy, findings: Iterable[Mapping[str, Any]]) -> int:
    """How many findings block (every finding new: no baseline is known to this upload)."""
    return sum(1 for f in findings if blocks(policy, f))


# How a scan's findings are counted for the blocking rule: (severity, fixable, new, excepted) -> how many.
Bucket = tuple[str | None, bool, bool | None, bool]


@dataclass(frozen=True)
class Tally:
    """How one scan's findings fall under the blocking rule: those that block, by severity, and those that do not,
    by why (NOT_BLOCKING). Under `warn` the blocking ones are what would block."""

    blocking: Mapping[str, int] = field(default_factory=dict)
    not_blocking: Mapping[str, int] = field(default_factory=dict)
    signing: int = 0  # of blocking["critical"]: the synthetic signing findings, which block whether new or not

    @property
    def blocks(self) -> int:
        return sum(self.blocking.values())


def tally(policy: Policy, buckets: Mapping[Bucket, int], synthetic: int = 0) -> Tally:
    """Count `buckets` of a scan's findings (and its `synthetic` signing findings, critical) under the rule."""
    by_severity = dict.fromkeys(SEVERITIES, 0)
    by_severity["critical"] += synthetic
    why = dict.fromkeys(NOT_BLOCKING, 0)
    for (severity, fixable, new, excepted), n in buckets.items():
        r = reason(policy, severity, fixable, new, excepted)
        if r is None and severity is not None:
            by_severity[severity] += n
        elif r is not None:
            why[r] += n
    blocking = {s: n for s, n in by_severity.items() if n}
    return Tally(blocking, {r: n for r, n in why.items() if n}, synthetic)


def blocking_counts(blocking: Mapping[str, int], block_on: str, signing: int = 0) -> str:
    """`2 new high, 1 signing` (block_on new) or `2 high, 1 critical`: the counts of what blocks, by severity; under
    block_on new the `signing` findings (counted in `critical`) are named apart, since they are not "new"."""
    if block_on != "new":
        return ", ".join(f"{blocking[s]} {s}" for s in SEVERITIES if blocking.get(s))
    uploaded = {s: blocking.get(s, 0) - (signing if s == "critical" else 0) for s in SEVERITIES}
    parts = [f"{uploaded[s]} new {s}" for s in SEVERITIES if uploaded[s] > 0]
    return ", ".join(parts + ([f"{signing} signing"] if signing else []))


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
    tally: Tally = field(default_factory=Tally)
    baseline_scan_id: int | None = None  # the scan compared with under block_on new; None: every finding counts
    exceptions: tuple[ActiveException, ...] = ()  # those that covered a finding, by id
    redacted: int = 0  # findings emptied by retention: judged by their stored severity, as fixable and new
    no_baseline: str | None = None  # under block_on new with no baseline: why (app.commits NO_PULL_REQUEST, ...)


@dataclass(frozen=True)
class CommitVerdict:
    state: str  # success | failure
    description: str
    images: tuple[ImageResult, ...]
    block_action: str
    block_on: str = DEFAULT_BLOCK_ON


def commit_verdict(block_action: str, images: Iterable[ImageResult], block_on: str = "all") -> CommitVerdict | None:
    """Aggregate the latest scan of each image: failure when any of them blocks. None: post nothing."""
    if block_action == "none":
        return None
    images = tuple(sorted(images, key=lambda i: i.image_ref))
    state = "failure" if any(i.status == "failure" for i in images) else "success"
    return CommitVerdict(state, describe(state, block_action, images, block_on), images, block_action, block_on)


def describe(state: str, block_action: str, images: tuple[ImageResult, ...], block_on: str = "all") -> str:
    """A commit status description within GitHub's 140 characters, naming what blocks: `2 images · 2 new high ·
    blocking` (under warn, what would block: `· warning only`); when nothing does, every finding's counts."""
    blocking = {s: sum(i.tally.blocking.get(s, 0) for i in images) for s in SEVERITIES}
    signing = sum(i.tally.signing for i in images)
    totals = {s: sum(i.counts[s] for i in images) for s in SEVERITIES}
    n = len(images)
    parts = [f"{n} image" + ("" if n == 1 else "s")]
    flagged = state == "failure" or (block_action == "warn" and any(blocking.values()))
    if flagged and any(blocking.values()):
        parts.append(blocking_counts(blocking, block_on, signing))
    else:
        named = [f"{totals[s]} {s}" for s in SEVERITIES if totals[s]]
        parts.append(", ".join(named) if named else "no findings")
    if state == "failure":
        parts.append("blocking")
    elif flagged:
        parts.append("warning only")
    text = " · ".join(parts)
    if len(text) > DESCRIPTION_LIMIT:  # shorten the counts, never the image count or the verdict
        room = DESCRIPTION_LIMIT - (len(text) - len(parts[1])) - 1
        parts[1] = parts[1][: max(room, 0)] + "…"
        text = " · ".join(parts)[:DESCRIPTION_LIMIT]
    return text


def top_findings(
    findings: Sequence[Mapping[str, Any]], blocking: Sequence[bool] | None = None, limit: int = 5
) -> list[Mapping[str, Any]]:
    """The findings a summary lists: those that block first (each finding's flag in `blocking`), then the most
    severe: a reviewer is shown what holds the pull request, not an existing critical that does not."""
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    flags = blocking if blocking is not None else itertools.repeat(False)
    chosen = heapq.nsmallest(
        limit,
        zip(findings, flags, strict=False),
        key=lambda fb: (not fb[1], rank.get(fb[0]["severity"], len(rank)), fb[0]["package"], fb[0]["cve_id"]),
    )
    return [f for f, _ in chosen]
