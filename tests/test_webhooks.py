"""POST /webhooks/github with GitHub's own example payloads, each signed here at test time."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from app import db, orgs
from app.db import write_transaction
from app.github.handlers import router
from app.models import (
    CheckRunRecord,
    InstallationRepository,
    Org,
    OutboxItem,
    PullRequestLink,
    ScanRun,
    WebhookDelivery,
)
from tests import paths
from tests.conftest import ROOT, WEBHOOK_SECRET
from tests.factories import census, finding, make_org, make_token, post, seed, set_policy

HOOKS = paths.FIXTURES / "github-webhooks"
PR_SHA = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"  # the head of PR #2 in every pull_request example
PR_REPO = "codertocat/hello-world"  # stored folded: GitHub names are case-insensitive
CHECK_SHA = "d6fde92930d4715a2b49857d24b940956b26d2d3"  # the head_sha of the check_run.rerequested examples
# GitHub sends these to every GitHub App whether or not it subscribes (they cannot even be listed in
# default_events); ping is sent once when the webhook is created. So they are routed without being in app.yml.
ALWAYS_SENT = {"installation", "installation_repositories"}
NOT_SUBSCRIBABLE = {"ping"}


# ---------------------------------------------------------------- helpers


def example(name: str) -> bytes:
    """An example body exactly as stored (the bytes are what gets signed and sent)."""
    return (HOOKS / f"{name}.json").read_bytes()


def edited(name: str, **changes: Any) -> bytes:
    """An example with some fields changed: `check_run__name="x"` sets payload["check_run"]["name"]."""
    doc = json.loads(example(name))
    for path, value in changes.items():
        *parents, last = path.split("__")
        target = doc
        for key in parents:
            target = target[key]
        target[last] = value
    return json.dumps(doc).encode()


def sign(body: bytes, secret: str = WEBHOOK_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def deliver(
    client,
    name: str | None = None,
    *,
    body: bytes | None = None,
    event: str | None = None,
    delivery: str | None = None,
    secret: str = WEBHOOK_SECRET,
    headers: dict[str, str] | None = None,
    signed: bool = True,
):
    """POST one delivery the way GitHub does; the event defaults to the example's file name prefix."""
    data = body if body is not None else example(name or "")
    hdrs = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event or (name or "").split(".", 1)[0],
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "User-Agent": "GitHub-Hookshot/test",
    }
    if signed:
        hdrs["X-Hub-Signature-256"] = sign(data, secret)
    hdrs.update(headers or {})
    return client.post("/webhooks/github", data=data, headers=hdrs)


def rows(app, model, *order) -> list[Any]:
    with app.app_context():
        return list(db.session().scalars(sa.select(model).order_by(*(order or model.__table__.primary_key))))


def make_linked_org(app, slug: str, login: str, installation_id: int | None = None, repos: tuple[str, ...] = ()):
    make_org(app, slug, login)
    with app.app_context():
        session = db.session()
        with write_transaction(session):
            org = session.scalars(sa.select(Org).where(Org.slug == slug)).one()
            org.installation_id = installation_id
            session.add_all(InstallationRepository(org_id=org.id, repo_full_name=r) for r in repos)


def org_state(app) -> list[tuple[str, str, int | None]]:
    return [(o.slug, o.github_login, o.installation_id) for o in rows(app, Org)]


def repos_of(app) -> list[tuple[int, str]]:
    return [(r.org_id, r.repo_full_name) for r in rows(app, InstallationRepository, InstallationRepository.id)]


def links_of(app) -> list[tuple[str, int, str, str]]:
    return [(p.repo_full_name, p.number, p.head_sha, p.state) for p in rows(app, PullRequestLink)]


def upload(client, token: str, slug: str, repo: str, sha: str, image: str = "ghcr.io/x/app:1", findings=None) -> int:
    r = post(client, token, seed(findings, image_ref=image, sha=sha, repo=repo), slug=slug)
    assert r.status_code == 202, r.json
    return r.json["scan_run_id"]


@pytest.fixture
def client(webhook_app):
    return webhook_app.test_client()


@pytest.fixture
def app(webhook_app):
    return webhook_app


# ---------------------------------------------------------------- the manifest


def test_routed_events_are_the_manifests_default_events():
    """Every event app.yml subscribes to is handled, and nothing is handled that GitHub would not send.

    The rule: routed events == app.yml default_events + the events GitHub sends every App unsubscribed
    (installation, installation_repositories) + ping.
    """
    manifest = yaml.safe_load((ROOT / "app.yml").read_text())
    subscribed = set(manifest["default_events"])
    assert not subscribed & (ALWAYS_SENT | NOT_SUBSCRIBABLE)
    assert router.routed_events() == subscribed | ALWAYS_SENT | NOT_SUBSCRIBABLE


# ---------------------------------------------------------------- failure modes first


def test_no_secret_configured_fails_closed(make_app):
    plain = make_app()
    before = census(plain)
    r = deliver(plain.test_client(), "ping")
    assert r.status_code == 503 and r.json["error"] == "webhooks_not_configured"
    assert "FREMFORGE_GITHUB_WEBHOOK_SECRET" in r.json["message"]
    assert census(plain) == before


@pytest.mark.parametrize(
    "case",
    ["missing", "wrong_secret", "changed_byte", "sha1_only", "sha1_in_sha256_header", "uppercase", "garbage", "latin1"],
)
def test_bad_or_missing_signature_is_401_and_changes_nothing(app, client, case, caplog):
    body = example("installation.created")
    headers: dict[str, str] = {}
    signed = True
    secret = WEBHOOK_SECRET
    if case == "missing":
        signed = False
    elif case == "wrong_secret":
        secret = "not-the-secret"
    elif case == "changed_byte":
        headers["X-Hub-Signature-256"] = sign(body)
        body = body.replace(b"Codertocat", b"Codertocau", 1)
    elif case == "sha1_only":
        signed = False
        headers["X-Hub-Signature"] = "sha1=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha1).hexdigest()
    elif case == "sha1_in_sha256_header":  # githubkit's verify alone would accept this downgrade
        headers["X-Hub-Signature-256"] = "sha1=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha1).hexdigest()
    elif case == "uppercase":
        headers["X-Hub-Signature-256"] = sign(body).upper().replace("SHA256=", "sha256=")
    elif case == "garbage":
        headers["X-Hub-Signature-256"] = "sha256=zz"
    elif case == "latin1":
        headers["X-Hub-Signature-256"] = "sha256=" + "é" * 64
    before = census(app)
    r = deliver(client, "installation", body=body, secret=secret, headers=headers, signed=signed, delivery="d-1")
    assert r.status_code == 401
    assert r.json["error"] == ("missing_signature" if case in ("missing", "sha1_only") else "bad_signature")
    assert census(app) == before  # not even the delivery id
    assert rows(app, WebhookDelivery) == []
    assert "d-1" in caplog.text and WEBHOOK_SECRET not in caplog.text
    assert "sha256=" not in caplog.text and "sha1=" not in caplog.text


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'"text"', b"\xff\xfe", b"[" * 5000])
def test_signed_body_that_is_not_a_json_object_is_400(app, client, body):
    before = census(app)
    r = deliver(client, "ping", body=body)
    assert r.status_code == 400 and r.json["error"] == "bad_request"
    assert census(app) == before


@pytest.mark.parametrize("header", ["X-GitHub-Delivery", "X-GitHub-Event"])
def test_signed_delivery_without_its_headers_is_400(app, client, header):
    r = deliver(client, "ping", headers={header: ""})
    assert r.status_code == 400
    assert rows(app, WebhookDelivery) == []


def test_only_post(client):
    r = client.get("/webhooks/github")
    assert r.status_code == 405 and r.json["error"] == "method_not_allowed"


def test_a_failed_handler_leaves_the_delivery_unseen(app, client):
    make_linked_org(app, "codertocat", "Codertocat", installation_id=1)
    bad = edited("pull_request.opened", pull_request__head__sha=None)
    r = deliver(client, "pull_request", body=bad, delivery="d-42")
    assert r.status_code == 400 and r.json["error"] == "bad_payload", r.json
    assert "pull_request.head.sha" in r.json["message"]
    assert rows(app, WebhookDelivery) == [] and links_of(app) == []
    # GitHub's redelivery of the same id, once it can be handled, is handled, not taken for a duplicate.
    r = deliver(client, "pull_request.opened", delivery="d-42")
    assert r.status_code == 200 and r.json == {"status": "ok"}
    assert links_of(app) == [(PR_REPO, 2, PR_SHA, "open")]


@pytest.mark.parametrize(
    "name, changes",
    [
        ("pull_request.opened", {"action": "opened\x00"}),
        ("pull_request.opened", {"repository__full_name": "Codertocat/Hello\x00-World"}),
        ("pull_request.opened", {"pull_request__base__ref": "ma\x00in"}),
        ("pull_request.opened", {"installation": None, "repository__owner__login": "Codertocat\x00"}),
        ("installation.created", {"installation__account__login": "Codertocat\x00"}),
        ("installation.created", {"repositories": [{"full_name": "Codertocat/a\x00"}]}),
        (
            "check_run.rerequested",
            {"check_run__name": "fremforge/image-scan", "repository__full_name": "Codertocat/Hello\x00-World"},
        ),
    ],
)
def test_a_nul_in_a_field_read_is_a_bad_payload_on_either_database(app, client, name, changes):
    """Review: on SQLite these were stored (200) with the NUL; on PostgreSQL, which cannot store one, they were a 422
    validation_failed. Refused alike, as GitHub's own payloads never hold one: a 400 bad_payload, nothing stored."""
    make_linked_org(app, "codertocat", "Codertocat", installation_id=1)
    before = (org_state(app), repos_of(app), links_of(app))
    r = deliver(client, name.split(".", 1)[0], body=edited(name, **changes))
    assert r.status_code == 400 and r.json["error"] == "bad_payload", r.json
    assert "NUL" in r.json["message"] or "owner/name" in r.json["message"], r.json
    assert rows(app, WebhookDelivery) == [] and (org_state(app), repos_of(app), links_of(app)) == before


def test_redelivery_is_acknowledged_and_ignored(app, client):
    r = deliver(client, "installation.created", delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958")
    assert r.status_code == 200 and r.json == {"status": "ok"}
    assert org_state(app) == [("Codertocat", "Codertocat", 957387)]
    with app.app_context():  # the org goes; a replay of the delivery must not bring it back
        session = db.session()
        with write_transaction(session):
            session.execute(sa.delete(Org))
    before = census(app)
    r = deliver(client, "installation.created", delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958")
    assert r.status_code == 200 and r.json == {"status": "duplicate"}
    assert census(app) == before and org_state(app) == []
    d = rows(app, WebhookDelivery)
    assert [(x.delivery_id, x.event, x.action) for x in d] == [
        ("72d3162e-cc78-11e3-81ab-4c9367dc0958", "installation", "created")
    ]


def test_unknown_event_is_202_ignored(app, client):
    r = deliver(client, body=b'{"ref": "refs/heads/main", "commits": []}', event="push")
    assert r.status_code == 202 and r.json == {"status": "ignored"}
    assert org_state(app) == []


@pytest.mark.parametrize(
    "name",
    [
        "check_suite.requested",
        "check_suite.requested.with-organization",
        "check_suite.requested.with-email-with-special-characters",
        "check_suite.rerequested",
        "check_suite.rerequested.with-organization",
        "check_run.created",  # no installation key at all
        "check_run.completed",
        "check_run.requested_action",
        "check_run.rerequested",  # another app's run ("randscape")
        "check_run.rerequested.with-organization",
    ],
)
def test_events_and_actions_not_for_us_are_202_ignored(app, client, name):
    make_linked_org(app, "codertocat", "Codertocat", installation_id=957387)
    make_linked_org(app, "github", "github", installation_id=1)
    before = census(app)
    r = deliver(client, name)
    assert r.status_code == 202 and r.json == {"status": "ignored"}
    after = census(app)
    assert after.pop("webhook_deliveries") == before.pop("webhook_deliveries") + 1
    assert after == before


@pytest.mark.parametrize("name", ["ping", "ping.with-app_id", "ping.with-organization"])
def test_ping(app, client, name):
    r = deliver(client, name)
    assert r.status_code == 200 and r.json == {"status": "ok"}
    assert [(d.event, d.action) for d in rows(app, WebhookDelivery)] == [("ping", None)]


# ---------------------------------------------------------------- installation


@pytest.mark.parametrize("name", ["installation.created", "installation.created.with-requester"])
def test_installation_created_makes_the_org_with_its_repositories(app, client, name):
    r = deliver(client, name)
    assert r.status_code == 200 and r.json == {"status": "ok"}
    assert org_state(app) == [("Codertocat", "Codertocat", 957387)]  # the login as slug (spec section 5)
    (org,) = rows(app, Org)
    assert repos_of(app) == [(org.id, "codertocat/hello-world")]
    # The new org has its policy and chain: it can take tokens and uploads at once.
    token = make_token(app, "Codertocat")
    upload(client, token, "Codertocat", "Codertocat/Hello-World", PR_SHA)  # any case


def test_installation_created_links_the_org_of_that_login_whatever_its_case(app, client):
    make_linked_org(app, "coder", "codertocat", repos=("codertocat/Old",))
    assert deliver(client, "installation.created").status_code == 200
    assert org_state(app) == [("coder", "codertocat", 957387)]
    (org,) = rows(app, Org)
    assert repos_of(app) == [(org.id, "codertocat/hello-world")]


def test_installation_created_when_the_slug_is_another_accounts(app, client):
    make_linked_org(app, "CoderToCat", "someone-else")  # the slug in another letter case is taken too
    assert deliver(client, "installation.created").status_code == 200
    assert org_state(app) == [("CoderToCat", "someone-else", None), ("Codertocat-2", "Codertocat", 957387)]


@pytest.mark.parametrize("name", ["installation.created", "installation.unsuspend"])
def test_an_installation_known_under_another_login_takes_the_renamed_accounts_login(app, client, name):
    """An installation is one account's for life: an event naming another login for it is a renamed account, and
    uploads naming the new owner are accepted (they were refused as outside the org's account)."""
    installation = 957387 if name == "installation.created" else 16598467
    make_linked_org(app, "coder", "old-name", installation_id=installation)
    assert deliver(client, name).status_code == 200
    assert org_state(app) == [("coder", "Codertocat", installation)]
    upload(client, make_token(app, "coder"), "coder", "Codertocat/Hello-World", PR_SHA)


def test_installation_deleted_unlinks_the_org(app, client):
    make_linked_org(app, "octocat", "octocat", installation_id=2, repos=("octocat/Hello-World", "octocat/Other"))
    make_linked_org(app, "other", "other", installation_id=3, repos=("other/x",))
    r = deliver(client, "installation.deleted")
    assert r.status_code == 200 and r.json == {"status": "ok"}
    assert org_state(app) == [("octocat", "octocat", None), ("other", "other", 3)]
    assert [name for _, name in repos_of(app)] == ["other/x"]


def test_installation_deleted_of_an_unknown_installation_is_ignored(app, client):
    r = deliver(client, "installation.deleted")
    assert r.status_code == 202 and r.json == {"status": "ignored"}
    assert org_state(app) == []


def test_installation_suspend_then_unsuspend(app, client):
    make_linked_org(app, "codertocat", "Codertocat", installation_id=16598467, repos=("codertocat/hello-world",))
    r = deliver(client, "installation.suspend")
    assert r.status_code == 200 and r.json == {"status": "ok"}
    assert org_state(app) == [("codertocat", "Codertocat", None)]
    assert [name for _, name in repos_of(app)] == ["codertocat/hello-world"]  # kept for the unsuspend
    r = deliver(client, "installation.unsuspend")
    assert r.status_code == 200 and r.json == {"status": "ok"}
    assert org_state(app) == [("codertocat", "Codertocat", 16598467)]


def test_an_account_renamed_while_suspended_gets_its_org_back_on_unsuspend(app, client):
    """The suspension unlinks the installation; the unsuspend names the account's new login: the same org is linked
    again and takes that login (a second org was made before, and the first one's scans and settings were lost)."""
    make_linked_org(app, "old-name", "old-name", installation_id=16598467, repos=("old-name/hello-world",))
    assert deliver(client, "installation.suspend").status_code == 200
    assert org_state(app) == [("old-name", "old-name", None)]
    assert deliver(client, "installation.unsuspend").status_code == 200  # the payload's login: Codertocat
    assert org_state(app) == [("old-name", "Codertocat", 16598467)]
    upload(client, make_token(app, "old-name"), "old-name", "Codertocat/Hello-World", PR_SHA)
    with app.app_context():
        (org,) = db.session().scalars(sa.select(Org)).all()
        assert org.suspended_installation_id is None  # linked again: nothing left to find it by


def test_a_deleted_installation_is_not_found_again_by_its_id(app, client):
    """Only a suspension keeps the id: an installation deleted is gone for good, its org unlinked for good."""
    make_linked_org(app, "old-name", "old-name", installation_id=16598467)
    deleted = edited("installation.suspend", action="deleted")
    assert deliver(client, body=deleted, event="installation").status_code == 200
    assert deliver(client, "installation.unsuspend").status_code == 200
    assert org_state(app) == [("old-name", "old-name", None), ("Codertocat", "Codertocat", 16598467)]


# ---------------------------------------------------------------- one installation, one org


RENAMED = {"installation__id": 777, "installation__account__login": "NewName"}  # the auditor's account, renamed


def renamed(name: str) -> bytes:
    """An installation event of installation 777, whose account acme is called NewName now."""
    return edited(name, **RENAMED)


def holders_of(app, installation: int) -> list[tuple[str, int | None, int | None]]:
    return [
        (o.slug, o.installation_id, o.suspended_installation_id)
        for o in rows(app, Org)
        if installation in (o.installation_id, o.suspended_installation_id)
    ]


def renamed_into_a_hand_made_org(app) -> None:
    """`orgs create newname`, then `orgs create acme --installation-id 777`: the account of acme's installation is
    renamed NewName, the login of the org made by hand."""
    make_org(app, "newname")
    make_linked_org(app, "acme", "acme", installation_id=777, repos=("acme/api",))


@pytest.mark.parametrize(
    "names",
    [
        ["installation.created"],
        ["installation_repositories.added", "installation.created"],
        ["installation.unsuspend"],
        ["installation.suspend", "installation.unsuspend"],
    ],
)
def test_an_installation_is_never_linked_to_a_second_org(app, client, caplog, names):
    """The org holding the installation (or whose suspension unlinked it) stays its org; the org made by hand with
    the account's new login is not linked too, and keeps its login (acme keeps its own: no two orgs share one)."""
    renamed_into_a_hand_made_org(app)
    for name in names:
        r = deliver(client, body=renamed(name), event=name.split(".")[0])
        assert r.status_code == 200 and r.json == {"status": "ok"}, (name, r.json)
    assert org_state(app) == [("newname", "newname", None), ("acme", "acme", 777)]
    assert holders_of(app, 777) == [("acme", 777, None)]
    assert "github.installation.login_taken org=acme login=NewName other=newname" in caplog.text


def test_a_renamed_account_takes_its_new_login_when_no_other_org_has_it(app, client):
    make_org(app, "someone", "someone-else")
    make_linked_org(app, "acme", "acme", installation_id=777)
    assert deliver(client, body=renamed("installation.suspend"), event="installation").status_code == 200
    assert deliver(client, body=renamed("installation.unsuspend"), event="installation").status_code == 200
    assert org_state(app) == [("someone", "someone-else", None), ("acme", "NewName", 777)]
    assert holders_of(app, 777) == [("acme", 777, None)]


def test_a_created_installation_of_the_login_of_an_org_holding_another_moves_nothing(app, client):
    """`created` for 777, known to acme, under a login another org has (holding another installation, its deletion
    not seen): nothing moves, and a warning names both: acme keeps 777 under its login, newname keeps its own."""
    make_linked_org(app, "acme", "acme", installation_id=777)
    make_linked_org(app, "newname", "NewName", installation_id=5)
    assert deliver(client, body=renamed("installation.created"), event="installation").status_code == 200
    assert org_state(app) == [("acme", "acme", 777), ("newname", "NewName", 5)]


@pytest.mark.parametrize("name", ["installation.created", "installation.unsuspend"])
def test_an_installation_left_on_two_orgs_is_kept_by_one(app, client, caplog, name):
    """Where an older version linked a second org, the next installation event leaves it on one: the org with the
    account's login (where its repository events go, see below); the other gives it up, with a warning."""
    make_linked_org(app, "newname", "newname", installation_id=777)
    make_linked_org(app, "acme", "acme", installation_id=777)
    assert deliver(client, body=renamed(name), event="installation").status_code == 200
    assert org_state(app) == [("newname", "newname", 777), ("acme", "acme", None)]
    assert "github.installation.held_twice installation=777 kept=newname unlinked=acme" in caplog.text


def test_a_suspension_left_beside_a_link_is_kept_by_one(app, client):
    """acme's suspension unlinked 777, then an older version linked newname to it on the unsuspend: the next
    suspension unlinks newname, and acme no longer holds 777 either."""
    make_linked_org(app, "acme", "acme")
    make_linked_org(app, "newname", "newname", installation_id=777)
    with app.app_context():
        session = db.session()
        with write_transaction(session):
            session.execute(sa.update(Org).where(Org.slug == "acme").values(suspended_installation_id=777))
    assert deliver(client, body=renamed("installation.suspend"), event="installation").status_code == 200
    assert holders_of(app, 777) == [("newname", None, 777)]


@pytest.mark.parametrize("suspended", [False, True])
def test_orgs_create_refuses_an_installation_another_org_holds(app, suspended):
    make_linked_org(app, "acme", "acme", installation_id=777)
    if suspended:
        client = app.test_client()
        assert deliver(client, body=renamed("installation.suspend"), event="installation").status_code == 200
    before = census(app)
    result = app.test_cli_runner().invoke(args=["orgs", "create", "newname", "--installation-id", "777"])
    assert result.exit_code != 0
    assert "the organisation 'acme' has the GitHub App installation 777 already" in result.output
    assert census(app) == before


def test_two_writers_never_link_one_installation_to_two_orgs(app):
    """Two transactions linking installation 777 to two orgs: the second waits for the first (PostgreSQL: the
    installation's lock; SQLite: one writer at a time), then finds it taken."""
    first_linked, outcome = threading.Event(), {}

    def first() -> None:
        with app.app_context():
            session = db.session()
            with write_transaction(session):
                orgs.create(session, "acme", installation_id=777)
                first_linked.set()
                time.sleep(0.5)  # the second runs meanwhile

    def second() -> None:
        first_linked.wait(10)
        with app.app_context():
            session = db.session()
            try:
                with write_transaction(session):
                    orgs.create(session, "newname", installation_id=777)
            except ValueError as exc:
                outcome["refused"] = str(exc)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert org_state(app) == [("acme", "acme", 777)]
    assert "'acme' has the GitHub App installation 777 already" in outcome["refused"]


# ---------------------------------------------------------------- installation_repositories


def test_installation_repositories_added_and_removed(app, client):
    make_linked_org(app, "codertocat", "Codertocat", installation_id=957387, repos=("codertocat/hello-world",))
    make_linked_org(app, "octocat", "octocat", installation_id=2, repos=("octocat/hello-world", "octocat/keep"))
    coder, octo = (o.id for o in rows(app, Org))
    r = deliver(client, "installation_repositories.added")
    assert r.status_code == 200 and r.json == {"status": "ok"}
    assert deliver(client, "installation_repositories.added").status_code == 200  # another delivery: idempotent
    r = deliver(client, "installation_repositories.removed")
    assert r.status_code == 200 and r.json == {"status": "ok"}
    assert sorted(repos_of(app)) == [
        (coder, "codertocat/hello-world"),
        (coder, "codertocat/space"),
        (octo, "octocat/keep"),
    ]


def test_installation_repositories_for_an_unknown_account_is_ignored(app, client):
    r = deliver(client, "installation_repositories.added")
    assert r.status_code == 202 and r.json == {"status": "ignored"}
    assert repos_of(app) == []


# ---------------------------------------------------------------- pull_request


OPEN_EXAMPLES = [
    "pull_request.opened",
    "pull_request.opened.with-organization",
    "pull_request.opened.with-null-body",
    "pull_request.synchronize",
    "pull_request.reopened",
    "pull_request.reopened.with-organization",
]


@pytest.mark.parametrize("name", OPEN_EXAMPLES)
def test_pull_request_links_its_head_commit_and_the_scans_uploaded_before(app, client, name):
    make_linked_org(app, "codertocat", "Codertocat", installation_id=1)
    token = make_token(app, "codertocat")
    before = upload(client, token, "codertocat", PR_REPO, PR_SHA, "ghcr.io/c/a:1")
    elsewhere = upload(client, token, "codertocat", PR_REPO, "f" * 40, "ghcr.io/c/a:1")
    r = deliver(client, name)
    assert r.status_code == 200 and r.json == {"status": "ok"}
    assert links_of(app) == [(PR_REPO, 2, PR_SHA, "open")]
    prs = {s.id: s.pr_number for s in rows(app, ScanRun)}
    assert prs == {before: 2, elsewhere: None}
    # A scan uploaded after the event takes the number at ingest (queries.PR_OF_COMMIT, a subquery of the scan insert).
    after = upload(client, token, "codertocat", PR_REPO, PR_SHA, "ghcr.io/c/b:1")
    assert {s.id: s.pr_number for s in rows(app, ScanRun)}[after] == 2
    r = client.get("/api/v1/orgs/codertocat/image-scans?pr=2", headers={"Authorization": f"Bearer {token}"})
    assert sorted(s["scan_run_id"] for s in r.json["items"]) == [before, after]


def test_pull_request_org_found_by_repository_owner_without_installation(app, client):
    make_linked_org(app, "coder", "CODERTOCAT")
    assert deliver(client, "pull_request.opened").status_code == 200
    (link,) = rows(app, PullRequestLink)
    assert link.org_id == rows(app, Org)[0].id and link.number == 2


def test_pull_request_of_an_unknown_account_is_ignored(app, client):
    make_linked_org(app, "acme", "acme", installation_id=99)
    r = deliver(client, "pull_request.opened")
    assert r.status_code == 202 and r.json == {"status": "ignored"}
    assert links_of(app) == []


@pytest.mark.parametrize("name", ["pull_request.closed", "pull_request.closed.with-organization"])
def test_pull_request_closed_keeps_the_scans_linked(app, client, name):
    make_linked_org(app, "codertocat", "Codertocat", installation_id=1)
    token = make_token(app, "codertocat")
    assert deliver(client, "pull_request.opened").status_code == 200
    scan = upload(client, token, "codertocat", PR_REPO, PR_SHA)
    r = deliver(client, name)
    assert r.status_code == 200 and r.json == {"status": "ok"}
    assert links_of(app) == [(PR_REPO, 2, PR_SHA, "closed")]
    assert [(s.id, s.pr_number) for s in rows(app, ScanRun)] == [(scan, 2)]
    # A closed PR is no longer what a new scan of its head belongs to; earlier scans still name it.
    later = upload(client, token, "codertocat", PR_REPO, PR_SHA, "ghcr.io/c/other:1")
    assert {s.id: s.pr_number for s in rows(app, ScanRun)}[later] == 2  # from the commit's earlier scans


def test_pull_request_closed_alone_records_the_closed_pr_and_links_no_scan(app, client):
    make_linked_org(app, "codertocat", "Codertocat", installation_id=1)
    token = make_token(app, "codertocat")
    scan = upload(client, token, "codertocat", PR_REPO, PR_SHA)
    assert deliver(client, "pull_request.closed").status_code == 200
    assert links_of(app) == [(PR_REPO, 2, PR_SHA, "closed")]
    assert [(s.id, s.pr_number) for s in rows(app, ScanRun)] == [(scan, None)]


def test_pull_request_events_out_of_order_never_step_back(app, client):
    """GitHub does not promise order, and anyone may redeliver an old event: the newer PR state wins."""
    make_linked_org(app, "codertocat", "Codertocat", installation_id=1)
    assert deliver(client, "pull_request.closed").status_code == 200  # updated_at 15:21:18
    assert deliver(client, "pull_request.opened").status_code == 200  # updated_at 15:20:33: older
    assert links_of(app) == [(PR_REPO, 2, PR_SHA, "closed")]
    reopened = edited("pull_request.reopened", pull_request__updated_at="2019-05-15T15:30:00Z")
    assert deliver(client, "pull_request", body=reopened).status_code == 200
    assert links_of(app) == [(PR_REPO, 2, PR_SHA, "open")]
    pushed = edited(
        "pull_request.synchronize", pull_request__updated_at="2019-05-15T15:40:00Z", pull_request__head__sha="a" * 40
    )
    assert deliver(client, "pull_request", body=pushed).status_code == 200
    assert links_of(app) == [(PR_REPO, 2, "a" * 40, "open")]


def test_github_s_own_payloads_opened_closed_reopened_leave_the_pull_request_open(app, client):
    """GitHub's example `reopened` is stamped 15:20:33, older than its `closed` (15:21:18): taken by the stamp alone,
    the reopen was dropped and the PR stayed closed (review: under block_on new its head then failed closed, and it
    stopped being re-posted). A reopen of a closed, unmerged PR is taken whatever its stamp; an older `opened` or
    `synchronize` still is not, nor a reopen of a merged one."""
    make_linked_org(app, "codertocat", "Codertocat", installation_id=1)
    for name in ("pull_request.opened", "pull_request.closed", "pull_request.reopened"):
        assert deliver(client, name).status_code == 200
    assert links_of(app) == [(PR_REPO, 2, PR_SHA, "open")]
    assert deliver(client, "pull_request.closed").status_code == 200
    assert deliver(client, "pull_request.synchronize").status_code == 200  # older: no step back
    assert links_of(app) == [(PR_REPO, 2, PR_SHA, "closed")]
    merged = edited("pull_request.closed", pull_request__merged=True, pull_request__merge_commit_sha="c" * 40)
    assert deliver(client, "pull_request", body=merged).status_code == 200
    assert deliver(client, "pull_request.reopened").status_code == 200  # a merged PR is not reopened
    assert links_of(app) == [(PR_REPO, 2, PR_SHA, "closed")]


def test_a_late_reopened_never_winds_a_newer_close_back(app, client):
    """Review: the reopen rule took a redelivered `reopened` (12:00, head A) after a newer push and close (13:00 head B,
    14:00 closed): the PR read open again on its old head; and one of the same head an hour older than the close.
    A reopen taken out of order changes only the state of a row on the same head, stamped at most REOPEN_SKEW before
    the close, and never its stamp, so older events still cannot apply after it."""
    make_linked_org(app, "codertocat", "Codertocat", installation_id=1)
    at = lambda hour: f"2019-05-15T{hour}:00:00Z"  # noqa: E731
    events = [
        edited("pull_request.opened", pull_request__updated_at=at(10)),
        edited("pull_request.closed", pull_request__updated_at=at(11)),
        edited("pull_request.reopened", pull_request__updated_at=at(12)),
        edited("pull_request.synchronize", pull_request__updated_at=at(13), pull_request__head__sha="b" * 40),
        edited("pull_request.closed", pull_request__updated_at=at(14), pull_request__head__sha="b" * 40),
    ]
    for body in events:
        assert deliver(client, "pull_request", body=body).status_code == 200
    assert links_of(app) == [(PR_REPO, 2, "b" * 40, "closed")]
    assert deliver(client, "pull_request", body=events[2]).status_code == 200  # the 12:00 reopen, redelivered
    assert links_of(app) == [(PR_REPO, 2, "b" * 40, "closed")]
    reopened_b = edited(
        "pull_request.reopened", pull_request__updated_at="2019-05-15T13:58:00Z", pull_request__head__sha="b" * 40
    )
    assert deliver(client, "pull_request", body=reopened_b).status_code == 200  # same head, 2 min older: open
    assert links_of(app) == [(PR_REPO, 2, "b" * 40, "open")]
    assert deliver(client, "pull_request", body=events[3]).status_code == 200  # 13:00 < 14:00: still refused
    assert [p.updated_at.hour for p in rows(app, PullRequestLink)] == [14]
    closed_b = edited("pull_request.closed", pull_request__updated_at=at(15), pull_request__head__sha="b" * 40)
    assert deliver(client, "pull_request", body=closed_b).status_code == 200
    assert deliver(client, "pull_request", body=reopened_b).status_code == 200  # same head, an hour before the close
    assert links_of(app) == [(PR_REPO, 2, "b" * 40, "closed")]  # an old delivery: the later close stands


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59Z", "not a time"])
def test_a_pull_request_stamped_out_of_range_is_handled_as_received_now(app, client, stamp):
    """A stamp that cannot be a time (year 1 east of UTC overflowed: a 500) or lies in the future (it held the row
    against every later event) is taken as the time of receipt: the event is handled, and a later one still wins."""
    make_linked_org(app, "codertocat", "Codertocat", installation_id=1)
    odd = edited("pull_request.closed", pull_request__updated_at=stamp)
    r = deliver(client, "pull_request", body=odd)
    assert r.status_code == 200 and r.json == {"status": "ok"}, r.json
    assert links_of(app) == [(PR_REPO, 2, PR_SHA, "closed")]
    later = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    reopened = edited("pull_request.reopened", pull_request__updated_at=later)
    assert deliver(client, "pull_request", body=reopened).status_code == 200
    assert links_of(app) == [(PR_REPO, 2, PR_SHA, "open")]


def bases_of(app) -> list[tuple[int, str | None, str | None]]:
    return [(p.number, p.base_ref, p.base_sha) for p in rows(app, PullRequestLink)]


@pytest.mark.parametrize("name", OPEN_EXAMPLES)
def test_pull_request_records_its_base_branch_and_commit(app, client, name):
    make_linked_org(app, "codertocat", "Codertocat", installation_id=1)
    assert deliver(client, name).status_code == 200
    assert bases_of(app) == [(2, "refs/heads/master", "f95f852bd8fca8fcc58a9a2d6c842781e32a215e")]


def test_a_base_moved_by_a_newer_event_is_kept_and_an_odd_one_is_none(app, client):
    make_linked_org(app, "codertocat", "Codertocat", installation_id=1)
    rebased = edited(
        "pull_request.synchronize",
        pull_request__updated_at="2019-05-15T15:40:00Z",
        pull_request__base__ref="release/1.2",
        pull_request__base__sha="B" * 40,
    )
    assert deliver(client, "pull_request", body=rebased).status_code == 200
    assert bases_of(app) == [(2, "refs/heads/release/1.2", "b" * 40)]
    odd = edited(
        "pull_request.synchronize",
        pull_request__updated_at="2019-05-15T15:50:00Z",
        pull_request__base__ref="bad..branch",
        pull_request__base__sha="not-a-sha",
    )
    assert deliver(client, "pull_request", body=odd).status_code == 200  # the head is still worth knowing
    assert bases_of(app) == [(2, None, None)]  # no baseline by it: every finding of the head counts


# ---------------------------------------------------------------- check_run


def _ours(name: str = "check_run.rerequested") -> bytes:
    return edited(name, check_run__name="fremforge/image-scan")


def _remember_run(app, slug: str, github_id: int) -> None:
    with app.app_context():
        session = db.session()
        with write_transaction(session):
            org = session.scalars(sa.select(Org).where(Org.slug == slug)).one()
            session.add(
                CheckRunRecord(
                    org_id=org.id, repo_full_name="github/hello-world", commit_sha=CHECK_SHA, github_id=github_id
                )
            )


@pytest.mark.parametrize("name", ["check_run.rerequested", "check_run.rerequested.with-organization"])
def test_check_run_rerequested_starts_a_new_run_with_the_commits_aggregate(app, client, name):
    make_linked_org(app, "github", "github", installation_id=1)
    set_policy(app, "github", block_action="block_pull")
    token = make_token(app, "github")
    failing = upload(
        client,
        token,
        "github",
        "github/hello-world",
        CHECK_SHA,
        "ghcr.io/g/a:1",
        [finding("CVE-2024-0001", severity="critical")],
    )
    passing = upload(
        client, token, "github", "github/hello-world", CHECK_SHA, "ghcr.io/g/b:1", [finding("CVE-2024-0002", "low")]
    )
    _remember_run(app, "github", 4)
    before = [o.id for o in rows(app, OutboxItem)]
    r = deliver(client, "check_run", body=_ours(name))
    assert r.status_code == 202 and r.json == {"status": "queued"}
    (record,) = rows(app, CheckRunRecord)
    assert record.github_id is None and record.create_attempted_at is None
    new = [o for o in rows(app, OutboxItem) if o.id not in before]
    assert len(new) == 1
    (item,) = new
    assert item.scan_run_id == passing and item.commit_sha == CHECK_SHA and item.repo_full_name == "github/hello-world"
    # The aggregate of both images: the later passing image does not turn the failing one green.
    assert item.commit_status["state"] == "failure"
    assert item.commit_status["description"] == "2 images · 1 critical · blocking"
    assert item.check_run["conclusion"] == "failure" and item.check_run["head_sha"] == CHECK_SHA
    summary = item.check_run["output"]["summary"]  # each image with its own top findings
    a, b = summary.index("ghcr.io/g/a:1"), summary.index("ghcr.io/g/b:1")
    first, second = sorted([(a, "CVE-2024-0001"), (b, "CVE-2024-0002")])
    assert first[0] < summary.index(first[1]) < second[0] < summary.index(second[1])
    assert item.state == "not_delivered"  # no GitHub App configured in the tests
    assert failing < passing


def _acme_failing_at(app, client) -> int:
    set_policy(app, "acme", block_action="block_pull")
    token = make_token(app, "acme")
    return upload(client, token, "acme", "acme/api", CHECK_SHA, "ghcr.io/a/api:1", [finding("CVE-2024-0001")])


def _rerequested_for_acme() -> bytes:
    return edited(
        "check_run.rerequested",
        check_run__name="fremforge/image-scan",
        installation__id=777,
        repository__full_name="acme/api",
        repository__owner__login="acme",
    )


def test_check_run_rerequested_after_a_rename_goes_to_the_installations_org(app, client):
    """The auditor's case: after installation.created for 777 under the login of an org made by hand, a re-run on
    acme's repository is acme's (it was the other org's, which has no scans: 200 ok, no check run)."""
    renamed_into_a_hand_made_org(app)
    assert deliver(client, body=renamed("installation.created"), event="installation").status_code == 200
    scan = _acme_failing_at(app, client)
    r = deliver(client, "check_run", body=_rerequested_for_acme())
    assert r.status_code == 202 and r.json == {"status": "queued"}
    (item,) = rows(app, OutboxItem)[1:]  # after the upload's own
    assert item.scan_run_id == scan and item.repo_full_name == "acme/api" and item.check_run["head_sha"] == CHECK_SHA


def test_check_run_rerequested_for_an_installation_on_two_orgs_goes_by_the_repository_owner(app, client, caplog):
    """Two orgs holding one installation (left by an older version): the lookup by its id guesses neither (it took
    the first made); the repository owner's org it is."""
    make_linked_org(app, "newname", "newname", installation_id=777)
    make_linked_org(app, "acme", "acme", installation_id=777)
    scan = _acme_failing_at(app, client)
    r = deliver(client, "check_run", body=_rerequested_for_acme())
    assert r.status_code == 202 and r.json == {"status": "queued"}
    assert rows(app, OutboxItem)[-1].scan_run_id == scan
    assert "github.installation.held_twice installation=777 orgs=newname,acme" in caplog.text


def test_check_run_rerequested_under_block_action_none_queues_nothing(app, client):
    make_linked_org(app, "github", "github", installation_id=1)
    token = make_token(app, "github")
    upload(client, token, "github", "github/hello-world", CHECK_SHA)
    _remember_run(app, "github", 4)
    set_policy(app, "github", block_action="none")
    before = len(rows(app, OutboxItem))
    r = deliver(client, "check_run", body=_ours())
    assert r.status_code == 200 and r.json == {"status": "ok"}
    assert len(rows(app, OutboxItem)) == before
    assert rows(app, CheckRunRecord)[0].github_id is None  # a later scan makes a new run


def test_check_run_rerequested_without_scans_queues_nothing(app, client):
    make_linked_org(app, "github", "github", installation_id=1)
    r = deliver(client, "check_run", body=_ours())
    assert r.status_code == 200 and r.json == {"status": "ok"}
    assert rows(app, OutboxItem) == []
