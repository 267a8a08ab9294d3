"""The OpenAPI document at /api/v1/openapi.json is true: to the routes, to OpenAPI 3.1, and to what the API answers.

The last part runs schemathesis in-process against the WSGI app, on every operation, with valid tokens,
positive and negative data, and fixed seeds; plus hand-picked requests for the paths random data rarely reaches
(a 202 upload, an existing scan, a disabled policy).
"""

from __future__ import annotations

import gzip
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import jsonschema_rs
import pytest
import schemathesis
from flask import Flask
from schemathesis.checks import not_a_server_error
from schemathesis.core import NOT_SET
from schemathesis.core.result import Ok
from schemathesis.engine import events
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.exceptions import encode_cursor as exception_cursor
from app.findings.queries import encode_cursor
from app.openapi import document
from tests.conftest import WEBHOOK_SECRET
from tests.factories import ALL_SCOPES, SHA, SHA2, finding, make_org, make_token, post, seed, set_policy

API_PREFIX = "/api/v1"
# Spec section 2: "the OpenAPI 3 document of every route": all but the admin pages (HTML forms for a browser) and
# static files.
UNDOCUMENTED_PREFIXES = ("/admin", "/static/")
IGNORED_METHODS = {"HEAD", "OPTIONS"}
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
CHECK_NAMES = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    # and the other way round: what the document forbids, the API refuses
    "negative_data_rejection",
]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
SEED = 20240601
MAX_EXAMPLES = 100  # per operation and phase
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"


# ---------------------------------------------------------------- the document and the routes


def _openapi_path(rule: str) -> str:
    """`/orgs/<slug>/x/<int:scan_run_id>` -> `/orgs/{slug}/x/{scan_run_id}`."""
    return re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule)


def _routes(app: Flask) -> set[tuple[str, str]]:
    return {
        (method, _openapi_path(rule.rule))
        for rule in app.url_map.iter_rules()
        if not rule.rule.startswith(UNDOCUMENTED_PREFIXES)
        for method in rule.methods or ()
        if method not in IGNORED_METHODS
    }


def _documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item if method in HTTP_METHODS}


def test_translating_flask_rules():
    assert (
        _openapi_path("/api/v1/orgs/<slug>/image-scans/<int:scan_run_id>")
        == "/api/v1/orgs/{slug}/image-scans/{scan_run_id}"
    )
    assert _openapi_path("/api/v1/openapi.json") == "/api/v1/openapi.json"


def test_document_is_true_to_the_routes(app, client):
    served = client.get("/api/v1/openapi.json")
    assert served.status_code == 200
    assert served.mimetype == "application/json"
    assert served.json == document()

    routes = _routes(app)
    documented = _documented(served.json)
    assert routes, "no /api/v1 routes found"
    assert sorted(routes - documented) == [], "routes missing from the OpenAPI document"
    assert sorted(documented - routes) == [], "documented operations without a route"
    for path, item in served.json["paths"].items():
        assert not path.startswith(UNDOCUMENTED_PREFIXES), path
        names = set(re.findall(r"{([^{}]+)}", path))
        for method, op in item.items():
            if method not in HTTP_METHODS:
                continue
            declared = {p["name"] for p in op.get("parameters", []) + item.get("parameters", []) if p["in"] == "path"}
            assert declared == names, f"{method.upper()} {path}: path parameters {declared} != {names}"


def test_operation_ids_are_unique(client):
    doc = client.get("/api/v1/openapi.json").json
    ids = [op["operationId"] for item in doc["paths"].values() for m, op in item.items() if m in HTTP_METHODS]
    assert len(ids) == len(set(ids)), ids


# ---------------------------------------------------------------- the document is valid OpenAPI 3.1


def test_document_is_valid_openapi_3_1(app):
    doc = document()
    assert doc["openapi"].startswith("3.1.")
    try:
        from openapi_spec_validator import validate  # type: ignore[import-not-found]
    except ImportError:
        validate = None
    if validate is not None:
        validate(doc)
    # schemathesis checks the document against the OpenAPI 3.1 meta-schema, and resolves every operation
    # with every $ref (it leaves out the operation serving the document itself).
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    schema.validate()
    loaded, errors = [], []
    for result in schema.get_all_operations():
        if isinstance(result, Ok):
            loaded.append(result.ok().label)
        else:
            errors.append(result.err())
    assert errors == []
    assert sorted(loaded) == sorted(f"{m} {p}" for m, p in _documented(doc) if p != "/api/v1/openapi.json")
    # every component is valid JSON Schema 2020-12, and every $ref points to one
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(doc)))
    assert refs <= set(doc["components"]["schemas"]), refs - set(doc["components"]["schemas"])
    for name, component in doc["components"]["schemas"].items():
        try:
            jsonschema_rs.meta.validate({"$schema": DRAFT_2020_12, **component})
        except jsonschema_rs.ValidationError as exc:
            pytest.fail(f"components.schemas.{name} is not valid JSON Schema 2020-12: {exc}")


# ---------------------------------------------------------------- schemathesis against the app


@pytest.fixture
def acme(app: Flask) -> dict[str, Any]:
    """Org acme (GitHub login acme), a token with every scope, and a few stored scans to read."""
    make_org(app, "acme", github_login="acme")
    token = make_token(app, "acme", ALL_SCOPES)
    client = app.test_client()
    scan_ids = []
    for body in (
        seed(),
        seed(
            image_ref="ghcr.io/acme/web:2",
            sha=SHA2,
            repo="acme/web",
            findings=[finding(), finding("GHSA-xxxx-yyyy-zzzz", "CRITICAL", fixed=None)],
        ),
    ):
        r = post(client, token, body)
        assert r.status_code == 202, r.json
        scan_ids.append(r.json["scan_run_id"])
    exception_ids = []
    for advisory in ("CVE-2023-1234", "GHSA-xxxx-yyyy-zzzz"):
        r = client.post(
            EXCEPTIONS.format(slug="acme"),
            json={"advisory_id": advisory, "reason": "accepted for the test", "expires_at": in_days(30)},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 201, r.json
        exception_ids.append(r.json["id"])
    r = client.get(IMAGES.format(slug="acme"), headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.json
    image_ids = [i["image_id"] for i in r.json["items"]]
    return {
        "token": token,
        "scan_ids": scan_ids,
        "exception_ids": exception_ids,
        "image_ids": image_ids,
        "client": client,
    }


def in_days(days: int) -> str:
    """An expiry `days` from now, as ISO 8601 (UTC)."""
    return (datetime.now(UTC) + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _config(acme: dict[str, Any], checks_off: frozenset[str] = frozenset()) -> schemathesis.Config:
    # (Not per operation in the config's "operations": with such an entry schemathesis runs every operation,
    # whatever the schema's include() filter.)
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "suppress-health-check": ["all"],
            "headers": {"Authorization": f"Bearer {acme['token']}"},
            "dictionaries": {
                "scans": {"values": acme["scan_ids"]},
                "repos": {"values": ["acme/api", "acme/web", "ACME/api"]},
                "exceptions": {"values": acme["exception_ids"]},
                "images": {"values": acme["image_ids"]},
                # ids the fixture's scans have (as their own id, or as a prefix), in any letter case
                "advisories": {"values": ["CVE-2023-1234", "ghsa-xxxx-yyyy-zzzz", "CVE-2023-*", "cve-1999-0001"]},
                # expiries an exception may have: in the future, at most 365 days ahead
                "expiries": {"values": [in_days(1), in_days(90), in_days(364), in_days(7)[:10]]},
            },
            "parameters": {
                # The org is always acme (its token): unknown orgs and other tokens are hand-picked below.
                "path.slug": "acme",
                "path.scan_run_id": {"dictionary": "scans", "probability": 0.5},
                "path.exception_id": {"dictionary": "exceptions", "probability": 0.5},
                "path.image_id": {"dictionary": "images", "probability": 0.5},
                "path.advisory_id": {"dictionary": "advisories", "probability": 0.5},
                "body.expires_at": {"dictionary": "expiries", "probability": 0.7},
                "body.repo_full_name": {"dictionary": "repos", "probability": 0.7},
                "query.repo_full_name": {"dictionary": "repos", "probability": 0.7},
                # schemathesis would send `Content-Encoding: gzip` over a body it does not compress; gzip is
                # hand-picked below instead.
                "header.Content-Encoding": "identity",
            },
            "generation": {
                "mode": "all",  # positive and negative data
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
                "with-security-parameters": False,
            },
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": False},
            },
            "checks": {"enabled": False, **{name: {"enabled": name not in checks_off} for name in CHECK_NAMES}},
            "workers": 1,
        }
    )


def _short(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _describe(recorder: Any, failure: Any, case_id: str) -> str:
    case = recorder.cases[case_id].value
    interaction = recorder.interactions.get(case_id)
    response = interaction.response if interaction is not None else None
    status = response.status_code if response is not None else "no response"
    content = response.content if response is not None else b""
    headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    body = "" if case.body is NOT_SET else f" body={_short(case.body)}"
    return (
        f"{case.operation.label}: {failure.title}: {_short(failure.message, 600)}\n"
        f"    sent {case.method} {case.formatted_path} query={_short(case.query)} headers={_short(headers)}"
        f"{body}\n    got {status} {_short(content)}"
    )


def _run(schema: Any) -> tuple[dict[str, dict[int, int]], list[str]]:
    """Run every phase on the schema's operations; the status codes seen per operation, and every failure."""
    seen: dict[str, dict[int, int]] = {}
    failures: list[str] = []
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            statuses = seen.setdefault(recorder.label, {})
            for interaction in recorder.interactions.values():
                if interaction.response is not None:
                    code = interaction.response.status_code
                    statuses[code] = statuses.get(code, 0) + 1
            for case_id, checks in recorder.checks.items():
                for check in checks:
                    if check.failure_info is not None:
                        failures.append(_describe(recorder, check.failure_info.failure, case_id))
        elif isinstance(event, events.NonFatalError):
            failures.append(f"{event.label}: error: {event.value!r}")
        elif isinstance(event, events.FatalError):
            raise event.exception
    return seen, list(dict.fromkeys(failures))


# The operations fuzzed together, each group a test of its own (so pytest-xdist spreads them), one operation after
# the other in the order given; every documented operation but the document itself is in one. Settings are changed
# last, so the others run under the default policy rather than one fuzzing turned off.
FUZZED = {
    "uploads": ("uploadFindings",),
    "scans": ("listScans", "getScan", "listFindings"),
    "exceptions": ("listExceptions", "createException", "revokeException", "importExceptions"),
    "insights": ("listImages", "getImage", "getImageTrend", "getTrend", "searchAdvisory"),
    "chain-and-settings": (  # in this order: the first checkpoint makes the key the checks need; settings last
        "getCheckpoint",
        "verifyChain",
        "verifyChainAgainstCheckpoints",
        "healthz",
        "readyz",
        "home",
        "metrics",
        "receiveWebhook",
        "getSettings",
        "putSettings",
    ),
}
NOT_FUZZED = {"getOpenApi"}  # the document itself: checked above
# The Trivy query parameters (image_ref, commit_sha, ...) of an upload only count, and are only validated, when the
# body is a raw Trivy report; with the seed shape they are ignored, which OpenAPI cannot express.
CHECKS_OFF = {"uploads": frozenset({"negative_data_rejection"})}


def _operations(doc: dict[str, Any]) -> dict[str, str]:
    """Each documented operation's id, with its label as schemathesis gives it (`GET /path`)."""
    return {
        op["operationId"]: f"{method.upper()} {path}"
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in HTTP_METHODS
    }


def test_every_operation_is_fuzzed():
    fuzzed = [op for group in FUZZED.values() for op in group]
    assert len(fuzzed) == len(set(fuzzed))
    assert set(fuzzed) | NOT_FUZZED == set(_operations(document()))


@pytest.mark.parametrize("group", list(FUZZED))
def test_api_answers_as_documented(app: Flask, acme: dict[str, Any], group: str) -> None:
    """The group's operations, with examples, coverage (boundary and negative values) and fuzzing, positive and
    negative."""
    app.config["GITHUB_WEBHOOK_SECRET"] = WEBHOOK_SECRET  # as deployed: deliveries are checked, not all refused
    config = _config(acme, CHECKS_OFF.get(group, frozenset()))
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app, config=config)
    seen: dict[str, dict[int, int]] = {}
    failures: list[str] = []
    for operation_id in FUZZED[group]:
        more_seen, more_failures = _run(schema.include(operation_id=operation_id))
        seen.update(more_seen)
        failures += more_failures
    assert failures == [], f"{len(failures)} responses break the document:\n" + "\n".join(failures)

    labels = _operations(document())
    documented = {labels[op] for op in FUZZED[group]}
    assert set(seen) == documented
    # The runs reached past authentication and validation: each operation answered its success status. (Random
    # documents are never a valid import: the hand-picked requests below import.)
    success = {label: 202 if label.startswith("POST") and "/audit/" not in label else 200 for label in documented}
    if f"POST {EXCEPTIONS}" in success:
        success[f"POST {EXCEPTIONS}"] = 201
    success.pop(f"POST {EXCEPTIONS}/import", None)
    success.pop("POST /webhooks/github", None)  # a random delivery is never signed (tests/test_webhooks.py signs them)
    assert [label for label, code in success.items() if not seen[label].get(code)] == [], seen
    # ... and refused what it should refuse.
    no_input = {
        f"GET {SETTINGS}",
        "GET /healthz",
        "GET /readyz",
        "GET /",
        "GET /metrics",
        f"GET {AUDIT}/verify",
        f"GET {AUDIT}/checkpoint",
        f"GET {TREND}",
    }
    takes_input = documented - no_input
    assert [
        label for label in takes_input if not any(400 <= code < 500 and code != 405 for code in seen[label])
    ] == [], seen


# ---------------------------------------------------------------- hand-picked requests, checked the same way


FINDINGS = "/api/v1/orgs/{slug}/image-scans/findings"
SCANS = "/api/v1/orgs/{slug}/image-scans"
SCAN = "/api/v1/orgs/{slug}/image-scans/{scan_run_id}"
SETTINGS = "/api/v1/orgs/{slug}/image-scans/settings"
AUDIT = "/api/v1/orgs/{slug}/audit"
EXCEPTIONS = "/api/v1/orgs/{slug}/exceptions"
EXCEPTION = "/api/v1/orgs/{slug}/exceptions/{exception_id}"
IMAGES = "/api/v1/orgs/{slug}/images"
IMAGE = "/api/v1/orgs/{slug}/images/{image_id}"
IMAGE_TREND = "/api/v1/orgs/{slug}/images/{image_id}/trend"
TREND = "/api/v1/orgs/{slug}/trend"
ADVISORY_SEARCH = "/api/v1/orgs/{slug}/advisories/{advisory_id}/images"
TRIVY_REPORT = {
    "SchemaVersion": 2,
    "ArtifactName": "ghcr.io/acme/api:trivy",
    "ArtifactType": "container_image",
    "Results": [
        {
            "Target": "ghcr.io/acme/api:trivy (debian 12.5)",
            "Class": "os-pkgs",
            "Type": "debian",
            "Vulnerabilities": [
                {
                    "VulnerabilityID": "CVE-2024-0001",
                    "PkgName": "libssl3",
                    "InstalledVersion": "3.0.11-1",
                    "FixedVersion": "3.0.13-1",
                    "Severity": "HIGH",
                    "Title": "openssl: a bug",
                    "PrimaryURL": "https://avd.aquasec.com/nvd/cve-2024-0001",
                    "References": ["https://security-tracker.debian.org/tracker/CVE-2024-0001"],
                    "VendorIDs": ["DSA-5555-1"],
                },
                {"VulnerabilityID": "GHSA-abcd-efgh-ijkl", "PkgName": "zlib1g", "InstalledVersion": "1:1.2.13"},
            ],
        },
        {"Target": "app/requirements.txt", "Class": "lang-pkgs", "Type": "pip", "Vulnerabilities": None},
    ],
}


class Checked:
    """Requests through the Flask client, each response checked against the document like schemathesis does."""

    def __init__(self, app: Flask, acme: dict[str, Any]) -> None:
        self.schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
        self.client = acme["client"]
        self.token = acme["token"]

    def __call__(
        self,
        method: str,
        path: str,
        *,
        slug: str = "acme",
        token: str | None = "default",
        expect: int,
        body: Any = None,
        raw: bytes | None = None,
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        **path_params: Any,
    ) -> Any:
        token = self.token if token == "default" else token
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        url = path.format(slug=slug, **path_params)
        if method == "POST" and path == FINDINGS:
            response = post(
                self.client,
                token,
                body,
                slug=slug,
                raw=raw,
                query=query,
                headers=headers,
                gz=hdrs.get("Content-Encoding") == "gzip",
            )
        else:
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            if data is not None:
                hdrs.setdefault("Content-Type", "application/json")
            response = self.client.open(url, method=method, data=data, headers=hdrs, query_string=query)
        case = self.schema[path][method].Case(
            path_parameters={"slug": slug, **path_params},
            query=query,
            headers=hdrs,
            body=body if body is not None else NOT_SET,
            media_type=hdrs.get("Content-Type", "application/json").split(";")[0],
        )
        case.validate_response(response, checks=CHECKS)
        assert response.status_code == expect, (response.status_code, response.get_data(as_text=True)[:500])
        return response.json


@pytest.fixture
def checked(app: Flask, acme: dict[str, Any]) -> Checked:
    return Checked(app, acme)


def test_happy_paths_answer_as_documented(app, acme, checked):
    first = checked(
        "POST",
        FINDINGS,
        body=seed(findings=[finding(), finding(), finding("RUSTSEC-2024-0001", "Medium", fixed="")]),
        expect=202,
    )
    assert (first["accepted"], first["duplicates"], first["status"]) == (2, 1, "success")
    assert first["commit_status"]["state"] == "success"
    gz = checked(
        "POST", FINDINGS, body=seed(image_ref="ghcr.io/acme/api:gz"), headers={"Content-Encoding": "gzip"}, expect=202
    )
    trivy = checked(
        "POST", FINDINGS, body=TRIVY_REPORT, query={"commit_sha": SHA, "repo_full_name": "acme/api"}, expect=202
    )
    assert trivy["accepted"] == 2
    legacy = checked(
        "POST",
        FINDINGS,
        body=TRIVY_REPORT["Results"],
        query={"commit_sha": SHA2, "repo_full_name": "acme/api", "image_ref": "ghcr.io/acme/api:old"},
        expect=202,
    )
    assert legacy["accepted"] == 2

    set_policy(
        app,
        "acme",
        block_action="block_pull",
        require_signed=True,
        allowed_issuers=[
            {"issuer": "https://token.actions.githubusercontent.com", "subject_pattern": "^https://github.com/acme/"}
        ],
    )
    blocked = checked("POST", FINDINGS, body=seed(image_ref="ghcr.io/acme/api:unsigned"), expect=202)
    assert blocked["status"] == "failure"
    assert blocked["commit_status"]["state"] == "failure"
    signed = seed(
        image_ref="ghcr.io/acme/api:signed",
        findings=[finding(severity="low")],
        signature_status="signed",
        signature_issuer="https://token.actions.githubusercontent.com",
        signature_subject="https://github.com/acme/api/.github/workflows/ci.yml@refs/heads/main",
    )
    assert checked("POST", FINDINGS, body=signed, expect=202)["status"] == "success"
    set_policy(app, "acme", block_action="none")
    skipped = checked("POST", FINDINGS, body=seed(image_ref="ghcr.io/acme/api:none"), expect=202)
    assert skipped["status"] == "skipped"

    page = checked("GET", SCANS, query={"limit": "2"}, expect=200)
    assert len(page["items"]) == 2 and page["next_cursor"]
    rest = checked("GET", SCANS, query={"cursor": page["next_cursor"], "limit": "1000"}, expect=200)
    assert rest["next_cursor"] is None
    checked("GET", SCANS, query={"repo": "acme/api", "commit_sha": SHA, "status": "failure", "pr": "1"}, expect=200)
    for scan_id in [
        *acme["scan_ids"],
        first["scan_run_id"],
        gz["scan_run_id"],
        trivy["scan_run_id"],
        legacy["scan_run_id"],
        blocked["scan_run_id"],
        skipped["scan_run_id"],
    ]:
        detail = checked("GET", SCAN, scan_run_id=scan_id, expect=200)
        assert detail["scan_run_id"] == scan_id and detail["findings"]
    synthetic = checked("GET", SCAN, scan_run_id=blocked["scan_run_id"], expect=200)["findings"]
    assert any(f["synthetic"] for f in synthetic)

    settings = checked("GET", SETTINGS, expect=200)
    assert settings["block_action"] == "none"
    checked(
        "PUT",
        SETTINGS,
        body={"enabled": False, "retention_days": 30, "allowed_issuers": [{"issuer": "https://gitlab.example.com"}]},
        expect=200,
    )
    disabled = checked("POST", FINDINGS, body=seed(), expect=202)
    assert disabled == {"accepted": 0, "status": "disabled"}


def test_refusals_answer_as_documented(app, acme, checked):
    make_org(app, "other", github_login="other")
    other_token = make_token(app, "other")
    read_only = make_token(app, "acme", ["findings:read"])
    scan_id = acme["scan_ids"][0]
    for method, path, body in (
        ("POST", FINDINGS, seed()),
        ("GET", SCANS, None),
        ("GET", SCAN, None),
        ("GET", SETTINGS, None),
        ("PUT", SETTINGS, {"enabled": True}),
    ):
        params = {"scan_run_id": scan_id} if path == SCAN else {}
        checked(method, path, body=body, token=None, expect=401, **params)
        checked(method, path, body=body, token="ffis_not-a-token", expect=401, **params)
        checked(method, path, body=body, token=other_token, expect=403, **params)
        checked(method, path, body=body, slug="nobody", expect=404, **params)
    checked("POST", FINDINGS, body=seed(), token=read_only, expect=403)
    checked("PUT", SETTINGS, body={"enabled": False}, token=read_only, expect=403)
    checked("POST", FINDINGS, body=seed(repo="someone-else/api"), expect=403)
    checked("GET", SCAN, scan_run_id=2**31, expect=404)
    checked("GET", SCAN, scan_run_id=0, expect=404)

    checked("POST", FINDINGS, raw=b"{", expect=400)
    checked("POST", FINDINGS, raw=b"", expect=400)
    checked("POST", FINDINGS, raw=b"not gzip", headers={"Content-Encoding": "gzip"}, expect=400)
    checked("POST", FINDINGS, raw=b"{}", headers={"Content-Encoding": "br"}, expect=415)
    checked("POST", FINDINGS, body=seed(findings=[finding(severity="severe")]), expect=422)
    checked("POST", FINDINGS, body=TRIVY_REPORT, expect=422)
    checked(
        "POST",
        FINDINGS,
        body=[{"Vulnerabilities": [{"PkgName": "x"}]}],
        query={"commit_sha": SHA, "repo_full_name": "acme/api", "image_ref": "x"},
        expect=422,
    )
    checked("PUT", SETTINGS, body={"block_action": "explode"}, expect=422)
    checked("PUT", SETTINGS, raw=b"[", expect=400)
    checked("GET", SCANS, query={"cursor": "nonsense"}, expect=422)
    checked("GET", SCANS, query={"limit": "0"}, expect=422)
    checked("GET", SCANS, query={"image_ref": "a\x00b"}, expect=400)
    checked("GET", SCANS, query={"cursor": encode_cursor(2**31 - 1), "pr": str(2**31 - 1)}, expect=200)
    checked("GET", SCANS, query={"cursor": encode_cursor(2**31)}, expect=422)  # was a 500 on PostgreSQL
    checked("GET", SCANS, query={"cursor": encode_cursor(10**17)}, expect=422)

    app.config.update(MAX_UPLOAD_BYTES=4096, MAX_CONTENT_LENGTH=4096)
    big = seed(findings=[finding(f"CVE-2024-{i:05d}") for i in range(100)])
    checked("POST", FINDINGS, body=big, expect=413)
    checked("POST", FINDINGS, body=big, headers={"Content-Encoding": "gzip"}, expect=413)


def test_exceptions_answer_as_documented(app, acme, checked):
    created = checked(
        "POST",
        EXCEPTIONS,
        body={
            "advisory_id": "CVE-2024-0001",
            "package_name": "openssl",
            "repo_full_name": "ACME/api",
            "image": "ghcr.io/acme/*",
            "reason": "Not reachable: the parser is never fed input.",
            "ticket_url": "https://tickets.example.com/SEC-12",
            "expires_at": in_days(30),
        },
        expect=201,
    )
    assert (created["state"], created["source"], created["repo_full_name"]) == ("active", "api", "acme/api")
    checked("POST", EXCEPTIONS, body={"advisory_id": "X-1", "reason": "r", "expires_at": in_days(1)[:10]}, expect=201)
    page = checked("GET", EXCEPTIONS, query={"limit": "2"}, expect=200)
    assert len(page["items"]) == 2 and page["next_cursor"]
    rest = checked("GET", EXCEPTIONS, query={"cursor": page["next_cursor"], "state": "active"}, expect=200)
    assert rest["next_cursor"] is None and rest["items"]
    revoked = checked("DELETE", EXCEPTION, exception_id=created["id"], expect=200)
    assert (revoked["state"], revoked["revoked_at"] is not None) == ("revoked", True)
    assert checked("DELETE", EXCEPTION, exception_id=created["id"], expect=200) == revoked
    assert [e["id"] for e in checked("GET", EXCEPTIONS, query={"state": "revoked"}, expect=200)["items"]] == [
        created["id"]
    ]
    assert checked("GET", EXCEPTIONS, query={"state": "expired"}, expect=200) == {"items": [], "next_cursor": None}

    trivyignore = b"# accepted risks\nCVE-2024-0002\nCVE-2024-0003 exp:2099-01-01\n"
    imported = checked(
        "POST",
        EXCEPTIONS + "/import",
        raw=trivyignore.replace(b"2099-01-01", in_days(10)[:10].encode()),
        headers={"Content-Type": "text/plain"},
        query={"format": "trivyignore", "reason": "Imported from .trivyignore", "expires_at": in_days(60)},
        expect=201,
    )
    assert imported["imported"] == 2 and {e["source"] for e in imported["items"]} == {"trivyignore"}
    gzipped = checked(
        "POST",
        EXCEPTIONS + "/import",
        raw=gzip.compress(b"CVE-2024-0006\n"),
        headers={"Content-Type": "text/plain", "Content-Encoding": "gzip"},
        query={"format": "trivyignore", "reason": "Imported from .trivyignore", "expires_at": in_days(60)},
        expect=201,
    )
    assert [e["advisory_id"] for e in gzipped["items"]] == ["CVE-2024-0006"]
    vex = {
        "@context": "https://openvex.dev/ns/v0.2.0",
        "statements": [
            {
                "vulnerability": {"name": "CVE-2024-0004"},
                "products": [{"@id": "pkg:oci/api?repository_url=ghcr.io/acme/api"}],
                "status": "not_affected",
                "justification": "vulnerable_code_not_in_execute_path",
            },
            {"vulnerability": {"name": "CVE-2024-0005"}, "status": "affected"},
        ],
    }
    from_vex = checked(
        "POST", EXCEPTIONS + "/import", body=vex, query={"format": "openvex", "expires_at": in_days(60)}, expect=201
    )
    assert from_vex["imported"] == 1 and from_vex["items"][0]["image"] == "ghcr.io/acme/api"


def test_exception_refusals_answer_as_documented(app, acme, checked):
    make_org(app, "other", github_login="other")
    other_token = make_token(app, "other")
    read_only = make_token(app, "acme", ["findings:read"])
    writer = make_token(app, "acme", ["settings:write"])
    exception_id = acme["exception_ids"][0]
    good = {"advisory_id": "CVE-2024-0001", "reason": "r", "expires_at": in_days(30)}
    for method, path, body in (
        ("GET", EXCEPTIONS, None),
        ("POST", EXCEPTIONS, good),
        ("DELETE", EXCEPTION, None),
        ("POST", EXCEPTIONS + "/import", {"@context": "https://openvex.dev/ns", "statements": []}),
    ):
        params = {"exception_id": exception_id} if path == EXCEPTION else {}
        query = {"format": "openvex"} if path.endswith("/import") else None
        checked(method, path, body=body, query=query, token=None, expect=401, **params)
        checked(method, path, body=body, query=query, token=other_token, expect=403, **params)
        checked(method, path, body=body, query=query, slug="nobody", expect=404, **params)
        wrong_scope = writer if method == "GET" else read_only
        checked(method, path, body=body, query=query, token=wrong_scope, expect=403, **params)
    checked("DELETE", EXCEPTION, exception_id=2**31, expect=404)
    checked("DELETE", EXCEPTION, exception_id=10**20, expect=404)
    checked("DELETE", EXCEPTION, exception_id=0, expect=404)

    checked("POST", EXCEPTIONS, body={**good, "advisory_id": "FREMFORGE-UNSIGNED-IMAGE"}, expect=422)
    checked("POST", EXCEPTIONS, body={**good, "expires_at": "0001-01-01T00:00:00+01:00"}, expect=422)  # was a 500
    checked("POST", EXCEPTIONS, body={**good, "unknown": 1}, expect=422)
    checked("POST", EXCEPTIONS, body=[good], expect=422)
    checked("POST", EXCEPTIONS, raw=b"{", expect=400)
    checked("POST", EXCEPTIONS, raw=b"{}", headers={"Content-Type": "text/plain"}, expect=415)
    checked("GET", EXCEPTIONS, query={"cursor": "nonsense"}, expect=422)
    checked("GET", EXCEPTIONS, query={"cursor": exception_cursor(2**31)}, expect=422)
    checked("GET", EXCEPTIONS, query={"cursor": encode_cursor(5)}, expect=422)  # a scans cursor
    checked("GET", EXCEPTIONS, query={"state": "gone"}, expect=422)
    checked("GET", EXCEPTIONS, query={"limit": "1001"}, expect=422)

    imports = EXCEPTIONS + "/import"
    checked("POST", imports, body={"statements": []}, query={"format": "yaml"}, expect=422)
    checked("POST", imports, body={"statements": []}, expect=422)  # no format
    checked("POST", imports, body={"statements": []}, query={"format": "openvex"}, expect=422)  # no @context
    checked(
        "POST", imports, raw=b"CVE-1\n", headers={"Content-Type": "text/plain"}, query={"format": "openvex"}, expect=415
    )
    checked("POST", imports, body={"x": 1}, query={"format": "trivyignore"}, expect=415)
    checked(
        "POST",
        imports,
        raw=b"CVE-1 maybe\n",
        headers={"Content-Type": "text/plain"},
        query={"format": "trivyignore", "reason": "r", "expires_at": in_days(30)},
        expect=422,
    )
    checked(
        "POST",
        imports,
        raw=b"CVE-1\n",
        headers={"Content-Type": "text/plain", "Content-Encoding": "br"},
        query={"format": "trivyignore", "reason": "r", "expires_at": in_days(30)},
        expect=415,
    )
    listed = checked("GET", EXCEPTIONS, query={"limit": "1000"}, expect=200)["items"]
    assert [e["id"] for e in listed] == acme["exception_ids"][::-1]  # nothing refused was stored


def test_insights_answer_as_documented(app, acme, checked):
    """The images now, one image, the trends and the advisory search, each answer checked against the document."""
    reader = make_token(app, "acme", ["findings:read"])
    images = checked("GET", IMAGES, token=reader, expect=200)
    assert [i["image_id"] for i in images["items"]] == acme["image_ids"] and images["next_cursor"] is None
    page = checked("GET", IMAGES, query={"limit": "1"}, expect=200)
    rest = checked("GET", IMAGES, query={"limit": "1", "cursor": page["next_cursor"]}, expect=200)
    assert [i["image_id"] for i in page["items"] + rest["items"]] == acme["image_ids"]
    assert checked("GET", IMAGES, query={"repo": "ACME/web"}, expect=200)["items"] == rest["items"]
    for image_id in acme["image_ids"]:
        assert checked("GET", IMAGE, image_id=image_id, expect=200)["image_id"] == image_id
        assert len(checked("GET", IMAGE_TREND, image_id=image_id, expect=200)["days"]) == 90
    assert checked("GET", TREND, expect=200)["days"][-1]["critical"] == 1

    found = checked("GET", ADVISORY_SEARCH, advisory_id="cve-2023-1234", expect=200)
    assert [(i["cve_id"], i["excepted"]) for i in found["items"]] == [("CVE-2023-1234", True)] * 2
    assert found["items"][0]["exception"]["id"] == acme["exception_ids"][0]
    prefix = checked("GET", ADVISORY_SEARCH, advisory_id="GHSA-*", query={"limit": "1"}, expect=200)
    assert prefix["prefix"] and [i["severity"] for i in prefix["items"]] == ["critical"]
    assert prefix["next_cursor"] is None
    more = checked("GET", ADVISORY_SEARCH, advisory_id="CVE-2023-1234", query={"limit": "1"}, expect=200)
    last = checked(
        "GET",
        ADVISORY_SEARCH,
        advisory_id="CVE-2023-1234",
        query={"limit": "1", "cursor": more["next_cursor"]},
        expect=200,
    )
    assert [i["scan_run_id"] for i in more["items"] + last["items"]] == acme["scan_ids"][::-1]


def test_insights_refusals_answer_as_documented(app, acme, checked):
    make_org(app, "other", github_login="other")
    other_token = make_token(app, "other")
    writer = make_token(app, "acme", ["findings:write", "settings:write"])
    image_id = acme["image_ids"][0]
    for path, params in (
        (IMAGES, {}),
        (IMAGE, {"image_id": image_id}),
        (IMAGE_TREND, {"image_id": image_id}),
        (TREND, {}),
        (ADVISORY_SEARCH, {"advisory_id": "CVE-2023-1234"}),
    ):
        checked("GET", path, token=None, expect=401, **params)
        checked("GET", path, token=other_token, expect=403, **params)
        checked("GET", path, token=writer, expect=403, **params)
        checked("GET", path, slug="nobody", expect=404, **params)
    for path in (IMAGE, IMAGE_TREND):
        for missing in (0, 2**31 - 1, 2**31, 10**20):
            checked("GET", path, image_id=missing, expect=404)
    for bad in ("*", "C*", "x" * 201, "CVE 1", "CVE-1%", " CVE-1", "CVE-**"):
        body = checked("GET", ADVISORY_SEARCH, advisory_id=quote(bad, safe=""), expect=422)
        assert [(d["path"], d["in"]) for d in body["details"]] == [("advisory_id", "path")]
    checked("GET", ADVISORY_SEARCH, advisory_id="CVE-1", query={"cursor": "nonsense"}, expect=422)
    checked("GET", ADVISORY_SEARCH, advisory_id="CVE-1", query={"cursor": encode_cursor(1)}, expect=422)
    checked("GET", ADVISORY_SEARCH, advisory_id="CVE-1", query={"limit": "0"}, expect=422)
    checked("GET", IMAGES, query={"cursor": encode_cursor(1)}, expect=422)
    checked("GET", IMAGES, query={"repo": "not a repo"}, expect=422)
    checked("GET", IMAGES, query={"limit": "1001"}, expect=422)
