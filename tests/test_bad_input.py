"""Bad input to POST /api/v1/orgs/{slug}/image-scans/findings: every refusal is an exact status with a JSON
error body naming the JSON path where there is one, never a 500, and nothing stored (spec section 2).

Failure modes first; the few accepted edge cases (severity letter case, disabled policy, duplicates) close
the file.
"""

from __future__ import annotations

import copy
import gzip
import io
import json
import os
import types
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from gunicorn.http.errors import InvalidChunkSize
from werkzeug.test import EnvironBuilder, run_wsgi_app

from app.web import bodies
from tests.conftest import MakeApp
from tests.factories import (
    ALL_SCOPES,
    FIXTURES,
    REPO,
    SHA,
    census,
    finding,
    make_org,
    make_token,
    post,
    seed,
    set_policy,
)

URL = "/api/v1/orgs/acme/image-scans/findings"
TRIVY_QUERY = {"commit_sha": SHA, "repo_full_name": REPO, "image_ref": "ghcr.io/acme/api:1"}
LEGACY_MIX = FIXTURES / "trivy-defectdojo" / "legacy_trivy_mix.json"
NO_ARTIFACT = FIXTURES / "trivy-defectdojo" / "all_statuses.json"  # a real report whose ArtifactName is ""


# ---------------------------------------------------------------- helpers


def load(path: Path) -> Any:
    return json.loads(path.read_text())


def assert_error(r: Any, status: int, code: str, path: str | None = None, where: str | None = None) -> dict:
    """The exact status, a JSON error body of the documented shape, and (when given) the path in details."""
    assert r.status_code != 500, r.get_data()[:2000]
    assert r.status_code == status, (r.status_code, r.get_data()[:2000])
    assert r.mimetype == "application/json", r.headers
    body = r.get_json()
    assert set(body) == {"error", "message", "details"}, body
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"].strip(), body
    assert isinstance(body["details"], list), body
    for d in body["details"]:
        assert {"path", "code", "message"} <= set(d), d
    if path is not None:
        paths = [d["path"] for d in body["details"]]
        assert path in paths, (path, body)
        if where is not None:
            assert any(d["path"] == path and d.get("in") == where for d in body["details"]), body
    return body


def trivy_report(vulns: list[dict[str, Any]] | None = None, artifact: str = "ghcr.io/acme/api:1") -> dict[str, Any]:
    """A SchemaVersion 2 report: a clean first Result, the given vulnerabilities in the second."""
    if vulns is None:
        vulns = [
            {
                "VulnerabilityID": "CVE-2023-1234",
                "PkgName": "openssl",
                "InstalledVersion": "3.0.1",
                "FixedVersion": "3.0.7",
                "Severity": "HIGH",
            }
        ]
    return {
        "SchemaVersion": 2,
        "ArtifactName": artifact,
        "ArtifactType": "container_image",
        "Results": [
            {"Target": "ghcr.io/acme/api:1 (debian 12)", "Class": "os-pkgs"},
            {"Target": "app/requirements.txt", "Class": "lang-pkgs", "Vulnerabilities": vulns},
        ],
    }


def three_findings(index: int = 2, **change: Any) -> dict[str, Any]:
    """A seed body of three findings whose finding `index` has `change` applied (a value of ... removes)."""
    fs = [finding("CVE-2023-0001"), finding("CVE-2023-0002"), finding("CVE-2023-0003")]
    for k, v in change.items():
        if v is ...:
            del fs[index][k]
        else:
            fs[index][k] = v
    return seed(fs)


def without(doc: dict[str, Any], key: str) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    del doc[key]
    return doc


def nested_raw(depth: int, leaf: bytes) -> bytes:
    """JSON text of `leaf` inside `depth` arrays (built as text: the json module cannot write it)."""
    return b"[" * depth + leaf + b"]" * depth


def with_field(
    doc: dict[str, Any], key: str, value: bytes | None, old: bytes | None = None, new: bytes | None = None
) -> bytes:
    """doc as JSON text, with doc[key] replaced by the JSON text `value` (or the text `old` by `new`)."""
    if value is not None:
        doc = {**doc, key: "@@"}
        old, new = b'"@@"', value
    assert old is not None and new is not None
    return json.dumps(doc).encode().replace(old, new, 1)


@pytest.fixture
def token(app: Flask) -> str:
    make_org(app, "acme")
    return make_token(app, "acme")


def test_every_api_answer_is_json_the_browser_may_not_sniff(client, token):
    """An answer holding an upload's strings (`<script>` in an image ref) is read as JSON, never sniffed as HTML."""
    hostile = seed([finding(title="<script>alert(1)</script>")], image_ref="reg/<img src=x onerror=alert(1)>:1")
    answers = [
        post(client, token, hostile),  # 202
        post(client, token, {"findings": "<b>"}),  # 422
        post(client, None, hostile),  # 401
        post(client, token, hostile, slug="nobody"),  # 404
        client.get("/api/v1/orgs/acme/image-scans", headers={"Authorization": f"Bearer {token}"}),  # 200
        client.get("/api/v1/openapi.json"),
    ]
    assert [r.status_code for r in answers] == [202, 422, 401, 404, 200, 200]
    for r in answers:
        assert r.mimetype == "application/json" and r.headers["X-Content-Type-Options"] == "nosniff", r.headers


@dataclass
class Bad:
    """One refused request: keyword arguments of factories.post, and what must come back."""

    status: int
    code: str
    path: str | None = None
    where: str | None = None
    body: Any = None
    raw: bytes | None = None
    gz: bool = False
    content_type: str = "application/json"
    query: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    slug: str = "acme"

    def send(self, client: Any, token: str) -> Any:
        return post(
            client,
            token,
            self.body,
            slug=self.slug,
            raw=self.raw,
            gz=self.gz,
            content_type=self.content_type,
            query=self.query,
            headers=self.headers,
        )


def case(id: str, *args: Any, **kwargs: Any) -> Any:
    return pytest.param(Bad(*args, **kwargs), id=id)


def m422(path: str, body: Any, **kwargs: Any) -> Bad:
    return Bad(422, "validation_failed", path, body=body, **kwargs)


# ---------------------------------------------------------------- the matrix

BAD_BODIES = [
    # --- 400: not JSON at all, or JSON that cannot be read
    case("malformed-json-open-brace", 400, "malformed_json", raw=b"{"),
    case("malformed-json-single-quotes", 400, "malformed_json", raw=b"{'image_ref': 'x'}"),
    case("malformed-json-trailing-comma", 400, "malformed_json", raw=b'{"findings": [],}'),
    case("malformed-json-trailing-garbage", 400, "malformed_json", raw=json.dumps(seed()).encode() + b" x"),
    case("malformed-json-nan", 400, "malformed_json", raw=b'{"findings": NaN}'),
    case("malformed-json-infinite-number", 400, "malformed_json", raw=b'{"findings": 1e400}'),
    case("malformed-json-truncated", 400, "malformed_json", raw=json.dumps(seed()).encode()[:-3]),
    case("empty-body", 400, "empty_body", raw=b""),
    case("whitespace-body", 400, "empty_body", raw=b"  \r\n\t "),
    case("empty-gzip-body", 400, "empty_body", raw=b"", headers={"Content-Encoding": "gzip"}),
    case(
        "invalid-utf8",
        400,
        "malformed_json",
        raw=b'{"image_ref": "ghcr.io/acme/\xff\xfe:1", "commit_sha": "' + SHA.encode() + b'", "findings": []}',
    ),
    case("invalid-utf8-overlong", 400, "malformed_json", raw=b'{"image_ref": "\xc0\xaf"}'),
    case(
        "lone-surrogate-escape",
        400,
        "malformed_json",
        raw=json.dumps(seed([finding(title="x")])).replace('"x"', '"\\ud800"').encode(),
    ),
    case("deeply-nested-unclosed-100k", 400, "malformed_json", raw=b"[" * 100_000),
    case("deeply-nested-balanced-100k", 400, "malformed_json", raw=b"[" * 100_000 + b"]" * 100_000),
    case("deeply-nested-objects-100k", 400, "malformed_json", raw=b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
    case(
        "deeply-nested-in-a-field-100k",
        400,
        "malformed_json",
        raw=b'{"image_ref": "x", "findings": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ),
    # --- 400: gzip that is not gzip
    case("gzip-invalid", 400, "malformed_gzip", raw=b"this is not gzip", headers={"Content-Encoding": "gzip"}),
    case(
        "gzip-truncated",
        400,
        "malformed_gzip",
        raw=gzip.compress(json.dumps(seed()).encode())[:-12],
        headers={"Content-Encoding": "gzip"},
    ),
    case(
        "gzip-trailing-garbage",
        400,
        "malformed_gzip",
        raw=gzip.compress(json.dumps(seed()).encode()) + b"garbage",
        headers={"Content-Encoding": "gzip"},
    ),
    case("gzip-of-malformed-json", 400, "malformed_json", raw=b"{", gz=True),
    case("gzip-sent-without-content-encoding", 400, "malformed_json", raw=gzip.compress(json.dumps(seed()).encode())),
    # --- 415: not JSON by Content-Type, or an encoding we do not speak
    case("content-type-text-plain", 415, "unsupported_media_type", body=seed(), content_type="text/plain"),
    case(
        "content-type-form",
        415,
        "unsupported_media_type",
        raw=b"image_ref=x&commit_sha=y",
        content_type="application/x-www-form-urlencoded",
    ),
    case(
        "content-type-multipart",
        415,
        "unsupported_media_type",
        body=seed(),
        content_type="multipart/form-data; boundary=xyz",
    ),
    case("content-type-jsonx", 415, "unsupported_media_type", body=seed(), content_type="application/jsonx"),
    case("content-type-text-json", 415, "unsupported_media_type", body=seed(), content_type="text/json"),
    case("content-encoding-br", 415, "unsupported_media_type", body=seed(), headers={"Content-Encoding": "br"}),
    case(
        "content-encoding-deflate", 415, "unsupported_media_type", body=seed(), headers={"Content-Encoding": "deflate"}
    ),
    case(
        "content-encoding-gzip-then-br",
        415,
        "unsupported_media_type",
        body=seed(),
        headers={"Content-Encoding": "gzip, br"},
    ),
    case(
        "content-type-checked-before-gzip",
        415,
        "unsupported_media_type",
        raw=b"not gzip",
        content_type="text/plain",
        headers={"Content-Encoding": "gzip"},
    ),
    # --- 422: JSON that is not an object
    case("json-number", 422, "validation_failed", "$", raw=b"42"),
    case("json-string", 422, "validation_failed", "$", raw=b'"findings"'),
    case("json-null", 422, "validation_failed", "$", raw=b"null"),
    case("json-true", 422, "validation_failed", "$", raw=b"true"),
    case("json-false", 422, "validation_failed", "$", raw=b"false"),
    case("json-array-of-numbers", 422, "validation_failed", "[0]", raw=b"[1, 2]", query=TRIVY_QUERY),
    case("json-empty-object", 422, "validation_failed", "findings", raw=b"{}"),
    # --- 422: missing fields of the seed shape
    *[
        pytest.param(m422(k, without(seed(), k)), id=f"missing-{k}")
        for k in ("image_ref", "commit_sha", "repo_full_name", "findings")
    ],
    *[
        pytest.param(m422(f"findings[2].{k}", three_findings(**{k: ...})), id=f"missing-finding-{k}")
        for k in ("cve_id", "severity", "package_name", "installed_version")
    ],
    # --- 422: mistyped fields
    pytest.param(m422("findings", seed(findings={"cve_id": "CVE-2023-1234"})), id="findings-as-object"),
    pytest.param(m422("findings", seed(findings="CVE-2023-1234")), id="findings-as-string"),
    pytest.param(m422("findings", {**seed(), "findings": None}), id="findings-null"),
    pytest.param(m422("findings[0]", seed([None])), id="finding-null"),
    pytest.param(m422("findings[1]", seed([finding(), "CVE-2023-1234"])), id="finding-as-string"),
    pytest.param(m422("findings[2].severity", three_findings(severity=3)), id="severity-as-number"),
    pytest.param(m422("findings[2].cve_id", three_findings(cve_id=20231234)), id="cve-id-as-int"),
    pytest.param(m422("findings[2].cve_id", three_findings(cve_id="")), id="cve-id-empty"),
    pytest.param(m422("findings[2].cve_id", three_findings(cve_id="C" * 1025)), id="cve-id-too-long"),
    # 1,024 characters, but not 1,024 bytes: an advisory id is indexed (in upper case), and an index row has a limit
    pytest.param(m422("findings[2].cve_id", three_findings(cve_id="\U0001f600" * 1024)), id="cve-id-too-many-bytes"),
    pytest.param(m422("findings[2].cve_id", three_findings(cve_id="\u0390" * 400)), id="cve-id-upper-case-too-long"),
    pytest.param(
        m422("findings[2].vendor_ids[1]", three_findings(vendor_ids=["DSA-1", "\U0001f600" * 300])),
        id="vendor-id-too-many-bytes",
    ),
    # The report's ArtifactName stands for image_ref: refused, it is named (in the body), not the query
    pytest.param(
        Bad(
            422,
            "validation_failed",
            "ArtifactName",
            body=trivy_report(artifact="x" * 1100),
            query={"commit_sha": SHA, "repo_full_name": REPO},
        ),
        id="artifact-name-too-long",
    ),
    # A key given twice where the findings are: JSON parsers keep the last (a critical of the first list would vanish)
    pytest.param(
        Bad(422, "validation_failed", "findings", raw=b'{"findings": [], ' + json.dumps(seed())[1:].encode()),
        id="findings-key-twice",
    ),
    pytest.param(
        Bad(
            422,
            "validation_failed",
            "Results[0].Vulnerabilities",
            raw=b'{"SchemaVersion": 2, "ArtifactName": "ghcr.io/acme/api:1", "Results": [{"Target": "t", '
            b'"Vulnerabilities": [{"VulnerabilityID": "CVE-1", "PkgName": "a", "InstalledVersion": "1", '
            b'"Severity": "HIGH"}], "Vulnerabilities": []}]}',
            query=TRIVY_QUERY,
        ),
        id="vulnerabilities-key-twice",
    ),
    # ...and where what a scan is about is: the image, its commit, its repository, its signature, the report's schema
    pytest.param(
        Bad(
            422,
            "validation_failed",
            "image_ref",
            raw=b'{"image_ref": "ghcr.io/acme/x:1", ' + json.dumps(seed())[1:].encode(),
        ),
        id="image-ref-key-twice",
    ),
    pytest.param(
        Bad(
            422,
            "validation_failed",
            "signature_status",
            raw=json.dumps(seed(signature_status="unsigned"))[:-1].encode() + b', "signature_status": "signed"}',
        ),
        id="signature-status-key-twice",
    ),
    pytest.param(
        Bad(
            422,
            "validation_failed",
            "SchemaVersion",
            raw=b'{"SchemaVersion": 3, "SchemaVersion": 2, "ArtifactName": "ghcr.io/acme/api:1", "Results": []}',
            query=TRIVY_QUERY,
        ),
        id="schema-version-key-twice",
    ),
    pytest.param(m422("findings[2].package_name", three_findings(package_name="")), id="package-empty"),
    pytest.param(
        m422("findings[2].installed_version", three_findings(installed_version=301)), id="installed-version-as-number"
    ),
    pytest.param(m422("findings[2].fixed_version", three_findings(fixed_version=3.07)), id="fixed-version-as-number"),
    pytest.param(
        m422("findings[2].references", three_findings(references="https://nvd.nist.gov/x")), id="references-as-string"
    ),
    pytest.param(
        m422("findings[2].references[1]", three_findings(references=["https://a", 7])), id="references-item-as-number"
    ),
    pytest.param(m422("findings[2].vendor_ids", three_findings(vendor_ids="DSA-5417-1")), id="vendor-ids-as-string"),
    pytest.param(m422("findings[2].title", three_findings(title=["a"])), id="title-as-list"),
    pytest.param(m422("findings[2].target", three_findings(target={"path": "/usr"})), id="target-as-object"),
    pytest.param(m422("image_ref", seed(image_ref=5)), id="image-ref-as-number"),
    pytest.param(m422("commit_sha", {**seed(), "commit_sha": int("1" * 40)}), id="commit-sha-as-number"),
    pytest.param(m422("repo_full_name", seed(repo=["acme", "api"])), id="repo-as-list"),
    pytest.param(m422("signature_status", seed(signature_status=True)), id="signature-status-as-bool"),
    # --- 422: values out of their domain
    pytest.param(
        m422(
            "findings[3].severity", seed([finding(f"CVE-2023-000{i}") for i in range(3)] + [finding(severity="severe")])
        ),
        id="severity-severe",
    ),
    pytest.param(m422("findings[2].severity", three_findings(severity="")), id="severity-empty"),
    pytest.param(m422("findings[2].severity", three_findings(severity="high ")), id="severity-trailing-space"),
    pytest.param(m422("findings[2].severity", three_findings(severity="negligible")), id="severity-negligible"),
    pytest.param(m422("commit_sha", seed(sha="0123456")), id="sha-short"),
    pytest.param(m422("commit_sha", seed(sha="g" * 40)), id="sha-non-hex"),
    pytest.param(m422("commit_sha", seed(sha=SHA + "0")), id="sha-41-chars"),
    pytest.param(m422("commit_sha", seed(sha="")), id="sha-empty"),
    pytest.param(m422("commit_sha", seed(sha=" " + SHA[1:])), id="sha-with-space"),
    pytest.param(m422("commit_sha", seed(sha=SHA + "\n")), id="sha-trailing-newline"),
    pytest.param(m422("repo_full_name", seed(repo="api")), id="repo-without-owner"),
    pytest.param(m422("repo_full_name", seed(repo="acme/")), id="repo-without-name"),
    pytest.param(m422("repo_full_name", seed(repo="/api")), id="repo-empty-owner"),
    pytest.param(m422("repo_full_name", seed(repo="acme/api/extra")), id="repo-three-parts"),
    pytest.param(m422("repo_full_name", seed(repo="acme/api\n")), id="repo-trailing-newline"),
    pytest.param(m422("repo_full_name", seed(repo="")), id="repo-empty"),
    pytest.param(m422("image_ref", seed(image_ref="")), id="image-ref-empty"),
    pytest.param(m422("image_ref", seed(image_ref="   ")), id="image-ref-blank"),
    pytest.param(m422("image_ref", seed(image_ref="\t\n")), id="image-ref-whitespace"),
    pytest.param(m422("image_ref", seed(image_ref="r/" + "a" * 1023)), id="image-ref-too-long"),
    pytest.param(m422("signature_status", seed(signature_status="bogus")), id="signature-status-bogus"),
    pytest.param(m422("signature_status", seed(signature_status="")), id="signature-status-empty"),
    pytest.param(m422("signature_issuer", seed(signature_issuer="h" * 1025)), id="signature-issuer-too-long"),
    # --- 422: NUL characters, which PostgreSQL cannot store
    pytest.param(m422("findings[2].cve_id", three_findings(cve_id="CVE-2023-\u00001")), id="nul-in-cve-id"),
    pytest.param(m422("findings[2].title", three_findings(title="a\u0000b")), id="nul-in-title"),
    pytest.param(
        m422("findings[2].references[0]", three_findings(references=["https://x/\u0000"])), id="nul-in-reference"
    ),
    pytest.param(m422("image_ref", seed(image_ref="ghcr.io/acme/api:\u0000")), id="nul-in-image-ref"),
    pytest.param(m422("signature_subject", seed(signature_subject="\u0000")), id="nul-in-signature-subject"),
    pytest.param(m422("$", {**seed(), "x\u0000": 1}), id="nul-in-key"),
    case(
        "nul-deeply-nested",
        422,
        "validation_failed",
        "findings" + "[0]" * 1000,
        raw=with_field(seed(), "findings", nested_raw(1000, b'"\\u0000"')),
    ),
    case(
        "nested-1000-in-title",
        422,
        "validation_failed",
        "findings[0].title",
        raw=with_field(seed([finding(title="@@")]), "findings", None, b'"@@"', nested_raw(1000, b'"x"')),
    ),
    # --- 422: Trivy reports
    pytest.param(
        m422(
            "Results[1].Vulnerabilities[0].VulnerabilityID",
            trivy_report([{"PkgName": "openssl", "InstalledVersion": "1", "Severity": "HIGH"}]),
            query=TRIVY_QUERY,
        ),
        id="trivy-missing-vulnerability-id",
    ),
    pytest.param(
        m422(
            "Results[1].Vulnerabilities[1].PkgName",
            trivy_report(
                [
                    trivy_report()["Results"][1]["Vulnerabilities"][0],
                    {"VulnerabilityID": "CVE-2023-9", "InstalledVersion": "1"},
                ]
            ),
            query=TRIVY_QUERY,
        ),
        id="trivy-missing-pkg-name",
    ),
    pytest.param(
        m422(
            "Results[1].Vulnerabilities[0].Severity",
            trivy_report([{"VulnerabilityID": "CVE-2023-9", "PkgName": "x", "Severity": "SEVERE"}]),
            query=TRIVY_QUERY,
        ),
        id="trivy-unknown-severity",
    ),
    pytest.param(
        m422("Results", {**trivy_report(), "Results": {"Target": "x"}}, query=TRIVY_QUERY), id="trivy-results-as-object"
    ),
    # Another schema's findings could be where this reader does not look: read as empty, it would pass the gate.
    pytest.param(m422("SchemaVersion", {**trivy_report(), "SchemaVersion": 3}, query=TRIVY_QUERY), id="trivy-v3"),
    pytest.param(m422("SchemaVersion", {**trivy_report(), "SchemaVersion": 1}, query=TRIVY_QUERY), id="trivy-v1"),
    pytest.param(m422("SchemaVersion", {**trivy_report(), "SchemaVersion": "2"}, query=TRIVY_QUERY), id="trivy-v-text"),
    pytest.param(
        m422(
            "Results[1].Vulnerabilities",
            {
                **trivy_report(),
                "Results": [{"Target": "x"}, {"Target": "y", "Vulnerabilities": {"VulnerabilityID": "CVE-1"}}],
            },
            query=TRIVY_QUERY,
        ),
        id="trivy-vulnerabilities-as-object",
    ),
    pytest.param(
        m422("[0].Vulnerabilities[0].VulnerabilityID", load(LEGACY_MIX), query=TRIVY_QUERY),
        id="trivy-legacy-missing-vulnerability-id",
    ),
    # Where the findings could be and are not read: read as no findings, each of these passed the gate (202 success).
    pytest.param(
        m422("[0].SchemaVersion", [trivy_report(), trivy_report()], query=TRIVY_QUERY), id="trivy-reports-slurped"
    ),
    pytest.param(m422("[0].findings", [seed(), seed()], query=TRIVY_QUERY), id="seed-bodies-slurped"),
    pytest.param(
        m422("$", {"version": "2.1.0", "$schema": "https://json.schemastore.org/sarif-2.1.0.json", "runs": []}),
        id="sarif-not-trivy",
    ),
    pytest.param(m422("$", {"bomFormat": "CycloneDX", "specVersion": "1.5"}, query=TRIVY_QUERY), id="cyclonedx"),
    pytest.param(m422("[0].runs", [{"version": "2.1.0", "runs": []}], query=TRIVY_QUERY), id="sarif-slurped"),
    pytest.param(
        m422("Vulnerabilities", {**trivy_report(), "Vulnerabilities": [{}]}, query=TRIVY_QUERY),
        id="trivy-vulnerabilities-at-the-top",
    ),
    pytest.param(
        m422("results", {k.lower() if k == "Results" else k: v for k, v in trivy_report().items()}, query=TRIVY_QUERY),
        id="trivy-results-lower-case",
    ),
    pytest.param(
        m422(
            "Results[1].vulnerabilities",
            {**trivy_report(), "Results": [{"Target": "x"}, {"Target": "y", "vulnerabilities": [{}]}]},
            query=TRIVY_QUERY,
        ),
        id="trivy-vulnerabilities-lower-case",
    ),
    pytest.param(
        m422("findings", {**trivy_report(), **seed(), "findings": []}, query=TRIVY_QUERY),
        id="trivy-report-with-findings",
    ),
    pytest.param(m422("Results", {**seed(), **trivy_report()}), id="seed-with-results"),
    pytest.param(
        m422("Findings", {**seed(), "Findings": seed()["findings"], "findings": []}), id="findings-spelt-twice"
    ),
    pytest.param(
        m422("image_ref", load(NO_ARTIFACT), query={"commit_sha": SHA, "repo_full_name": REPO}, where="query"),
        id="trivy-empty-artifact-name-no-image-ref",
    ),
    pytest.param(
        m422(
            "image_ref", trivy_report(artifact="   "), query={"commit_sha": SHA, "repo_full_name": REPO}, where="query"
        ),
        id="trivy-blank-artifact-name-no-image-ref",
    ),
    pytest.param(
        m422("commit_sha", trivy_report(), query={"repo_full_name": REPO}, where="query"),
        id="trivy-missing-commit-sha-query",
    ),
    pytest.param(
        m422("commit_sha", trivy_report(), query={**TRIVY_QUERY, "commit_sha": "abc"}, where="query"),
        id="trivy-short-commit-sha-query",
    ),
    pytest.param(
        m422("repo_full_name", trivy_report(), query={"commit_sha": SHA}, where="query"), id="trivy-missing-repo-query"
    ),
    pytest.param(
        m422("signature_status", trivy_report(), query={**TRIVY_QUERY, "signature_status": "yes"}, where="query"),
        id="trivy-bogus-signature-status-query",
    ),
    pytest.param(
        m422("commit_sha", load(LEGACY_MIX)[1:2], query={"repo_full_name": REPO}, where="query"),
        id="trivy-legacy-missing-commit-sha-query",
    ),
    # NUL in the URL is refused for every route before the view runs (app/errors.py refuse_nul_in_url)
    case(
        "trivy-nul-in-image-ref-query",
        400,
        "bad_request",
        body=trivy_report(),
        query={**TRIVY_QUERY, "image_ref": "ghcr.io/acme/api:\x00"},
    ),
    case(
        "trivy-nul-in-signature-issuer-query",
        400,
        "bad_request",
        body=trivy_report(),
        query={**TRIVY_QUERY, "signature_status": "signed", "signature_issuer": "https://x\x00"},
    ),
    case("trivy-nul-in-query-key", 400, "bad_request", body=trivy_report(), query={**TRIVY_QUERY, "x\x00": "1"}),
    # --- 403 / 404
    case("repo-outside-org", 403, "forbidden", body=seed(repo="other/api")),
    case("repo-outside-org-prefix", 403, "forbidden", body=seed(repo="acme-evil/api")),
    case(
        "trivy-repo-outside-org",
        403,
        "forbidden",
        body=trivy_report(),
        query={**TRIVY_QUERY, "repo_full_name": "other/api"},
    ),
    case("unknown-org", 404, "not_found", body=seed(), slug="nope"),
]


@pytest.mark.parametrize("enabled", [True, False], ids=["policy-enabled", "policy-disabled"])
@pytest.mark.parametrize("bad", BAD_BODIES)
def test_bad_upload_is_refused_and_stores_nothing(app: Flask, client: Any, token: str, bad: Bad, enabled: bool) -> None:
    if not enabled:  # the body is still parsed and validated: a bad body gets its 4xx, not a 202
        set_policy(app, "acme", enabled=False)
    before = census(app)
    r = bad.send(client, token)
    assert_error(r, bad.status, bad.code, bad.path, bad.where)
    assert census(app) == before


def test_no_content_type_is_415(app: Flask, client: Any, token: str) -> None:
    before = census(app)
    r = client.post(URL, data=json.dumps(seed()).encode(), headers={"Authorization": f"Bearer {token}"})
    assert "Content-Type" not in r.request.headers
    assert_error(r, 415, "unsupported_media_type")
    assert census(app) == before


def test_every_schema_violation_is_listed(app: Flask, client: Any, token: str) -> None:
    """One 422 names every bad path, not just the first."""
    body = seed([finding(), finding(severity="severe"), finding(cve_id=1)], sha="nope", repo="api")
    before = census(app)
    r = post(client, token, body)
    details = assert_error(r, 422, "validation_failed")["details"]
    paths = {d["path"] for d in details}
    assert {"commit_sha", "repo_full_name", "findings[1].severity", "findings[2].cve_id"} <= paths
    assert census(app) == before


# ---------------------------------------------------------------- size limits


def stream_gzip(prefix: bytes, filler: bytes, megabytes: int, suffix: bytes, members: int = 1) -> bytes:
    """gzip of prefix + filler * 1 MiB * megabytes + suffix, built a MiB at a time (never the whole plaintext)."""
    chunk = filler * (1024 * 1024 // len(filler))
    out = io.BytesIO()
    per_member = max(1, megabytes // members)
    for m in range(members):
        c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        if m == 0:
            out.write(c.compress(prefix))
        for _ in range(per_member):
            out.write(c.compress(chunk))
        if m == members - 1:
            out.write(c.compress(suffix))
        out.write(c.flush())
    return out.getvalue()


BOMB_PREFIX = b'{"image_ref": "ghcr.io/acme/api:1", "commit_sha": "' + SHA.encode() + b'", "title": "'
BOMB_SUFFIX = b'", "repo_full_name": "acme/api", "findings": []}'


@pytest.fixture(scope="module")
def bomb_200mb() -> bytes:
    data = stream_gzip(BOMB_PREFIX, b"0", 200, BOMB_SUFFIX)
    assert len(data) < 512 * 1024  # small on the wire
    return data


@pytest.fixture
def small_app(make_app: MakeApp) -> Flask:
    """The app with FREMFORGE_MAX_UPLOAD_MB=1, as a string the way the environment gives it."""
    return make_app(MAX_UPLOAD_MB="1")


@pytest.fixture
def small(small_app: Flask) -> tuple[Flask, Any, str]:
    make_org(small_app, "acme")
    return small_app, small_app.test_client(), make_token(small_app, "acme")


@pytest.fixture
def inflated(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the bytes the app's gunzip produces (to prove a bomb is not decompressed whole)."""
    produced: list[int] = []
    real = zlib.decompressobj

    class Counting:
        def __init__(self, *a: Any) -> None:
            self._d = real(*a)

        def decompress(self, data: bytes, max_length: int = 0) -> bytes:
            out = self._d.decompress(data, max_length)
            produced.append(len(out))
            return out

        def __getattr__(self, name: str) -> Any:
            return getattr(self._d, name)

    monkeypatch.setattr(
        bodies, "zlib", types.SimpleNamespace(decompressobj=Counting, MAX_WBITS=zlib.MAX_WBITS, error=zlib.error)
    )
    return produced


def test_gzip_bomb_is_413_without_inflating_it(
    small: tuple[Flask, Any, str], bomb_200mb: bytes, inflated: list[int]
) -> None:
    app, client, token = small
    before = census(app)
    r = post(client, token, raw=bomb_200mb, headers={"Content-Encoding": "gzip"})
    assert_error(r, 413, "payload_too_large")
    assert sum(inflated) <= app.config["MAX_UPLOAD_BYTES"] + 1
    assert census(app) == before


def test_gzip_bomb_of_many_members_is_413(small: tuple[Flask, Any, str], inflated: list[int]) -> None:
    app, client, token = small
    bomb = stream_gzip(BOMB_PREFIX, b"0", 64, BOMB_SUFFIX, members=64)  # 64 members of 1 MiB each
    before = census(app)
    r = post(client, token, raw=bomb, headers={"Content-Encoding": "gzip"})
    assert_error(r, 413, "payload_too_large")
    assert sum(inflated) <= app.config["MAX_UPLOAD_BYTES"] + 1
    assert census(app) == before


def test_gzip_bomb_is_413_at_the_default_limit(
    app: Flask, client: Any, token: str, bomb_200mb: bytes, inflated: list[int]
) -> None:
    assert app.config["MAX_UPLOAD_BYTES"] == 64 * 1024 * 1024
    before = census(app)
    r = post(client, token, raw=bomb_200mb, headers={"Content-Encoding": "gzip"})
    body = assert_error(r, 413, "payload_too_large")
    assert "64" in body["message"]
    assert sum(inflated) <= 64 * 1024 * 1024 + 1
    assert census(app) == before


def test_gzip_just_under_the_limit_is_accepted(small: tuple[Flask, Any, str]) -> None:
    _, client, token = small
    title = "0" * (1024 * 1024 - 4096)
    r = post(client, token, seed([finding(title=title)]), gz=True)
    assert r.status_code == 202, r.get_data()[:500]


EMPTY_GZIP_MEMBER = gzip.compress(b"")  # 20 bytes that inflate to nothing: no size limit ever counts them


def many_members(empty: int) -> bytes:
    """A gzip body of one member holding a valid upload followed by `empty` empty members."""
    return gzip.compress(json.dumps(seed([finding()])).encode()) + EMPTY_GZIP_MEMBER * empty


def test_gzip_of_too_many_members_is_413(app: Flask, client: Any, token: str) -> None:
    """400,000 empty members in 8 MB took a worker past gunicorn's timeout (each copied the rest of the body), though
    they inflate to nothing: past MAX_GZIP_MEMBERS the body is refused, naming the limit."""
    before = census(app)
    r = post(client, token, raw=many_members(bodies.MAX_GZIP_MEMBERS), headers={"Content-Encoding": "gzip"})
    body = assert_error(r, 413, "payload_too_large")
    assert f"{bodies.MAX_GZIP_MEMBERS:,} members" in body["message"]
    assert census(app) == before


def test_gzip_of_exactly_the_most_members_is_accepted(client: Any, token: str) -> None:
    r = post(client, token, raw=many_members(bodies.MAX_GZIP_MEMBERS - 1), headers={"Content-Encoding": "gzip"})
    assert r.status_code == 202, r.get_data()[:500]
    assert r.json["accepted"] == 1


def test_gunzip_feeds_its_decompressor_bounded_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """What follows a member's end is copied into the decompressor's unused_data: fed the whole rest of the body, that
    copy was made once per member, quadratic time (no timing here: the pieces fed and left over are measured)."""
    fed: list[int] = []
    left: list[int] = []
    real = zlib.decompressobj

    class Measuring:
        def __init__(self, *a: Any) -> None:
            self._d = real(*a)

        def decompress(self, data: bytes, max_length: int = 0) -> bytes:
            fed.append(len(data))
            out = self._d.decompress(data, max_length)
            left.append(len(self._d.unused_data))
            return out

        def __getattr__(self, name: str) -> Any:
            return getattr(self._d, name)

    monkeypatch.setattr(
        bodies, "zlib", types.SimpleNamespace(decompressobj=Measuring, MAX_WBITS=zlib.MAX_WBITS, error=zlib.error)
    )
    raw = many_members(bodies.MAX_GZIP_MEMBERS - 1)
    assert len(raw) > 128 * 1024
    assert json.loads(bodies.gunzip(raw, 2**20))["findings"]
    assert len(fed) >= bodies.MAX_GZIP_MEMBERS
    assert max(fed) <= 64 * 1024 and max(left) <= 64 * 1024


def test_gzip_members_each_holding_part_of_the_json(client: Any, token: str) -> None:
    """Members larger than the slices gunzip feeds its decompressor, and a JSON document cut across them, read whole."""
    raw = json.dumps(seed([finding(f"CVE-2024-{i:04}", title=os.urandom(400).hex()) for i in range(600)])).encode()
    third = len(raw) // 3 + 1
    members = [gzip.compress(raw[at : at + third]) for at in range(0, len(raw), third)]
    assert all(len(m) > 64 * 1024 for m in members)
    r = post(client, token, raw=b"".join(members), headers={"Content-Encoding": "gzip"})
    assert r.status_code == 202, r.get_data()[:500]
    assert r.json["accepted"] == 600


def test_raw_body_over_the_limit_is_413(small: tuple[Flask, Any, str]) -> None:
    app, client, token = small
    raw = json.dumps(seed([finding(title="0" * (1024 * 1024))])).encode()
    assert len(raw) > app.config["MAX_UPLOAD_BYTES"]
    before = census(app)
    r = post(client, token, raw=raw)
    body = assert_error(r, 413, "payload_too_large")
    assert "1 MiB" in body["message"]
    assert census(app) == before


def test_compressed_body_over_the_limit_is_413(small: tuple[Flask, Any, str]) -> None:
    app, client, token = small
    raw = gzip.compress(os.urandom(1024 * 1024 + 10))  # random bytes do not compress: > 1 MiB on the wire
    assert len(raw) > app.config["MAX_UPLOAD_BYTES"]
    before = census(app)
    r = post(client, token, raw=raw, headers={"Content-Encoding": "gzip"})
    assert_error(r, 413, "payload_too_large")
    assert census(app) == before


def test_raw_body_over_the_default_limit_is_413(app: Flask, client: Any, token: str) -> None:
    raw = b'{"findings": ["' + b"0" * (64 * 1024 * 1024) + b'"]}'
    before = census(app)
    r = post(client, token, raw=raw)
    assert_error(r, 413, "payload_too_large")
    assert census(app) == before


def test_chunked_body_over_the_limit_is_413(small: tuple[Flask, Any, str]) -> None:
    """No Content-Length (Transfer-Encoding: chunked, as gunicorn presents it): the limit still holds."""
    app, _, token = small
    raw = json.dumps(seed([finding(title="0" * (2 * 1024 * 1024))])).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    before = census(app)
    r = post_chunked(app, URL, io.BytesIO(raw), headers)
    assert_error(r, 413, "payload_too_large")
    assert census(app) == before


@pytest.mark.parametrize("extra, status", [(0, 202), (1, 413)])
def test_chunked_body_of_exactly_the_limit_is_accepted(small: tuple[Flask, Any, str], extra: int, status: int) -> None:
    """A chunked body is held to the limit, not cut at it: exactly the limit is a body like any other."""
    app, _, token = small
    raw = json.dumps(seed([finding()])).encode()
    raw += b" " * (app.config["MAX_UPLOAD_BYTES"] - len(raw) + extra)  # JSON may end in whitespace
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    r = post_chunked(app, URL, io.BytesIO(raw), headers)
    assert r.status_code == status, r.get_data()[:300]


# The routes that parse their body whole, each with a JSON body of tiny values just past its own limit: orjson's tree
# of such a body takes about 34 times its bytes (64 MiB took a worker past 2 GiB).
WHOLE_BODY_ROUTES = [
    ("PUT", "/api/v1/orgs/acme/image-scans/settings", "", bodies.SMALL_BODY_BYTES),
    ("POST", "/api/v1/orgs/acme/exceptions", "", bodies.SMALL_BODY_BYTES),
    ("POST", "/api/v1/orgs/acme/exceptions/import", "?format=openvex", bodies.DOCUMENT_BODY_BYTES),
    ("POST", "/api/v1/orgs/acme/exceptions/import", "?format=trivyignore", bodies.DOCUMENT_BODY_BYTES),
    ("POST", "/api/v1/orgs/acme/audit/verify", "", bodies.DOCUMENT_BODY_BYTES),  # read as sent: never gunzipped
]


def tiny_values(size: int) -> bytes:
    """A JSON object of `size` bytes or a little more, nearly all of it `{}` values."""
    count = size // 3 + 1
    return b'{"x":[' + b",".join([b"{}"] * count) + b"]}"


@pytest.mark.parametrize(
    "method, path, query, limit, how",
    [
        (*route, how)
        for route in WHOLE_BODY_ROUTES
        for how in ("raw", "gzip", "chunked")
        if not (how == "gzip" and route[1].endswith("/verify"))  # a checkpoint file is read as sent, never gunzipped
    ],
)
def test_routes_that_parse_whole_bodies_have_their_own_small_limit(
    app: Flask, client: Any, method: str, path: str, query: str, limit: int, how: str
) -> None:
    make_org(app, "acme")
    token = make_token(app, "acme", ALL_SCOPES)
    raw = tiny_values(limit + 1)
    assert limit < len(raw) < app.config["MAX_UPLOAD_BYTES"]  # under the upload limit, over the route's
    content_type = "text/plain" if "trivyignore" in query else "application/json"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": content_type}
    before = census(app)
    if how == "chunked":
        r = post_chunked(app, path + query, io.BytesIO(raw), headers, method)
    else:
        if how == "gzip":
            raw, headers = gzip.compress(raw), {**headers, "Content-Encoding": "gzip"}
            assert len(raw) < 64 * 1024  # a few KiB on the wire
        r = client.open(path + query, method=method, data=raw, headers=headers)
    body = assert_error(r, 413, "payload_too_large")
    assert f"{limit / 2**20:g} MiB" in body["message"]
    assert census(app) == before


@pytest.mark.parametrize("method, path, query, limit", WHOLE_BODY_ROUTES[:1])
def test_a_whole_body_within_its_route_limit_is_read(
    app: Flask, client: Any, method: str, path: str, query: str, limit: int
) -> None:
    make_org(app, "acme")
    token = make_token(app, "acme", ALL_SCOPES)
    raw = b'{"block_action": "block_pull"}'
    raw += b" " * (limit - len(raw))
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    r = client.open(path + query, method=method, data=raw, headers=headers)
    assert r.status_code == 200 and r.json["block_action"] == "block_pull", r.json


@pytest.mark.parametrize("method, path, query, limit", WHOLE_BODY_ROUTES[:4])
def test_every_gunzipping_route_counts_members(
    app: Flask, client: Any, method: str, path: str, query: str, limit: int
) -> None:
    make_org(app, "acme")
    token = make_token(app, "acme", ALL_SCOPES)
    content_type = "text/plain" if "trivyignore" in query else "application/json"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": content_type, "Content-Encoding": "gzip"}
    raw = gzip.compress(b"{}") + EMPTY_GZIP_MEMBER * bodies.MAX_GZIP_MEMBERS
    before = census(app)
    r = client.open(path + query, method=method, data=raw, headers=headers)
    body = assert_error(r, 413, "payload_too_large")
    assert f"{bodies.MAX_GZIP_MEMBERS:,} members" in body["message"]
    assert census(app) == before


def post_chunked(app: Flask, path: str, stream: io.BytesIO, headers: dict[str, str], method: str = "POST") -> Any:
    """POST `stream` as gunicorn presents a chunked body (no Content-Length, the input terminated); the answer."""
    environ = EnvironBuilder(
        path=path, method=method, input_stream=stream, headers={**headers, "Transfer-Encoding": "chunked"}
    ).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ["wsgi.input_terminated"] = True
    app_iter, status, answer_headers = run_wsgi_app(app, environ, buffered=True)
    return app.response_class(b"".join(app_iter), status=status, headers=answer_headers)


class BrokenChunks(io.BytesIO):
    """A request body whose chunked framing gunicorn finds broken as it is read (a chunk size of `zz`)."""

    def read(self, *_args: Any) -> bytes:
        raise InvalidChunkSize(b"zz")

    readline = read1 = read

    def readinto(self, *_args: Any) -> int:
        raise InvalidChunkSize(b"zz")


def body_headers(token: str, path: str) -> dict[str, str]:
    """Headers that get a body read at `path`: the API's token, a webhook's (wrongly signed) delivery, an admin form."""
    return {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json" if "admin" not in path else "application/x-www-form-urlencoded",
        "X-GitHub-Event": "ping",
        "X-GitHub-Delivery": "d-1",
        "X-Hub-Signature-256": "sha256=" + "0" * 64,
    }


@pytest.mark.parametrize("path", [URL, "/webhooks/github", "/admin/orgs/acme/code-security/image-scanning/settings"])
def test_a_body_with_broken_chunked_framing_is_400_not_500(make_app: Any, path: str) -> None:
    app = make_app(GITHUB_WEBHOOK_SECRET="webhook-secret")
    make_org(app)
    token = make_token(app)
    headers = body_headers(token, path)
    before = census(app)
    r = post_chunked(app, path, BrokenChunks(), headers)
    assert r.status_code == 400, r.get_data(as_text=True)[:300]
    assert "chunked transfer encoding is malformed" in r.get_data(as_text=True)
    if path == URL:
        assert_error(r, 400, "bad_request")
    assert census(app) == before


class Stalled(io.BytesIO):
    """A request body as gunicorn gives it when the client stops sending early: the bytes sent, then the end."""


def post_short(app: Flask, path: str, body: bytes, announced: int, headers: dict[str, str]) -> Any:
    """POST `body` announcing `announced` bytes in Content-Length, the input terminated as gunicorn marks it (its
    stream just ends where the client stopped); the answer."""
    environ = EnvironBuilder(path=path, method="POST", input_stream=Stalled(body), headers=headers).get_environ()
    environ["CONTENT_LENGTH"] = str(announced)
    environ["wsgi.input_terminated"] = True
    app_iter, status, answer_headers = run_wsgi_app(app.wsgi_app, environ, buffered=True)
    return app.response_class(b"".join(app_iter), status=status, headers=answer_headers)


@pytest.mark.parametrize("path", [URL, "/webhooks/github", "/admin/orgs/acme/code-security/image-scanning/settings"])
def test_a_body_shorter_than_its_content_length_is_400_and_nothing_is_stored(make_app: Any, path: str) -> None:
    """A complete JSON document, then the client stops though its Content-Length promised more: not a whole body."""
    app = make_app(GITHUB_WEBHOOK_SECRET="webhook-secret")
    make_org(app)
    token = make_token(app)
    body = json.dumps(seed([finding()])).encode() if "admin" not in path else b"block_action=none"
    headers = body_headers(token, path)
    before = census(app)
    r = post_short(app, path, body, len(body) + 100, headers)
    assert r.status_code == 400, r.get_data(as_text=True)[:300]
    assert f"The body ended after {len(body)} of the {len(body) + 100} bytes" in r.get_data(as_text=True)
    if path == URL:
        assert_error(r, 400, "bad_request")
    assert census(app) == before
    upload = json.dumps(seed([finding()])).encode()
    whole = post_short(app, URL, upload, len(upload), {**headers, "Content-Type": "application/json"})
    assert whole.status_code == 202, whole.get_data(as_text=True)[:300]  # the same way in, whole: stored


# ---------------------------------------------------------------- accepted edge cases


@pytest.mark.parametrize("severity", ["HIGH", "High", "hIgH", "high", "CRITICAL", "Unknown", "LOW", "Medium"])
def test_severity_in_any_letter_case_is_accepted(app: Flask, client: Any, token: str, severity: str) -> None:
    r = post(client, token, seed([finding(severity=severity)]))
    assert r.status_code == 202, r.json
    assert r.json["accepted"] == 1
    assert r.json["severity_counts"][severity.lower()] == 1
    scan = client.get(
        f"/api/v1/orgs/acme/image-scans/{r.json['scan_run_id']}", headers={"Authorization": f"Bearer {token}"}
    )
    assert scan.json["findings"][0]["severity"] == severity.lower()


@pytest.mark.parametrize(
    "body,query",
    [
        pytest.param(seed(sha=SHA.upper()), None, id="sha-upper-case"),
        pytest.param(seed(repo="ACME/api"), None, id="repo-owner-other-case"),
        pytest.param(seed([]), None, id="no-findings"),
        pytest.param(seed([finding(installed=None)]), None, id="installed-version-null-is-empty"),
        pytest.param(seed([finding(severity=None)]), None, id="severity-null-is-unknown"),
        pytest.param(seed(signature_status="SIGNED"), None, id="signature-status-any-case"),
        pytest.param(
            trivy_report([{"VulnerabilityID": "CVE-1", "PkgName": "x", "InstalledVersion": None}]),
            TRIVY_QUERY,
            id="trivy-installed-version-null",
        ),
        pytest.param(seed([finding(fixed="")]), None, id="fixed-version-empty"),
        pytest.param(seed(title="\\u0000 as text"), None, id="escaped-backslash-u0000-is-not-nul"),
        pytest.param(
            seed(signature_status="signed", signature_issuer="https://token.actions.githubusercontent.com"),
            None,
            id="signed",
        ),
        pytest.param(trivy_report(), TRIVY_QUERY, id="trivy"),
        pytest.param(
            trivy_report([{"VulnerabilityID": "GHSA-xxxx", "PkgName": "x", "InstalledVersion": "1"}]),
            TRIVY_QUERY,
            id="trivy-missing-severity",
        ),
        pytest.param({**trivy_report(), "Results": None}, TRIVY_QUERY, id="trivy-results-null"),
        pytest.param(
            {"SchemaVersion": 2, "ArtifactName": "ghcr.io/acme/api:1"},
            {"commit_sha": SHA, "repo_full_name": REPO},
            id="trivy-no-results-artifact-name-as-image-ref",
        ),
        pytest.param(load(LEGACY_MIX)[1:], TRIVY_QUERY, id="trivy-legacy"),
        pytest.param([], TRIVY_QUERY, id="trivy-legacy-empty"),
        pytest.param(
            {**trivy_report(), "Results": [{"Target": None, "Vulnerabilities": None}]}, TRIVY_QUERY, id="trivy-nulls"
        ),
    ],
)
def test_edge_cases_that_are_valid(app: Flask, client: Any, token: str, body: Any, query: Any) -> None:
    r = post(client, token, body, query=query)
    assert r.status_code == 202, r.json


def test_utf8_byte_order_mark_is_tolerated(app: Flask, client: Any, token: str) -> None:
    r = post(client, token, raw=b"\xef\xbb\xbf" + json.dumps(seed()).encode())
    assert r.status_code == 202, r.json


def test_a_huge_bad_body_gets_a_bounded_answer(app: Flask, client: Any, token: str) -> None:
    before = census(app)
    r = post(client, token, seed([finding(severity="severe")] * 5000))
    body = assert_error(r, 422, "validation_failed", "findings[0].severity")
    assert len(body["details"]) == 100 and "4999 more" in body["message"]
    assert census(app) == before


def test_disabled_policy_accepts_and_drops_a_valid_body(app: Flask, client: Any, token: str) -> None:
    set_policy(app, "acme", enabled=False)
    before = census(app)
    for kwargs in ({"body": seed()}, {"body": trivy_report(), "query": TRIVY_QUERY}, {"body": seed(), "gz": True}):
        r = post(client, token, **kwargs)
        assert r.status_code == 202, r.json
        assert r.json == {"accepted": 0, "status": "disabled"}
    assert census(app) == before


def test_same_finding_twice_is_stored_once(app: Flask, client: Any, token: str) -> None:
    before = census(app)
    r = post(client, token, seed([finding(), finding(), finding(target="/usr/lib/libssl.so.3")]))
    assert r.status_code == 202, r.json
    assert (r.json["accepted"], r.json["duplicates"]) == (2, 1)
    after = census(app)
    assert after["findings"] - before["findings"] == 2
    assert after["scan_runs"] - before["scan_runs"] == 1


def test_duplicates_keep_every_copys_vendor_ids_and_references(app: Flask, client: Any, token: str) -> None:
    """HEAD kept the first copy's: an exception or a search by the second copy's Debian id missed the finding."""
    first = finding(vendor_ids=["DSA-1"], references=["https://a.example"], primary_url=None, title=None)
    second = finding(vendor_ids=["DSA-2", "DSA-1"], references=["https://b.example"], primary_url="https://p.example")
    many = finding(vendor_ids=[f"DSA-{i}" for i in range(3, 66)])  # 63 more: the union past the cap of 64
    r = post(client, token, seed([first, second]))
    assert r.status_code == 202 and (r.json["accepted"], r.json["duplicates"]) == (1, 1), r.json
    stored = client.get(
        f"/api/v1/orgs/acme/image-scans/{r.json['scan_run_id']}", headers={"Authorization": f"Bearer {token}"}
    ).json["findings"][0]
    assert stored["vendor_ids"] == ["DSA-1", "DSA-2"]
    assert stored["references"] == ["https://a.example", "https://b.example"]
    assert stored["primary_url"] == "https://p.example" and stored["truncated"] is False
    r = post(client, token, seed([first, second, many], image_ref="ghcr.io/acme/many:1"))
    assert r.status_code == 202, r.json
    stored = client.get(
        f"/api/v1/orgs/acme/image-scans/{r.json['scan_run_id']}", headers={"Authorization": f"Bearer {token}"}
    ).json["findings"][0]
    assert len(stored["vendor_ids"]) == 64 and stored["vendor_ids"][:2] == ["DSA-1", "DSA-2"]
    assert stored["truncated"] is True
    refs = [f"https://r{i}.example" for i in range(65)]  # one copy cut to 64: said in either order (it is hashed)
    for order in (
        [finding(references=refs[:64]), finding(references=refs)],
        [finding(references=refs), finding(references=refs[:64])],
    ):
        r = post(client, token, seed(order, image_ref="ghcr.io/acme/cut:1"))
        assert r.status_code == 202, r.json
        stored = client.get(
            f"/api/v1/orgs/acme/image-scans/{r.json['scan_run_id']}", headers={"Authorization": f"Bearer {token}"}
        ).json["findings"][0]
        assert (len(stored["references"]), stored["truncated"]) == (64, True)


def test_duplicates_differing_only_in_severity_case_collapse(app: Flask, client: Any, token: str) -> None:
    r = post(client, token, seed([finding(severity="HIGH"), finding(severity="high")]))
    assert r.status_code == 202, r.json
    assert (r.json["accepted"], r.json["duplicates"]) == (1, 1)


def test_an_empty_target_and_no_target_are_one_finding(app: Flask, client: Any, token: str) -> None:
    r = post(client, token, seed([finding(target=""), finding(severity="critical")]))
    assert r.status_code == 202 and (r.json["accepted"], r.json["duplicates"]) == (1, 1), r.json
    assert r.json["severity_counts"]["critical"] == 1  # the most severe copy kept


def test_duplicates_keep_the_most_severe_severity_and_a_fixed_version(app: Flask, client: Any, token: str) -> None:
    """Today the first copy wins: a low without a fix would hide the critical copy from the gate."""
    set_policy(app, "acme", block_action="block_pull")
    copies = [
        finding(severity="low", fixed=None),
        finding(severity="CRITICAL", fixed=""),
        finding(severity="unknown", fixed="3.0.7"),
        finding(severity="high", fixed="3.0.9"),
    ]
    r = post(client, token, seed([*copies, finding("CVE-2024-0002", severity="low")]))
    assert r.status_code == 202, r.json
    assert (r.json["accepted"], r.json["duplicates"]) == (2, 3)
    assert r.json["severity_counts"] == {"critical": 1, "high": 0, "medium": 0, "low": 1, "unknown": 0}
    assert (r.json["fixable"], r.json["status"]) == (2, "failure")
    scan = client.get(
        f"/api/v1/orgs/acme/image-scans/{r.json['scan_run_id']}", headers={"Authorization": f"Bearer {token}"}
    ).json
    kept = next(f for f in scan["findings"] if f["cve_id"] == "CVE-2023-1234")
    assert (kept["severity"], kept["fixed_version"]) == ("critical", "3.0.7")  # the first non-empty one


def test_image_ref_is_bounded_in_utf8_bytes(app: Flask, client: Any, token: str) -> None:
    before = census(app)
    r = post(client, token, seed(image_ref="镜" * 1024))  # 1024 characters, 3072 bytes: too big for an index row
    assert_error(r, 422, "validation_failed", "image_ref")
    assert census(app) == before
    assert post(client, token, seed(image_ref="镜" * 341)).status_code == 202


def test_repository_names_are_case_insensitive(app: Flask, client: Any, token: str) -> None:
    set_policy(app, "acme", block_action="block_pull")
    first = post(client, token, seed([finding(severity="critical")], image_ref="a", repo="Acme/API"))
    second = post(client, token, seed([finding(severity="low")], image_ref="b", repo="acme/api"))
    assert first.status_code == second.status_code == 202
    assert second.json["commit_status"]["state"] == "failure"  # one commit, two images: still red
    listed = client.get("/api/v1/orgs/acme/image-scans?repo=ACME/Api", headers={"Authorization": f"Bearer {token}"})
    assert [s["repo_full_name"] for s in listed.json["items"]] == ["acme/api", "acme/api"]


# ---------------------------------------------------------------- repository names: GitHub's rules

GOOD_REPOS = [
    "acme-corp/api",
    "a/b",
    "A1-b2-C3/API",
    "0day/x",
    "o" * 39 + "/n",
    "acme-corp/" + "n" * 100,
    "acme-corp/.github",
    "acme-corp/.a",
    "acme-corp/..a",
    "acme-corp/a..",
    "acme-corp/a.b-c_d",
    "acme-corp/_",
    "acme-corp/-",
]
BAD_REPOS = [
    "acme",  # no name
    "acme/",
    "/api",
    "acme/api/x",
    "-acme/api",  # owner: no leading or trailing hyphen, no double hyphen, at most 39
    "acme-/api",
    "ac--me/api",
    "o" * 40 + "/api",
    "ac_me/api",
    "ac.me/api",
    "ac me/api",
    "\u00e1cme/api",
    "\uff41cme/api",  # a full-width letter
    "acme/.",  # name: never . or .., at most 100, letters, digits, . - _
    "acme/..",
    "acme/" + "n" * 101,
    "acme/a b",
    "acme/\u00e4",
    "acme/a%2Fb",
    "acme/a\n",
    "acme/a:b",
    "",
]


@pytest.mark.parametrize("repo", BAD_REPOS)
def test_repository_names_outside_githubs_rules_are_422(app: Flask, client: Any, token: str, repo: str) -> None:
    before = census(app)
    assert_error(post(client, token, seed(repo=repo)), 422, "validation_failed", "repo_full_name")
    query = {**TRIVY_QUERY, "repo_full_name": repo}
    assert_error(post(client, token, trivy_report(), query=query), 422, "validation_failed", "repo_full_name", "query")
    listed = client.get("/api/v1/orgs/acme/image-scans", query_string={"repo": repo}, headers=_auth(token))
    assert_error(listed, 422, "validation_failed", "repo", "query")
    assert census(app) == before


@pytest.mark.parametrize("repo", GOOD_REPOS)
def test_repository_names_within_githubs_rules_are_accepted(app: Flask, client: Any, repo: str) -> None:
    owner = repo.split("/")[0]
    make_org(app, "gh", github_login=owner)
    token = make_token(app, "gh")
    r = post(client, token, seed(repo=repo), slug="gh")
    assert r.status_code == 202, r.json
    r = post(client, token, trivy_report(), slug="gh", query={**TRIVY_QUERY, "repo_full_name": repo})
    assert r.status_code == 202, r.json
    listed = client.get("/api/v1/orgs/gh/image-scans", query_string={"repo": repo}, headers=_auth(token))
    assert listed.status_code == 200, listed.json
    assert [s["repo_full_name"] for s in listed.json["items"]] == [repo.lower()] * 2


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    "raw, said",
    [
        # gzip sent without its Content-Encoding: HEAD said "str is not valid UTF-8: surrogates not allowed"
        (
            gzip.compress(json.dumps(seed()).encode()),
            "not UTF-8 text (byte 1): it starts as gzip does, so send it with",
        ),
        (b'{"image_ref": "\xff"}', "The body is not UTF-8 text (byte 15)."),
    ],
)
def test_a_body_that_is_not_utf8_says_so(app: Flask, client: Any, token: str, raw: bytes, said: str) -> None:
    r = post(client, token, raw=raw)
    assert r.status_code == 400 and r.json["error"] == "malformed_json", r.json
    assert said in r.json["message"]
    assert "surrogates not allowed" not in r.json["message"]


def test_a_finding_that_is_not_utf8_is_named_by_its_byte(app: Flask, client: Any, token: str) -> None:
    """Only the piece that failed is decoded to find the byte (HEAD: the whole body), at its place in the body."""
    body = json.dumps(seed([finding(title=f"t{i}") for i in range(300)])).encode().replace(b'"t250"', b'"t\xff"')
    r, at = post(client, token, raw=body), body.index(b"\xff")
    assert r.status_code == 400, r.json
    assert r.json["message"] == f"The body is not UTF-8 text (byte {at})."


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=iso-8859-1", "application/json; charset=UTF-8", "application/json"]
)
def test_a_charset_is_ignored_as_rfc_8259_says(app: Flask, client: Any, token: str, content_type: str) -> None:
    """JSON is UTF-8, and "adding [a charset] really has no effect on compliant recipients": clients that label UTF-8
    as ISO-8859-1 (older HTTP stacks do) are answered as any other."""
    r = post(client, token, seed(), content_type=content_type)
    assert r.status_code == 202, r.json


def test_a_blank_image_ref_in_the_query_says_so(app: Flask, client: Any, token: str) -> None:
    r = post(client, token, trivy_report(), query={**TRIVY_QUERY, "image_ref": " "})
    assert r.status_code == 422, r.json
    detail = next(d for d in r.json["details"] if d["path"] == "image_ref")
    assert detail["message"] == "must not be blank" and detail["in"] == "query"  # HEAD: a regular expression
    r = client.get(
        "/api/v1/orgs/acme/image-scans",
        query_string={"limit": "9" * 5000},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 422 and "Unable to parse" not in r.json["message"], r.json


@pytest.mark.parametrize(
    "path, query",
    [
        ("/api/v1/orgs/acme/image-scans", "limit=1&limit=5000"),
        ("/api/v1/orgs/acme/image-scans", "status=failure&status=success"),
        ("/api/v1/orgs/acme/image-scans/1/findings", "limit=1&limit=2"),
        ("/api/v1/orgs/acme/images", "repo=acme/api&repo=acme/web"),
        ("/api/v1/orgs/acme/advisories/CVE-2024-0001/images", "limit=1&limit=2"),
        ("/api/v1/orgs/acme/exceptions", "state=active&state=revoked"),
    ],
)
def test_a_list_query_parameter_given_twice_is_422_not_the_first_taken(
    app: Flask, client: Any, token: str, path: str, query: str
) -> None:
    """Review: `?status=failure&status=success` filtered on failure and answered an empty page as if that were all;
    `?limit=1&limit=5000` one item. Which one is meant is unclear: refused as an upload's query is."""
    name = query.split("=", 1)[0]
    r = client.get(f"{path}?{query}", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 422, r.get_data(as_text=True)
    assert r.json["details"] == [
        {"path": name, "code": "duplicate_key", "message": bodies.TWICE_IN_QUERY, "in": "query"}
    ], r.json
    single = client.get(f"{path}?{query.split('&', 1)[0]}", headers={"Authorization": f"Bearer {token}"})
    assert single.status_code in (200, 404), single.get_data(as_text=True)  # 404: no scan 1 here
