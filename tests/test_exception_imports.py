"""Importing exceptions (spec section 10): OpenVEX not_affected statements and .trivyignore files, through the API,
then real Trivy reports uploaded under block_pull must be excepted on exactly the findings the documents speak of;
bad documents are refused whole, naming the statement or line. The expectations are computed here from the
documents and the report JSON, not by app code. Then `imports.parse` alone, rule by rule."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import pytest
import sqlalchemy as sa

from app import db
from app.exceptions import imports
from app.models import PolicyException
from tests.factories import FIXTURES, SHA, census, make_org, make_token, post

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
    pytest.param(
        "trivyignore",
        "CVE-2019-1549 exp:2019-01-01\n",
        {},
        ["line 1.expires_at"],
        id="trivyignore-exp-in-the-past",
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
    return {"vulnerability": {"name": "CVE-2024-1"}, "status": "not_affected", **fields}


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
    items = parse_vex([{"vulnerability": {"name": f"CVE-{s}"}, "status": s} for s in statuses])
    assert docs(items) == [("statements[3]", {"advisory_id": "CVE-not_affected"})]
    # a statement that is skipped needs no vulnerability name
    assert parse_vex([{"status": "affected"}]) == []


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


def test_parse_openvex_without_products_excepts_everywhere():
    assert docs(parse_vex([stmt()])) == [("statements[0]", {"advisory_id": "CVE-2024-1"})]
    assert docs(parse_vex([stmt(products=[])])) == [("statements[0]", {"advisory_id": "CVE-2024-1"})]


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
    # subcomponents on a statement without products: package-scoped, in any image
    [item] = parse_vex([stmt(subcomponents=["pkg:deb/debian/openssl@3"])])
    assert item.doc == {"advisory_id": "CVE-2024-1", "package_name": "openssl"}


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
