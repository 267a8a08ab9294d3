"""Every real Trivy report in ../shared/fixtures, uploaded four ways, against a count made here from the JSON.

Modes: (a) the raw report with query parameters, (b) the same gzipped, (c) through the README's documented jq
(contrib/seed.jq; it must fail exactly where the fixture INDEX.md files say the naive filter fails) and (d)
through contrib/seed-robust.jq. The expectations are computed in this file straight from each report and
cross-checked against the INDEX.md tables; no app code is used to compute them.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, skip_or_fail
from tests.factories import FIXTURES, SHA, TRIVY_REPORTS, census, make_org, make_token, post, set_policy

SEVERITIES = ("critical", "high", "medium", "low", "unknown")
SEED_JQ = ROOT / "contrib" / "seed.jq"
REF = "refs/heads/main"  # the step's --arg ref "$GITHUB_REF"
ROBUST_JQ = ROOT / "contrib" / "seed-robust.jq"
MODES = ("raw", "gzip", "seed_jq", "robust_jq")
MALFORMED = "legacy_trivy_mix.json"


# ------------------------------------------------------------------ the independent counter


@dataclass
class Expected:
    """What a report holds, counted here: raw totals (as INDEX.md counts them) and the unique findings."""

    total: int = 0
    raw_counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SEVERITIES, 0))
    raw_fixable: int = 0
    missing_severity: int = 0
    results: int = 0
    results_lacking_vulns: int = 0
    nonempty_pkgpath: int = 0
    # (VulnerabilityID, PkgName, InstalledVersion, target) -> the first vulnerability object with that key
    unique: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        c = dict.fromkeys(SEVERITIES, 0)
        for v in self.unique.values():
            c[_severity(v)] += 1
        return c

    @property
    def fixable(self) -> int:
        return sum(1 for v in self.unique.values() if v.get("FixedVersion"))

    @property
    def duplicates(self) -> int:
        return self.total - len(self.unique)


def _severity(v: dict[str, Any]) -> str:
    return (v.get("Severity") or "unknown").lower()


def count_report(doc: Any) -> Expected:
    exp = Expected()
    results = doc if isinstance(doc, list) else (doc.get("Results") or [])
    for r in results:
        exp.results += 1
        if "Vulnerabilities" not in r:
            exp.results_lacking_vulns += 1
        for v in r.get("Vulnerabilities") or []:
            exp.total += 1
            exp.raw_counts[_severity(v)] += 1
            if not v.get("Severity"):
                exp.missing_severity += 1
            if v.get("FixedVersion"):
                exp.raw_fixable += 1
            if v.get("PkgPath"):
                exp.nonempty_pkgpath += 1
            target = v.get("PkgPath") or r.get("Target") or None
            key = (v.get("VulnerabilityID"), v.get("PkgName"), v.get("InstalledVersion") or "", target)
            exp.unique.setdefault(key, {**v, "_target": target})
    return exp


@functools.cache
def load(path: Path) -> Any:
    return json.loads(path.read_text())


# ------------------------------------------------------------------ the INDEX.md tables


@functools.cache
def index_rows() -> dict[str, dict[str, str]]:
    """file name -> its INDEX.md row (column header -> cell), for both fixture folders."""
    rows: dict[str, dict[str, str]] = {}
    for folder in ("trivy", "trivy-defectdojo"):
        header: list[str] | None = None
        for line in (FIXTURES / folder / "INDEX.md").read_text().splitlines():
            if not line.startswith("|"):
                header = None
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
            elif not set(line) <= set("|-: "):
                rows[f"{folder}/{cells[0]}"] = dict(zip(header, cells, strict=True))
    return rows


def index_row(path: Path) -> dict[str, str]:
    return index_rows()[f"{path.parent.name}/{path.name}"]


def naive_jq_fails(path: Path) -> bool:
    return index_row(path)["naive jq"].startswith("**FAILS**")


def report_id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def repo_for(path: Path, mode: str) -> str:
    """A repository per report and mode, so the modes' scans of one report never share a commit."""
    return "acme/" + re.sub(r"[^A-Za-z0-9._-]", "-", f"{path.stem}-{mode}")


def artifact_name(doc: Any) -> str:
    return (doc.get("ArtifactName") or "") if isinstance(doc, dict) else ""


def test_fixture_set_is_the_one_indexed():
    assert len(TRIVY_REPORTS) == 36
    assert {f"{p.parent.name}/{p.name}" for p in TRIVY_REPORTS} == set(index_rows())


@pytest.mark.parametrize(
    "folder, total, counts, fixable, lacking",
    [
        ("trivy", 67, {"critical": 8, "high": 9, "medium": 32, "low": 14, "unknown": 4}, 55, 7),
        ("trivy-defectdojo", 129, {"critical": 1, "high": 25, "medium": 14, "low": 87, "unknown": 2}, 15, 2),
    ],
)
def test_counter_matches_index_totals(folder, total, counts, fixable, lacking):
    """The counter used below agrees with the INDEX.md totals (and with every row of its table)."""
    paths = [p for p in TRIVY_REPORTS if p.parent.name == folder]
    exps = [count_report(load(p)) for p in paths]
    assert sum(e.total for e in exps) == total
    assert {s: sum(e.raw_counts[s] for e in exps) for s in SEVERITIES} == counts
    assert sum(e.raw_fixable for e in exps) == fixable
    assert sum(e.results_lacking_vulns for e in exps) == lacking
    for p, e in zip(paths, exps, strict=True):
        row = index_row(p)
        assert int(row["vulns"]) == e.total, p.name
        # The rows count only a present Severity (legacy_trivy_mix: 7 vulns, 6 in the severity columns);
        # the totals line counts a missing one as UNKNOWN, as the app does.
        row_counts = {s: int(row[s.upper()]) for s in SEVERITIES}
        row_counts["unknown"] += e.missing_severity
        assert row_counts == e.raw_counts, p.name
        assert int(row["with FixedVersion"]) == e.raw_fixable, p.name
        assert int(row["non-empty PkgPath"]) == e.nonempty_pkgpath, p.name
        assert int(row["Results"]) == e.results, p.name
        lacking_cell = row["Results lacking `Vulnerabilities` key"]
        assert int(lacking_cell) == e.results_lacking_vulns, p.name


def test_index_lists_the_naive_jq_failures():
    failing = sorted(report_id(p) for p in TRIVY_REPORTS if naive_jq_fails(p))
    assert failing == sorted(
        [
            "trivy/alpine-39-skip",
            "trivy/secrets",
            "trivy/sl-micro-rancher5.4",
            "trivy/spring4shell-jre11",
            "trivy/spring4shell-jre8",
            "trivy/test-repo",
            "trivy-defectdojo/legacy_many_vulns",
            "trivy-defectdojo/legacy_trivy_mix",
            "trivy-defectdojo/scheme_2_many_vulns",
            "trivy-defectdojo/scheme_2_no_vuln",
        ]
    )


# ------------------------------------------------------------------ jq


def require_jq() -> str:
    exe = shutil.which("jq")
    if exe is None:
        skip_or_fail("jq is not on PATH; the documented jq pipeline (contrib/seed.jq) cannot be exercised")
    assert exe is not None
    return exe


@functools.cache
def run_jq(filter_file: Path, report: Path, image: str, repo: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            require_jq(),
            "--arg",
            "image",
            image,
            "--arg",
            "sha",
            SHA,
            "--arg",
            "repo",
            repo,
            "--arg",
            "ref",
            REF,
            "-f",
            str(filter_file),
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# ------------------------------------------------------------------ the uploads


@pytest.fixture
def token(app):
    make_org(app)
    return make_token(app)


def upload(client, token, path: Path, mode: str, *, image_ref: str | None = None) -> tuple[Any, str | None]:
    """POST the report in one mode; returns (response, image_ref it is about), or (jq process, None) when jq fails."""
    doc = load(path)
    repo = repo_for(path, mode)
    if mode in ("raw", "gzip"):
        query = {"commit_sha": SHA, "repo_full_name": repo}
        artifact = artifact_name(doc)
        if image_ref is None and not artifact:
            image_ref = f"registry.test/acme/{path.stem}:1"
        if image_ref is not None:
            query["image_ref"] = image_ref
        return post(client, token, raw=path.read_bytes(), gz=mode == "gzip", query=query), image_ref or artifact
    image = image_ref or f"registry.test/acme/{path.stem}:{mode}"
    proc = run_jq(SEED_JQ if mode == "seed_jq" else ROBUST_JQ, path, image, repo)
    if proc.returncode != 0:
        return proc, None
    return post(client, token, json.loads(proc.stdout)), image


def stored_key(f: dict[str, Any]) -> tuple[Any, ...]:
    return (f["cve_id"], f["package_name"], f["installed_version"], f["target"])


@pytest.mark.parametrize("path", TRIVY_REPORTS, ids=report_id)
def test_report_upload(app, client, token, path, subtests):
    """One database per report (setup and teardown dominate the run time); each mode is a subtest."""
    for mode in MODES:
        with subtests.test(mode=mode):
            check_mode(app, client, token, path, mode)


def check_mode(app, client, token, path: Path, mode: str) -> None:
    if mode in ("seed_jq", "robust_jq"):
        require_jq()
    doc = load(path)
    exp = count_report(doc)
    before = census(app)
    r, image_ref = upload(client, token, path, mode)

    if mode == "seed_jq":
        jq_failed = isinstance(r, subprocess.CompletedProcess)
        assert jq_failed == naive_jq_fails(path), (
            f"contrib/seed.jq {'failed' if jq_failed else 'succeeded'} on {path.name}; INDEX.md says the naive "
            f"filter {'fails' if naive_jq_fails(path) else 'works'} there" + (f": {r.stderr}" if jq_failed else "")
        )
        if jq_failed:
            assert r.returncode == 5, r.stderr
            assert "Cannot" in r.stderr
            return
    else:
        assert not isinstance(r, subprocess.CompletedProcess), f"jq failed on {path.name}: {r.stderr}"

    if path.name == MALFORMED:
        # One vulnerability has only PkgName: the whole upload is refused, naming the path, and nothing is stored.
        assert r.status_code == 422, r.json
        assert r.json["error"] == "validation_failed"
        paths = [d["path"] for d in r.json["details"]]
        if mode in ("raw", "gzip"):
            assert "[0].Vulnerabilities[0].VulnerabilityID" in paths, r.json
            assert "[0].Vulnerabilities[0].VulnerabilityID" in r.json["message"]
        else:
            assert "findings[0].cve_id" in paths, r.json
            assert all(p.startswith("findings[") for p in paths), r.json
        assert census(app) == before
        return

    assert r.status_code == 202, r.json
    body = r.json
    assert body["accepted"] == len(exp.unique)
    assert body["duplicates"] == exp.duplicates
    assert body["severity_counts"] == exp.counts
    assert body["fixable"] == exp.fixable
    assert body["status"] == "success"  # default policy: warn
    assert body["commit_status"]["state"] == "success"
    assert body["commit_status"]["context"] == "fremforge/image-scan"

    scan = client.get(
        f"/api/v1/orgs/acme/image-scans/{body['scan_run_id']}", headers={"Authorization": f"Bearer {token}"}
    )
    assert scan.status_code == 200, scan.json
    s = scan.json
    assert s["image_ref"] == image_ref
    assert s["commit_sha"] == SHA and s["repo_full_name"] == repo_for(path, mode)
    if mode in ("seed_jq", "robust_jq"):  # the documented step sends the ref (block_on new finds baselines by it)
        assert s["ref"] == REF  # HEAD: contrib's filters left it out
    assert s["severity_counts"] == exp.counts and s["fixable"] == exp.fixable
    stored = {stored_key(f): f for f in s["findings"]}
    assert len(stored) == len(s["findings"]) == len(exp.unique)
    assert set(stored) == set(exp.unique)
    for key, v in exp.unique.items():
        f = stored[key]
        assert f["severity"] == _severity(v), key
        assert f["fixed_version"] == (v.get("FixedVersion") or None), key
        assert f["fixable"] is bool(v.get("FixedVersion")), key
        assert f["synthetic"] is False
        # an empty or missing PkgPath falls back to the Result's Target
        assert f["target"] == (v.get("PkgPath") or v["_target"]), key
        if mode != "seed_jq":  # the documented jq drops the advisory links; the rest keep them
            assert f["primary_url"] == v.get("PrimaryURL"), key
            # at most 64 references are kept (spec section 2): npm.json and legacy_many_vulns have more
            references = v.get("References") or []
            assert f["references"] == references[:64], key
            assert f["truncated"] is (len(references) > 64), key
            assert f["vendor_ids"] == (v.get("VendorIDs") or []), key
            assert f["title"] == v.get("Title"), key
            ids = [a["id"] for a in f["advisories"]]
            assert ids[0] == v["VulnerabilityID"]
            assert set(v.get("VendorIDs") or []) <= set(ids), key
        else:
            assert f["truncated"] is False, key


def test_links_are_kept_somewhere():
    """Guard for the test above: the fixtures do exercise PrimaryURL, References and VendorIDs."""
    vulns = [v for p in TRIVY_REPORTS for v in count_report(load(p)).unique.values()]
    assert sum(1 for v in vulns if v.get("PrimaryURL")) > 50
    assert sum(1 for v in vulns if v.get("References")) > 50
    assert sum(1 for v in vulns if v.get("VendorIDs")) >= 15
    assert sum(1 for v in vulns if v.get("PkgPath")) >= 10
    assert sum(1 for v in vulns if len(v.get("References") or []) > 64) >= 2  # the cut to 64 is exercised


# ------------------------------------------------------------------ edited reports


def edited_report() -> dict[str, Any]:
    """fluentd-gems with an empty PkgPath on the gem, an exact duplicate, and a vuln without Severity."""
    doc = copy.deepcopy(load(FIXTURES / "trivy" / "fluentd-gems.json"))
    os_result, gems = doc["Results"]
    gem = gems["Vulnerabilities"][0]
    gem["PkgPath"] = ""
    gems["Vulnerabilities"].append(copy.deepcopy(gem))  # an exact duplicate: stored once
    no_sev = copy.deepcopy(os_result["Vulnerabilities"][0])
    no_sev["VulnerabilityID"] = "GHSA-xxxx-yyyy-zzzz"
    del no_sev["Severity"]
    os_result["Vulnerabilities"].append(no_sev)
    return doc


@pytest.mark.parametrize("mode", ["raw", "robust_jq"])
def test_empty_pkgpath_falls_back_to_target_and_duplicates_are_stored_once(app, client, token, tmp_path, mode):
    doc = edited_report()
    exp = count_report(doc)
    assert exp.total == 4 and exp.duplicates == 1 and exp.counts["unknown"] == 1
    gem_target = doc["Results"][1]["Target"]
    path = tmp_path / "fluentd-edited.json"
    path.write_text(json.dumps(doc))
    if mode == "raw":
        r = post(client, token, doc, query={"commit_sha": SHA, "repo_full_name": "acme/fluentd"})
    else:
        proc = run_jq(ROBUST_JQ, path, "registry.test/acme/fluentd:1", "acme/fluentd")
        assert proc.returncode == 0, proc.stderr
        r = post(client, token, json.loads(proc.stdout))
    assert r.status_code == 202, r.json
    assert r.json["accepted"] == 3 and r.json["duplicates"] == 1
    assert r.json["severity_counts"] == exp.counts == {"critical": 1, "high": 1, "medium": 0, "low": 0, "unknown": 1}
    s = client.get(
        f"/api/v1/orgs/acme/image-scans/{r.json['scan_run_id']}", headers={"Authorization": f"Bearer {token}"}
    ).json
    gem = next(f for f in s["findings"] if f["package_name"] == "activesupport")
    assert gem["target"] == gem_target == "Ruby"
    ghsa = next(f for f in s["findings"] if f["cve_id"].startswith("GHSA-"))
    assert ghsa["severity"] == "unknown"
    assert ghsa["vendor_ids"] == ["DSA-4613-1"] and ghsa["primary_url"].startswith("https://")


@pytest.mark.parametrize("name", ["issue_9333.json", "all_statuses.json"])
def test_empty_artifact_name_needs_image_ref(app, client, token, name):
    path = FIXTURES / "trivy-defectdojo" / name
    assert load(path)["ArtifactName"] == ""
    before = census(app)
    r = post(client, token, raw=path.read_bytes(), query={"commit_sha": SHA, "repo_full_name": "acme/api"})
    assert r.status_code == 422, r.json
    assert [(d["path"], d.get("in")) for d in r.json["details"]] == [("image_ref", "query")]
    assert census(app) == before


def test_legacy_array_needs_image_ref(app, client, token):
    path = FIXTURES / "trivy-defectdojo" / "legacy_many_vulns.json"
    r = post(client, token, raw=path.read_bytes(), query={"commit_sha": SHA, "repo_full_name": "acme/api"})
    assert r.status_code == 422, r.json
    assert "image_ref" in [d["path"] for d in r.json["details"]]


def test_query_image_ref_overrides_artifact_name(app, client, token):
    path = FIXTURES / "trivy" / "alpine-39.json"
    r, image = upload(client, token, path, "raw", image_ref="ghcr.io/acme/alpine:39")
    assert r.status_code == 202, r.json
    s = client.get(
        f"/api/v1/orgs/acme/image-scans/{r.json['scan_run_id']}", headers={"Authorization": f"Bearer {token}"}
    ).json
    assert s["image_ref"] == image == "ghcr.io/acme/alpine:39"


@pytest.mark.parametrize("mode", ["raw", "robust_jq"])
def test_legacy_mix_without_the_malformed_entry(app, client, token, tmp_path, mode):
    """The rest of legacy_trivy_mix is valid: explicit `"Vulnerabilities": null` targets contribute nothing."""
    doc = copy.deepcopy(load(FIXTURES / "trivy-defectdojo" / MALFORMED))
    assert "VulnerabilityID" not in doc[0]["Vulnerabilities"][0]
    del doc[0]["Vulnerabilities"][0]
    assert sum(1 for r in doc if r.get("Vulnerabilities", 0) is None) == 3
    exp = count_report(doc)
    assert (exp.total, exp.counts, exp.fixable) == (
        6,
        {"critical": 0, "high": 6, "medium": 0, "low": 0, "unknown": 0},
        6,
    )
    if mode == "raw":
        r = post(
            client,
            token,
            doc,
            query={"commit_sha": SHA, "repo_full_name": "acme/mix", "image_ref": "registry.test/acme/mix:1"},
        )
    else:
        path = tmp_path / "mix.json"
        path.write_text(json.dumps(doc))
        proc = run_jq(ROBUST_JQ, path, "registry.test/acme/mix:1", "acme/mix")
        assert proc.returncode == 0, proc.stderr
        r = post(client, token, json.loads(proc.stdout))
    assert r.status_code == 202, r.json
    assert (r.json["accepted"], r.json["severity_counts"], r.json["fixable"]) == (6, exp.counts, 6)


# ------------------------------------------------------------------ duplicates keep the worst copy

ALPINE = FIXTURES / "trivy" / "alpine-39.json"
# alpine-39.json has three pairs of vulnerabilities sharing id, installed version and target, in two packages
# each (libcrypto1.1/libssl1.1 twice, musl/musl-utils): not duplicates, by the key (id, package, version, target).
ALPINE_PAIRS = {"CVE-2019-1549": 2, "CVE-2019-1551": 2, "CVE-2019-14697": 2}


def duplicated_alpine() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """alpine-39.json with each pair made a true duplicate (the second copy in the first's package), the first
    copy of each lowered to LOW without a fixed version: what a merge of scanners' output can look like."""
    doc = copy.deepcopy(load(ALPINE))
    vulns = doc["Results"][0]["Vulnerabilities"]
    worst: dict[str, dict[str, Any]] = {}
    for vid in ALPINE_PAIRS:
        first, second = (v for v in vulns if v["VulnerabilityID"] == vid)
        second["PkgName"] = first["PkgName"]
        worst[vid] = {"severity": first["Severity"].lower(), "fixed_version": first["FixedVersion"]}
        first["Severity"] = "LOW"
        del first["FixedVersion"]
        second.pop("PkgPath", None)
    return doc, worst


@pytest.mark.parametrize("mode", ["raw", "robust_jq"])
def test_duplicates_keep_the_most_severe_copy_and_a_fixed_version(app, client, token, tmp_path, mode):
    """Today the first copy wins, which drops CVE-2019-14697's CRITICAL (a gate must fail closed)."""
    set_policy(app, "acme", block_action="block_pull")
    original = load(ALPINE)["Results"][0]["Vulnerabilities"]
    ids = [v["VulnerabilityID"] for v in original]
    assert {i: ids.count(i) for i in ALPINE_PAIRS} == ALPINE_PAIRS
    r, _ = upload(client, token, ALPINE, "raw")  # the real pairs are in two packages each: not duplicates
    assert r.status_code == 202, r.json
    assert (r.json["accepted"], r.json["duplicates"]) == (6, 0)
    doc, worst = duplicated_alpine()
    assert worst["CVE-2019-14697"]["severity"] == "critical"
    if mode == "raw":
        r = post(client, token, doc, query={"commit_sha": SHA, "repo_full_name": "acme/alpine"})
    else:
        path = tmp_path / "alpine-duplicated.json"
        path.write_text(json.dumps(doc))
        proc = run_jq(ROBUST_JQ, path, "registry.test/acme/alpine:1", "acme/alpine")
        assert proc.returncode == 0, proc.stderr
        r = post(client, token, json.loads(proc.stdout))
    assert r.status_code == 202, r.json
    assert (r.json["accepted"], r.json["duplicates"]) == (3, 3)
    assert r.json["severity_counts"]["critical"] == 1
    assert r.json["status"] == "failure"
    s = client.get(
        f"/api/v1/orgs/acme/image-scans/{r.json['scan_run_id']}", headers={"Authorization": f"Bearer {token}"}
    ).json
    stored = {f["cve_id"]: f for f in s["findings"]}
    assert {vid: {k: stored[vid][k] for k in ("severity", "fixed_version")} for vid in worst} == worst
