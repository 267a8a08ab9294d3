"""The command line as a user drives it: orgs, tokens (printed once, alone on the last line), policy."""

from __future__ import annotations

import json

import sqlalchemy as sa

from app import db
from app.models import ApiToken, AuditEvent
from tests.factories import census, make_org, post, seed


def _json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_orgs_create_defaults_login_to_slug(runner):
    org = _json(runner.invoke(args=["orgs", "create", "acme"]))
    assert org["slug"] == "acme" and org["github_login"] == "acme" and org["installation_id"] is None
    other = _json(
        runner.invoke(args=["orgs", "create", "beta", "--github-login", "Beta-Inc", "--installation-id", "42"])
    )
    assert other["github_login"] == "Beta-Inc" and other["installation_id"] == 42
    listed = _json(runner.invoke(args=["orgs", "list"]))
    assert [o["slug"] for o in listed] == ["acme", "beta"]


def test_orgs_create_refuses_duplicates_and_bad_slugs(runner, app):
    assert runner.invoke(args=["orgs", "create", "acme"]).exit_code == 0
    before = census(app)
    dup = runner.invoke(args=["orgs", "create", "acme"])
    assert dup.exit_code != 0 and "exists already" in dup.output
    other_case = runner.invoke(args=["orgs", "create", "ACME", "--github-login", "acme-corp"])
    assert other_case.exit_code != 0 and "an organisation 'acme' exists already" in other_case.output
    bad = runner.invoke(args=["orgs", "create", "-bad slug"])
    assert bad.exit_code != 0
    assert census(app) == before


def test_tokens_create_prints_token_alone_on_last_line_and_it_works(runner, app, client):
    make_org(app)
    result = runner.invoke(
        args=["tokens", "create", "--org", "acme", "--scope", "findings:write", "--name", "ci", "--expires-days", "30"]
    )
    assert result.exit_code == 0, result.output
    token = result.output.rstrip("\n").splitlines()[-1]
    assert token.startswith("ffis_") and " " not in token
    assert post(client, token, seed()).status_code == 202
    with app.app_context():
        hashes = db.session().scalars(sa.select(ApiToken.token_hash)).all()
    assert token not in hashes and len(hashes) == 1


def test_tokens_list_and_revoke(runner, app, client):
    make_org(app)
    token = runner.invoke(
        args=["tokens", "create", "--org", "acme", "--scope", "findings:write", "--scope", "findings:read"]
    ).output.splitlines()[-1]
    [listed] = _json(runner.invoke(args=["tokens", "list", "--org", "acme"]))
    assert listed["scopes"] == ["findings:write", "findings:read"]
    assert listed["state"] == "active" and listed["prefix"] == token[:11]
    assert token not in json.dumps(listed)
    revoked = _json(runner.invoke(args=["tokens", "revoke", str(listed["id"])]))
    assert revoked["state"] == "revoked"
    assert post(client, token, seed()).status_code == 401
    with app.app_context():
        actions = db.session().scalars(sa.select(AuditEvent.action).order_by(AuditEvent.seq)).all()
    assert actions == ["token.created", "token.revoked"]


def test_tokens_errors(runner, app):
    make_org(app)
    assert runner.invoke(args=["tokens", "create", "--org", "nope", "--scope", "findings:write"]).exit_code != 0
    assert runner.invoke(args=["tokens", "create", "--org", "acme", "--scope", "admin"]).exit_code != 0
    assert runner.invoke(args=["tokens", "create", "--org", "acme"]).exit_code != 0
    missing = runner.invoke(args=["tokens", "revoke", "999"])
    assert missing.exit_code != 0 and "no token" in missing.output
    two_lines = runner.invoke(args=["tokens", "create", "--org", "acme", "--scope", "findings:write", "--name", "a\nb"])
    assert two_lines.exit_code == 1 and "a token name is one line" in two_lines.output  # HEAD: created
    spaced = runner.invoke(
        args=["tokens", "create", "--org", "acme", "--scope", "findings:write", "--name", "ci\u00a0👩\u200d💻"]
    )
    assert spaced.exit_code == 0, spaced.output  # a no-break space and an emoji sequence are one line's characters
    override = runner.invoke(
        args=["tokens", "create", "--org", "acme", "--scope", "findings:write", "--name", "ci\u202ekcah"]
    )
    assert override.exit_code == 1 and "invisible formatting" in override.output  # it would read backwards
    joined = runner.invoke(
        args=["tokens", "create", "--org", "acme", "--scope", "findings:write", "--name", "ci\u200dprod"]
    )
    assert joined.exit_code == 1 and "invisible formatting" in joined.output  # a joiner joining no emoji: app.invisible


def test_policy_show_and_set(runner, app):
    make_org(app)
    shown = _json(runner.invoke(args=["policy", "show", "acme"]))
    assert shown == {
        "enabled": True,
        "block_action": "warn",
        "require_signed": False,
        "allowed_issuers": [],
        "retention_days": 365,
        "block_threshold": "high",
        "ignore_unfixed": False,
        "block_on": "all",
    }
    changed = _json(
        runner.invoke(
            args=[
                "policy",
                "set",
                "acme",
                "--block-action",
                "block_pull",
                "--require-signed",
                "--retention-days",
                "30",
                "--allowed-issuer",
                "https://token.actions.githubusercontent.com ^https://github.com/acme/",
                "--allowed-issuer",
                "https://accounts.google.com",
                "--block-threshold",
                "critical",
                "--ignore-unfixed",
                "--block-on",
                "new",
            ]
        )
    )
    assert (changed["block_threshold"], changed["ignore_unfixed"], changed["block_on"]) == ("critical", True, "new")
    assert changed["block_action"] == "block_pull" and changed["require_signed"] is True
    assert changed["retention_days"] == 30
    assert changed["allowed_issuers"] == [
        {"issuer": "https://token.actions.githubusercontent.com", "subject_pattern": "^https://github.com/acme/"},
        {"issuer": "https://accounts.google.com", "subject_pattern": None},
    ]
    assert _json(runner.invoke(args=["policy", "show", "acme"])) == changed
    disabled = _json(runner.invoke(args=["policy", "set", "acme", "--disabled", "--allowed-issuer", ""]))
    assert disabled["enabled"] is False and disabled["allowed_issuers"] == []
    assert disabled["block_action"] == "block_pull"  # untouched options keep their value
    with app.app_context():
        events = db.session().scalars(sa.select(AuditEvent).order_by(AuditEvent.seq)).all()
    assert [e.action for e in events] == ["settings.changed", "settings.changed"]
    assert events[0].details["changes"]["block_action"] == {"old": "warn", "new": "block_pull"}
    assert events[0].actor == "cli"


def test_policy_set_rejects_bad_values_and_changes_nothing(runner, app):
    make_org(app)
    before = census(app)
    for args in (
        ["--retention-days", "0"],
        ["--allowed-issuer", "http://insecure.example"],
        ["--allowed-issuer", "https://x.example (unclosed"],
        ["--block-action", "explode"],
    ):
        result = runner.invoke(args=["policy", "set", "acme", *args])
        assert result.exit_code != 0, args
    assert runner.invoke(args=["policy", "show", "nope"]).exit_code != 0
    assert census(app) == before


def test_out_of_range_numbers_are_refused_not_crashed(runner, app):
    make_org(app)
    for args in (
        ["tokens", "revoke", "99999999999999999999"],
        ["orgs", "create", "x", "--installation-id", "99999999999999999999"],
        ["tokens", "create", "--org", "acme", "--scope", "findings:read", "--name", "n" * 101],
    ):
        result = runner.invoke(args=args)
        assert result.exit_code == 2 or (result.exit_code == 1 and "Error" in result.output), args
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


def test_one_org_per_github_login(runner, app):
    make_org(app)
    result = runner.invoke(args=["orgs", "create", "other", "--github-login", "ACME"])
    assert result.exit_code != 0 and "GitHub login" in result.output
    assert runner.invoke(args=["orgs", "create", "acme\n"]).exit_code != 0
