"""Which active exception covers a finding (spec section 10), as pure functions next to the blocking rule.

An exception covers a finding when its advisory id equals the finding's id or any of its vendor ids (letter case
ignored) and, where the exception names them, the package (exact), the repository (letter case ignored) and the
image name (a pattern, `*` matching any run of characters) are the finding's. `Matcher` indexes an org's active
exceptions by advisory id, so matching a 10,000-finding upload against hundreds of exceptions costs a dictionary
lookup per id of each finding. Synthetic signing findings are never covered (signing has its own allowlist).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

RESERVED_PREFIX = "fremforge-"  # the synthetic findings' ids: no exception may name one


@dataclass(frozen=True)
class ActiveException:
    """An exception in force, as matching and the check run use it."""

    id: int
    advisory_id: str
    reason: str
    expires_at: datetime
    package_name: str | None = None
    repo_full_name: str | None = None
    image: str | None = None  # an image-name pattern: `*` matches any run of characters

    def admits(self, repo: str, image_name: str | None) -> bool:
        """Whether it applies to scans of `image_name` in `repo` at all (what the advisory and package leave)."""
        if self.repo_full_name is not None and self.repo_full_name.lower() != repo.lower():
            return False
        if self.image is not None:
            return image_name is not None and image_matches(self.image, image_name)
        return True


def image_matches(pattern: str, name: str) -> bool:
    """Whether `name` is matched by an image-name pattern such as `ghcr.io/acme/*`: `*` any run of characters (none
    too), everything else literal.

    The pieces between stars are found in turn, each at its first place after the one before (the first piece a
    prefix, the last a suffix): no backtracking, so no pattern of many stars can stall the uploads it is asked of (as
    a regular expression `a*a*…a*b` took minutes for one 40-character name)."""
    if "*" not in pattern:
        return name == pattern
    first, *middle, last = pattern.split("*")
    if len(first) + len(last) > len(name) or not name.startswith(first) or not name.endswith(last):
        return False
    pos, end = len(first), len(name) - len(last)
    for piece in middle:
        found = name.find(piece, pos, end)
        if found < 0:
            return False
        pos = found + len(piece)
    return True


class Matcher:
    """The exceptions that apply to one scan (its repository and image name), indexed by advisory id."""

    def __init__(self, exceptions: Iterable[ActiveException], repo: str, image_name: str | None) -> None:
        self.by_id: dict[str, list[ActiveException]] = {}
        for e in sorted(exceptions, key=lambda e: e.id):
            if e.admits(repo, image_name):
                self.by_id.setdefault(e.advisory_id.lower(), []).append(e)

    def __bool__(self) -> bool:
        return bool(self.by_id)

    def match(self, cve_id: str | None, package: str | None, vendor_ids: Sequence[str] | None = ()) -> int | None:
        """The id of the exception (the oldest, if several) covering a finding with these fields, or None."""
        if not self.by_id or cve_id is None or cve_id.lower().startswith(RESERVED_PREFIX):
            return None
        found: int | None = None
        for advisory in (cve_id, *(vendor_ids or ())):
            for e in self.by_id.get(str(advisory).lower(), ()):
                if e.package_name is None or e.package_name == package:
                    found = e.id if found is None else min(found, e.id)
                    break
        return found

    def covering(self, finding: Mapping[str, Any]) -> int | None:
        """`match` for a finding as uploads and the database give it."""
        if finding.get("synthetic"):
            return None
        return self.match(finding.get("cve_id"), finding.get("package"), finding.get("vendor_ids"))

    def get(self, exception_id: int) -> ActiveException | None:
        for candidates in self.by_id.values():
            for e in candidates:
                if e.id == exception_id:
                    return e
        return None


def first_expiring(exceptions: Iterable[ActiveException]) -> ActiveException | None:
    return min(exceptions, key=lambda e: (e.expires_at, e.id), default=None)
