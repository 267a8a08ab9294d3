"""The exceptions command group as an operator drives it (spec section 8): create, list, revoke and import, each
through app.exceptions (audit events, re-posts), refusing bad input whole with each path and why."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from app import db
from app.models import AuditEvent, Repost
from tests.conftest import MakeApp, app_with_github
from tests.factories import census, finding, make_org, make_token, post, seed

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "exceptions"


def _json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def in_days(days: int) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def create(runner, *args: str, advisory: str = "CVE-2024-0001", expires: str | None = None):
    return runner.invoke(
        args=[
            "exceptions",
            "create",
            "acme",
            "--advisory",
            advisory,
            "--reason",
            "not reachable from the network",
            "--expires",
            expires or in_days(30),
            *args,
        ]
    )


def actions(app: Flask) -> list[tuple[str, str]]:
    with app.app_context():
        rows = db.session().execute(sa.select(AuditEvent.action, AuditEvent.actor).order_by(AuditEvent.seq)).all()
    return [tuple(r) for r in rows if r[0].startswith("exception.")]


def test_create_prints_the_exception_and_it_covers_findings(runner, app, client):
    make_org(app, block_action="block_pull")
    expires = in_days(30)
    e = _json(
        create(
            runner,
            "--package",
            "openssl",
            "--repo",
            "Acme/API",
            "--image",
            "ghcr.io/acme/*",
            "--ticket",
            "https://tracker.acme.example/SEC-1",
            expires=expires,
        )
    )
    assert {k: e[k] for k in ("advisory_id", "package_name", "repo_full_name", "image", "ticket_url")} == {
        "advisory_id": "CVE-2024-0001",
        "package_name": "openssl",
        "repo_full_name": "acme/api",
        "image": "ghcr.io/acme/*",
        "ticket_url": "https://tracker.acme.example/SEC-1",
    }
    assert (e["source"], e["created_by"], e["state"], e["expires_at"]) == ("cli", "cli", "active", expires)
    assert actions(app) == [("exception.created", "cli")]

    token = make_token(app)
    body = seed([finding("CVE-2024-0001", "critical"), finding("CVE-2024-0002", "critical")])
    r = post(client, token, body)
    assert r.status_code == 202, r.json
    scan = client.get(
        f"/api/v1/orgs/acme/image-scans/{r.json['scan_run_id']}", headers={"Authorization": f"Bearer {token}"}
    ).json
    assert {f["cve_id"]: f["exception_id"] for f in scan["findings"]} == {
        "CVE-2024-0001": e["id"],
        "CVE-2024-0002": None,
    }


@pytest.mark.parametrize(
    "args, expires, lines",
    [
        ([], "2020-01-01", ["--expires: must be in the future"]),
        ([], "next week", ["--expires: is not an ISO 8601 date or time"]),
        ([], "9999-01-01", ["--expires: must be at most 365 days ahead"]),
        (["--image", "ghcr.io/acme/api:1"], None, ["--image: is not an image-name pattern"]),
        (["--ticket", "http://tracker.example/1", "--repo", "not a repo"], None, ["--ticket: ", "--repo: "]),
    ],
)
def test_create_refuses_bad_values_listing_each_and_stores_nothing(runner, app, args, expires, lines):
    make_org(app)
    before = census(app)
    result = create(runner, *args, expires=expires)
    assert result.exit_code == 1, result.output
    assert "invalid exception, nothing stored" in result.output
    for line in lines:
        assert f"\n{line}" in result.output, result.output
    assert census(app) == before


def test_create_refuses_signing_ids_and_unknown_orgs(runner, app):
    make_org(app)
    before = census(app)
    reserved = create(runner, advisory="FREMFORGE-UNSIGNED")
    assert reserved.exit_code == 1 and "--advisory: names a synthetic signing finding" in reserved.output
    unknown = runner.invoke(
        args=["exceptions", "create", "nope", "--advisory", "CVE-1", "--reason", "r", "--expires", in_days(3)]
    )
    assert unknown.exit_code == 1 and "no organisation 'nope'" in unknown.output
    missing = runner.invoke(args=["exceptions", "create", "acme", "--advisory", "CVE-1", "--expires", in_days(3)])
    assert missing.exit_code == 2 and "--reason" in missing.output
    assert census(app) == before


def test_list_shows_active_ones_and_all_with_all(runner, app):
    make_org(app)
    make_org(app, "beta")
    first = _json(create(runner, advisory="CVE-2024-0001"))
    second = _json(create(runner, advisory="CVE-2024-0002"))
    _json(
        runner.invoke(
            args=["exceptions", "create", "beta", "--advisory", "CVE-9", "--reason", "r", "--expires", in_days(3)]
        )
    )
    assert [e["id"] for e in _json(runner.invoke(args=["exceptions", "list", "acme"]))] == [second["id"], first["id"]]

    revoked = _json(runner.invoke(args=["exceptions", "revoke", "acme", str(first["id"])]))
    assert (revoked["state"], revoked["revoked_by"]) == ("revoked", "cli") and revoked["revoked_at"]
    assert [e["id"] for e in _json(runner.invoke(args=["exceptions", "list", "acme"]))] == [second["id"]]
    every = _json(runner.invoke(args=["exceptions", "list", "acme", "--all"]))
    assert [(e["id"], e["state"]) for e in every] == [(second["id"], "active"), (first["id"], "revoked")]
    assert actions(app) == [("exception.created", "cli")] * 3 + [("exception.revoked", "cli")]
    assert _json(runner.invoke(args=["exceptions", "list", "beta", "--all"]))[0]["advisory_id"] == "CVE-9"


def test_revoke_errors(runner, app):
    make_org(app)
    make_org(app, "beta")
    e = _json(create(runner))
    before = census(app)
    other_org = runner.invoke(args=["exceptions", "revoke", "beta", str(e["id"])])
    assert other_org.exit_code == 1 and f"no exception {e['id']} in beta" in other_org.output
    assert runner.invoke(args=["exceptions", "revoke", "acme", "999"]).exit_code == 1
    assert runner.invoke(args=["exceptions", "revoke", "acme", "99999999999999999999"]).exit_code == 2
    assert runner.invoke(args=["exceptions", "revoke", "nope", "1"]).exit_code == 1
    assert census(app) == before
    # revoking twice changes nothing the second time
    _json(runner.invoke(args=["exceptions", "revoke", "acme", str(e["id"])]))
    again = _json(runner.invoke(args=["exceptions", "revoke", "acme", str(e["id"])]))
    assert again["state"] == "revoked"
    assert actions(app) == [("exception.created", "cli"), ("exception.revoked", "cli")]


def test_import_openvex_file(runner, app):
    make_org(app)
    expires = in_days(60)
    args = ["exceptions", "import", "acme", str(FIXTURES / "acme-images.openvex.json"), "--format", "openvex"]
    out = _json(runner.invoke(args=[*args, "--expires", expires]))
    assert out["imported"] == len(out["items"]) == 4
    assert {(e["source"], e["created_by"], e["expires_at"]) for e in out["items"]} == {("openvex", "cli", expires)}
    assert sorted((e["advisory_id"], e["package_name"]) for e in out["items"]) == [
        ("CVE-2019-18276", None),
        ("CVE-2019-5094", "e2fsprogs"),
        ("CVE-2019-5094", "libss2"),
        ("RHSA-2019:2304", None),
    ]
    assert len(_json(runner.invoke(args=["exceptions", "list", "acme"]))) == 4
    assert actions(app) == [("exception.created", "cli")] * 4


def test_import_trivyignore_file(runner, app, tmp_path):
    make_org(app)
    when = (date.today() + timedelta(days=90)).isoformat()
    text = re.sub(r"exp:\d{4}-\d{2}-\d{2}", f"exp:{when}", (FIXTURES / "alpine-39.trivyignore").read_text())
    path = tmp_path / ".trivyignore"
    path.write_text(text)
    default = in_days(120)
    result = runner.invoke(
        args=[
            "exceptions",
            "import",
            "acme",
            str(path),
            "--format",
            "trivyignore",
            "--reason",
            "r",
            "--expires",
            default,
        ]
    )
    out = _json(result)
    assert {(e["advisory_id"], e["expires_at"], e["source"]) for e in out["items"]} == {
        ("CVE-2019-1549", f"{when}T00:00:00Z", "trivyignore"),
        ("CVE-2019-1551", default, "trivyignore"),
    }


@pytest.mark.parametrize(
    "fmt, content, extra, lines",
    [
        ("openvex", '{"bomFormat": "CycloneDX"}', ["--expires", "+30"], ["@context: is not an OpenVEX document"]),
        ("openvex", "{not json", ["--expires", "+30"], ["is not JSON"]),
        ("openvex", None, [], ["statements[0].expires_at: is required", "statements[3].expires_at: is required"]),
        ("trivyignore", "CVE-1\nCVE-2 exp:2027-13-01\n", ["--reason", "r"], ["line 2: exp:2027-13-01 is not a date"]),
        ("trivyignore", "CVE-1\n# two\nCVE-2\n", ["--expires", "+30"], ["line 1.reason: is required", "line 3.reason"]),
        ("trivyignore", b"CVE-1 \xff\n", ["--reason", "r", "--expires", "+30"], ["is not UTF-8 text"]),
    ],
)
def test_import_refuses_bad_files_whole(runner, app, tmp_path, fmt, content, extra, lines):
    make_org(app)
    path = tmp_path / "input"
    if content is None:
        content = (FIXTURES / "acme-images.openvex.json").read_text()
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    extra = [in_days(30) if a == "+30" else a for a in extra]
    before = census(app)
    result = runner.invoke(args=["exceptions", "import", "acme", str(path), "--format", fmt, *extra])
    assert result.exit_code == 1, result.output
    assert "nothing stored" in result.output
    for line in lines:
        assert line in result.output, result.output
    # a statement with two products names its statement's missing expiry once
    assert result.output.count("statements[0].expires_at") <= 1
    assert census(app) == before


def test_import_options(runner, app, tmp_path):
    make_org(app)
    path = tmp_path / "x"
    path.write_text("CVE-1\n")
    assert runner.invoke(args=["exceptions", "import", "acme", str(path)]).exit_code == 2  # --format is required
    bad_format = runner.invoke(args=["exceptions", "import", "acme", str(path), "--format", "yaml"])
    assert bad_format.exit_code == 2
    missing = runner.invoke(args=["exceptions", "import", "acme", str(tmp_path / "nope"), "--format", "trivyignore"])
    assert missing.exit_code == 2
    assert runner.invoke(args=["exceptions", "import", "nope", str(path), "--format", "trivyignore"]).exit_code == 1


# ------------------------------------------------------------------ re-posts


def reposts(app: Flask) -> list[tuple[str, str, int]]:
    with app.app_context():
        rows = db.session().execute(sa.select(Repost.commit_sha, Repost.base_url, Repost.version)).all()
    return [tuple(r) for r in rows]


def test_without_a_github_app_nothing_is_asked_to_be_reposted(runner, app, client):
    make_org(app)
    assert post(client, make_token(app), seed()).status_code == 202
    e = _json(create(runner))
    _json(runner.invoke(args=["exceptions", "revoke", "acme", str(e["id"])]))
    assert reposts(app) == []


def test_with_a_github_app_changes_ask_for_recent_commits_to_be_reposted(make_app: MakeApp, fake_github):
    app = app_with_github(make_app, fake_github, ["acme/api"])
    runner = app.test_cli_runner()
    make_org(app)
    body = seed()
    assert post(app.test_client(), make_token(app), body).status_code == 202
    e = _json(create(runner))
    assert reposts(app) == [(body["commit_sha"], "http://fremforge.test", 1)]
    _json(runner.invoke(args=["exceptions", "revoke", "acme", str(e["id"])]))
    assert reposts(app) == [(body["commit_sha"], "http://fremforge.test", 2)]


def test_import_reads_standard_input(runner, app):
    make_org(app)
    args = ["exceptions", "import", "acme", "-", "--format", "trivyignore", "--reason", "r", "--expires", in_days(9)]
    out = _json(runner.invoke(args=args, input="# from a pipe\nCVE-2019-1549\n"))
    assert [(e["advisory_id"], e["source"]) for e in out["items"]] == [("CVE-2019-1549", "trivyignore")]
