"""Importing exceptions (spec section 10): OpenVEX not_affected statements and .trivyignore files, through the API,
then real Trivy reports uploaded under block_pull must be excepted on exactly the findings the documents speak of;
bad documents are refused whole, naming the statement or line. The expectations are computed here from the
documents and the report JSON, not by app code. Then an OpenVEX document's later statements superseding earlier ones
(a later affected withdraws an earlier not_affected), through the API and an upload, and rule by rule. Then
`imports.parse` alone, rule by rule."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import pytest
import sqlalchemy as sa

from app import db
from app.exceptions import imports
from app.models import PolicyException
from tests.factories import FIXTURES, SHA, census, finding, make_org, make_token, post, seed

HERE = Path(__file__).resolve().parent / "fixtures" / "exceptions"
OPENVEX = HERE / "acme-images.openvex.json"
TRIVYIGNORE = HERE / "alpine-39.trivyignore"
REPORTS = FIXTURES / "trivy"
IMPORT = "/api/v1/orgs/acme/exceptions/import"


def in_days(days: int) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def fresh_trivyignore(days: int = 90) -> tuple[str, str]:
    """The fixture with its exp: dates moved to `days` from today (they must lie ahead, by at most 365 days); and
    that date."""
    when = (date.today() + timedelta(days=days)).isoformat()
    return re.sub(r"exp:\d{4}-\d{2}-\d{2}", f"exp:{when}", TRIVYIGNORE.read_text()), when


def openvex() -> dict[str, Any]:
    return json.loads(OPENVEX.read_text())


def report(name: str) -> dict[str, Any]:
    return json.loads((REPORTS / f"{name}.json").read_text())


# ------------------------------------------------------------------ what the documents say, read here


def purl_name(purl: str) -> str:
    return unquote(purl.split("?", 1)[0].split("#", 1)[0].rsplit("/", 1)[-1].split("@", 1)[0])


def purl_image(purl: str) -> str:
    query = parse_qs(purl.split("?", 1)[1]) if "?" in purl else {}
    return query["repository_url"][0] if "repository_url" in query else purl_name(purl)


def vex_rules(doc: dict[str, Any]) -> list[tuple[str, str | None, set[str] | None]]:
    """(advisory, image or None, package names or None) for each not_affected statement's product."""
    rules = []
    for st in doc["statements"]:
        if st["status"] != "not_affected":
            continue
        name = st["vulnerability"]["name"]
        for product in st.get("products") or [{}]:
            purl = product.get("@id") if str(product.get("@id", "")).startswith("pkg:") else None
            purl = purl or product.get("identifiers", {}).get("purl")
            subs = {purl_name(s["@id"]) for s in product.get("subcomponents", [])} or None
            rules.append((name, purl_image(purl) if purl else None, subs))
    return rules


def trivyignore_ids(text: str) -> set[str]:
    return {line.split()[0] for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")}


def vulns(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for r in doc.get("Results") or [] for v in r.get("Vulnerabilities") or []]


def ids_of(v: dict[str, Any]) -> set[str]:
    return {i.lower() for i in [v["VulnerabilityID"], *(v.get("VendorIDs") or [])]}


def expected_by_vex(doc: dict[str, Any], image: str, rules) -> set[tuple[str, str]]:
    return {
        (v["VulnerabilityID"], v["PkgName"])
        for v in vulns(doc)
        for advisory, where, packages in rules
        if advisory.lower() in ids_of(v) and where in (None, image) and (packages is None or v["PkgName"] in packages)
    }


# ------------------------------------------------------------------ the API


@pytest.fixture
def token(app):
    """acme, blocking pull requests on every severity from low up, so only an exception keeps a finding green."""
    make_org(app, block_action="block_pull", block_threshold="low")
    return make_token(app)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def import_(client, token, fmt: str, body: Any, **query: str):
    data = json.dumps(body).encode() if fmt == "openvex" else body.encode()
    content_type = "application/json" if fmt == "openvex" else "text/plain; charset=utf-8"
    return client.post(
        IMPORT,
        data=data,
        headers={**auth(token), "Content-Type": content_type},
        query_string={"format": fmt, **query},
    )


def upload(client, token, name: str, image_ref: str) -> dict[str, Any]:
    """The raw Trivy report, as `trivy image --format json` wrote it; the scan as the read API gives it."""
    repo = f"acme/{name}"
    r = post(
        client,
        token,
        raw=(REPORTS / f"{name}.json").read_bytes(),
        query={"commit_sha": SHA, "repo_full_name": repo, "image_ref": image_ref},
    )
    assert r.status_code == 202, r.json
    scan = client.get(f"/api/v1/orgs/acme/image-scans/{r.json['scan_run_id']}", headers=auth(token))
    assert scan.status_code == 200, scan.json
    return scan.json


def excepted(scan: dict[str, Any]) -> dict[tuple[str, str], int]:
    return {(f["cve_id"], f["package_name"]): f["exception_id"] for f in scan["findings"] if f["exception_id"]}


def assert_covers_exactly(scan: dict[str, Any], expected: set[tuple[str, str]]) -> None:
    assert set(excepted(scan)) == expected
    for f in scan["findings"]:
        # block_pull from low up: every finding blocks unless an exception covers it
        assert f["blocking"] is (f["exception_id"] is None), f
    assert scan["blocking"] == len(scan["findings"]) - len(expected)
    assert scan["status"] == ("failure" if scan["blocking"] else "success")


def stored(app) -> int:
    with app.app_context():
        return db.session().scalar(sa.select(sa.func.count()).select_from(PolicyException)) or 0


@pytest.mark.parametrize(
    "name, image",
    [
        ("debian-stretch", "registry.test/acme/debian-stretch"),
        ("ubuntu-1804", "registry.test/acme/ubuntu-1804"),
        ("centos-7", "registry.test/acme/centos-7"),
        ("alpine-39", "registry.test/acme/alpine-39"),
        ("debian-stretch", "registry.test/acme/elsewhere"),  # the statements name other images
    ],
)
def test_openvex_import_excepts_exactly_the_not_affected_findings(app, client, token, name, image):
    doc = openvex()
    expires = in_days(30)
    r = import_(client, token, "openvex", doc, expires_at=expires)
    assert r.status_code == 201, r.json
    rules = vex_rules(doc)
    assert r.json["imported"] == len(r.json["items"]) == sum(len(pk or [None]) for _, _, pk in rules) == 4
    by_id = {e["id"]: e for e in r.json["items"]}
    assert {e["source"] for e in by_id.values()} == {"openvex"}
    assert {e["expires_at"] for e in by_id.values()} == {expires}

    expected = expected_by_vex(report(name), image, rules)
    scan = upload(client, token, name, f"{image}:1@sha256:{'a' * 64}")
    assert_covers_exactly(scan, expected)
    for (cve, package), exception_id in excepted(scan).items():
        e = by_id[exception_id]
        assert e["image"] == image and e["package_name"] in (None, package)
        assert e["advisory_id"].lower() in ids_of(next(v for v in vulns(report(name)) if v["VulnerabilityID"] == cve))


def test_openvex_import_fields(app, client, token):
    """What each statement became: the guard that the test above is about something (and not about nothing)."""
    r = import_(client, token, "openvex", openvex(), expires_at=in_days(30), reason="unused: every statement says why")
    assert r.status_code == 201, r.json
    got = sorted((e["advisory_id"], e["image"], e["package_name"], e["reason"]) for e in r.json["items"])
    assert got == [
        (
            "CVE-2019-18276",
            "registry.test/acme/ubuntu-1804",
            None,
            "vulnerable_code_cannot_be_controlled_by_adversary: No setuid program in the image runs bash.",
        ),
        (
            "CVE-2019-5094",
            "registry.test/acme/debian-stretch",
            "e2fsprogs",
            "vulnerable_code_not_in_execute_path: The image never runs e2fsck or debugfs on a file system it did "
            "not create.",
        ),
        (
            "CVE-2019-5094",
            "registry.test/acme/debian-stretch",
            "libss2",
            "vulnerable_code_not_in_execute_path: The image never runs e2fsck or debugfs on a file system it did "
            "not create.",
        ),
        (
            "RHSA-2019:2304",
            "registry.test/acme/centos-7",
            None,
            "inline_mitigations_already_exist: TLS is terminated by the ingress proxy; the image's OpenSSL never "
            "sees a handshake from outside.",
        ),
    ]
    # each report the document was written for has findings it covers, and findings it does not
    rules = vex_rules(openvex())
    for name in ("debian-stretch", "ubuntu-1804", "centos-7"):
        covered = expected_by_vex(report(name), f"registry.test/acme/{name}", rules)
        assert 0 < len(covered) < len(vulns(report(name))), name


def test_trivyignore_import_excepts_exactly_the_listed_ids(app, client, token):
    text, exp_date = fresh_trivyignore()
    default = in_days(200)
    r = import_(
        client, token, "trivyignore", text, reason="OpenSSL fixes ship with the next base image", expires_at=default
    )
    assert r.status_code == 201, r.json
    ids = trivyignore_ids(text)
    assert {e["advisory_id"] for e in r.json["items"]} == ids == {"CVE-2019-1549", "CVE-2019-1551"}
    expiry = {e["advisory_id"]: e["expires_at"] for e in r.json["items"]}
    assert expiry == {"CVE-2019-1549": f"{exp_date}T00:00:00Z", "CVE-2019-1551": default}
    assert {(e["source"], e["image"], e["package_name"]) for e in r.json["items"]} == {("trivyignore", None, None)}
    assert {e["reason"] for e in r.json["items"]} == {"OpenSSL fixes ship with the next base image"}

    doc = report("alpine-39")
    expected = {(v["VulnerabilityID"], v["PkgName"]) for v in vulns(doc) if ids_of(v) & {i.lower() for i in ids}}
    assert 0 < len(expected) < len(vulns(doc))
    # no image scope: the ids are excepted in any image
    for image in ("registry.test/acme/alpine-39:3.9", "ghcr.io/acme/other:2"):
        assert_covers_exactly(upload(client, token, "alpine-39", image), expected)


# ------------------------------------------------------------------ bad documents: 422 naming where, nothing stored


def vex_with(edit) -> dict[str, Any]:
    doc = openvex()
    edit(doc)
    return doc


def _no_name(doc):
    del doc["statements"][2]["vulnerability"]["name"]


def _no_reason(doc):
    del doc["statements"][3]["justification"], doc["statements"][3]["status_notes"]


def _not_oci(doc):
    doc["statements"][0]["products"][0]["@id"] = "pkg:deb/debian/e2fsprogs@1.43.4-2"


def _bad_status(doc):
    doc["statements"][4]["status"] = "wont_fix"


def _bad_subcomponent(doc):
    doc["statements"][0]["products"][0]["subcomponents"][1] = {"@id": "libss2"}


def _no_products(doc):
    del doc["statements"][2]["products"]


CYCLONEDX_VEX = {  # a VEX document, but CycloneDX's, not OpenVEX
    "bomFormat": "CycloneDX",
    "specVersion": "1.5",
    "version": 1,
    "vulnerabilities": [
        {"id": "CVE-2019-5094", "analysis": {"state": "not_affected", "justification": "code_not_reachable"}},
    ],
}

BAD = [
    pytest.param("openvex", CYCLONEDX_VEX, {}, ["@context"], id="cyclonedx-vex-is-not-openvex"),
    pytest.param("openvex", [openvex()], {}, ["$"], id="openvex-not-an-object"),
    pytest.param(
        "openvex", vex_with(lambda d: d.update({"@context": "https://example.test/ns"})), {}, ["@context"], id="context"
    ),
    pytest.param("openvex", vex_with(lambda d: d.pop("statements")), {}, ["statements"], id="no-statements"),
    pytest.param("openvex", vex_with(_no_name), {}, ["statements[2].vulnerability"], id="no-vulnerability-name"),
    pytest.param("openvex", vex_with(_not_oci), {}, ["statements[0].products[0]"], id="product-not-oci"),
    pytest.param("openvex", vex_with(_bad_status), {}, ["statements[4].status"], id="unknown-status"),
    pytest.param("openvex", vex_with(_no_products), {}, ["statements[2].products"], id="not-affected-names-no-product"),
    pytest.param(
        "openvex",
        vex_with(_bad_subcomponent),
        {},
        ["statements[0].products[0].subcomponents[1]"],
        id="subcomponent-not-a-purl",
    ),
    pytest.param("openvex", vex_with(_no_reason), {}, ["statements[3].reason"], id="statement-without-reason"),
    pytest.param(
        "openvex",
        openvex(),
        {"expires_at": None},
        ["statements[0].expires_at", "statements[2].expires_at", "statements[3].expires_at"],
        id="openvex-without-expiry",
    ),
    pytest.param(
        "trivyignore",
        "CVE-2019-1549 exp:2027-02-30\n",
        {},
        ["line 1"],
        id="trivyignore-impossible-date",
    ),
    pytest.param("trivyignore", None, {}, ["line 5"], id="trivyignore-fixture-bad-exp"),
    pytest.param(
        "trivyignore",
        "# ok\nCVE-2019-1549\nCVE-2019-1551 CVE-2019-14697\n",
        {},
        ["line 3"],
        id="trivyignore-two-ids-on-a-line",
    ),
    pytest.param(
        "trivyignore",
        "CVE-2019-1549\n\n# no reason given\nCVE-2019-1551\n",
        {"reason": None},
        ["line 1.reason", "line 4.reason"],
        id="trivyignore-without-reason",
    ),
    pytest.param(
        "trivyignore",
        "CVE-2019-1549 exp:{soon}\nCVE-2019-1551\n",
        {"expires_at": None},
        ["line 2.expires_at"],
        id="trivyignore-line-without-expiry",
    ),
]


@pytest.mark.parametrize("fmt, body, query, paths", BAD)
def test_bad_documents_are_refused_naming_where_and_nothing_is_stored(app, client, token, fmt, body, query, paths):
    if body is None:  # the fixture itself with its first exp: date made impossible
        body = re.sub(r"exp:(\d{4})-\d\d-\d\d", r"exp:\1-02-30", fresh_trivyignore()[0], count=1)
    if isinstance(body, str):
        body = body.replace("{soon}", (date.today() + timedelta(days=10)).isoformat())
    defaults = (
        {"expires_at": in_days(30), "reason": "accepted"} if fmt == "trivyignore" else {"expires_at": in_days(30)}
    )
    q = {k: v for k, v in {**defaults, **query}.items() if v is not None}
    before, exceptions_before = census(app), stored(app)
    r = import_(client, token, fmt, body, **q)
    assert r.status_code == 422, r.json
    assert r.json["error"] == "validation_failed"
    assert sorted({d["path"] for d in r.json["details"]}) == sorted(paths), r.json
    assert paths[0] in r.json["message"]
    assert stored(app) == exceptions_before == 0
    assert census(app) == before


def test_a_trivyignore_line_whose_exp_has_come_is_skipped_and_said_so(app, client, token):
    """Spec §10: Trivy's exp: honoured, as Trivy does: a line whose day has come ignores nothing any more, so the
    import skips it and says so, and imports the rest (HEAD before: the whole file was a 422 `line 1.expires_at:
    must be in the future`, so an older .trivyignore could not be imported at all). A default expiry already past
    is still refused."""
    today = datetime.now(UTC).date()
    body = f"CVE-2019-1549 exp:2019-01-01\nCVE-2019-1551 exp:{today}\nCVE-2019-14697\n"
    r = import_(client, token, "trivyignore", body, reason="accepted", expires_at=in_days(30))
    assert r.status_code == 201, r.json
    assert r.json["imported"] == 1 and [e["advisory_id"] for e in r.json["items"]] == ["CVE-2019-14697"]
    assert r.json["skipped"] == [
        {"where": "line 1", "advisory_id": "CVE-2019-1549", "expired": "2019-01-01"},
        {"where": "line 2", "advisory_id": "CVE-2019-1551", "expired": str(today)},
    ]
    assert stored(app) == 1
    past = import_(client, token, "trivyignore", "CVE-2019-1549\n", reason="accepted", expires_at="2019-01-01")
    assert past.status_code == 422 and past.json["details"][0]["path"] == "line 1.expires_at"


@pytest.mark.parametrize("zone", ["UTC", "Pacific/Auckland", "America/Los_Angeles"])
def test_a_lapsed_line_is_judged_on_the_utc_day_whatever_the_hosts_zone(monkeypatch, zone):
    """app.models.utcnow is naive UTC: taken for local time, a host east of UTC kept a line whose day had begun (and
    validation refused the whole file), one west of it skipped a line a day early (review)."""
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        items = imports.parse("trivyignore", "CVE-1 exp:2026-03-10\n", reason="r")
        assert [s["advisory_id"] for s in imports.lapsed(items, datetime(2026, 3, 10, 5, 0))[1]] == ["CVE-1"]
        assert imports.lapsed(items, datetime(2026, 3, 9, 23, 0))[1] == []
        assert imports.lapsed(items, datetime(2026, 3, 9, 23, 0, tzinfo=UTC))[1] == []
    finally:
        monkeypatch.undo()  # TZ as it was
        time.tzset()


@pytest.mark.parametrize(
    "fmt, body, query, path, parameter",
    [
        ("trivyignore", "CVE-2019-1549\n", {"expires_at": "{30}"}, "line 1.reason", "reason"),
        ("trivyignore", "CVE-2019-1549\n", {"reason": "accepted"}, "line 1.expires_at", "expires_at"),
        ("openvex", None, {}, "statements[0].expires_at", "expires_at"),
    ],
)
def test_what_neither_an_entry_nor_the_query_gives_names_the_query_parameter(
    app, client, token, fmt, body, query, path, parameter
):
    """HEAD: "is required" at the entry, as if the document were at fault, where the query parameter is missing."""
    q = {k: (in_days(30) if v == "{30}" else v) for k, v in query.items()}
    r = import_(client, token, fmt, openvex() if body is None else body, **q)
    assert r.status_code == 422, r.json
    detail = next(d for d in r.json["details"] if d["path"] == path)
    assert f"neither does the query parameter {parameter}" in detail["message"], detail


def test_import_needs_settings_write_and_refuses_what_is_not_text(app, client, token):
    reader = make_token(app, scopes=["findings:read", "findings:write"])
    assert import_(client, reader, "openvex", openvex(), expires_at=in_days(30)).status_code == 403
    r = client.post(
        IMPORT,
        data=b"CVE-2019-1549\n",
        headers={**auth(token), "Content-Type": "application/json"},
        query_string={"format": "trivyignore", "reason": "x", "expires_at": in_days(3)},
    )
    assert r.status_code == 415
    r = client.post(
        IMPORT,
        data=b"CVE-2019-1549 \xff\n",
        headers={**auth(token), "Content-Type": "text/plain"},
        query_string={"format": "trivyignore", "reason": "x", "expires_at": in_days(3)},
    )
    assert r.status_code == 400
    r = import_(client, token, "yaml", "CVE-1", reason="x", expires_at=in_days(3))
    assert r.status_code == 422
    assert stored(app) == 0


# ------------------------------------------------------------------ imports.parse, rule by rule


def parse_vex(statements: list[Any], context: str = "https://openvex.dev/ns/v0.2.0", **defaults: str | None):
    return imports.parse("openvex", {"@context": context, "statements": statements}, **defaults)


OCI = "pkg:oci/api@sha256%3Aabc?repository_url=ghcr.io%2Facme%2Fapi&tag=1.2"


def stmt(**fields: Any) -> dict[str, Any]:
    """A not_affected statement about CVE-2024-1 in ghcr.io/acme/api (OCI), unless `fields` say otherwise."""
    return {"vulnerability": {"name": "CVE-2024-1"}, "status": "not_affected", "products": [OCI], **fields}


def docs(items: list[imports.Item]) -> list[tuple[str, dict[str, Any]]]:
    return [(i.where, i.doc) for i in items]


def test_parse_openvex_not_affected_statement_fields():
    items = parse_vex(
        [stmt(justification="component_not_present", impact_statement=" not shipped ", products=[{"@id": OCI}])],
        reason="fallback",
        expires_at="2027-01-04",
    )
    assert docs(items) == [
        (
            "statements[0]",
            {
                "advisory_id": "CVE-2024-1",
                "reason": "component_not_present: not shipped",
                "expires_at": "2027-01-04",
                "image": "ghcr.io/acme/api",
            },
        )
    ]


@pytest.mark.parametrize(
    "said, reason, expected",
    [
        ({"justification": "vulnerable_code_not_present"}, "fallback", "vulnerable_code_not_present"),
        ({"impact_statement": "only in tests"}, "fallback", "only in tests"),
        ({"status_notes": "behind a proxy"}, None, "behind a proxy"),
        ({"justification": "j", "impact_statement": "i", "status_notes": "n"}, None, "j: i"),
        ({"justification": "j", "status_notes": "n"}, None, "j: n"),
        ({"impact_statement": "   "}, "fallback", "fallback"),
        ({}, "fallback", "fallback"),
        ({}, None, None),
    ],
)
def test_parse_openvex_reason(said, reason, expected):
    [item] = parse_vex([stmt(**said)], reason=reason)
    assert item.doc.get("reason") == expected
    assert "expires_at" not in item.doc  # none given: validation names statements[0].expires_at


def test_parse_openvex_skips_other_statuses():
    statuses = ["affected", "fixed", "under_investigation", "not_affected"]
    items = parse_vex([{"vulnerability": {"name": f"CVE-{s}"}, "status": s, "products": [OCI]} for s in statuses])
    assert docs(items) == [("statements[3]", {"advisory_id": "CVE-not_affected", "image": "ghcr.io/acme/api"})]
    # a statement of another status makes no exception, but may withdraw one: it needs its vulnerability's name
    with pytest.raises(imports.BadDocument) as exc:
        parse_vex([stmt(), {"status": "affected", "products": [OCI]}])
    assert exc.value.where == "statements[1].vulnerability"


@pytest.mark.parametrize(
    "product, image",
    [
        (OCI, "ghcr.io/acme/api"),
        ({"@id": OCI}, "ghcr.io/acme/api"),
        ({"@id": "https://acme.example/products/api", "identifiers": {"purl": OCI}}, "ghcr.io/acme/api"),
        (
            "pkg:oci/debian@sha256:244fd47e07d10?repository_url=docker.io/library/debian&arch=amd64",
            "docker.io/library/debian",
        ),
        ("pkg:oci/hello-wasm@sha256%3A244fd47e07d10?tag=v1", "hello-wasm"),  # no repository_url: the name
        ("pkg:oci/api?repository_url=https%3A%2F%2Fregistry.test%2Facme%2Fapi%2F", "registry.test/acme/api"),
        ("pkg:oci/api?repository_url=localhost%3A5000%2Fapi%3A1.2", "localhost:5000/api"),  # a tag in the url
        ("pkg:/oci/api?Repository_URL=ghcr.io/acme/api#sub/path", "ghcr.io/acme/api"),
    ],
)
def test_parse_openvex_oci_products_are_image_patterns(product, image):
    [item] = parse_vex([stmt(products=[product])])
    assert item.doc["image"] == image


@pytest.mark.parametrize(
    "product, message",
    [
        ("pkg:deb/debian/openssl@3.0.1", "is not a pkg:oci purl"),
        ({"@id": "pkg:npm/left-pad@1.0.0"}, "is not a pkg:oci purl"),
        ("ghcr.io/acme/api:1", "is not a package URL"),
        ("pkg:oci", "is not a package URL"),
        ({"@id": "https://acme.example/api"}, "names no package URL"),
        (42, "must be a purl or an object"),
        ("pkg:oci/api?repository_url=ghcr.io/acme/*", "is not an image name"),
        ("pkg:oci/api?repository_url=ghcr.io//api", "is not an image name"),
    ],
)
def test_parse_openvex_refuses_products_that_are_not_images(product, message):
    with pytest.raises(imports.BadDocument) as exc:
        parse_vex([stmt(), stmt(products=[OCI, product])])
    assert exc.value.where == "statements[1].products[1]"
    assert message in exc.value.message


def test_parse_openvex_one_exception_per_product_and_subcomponent():
    other = "pkg:oci/worker?repository_url=ghcr.io/acme/worker"
    subs = [
        {"@id": "pkg:deb/debian/libssl3@3.0.11-1?arch=amd64&distro=debian-12"},
        "pkg:maven/org.springframework/spring-beans@5.3.17",
        {"@id": "pkg:npm/%40babel/traverse@7.0.0"},
        {"@id": "pkg:golang/github.com/docker/docker@v24.0.0"},
        {"identifiers": {"purl": "pkg:apk/alpine/musl@1.2.4-r2"}},
        {"@id": "pkg:pypi/requests@2.31.0"},
    ]
    items = parse_vex([stmt(products=[{"@id": OCI, "subcomponents": subs}, {"@id": other}])])
    assert [(i.where, i.doc.get("image"), i.doc.get("package_name")) for i in items] == [
        ("statements[0]", "ghcr.io/acme/api", "libssl3"),
        ("statements[0]", "ghcr.io/acme/api", "org.springframework:spring-beans"),
        ("statements[0]", "ghcr.io/acme/api", "@babel/traverse"),
        ("statements[0]", "ghcr.io/acme/api", "github.com/docker/docker"),
        ("statements[0]", "ghcr.io/acme/api", "musl"),
        ("statements[0]", "ghcr.io/acme/api", "requests"),
        ("statements[0]", "ghcr.io/acme/worker", None),
    ]


@pytest.mark.parametrize(
    "statement",
    [
        {"vulnerability": {"name": "CVE-2024-1"}, "status": "not_affected", "justification": "component_not_present"},
        stmt(products=None),
        stmt(products=[]),
        stmt(products=None, subcomponents=["pkg:deb/debian/openssl@3"]),  # v0.0.1: subcomponents, no product
    ],
)
def test_parse_openvex_refuses_not_affected_without_products(statement):
    """OpenVEX: a statement must name its products (or inherit them from an encapsulating document, which an import
    has not); an exception in every image of the org would except more than the statement says."""
    with pytest.raises(imports.BadDocument) as exc:
        parse_vex([stmt(), statement])
    assert exc.value.where == "statements[1].products"
    assert "names no product" in exc.value.message


@pytest.mark.parametrize(
    "subcomponents, where, message",
    [
        (["pkg:oci/base?repository_url=ghcr.io/acme/base"], "statements[0].products[0].subcomponents[0]", "an image"),
        (["openssl"], "statements[0].products[0].subcomponents[0]", "not a package URL"),
        ("pkg:deb/debian/openssl", "statements[0].products[0].subcomponents", "must be a list"),
    ],
)
def test_parse_openvex_refuses_bad_subcomponents(subcomponents, where, message):
    with pytest.raises(imports.BadDocument) as exc:
        parse_vex([stmt(products=[{"@id": OCI, "subcomponents": subcomponents}])])
    assert (exc.value.where, message in exc.value.message) == (where, True)


def test_parse_openvex_v0_0_1_shape():
    """The first OpenVEX documents: @context without a version, a string vulnerability, products as purl strings and
    subcomponents on the statement, for each product."""
    doc = {
        "@context": "https://openvex.dev/ns",
        "@id": "https://openvex.dev/docs/example/vex-9fb3463de1b57",
        "author": "Wolfi J Inkinson",
        "role": "Document Creator",
        "timestamp": "2023-01-08T18:02:03.647787998-06:00",
        "version": "1",
        "statements": [
            {
                "vulnerability": "CVE-2023-12345",
                "products": ["pkg:oci/git?repository_url=cgr.dev/chainguard/git"],
                "subcomponents": ["pkg:apk/wolfi/git@2.39.0-r1?arch=x86_64"],
                "status": "not_affected",
                "justification": "inline_mitigations_already_exist",
                "impact_statement": "Included git is mitigated against CVE-2023-12345 !",
            }
        ],
    }
    assert docs(imports.parse("openvex", doc, expires_at="2027-01-04")) == [
        (
            "statements[0]",
            {
                "advisory_id": "CVE-2023-12345",
                "reason": "inline_mitigations_already_exist: Included git is mitigated against CVE-2023-12345 !",
                "expires_at": "2027-01-04",
                "image": "cgr.dev/chainguard/git",
                "package_name": "git",
            },
        )
    ]
    # subcomponents on a statement with products in object form: for each product without its own
    [item] = parse_vex([stmt(subcomponents=["pkg:deb/debian/openssl@3"], products=[{"@id": OCI}])])
    assert item.doc == {"advisory_id": "CVE-2024-1", "image": "ghcr.io/acme/api", "package_name": "openssl"}


@pytest.mark.parametrize(
    "document, where",
    [
        ([], "$"),
        ("CVE-2024-1", "$"),
        ({"statements": []}, "@context"),
        ({"@context": "https://openvex.dev/nsx", "statements": []}, "@context"),
        ({"@context": "http://openvex.dev/ns/v0.2.0", "statements": []}, "@context"),
        ({"@context": "https://cyclonedx.org/schema/bom-1.5.schema.json", "statements": []}, "@context"),
        ({"@context": "https://openvex.dev/ns/v0.2.0"}, "statements"),
        ({"@context": "https://openvex.dev/ns/v0.2.0", "statements": {}}, "statements"),
        ({"@context": "https://openvex.dev/ns/v0.2.0", "statements": ["CVE-1"]}, "statements[0]"),
        (
            {"@context": "https://openvex.dev/ns/v0.2.0", "statements": [{"vulnerability": "CVE-1"}]},
            "statements[0].status",
        ),
    ],
)
def test_parse_openvex_refuses_what_is_not_openvex(document, where):
    with pytest.raises(imports.BadDocument) as exc:
        imports.parse("openvex", document, reason="r", expires_at="2027-01-04")
    assert exc.value.where == where


@pytest.mark.parametrize(
    "statement, where",
    [
        (stmt(vulnerability=None), "statements[1].vulnerability"),
        (stmt(vulnerability={"@id": "https://nvd.nist.gov/vuln/detail/CVE-2024-1"}), "statements[1].vulnerability"),
        (stmt(vulnerability={"name": " "}), "statements[1].vulnerability"),
        (stmt(vulnerability={"name": "CVE-\x00"}), "statements[1].vulnerability"),
        (stmt(justification=["component_not_present"]), "statements[1].justification"),
        (stmt(impact_statement=7), "statements[1].impact_statement"),
        (stmt(products="pkg:oci/api"), "statements[1].products"),
    ],
)
def test_parse_openvex_refuses_malformed_statements(statement, where):
    with pytest.raises(imports.BadDocument) as exc:
        parse_vex([stmt(), statement])
    assert exc.value.where == where


def test_parse_openvex_context_as_a_list():
    context = ["https://openvex.dev/ns/v0.2.0", {"extra": "https://example.test/"}]
    assert len(parse_vex([stmt()], context=context)) == 1


def test_parse_trivyignore_lines():
    text = (
        "# comment\n"
        "\n"
        "CVE-2019-1549 exp:2027-03-01\r\n"
        "   # indented comment\n"
        "CVE-2019-1551\t# trailing comment with exp:2020-01-01 in it\n"
        "  GHSA-xxxx-yyyy-zzzz   exp:2027-01-04   # both\n"
        "CVE-2019-14697"
    )
    items = imports.parse("trivyignore", text, reason="why", expires_at="2027-06-01T12:00:00Z")
    assert docs(items) == [
        ("line 3", {"advisory_id": "CVE-2019-1549", "reason": "why", "expires_at": "2027-03-01"}),
        ("line 5", {"advisory_id": "CVE-2019-1551", "reason": "why", "expires_at": "2027-06-01T12:00:00Z"}),
        ("line 6", {"advisory_id": "GHSA-xxxx-yyyy-zzzz", "reason": "why", "expires_at": "2027-01-04"}),
        ("line 7", {"advisory_id": "CVE-2019-14697", "reason": "why", "expires_at": "2027-06-01T12:00:00Z"}),
    ]
    # without defaults, what is missing is left out for validation to name
    assert docs(imports.parse("trivyignore", "CVE-1\nCVE-2 exp:2027-01-04\n")) == [
        ("line 1", {"advisory_id": "CVE-1"}),
        ("line 2", {"advisory_id": "CVE-2", "expires_at": "2027-01-04"}),
    ]
    assert imports.parse("trivyignore", "# nothing\n\n") == []


@pytest.mark.parametrize(
    "line, message",
    [
        ("CVE-1 exp:2027-02-30", "is not a date"),
        ("CVE-1 exp:2027-2-3", "is not a date"),
        ("CVE-1 exp:", "is not a date"),
        ("CVE-1 exp:tomorrow", "is not a date"),
        ("CVE-1 exp:\uff12\uff10\uff12\uff17-01-04", "is not a date"),  # fullwidth digits: not YYYY-MM-DD
        ("CVE-1 exp:2027-01-04 exp:2027-02-04", "more than one exp:"),
        ("CVE-1 CVE-2", "after the id"),
        ("CVE-1 EXP:2027-01-04", "after the id"),
        ("CVE-1\x00", "control character"),
        ("CVE-1\rCVE-2", "control character"),
    ],
)
def test_parse_trivyignore_refuses_bad_lines(line, message):
    with pytest.raises(imports.BadDocument) as exc:
        imports.parse("trivyignore", f"# first\nCVE-0\n{line}\nCVE-9\n", reason="r", expires_at="2027-01-04")
    assert exc.value.where == "line 3"
    assert message in exc.value.message


def test_parse_unknown_format_and_not_text():
    with pytest.raises(ValueError, match="unknown import format"):
        imports.parse("yaml", "CVE-1")
    with pytest.raises(imports.BadDocument) as exc:
        imports.parse("trivyignore", {"CVE-1": True})
    assert exc.value.where == "$"


# ------------------------------------------------------------------ OpenVEX: later statements supersede earlier ones
#
# OpenVEX: a document is a sequence of statements; for the same vulnerability and product, a later one (by its
# timestamp, else the document's; on a tie, or with none at all, the later in the document) supersedes an earlier
# one. Only where the latest statement is not_affected is an exception made.

API_IMAGE = "pkg:oci/api?repository_url=ghcr.io/acme/api"
WEB_IMAGE = "pkg:oci/web?repository_url=ghcr.io/acme/web"


def said(status: str, when: str | None = None, products: Any = (API_IMAGE,), name: str = "CVE-2024-0001", **more):
    """A statement as its author wrote it: not_affected with its justification, affected with its action."""
    st: dict[str, Any] = {"vulnerability": {"name": name}, "status": status, **more}
    if products is not None:
        st["products"] = list(products)
    if when is not None:
        st["timestamp"] = when
    if status == "not_affected":
        st.setdefault("justification", "vulnerable_code_not_in_execute_path")
    if status == "affected":
        st.setdefault("action_statement", "upgrade now")
    return st


def vex_doc(*statements: dict[str, Any], **document: Any) -> dict[str, Any]:
    return {
        "@context": "https://openvex.dev/ns/v0.2.0",
        "@id": "https://acme.example/vex/api",
        "author": "Acme Security Team",
        "version": 2,
        **document,
        "statements": list(statements),
    }


def upload_high(client, token, image_ref: str, cve: str = "CVE-2024-0001") -> dict[str, Any]:
    """An upload under block_pull with one high finding of `cve`; the upload's answer."""
    r = post(client, token, seed([finding(cve_id=cve, severity="high", package="openssl")], image_ref=image_ref))
    assert r.status_code == 202, r.json
    return r.json


def test_auditors_repro_later_affected_statement_blocks_again(app, client, token):
    """The repro: not_affected on 2026-01-01, then affected on 2026-06-01 with an action statement, same
    vulnerability and product. Before: imported 1, and the upload answered success."""
    doc = vex_doc(
        said("not_affected", "2026-01-01T00:00:00Z"),
        said("affected", "2026-06-01T00:00:00Z", action_statement="upgrade now"),
        timestamp="2026-06-01T00:00:00Z",
    )
    r = import_(client, token, "openvex", doc, expires_at=in_days(30))
    assert r.status_code == 201, r.json
    answer = upload_high(client, token, "ghcr.io/acme/api:1")
    assert (r.json["imported"], answer["status"]) == (0, "failure"), (r.json, answer)
    assert r.json["items"] == [] and stored(app) == 0
    scan = client.get(f"/api/v1/orgs/acme/image-scans/{answer['scan_run_id']}", headers=auth(token)).json
    assert [(f["cve_id"], f["blocking"], f["exception_id"]) for f in scan["findings"]] == [
        ("CVE-2024-0001", True, None)
    ]


@pytest.mark.parametrize(
    "statements, document, in_force",
    [
        pytest.param(
            [said("not_affected", "2026-01-01"), said("affected", "2026-06-01")], {}, False, id="later-affected"
        ),
        pytest.param([said("affected", "2026-01-01"), said("not_affected", "2026-06-01")], {}, True, id="later-na"),
        pytest.param(  # the timestamps say which is later, not the place in the document
            [said("affected", "2026-06-01"), said("not_affected", "2026-01-01")], {}, False, id="by-timestamp"
        ),
        pytest.param(
            [said("not_affected", "2026-01-01T10:00:00Z"), said("fixed", "2026-01-01T10:00:01Z")],
            {},
            False,
            id="later-fixed",
        ),
        pytest.param(
            [said("not_affected", "2026-01-01"), said("under_investigation", "2026-02-01")],
            {},
            False,
            id="later-under-investigation",
        ),
        pytest.param(  # a tie: the later in the document
            [said("not_affected", "2026-03-01T00:00:00Z"), said("affected", "2026-03-01T01:00:00+01:00")],
            {},
            False,
            id="tie-affected-last",
        ),
        pytest.param(
            [said("affected", "2026-03-01T00:00:00Z"), said("not_affected", "2026-03-01T00:00:00.000Z")],
            {},
            True,
            id="tie-not-affected-last",
        ),
        pytest.param(  # no statement timestamps: both inherit the document's, a tie
            [said("not_affected"), said("affected")], {"timestamp": "2026-05-01T00:00:00Z"}, False, id="inherited"
        ),
        pytest.param(  # the document's timestamp stands in for the statement's that has none
            [said("affected"), said("not_affected", "2026-01-01")],
            {"timestamp": "2026-05-01T00:00:00Z"},
            False,
            id="inherited-is-later",
        ),
        pytest.param([said("not_affected"), said("affected")], {}, False, id="no-timestamps-document-order"),
        pytest.param([said("affected"), said("not_affected")], {}, True, id="no-timestamps-na-last"),
        pytest.param(  # another vulnerability's statement changes nothing
            [said("not_affected", "2026-01-01"), said("affected", "2026-06-01", name="CVE-2024-0002")],
            {},
            True,
            id="other-vulnerability",
        ),
        pytest.param(  # another product's statement changes nothing
            [said("not_affected", "2026-01-01"), said("affected", "2026-06-01", products=[WEB_IMAGE])],
            {},
            True,
            id="other-product",
        ),
    ],
)
def test_openvex_latest_statement_decides_through_an_upload(app, client, token, statements, document, in_force):
    r = import_(client, token, "openvex", vex_doc(*statements, **document), expires_at=in_days(30))
    assert r.status_code == 201, r.json
    assert r.json["imported"] == (1 if in_force else 0)
    assert [(e["advisory_id"], e["image"]) for e in r.json["items"]] == (
        [("CVE-2024-0001", "ghcr.io/acme/api")] if in_force else []
    )
    answer = upload_high(client, token, "ghcr.io/acme/api:1")
    assert answer["status"] == ("success" if in_force else "failure"), answer


def test_openvex_later_affected_withdraws_for_that_product_only(app, client, token):
    doc = vex_doc(
        said("not_affected", "2026-01-01", products=[API_IMAGE, WEB_IMAGE]),
        said("affected", "2026-06-01", products=[API_IMAGE]),
    )
    r = import_(client, token, "openvex", doc, expires_at=in_days(30))
    assert r.status_code == 201, r.json
    assert [(e["image"], e["advisory_id"]) for e in r.json["items"]] == [("ghcr.io/acme/web", "CVE-2024-0001")]
    assert upload_high(client, token, "ghcr.io/acme/api:1")["status"] == "failure"
    assert upload_high(client, token, "ghcr.io/acme/web:1")["status"] == "success"


def test_openvex_later_affected_package_withdraws_in_a_real_report(app, client, token):
    """The fixture, with a later statement that e2fsprogs (one of the two packages its first statement speaks of) is
    affected after all: the e2fsprogs exception is not made, libss2's is, on Trivy's own debian-stretch report."""
    doc = openvex()
    doc["statements"].append(
        {
            "vulnerability": {"name": "CVE-2019-5094"},
            "timestamp": "2026-12-06T09:00:00Z",
            "products": [
                {
                    "@id": "pkg:oci/debian-stretch?repository_url=registry.test%2Facme%2Fdebian-stretch",
                    "subcomponents": [{"@id": "pkg:deb/debian/e2fsprogs@1.43.4-2?arch=amd64&distro=debian-9.9"}],
                }
            ],
            "status": "affected",
            "action_statement": "e2fsck now runs on uploaded images: rebuild with e2fsprogs 1.45.4.",
        }
    )
    r = import_(client, token, "openvex", doc, expires_at=in_days(30))
    assert r.status_code == 201, r.json
    assert r.json["imported"] == 3
    rules = [rule for rule in vex_rules(openvex()) if rule[0] != "CVE-2019-5094"] + [
        ("CVE-2019-5094", "registry.test/acme/debian-stretch", {"libss2"})
    ]
    image = "registry.test/acme/debian-stretch"
    expected = expected_by_vex(report("debian-stretch"), image, rules)
    assert ("CVE-2019-5094", "libss2") in expected and ("CVE-2019-5094", "e2fsprogs") not in expected
    assert_covers_exactly(upload(client, token, "debian-stretch", f"{image}:1@sha256:{'a' * 64}"), expected)


def test_openvex_supersession_refusals_store_nothing(app, client, token):
    """Which statement is later cannot be told (a statement without a timestamp, in a document without one, beside
    one with a timestamp), or a timestamp is not one: 422 naming it, nothing stored."""
    for doc, where in [
        (vex_doc(said("not_affected", "2026-01-01"), said("affected")), "statements[1].timestamp"),
        (vex_doc(said("not_affected", "2026-13-01"), said("affected", "2026-06-01")), "statements[0].timestamp"),
        (vex_doc(said("not_affected"), timestamp="yesterday"), "timestamp"),
    ]:
        r = import_(client, token, "openvex", doc, expires_at=in_days(30))
        assert r.status_code == 422, r.json
        assert [d["path"] for d in r.json["details"]] == [where]
    assert stored(app) == 0


def kept(*statements: dict[str, Any], **document: Any) -> list[tuple[str, str | None, str | None]]:
    """The exceptions parse makes: (statement, image, package)."""
    items = imports.parse("openvex", vex_doc(*statements, **document), expires_at="2027-01-04")
    return [(i.where, i.doc.get("image"), i.doc.get("package_name")) for i in items]


API = "ghcr.io/acme/api"
OPENSSL = "pkg:deb/debian/openssl@3.0.11-1?arch=amd64"
ZLIB = "pkg:deb/debian/zlib1g@1.2.13"


def with_subs(purl: str, *subcomponents: str) -> dict[str, Any]:
    return {"@id": purl, "subcomponents": [{"@id": s} for s in subcomponents]}


def test_parse_openvex_supersession_by_package():
    # a later affected for one package withdraws an exception covering every package of the image
    assert (
        kept(
            said("not_affected", "2026-01-01"),
            said("affected", "2026-06-01", products=[with_subs(API_IMAGE, OPENSSL)]),
        )
        == []
    )
    # ... but not the other packages' own exceptions
    assert kept(
        said("not_affected", "2026-01-01", products=[with_subs(API_IMAGE, OPENSSL, ZLIB)]),
        said("affected", "2026-06-01", products=[with_subs(API_IMAGE, OPENSSL)]),
    ) == [("statements[0]", API, "zlib1g")]
    # a later not_affected for one package (every version of it), after the image was affected: that package's
    # exception stands
    assert kept(
        said("affected", "2026-01-01"),
        said("not_affected", "2026-06-01", products=[with_subs(API_IMAGE, "pkg:deb/debian/openssl")]),
    ) == [("statements[1]", API, "openssl")]
    # for one version of it only, not: the exception would cover the package's other versions, still affected
    assert (
        kept(
            said("affected", "2026-01-01"),
            said("not_affected", "2026-06-01", products=[with_subs(API_IMAGE, OPENSSL)]),
        )
        == []
    )
    # a later not_affected for the whole image supersedes an affected package
    assert kept(
        said("affected", "2026-01-01", products=[with_subs(API_IMAGE, OPENSSL)]),
        said("not_affected", "2026-06-01"),
    ) == [("statements[1]", API, None)]
    # another version of the package is the same package to an exception, which covers every version
    assert (
        kept(
            said("not_affected", "2026-06-01", products=[with_subs(API_IMAGE, "pkg:deb/debian/openssl@3.0.12-1")]),
            said("affected", "2026-01-01", products=[with_subs(API_IMAGE, "pkg:deb/debian/openssl@3.0.11-1")]),
        )
        == []
    )


def test_parse_openvex_supersession_by_image_version():
    """An exception covers every digest, tag and platform of its image: an affected statement in force for any of
    them withdraws it, whichever is later; one about every version that is later than it does not."""
    digest_a = "pkg:oci/api@sha256%3Aaaaa?repository_url=ghcr.io/acme/api"
    digest_b = "pkg:oci/api@sha256%3Abbbb?repository_url=ghcr.io/acme/api"
    assert (
        kept(
            said("not_affected", "2026-06-01", products=[digest_b]), said("affected", "2026-01-01", products=[digest_a])
        )
        == []
    )
    assert (
        kept(
            said("not_affected", "2026-01-01", products=[digest_b]), said("affected", "2026-06-01", products=[digest_a])
        )
        == []
    )
    assert kept(said("affected", "2026-01-01", products=[digest_a]), said("not_affected", "2026-06-01")) == [
        ("statements[1]", API, None)
    ]
    # the same digest, written percent-encoded or not
    assert kept(
        said("affected", "2026-01-01", products=["pkg:oci/api@sha256:aaaa?repository_url=ghcr.io%2Facme%2Fapi"]),
        said("not_affected", "2026-06-01", products=[digest_a]),
    ) == [("statements[1]", API, None)]
    amd64, arm64 = API_IMAGE + "&arch=amd64", API_IMAGE + "&arch=arm64"
    assert (
        kept(said("affected", "2026-01-01", products=[amd64]), said("not_affected", "2026-06-01", products=[arm64]))
        == []
    )
    assert kept(
        said("affected", "2026-01-01", products=[amd64]), said("not_affected", "2026-06-01", products=[amd64])
    ) == [("statements[1]", API, None)]


def test_parse_openvex_supersession_same_vulnerability_by_alias_and_letter_case():
    ghsa = {"name": "GHSA-aaaa-bbbb-cccc", "aliases": ["cve-2024-0001"]}
    assert kept(said("not_affected", "2026-01-01"), said("affected", "2026-06-01", vulnerability=ghsa)) == []
    assert kept(said("not_affected", "2026-01-01"), said("affected", "2026-06-01", name="cve-2024-0001")) == []
    assert kept(said("affected", "2026-01-01", vulnerability=ghsa), said("not_affected", "2026-06-01")) == [
        ("statements[1]", API, None)
    ]
    with pytest.raises(imports.BadDocument) as exc:
        kept(said("not_affected", vulnerability={"name": "CVE-2024-0001", "aliases": "GHSA-aaaa-bbbb-cccc"}))
    assert exc.value.where == "statements[0].vulnerability.aliases"


def test_parse_openvex_supersession_other_statuses_products():
    # naming no product, a statement of another status may speak of any image: it withdraws in every image
    assert (
        kept(
            said("not_affected", "2026-01-01", products=[API_IMAGE, WEB_IMAGE]),
            said("affected", "2026-06-01", products=None),
        )
        == []
    )
    # ... in the packages it names
    assert kept(
        said("not_affected", "2026-01-01", products=[with_subs(API_IMAGE, OPENSSL), with_subs(WEB_IMAGE, ZLIB)]),
        said("affected", "2026-06-01", products=None, subcomponents=[OPENSSL]),
    ) == [("statements[0]", "ghcr.io/acme/web", "zlib1g")]
    # a package as the product (Trivy matches it against the image's packages): that package, in any image
    assert kept(said("not_affected", "2026-01-01"), said("affected", "2026-06-01", products=[OPENSSL])) == []
    assert kept(
        said("not_affected", "2026-01-01", products=[with_subs(API_IMAGE, ZLIB)]),
        said("affected", "2026-06-01", products=[OPENSSL]),
    ) == [("statements[0]", API, "zlib1g")]
    # an image named without its registry (any registry's), or a product this reader cannot tell (a CPE): any image
    for product in ("pkg:oci/api", {"identifiers": {"cpe23": "cpe:2.3:a:acme:api:1:*:*:*:*:*:*:*"}}):
        assert kept(said("not_affected", "2026-01-01"), said("affected", "2026-06-01", products=[product])) == []
    # but an image it cannot read is refused, as in a not_affected statement
    with pytest.raises(imports.BadDocument) as exc:
        kept(
            said("not_affected", "2026-01-01"),
            said("affected", "2026-06-01", products=["pkg:oci/api?repository_url=ghcr.io/acme/*"]),
        )
    assert exc.value.where == "statements[1].products[0]"


@pytest.mark.parametrize(
    "earlier, later",
    [
        ("2026-01-01", "2026-01-02"),
        ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00.000000001Z"),  # nanoseconds, as Go tools write them
        ("2026-01-01T00:00:00.999999999Z", "2026-01-01T00:00:01Z"),
        ("2026-01-01T01:00:00+02:00", "2026-01-01T00:00:00Z"),  # 23:00 UTC the day before
        ("2026-01-01T00:00:00-0100", "2026-01-01T01:00:00.5Z"),
        ("2026-01-01T12:00:00", "2026-01-01T12:00:01Z"),  # no zone: UTC
        ("0001-01-01T00:00:00+01:00", "0001-01-01T00:00:00Z"),  # before the first instant a datetime holds in UTC
    ],
)
def test_parse_openvex_timestamps(earlier, later):
    assert kept(said("not_affected", earlier), said("affected", later)) == []
    assert kept(said("affected", earlier), said("not_affected", later)) == [("statements[1]", API, None)]
    # the place in the document does not matter
    assert kept(said("affected", later), said("not_affected", earlier)) == []


@pytest.mark.parametrize(
    "statements, document, where",
    [
        ([said("not_affected", "2026-01-01"), said("affected")], {}, "statements[1].timestamp"),
        ([said("not_affected"), said("affected", "2026-01-01")], {}, "statements[0].timestamp"),
        ([said("not_affected", "01/06/2026")], {}, "statements[0].timestamp"),
        ([said("not_affected", 20260601)], {}, "statements[0].timestamp"),
        ([said("not_affected", "2026-06-01T25:00:00Z")], {}, "statements[0].timestamp"),
        ([said("not_affected", "\uff12\uff10\uff12\uff16-06-01")], {}, "statements[0].timestamp"),
        ([said("not_affected")], {"timestamp": "2026-06-31"}, "timestamp"),
    ],
)
def test_parse_openvex_refuses_what_cannot_be_ordered(statements, document, where):
    with pytest.raises(imports.BadDocument) as exc:
        kept(*statements, **document)
    assert exc.value.where == where


def test_parse_openvex_untimed_statements_of_vulnerabilities_without_conflict_are_kept():
    # a statement without a timestamp, in a document without one, is refused only beside a timed statement of
    # another status about the same vulnerability: elsewhere its place in time does not matter
    assert kept(said("not_affected", "2026-01-01"), said("affected", name="CVE-2024-0002")) == [
        ("statements[0]", API, None)
    ]
    assert kept(said("not_affected", "2026-01-01"), said("not_affected")) == [
        ("statements[0]", API, None),
        ("statements[1]", API, None),
    ]


def test_parse_openvex_bounds_the_comparisons(monkeypatch):
    """Statements about one vulnerability that overlap in many ways take comparisons; past MAX_COMPARISONS (about a
    second's work) the document is refused, naming that vulnerability's first statement."""
    statements = [said("affected", products=[f"{API_IMAGE}&arch=a{i}"]) for i in range(20)]
    statements += [said("not_affected", products=[f"{API_IMAGE}&arch=a{i}"]) for i in reversed(range(20))]
    assert kept(said("not_affected", name="CVE-2024-0002"), *statements) == [
        ("statements[0]", API, None),  # another vulnerability
        *[(f"statements[{21 + i}]", API, None) for i in range(20)],
    ]
    monkeypatch.setattr(imports, "MAX_COMPARISONS", 50)
    with pytest.raises(imports.BadDocument) as exc:
        kept(said("not_affected", name="CVE-2024-0002"), *statements)
    assert exc.value.where == "statements[1]"
    assert "split the document" in exc.value.message
