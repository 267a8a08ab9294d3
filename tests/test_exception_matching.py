"""Which active exception covers a finding (spec section 10), as pure functions: app.policy.exceptions matching by
advisory id or vendor id, package, repository and image pattern; and the blocking rule's excepted buckets
(app.policy.reason and tally). No database, no I/O."""

from __future__ import annotations

import itertools
import re
import threading
from datetime import datetime
from typing import Any

import pytest

from app import policy
from app.fields import image_name
from app.github import checks
from app.policy import ImageResult, Policy
from app.policy.exceptions import ActiveException, Matcher, first_expiring, image_matches

REPO = "acme/api"
IMAGE = "ghcr.io/acme/api"
UNTIL = datetime(2027, 1, 4, 12, 0)
BLOCK = Policy(block_action="block_pull")


def exc(advisory: str = "CVE-2024-0001", id: int = 1, **scope: Any) -> ActiveException:
    return ActiveException(id, advisory, "not reachable: the parser is never fed input", UNTIL, **scope)


def finding(cve_id: str = "CVE-2024-0001", package: str = "openssl", **extra: Any) -> dict[str, Any]:
    """A finding as uploads and the database give it to matching."""
    return {"cve_id": cve_id, "package": package, "vendor_ids": [], "synthetic": False, **extra}


def covering(
    exceptions: list[ActiveException], f: dict[str, Any] | None = None, repo: str = REPO, image: str | None = IMAGE
) -> int | None:
    return Matcher(exceptions, repo, image).covering(f if f is not None else finding())


# ---------------------------------------------------------------- the advisory id: the finding's id or a vendor id


@pytest.mark.parametrize(
    ("advisory", "f", "covered"),
    [
        ("CVE-2024-0001", finding(), True),
        ("cve-2024-0001", finding(), True),  # letter case ignored, both ways
        ("CVE-2024-0001", finding("cve-2024-0001"), True),
        ("GHSA-abcd-efgh-ijkl", finding("ghsa-ABCD-efgh-IJKL"), True),
        ("CVE-2024-0002", finding(), False),
        ("CVE-2024-000", finding(), False),  # equal, not a prefix
        ("CVE-2024-00011", finding(), False),
        ("DSA-5555-1", finding(vendor_ids=["DSA-5555-1"]), True),  # a vendor id of the finding
        ("dsa-5555-1", finding(vendor_ids=["GHSA-x", "DSA-5555-1"]), True),
        ("RHSA-2024:1234", finding(vendor_ids=["DSA-5555-1"]), False),
        ("DSA-5555-1", finding(vendor_ids=None), False),  # a finding without vendor ids
        ("CVE-2024-0001", finding(cve_id=None), False),  # retention emptied its payload
    ],
)
def test_advisory_id_matches_the_id_or_a_vendor_id_in_any_letter_case(advisory, f, covered):
    assert covering([exc(advisory, id=7)], f) == (7 if covered else None)


def test_an_unknown_id_shape_matches_exactly_like_any_other():
    assert covering([exc("made-up/42", id=3)], finding("MADE-UP/42")) == 3
    assert covering([exc("made-up/42", id=3)], finding("made-up/4")) is None


# ---------------------------------------------------------------- the scope: package, repository, image


@pytest.mark.parametrize(
    ("package_name", "f", "covered"),
    [
        (None, finding(package="anything"), True),
        ("openssl", finding(package="openssl"), True),
        ("openssl", finding(package="libssl3"), False),
        ("openssl", finding(package="OpenSSL"), False),  # exact, letter case included
        ("openssl", finding(package="openssl "), False),
    ],
)
def test_package_name_is_exact(package_name, f, covered):
    assert covering([exc(id=2, package_name=package_name)], f) == (2 if covered else None)


@pytest.mark.parametrize(
    ("repo_full_name", "repo", "covered"),
    [
        (None, "acme/web", True),
        ("acme/api", "acme/api", True),
        ("acme/api", "ACME/Api", True),  # letter case ignored
        ("ACME/API", "acme/api", True),
        ("acme/api", "acme/api2", False),
        ("acme/api", "other/api", False),
    ],
)
def test_repo_full_name_ignores_letter_case(repo_full_name, repo, covered):
    assert covering([exc(id=4, repo_full_name=repo_full_name)], repo=repo) == (4 if covered else None)


@pytest.mark.parametrize(
    ("pattern", "image_ref", "covered"),
    [
        (None, "ghcr.io/other/thing:1", True),
        ("ghcr.io/acme/api", "ghcr.io/acme/api:1.2", True),  # the image name: tag and digest left out
        ("ghcr.io/acme/api", "ghcr.io/acme/api@sha256:" + "a" * 64, True),
        ("ghcr.io/acme/api", "ghcr.io/acme/api:1.2@sha256:" + "a" * 64, True),
        ("ghcr.io/acme/api", "ghcr.io/acme/api-worker:1", False),  # no `*`: the whole name
        ("ghcr.io/acme/api", "ghcr.io/acme/ap:1", False),
        ("ghcr.io/acme/api", "docker.io/ghcr.io/acme/api:1", False),
        ("ghcr.io/acme/*", "ghcr.io/acme/api:1", True),
        ("ghcr.io/acme/*", "ghcr.io/acme/team/api:1", True),  # `*`: any run of characters, slashes too
        ("ghcr.io/acme/*", "ghcr.io/acme-corp/api:1", False),
        ("*/acme/api", "registry.example.com:5000/acme/api:2", True),
        ("ghcr.io/*/api", "ghcr.io/acme/api:1", True),
        ("ghcr.io/*/api", "ghcr.io/acme/api2:1", False),
        ("*", "anything/at/all:1", True),
        ("ghcr.io/acme/api*", "ghcr.io/acme/api-worker:3", True),
        ("ghcr.io/acme/a.i", "ghcr.io/acme/api:1", False),  # `.` is a dot, not a wildcard
        ("localhost:5000/api", "localhost:5000/api:7", True),  # a registry port is part of the name
    ],
)
def test_image_pattern_with_and_without_a_star(pattern, image_ref, covered):
    assert covering([exc(id=5, image=pattern)], image=image_name(image_ref)) == (5 if covered else None)


def test_an_image_pattern_never_covers_a_scan_without_an_image_name():
    assert covering([exc(id=5, image="*")], image=None) is None
    assert covering([exc(id=6)], image=None) == 6  # no image pattern: any scan


def test_a_star_matches_a_run_of_none_and_everything_else_is_literal():
    assert image_matches("ghcr.io/acme/api*", "ghcr.io/acme/api")
    assert image_matches("a+b(c)[d]", "a+b(c)[d]")
    assert not image_matches("a+b", "aab")
    assert image_matches("a*a", "a*a") and image_matches("a*a", "aa") and not image_matches("a*a", "a")


def test_image_matching_agrees_with_the_regular_expression_it_replaced():
    """Every pattern of up to 5 characters of `a`, `b`, `*` against every name of up to 6 of `a`, `b`: the same answer
    as `*` turned into `.*` in a regular expression (what matching was before it could stall, below)."""
    patterns = ["".join(p) for n in range(1, 6) for p in itertools.product("ab*", repeat=n)]
    names = ["".join(p) for n in range(7) for p in itertools.product("ab", repeat=n)]
    for pattern in patterns:
        expected = re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)
        for name in names:
            assert image_matches(pattern, name) == (expected.fullmatch(name) is not None), (pattern, name)


def test_a_pattern_of_many_stars_answers_at_once():
    """Review: an exception's image `a*a*…a*b` (valid: any number of stars) as a regular expression backtracked
    exponentially against every upload's image name it did not match: 35 s for a 40-character name, so gunicorn
    killed the worker and the upload got no answer. Each pattern is now matched in one pass (run in a thread here,
    so that a regression fails instead of hanging the suite)."""
    answers: list[bool] = []
    pattern, name = "a*" * 60 + "b", "a" * 1000
    worker = threading.Thread(target=lambda: answers.append(image_matches(pattern, name)), daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert answers == [False]
    assert covering([exc(id=5, image=pattern)], image="a" * 1000) is None
    assert covering([exc(id=5, image=pattern)], image="a" * 999 + "b") == 5


def test_every_scope_must_hold_at_once():
    scoped = exc(id=9, package_name="openssl", repo_full_name="acme/api", image="ghcr.io/acme/*")
    assert covering([scoped]) == 9
    assert covering([scoped], finding(package="zlib")) is None
    assert covering([scoped], repo="acme/web") is None
    assert covering([scoped], image="docker.io/acme/api") is None


# ---------------------------------------------------------------- never covered


@pytest.mark.parametrize("cve_id", ["FREMFORGE-UNSIGNED-IMAGE", "FREMFORGE-UNTRUSTED-SIGNER", "fremforge-anything"])
def test_fremforge_ids_are_never_covered(cve_id):
    """Even by an exception naming them (validation refuses to store one, matching refuses to apply one)."""
    assert covering([exc(cve_id, id=1), exc("*", id=2)], finding(cve_id)) is None
    assert Matcher([exc(cve_id, id=1)], REPO, IMAGE).match(cve_id, "image-signature") is None


def test_a_synthetic_finding_is_never_covered():
    signature = policy.signature_findings(Policy(require_signed=True), policy.Signature("unsigned"), f"{IMAGE}:1")
    assert [f["cve_id"] for f in signature] == [policy.UNSIGNED_ID]
    everything = [exc(policy.UNSIGNED_ID, id=1), exc("CVE-2024-0001", id=2)]
    assert covering(everything, signature[0]) is None
    # marked synthetic, an id no exception would refuse is not covered either
    assert covering(everything, finding("CVE-2024-0001", synthetic=True)) is None
    assert covering(everything, finding("CVE-2024-0001", synthetic=False)) == 2


# ---------------------------------------------------------------- several match: the oldest


def test_the_oldest_of_several_matching_is_chosen():
    found = [
        exc("CVE-2024-0001", id=12),
        exc("cve-2024-0001", id=5, package_name="openssl"),
        exc("DSA-5555-1", id=3),  # by a vendor id, and older still
        exc("CVE-2024-0001", id=2, package_name="zlib"),  # older, but another package
        exc("CVE-2024-0001", id=1, repo_full_name="acme/web"),  # older, but another repository
    ]
    assert covering(found, finding(vendor_ids=["DSA-5555-1"])) == 3
    assert covering(found, finding()) == 5
    assert covering(list(reversed(found)), finding()) == 5  # the order given makes no difference
    assert covering(found, finding(package="libssl3")) == 12


def test_no_exceptions_cover_nothing_and_the_matcher_says_it_is_empty():
    assert not Matcher([], REPO, IMAGE)
    assert not Matcher([exc(repo_full_name="acme/web")], REPO, IMAGE)  # none applies to this scan
    assert Matcher([exc()], REPO, IMAGE)
    assert covering([]) is None


def test_get_and_first_expiring():
    early = ActiveException(8, "CVE-1", "r", datetime(2027, 1, 1))
    late = ActiveException(3, "CVE-2", "r", datetime(2027, 6, 1))
    tie = ActiveException(2, "CVE-3", "r", datetime(2027, 1, 1))
    m = Matcher([early, late], REPO, IMAGE)
    assert m.get(8) is early and m.get(3) is late and m.get(99) is None
    assert first_expiring([late, early]) is early
    assert first_expiring([early, tie, late]) is tie  # the same expiry: the oldest
    assert first_expiring([]) is None


# ---------------------------------------------------------------- the blocking rule's excepted buckets


@pytest.mark.parametrize(
    ("pol", "severity", "fixable", "new"),
    [
        (BLOCK, "critical", True, None),
        (BLOCK, "high", True, True),
        (Policy(block_on="new"), "high", True, False),  # existing on the base too: excepted says why first
        (Policy(ignore_unfixed=True), "high", False, None),
        (BLOCK, "low", True, None),  # below the threshold: excepted still says why
        (BLOCK, "unknown", False, None),
    ],
)
def test_an_excepted_finding_never_blocks_and_says_excepted(pol, severity, fixable, new):
    assert policy.reason(pol, severity, fixable, new, excepted=True) == policy.EXCEPTED
    assert not policy.blocks(pol, {"severity": severity, "fixed_version": "1" if fixable else None}, new, True)


def test_a_synthetic_finding_blocks_even_if_said_excepted():
    assert policy.reason(BLOCK, "critical", False, False, excepted=True, synthetic=True) is None


def test_not_excepted_the_rule_is_unchanged():
    assert policy.reason(BLOCK, "high", True, None) is None
    assert policy.reason(BLOCK, "medium", True, None) == policy.BELOW_THRESHOLD


def test_tally_counts_excepted_buckets_apart():
    buckets: dict[policy.Bucket, int] = {
        ("critical", True, None, True): 2,  # excepted: would block otherwise
        ("critical", True, None, False): 1,
        ("high", False, None, True): 3,
        ("medium", True, None, True): 4,  # excepted below the threshold: counted as excepted
        ("medium", True, None, False): 5,
        (None, False, None, True): 1,  # a finding whose severity retention removed
    }
    t = policy.tally(BLOCK, buckets)
    assert t.blocking == {"critical": 1}
    assert t.not_blocking == {policy.BELOW_THRESHOLD: 5, policy.EXCEPTED: 10}
    assert t.blocks == 1
    assert policy.scan_status(BLOCK, t.blocks) == "failure"

    only_excepted = policy.tally(BLOCK, {("critical", True, None, True): 2}, synthetic=0)
    assert only_excepted.blocks == 0 and only_excepted.not_blocking == {policy.EXCEPTED: 2}
    assert policy.scan_status(BLOCK, only_excepted.blocks) == "success"
    with_signing = policy.tally(BLOCK, {("critical", True, None, True): 2}, synthetic=1)
    assert with_signing.blocking == {"critical": 1}  # the synthetic one: never excepted


def test_tally_under_block_on_new_and_ignore_unfixed():
    pol = Policy(block_action="block_pull", block_on="new", ignore_unfixed=True)
    buckets: dict[policy.Bucket, int] = {
        ("high", True, True, True): 1,
        ("high", True, True, False): 2,
        ("high", True, False, False): 3,
        ("high", False, True, False): 4,
        ("high", False, False, True): 5,
    }
    t = policy.tally(pol, buckets)
    assert t.blocking == {"high": 2}
    assert t.not_blocking == {policy.EXCEPTED: 6, policy.EXISTING: 3, policy.UNFIXED: 4}


def test_the_check_run_lists_excepted_findings_apart():
    e1 = ActiveException(4, "CVE-2024-0001", "Not *reachable*: see <ticket>", datetime(2027, 3, 1), "openssl")
    e2 = ActiveException(9, "DSA-5555-1", "Vendor says not affected", datetime(2027, 1, 4))
    t = policy.tally(BLOCK, {("critical", True, None, True): 3, ("low", True, None, False): 1})
    image = ImageResult(
        f"{IMAGE}:1",
        "success",
        {"critical": 3, "high": 0, "medium": 0, "low": 1, "unknown": 0},
        4,
        1,
        [],
        t,
        None,
        (e1, e2),
    )
    line = checks.split_line(image, "block_pull", "all")
    assert (
        line == "**Blocking: 0** · Not blocking: 1 (1 below the threshold) · 3 excepted, the first expiring 2027-01-04"
    )
    section = checks.image_section(image, "block_pull", "all")
    assert "- Excepted until 2027-03-01: `CVE-2024-0001` in `openssl` — " in section
    assert "(exception 4)" in section and "(exception 9)" in section
    assert "Vendor says not affected" in section
    assert "<ticket>" not in section and "*reachable*" not in section  # the org's words are escaped
