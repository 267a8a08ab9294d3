"""block_on new (spec section 3, issue 14) as users drive it: a pull_request webhook names a head commit's base, CI
uploads real Trivy reports of the base and the head, and only what the head introduces blocks.

The expectations are computed here straight from the report JSON (sets of (VulnerabilityID, PkgName) with their
severities and fixed versions), never by calling app code; outcomes are read from the upload answers and the rows.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from app import db
from app.models import Finding, ScanRun
from tests.conftest import INSTALLATION, org_with_installation
from tests.factories import FIXTURES, finding, post, seed, set_policy
from tests.test_webhooks import deliver, example

REPO = "acme/api"
IMAGE = "ghcr.io/acme/api"
HEAD_REF = f"{IMAGE}:pr-7@sha256:{'5e' * 32}"  # the image name is the same without the tag and the digest
BASE_REF = f"{IMAGE}:main"
HEAD_SHA = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"
BASE_SHA = "f95f852bd8fca8fcc58a9a2d6c842781e32a215e"
OTHER_SHA = "6dcb09b5b57875f334f61aebed695e2e4193db5e"  # an older commit on main
FEATURE_SHA = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00"
MAIN = "refs/heads/main"
ORDER = ("critical", "high", "medium", "low", "unknown")
RANK = {"critical": 4, "high": 3, "medium": 2, "low": 1}  # unknown meets no threshold
UNSIGNED = "FREMFORGE-UNSIGNED-IMAGE"

Key = tuple[str, str, str, str]  # (advisory id, package, installed version, target): one stored finding


# ------------------------------------------------------------------ the independent reading of a report


@functools.cache
def report(name: str) -> dict[Key, tuple[str, bool]]:
    """A report's unique findings -> (severity, fixable), the way the spec maps a Trivy report: the target is the
    PkgPath, else the Result's Target; copies keep the most severe severity and a non-empty fixed version."""
    doc = json.loads((FIXTURES / name).read_text())
    found: dict[Key, tuple[str, bool]] = {}
    for result in doc if isinstance(doc, list) else doc.get("Results") or []:
        for v in result.get("Vulnerabilities") or []:
            key = (v["VulnerabilityID"], v["PkgName"], v.get("InstalledVersion") or "", v.get("PkgPath") or "")
            key = (*key[:3], key[3] or result.get("Target") or "")
            severity, fixable = (v.get("Severity") or "unknown").lower(), bool(v.get("FixedVersion"))
            if key in found:
                old, old_fixable = found[key]
                severity = old if RANK.get(old, 0) >= RANK.get(severity, 0) else severity
                fixable = fixable or old_fixable
            found[key] = (severity, fixable)
    return found


def pairs(name: str) -> set[tuple[str, str]]:
    """What a finding is the same as in a baseline by: (advisory id, package name)."""
    return {k[:2] for k in report(name)}


@dataclass(frozen=True)
class Expected:
    rows: dict[Key, tuple[bool, bool | None]]  # each finding's (blocking, new)
    blocking: Counter[str]  # blocking findings by severity
    totals: Counter[str]  # every finding by severity

    @property
    def blocks(self) -> int:
        return sum(self.blocking.values())

    @property
    def status(self) -> str:
        return "failure" if self.blocks else "success"

    def description(self, new: str) -> str:
        """The commit status of a one-image commit: what blocks when anything does, else every count."""
        if self.blocks:
            named = ", ".join(f"{self.blocking[s]} {new}{s}" for s in ORDER if self.blocking[s])
            return f"1 image · {named} · blocking"
        return "1 image · " + (", ".join(f"{self.totals[s]} {s}" for s in ORDER if self.totals[s]) or "no findings")


def expect(head: str, base: str | None, threshold: str = "high", ignore_unfixed: bool = False) -> Expected:
    """The blocking rule applied by hand: at/above the threshold, fixed or unfixed not ignored, new (or no base)."""
    known = pairs(base) if base is not None else None
    rows: dict[Key, tuple[bool, bool | None]] = {}
    blocking: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    for key, (severity, fixable) in report(head).items():
        new = None if known is None else key[:2] not in known
        blocks = RANK.get(severity, 0) >= RANK[threshold] and (fixable or not ignore_unfixed) and new is not False
        rows[key] = (blocks, new)
        totals[severity] += 1
        blocking[severity] += blocks
    return Expected(rows, blocking, totals)


# ------------------------------------------------------------------ driving the product


@pytest.fixture
def app(webhook_app):
    return webhook_app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def token(app) -> str:
    """acme, installed, blocking pull requests with block_on new (the rest of the gate at its defaults)."""
    secret = org_with_installation(app)
    set_policy(app, "acme", block_on="new")
    return secret


def open_pr(client, head: str = HEAD_SHA, base_branch: str = "main", base_sha: str = BASE_SHA, number: int = 7):
    """Deliver GitHub's pull_request.opened example, signed, as acme's PR `number` from `head` onto its base."""
    doc = json.loads(example("pull_request.opened"))
    doc["installation"]["id"] = INSTALLATION
    doc["repository"].update(full_name="Acme/Api", name="Api")  # GitHub keeps the case; names are case-insensitive
    doc["repository"]["owner"]["login"] = "Acme"
    pr = doc["pull_request"]
    pr["number"] = number
    pr["head"]["sha"] = head
    pr["base"]["ref"], pr["base"]["sha"] = base_branch, base_sha
    r = deliver(client, event="pull_request", body=json.dumps(doc).encode())
    assert r.status_code == 200 and r.json == {"status": "ok"}, r.json


def upload(
    client, token: str, name: str, sha: str, image_ref: str = HEAD_REF, ref: str | None = None, repo: str = REPO, **q
) -> dict[str, Any]:
    """A raw Trivy report as CI posts it, with the scan's identity as query parameters."""
    query = {"image_ref": image_ref, "commit_sha": sha, "repo_full_name": repo, **({"ref": ref} if ref else {}), **q}
    r = post(client, token, raw=(FIXTURES / name).read_bytes(), query=query)
    assert r.status_code == 202, r.json
    return r.json


def upload_base(client, token: str, name: str, **kw: Any) -> int:
    """A scan of the base branch as a push to main uploads it."""
    sha, image_ref = kw.pop("sha", BASE_SHA), kw.pop("image_ref", BASE_REF)
    return upload(client, token, name, sha, image_ref, MAIN, **kw)["scan_run_id"]


@dataclass(frozen=True)
class Stored:
    status: str
    blocking: int
    baseline_scan_id: int | None
    block_on: str
    pr_number: int | None
    rows: dict[Key, tuple[bool | None, bool | None]]  # each finding's (blocking, new) as stored
    synthetic: list[tuple[str, bool | None, bool | None]]  # (id, blocking, new) of the synthetic findings


def stored(app, scan_id: int) -> Stored:
    with app.app_context():
        session = db.session()
        scan = session.get(ScanRun, scan_id)
        assert scan is not None
        found = session.scalars(sa.select(Finding).where(Finding.scan_run_id == scan_id).order_by(Finding.id)).all()
        rows = {
            (f.cve_id, f.package, f.installed_version or "", f.target or ""): (f.blocking, f.new)
            for f in found
            if not f.synthetic
        }
        assert len(rows) == len([f for f in found if not f.synthetic]), "one row per unique finding"
        synthetic = [(f.cve_id, f.blocking, f.new) for f in found if f.synthetic]
        return Stored(scan.status, scan.blocking, scan.baseline_scan_id, scan.block_on, scan.pr_number, rows, synthetic)


def assert_judged(answer: dict[str, Any], got: Stored, want: Expected, baseline: int | None, new: str) -> None:
    assert got.rows == want.rows
    assert (answer["status"], got.status, got.blocking) == (want.status, want.status, want.blocks)
    assert got.baseline_scan_id == baseline
    assert answer["commit_status"]["state"] == want.status
    assert answer["commit_status"]["description"] == want.description(new)


# ------------------------------------------------------------------ 1. real report pairs, base and head

PAIRS = [  # (base, head): the same image name in one repo, both of one distro
    ("trivy/alpine-310.json", "trivy/alpine-39.json"),  # alpine 3.10.2 -> 3.9.4: musl's critical comes in
    ("trivy/alpine-39.json", "trivy/alpine-310.json"),  # 3.9.4 -> 3.10.2: nothing new
    ("trivy/debian-stretch.json", "trivy/debian-buster.json"),  # debian 9.9 -> 10.1: bash's stays, libidn2 comes
    ("trivy/debian-buster.json", "trivy/debian-stretch.json"),  # 10.1 -> 9.9: the e2fsprogs family comes in
    ("trivy/debian-stretch.json", "trivy/distroless-base.json"),  # debian 9.9 -> distroless on 9.9: unfixed ones
    ("trivy-defectdojo/all_statuses.json", "trivy-defectdojo/issue_9333.json"),  # debian 10.13, a week later
]
GATES = [("high", False), ("critical", False), ("medium", False), ("medium", True), ("low", False), ("low", True)]


def test_the_chosen_pairs_exercise_the_rule():
    """Guard on the data, not the app: across the pairs, something new blocks, something at or above the threshold
    does not because the base has it, and ignore_unfixed changes some outcome."""
    existing_held_back = new_blocking = unfixed_matters = False
    for base, head in PAIRS:
        for threshold, ignore in GATES:
            want, against_all = expect(head, base, threshold, ignore), expect(head, None, threshold, ignore)
            new_blocking |= any(b and n for b, n in want.rows.values())
            existing_held_back |= against_all.blocks > want.blocks
            unfixed_matters |= want.blocks != expect(head, base, threshold, not ignore).blocks
    assert new_blocking and existing_held_back and unfixed_matters


@pytest.mark.parametrize(("threshold", "ignore_unfixed"), GATES, ids=[f"{t}-unfixed-{i}" for t, i in GATES])
@pytest.mark.parametrize(("base", "head"), PAIRS, ids=[f"{Path(b).stem}->{Path(h).stem}" for b, h in PAIRS])
def test_only_what_the_head_adds_to_its_base_blocks(app, client, token, base, head, threshold, ignore_unfixed):
    set_policy(app, "acme", block_threshold=threshold, ignore_unfixed=ignore_unfixed)
    base_scan = upload_base(client, token, base)
    open_pr(client)
    answer = upload(client, token, head, HEAD_SHA)
    got = stored(app, answer["scan_run_id"])
    assert_judged(answer, got, expect(head, base, threshold, ignore_unfixed), base_scan, "new ")
    assert (got.block_on, got.pr_number, got.synthetic) == ("new", 7, [])


# ------------------------------------------------------------------ 2. the same report on base and head

SAME = ["trivy/alpine-39.json", "trivy/debian-buster.json", "trivy-defectdojo/issue_9333.json"]


@pytest.mark.parametrize("name", SAME, ids=[Path(n).stem for n in SAME])
def test_the_same_report_on_base_and_head_blocks_nothing_under_new_and_as_before_under_all(app, client, token, name):
    set_policy(app, "acme", block_threshold="low")  # every one of these reports has something at or above it
    base_scan = upload_base(client, token, name)
    open_pr(client)

    under_new = upload(client, token, name, HEAD_SHA)
    want = expect(name, name, "low")
    assert want.blocks == 0 and want.rows and all(new is False for _, new in want.rows.values())
    assert_judged(under_new, stored(app, under_new["scan_run_id"]), want, base_scan, "new ")

    set_policy(app, "acme", block_on="all")
    under_all = upload(client, token, name, HEAD_SHA)
    got, want = stored(app, under_all["scan_run_id"]), expect(name, None, "low")
    assert want.blocks == len(want.rows) > 0  # everything counts, as before block_on existed
    assert_judged(under_all, got, want, None, "")
    assert got.block_on == "all"


# ------------------------------------------------------------------ 3. no pull request known: every finding counts


@pytest.mark.parametrize("prs", ["no pull_request event", "a PR of another head"])
def test_without_a_pull_request_every_finding_counts(app, client, token, prs):
    name = "trivy/alpine-39.json"
    upload_base(client, token, name)  # were this compared with, nothing would block
    if prs == "a PR of another head":
        open_pr(client, head=FEATURE_SHA, number=8)
    answer = upload(client, token, name, HEAD_SHA)
    got, want = stored(app, answer["scan_run_id"]), expect(name, None)
    assert want.blocks == 2  # musl and musl-utils, critical
    assert got.rows == want.rows and all(new is None for _, new in got.rows.values())
    assert (answer["status"], got.blocking, got.baseline_scan_id) == ("failure", 2, None)
    assert re.fullmatch(r"1 image · 2 (new )?critical · blocking", answer["commit_status"]["description"])


# ------------------------------------------------------------------ 4. which scan is the baseline


def test_the_baseline_is_found_by_the_base_branch(app, client, token):
    on_main = upload_base(client, token, "trivy/alpine-39.json", sha=OTHER_SHA)  # main, not at the PR's base sha
    upload(client, token, "trivy/alpine-310.json", FEATURE_SHA, f"{IMAGE}:feature", "refs/heads/feature")
    open_pr(client)
    answer = upload(client, token, "trivy/alpine-39.json", HEAD_SHA)
    want = expect("trivy/alpine-39.json", "trivy/alpine-39.json")
    assert_judged(answer, stored(app, answer["scan_run_id"]), want, on_main, "new ")
    assert answer["status"] == "success"


def test_else_by_the_base_commit(app, client, token):
    # Uploaded without a ref (and its SHA in capitals): only its commit makes it the base.
    at_base = upload(client, token, "trivy/alpine-39.json", BASE_SHA.upper(), BASE_REF)["scan_run_id"]
    upload(client, token, "trivy/alpine-310.json", OTHER_SHA, BASE_REF)  # newer, but at another commit
    open_pr(client)
    answer = upload(client, token, "trivy/alpine-39.json", HEAD_SHA)
    want = expect("trivy/alpine-39.json", "trivy/alpine-39.json")
    assert_judged(answer, stored(app, answer["scan_run_id"]), want, at_base, "new ")


def test_the_newest_scan_of_the_base_branch_wins_over_the_base_commit(app, client, token):
    upload_base(client, token, "trivy/alpine-310.json", sha=OTHER_SHA)  # an older build of main
    newest_on_main = upload_base(client, token, "trivy/alpine-39.json", sha="1" * 40)
    upload(client, token, "trivy/alpine-310.json", BASE_SHA, BASE_REF)  # at the base commit, no ref, uploaded last
    open_pr(client)
    answer = upload(client, token, "trivy/alpine-39.json", HEAD_SHA)
    want = expect("trivy/alpine-39.json", "trivy/alpine-39.json")
    assert want.blocks == 0 and expect("trivy/alpine-39.json", "trivy/alpine-310.json").blocks == 2  # they differ
    assert_judged(answer, stored(app, answer["scan_run_id"]), want, newest_on_main, "new ")


# ------------------------------------------------------------------ 5. fails closed


def test_a_pull_request_whose_base_was_never_scanned_blocks(app, client, token):
    name = "trivy/alpine-39.json"
    upload(client, token, name, FEATURE_SHA, f"{IMAGE}:feature", "refs/heads/feature")  # another branch
    upload(client, token, name, OTHER_SHA, BASE_REF)  # another commit, no ref
    open_pr(client)
    answer = upload(client, token, name, HEAD_SHA)
    got, want = stored(app, answer["scan_run_id"]), expect(name, None)
    assert got.rows == want.rows and (answer["status"], got.blocking, got.baseline_scan_id) == ("failure", 2, None)
    assert re.fullmatch(r"1 image · 2 (new )?critical · blocking", answer["commit_status"]["description"])


@pytest.mark.parametrize(
    ("image_ref", "repo"),
    [
        ("ghcr.io/acme/worker:main", REPO),
        ("ghcr.io/acme/api-base:main", REPO),
        ("ghcr.io/acme/api/debug:main", REPO),
        ("docker.io/acme/api:main", REPO),
        (BASE_REF, "acme/other"),
    ],
    ids=["other-image", "name-prefix", "nested-name", "other-registry", "other-repo"],
)
def test_a_base_scan_of_another_image_or_repo_is_no_baseline(app, client, token, image_ref, repo):
    name = "trivy/alpine-39.json"
    upload_base(client, token, name, image_ref=image_ref, repo=repo)  # on main and at the base commit
    open_pr(client)
    answer = upload(client, token, name, HEAD_SHA)
    got = stored(app, answer["scan_run_id"])
    assert got.rows == expect(name, None).rows
    assert (answer["status"], got.blocking, got.baseline_scan_id) == ("failure", 2, None)


def test_the_same_advisory_under_another_package_is_new(app, client, token):
    base, head = "trivy/centos-6.json", "trivy/centos-7.json"  # CVE-2019-1559: openssl on 6, openssl-libs on 7
    assert ("CVE-2019-1559", "openssl") in pairs(base) and ("CVE-2019-1559", "openssl-libs") in pairs(head)
    set_policy(app, "acme", block_threshold="medium")
    base_scan = upload_base(client, token, base)
    open_pr(client)
    answer = upload(client, token, head, HEAD_SHA)
    got, want = stored(app, answer["scan_run_id"]), expect(head, base, "medium")
    assert want.blocks == 1
    assert_judged(answer, got, want, base_scan, "new ")
    (row,) = [v for k, v in got.rows.items() if k[:2] == ("CVE-2019-1559", "openssl-libs")]
    assert row == (True, True)


def test_an_advisory_moved_to_another_package_blocks_and_a_new_installed_version_does_not(app, client, token):
    base = [finding("CVE-2023-1234", "high", "openssl", "3.0.1"), finding("GHSA-aaaa-bbbb-cccc", "high", "requests")]
    head = [
        finding("CVE-2023-1234", "high", "libssl3", "3.0.1"),  # the same advisory, another package: new
        finding("CVE-2023-1234", "high", "openssl", "3.0.2"),  # the same pair, another version: not new
        finding("GHSA-aaaa-bbbb-cccc", "high", "urllib3"),  # new
    ]
    base_scan = post(client, token, seed(base, image_ref=BASE_REF, sha=BASE_SHA, ref=MAIN)).json["scan_run_id"]
    open_pr(client)
    answer = post(client, token, seed(head, image_ref=HEAD_REF, sha=HEAD_SHA)).json
    got = stored(app, answer["scan_run_id"])
    assert {k[:3]: v for k, v in got.rows.items()} == {
        ("CVE-2023-1234", "libssl3", "3.0.1"): (True, True),
        ("CVE-2023-1234", "openssl", "3.0.2"): (False, False),
        ("GHSA-aaaa-bbbb-cccc", "urllib3", "3.0.1"): (True, True),
    }
    assert (answer["status"], got.blocking, got.baseline_scan_id) == ("failure", 2, base_scan)
    assert answer["commit_status"]["description"] == "1 image · 2 new high · blocking"


# ------------------------------------------------------------------ 6. signing


@pytest.mark.parametrize("signature", [{"signature_status": "unsigned"}, {}], ids=["unsigned", "unknown"])
def test_the_signing_finding_blocks_under_new_even_when_the_base_had_it(app, client, token, signature):
    set_policy(app, "acme", require_signed=True)
    name = "trivy/alpine-310.json"  # mediums only: below the threshold, so only the signing finding can block
    base_scan = upload_base(client, token, name, **signature)
    assert stored(app, base_scan).synthetic == [(UNSIGNED, True, None)]
    open_pr(client)
    answer = upload(client, token, name, HEAD_SHA, **signature)
    got = stored(app, answer["scan_run_id"])
    assert got.rows == expect(name, name).rows and all(v == (False, False) for v in got.rows.values())
    assert got.synthetic == [(UNSIGNED, True, None)]
    assert (answer["status"], got.blocking, got.baseline_scan_id) == ("failure", 1, base_scan)
    # the base had it too: it blocks, but is not called new
    assert answer["commit_status"]["description"] == "1 image · 1 signing · blocking"
