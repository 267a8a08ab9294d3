"""Upload limits (spec section 2): MAX_FINDINGS findings per upload (413 naming the limit, nothing stored),
identity fields of at most 1,024 characters (422 with the path), descriptive fields cut to their limit and the
cut recorded (`truncated`, stored, shown, and in the hash chain only when true), and bodies whose shape would
take much memory to parse refused or read a piece at a time. Timings are the bench's (bench/big_upload_bench.py).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from flask import Flask

from app import create_app
from app.config import ConfigError
from app.findings import schemas
from app.models import Finding
from app.openapi import document
from tests.chainkit import org_id, sql, verdict
from tests.conftest import MakeApp
from tests.factories import REPO, SHA, census, finding, make_org, make_token, post, seed

TRIVY_QUERY = {"commit_sha": SHA, "repo_full_name": REPO, "image_ref": "ghcr.io/acme/api:1"}
AUTH = "Authorization"


@pytest.fixture
def token(app: Flask) -> str:
    make_org(app, "acme")
    return make_token(app, "acme")


@pytest.fixture
def limited_app(make_app: MakeApp) -> Flask:
    """The app with FREMFORGE_MAX_FINDINGS=5, a string as the environment gives it."""
    return make_app(MAX_FINDINGS="5")


@pytest.fixture
def limited(limited_app: Flask) -> tuple[Flask, Any, str]:
    make_org(limited_app, "acme")
    return limited_app, limited_app.test_client(), make_token(limited_app, "acme")


def findings(n: int, **extra: Any) -> list[dict[str, Any]]:
    return [finding(f"CVE-2024-{i:05d}", **extra) for i in range(n)]


def vulns(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"VulnerabilityID": f"CVE-2024-{i:05d}", "PkgName": "openssl", "InstalledVersion": "3.0.1", "Severity": "LOW"}
        for i in range(start, start + n)
    ]


def report(*results: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "SchemaVersion": 2,
        "ArtifactName": "ghcr.io/acme/api:1",
        "Results": [{"Target": f"target-{i}", "Vulnerabilities": v} for i, v in enumerate(results)],
    }


def refused(r: Any, status: int, code: str, path: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.get_data()[:1000])
    body = r.get_json()
    assert body["error"] == code, body
    assert path in [d["path"] for d in body["details"]], body
    return body


def scan_findings(client: Any, token: str, scan_run_id: int) -> list[dict[str, Any]]:
    r = client.get(f"/api/v1/orgs/acme/image-scans/{scan_run_id}", headers={AUTH: f"Bearer {token}"})
    assert r.status_code == 200, r.json
    return r.json["findings"]


# ---------------------------------------------------------------- MAX_FINDINGS


@pytest.mark.parametrize(
    "body,query,path",
    [
        pytest.param(seed(findings(6)), None, "findings[5]", id="seed"),
        pytest.param(report(vulns(6)), TRIVY_QUERY, "Results[0].Vulnerabilities[5]", id="trivy"),
        pytest.param(report(vulns(3), vulns(3, 3)), TRIVY_QUERY, "Results[1].Vulnerabilities[2]", id="trivy-summed"),
        pytest.param(report(vulns(3))["Results"] * 2, TRIVY_QUERY, "[1].Vulnerabilities[2]", id="trivy-legacy"),
        pytest.param(seed([{"cve_id": "x"}] * 6), None, "findings[5]", id="seed-bad-findings-counted-too"),
    ],
)
def test_over_max_findings_is_413_naming_the_limit(limited, body, query, path) -> None:
    app, client, token = limited
    before = census(app)
    r = post(client, token, body, query=query)
    err = refused(r, 413, "too_many_findings", path)
    assert "MAX_FINDINGS" in err["message"] and "5" in err["message"]
    assert err["details"][0]["limit"] == 5
    assert census(app) == before


@pytest.mark.parametrize(
    "body,query",
    [
        pytest.param(seed(findings(5)), None, id="seed"),
        pytest.param(report(vulns(2), vulns(3, 2)), TRIVY_QUERY, id="trivy"),
    ],
)
def test_exactly_max_findings_is_accepted_and_one_more_is_not(limited, body, query) -> None:
    _, client, token = limited
    r = post(client, token, body, query=query)
    assert r.status_code == 202, r.json
    assert r.json["accepted"] == 5
    if "findings" in body:
        one_more = {**body, "findings": [*body["findings"], finding("CVE-2024-99999")]}
    else:
        one_more = report(*(res["Vulnerabilities"] for res in body["Results"]), vulns(1, 99))
    past = "findings[5]" if "findings" in body else "Results[2].Vulnerabilities[0]"
    refused(post(client, token, one_more, query=query), 413, "too_many_findings", past)


def test_findings_are_counted_as_sent_duplicates_too(limited) -> None:
    """The limit bounds the work an upload asks for: 6 findings of which 5 unique are over a limit of 5."""
    app, client, token = limited
    before = census(app)
    refused(
        post(client, token, seed([*findings(5), finding("CVE-2024-00000")])), 413, "too_many_findings", "findings[5]"
    )
    assert census(app) == before


def test_over_the_default_max_findings_is_413_and_nothing_stored(app, client, token) -> None:
    assert app.config["MAX_FINDINGS"] == 100_000
    one = b'{"cve_id":"CVE-1","severity":"low","package_name":"p","installed_version":null}'
    raw = json.dumps({**seed([]), "findings": []}).encode()[:-2] + b",".join([one] * 100_001) + b"]}"
    before = census(app)
    err = refused(post(client, token, raw=raw), 413, "too_many_findings", "findings[100000]")
    assert "100,000" in err["message"]
    assert census(app) == before


def test_a_64_mib_body_of_tiny_findings_is_413_not_a_killed_worker(app, client, token) -> None:
    """What took more than 1.2 GiB per worker and most of gunicorn's 30 s before (spec section 9)."""
    one = b'{"cve_id":"CVE-1","severity":"low","package_name":"p","installed_version":null},'
    head = json.dumps({**seed([]), "findings": []}).encode()[:-2]
    raw = head + one * ((64 * 2**20 - len(head) - 100) // len(one)) + one[:-1] + b"]}"
    assert len(raw) <= app.config["MAX_UPLOAD_BYTES"]
    before = census(app)
    refused(post(client, token, raw=raw), 413, "too_many_findings", "findings[100000]")
    assert census(app) == before


@pytest.mark.parametrize(
    "junk",
    [
        pytest.param(b"[" + b",".join([b"{}"] * 4_000_000) + b"]", id="millions-of-empty-objects"),
        pytest.param(b"[" + b",".join([b'"ab"'] * 3_000_000) + b"]", id="millions-of-strings"),
    ],
)
def test_values_outside_the_findings_cannot_exhaust_memory(app, client, token, junk) -> None:
    """An unknown key holding millions of values is read a value at a time, up to MAX_FINDINGS of them."""
    raw = json.dumps(seed()).encode()[:-1] + b', "junk": ' + junk + b"}"
    before = census(app)
    err = refused(post(client, token, raw=raw), 413, "too_many_values", "junk[100000]")
    assert "MAX_FINDINGS" in err["message"]
    assert census(app) == before


def test_a_finding_too_large_to_parse_whole_is_read_a_field_at_a_time_and_cut(app, client, token) -> None:
    """50,000 references of 250 characters and a 20 MiB title: cut to 64 and 1,024, never all in memory."""
    refs = [f"https://x/{i:05d}/" + "r" * 240 for i in range(50_000)]
    r = post(client, token, seed([finding(title="T" * (20 * 2**20), references=refs), finding("CVE-2024-0002")]))
    assert r.status_code == 202, r.json
    found = {f["cve_id"]: f for f in scan_findings(client, token, r.json["scan_run_id"])}
    cut = found["CVE-2023-1234"]
    assert (cut["references"], cut["title"], cut["truncated"]) == (refs[:64], "T" * 1024, True)
    assert found["CVE-2024-0002"]["truncated"] is False


def test_a_finding_with_a_million_references_is_413(app, client, token) -> None:
    refs = b"[" + b",".join([b'"https://x"'] * 1_000_000) + b"]"
    raw = json.dumps(seed([finding(references="@@")])).encode().replace(b'"@@"', refs)
    before = census(app)
    refused(post(client, token, raw=raw), 413, "too_many_values", "findings[0].references[100000]")
    assert census(app) == before


@pytest.mark.parametrize(
    "where",
    ["finding", "top-level", "trivy-vulnerability", "trivy-result", "trivy-results", "trivy-top-level"],
)
def test_objects_of_millions_of_keys_are_413_not_a_killed_worker(app, client, token, where) -> None:
    """HEAD: a finding, the body or a Trivy vulnerability holding millions of keys (57 MiB) was walked a key at a time
    to its end: 25-30 s, past gunicorn's timeout (an HTML 500 and a worker killed), or stored at 600 MiB a worker.
    Now they count against the values read one at a time, as a big list's do: a 413 in about a second."""
    keys = b",".join(b'"k%d":0' % i for i in range(2_000_000))
    vuln = b'"VulnerabilityID":"CVE-1","PkgName":"p","InstalledVersion":"1","Severity":"LOW"'
    query = None
    if where == "finding":
        raw = json.dumps(seed([finding(cve_id="@@")])).encode().replace(b'"cve_id": "@@"', keys + b',"cve_id":"C"')
        path = "findings[0].k"
    elif where == "top-level":
        raw = b"{" + keys + b"," + json.dumps(seed()).encode()[1:]
        path = "k"
    else:
        query = {"image_ref": "ghcr.io/acme/api:1", "commit_sha": "a" * 40, "repo_full_name": "acme/api"}
        result = b'{"Target":"t","Vulnerabilities":[{%s}]}' % vuln
        if where == "trivy-vulnerability":
            result = b'{"Target":"t","Vulnerabilities":[{%s,%s}]}' % (keys, vuln)
            path = "Results[0].Vulnerabilities[0].k"
        elif where == "trivy-result":
            result = b'{%s,"Target":"t","Vulnerabilities":[{%s}]}' % (keys, vuln)
            path = "Results[0].k"
        raw = b'{"SchemaVersion":2,"Results":[%s]}' % result
        if where == "trivy-results":
            raw = b'{"SchemaVersion":2,"Results":[%s]}' % b",".join([b"{}"] * 2_000_000)
            path = "Results["
        elif where == "trivy-top-level":
            raw = b'{%s,"SchemaVersion":2,"Results":[%s]}' % (keys, result)
            path = "k"
    assert len(raw) <= app.config["MAX_UPLOAD_BYTES"]
    before = census(app)
    r = post(client, token, raw=raw, query=query)
    assert (r.status_code, r.json["error"]) == (413, "too_many_values"), r.get_data()[:500]
    detail = r.json["details"][0]
    assert detail["limit"] == 100_000 and re.fullmatch(re.escape(path) + r"\d{5,6}\]?", detail["path"]), detail
    assert census(app) == before


@pytest.mark.parametrize("depth", [4, 12, 60])
def test_large_values_nested_deep_are_413(app, client, token, depth) -> None:
    """Each level walked scanned the rest of the body again: 8 MiB of strings 80 lists deep took over two minutes
    (bench/big_upload_bench.py times the 64 MiB ones). Now the scans stop at twice the body, and values nested past
    what one regex reads (9 levels) at DEEP_TOKENS tokens in all: a 413 either way."""
    raw = json.dumps(seed()).encode()[:-1] + b', "junk": ' + b"[" * depth + b",".join([b'"a"'] * 2_000_000)
    raw += b"]" * depth + b"}"
    before = census(app)
    r = post(client, token, raw=raw)
    assert (r.status_code, r.json["error"]) == (413, "too_many_values"), r.get_data()[:500]
    assert census(app) == before


def test_a_nested_value_past_max_findings_is_refused(app, client, token) -> None:
    raw = json.dumps(seed()).encode()[:-1] + b', "junk": [[' + b",".join([b"[1,2,3]"] * 600_000) + b"]]}"
    err = refused(post(client, token, raw=raw), 413, "too_many_values", "junk[0][99999]")
    assert err["details"][0]["limit"] == 100_000


@pytest.mark.parametrize("value", ["1e5", "ten", "0", "-1", "10000001", ""])
def test_max_findings_setting_must_be_a_whole_number_in_range(value, tmp_path) -> None:
    with pytest.raises(ConfigError, match="FREMFORGE_MAX_FINDINGS"):
        create_app(
            {"TESTING": True, "SECRET_KEY": "x", "DATABASE_URL": f"sqlite:///{tmp_path}/x.db", "MAX_FINDINGS": value}
        )


def test_max_findings_comes_from_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("FREMFORGE_MAX_FINDINGS", "25000")
    app = create_app({"TESTING": True, "SECRET_KEY": "x", "DATABASE_URL": f"sqlite:///{tmp_path}/x.db"})
    assert app.config["MAX_FINDINGS"] == 25_000


# ---------------------------------------------------------------- identity fields: 422 with the path


@pytest.mark.parametrize(
    "body,query,path",
    [
        pytest.param(seed([finding(target="/" + "t" * 1024)]), None, "findings[0].target", id="target"),
        pytest.param(seed([finding(cve_id="C" * 1025)]), None, "findings[0].cve_id", id="cve_id"),
        pytest.param(seed([finding(package="p" * 1025)]), None, "findings[0].package_name", id="package_name"),
        pytest.param(seed([finding(installed="1" * 1025)]), None, "findings[0].installed_version", id="installed"),
        pytest.param(seed([finding(vendor_ids=["D" * 1025])]), None, "findings[0].vendor_ids[0]", id="vendor-id"),
        pytest.param(
            seed([finding(vendor_ids=[f"DSA-{i}" for i in range(65)])]), None, "findings[0].vendor_ids", id="vendor-ids"
        ),
        pytest.param(
            report([{**vulns(1)[0], "PkgPath": "p" * 1025}]),
            TRIVY_QUERY,
            "Results[0].Vulnerabilities[0].PkgPath",
            id="trivy-pkgpath",
        ),
        pytest.param(
            {**report(vulns(1)), "Results": [{"Target": "t" * 1025, "Vulnerabilities": vulns(1)}]},
            TRIVY_QUERY,
            "Results[0].Target",
            id="trivy-result-target-as-target",
        ),
    ],
)
def test_identity_field_too_long_is_422_with_its_path(app, client, token, body, query, path) -> None:
    before = census(app)
    body = refused(post(client, token, body, query=query), 422, "validation_failed", path)
    detail = next(d for d in body["details"] if d["path"] == path)
    assert "limit" in detail
    assert census(app) == before


def test_identity_fields_at_their_limit_are_accepted(app, client, token) -> None:
    target = "/" + "t" * 1023
    r = post(client, token, seed([finding("C" * 1024, package="p" * 1024, installed="1" * 1024, target=target)]))
    assert r.status_code == 202, r.json
    (f,) = scan_findings(client, token, r.json["scan_run_id"])
    assert (f["target"], f["cve_id"], f["truncated"]) == (target, "C" * 1024, False)
    assert (f["package_name"], f["installed_version"]) == ("p" * 1024, "1" * 1024)  # stored whole
    long_result_target = {"Target": "t" * 1025, "Vulnerabilities": [{**vulns(1)[0], "PkgPath": "lib/x.jar"}]}
    r = post(client, token, {**report(), "Results": [long_result_target]}, query=TRIVY_QUERY)
    assert r.status_code == 202, r.json  # the Result's Target is not a finding's target here


# ---------------------------------------------------------------- descriptive fields: cut and marked


CUT_CASES = [
    pytest.param({"title": "T" * 1025}, {"title": "T" * 1024}, id="title"),
    pytest.param(
        {"primary_url": "https://x/" + "u" * 2048}, {"primary_url": ("https://x/" + "u" * 2048)[:2048]}, id="url"
    ),
    pytest.param(
        {"references": ["https://a", "https://b/" + "r" * 2048]},
        {"references": ["https://a", ("https://b/" + "r" * 2048)[:2048]]},
        id="reference",
    ),
    pytest.param(
        {"references": [f"https://r/{i}" for i in range(70)]},
        {"references": [f"https://r/{i}" for i in range(64)]},
        id="65th-reference-on",
    ),
]


@pytest.mark.parametrize("given,stored", CUT_CASES)
def test_descriptive_fields_are_cut_and_the_finding_says_so(app, client, token, given, stored) -> None:
    r = post(client, token, seed([finding(**given), finding("CVE-2024-0002")]))
    assert r.status_code == 202, r.json
    assert r.json["accepted"] == 2
    found = {f["cve_id"]: f for f in scan_findings(client, token, r.json["scan_run_id"])}
    cut, whole = found["CVE-2023-1234"], found["CVE-2024-0002"]
    for key, value in stored.items():
        assert cut[key] == value
    assert cut["truncated"] is True and whole["truncated"] is False
    page = client.get(
        f"/api/v1/orgs/acme/image-scans/{r.json['scan_run_id']}/findings", headers={AUTH: f"Bearer {token}"}
    )
    assert {f["cve_id"]: f["truncated"] for f in page.json["items"]} == {"CVE-2023-1234": True, "CVE-2024-0002": False}


def test_descriptive_fields_of_a_raw_trivy_report_are_cut(app, client, token) -> None:
    vuln = {**vulns(1)[0], "Title": "T" * 5000, "PrimaryURL": "https://x/" + "u" * 3000, "References": ["r"] * 100}
    r = post(client, token, report([vuln]), query=TRIVY_QUERY)
    assert r.status_code == 202, r.json
    (f,) = scan_findings(client, token, r.json["scan_run_id"])
    assert (len(f["title"]), len(f["primary_url"]), len(f["references"]), f["truncated"]) == (1024, 2048, 64, True)


def test_descriptive_fields_at_their_limit_are_kept_whole(app, client, token) -> None:
    given = {"title": "T" * 1024, "primary_url": "u" * 2048, "references": [f"{i:02d}" + "r" * 2046 for i in range(64)]}
    r = post(client, token, seed([finding(**given)]))
    assert r.status_code == 202, r.json
    (f,) = scan_findings(client, token, r.json["scan_run_id"])
    assert {k: f[k] for k in given} == given
    assert f["truncated"] is False


def test_references_past_the_64th_are_dropped_but_must_still_be_strings(app, client, token) -> None:
    r = post(client, token, seed([finding(references=[f"https://r/{i}" for i in range(67)])]))
    assert r.status_code == 202, r.json
    (f,) = scan_findings(client, token, r.json["scan_run_id"])
    assert (len(f["references"]), f["truncated"]) == (64, True)
    refs = [f"https://r/{i}" for i in range(66)] + [7]
    refused(
        post(client, token, seed([finding(references=refs)])), 422, "validation_failed", "findings[0].references[66]"
    )


# ---------------------------------------------------------------- the chain


def _payload_hash(row: Finding, with_truncated: bool) -> str:
    payload = {
        "org_id": row.org_id,
        "scan_run_id": row.scan_run_id,
        "created_at": row.created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "cve_id": row.cve_id,
        "severity": row.severity,
        "package": row.package,
        "installed_version": row.installed_version,
        "fixed_version": row.fixed_version,
        "target": row.target,
        "title": row.title,
        "primary_url": row.primary_url,
        "references": row.references,
        "vendor_ids": row.vendor_ids,
        "synthetic": row.synthetic,
    }
    if with_truncated:
        payload["truncated"] = True
    return hashlib.sha256(b"fremforge/finding/v1\n" + orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


def test_truncated_is_in_the_hashed_payload_only_when_true(app, client, token) -> None:
    r = post(client, token, seed([finding(title="T" * 2000), finding("CVE-2024-0002", title="short")]))
    assert r.status_code == 202, r.json
    with app.app_context():
        from app import db

        rows = {f.cve_id: f for f in db.session().scalars(sa.select(Finding))}
        cut, whole = rows["CVE-2023-1234"], rows["CVE-2024-0002"]
        assert cut.truncated is True and whole.truncated is None  # NULL unless cut, as rows stored before 0008
        assert cut.payload_hash == _payload_hash(cut, with_truncated=True)
        assert whole.payload_hash == _payload_hash(whole, with_truncated=False)  # as every finding hashed before
    assert verdict(app, "acme")[0] == 0


@pytest.mark.parametrize("statement", ["UPDATE findings SET truncated = NULL", "UPDATE findings SET truncated = TRUE"])
def test_flipping_truncated_breaks_the_chain(app, client, token, statement) -> None:
    title = "T" * 2000 if "NULL" in statement else "short"
    assert post(client, token, seed([finding(title=title)])).status_code == 202
    assert verdict(app, "acme")[0] == 0
    sql(app, statement + " WHERE org_id = :org", org=org_id(app, "acme"))
    code, result = verdict(app, "acme")
    assert code == 1, result


def test_retention_removes_truncated_with_the_payload_and_the_chain_verifies(app, client, token) -> None:
    assert post(client, token, seed([finding(title="T" * 2000)])).status_code == 202
    result = app.test_cli_runner().invoke(args=["retention", "run", "--now", "2100-01-01T00:00:00Z"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        from app import db

        (row,) = db.session().scalars(sa.select(Finding))
        assert row.redacted_at is not None and row.truncated is None
    assert verdict(app, "acme")[0] == 0


# ---------------------------------------------------------------- the OpenAPI document


def test_openapi_documents_truncated_and_the_limits() -> None:
    doc = document()
    schemas = doc["components"]["schemas"]
    assert schemas["Finding"]["properties"]["truncated"]["type"] == "boolean"
    assert '"maxLength": 1024' in json.dumps(schemas["SeedFinding"]["properties"]["target"])
    assert '"maxItems": 64' in json.dumps(schemas["SeedFinding"]["properties"]["vendor_ids"])
    upload = doc["paths"]["/api/v1/orgs/{slug}/image-scans/findings"]["post"]["responses"]
    assert "too_many_findings" in upload["413"]["description"] and "MAX_FINDINGS" in upload["413"]["description"]
    detail = schemas["Error"]["properties"]["details"]["items"]["properties"]
    assert detail["limit"]["type"] == "integer"


def test_past_the_uploads_budget_of_distinct_references_and_ids_new_ones_are_cut(app, client, token, monkeypatch):
    """Each kept reference or vendor id is a string object in the worker, however short: an upload keeps at most
    KEPT_STRINGS_MAX distinct ones (here 10), values seen before are kept still, and a finding cut says so."""
    monkeypatch.setattr(schemas, "KEPT_STRINGS_MAX", 10)
    first = finding("CVE-2024-0001", references=[f"r{i}" for i in range(6)], vendor_ids=["DSA-1", "DSA-2"])
    second = finding("CVE-2024-0002", references=["r0", "r9", "r8", "r7"], vendor_ids=["DSA-1", "DSA-3"])
    third = finding("CVE-2024-0003", references=["r1", "r2"], vendor_ids=["DSA-2"])  # all seen: nothing cut
    r = post(client, token, seed([first, second, third]))
    assert r.status_code == 202 and r.json["accepted"] == 3, r.json
    found = {f["cve_id"]: f for f in scan_findings(client, token, r.json["scan_run_id"])}
    one, two, three = found["CVE-2024-0001"], found["CVE-2024-0002"], found["CVE-2024-0003"]
    assert (one["references"], one["vendor_ids"], one["truncated"]) == (
        [f"r{i}" for i in range(6)],
        ["DSA-1", "DSA-2"],
        False,
    )
    assert (two["references"], two["vendor_ids"], two["truncated"]) == (["r0", "r9", "r8"], ["DSA-1"], True)
    assert (three["references"], three["vendor_ids"], three["truncated"]) == (["r1", "r2"], ["DSA-2"], False)
