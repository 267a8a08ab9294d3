"""Pure-function tests of app/policy.py and of the GitHub payload builders in app/github/checks.py (no I/O)."""

from __future__ import annotations

import itertools
import re
from types import SimpleNamespace

import pytest

from app import policy
from app.github import checks
from app.policy import AllowedIssuer, ImageResult, Policy, Signature

SEVERITIES = ("critical", "high", "medium", "low", "unknown")
GHA = "https://token.actions.githubusercontent.com"
ACME_SUBJECT = "https://github.com/acme/api/.github/workflows/build.yml@refs/heads/main"
IMAGE = "ghcr.io/acme/api:0123456789abcdef"


def finding(
    severity: str, cve_id: str = "CVE-2023-1234", package: str = "openssl", fixed: str | None = "3.0.7", **extra
):
    return {
        "cve_id": cve_id,
        "severity": severity,
        "package": package,
        "installed_version": "3.0.1",
        "fixed_version": fixed,
        "target": "/usr/lib/libssl.so.3",
        "title": None,
        "primary_url": None,
        "references": [],
        "vendor_ids": [],
        "synthetic": False,
        **extra,
    }


def counts(**kw: int) -> dict[str, int]:
    return {s: kw.get(s, 0) for s in SEVERITIES}


# ------------------------------------------------------------------ the policy matrix

SIGNATURES = {
    "signed-allowed": Signature("signed", GHA, ACME_SUBJECT),
    "signed-allowed-trailing-slash": Signature("signed", GHA + "/", ACME_SUBJECT),
    "signed-other-issuer": Signature("signed", "https://accounts.google.com", ACME_SUBJECT),
    "signed-subject-mismatch": Signature("signed", GHA, "https://github.com/evil/api/.github/workflows/x.yml@main"),
    "signed-no-issuer": Signature("signed", None, None),
    "unsigned": Signature("unsigned"),
    "unknown": Signature("unknown", GHA, ACME_SUBJECT),
    "absent": Signature(),
}
ISSUER_LISTS = {
    "any-issuer": (),
    "acme-gha": (AllowedIssuer("https://accounts.example", None), AllowedIssuer(GHA, "^https://github.com/acme/")),
}
SEVERITY_SETS = {
    "low-medium": [finding("low", "CVE-1"), finding("medium", "CVE-2", fixed=None), finding("low", "CVE-3")],
    "one-high": [finding("low", "CVE-1"), finding("high", "CVE-2")],
    "one-critical": [finding("medium", "CVE-1", fixed=None), finding("critical", "CVE-2")],
}


def expected_synthetic(require_signed: bool, sig: str, issuers: str) -> str | None:
    """Spec section 3, written out: which synthetic finding (if any) an image gets."""
    if not require_signed:
        return None
    if sig in ("unsigned", "unknown", "absent"):
        return "FREMFORGE-UNSIGNED-IMAGE"
    if issuers == "any-issuer":  # empty allowed_issuers: any issuer
        return None
    if sig in ("signed-allowed", "signed-allowed-trailing-slash"):
        return None
    return "FREMFORGE-UNTRUSTED-SIGNER"


def expected_status(block_action: str, severities: str, synthetic: str | None) -> str:
    if block_action == "none":
        return "skipped"
    if block_action == "warn":
        return "success"
    return "failure" if severities != "low-medium" or synthetic else "success"


MATRIX = list(
    itertools.product(
        [True, False], ["none", "warn", "block_pull"], SIGNATURES, ISSUER_LISTS, [True, False], SEVERITY_SETS
    )
)


@pytest.mark.parametrize("enabled, block_action, sig, issuers, require_signed, severities", MATRIX)
def test_policy_matrix(enabled, block_action, sig, issuers, require_signed, severities):
    # `enabled` is enforced by the API before any of these functions run (202 {"status": "disabled"}, see
    # test_aggregation.py); the pure verdict must not depend on it.
    pol = Policy(
        enabled=enabled, block_action=block_action, require_signed=require_signed, allowed_issuers=ISSUER_LISTS[issuers]
    )
    uploaded = SEVERITY_SETS[severities]
    synthetic = policy.signature_findings(pol, SIGNATURES[sig], IMAGE)
    want = expected_synthetic(require_signed, sig, issuers)

    if want is None:
        assert synthetic == []
    else:
        assert len(synthetic) == 1
        s = synthetic[0]
        assert s["cve_id"] == want
        assert s["severity"] == "critical"
        assert s["synthetic"] is True
        assert s["fixed_version"] is None  # never counted as fixable
        assert s["target"] == IMAGE
        assert s["title"]
        assert set(s) == set(uploaded[0])  # the same columns as an uploaded finding, so it is stored alike

    c, fixable = policy.count(uploaded + synthetic)
    base, base_fixable = policy.count(uploaded)
    assert fixable == base_fixable == sum(1 for f in uploaded if f["fixed_version"])
    assert c == {**base, "critical": base["critical"] + len(synthetic)}
    assert sum(c.values()) == len(uploaded) + len(synthetic)
    assert policy.scan_status(pol, policy.blocking(pol, uploaded + synthetic)) == expected_status(
        block_action, severities, want
    )


def test_policy_defaults_match_the_spec():
    p = Policy()
    assert (p.enabled, p.block_action, p.require_signed, p.allowed_issuers, p.retention_days) == (
        True,
        "warn",
        False,
        (),
        365,
    )
    assert (p.block_threshold, p.ignore_unfixed, p.block_on) == ("high", False, "all")  # today's rule, kept


def test_policy_from_settings():
    s = SimpleNamespace(
        enabled=False,
        block_action="block_pull",
        require_signed=True,
        retention_days=30,
        allowed_issuers=[
            {"issuer": GHA, "subject_pattern": "^https://github.com/acme/"},
            {"issuer": "https://accounts.example"},
        ],
        block_threshold="critical",
        ignore_unfixed=True,
        block_on="new",
    )
    p = Policy.from_settings(s)
    assert p == Policy(
        False,
        "block_pull",
        True,
        (AllowedIssuer(GHA, "^https://github.com/acme/"), AllowedIssuer("https://accounts.example")),
        30,
        "critical",
        True,
        "new",
    )
    assert Policy.from_settings(SimpleNamespace(**{**vars(s), "allowed_issuers": None})).allowed_issuers == ()


def test_subject_pattern_is_searched_not_full_matched():
    a = AllowedIssuer(GHA, "github.com/acme/")
    assert a.admits(GHA, ACME_SUBJECT)
    assert not a.admits(GHA, None)
    assert not a.admits(None, ACME_SUBJECT)
    assert AllowedIssuer(GHA).admits(GHA, None)  # no pattern: any subject, even none


def test_synthetic_titles_name_the_reason():
    pol = Policy(require_signed=True, allowed_issuers=ISSUER_LISTS["acme-gha"])
    [unsigned] = policy.signature_findings(pol, Signature("unsigned"), IMAGE)
    assert "not signed" in unsigned["title"] and "unsigned" in unsigned["title"]
    [untrusted] = policy.signature_findings(pol, Signature("signed", "https://evil.example", "me"), IMAGE)
    assert "https://evil.example" in untrusted["title"] and "me" in untrusted["title"]


def test_by_default_only_high_and_critical_block():
    block = Policy(block_action="block_pull")
    harmless = [finding("medium")] * 1000 + [finding("low")] * 5 + [finding("unknown")] * 7
    assert policy.blocking(block, harmless) == 0
    assert policy.scan_status(block, policy.blocking(block, harmless)) == "success"
    assert policy.blocking(block, [*harmless, finding("high", fixed=None)]) == 1  # unfixed counts by default
    assert policy.blocking(block, [finding("critical"), finding("high")]) == 2
    assert policy.scan_status(block, 1) == "failure"
    assert policy.scan_status(block, 0) == "success"
    assert policy.scan_status(Policy(block_action="warn"), 5) == "success"
    assert policy.scan_status(Policy(block_action="none"), 5) == "skipped"


# ------------------------------------------------------------------ the blocking matrix (spec section 3)

BLOCK_MATRIX = list(
    itertools.product(
        ["critical", "high", "medium", "low"],  # threshold
        [False, True],  # ignore_unfixed
        ["all", "new"],  # block_on
        [*SEVERITIES],  # the finding's severity
        [True, False],  # fixed
        [True, False],  # new
        [False, True],  # synthetic
    )
)


@pytest.mark.parametrize(
    ("threshold", "ignore_unfixed", "block_on", "severity", "fixed", "new", "synthetic"),
    BLOCK_MATRIX,
    ids=[
        f"{t}-{'ignore' if u else 'count'}-unfixed-on-{b}-{s}-{'fixed' if f else 'unfixed'}-"
        f"{'new' if n else 'existing'}{'-synthetic' if y else ''}"
        for t, u, b, s, f, n, y in BLOCK_MATRIX
    ],
)
def test_blocking_matrix(threshold, ignore_unfixed, block_on, severity, fixed, new, synthetic):
    pol = Policy(block_action="block_pull", block_threshold=threshold, ignore_unfixed=ignore_unfixed, block_on=block_on)
    f = finding(severity, fixed="1.2.3" if fixed else None, synthetic=synthetic)
    rank = ["critical", "high", "medium", "low"]
    expected = synthetic or (
        severity in rank
        and rank.index(severity) <= rank.index(threshold)
        and (fixed or not ignore_unfixed)
        and (new or block_on == "all")
    )
    assert policy.blocks(pol, f, new=new) is expected


def test_unknown_severity_never_meets_a_threshold():
    assert not policy.blocks(Policy(block_threshold="low"), finding("unknown"))


def test_a_scan_without_a_baseline_has_every_finding_new():
    """block_on new, no baseline known to the upload: every finding counts (fails closed)."""
    pol = Policy(block_action="block_pull", block_on="new")
    assert policy.blocking(pol, [finding("high"), finding("critical")]) == 2


def test_count_treats_empty_fixed_version_as_unfixable():
    c, fixable = policy.count([finding("high", fixed=""), finding("high", fixed=None), finding("low", fixed="1.2")])
    assert c == counts(high=2, low=1) and fixable == 1


# ------------------------------------------------------------------ aggregation


def image(ref: str, status: str, fixable: int = 0, **kw: int) -> ImageResult:
    """An image judged under the default rule: its critical and high findings block (or would, under warn)."""
    tally = policy.Tally({s: n for s, n in kw.items() if s in ("critical", "high") and n})
    return ImageResult(ref, status, counts(**kw), fixable, tally=tally)


def test_commit_verdict_none_posts_nothing():
    assert policy.commit_verdict("none", [image("a", "failure", critical=1)]) is None
    assert policy.commit_verdict("none", []) is None


@pytest.mark.parametrize("order", [0, 1])
def test_any_failing_image_fails_the_commit(order):
    imgs = [image("reg/a:1", "failure", critical=3, high=1), image("reg/b:1", "success", high=4, low=2)]
    if order:
        imgs.reverse()
    v = policy.commit_verdict("block_pull", imgs)
    assert v is not None
    assert v.state == "failure"
    assert [i.image_ref for i in v.images] == ["reg/a:1", "reg/b:1"]  # stable order
    assert v.description == "2 images · 3 critical, 5 high · blocking"  # what blocks
    assert v.block_action == "block_pull"


def test_description_example_from_the_spec():
    v = policy.commit_verdict("block_pull", [image("a", "failure", critical=3, high=2), image("b", "success", high=3)])
    assert v is not None and v.description == "2 images · 3 critical, 5 high · blocking"


def test_all_passing_is_success():
    v = policy.commit_verdict("block_pull", [image("a", "success", medium=2), image("b", "success")])
    assert v is not None and v.state == "success"
    assert v.description == "2 images · 2 medium"
    one = policy.commit_verdict("block_pull", [image("a", "success")])
    assert one is not None and one.description == "1 image · no findings"


def test_warn_is_success_naming_the_count():
    v = policy.commit_verdict("warn", [image("a", "success", critical=2, high=1), image("b", "success", low=1)])
    assert v is not None and v.state == "success"
    assert v.description == "2 images · 2 critical, 1 high · warning only"


def test_the_commit_verdict_aggregates_the_images_verdicts_as_given():
    """commit_verdict aggregates the images' verdicts; judging them under the current policy is commits.evaluate's."""
    v = policy.commit_verdict("block_pull", [image("a", "success", critical=1), image("b", "success")])
    assert v is not None and v.state == "success"
    v = policy.commit_verdict("warn", [image("a", "failure", critical=1), image("b", "success")])
    assert v is not None and v.state == "failure"


@pytest.mark.parametrize("n, per_image", [(1, 2**31 - 1), (3, 10**6), (1000, 2**31 - 1), (10_000, 10**5)])
def test_description_fits_140_chars_and_keeps_the_verdict(n, per_image):
    imgs = [
        image(f"reg/img-{i}:{'x' * 200}", "failure" if i == 0 else "success", **dict.fromkeys(SEVERITIES, per_image))
        for i in range(n)
    ]
    v = policy.commit_verdict("block_pull", imgs)
    assert v is not None
    assert len(v.description) <= policy.DESCRIPTION_LIMIT == 140
    assert v.description.startswith(f"{n} image")
    assert v.description.endswith("· blocking")
    assert f"{n * per_image} critical" in v.description


@pytest.mark.parametrize("block_action, status", [("block_pull", "failure"), ("warn", "success")])
def test_description_fits_140_chars_with_absurd_counts(block_action, status):
    imgs = [image(f"reg/{i}", status, **dict.fromkeys(SEVERITIES, 10**15)) for i in range(10_000)]
    v = policy.commit_verdict(block_action, imgs)
    assert v is not None
    assert len(v.description) <= 140
    assert v.state == status


# ------------------------------------------------------------------ GitHub payloads (app/github/checks.py)


def verdict(state: str, block_action: str = "block_pull", images=None) -> policy.CommitVerdict:
    if images is None:
        images = [image("reg/a:1", state, critical=1 if state == "failure" else 0, low=2)]
    v = policy.commit_verdict(block_action, images)
    assert v is not None
    return v


@pytest.mark.parametrize("state", ["success", "failure"])
def test_commit_status_payload(state):
    v = verdict(state)
    body = checks.commit_status(v, "http://fremforge.test/admin/x")
    assert body == {
        "state": state,
        "description": v.description,
        "context": "fremforge/image-scan",
        "target_url": "http://fremforge.test/admin/x",
    }
    assert "target_url" not in checks.commit_status(v, None)


@pytest.mark.parametrize("state", ["success", "failure"])
def test_check_run_payload(state):
    v = verdict(state)
    sha = "0123456789abcdef0123456789abcdef01234567"
    body = checks.check_run(v, sha, "http://fremforge.test/admin/x", external_id="acme:acme/api@" + sha)
    assert body["name"] == "fremforge/image-scan" == policy.CONTEXT
    assert body["head_sha"] == sha
    assert body["status"] == "completed"
    assert body["conclusion"] == state
    assert body["external_id"] == "acme:acme/api@" + sha
    assert body["details_url"] == "http://fremforge.test/admin/x"
    assert body["output"]["title"] == v.description
    assert "reg/a:1" in body["output"]["summary"]
    assert "details_url" not in checks.check_run(v, sha, None, external_id="x")


def test_state_mapping_covers_every_commit_state():
    # GitHub commit status states and check run conclusions we may send
    assert set(checks.STATES) == {"success", "failure"}
    for ours, (status_state, conclusion) in checks.STATES.items():
        assert status_state in {"error", "failure", "pending", "success"}
        assert conclusion in {"success", "failure", "neutral", "cancelled", "skipped", "timed_out", "action_required"}
        assert status_state == conclusion == ours


def test_summary_has_counts_fixable_and_advisory_links():
    top = [
        finding("critical", "FREMFORGE-UNSIGNED-IMAGE", "image-signature", fixed=None, synthetic=True),
        finding("critical", "CVE-2019-18224", "libidn2-0", fixed="2.0.5-1+deb10u1", vendor_ids=["DSA-4613-1"]),
        finding("high", "GHSA-5crp-9r3c-p9vr", "Newtonsoft.Json", fixed="13.0.1"),
        finding("medium", "RUSTSEC-2021-0078", "hyper", fixed=None),
        finding("low", "DSA-4613-1", "libidn2-0", fixed=None),
        finding("low", "CVE-2099-0006", "sixth", fixed=None),  # only the top five are listed
    ]
    imgs = [
        ImageResult("ghcr.io/acme/api:1", "failure", counts(critical=2, high=1, medium=1, low=2), 2, 1, top),
        ImageResult("ghcr.io/acme/worker:1", "success", counts(low=7), 5, 2, []),
    ]
    v = policy.commit_verdict("block_pull", imgs)
    assert v is not None
    text = checks.summary(v)
    assert v.description in text and "`block_pull`" in text
    assert "`ghcr.io/acme/api:1`" in text and "`ghcr.io/acme/worker:1`" in text
    assert "| Critical | High | Medium | Low | Unknown | Fixable |" in text
    assert "| 2 | 1 | 1 | 2 | 0 | 2 |" in text
    assert "| 0 | 0 | 0 | 7 | 0 | 5 |" in text
    assert "[CVE-2019-18224](https://www.cve.org/CVERecord?id=CVE-2019-18224)" in text
    assert "[GHSA-5crp-9r3c-p9vr](https://github.com/advisories/GHSA-5crp-9r3c-p9vr)" in text
    assert "[RUSTSEC-2021-0078](https://osv.dev/vulnerability/RUSTSEC-2021-0078)" in text
    assert "[DSA-4613-1](https://security-tracker.debian.org/tracker/DSA-4613-1)" in text
    assert "→ 2.0.5-1+deb10u1" in text
    # the synthetic finding is listed, but has no advisory page to link to
    assert "FREMFORGE-UNSIGNED-IMAGE" in text and "[FREMFORGE-UNSIGNED-IMAGE](" not in text
    assert "CVE-2099-0006" not in text
    assert text.index("ghcr.io/acme/api:1") < text.index("ghcr.io/acme/worker:1")


def test_summary_links_a_ghsa_found_in_references():
    top = [
        finding(
            "high",
            "CVE-2022-1234",
            "lodash",
            references=["https://github.com/advisories/GHSA-jf85-cpcp-j695", "https://nvd.nist.gov/x"],
        )
    ]
    v = policy.commit_verdict("block_pull", [ImageResult("reg/a", "failure", counts(high=1), 1, 1, top)])
    assert v is not None
    assert "[CVE-2022-1234](https://www.cve.org/CVERecord?id=CVE-2022-1234)" in checks.summary(v)


def test_an_images_section_counts_the_findings_it_does_not_list():
    """HEAD listed five findings of twelve and said nothing of the other seven."""
    top = [finding("high", f"CVE-2024-{i:04d}") for i in range(12)]
    many = ImageResult("ghcr.io/acme/many:1", "failure", counts(high=12), 12, 1, top)
    few = ImageResult("ghcr.io/acme/few:1", "failure", counts(high=3), 3, 2, top[:3])
    none = ImageResult("ghcr.io/acme/none:1", "success", counts(), 0, 3, [])
    v = policy.commit_verdict("block_pull", [many, few, none])
    assert v is not None
    sections = checks.summary(v).split("### ")
    assert "- … and 7 more findings (the details page lists them all)" in next(x for x in sections if "many" in x)
    assert "more findings" not in next(x for x in sections if "few" in x)
    assert "more findings" not in next(x for x in sections if "none" in x)


def test_a_failing_image_is_shown_before_any_passing_one_and_never_cut_for_one():
    """51 images of one commit, the failing one last by its ref: the summary's limit cut it (HEAD), leaving what blocks
    unseen while passing images were shown. Failing images come first now, and what is cut is counted."""
    noise = [finding("low", f"CVE-2024-{i:05d}", "p" * 400 + str(i), title="t" * 900) for i in range(5)]
    imgs = [ImageResult(f"ghcr.io/acme/a{i:02d}:1", "success", counts(low=20), 0, i, noise) for i in range(50)]
    imgs.append(ImageResult("ghcr.io/acme/zz-failing:1", "failure", counts(critical=1), 1, 99, [finding("critical")]))
    v = policy.commit_verdict("block_pull", imgs)
    assert v is not None
    text = checks.summary(v)
    assert len(text.encode()) <= checks.SUMMARY_LIMIT
    assert text.index("zz-failing") < text.index("ghcr.io/acme/a00:1")
    assert re.search(r"… and \d+ more images: see the details page for every image$", text)


def test_the_summary_cuts_only_what_does_not_fit_and_says_it_in_a_sentence():
    """Images that all fit are all shown, to the last character (HEAD kept the last line's room even then); one left
    out is "1 more image"; under warn those that would block come before the clean ones and are counted apart."""

    def image(i: int, status: str = "success", high: int = 0) -> ImageResult:
        top = [finding("high", f"CVE-2024-{i:05d}", "p" * 300, title="t" * 300)] if high else []
        tally = policy.Tally(blocking={"high": high}) if high else policy.Tally()
        return ImageResult(f"ghcr.io/acme/i{i:04d}:1", status, counts(high=high), 0, i, top, tally)

    one = policy.commit_verdict("block_pull", [image(0)])
    assert one is not None
    size = len(checks.summary(one).split("\n", 2)[2].encode()) + 1  # one image's section and its line break, bytes
    header = len(checks.summary(one).encode()) - size + 1
    fits = (checks.SUMMARY_LIMIT - header) // size
    v = policy.commit_verdict("block_pull", [image(i) for i in range(fits)])
    assert v is not None
    text = checks.summary(v)
    size_of = len(text.encode())  # GitHub counts bytes ("exceeds a maximum bytesize of 65535"): HEAD counted characters
    assert text.count("### ") == fits and "more image" not in text and checks.SUMMARY_LIMIT - 200 < size_of <= 65_535
    v = policy.commit_verdict("block_pull", [image(i) for i in range(fits + 1)])
    assert v is not None
    assert checks.summary(v).endswith("… and 2 more images: see the details page for every image")
    clean = [image(i) for i in range(fits)]
    would = image(9000, high=1)  # warn: its status is success, but it would block
    v = policy.commit_verdict("warn", [*clean, would, image(9001, high=1)])
    assert v is not None
    text = checks.summary(v)
    assert text.index("i9000") < text.index("i0000")
    assert re.search(r"… and \d+ more images: see the details page", text)
    v = policy.commit_verdict("warn", [*[image(i, high=1) for i in range(200)]])
    assert v is not None
    assert re.search(r"… and \d+ more images \(\d+ would block\): see the details page", checks.summary(v))


@pytest.mark.parametrize("n_images, ref_len", [(5_000, 40), (2_000, 1024)])
def test_summary_fits_65535_chars_with_thousands_of_images(n_images, ref_len):
    top = [finding(s, f"CVE-2024-{i:05d}", f"pkg-{i}", vendor_ids=["DSA-1234-1"]) for i, s in enumerate(SEVERITIES)]
    imgs = [
        ImageResult(
            f"reg/{i:05d}/" + "x" * ref_len,
            "failure" if i % 7 == 0 else "success",
            dict.fromkeys(SEVERITIES, 10**6),
            10**6,
            i,
            top,
        )
        for i in range(n_images)
    ]
    v = policy.commit_verdict("block_pull", imgs)
    assert v is not None and v.state == "failure"
    text = checks.summary(v)
    assert len(text.encode()) <= checks.SUMMARY_LIMIT == 65_535
    failing = sum(1 for i in imgs if i.status == "failure")
    shown = text.count("### ❌")
    left = f"… and {n_images - text.count('### ')} more images ({failing - shown} failing)"
    assert text.endswith(f"{left}: see the details page for every image")
    body = checks.check_run(v, "0" * 40, None, external_id="x")
    assert len(body["output"]["summary"].encode()) <= 65_535
    assert len(body["output"]["title"]) <= 140
    assert re.search(r"\[CVE-2024-00000\]\(https://www\.cve\.org/", text)


def test_summary_not_truncated_when_it_fits():
    v = verdict("failure")
    text = checks.summary(v)
    assert "truncated" not in text and len(text) < 1000


def test_a_catastrophic_subject_pattern_cannot_stall_the_worker():
    import time

    from app.policy import AllowedIssuer

    issuer = AllowedIssuer("https://token.actions.githubusercontent.com", r"^(a|a?)+$")
    started = time.monotonic()
    assert issuer.admits("https://token.actions.githubusercontent.com", "a" * 5000 + "!") is False
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    "blocking,block_on,signing,text",
    [
        ({"critical": 2, "high": 1}, "all", 1, "2 critical, 1 high"),
        ({"critical": 2, "high": 1}, "new", 1, "1 new critical, 1 new high, 1 signing"),
        ({"critical": 1}, "new", 1, "1 signing"),
        ({"high": 3}, "new", 0, "3 new high"),
    ],
)
def test_blocking_counts_name_the_signing_findings_apart_from_the_new_ones(blocking, block_on, signing, text):
    """Under block_on new the synthetic signing findings block whether or not the base had them: not "new"."""
    assert policy.blocking_counts(blocking, block_on, signing) == text
