"""`ref` on uploads (spec section 2): the git ref an image was built from, stored with the scan beside the image's
name without tag and digest (what a baseline is found by), listed and filtered; a bad one is a 422 naming it."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa

from app import db, fields
from app.models import ScanRun
from tests import paths
from tests.factories import SHA, census, finding, make_org, make_token, post, seed


@pytest.fixture
def token(app) -> str:
    make_org(app)
    return make_token(app, "acme", ["findings:write", "findings:read"])


def stored(app: Any, scan_id: int) -> tuple[str | None, str | None]:
    with app.app_context():
        scan = db.session().get(ScanRun, scan_id)
        assert scan is not None
        return scan.ref, scan.image_name


def test_a_seed_upload_keeps_its_ref_and_image_name(app, client, token):
    r = post(client, token, seed([finding()], image_ref="ghcr.io/acme/api:1.2@sha256:00ff", ref="refs/heads/main"))
    assert r.status_code == 202, r.get_json()
    scan_id = r.get_json()["scan_run_id"]
    assert stored(app, scan_id) == ("refs/heads/main", "ghcr.io/acme/api")
    shown = client.get(f"/api/v1/orgs/acme/image-scans/{scan_id}", headers={"Authorization": f"Bearer {token}"})
    assert shown.get_json()["ref"] == "refs/heads/main"


def test_a_raw_trivy_upload_takes_its_ref_from_the_query(app, client, token):
    report = (paths.SHARED / "fixtures" / "trivy" / "alpine-39.json").read_bytes()
    query = {
        "commit_sha": SHA,
        "repo_full_name": "acme/api",
        "image_ref": "ghcr.io/acme/api:1",
        "ref": "refs/pull/4/merge",
    }
    r = post(client, token, raw=report, query=query)
    assert r.status_code == 202, r.get_json()
    assert stored(app, r.get_json()["scan_run_id"]) == ("refs/pull/4/merge", "ghcr.io/acme/api")


def test_a_seed_upload_takes_its_ref_from_the_query_too(app, client, token):
    r = post(client, token, seed([finding()]), query={"ref": "refs/heads/main"})
    assert r.status_code == 202, r.get_json()
    assert stored(app, r.get_json()["scan_run_id"]) == ("refs/heads/main", "ghcr.io/acme/api")
    same = post(client, token, seed([finding()], ref="refs/heads/main"), query={"ref": "refs/heads/main"})
    assert same.status_code == 202, same.get_json()


@pytest.mark.parametrize(
    ("body_ref", "query_ref"),
    [(None, "main"), (None, "refs/heads/a..b"), ("refs/heads/main", "refs/heads/other")],
    ids=["bad-query-ref", "dot-dot-query-ref", "body-and-query-differ"],
)
def test_a_seed_uploads_query_ref_is_checked_and_stores_nothing_when_bad(app, client, token, body_ref, query_ref):
    before = census(app)
    extra = {"ref": body_ref} if body_ref is not None else {}
    r = post(client, token, seed([finding()], **extra), query={"ref": query_ref})
    assert r.status_code == 422, r.get_json()
    assert [d["path"] for d in r.get_json()["details"]] == ["ref"], json.dumps(r.get_json())
    assert census(app) == before


def test_without_a_ref_the_scan_has_none(app, client, token):
    r = post(client, token, seed([finding()]))
    assert stored(app, r.get_json()["scan_run_id"]) == (None, "ghcr.io/acme/api")


def test_scans_are_filtered_by_ref(client, token):
    post(client, token, seed([finding()], image_ref="ghcr.io/acme/api:1", ref="refs/heads/main"))
    post(client, token, seed([finding()], image_ref="ghcr.io/acme/api:2", ref="refs/heads/feature"))
    r = client.get(
        "/api/v1/orgs/acme/image-scans",
        query_string={"ref": "refs/heads/main"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert [s["image_ref"] for s in r.get_json()["items"]] == ["ghcr.io/acme/api:1"]


@pytest.mark.parametrize(
    "ref",
    ["main", "heads/main", "refs/heads/a..b", "refs/heads/with space", "refs/heads/x~1", "refs/" + "a" * 251, "", 7],
    ids=["bare-branch", "no-refs-prefix", "dot-dot", "space", "tilde", "too-long", "empty", "not-a-string"],
)
def test_a_bad_ref_is_422_naming_it_and_stores_nothing(app, client, token, ref):
    before = census(app)
    r = post(client, token, seed([finding()], ref=ref))
    assert r.status_code == 422, r.get_json()
    assert any(d["path"] == "ref" for d in r.get_json()["details"]), json.dumps(r.get_json())
    assert census(app) == before


@pytest.mark.parametrize(
    ("image_ref", "name"),
    [
        ("ghcr.io/acme/api:1.2@sha256:0123abcd", "ghcr.io/acme/api"),
        ("ghcr.io/acme/api@sha256:0123abcd", "ghcr.io/acme/api"),
        ("localhost:5000/api:1", "localhost:5000/api"),
        ("localhost:5000/api", "localhost:5000/api"),
        ("ubuntu:22.04", "ubuntu"),
        ("ubuntu", "ubuntu"),
    ],
)
def test_the_image_name_drops_tag_and_digest_only(image_ref, name):
    assert fields.image_name(image_ref) == name


def test_the_ref_index_serves_the_baseline_probe(app):
    with app.app_context():
        indexes = sa.inspect(db.database().engine).get_indexes("scan_runs")
    assert any(i["column_names"] == ["org_id", "repo_full_name", "image_name", "ref", "id"] for i in indexes)


@pytest.mark.parametrize("key", ["repo_full_name", "commit_sha", "image_ref", "signature_status"])
def test_a_seed_uploads_field_and_a_query_parameter_that_differ_are_422(app, client, token, key):
    """The query parameters are a raw report's context; sent with a seed body too, they must say the same."""
    other = {
        "repo_full_name": "acme/web",
        "commit_sha": "f" * 40,
        "image_ref": "ghcr.io/acme/evil:1",
        "signature_status": "unsigned",
    }
    body = seed([finding()], signature_status="signed")
    before = census(app)
    r = post(client, token, body, query={key: other[key]})
    assert r.status_code == 422, r.get_json()
    assert [(d["path"], d["code"]) for d in r.get_json()["details"]] == [(key, "conflict")]
    assert census(app) == before
    same = post(client, token, body, query={key: body[key]})
    assert same.status_code == 202, same.get_json()


@pytest.mark.parametrize(
    "key, body_value, query_value",
    [
        ("commit_sha", SHA.upper(), SHA),
        ("repo_full_name", "Acme/API", "acme/api"),
        ("signature_status", "SIGNED", "signed"),
    ],
)
def test_a_seed_uploads_field_and_a_query_parameter_in_another_letter_case_agree(
    app, client, token, key, body_value, query_value
):
    """Review: stored in lower case, they are one value; they were a 422 conflict."""
    r = post(client, token, seed([finding()], **{key: body_value}), query={key: query_value})
    assert r.status_code == 202, r.get_json()


@pytest.mark.parametrize("shape", ["seed", "trivy"])
def test_a_context_parameter_given_twice_in_the_query_is_422(app, client, token, shape):
    report = (paths.SHARED / "fixtures" / "trivy" / "alpine-39.json").read_bytes()
    data = json.dumps(seed([finding()])).encode() if shape == "seed" else report
    query = f"commit_sha={SHA}&image_ref=ghcr.io/acme/api:1&repo_full_name=acme/api&repo_full_name=otherco/x"
    before = census(app)
    r = client.post(
        "/api/v1/orgs/acme/image-scans/findings",
        data=data,
        query_string=query,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.get_json()
    assert [(d["path"], d["code"], d["in"]) for d in r.get_json()["details"]] == [
        ("repo_full_name", "duplicate_key", "query")
    ]
    assert census(app) == before


def test_a_seed_body_without_its_fields_says_they_belong_in_the_body(app, client, token):
    """The fields sent as query parameters, as a raw report's are: HEAD said only "is required"."""
    r = post(client, token, {"findings": []}, query={"image_ref": "ghcr.io/acme/api:1", "commit_sha": SHA})
    assert r.status_code == 422, r.json
    said = {d["path"]: d["message"] for d in r.json["details"]}
    assert said["image_ref"].startswith("is required in the body") and said["commit_sha"] == said["image_ref"]
    assert said["repo_full_name"] == "is required"  # not in the query either


def test_the_list_filter_commit_sha_takes_a_full_sha(app, client, token):
    """HEAD: ?commit_sha=xyz (or a short SHA) answered an empty list, as if no scan had that commit."""
    stored = post(client, token, seed()).json
    headers = {"Authorization": f"Bearer {token}"}
    for bad in ("xyz", SHA[:7]):
        r = client.get("/api/v1/orgs/acme/image-scans", query_string={"commit_sha": bad}, headers=headers)
        assert r.status_code == 422 and r.json["details"][0]["path"] == "commit_sha", r.json
    r = client.get("/api/v1/orgs/acme/image-scans", query_string={"commit_sha": SHA.upper()}, headers=headers)
    assert [s["scan_run_id"] for s in r.json["items"]] == [stored["scan_run_id"]]
