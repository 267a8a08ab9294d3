"""Where an advisory id is explained: CVE record, GitHub advisory, distro trackers, otherwise OSV."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote

_GHSA_IN_URL = re.compile(r"github\.com/advisories/(GHSA(?:-[23456789cfghjmpqrvwx]{4}){3})", re.IGNORECASE)


def page(advisory_id: str) -> str | None:
    """The page that explains one advisory id, or None for the app's own synthetic ids."""
    upper = advisory_id.upper()
    quoted = quote(advisory_id, safe="")
    if upper.startswith("FREMFORGE-"):
        return None
    if upper.startswith("CVE-"):
        return f"https://www.cve.org/CVERecord?id={quoted}"
    if upper.startswith("GHSA-"):
        return f"https://github.com/advisories/{quoted}"
    if upper.startswith(("DSA-", "DLA-")):
        return f"https://security-tracker.debian.org/tracker/{quoted}"
    if upper.startswith(("RHSA-", "RHBA-", "RHEA-")):
        return f"https://access.redhat.com/errata/{quoted}"
    if upper.startswith("USN-"):
        return f"https://ubuntu.com/security/notices/{quoted}"
    return f"https://osv.dev/vulnerability/{quoted}"


def pages(cve_id: str, vendor_ids: Iterable[str] = (), references: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(id, url) for the finding's id, its vendor ids, and a GHSA advisory named in its references."""
    seen: dict[str, str] = {}
    ids = [cve_id, *vendor_ids]
    ids += [m.group(1) for ref in references if (m := _GHSA_IN_URL.search(ref))]
    for i in ids:
        url = page(i)
        if url and i.upper() not in {k.upper() for k in seen}:
            seen[i] = url
    return list(seen.items())
