"""The insights API (issue 17): the advisory search over each image's latest scan (ids and vendor ids, letter case,
prefixes, paging, other orgs never), the images-now list and one image, the trend; and every bad input a JSON 4xx."""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import pytest

from app.findings.queries import encode_cursor as scans_cursor
from app.models import utcnow
from app.web import cursors
from tests.factories import SHA, SHA2, finding, make_org, make_token, stored_scan

SEARCH = "/api/v1/orgs/{slug}/advisories/{advisory_id}/images"
IMAGES = "/api/v1/orgs/{slug}/images"
IMAGE = "/api/v1/orgs/{slug}/images/{image_id}"
IMAGE_TREND = "/api/v1/orgs/{slug}/images/{image_id}/trend"
TREND = "/api/v1/orgs/{slug}/trend"
LOG4J = finding("CVE-2021-44228", "critical", "log4j-core", "2.14.1", "2.15.0")
LEVELS = ("critical", "high", "medium", "low")


@pytest.fixture
def tokens(app) -> dict[str, str]:
    """Orgs acme and other, each with a token that may upload and read."""
    make_org(app, "acme")
    make_org(app, "other")
    return {slug: make_token(app, slug, ["findings:write", "findings:read"]) for slug in ("acme", "other")}


upload = stored_scan  # the scan id of an upload that must be stored


def get(client: Any, token: str | None, path: str, slug: str = "acme", expect: int = 200, **params: Any) -> Any:
    """GET `path` (its {fields} from `params`, the rest as the query string); the JSON answer, of status `expect`."""
    fields = {k: params.pop(k) for k in ("advisory_id", "image_id") if k in params}
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    r = client.get(path.format(slug=slug, **fields), headers=headers, query_string=params)
    assert r.status_code == expect, (r.status_code, r.get_data(as_text=True)[:500])
    assert r.mimetype == "application/json"
    return r.get_json()


def search(client: Any, token: str, advisory_id: str, slug: str = "acme", **params: Any) -> list[dict[str, Any]]:
    """Every page of a search, with no item twice."""
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(1000):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = get(client, token, SEARCH, slug=slug, advisory_id=quote(advisory_id, safe=""), **query)
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    keys = [(i["scan_run_id"], i["cve_id"], i["package_name"]) for i in items]
    assert len(keys) == len(set(keys)), keys
    return items


# ---------------------------------------------------------------- the advisory search


def test_search_finds_the_advisory_as_id_and_as_vendor_id_in_any_letter_case(client, tokens):
    t = tokens["acme"]
    api = upload(client, t, image_ref="ghcr.io/acme/api:1", findings=[LOG4J, finding()])
    vendor = finding("DSA-5000-1", "high", "liblog4j2-java", "2.11", None, vendor_ids=["cve-2021-44228"])
    web = upload(client, t, image_ref="ghcr.io/acme/web:2", repo="acme/web", sha=SHA2, findings=[vendor])
    upload(client, t, image_ref="ghcr.io/acme/clean:1", findings=[finding()])

    for asked in ("CVE-2021-44228", "cve-2021-44228", "Cve-2021-44228"):
        page = get(client, t, SEARCH, advisory_id=asked)
        assert (page["advisory_id"], page["prefix"], page["next_cursor"]) == ("CVE-2021-44228", False, None)
        assert [(i["scan_run_id"], i["cve_id"], i["matched_as"]) for i in page["items"]] == [
            (web, "DSA-5000-1", "vendor id"),
            (api, "CVE-2021-44228", "id"),
        ]
    by_vendor, by_id = get(client, t, SEARCH, advisory_id="CVE-2021-44228")["items"]
    assert by_id == {
        "image_id": by_id["image_id"],
        "repo_full_name": "acme/api",
        "image_name": "ghcr.io/acme/api",
        "image_ref": "ghcr.io/acme/api:1",
        "ref": None,
        "commit_sha": SHA,
        "pr": None,
        "scan_run_id": api,
        "scanned_at": by_id["scanned_at"],
        "url": f"http://fremforge.test/admin/orgs/acme/code-security/image-scanning/scans/{api}",
        "cve_id": "CVE-2021-44228",
        "vendor_ids": [],
        "matched_as": "id",
        "package_name": "log4j-core",
        "installed_version": "2.14.1",
        "fixed_version": "2.15.0",
        "fixable": True,
        "severity": "critical",
        "excepted": False,
        "exception": None,
    }
    assert (by_vendor["repo_full_name"], by_vendor["commit_sha"], by_vendor["vendor_ids"]) == (
        "acme/web",
        SHA2,
        ["cve-2021-44228"],
    )
    assert (by_vendor["fixed_version"], by_vendor["fixable"]) == (None, False)
    # the vendor id is searchable by itself too, and an id nobody has is an empty answer, not a 404
    assert [i["cve_id"] for i in get(client, t, SEARCH, advisory_id="dsa-5000-1")["items"]] == ["DSA-5000-1"]
    assert get(client, t, SEARCH, advisory_id="CVE-1999-0001") == {
        "advisory_id": "CVE-1999-0001",
        "prefix": False,
        "items": [],
        "next_cursor": None,
    }


def test_search_never_shows_another_orgs_images(app, client, tokens):
    upload(client, tokens["acme"], findings=[LOG4J])
    theirs = upload(client, tokens["other"], slug="other", repo="other/api", findings=[LOG4J])
    ours = get(client, tokens["acme"], SEARCH, advisory_id="CVE-2021-44228")["items"]
    assert [i["repo_full_name"] for i in ours] == ["acme/api"]
    other = get(client, tokens["other"], SEARCH, slug="other", advisory_id="CVE-2021-44228")["items"]
    assert [(i["repo_full_name"], i["scan_run_id"]) for i in other] == [("other/api", theirs)]
    # another org's token is refused on acme, as the rest of the API refuses it
    body = get(client, tokens["other"], SEARCH, advisory_id="CVE-2021-44228", expect=403)
    assert body["error"] == "forbidden"


def test_search_reads_each_images_latest_scan_only(client, tokens):
    t = tokens["acme"]
    upload(client, t, image_ref="ghcr.io/acme/api:1", findings=[LOG4J])
    web = upload(client, t, image_ref="ghcr.io/acme/web:1", findings=[LOG4J])
    assert len(get(client, t, SEARCH, advisory_id="CVE-2021-44228")["items"]) == 2
    fixed = upload(client, t, image_ref="ghcr.io/acme/api:2", sha=SHA2, findings=[finding()])  # api fixed: drops out
    items = get(client, t, SEARCH, advisory_id="CVE-2021-44228")["items"]
    assert [i["image_name"] for i in items] == ["ghcr.io/acme/web"]
    assert fixed not in [i["scan_run_id"] for i in items]
    # the same image name in another repo is another image
    again = upload(client, t, image_ref="ghcr.io/acme/api:3", repo="acme/other", findings=[LOG4J])
    items = get(client, t, SEARCH, advisory_id="CVE-2021-44228")["items"]
    assert [(i["repo_full_name"], i["image_name"], i["scan_run_id"]) for i in items] == [
        ("acme/other", "ghcr.io/acme/api", again),
        ("acme/api", "ghcr.io/acme/web", web),
    ]


def test_search_says_which_exception_covers_a_finding(client, tokens, app):
    t = tokens["acme"]
    upload(client, t, image_ref="ghcr.io/acme/api:1", findings=[LOG4J])
    upload(client, t, image_ref="ghcr.io/acme/web:1", findings=[LOG4J])
    writer = make_token(app, "acme", ["settings:write"])
    expires = (utcnow() + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    r = client.post(
        "/api/v1/orgs/acme/exceptions",
        json={
            "advisory_id": "cve-2021-44228",
            "image": "ghcr.io/acme/web",
            "reason": "not reachable",
            "expires_at": expires,
        },
        headers={"Authorization": f"Bearer {writer}"},
    )
    assert r.status_code == 201, r.json
    items = {i["image_name"]: i for i in get(client, t, SEARCH, advisory_id="CVE-2021-44228")["items"]}
    assert (items["ghcr.io/acme/api"]["excepted"], items["ghcr.io/acme/api"]["exception"]) == (False, None)
    web = items["ghcr.io/acme/web"]
    assert web["excepted"] is True
    assert web["exception"] == {
        "id": r.json["id"],
        "advisory_id": r.json["advisory_id"],
        "package_name": None,
        "repo_full_name": None,
        "image": "ghcr.io/acme/web",
        "reason": "not reachable",
        "expires_at": r.json["expires_at"],
    }


def test_prefix_search_pages_through_every_hit_without_repeats_or_gaps(client, tokens):
    t = tokens["acme"]
    expected = set()
    for i in range(7):
        ids = [f"CVE-2024-{1000 + i}", f"cve-2024-{2000 + i}"]
        upload(client, t, image_ref=f"ghcr.io/acme/img{i}:1", findings=[finding(x, package=x) for x in ids])
        expected |= {x.upper() for x in ids}
    upload(client, t, image_ref="ghcr.io/acme/old:1", findings=[finding("CVE-2023-1"), finding("CVE-20245")])
    whole = get(client, t, SEARCH, advisory_id="CVE-2024-*", limit=1000)
    assert (whole["advisory_id"], whole["prefix"], whole["next_cursor"]) == ("CVE-2024-*", True, None)
    assert {i["cve_id"].upper() for i in whole["items"]} == expected
    assert {i["matched_as"] for i in whole["items"]} == {"id"}
    for limit in (1, 2, 3, 13, 14):
        paged = search(client, t, "cve-2024-*", limit=limit)
        assert paged == whole["items"], limit  # the same hits in the same order, page after page
    first = get(client, t, SEARCH, advisory_id="CVE-2024-*", limit=5)
    assert len(first["items"]) == 5 and first["next_cursor"]


@pytest.mark.parametrize(
    ("advisory_id", "says"),
    [
        ("%20", "is empty"),
        ("*", "is empty"),
        ("C*", "at least 4 characters"),
        ("CVE*", "at least 4 characters"),
        ("CVE%202021", "not an advisory id"),
        ("CVE-2021-44228%25", "not an advisory id"),
        ("_VE-2021-44228", "not an advisory id"),
        ("%3Cscript%3E", "not an advisory id"),
        ("CVE-2021-**", "not an advisory id"),
        ("x" * 201, "longer than 200 characters"),
        ("%20CVE-2021-44228", "white space"),
        ("CVE-2021-44228%09", "white space"),
    ],
)
def test_bad_advisory_ids_are_a_422_naming_advisory_id(client, tokens, advisory_id, says):
    body = get(client, tokens["acme"], SEARCH, advisory_id=advisory_id, expect=422)
    assert body["error"] == "validation_failed"
    [detail] = body["details"]
    assert (detail["path"], detail["in"]) == ("advisory_id", "path")
    assert says in detail["message"] and says in body["message"]


def test_an_advisory_id_may_hold_a_slash_and_a_long_one_is_fine(client, tokens):
    t = tokens["acme"]
    upload(client, t, findings=[finding("GO-2022/0001"), finding("A" * 200)])
    assert [i["cve_id"] for i in get(client, t, SEARCH, advisory_id="go-2022%2F0001")["items"]] == ["GO-2022/0001"]
    assert [i["cve_id"] for i in get(client, t, SEARCH, advisory_id="a" * 200)["items"]] == ["A" * 200]
    # no id at all is no such path: a JSON 404, never a 500
    assert get(client, t, SEARCH, advisory_id="", expect=404)["error"] == "not_found"


# ---------------------------------------------------------------- cursors, scopes, orgs


@pytest.mark.parametrize(
    ("path", "params"),
    [
        (SEARCH, {"advisory_id": "CVE-2021-44228"}),
        (IMAGES, {}),
    ],
)
@pytest.mark.parametrize(
    "cursor",
    [
        "nonsense",
        scans_cursor(1),  # a scans cursor
        cursors.encode("e", 1),  # an exceptions cursor
        cursors.encode("i", 2**31),  # past a 32-bit image id
        cursors.encode_key("a", "CVE-2021-44228", 2**63),  # past a 64-bit seq
        cursors.encode_key("a", "CVE-2021-44228", -1),
        cursors.encode_key("a", "", 1),  # no advisory id
        cursors.encode("a", 1),  # a seq without its advisory id
        cursors.encode_key("a", "CVE-2021-44228\x00", 1),  # no stored id has a NUL
        base64.urlsafe_b64encode("i:\u0663".encode()).decode(),  # an Arabic-Indic digit three
        "x" * 201,
    ],
)
def test_a_cursor_this_list_did_not_give_out_is_a_422(client, tokens, path, params, cursor):
    body = get(client, tokens["acme"], path, cursor=cursor, expect=422, **params)
    assert body["error"] == "validation_failed"
    assert [d["path"] for d in body["details"]] == ["cursor"]


def test_cursors_of_each_list_are_its_own(client, tokens):
    t = tokens["acme"]
    for i in range(3):
        upload(client, t, image_ref=f"ghcr.io/acme/img{i}:1", findings=[LOG4J])
    images_cursor = get(client, t, IMAGES, limit=1)["next_cursor"]
    search_cursor = get(client, t, SEARCH, advisory_id="CVE-2021-44228", limit=1)["next_cursor"]
    assert images_cursor and search_cursor
    get(client, t, SEARCH, advisory_id="CVE-2021-44228", cursor=images_cursor, expect=422)
    get(client, t, IMAGES, cursor=search_cursor, expect=422)
    get(client, t, "/api/v1/orgs/{slug}/image-scans", cursor=images_cursor, expect=422)
    # the largest seq a cursor can name (PostgreSQL bigint), under the id searched: every hit is below it
    last = cursors.encode_key("a", "CVE-2021-44228", 2**63 - 1)
    assert len(get(client, t, SEARCH, advisory_id="CVE-2021-44228", cursor=last)["items"]) == 3


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "x", "1.5"])
def test_a_bad_limit_is_a_422(client, tokens, limit):
    for path, params in ((SEARCH, {"advisory_id": "CVE-2021-44228"}), (IMAGES, {})):
        body = get(client, tokens["acme"], path, limit=limit, expect=422, **params)
        assert [d["path"] for d in body["details"]] == ["limit"]


@pytest.mark.parametrize(
    ("path", "params"),
    [
        (SEARCH, {"advisory_id": "CVE-2021-44228"}),
        (IMAGES, {}),
        (IMAGE, {"image_id": None}),
        (IMAGE_TREND, {"image_id": None}),
        (TREND, {}),
    ],
)
def test_who_may_read(app, client, tokens, path, params):
    upload(client, tokens["acme"], findings=[LOG4J])
    [image] = get(client, tokens["acme"], IMAGES)["items"]
    params = {k: image["image_id"] if v is None else v for k, v in params.items()}
    assert get(client, tokens["acme"], path, **params)
    assert get(client, None, path, expect=401, **params)["error"] == "unauthorized"
    assert get(client, "ffis_not-a-token", path, expect=401, **params)["error"] == "unauthorized"
    assert get(client, tokens["other"], path, expect=403, **params)["error"] == "forbidden"
    assert get(client, tokens["acme"], path, slug="nobody", expect=404, **params)["error"] == "not_found"
    for scopes in (["findings:write"], ["settings:write"]):
        assert get(client, make_token(app, "acme", scopes), path, expect=403, **params)["error"] == "forbidden"


# ---------------------------------------------------------------- images now


def test_images_list_each_images_latest_scan(client, tokens):
    t = tokens["acme"]
    first = upload(client, t, image_ref="ghcr.io/acme/api:1", findings=[LOG4J, finding()])
    web = upload(client, t, image_ref="ghcr.io/acme/web:1", repo="acme/web", findings=[finding(fixed=None)])
    api = upload(client, t, image_ref="ghcr.io/acme/api:2", sha=SHA2, ref="refs/pull/7/merge", findings=[finding()])
    upload(client, tokens["other"], slug="other", repo="other/api", findings=[LOG4J])

    page = get(client, t, IMAGES)
    assert page["next_cursor"] is None
    assert [(i["repo_full_name"], i["image_name"], i["scan_run_id"]) for i in page["items"]] == [
        ("acme/api", "ghcr.io/acme/api", api),
        ("acme/web", "ghcr.io/acme/web", web),
    ]
    assert first not in [i["scan_run_id"] for i in page["items"]]
    item = page["items"][0]
    assert item == {
        "image_id": item["image_id"],
        "repo_full_name": "acme/api",
        "image_name": "ghcr.io/acme/api",
        "image_ref": "ghcr.io/acme/api:2",
        "ref": "refs/pull/7/merge",
        "commit_sha": SHA2,
        "pr": None,
        "severity_counts": {"critical": 0, "high": 1, "medium": 0, "low": 0, "unknown": 0},
        "fixable": 1,
        "verdict": "success",
        "scan_run_id": api,
        "scanned_at": item["scanned_at"],
        "url": f"http://fremforge.test/admin/orgs/acme/code-security/image-scanning/scans/{api}",
    }
    assert page["items"][1]["fixable"] == 0
    # one image reads the same as in the list
    assert get(client, t, IMAGE, image_id=item["image_id"]) == item
    # the repo filter, any letter case; a name GitHub would not allow is a 422
    assert [i["repo_full_name"] for i in get(client, t, IMAGES, repo="ACME/Web")["items"]] == ["acme/web"]
    assert get(client, t, IMAGES, repo="acme/nothing")["items"] == []
    assert [d["path"] for d in get(client, t, IMAGES, repo="a/../b", expect=422)["details"]] == ["repo"]


def test_the_images_list_pages_through_every_image(client, tokens):
    t = tokens["acme"]
    for i in range(7):
        upload(client, t, image_ref=f"ghcr.io/acme/img{i}:1", repo="acme/api" if i % 2 else "acme/web")
    whole = get(client, t, IMAGES, limit=1000)["items"]
    assert len(whole) == 7
    for limit in (1, 2, 3, 7):
        seen, cursor = [], None
        while True:
            page = get(client, t, IMAGES, limit=limit, **({"cursor": cursor} if cursor else {}))
            assert len(page["items"]) <= limit
            seen += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == whole, limit
    web = get(client, t, IMAGES, repo="acme/web", limit=2)
    rest = get(client, t, IMAGES, repo="acme/web", limit=2, cursor=web["next_cursor"])
    assert [i["image_name"] for i in web["items"] + rest["items"]] == [f"ghcr.io/acme/img{i}" for i in (0, 2, 4, 6)]


@pytest.mark.parametrize("path", [IMAGE, IMAGE_TREND])
def test_an_image_that_is_not_this_orgs_is_a_json_404(client, tokens, path):
    t = tokens["acme"]
    upload(client, t)
    upload(client, tokens["other"], slug="other", repo="other/api")
    [theirs] = [i["image_id"] for i in get(client, tokens["other"], IMAGES, slug="other")["items"]]
    for image_id in (theirs, 0, 999, 2**31 - 1, 2**31, 10**20):
        body = get(client, t, path, image_id=image_id, expect=404)
        assert body["error"] == "not_found" and str(image_id) in body["message"]
    for image_id in ("-1", "x", "1.0"):
        assert get(client, t, path, image_id=image_id, expect=404)["error"] == "not_found"


# ---------------------------------------------------------------- the trend


def test_the_trend_ends_today_with_the_images_now(client, tokens):
    t = tokens["acme"]
    before = utcnow().date()
    upload(client, t, image_ref="ghcr.io/acme/api:1", findings=[LOG4J, finding(), finding("CVE-1", "low")])
    upload(
        client, t, image_ref="ghcr.io/acme/web:1", findings=[finding("CVE-2", "critical"), finding("CVE-3", "medium")]
    )
    upload(client, t, image_ref="ghcr.io/acme/api:2", findings=[LOG4J, finding("CVE-4", "high", package="zlib")])
    upload(client, tokens["other"], slug="other", repo="other/api", findings=[LOG4J, finding("CVE-9", "low")])

    org = get(client, t, TREND)
    after = utcnow().date()
    days = org["days"]
    assert list(org) == ["days"] and len(days) == 90
    assert days[-1]["day"] in (before.isoformat(), after.isoformat())
    assert [d["day"] for d in days] == sorted(d["day"] for d in days)  # oldest first, one a day
    assert len({d["day"] for d in days}) == 90
    assert all(set(d) == {"day", *LEVELS} for d in days)

    now = get(client, t, IMAGES)["items"]
    totals = {level: sum(i["severity_counts"][level] for i in now) for level in LEVELS}
    assert {level: days[-1][level] for level in LEVELS} == totals == {"critical": 2, "high": 1, "medium": 1, "low": 0}
    if before == after:  # every scan was today: nothing before it
        assert all(d[level] == 0 for d in days[:-1] for level in LEVELS)

    for image in now:
        own = get(client, t, IMAGE_TREND, image_id=image["image_id"])["days"]
        assert len(own) == 90 and own[-1]["day"] == days[-1]["day"]
        assert {level: own[-1][level] for level in LEVELS} == {
            level: image["severity_counts"][level] for level in LEVELS
        }


def test_the_trend_follows_an_image_that_is_fixed(client, tokens):
    t = tokens["acme"]
    upload(client, t, image_ref="ghcr.io/acme/api:1", findings=[LOG4J])
    upload(client, t, image_ref="ghcr.io/acme/web:1", findings=[LOG4J])
    assert get(client, t, TREND)["days"][-1]["critical"] == 2
    upload(client, t, image_ref="ghcr.io/acme/api:2", findings=[finding(severity="low")])
    last = get(client, t, TREND)["days"][-1]
    assert (last["critical"], last["low"]) == (1, 1)
    empty = get(client, tokens["other"], TREND, slug="other")["days"]
    assert len(empty) == 90 and all(d[level] == 0 for d in empty for level in LEVELS)


def test_the_scans_list_filters_by_image_name_every_tag_and_digest(client, tokens):
    """An image's scans (as the images list names it): every tag and digest of that name, no other image."""
    t = tokens["acme"]
    tagged = upload(client, t, image_ref="ghcr.io/acme/api:1")
    digest = upload(client, t, image_ref="ghcr.io/acme/api@sha256:" + "ab" * 32, sha=SHA2)
    upload(client, t, image_ref="ghcr.io/acme/api-worker:1")
    upload(client, t, image_ref="ghcr.io/acme/web:1")
    [image] = [i for i in get(client, t, IMAGES)["items"] if i["image_name"] == "ghcr.io/acme/api"]
    listed = get(client, t, "/api/v1/orgs/{slug}/image-scans", image_name=image["image_name"])["items"]
    assert [s["scan_run_id"] for s in listed] == [digest, tagged]
