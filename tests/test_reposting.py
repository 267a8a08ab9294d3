"""Re-posting under the current policy (spec section 4): a settings change, and a pull request's base learnt after the
upload, re-post the affected commits through the outbox; asserted on what the fake GitHub ends up showing."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from app import commits, db, reposts, sqlite_writers
from app.chain import retention
from app.findings import service, store
from app.github import outbox
from app.github.client import github_app
from app.github.handlers import pull_request as pull_request_handlers
from app.models import Finding, Org, OutboxItem, Repost, ScanRun, utcnow
from app.worker import Loop
from tests.conftest import INSTALLATION, MakeApp, app_with_github, org_with_installation
from tests.factories import finding, make_org, make_token, post, seed
from tests.fakes import FakeGitHub
from tests.test_delivery import Clock, run

REPO = "acme/api"
IMAGE = "ghcr.io/acme/api"
SECRET = "webhook-secret"  # tests.fakes.github_app_config


@pytest.fixture
def app(make_app: MakeApp, fake_github: FakeGitHub) -> Flask:
    return app_with_github(make_app, fake_github, [REPO])


@pytest.fixture
def token(app: Flask) -> str:
    return org_with_installation(app)  # block_pull


def sha_of(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


def upload(client: Any, token: str, sha: str, findings: list[dict], image: str = f"{IMAGE}:1", **extra: Any) -> dict:
    r = post(client, token, seed(findings, image_ref=image, sha=sha, repo=REPO, **extra))
    assert r.status_code == 202, r.json
    return r.json


def settings(client: Any, token: str, **change: Any) -> dict:
    r = client.put("/api/v1/orgs/acme/image-scans/settings", json=change, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.json
    return r.json


def pull_request(
    client: Any,
    number: int,
    head: str,
    base: str = "main",
    base_sha: str | None = None,
    action: str = "opened",
    at=None,
    merged: str | None = None,
) -> dict:
    """A signed pull_request delivery with what the handler reads (GitHub sends much more); `merged`: closed by a
    merge whose merge commit is that SHA."""
    return deliver(
        client,
        "pull_request",
        {
            "action": action,
            "number": number,
            "pull_request": {
                "number": number,
                "state": "open",
                "updated_at": at or "2026-12-01T10:00:00Z",
                "head": {"sha": head, "ref": f"feature-{number}"},
                "base": {"sha": base_sha or sha_of(f"base-{base}"), "ref": base},
                "merged": merged is not None,
                "merge_commit_sha": merged,
            },
        },
    )


def rerun(client: Any, sha: str) -> dict:
    """A reviewer's "Re-run" of the check run."""
    doc = {"action": "rerequested", "check_run": {"name": "fremforge/image-scan", "head_sha": sha}}
    return deliver(client, "check_run", doc)


def deliver(client: Any, event: str, doc: dict[str, Any]) -> dict:
    """POST a delivery signed as GitHub signs it; what the handlers read of the repository and installation added."""
    doc = {**doc, "repository": {"full_name": REPO, "name": "api", "owner": {"login": "acme"}}}
    return signed(client, event, {**doc, "installation": {"id": INSTALLATION}})


def signed(client: Any, event: str, doc: dict[str, Any]) -> dict:
    """POST `doc` as a delivery of `event`, signed as GitHub signs it."""
    body = json.dumps(doc).encode()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest(),
    }
    r = client.post("/webhooks/github", data=body, headers=headers)
    assert r.status_code in (200, 202), r.json
    return r.json


def work(app: Flask) -> int:
    """The worker until nothing is left: asked commits become outbox items, and those are delivered."""
    with app.app_context():
        gh = github_app()
        assert gh is not None
        return Loop(gh, once=True).run()


def shown(fake: FakeGitHub, sha: str) -> tuple[str, str] | None:
    """What GitHub shows for the commit: the newest status (state, description), and the check run agrees."""
    status = fake.latest_status("acme", "api", sha)
    if status is None:
        return None
    runs = fake.runs_of("acme", "api", sha)
    assert runs and runs[-1]["conclusion"] == status["state"], (runs, status)
    return status["state"], status["description"]


def items(app: Flask) -> list[OutboxItem]:
    with app.app_context():
        return list(db.session().scalars(sa.select(OutboxItem).order_by(OutboxItem.id)))


HIGH = [finding(cve_id="CVE-2024-0001", severity="high", package="openssl")]
CLEAN = [finding(cve_id="CVE-2024-0002", severity="low", package="zlib")]


# ---------------------------------------------------------------- a settings change


def test_block_pull_to_warn_turns_open_pull_request_heads_green_and_back_red(app, client, token, fake_github):
    heads = [sha_of(f"head-{n}") for n in range(3)]
    for n, sha in enumerate(heads, start=1):
        upload(client, token, sha, HIGH)
        pull_request(client, n, sha)
    work(app)
    assert [shown(fake_github, sha) for sha in heads] == [("failure", "1 image · 1 high · blocking")] * 3

    settings(client, token, block_action="warn")
    work(app)
    assert [shown(fake_github, sha) for sha in heads] == [("success", "1 image · 1 high · warning only")] * 3

    settings(client, token, block_action="block_pull")
    work(app)
    assert [shown(fake_github, sha) for sha in heads] == [("failure", "1 image · 1 high · blocking")] * 3


def test_a_threshold_change_reposts_and_an_old_commit_outside_the_window_is_left(app, client, token, fake_github):
    recent, old, old_pr_head = sha_of("recent"), sha_of("old"), sha_of("old-pr-head")
    for sha in (recent, old, old_pr_head):
        upload(client, token, sha, HIGH)
    pull_request(client, 9, old_pr_head)
    work(app)
    with app.app_context():  # two scans from before the window; one is still the head of an open pull request
        session = db.session()
        session.execute(
            sa.update(ScanRun)
            .where(ScanRun.commit_sha.in_([old, old_pr_head]))
            .values(created_at=ScanRun.created_at - reposts.RECENT - timedelta(days=1))
        )
        session.commit()
    settings(client, token, block_threshold="critical")
    work(app)
    assert shown(fake_github, recent) == ("success", "1 image · 1 high")
    assert shown(fake_github, old_pr_head) == ("success", "1 image · 1 high")
    assert shown(fake_github, old) == ("failure", "1 image · 1 high · blocking")  # not re-posted


def test_changes_before_the_worker_comes_make_one_outbox_item_per_commit(app, client, token, fake_github):
    heads = [sha_of(f"burst-{n}") for n in range(4)]
    for sha in heads:
        upload(client, token, sha, HIGH)
    work(app)
    before = len(items(app))
    settings(client, token, block_action="warn")
    settings(client, token, block_threshold="critical")
    settings(client, token, block_action="block_pull", ignore_unfixed=True)
    with app.app_context():
        asked = db.session().execute(sa.select(Repost.commit_sha, Repost.version)).all()
    assert sorted(asked) == sorted((sha, 3) for sha in heads)
    work(app)
    assert len(items(app)) == before + len(heads)
    assert {shown(fake_github, sha) for sha in heads} == {("success", "1 image · 1 high")}  # below critical


def test_a_change_nothing_depends_on_asks_for_nothing(app, client, token):
    upload(client, token, sha_of("c"), HIGH)
    settings(client, token, retention_days=30)
    with app.app_context():
        assert reposts.pending(db.session().connection(), 1) == 0


def test_without_a_github_app_nothing_is_asked(make_app):
    app = make_app()
    make_org(app, block_action="block_pull")
    token = make_token(app)
    client = app.test_client()
    upload(client, token, sha_of("no-app"), HIGH)
    settings(client, token, block_action="warn")
    with app.app_context():
        assert db.session().scalar(sa.select(sa.func.count()).select_from(Repost)) == 0


def test_a_worker_that_dies_holding_asked_commits_loses_none(app, client, token, fake_github):
    sha = sha_of("lease")
    upload(client, token, sha, HIGH)
    work(app)
    settings(client, token, block_action="warn")
    with app.app_context():
        assert [r.commit_sha for r in reposts.claim(db.session())] == [sha]  # leased, then the worker dies
    work(app)
    assert shown(fake_github, sha)[0] == "failure"  # the lease holds: no other worker takes it yet
    with app.app_context():  # the lease runs out (on the database's clock)
        session = db.session()
        session.execute(sa.update(Repost).values(claimed_until=Repost.requested_at - timedelta(minutes=1)))
        session.commit()
    work(app)
    assert shown(fake_github, sha) == ("success", "1 image · 1 high · warning only")
    with app.app_context():
        assert reposts.pending(db.session().connection(), 1) == 0


def test_a_batch_is_left_before_its_lease_runs_out_and_the_rest_is_taken_again(app, client, token, monkeypatch):
    shas = [sha_of(f"batch-{n}") for n in range(3)]
    for sha in shas:
        upload(client, token, sha, HIGH)
    work(app)
    settings(client, token, block_action="warn")
    monkeypatch.setattr(reposts, "LEASE", timedelta(0))  # half of it is gone before the first commit is done
    with app.app_context():
        session = db.session()
        rounds = [outbox.repost_asked(session, deliver=True) for _ in range(4)]
        assert reposts.pending(session.connection(), 1) == 0
    assert rounds == [1, 1, 1, 0]  # one commit a round (never none), the rest leased again at once


# ---------------------------------------------------------------- a pull request learnt later


def test_a_pull_request_learnt_after_the_upload_reposts_with_its_baseline(app, client, token, fake_github):
    settings(client, token, block_on="new")
    base, head = sha_of("main-tip"), sha_of("feature")
    upload(client, token, base, HIGH, ref="refs/heads/main")
    body = upload(client, token, head, HIGH, ref="refs/pull/5/merge")
    assert body["status"] == "failure"  # no pull request known yet: every finding counts
    work(app)
    assert shown(fake_github, head) == ("failure", "1 image · 1 new high · blocking")
    run = fake_github.runs_of("acme", "api", head)[-1]
    assert f"no baseline: every finding counts ({commits.NO_PULL_REQUEST})" in run["output"]["summary"]

    assert pull_request(client, 5, head, base="main") == {"status": "queued"}
    work(app)
    assert shown(fake_github, head) == ("success", "1 image · 1 high")
    summary = fake_github.runs_of("acme", "api", head)[-1]["output"]["summary"]
    assert "1 existing on the base" in summary and "Compared with the base's scan" in summary


def test_the_check_run_lists_the_findings_that_block_before_existing_ones(app, client, token, fake_github):
    """main has five criticals; the pull request adds one high, which alone blocks. HEAD listed the five criticals
    (the most severe) and never the high: the reviewer was pointed at what does not hold the pull request. Also when
    the commit's image is judged again (another image uploaded: `commits.evaluate` reads its top findings)."""
    settings(client, token, block_on="new")
    existing = [finding(cve_id=f"CVE-2024-10{i}", severity="critical", package=f"lib{i}") for i in range(5)]
    added = finding(cve_id="CVE-2024-9999", severity="high", package="zzz")
    head = sha_of("adds-a-high")
    upload(client, token, sha_of("main-tip"), existing, ref="refs/heads/main")
    pull_request(client, 6, head)
    assert upload(client, token, head, [*existing, added], ref="refs/pull/6/merge")["status"] == "failure"
    work(app)
    summary = fake_github.runs_of("acme", "api", head)[-1]["output"]["summary"]
    assert "**Blocking: 1** (1 new high)" in summary and "CVE-2024-9999" in summary, summary
    upload(client, token, head, CLEAN, image="ghcr.io/acme/other:1", ref="refs/pull/6/merge")
    work(app)
    summary = fake_github.runs_of("acme", "api", head)[-1]["output"]["summary"]
    assert "2 images" in summary and "CVE-2024-9999" in summary, summary


def test_the_listed_findings_follow_the_policy_of_each_post(app, client, token, fake_github):
    """Under warn, what would block is listed first too; once the policy changes (block_on all, only criticals block),
    the commit posted again lists the criticals that block now, not the high that blocked at upload."""
    settings(client, token, block_on="new", block_action="warn")
    existing = [finding(cve_id=f"CVE-2024-20{i}", severity="critical", package=f"lib{i}") for i in range(5)]
    added = finding(cve_id="CVE-2024-8888", severity="high", package="aaa")
    head = sha_of("warned")
    upload(client, token, sha_of("main-tip"), existing, ref="refs/heads/main")
    pull_request(client, 6, head)
    upload(client, token, head, [*existing, added], ref="refs/pull/6/merge")
    work(app)
    summary = fake_github.runs_of("acme", "api", head)[-1]["output"]["summary"]
    assert "Would block (warn: not enforced): 1" in summary and "CVE-2024-8888" in summary, summary
    settings(client, token, block_on="all", block_action="block_pull", block_threshold="critical")
    work(app)
    summary = fake_github.runs_of("acme", "api", head)[-1]["output"]["summary"]
    assert "**Blocking: 5** (5 critical)" in summary and "CVE-2024-8888" not in summary, summary


def test_a_base_changed_by_an_edit_reposts_against_the_new_base(app, client, token, fake_github):
    settings(client, token, block_on="new")
    head = sha_of("edited-head")
    upload(client, token, sha_of("main"), HIGH, ref="refs/heads/main")
    upload(client, token, sha_of("release"), CLEAN, ref="refs/heads/release")
    upload(client, token, head, HIGH, ref="refs/pull/6/merge")
    pull_request(client, 6, head, base="main")
    work(app)
    assert shown(fake_github, head)[0] == "success"  # the high is on main already
    pull_request(client, 6, head, base="release", action="edited", at="2026-12-01T11:00:00Z")
    work(app)
    assert shown(fake_github, head) == ("failure", "1 image · 1 new high · blocking")  # not on release


def test_a_newer_scan_of_the_base_reposts_the_open_pull_requests_on_it(app, client, token, fake_github):
    """Main fixes the high: a pull request that still has it now adds it (block_on new), and GitHub shows so."""
    settings(client, token, block_on="new")
    head, other, web = sha_of("feature"), sha_of("other-feature"), sha_of("web-feature")
    upload(client, token, sha_of("main-1"), HIGH, ref="refs/heads/main")
    pull_request(client, 8, head, base="main")
    pull_request(client, 9, other, base="release")  # on another base: not asked again
    pull_request(client, 10, web, base="main")  # on main, but its scans are of another image: not asked again
    upload(client, token, head, HIGH, ref="refs/pull/8/merge")
    upload(client, token, other, HIGH, ref="refs/pull/9/merge")
    upload(client, token, web, HIGH, image="ghcr.io/acme/web:1", ref="refs/pull/10/merge")
    work(app)
    assert shown(fake_github, head) == ("success", "1 image · 1 high")  # the high is on main already
    posts = {sha: len(fake_github.runs_of("acme", "api", sha)[-1]["history"]) for sha in (other, web)}

    upload(client, token, sha_of("main-2"), CLEAN, ref="refs/heads/main")  # main fixed it
    work(app)
    assert shown(fake_github, head) == ("failure", "1 image · 1 new high · blocking")
    assert {sha: len(fake_github.runs_of("acme", "api", sha)[-1]["history"]) for sha in (other, web)} == posts


def test_a_base_scan_stored_while_a_head_upload_is_in_flight_is_its_baseline(
    app, client, token, fake_github, monkeypatch
):
    """main had the high; the head's upload assesses against that scan before its locks, and main's fix lands just
    then (its re-post asks cannot see the head's scan, not stored yet): the head reads its baseline again under the
    image's lock (app.locks), so the high is new and blocks."""
    settings(client, token, block_on="new")
    head = sha_of("feature-in-flight")
    upload(client, token, sha_of("main-1"), HIGH, ref="refs/heads/main")
    pull_request(client, 8, head, base="main")
    other = app.test_client()
    real = service.assess

    def base_fixed_meanwhile(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(service, "assess", real)  # once: the head's assessment before its locks
        upload(other, token, sha_of("main-2"), CLEAN, ref="refs/heads/main")
        return real(*args, **kwargs)

    monkeypatch.setattr(service, "assess", base_fixed_meanwhile)
    answer = upload(client, token, head, HIGH, ref="refs/pull/8/merge")
    assert service.assess is real  # main's fix landed mid-upload
    assert answer["status"] == "failure"
    work(app)
    assert shown(fake_github, head) == ("failure", "1 image · 1 new high · blocking")


def test_a_head_scanned_with_its_bases_ref_is_no_baseline_of_any_pull_request(app, client, token, fake_github):
    """pull_request_target runs with github.ref = the base branch's: such a scan of a head is not one of the base."""
    settings(client, token, block_on="new")
    upload(client, token, sha_of("main-tip"), CLEAN, ref="refs/heads/main")
    a, b = sha_of("pr-a"), sha_of("pr-b")
    pull_request(client, 1, a)
    pull_request(client, 2, b)
    upload(client, token, b, HIGH, ref="refs/pull/2/merge")
    work(app)
    assert shown(fake_github, b) == ("failure", "1 image · 1 new high · blocking")
    assert upload(client, token, a, HIGH, ref="refs/heads/main")["status"] == "failure"  # as pull_request_target
    again = upload(client, token, a, HIGH, ref="refs/heads/main")  # its job re-run: not its own baseline either
    assert again["status"] == "failure"
    later = upload(client, token, b, HIGH, ref="refs/pull/2/merge")
    assert later["status"] == "failure"
    work(app)
    assert shown(fake_github, a)[0] == shown(fake_github, b)[0] == "failure"


@pytest.mark.parametrize("scanned_after_close", [False, True], ids=["scanned-while-open", "scanned-after-close"])
def test_a_head_scanned_with_its_bases_ref_stays_no_baseline_once_its_pull_request_is_closed(
    app, client, token, fake_github, scanned_after_close
):
    """Pull request 8 (its head scanned as pull_request_target stores it, under refs/heads/main) is closed unmerged:
    its scan is still not main's, so pull request 7's high stays new. HEAD excluded only open pull requests' heads:
    once 8 closed, its scan was main's newest, and 7 went green."""
    settings(client, token, block_on="new")
    upload(client, token, sha_of("main-tip"), CLEAN, ref="refs/heads/main")
    seven, eight = sha_of("pr-7"), sha_of("pr-8")
    pull_request(client, 7, seven)
    pull_request(client, 8, eight)
    if not scanned_after_close:
        upload(client, token, eight, HIGH, ref="refs/heads/main")  # as pull_request_target
    pull_request(client, 8, eight, action="closed", at="2026-12-01T11:00:00Z")
    if scanned_after_close:  # its job ran late (a re-run, a queue)
        upload(client, token, eight, HIGH, ref="refs/heads/main")
    assert upload(client, token, seven, HIGH, ref="refs/heads/main")["status"] == "failure"
    work(app)
    assert shown(fake_github, seven) == ("failure", "1 image · 1 new high · blocking")


@pytest.mark.parametrize("webhook_first", [True, False, None], ids=["pr-known", "upload-first", "moved-on-first"])
def test_a_superseded_heads_scan_under_its_bases_ref_is_no_baseline(app, client, token, fake_github, webhook_first):
    """Pull request 7 moved from h1 to h2; h1's scan (under refs/heads/main, as pull_request_target stores it) is
    still no scan of main, whether the pull request was known when it was stored or became known after (its opened
    event arriving late). HEAD: the exclusion followed the pull request's current head only, and 8's high went green."""
    settings(client, token, block_on="new")
    upload(client, token, sha_of("main-tip"), CLEAN, ref="refs/heads/main")
    h1, h2, eight = sha_of("pr-7-h1"), sha_of("pr-7-h2"), sha_of("pr-8")
    if webhook_first is not False:
        pull_request(client, 7, h1)
    if webhook_first is not None:
        upload(client, token, h1, HIGH, ref="refs/heads/main")
    if webhook_first is False:
        pull_request(client, 7, h1)
    pull_request(client, 7, h2, action="synchronize", at="2026-12-01T11:00:00Z")
    if webhook_first is None:  # h1's job finished after the pull request moved on to h2
        upload(client, token, h1, HIGH, ref="refs/heads/main")
    pull_request(client, 8, eight)
    assert upload(client, token, eight, HIGH, ref="refs/pull/8/merge")["status"] == "failure"
    work(app)
    assert shown(fake_github, eight) == ("failure", "1 image · 1 new high · blocking")


@pytest.mark.parametrize("push_first", [False, True], ids=["closed-then-pushed", "pushed-then-closed"])
def test_a_fast_forward_merged_head_pushed_to_its_base_is_the_bases_scan(app, client, token, fake_github, push_first):
    """Pull request 1 fixes main's high and is merged by fast-forward (its merge commit is its head); main's push
    workflow scans that commit under refs/heads/main: that scan is main's, in whichever order the scan and the closed
    event come, so pull request 2 bringing the high back is new and blocks."""
    settings(client, token, block_on="new")
    upload(client, token, sha_of("main-1"), HIGH, ref="refs/heads/main")
    fix, again = sha_of("pr-1-fix"), sha_of("pr-2-again")
    pull_request(client, 1, fix)
    upload(client, token, fix, CLEAN, ref="refs/heads/main")  # pull_request_target, while open
    if push_first:
        upload(client, token, fix, CLEAN, ref="refs/heads/main")  # main's push workflow, the same commit
    pull_request(client, 1, fix, action="closed", at="2026-12-01T11:00:00Z", merged=fix)  # its head is the merge
    if not push_first:
        upload(client, token, fix, CLEAN, ref="refs/heads/main")
    pull_request(client, 2, again)
    assert upload(client, token, again, HIGH, ref="refs/pull/2/merge")["status"] == "failure"
    work(app)
    assert shown(fake_github, again) == ("failure", "1 image · 1 new high · blocking")


def test_a_pull_request_judged_against_a_head_scan_is_posted_again_once_that_head_is_known(
    app, client, token, fake_github
):
    """Pull request 7's pull_request_target scan (under refs/heads/main) came before its opened event: pull request
    8, judged against it then, went green; the event makes it known as a head's, and 8 is posted again, red."""
    settings(client, token, block_on="new")
    seven, eight = sha_of("pr-7-early"), sha_of("pr-8-judged")
    pull_request(client, 8, eight)
    upload(client, token, sha_of("main-tip"), CLEAN, ref="refs/heads/main")
    upload(client, token, seven, HIGH, ref="refs/heads/main")  # before pull request 7's webhook
    upload(client, token, eight, HIGH, ref="refs/pull/8/merge")
    work(app)
    assert shown(fake_github, eight)[0] == "success"  # judged against 7's scan: nothing said it was a head's
    pull_request(client, 7, seven)
    work(app)
    assert shown(fake_github, eight) == ("failure", "1 image · 1 new high · blocking")


def test_a_head_pushed_to_the_base_without_a_recorded_merge_leaves_the_base_unknown(app, client, token, fake_github):
    """Pull request 1 (the fix) is closed unmerged, then its branch is pushed to main by hand: main's newest scan is
    of a commit known as a head, so main as it is now is unknown, and no older scan stands in for it (main-1 had the
    high the fix removed): pull request 4 bringing the high back counts it, red, and says why."""
    settings(client, token, block_on="new")
    upload(client, token, sha_of("main-1"), HIGH, ref="refs/heads/main")
    fix, again = sha_of("pr-1-fix-pushed"), sha_of("pr-4-again")
    pull_request(client, 1, fix)
    pull_request(client, 1, fix, action="closed", at="2026-12-01T11:00:00Z")
    upload(client, token, fix, CLEAN, ref="refs/heads/main")  # main's push workflow
    pull_request(client, 4, again)
    assert upload(client, token, again, HIGH, ref="refs/pull/4/merge")["status"] == "failure"
    work(app)
    summary = fake_github.runs_of("acme", "api", again)[-1]["output"]["summary"]
    assert f"({commits.BASE_IS_A_HEAD})" in summary, summary


def test_a_head_scan_on_the_base_never_hands_the_baseline_to_an_older_base_commit(app, client, token, fake_github):
    """Pull request 4 is based on main-1 (the high), which main-2 fixed; then pull request 7's pull_request_target scan
    lands under refs/heads/main: main's newest is a head's, and main-1's scan (4's base commit) must not stand in for
    main, which fixed the high since: 4 stays red."""
    settings(client, token, block_on="new")
    main1, four, seven = sha_of("main-1-high"), sha_of("pr-4-stale-base"), sha_of("pr-7-target")
    upload(client, token, main1, HIGH, ref="refs/heads/main")
    pull_request(client, 4, four, base_sha=main1)
    upload(client, token, sha_of("main-2-fixed"), CLEAN, ref="refs/heads/main")
    assert upload(client, token, four, HIGH, ref="refs/pull/4/merge")["status"] == "failure"
    pull_request(client, 7, seven)
    upload(client, token, seven, HIGH, ref="refs/heads/main")
    work(app)
    assert shown(fake_github, four)[0] == "failure"
    assert upload(client, token, four, HIGH, ref="refs/pull/4/merge")["status"] == "failure"


def test_a_fast_forward_into_another_base_makes_no_head_scan_its_old_bases(app, client, token, fake_github):
    """Pull request 5 at X into release (its pull_request_target scan under refs/heads/release), then retargeted to
    main and fast-forwarded there: X reached main, not release; pull request 6 into release stays red."""
    settings(client, token, block_on="new")
    x, six = sha_of("pr-5-x"), sha_of("pr-6-release")
    upload(client, token, sha_of("release-tip"), CLEAN, ref="refs/heads/release")
    pull_request(client, 5, x, base="release")
    upload(client, token, x, HIGH, ref="refs/heads/release")
    pull_request(client, 5, x, base="main", action="edited", at="2026-12-01T10:30:00Z")
    pull_request(client, 5, x, base="main", action="closed", at="2026-12-01T11:00:00Z", merged=x)
    pull_request(client, 6, six, base="release")
    assert upload(client, token, six, HIGH, ref="refs/pull/6/merge")["status"] == "failure"


def test_a_head_fast_forwarded_by_a_later_pull_request_is_the_bases(app, client, token, fake_github):
    """The fix was pull request 1's head (closed unmerged), then pull request 3's, fast-forwarded into main: main's
    push scan of it is main's; pull request 4 bringing main-1's high back is red."""
    settings(client, token, block_on="new")
    upload(client, token, sha_of("main-1"), HIGH, ref="refs/heads/main")
    fix, again = sha_of("fix-twice"), sha_of("pr-4-back")
    pull_request(client, 1, fix)
    pull_request(client, 1, fix, action="closed", at="2026-12-01T11:00:00Z")
    pull_request(client, 3, fix)
    pull_request(client, 3, fix, action="closed", at="2026-12-01T12:00:00Z", merged=fix)
    upload(client, token, fix, CLEAN, ref="refs/heads/main")
    pull_request(client, 4, again)
    answer = upload(client, token, again, HIGH, ref="refs/pull/4/merge")
    assert answer["status"] == "failure"
    work(app)
    assert shown(fake_github, again) == ("failure", "1 image · 1 new high · blocking")


@pytest.mark.parametrize("numbers", [(1, 2), (2, 1)])
def test_a_head_of_pull_requests_into_different_bases_counts_every_finding(app, client, token, fake_github, numbers):
    """One commit status serves both: the high is new to release, so it blocks, whichever pull request came last."""
    settings(client, token, block_on="new")
    head = sha_of("shared-head")
    upload(client, token, sha_of("release-tip"), CLEAN, ref="refs/heads/release")
    upload(client, token, sha_of("main-tip"), HIGH, ref="refs/heads/main")
    into_release, into_main = numbers
    pull_request(client, into_release, head, base="release")
    pull_request(client, into_main, head, base="main")
    upload(client, token, head, HIGH, ref=f"refs/pull/{into_main}/merge")
    work(app)
    assert shown(fake_github, head) == ("failure", "1 image · 1 new high · blocking")
    assert f"({commits.MANY_BASES})" in fake_github.runs_of("acme", "api", head)[-1]["output"]["summary"]


def test_a_pull_request_whose_base_has_no_scan_says_so(app, client, token, fake_github):
    """The check run says which of the reasons for no baseline holds (spec section 3): here, no scan of the base."""
    settings(client, token, block_on="new")
    head = sha_of("into-unscanned")
    pull_request(client, 9, head, base="unscanned")
    assert upload(client, token, head, HIGH, ref="refs/pull/9/merge")["status"] == "failure"
    work(app)
    summary = fake_github.runs_of("acme", "api", head)[-1]["output"]["summary"]
    assert f"no baseline: every finding counts ({commits.NO_BASE_SCAN})" in summary, summary


def head_on_a_base_past_retention(app: Flask, client: Any, token: str, fake_github: FakeGitHub) -> str:
    """Pull request 8's head has main's high (block_on new: green); main's findings are then past retention (1 day)
    and the head's are not. Returns the head."""
    settings(client, token, block_on="new", retention_days=1)
    head = sha_of("retention-head")
    upload(client, token, sha_of("retention-main"), HIGH, ref="refs/heads/main")
    pull_request(client, 8, head, base="main")
    upload(client, token, head, HIGH, ref="refs/pull/8/merge")
    work(app)
    assert shown(fake_github, head) == ("success", "1 image · 1 high")
    with app.app_context():  # only the base's findings are past retention
        s = db.session()
        base_id = s.scalar(sa.select(ScanRun.id).where(ScanRun.ref == "refs/heads/main"))
        s.execute(
            sa.update(Finding)
            .where(Finding.scan_run_id == base_id)
            .values(created_at=Finding.created_at - timedelta(days=3))
        )
        s.commit()
    return head


def test_retention_emptying_a_baseline_reposts_the_heads_judged_against_it(app, client, token, fake_github):
    """The base's findings dropped by retention count as gone: the high is new on the head again, and GitHub says so
    without waiting for another event."""
    head = head_on_a_base_past_retention(app, client, token, fake_github)
    with app.app_context():
        retention.run(db.session(), utcnow())
    work(app)
    assert shown(fake_github, head) == ("failure", "1 image · 1 new high · blocking")


def test_a_retention_run_failing_after_emptying_a_baseline_has_asked_for_the_heads(
    app, client, token, fake_github, monkeypatch
):
    """The run's last transaction (its audit entry) fails, a deadlock victim say, after the base's findings were
    emptied. HEAD: the re-post was asked only there, and the next run found nothing left to empty: the head stayed
    green. Now it is asked with the removal itself."""
    head = head_on_a_base_past_retention(app, client, token, fake_github)
    real = retention.audit.record

    def failing_at_the_end(session: Any, org_id: int, action: Any, *args: Any, **kwargs: Any) -> Any:
        if action == retention.audit.Action.RETENTION_RUN:
            raise sa.exc.OperationalError("INSERT", {}, Exception("deadlock detected"))
        return real(session, org_id, action, *args, **kwargs)

    monkeypatch.setattr(retention.audit, "record", failing_at_the_end)
    with app.app_context(), pytest.raises(sa.exc.OperationalError):
        retention.run(db.session(), utcnow())
    monkeypatch.setattr(retention.audit, "record", real)
    with app.app_context():
        again = retention.run(db.session(), utcnow())
    assert [o.findings for o in again] == [0]  # nothing left for the next run to empty
    work(app)
    assert shown(fake_github, head) == ("failure", "1 image · 1 new high · blocking")


def test_a_newer_scan_at_the_base_commit_reposts_the_pull_request_when_the_branch_has_none(
    app, client, token, fake_github
):
    settings(client, token, block_on="new")
    head, base = sha_of("feature"), sha_of("base-commit")
    pull_request(client, 8, head, base="main", base_sha=base)
    upload(client, token, head, HIGH, ref="refs/pull/8/merge")
    work(app)
    assert shown(fake_github, head) == ("failure", "1 image · 1 new high · blocking")  # no baseline yet
    upload(client, token, base, HIGH)  # the base commit scanned, without a ref: the baseline by commit
    work(app)
    assert shown(fake_github, head) == ("success", "1 image · 1 high")


# ---------------------------------------------------------------- two images never turn green by any order


EVENTS = ("upload_a", "upload_b", "pull_request", "settings", "rerun")


@pytest.mark.parametrize("order", list(itertools.permutations(EVENTS))[::5])  # 24 of the 120 orders
def test_a_failing_image_a_never_turns_green_by_any_order_of_events(app, client, token, fake_github, order):
    sha, flip = sha_of("-".join(order)), itertools.cycle([True, False])
    uploaded_a = False
    for event in order:
        if event == "upload_a":
            upload(client, token, sha, HIGH, image="ghcr.io/acme/a:1")
            uploaded_a = True
        elif event == "upload_b":
            upload(client, token, sha, CLEAN, image="ghcr.io/acme/b:1")
        elif event == "pull_request":
            pull_request(client, 3, sha)
        elif event == "settings":  # changes a verdict could depend on, none that lets A's fixable high pass
            settings(client, token, ignore_unfixed=next(flip), block_on="new")
        elif event == "rerun":
            rerun(client, sha)
        work(app)
        if uploaded_a:
            state = shown(fake_github, sha)
            assert state is not None and state[0] == "failure", (order, event, state)


# ---------------------------------------------------------------- findings emptied by retention


def age_out(app: Flask, days: int = 2) -> None:
    """Retention run as of `days` from now: every finding stored so far loses its payload (retention_days 1)."""
    with app.app_context():
        retention.run(db.session(), utcnow() + timedelta(days=days))


MIXED = [
    finding(cve_id="CVE-2024-0101", severity="critical", package="openssl"),
    finding(cve_id="CVE-2024-0102", severity="high", package="curl", fixed=None),
    finding(cve_id="CVE-2024-0103", severity="low", package="zlib"),
]


def test_a_scan_emptied_by_retention_still_blocks_when_another_image_passes(app, client, token, fake_github):
    sha = sha_of("aged-a")
    settings(client, token, retention_days=1)
    upload(client, token, sha, HIGH, image="ghcr.io/acme/a:1")
    pull_request(client, 11, sha)
    work(app)
    assert shown(fake_github, sha) == ("failure", "1 image · 1 high · blocking")
    age_out(app)

    answer = upload(client, token, sha, CLEAN, image="ghcr.io/acme/b:1")
    work(app)
    assert answer["commit_status"]["state"] == "failure"
    assert shown(fake_github, sha) == ("failure", "2 images · 1 high · blocking")
    summary = fake_github.runs_of("acme", "api", sha)[-1]["output"]["summary"]
    assert "Removed by retention: 1 (judged by their stored severity, as fixable, new and not excepted)" in summary


def test_findings_emptied_by_retention_are_judged_by_their_stored_severity_under_new_settings(
    app, client, token, fake_github
):
    sha = sha_of("aged-mixed")
    settings(client, token, retention_days=1)
    upload(client, token, sha, MIXED)
    pull_request(client, 12, sha)
    work(app)
    assert shown(fake_github, sha) == ("failure", "1 image · 1 critical, 1 high · blocking")
    settings(client, token, ignore_unfixed=True)  # the high has no fixed version
    work(app)
    assert shown(fake_github, sha) == ("failure", "1 image · 1 critical · blocking")
    age_out(app)

    # What retention removed can no longer be read: unfixed, new or excepted, it blocks by its stored severity.
    settings(client, token, ignore_unfixed=False, block_threshold="critical")
    work(app)
    assert shown(fake_github, sha) == ("failure", "1 image · 1 critical · blocking")
    settings(client, token, block_threshold="high", ignore_unfixed=True)
    work(app)
    assert shown(fake_github, sha) == ("failure", "1 image · 1 critical, 1 high · blocking")
    settings(client, token, block_action="warn")  # warn never blocks, whatever was removed
    work(app)
    assert shown(fake_github, sha) == ("success", "1 image · 1 critical, 1 high · warning only")


def test_an_emptied_scans_signing_finding_is_made_afresh_not_put_back(app, client, token, fake_github):
    sha = sha_of("aged-unsigned")
    settings(client, token, retention_days=1, require_signed=True)
    upload(client, token, sha, HIGH, signature_status="unsigned")
    pull_request(client, 13, sha)
    work(app)
    assert shown(fake_github, sha) == ("failure", "1 image · 1 critical, 1 high · blocking")
    age_out(app)

    settings(client, token, require_signed=False)  # the uploaded high is put back; the signing finding is not
    work(app)
    assert shown(fake_github, sha) == ("failure", "1 image · 1 high · blocking")
    summary = fake_github.runs_of("acme", "api", sha)[-1]["output"]["summary"]
    assert "Removed by retention: 1 (" in summary
    settings(client, token, require_signed=True)  # the current policy makes its own again
    work(app)
    assert shown(fake_github, sha) == ("failure", "1 image · 1 critical, 1 high · blocking")


# ---------------------------------------------------------------- an exception changed while an upload is in flight


def accept(client: Any, token: str, cve_id: str) -> int:
    """An exception for `cve_id` in every repo and image, for 30 days; its id."""
    expires = (utcnow() + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    doc = {"advisory_id": cve_id, "reason": "accepted for the test", "expires_at": expires}
    r = client.post("/api/v1/orgs/acme/exceptions", json=doc, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201, r.json
    return r.json["id"]


@pytest.mark.parametrize("change", ["revoked", "created"])
def test_an_exception_changed_while_an_upload_is_in_flight_is_not_missed(
    app, client, token, fake_github, monkeypatch, change
):
    """The upload read the org's exceptions and judged its findings; then, before it took the policy's lock, an
    exception was revoked (or created). The revocation's re-posts only find commits already stored, so the upload
    itself must see the change: the commit ends as the exceptions now say, in the answer and on GitHub."""
    covering = accept(client, token, HIGH[0]["cve_id"]) if change == "revoked" else None
    other = app.test_client()  # another request, landing while the upload is between its reads and its write
    real = service.assess

    def change_then_assess(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(service, "assess", real)  # once: the assessment made before the lock
        if covering is not None:
            r = other.delete(f"/api/v1/orgs/acme/exceptions/{covering}", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.json
        else:
            accept(other, token, HIGH[0]["cve_id"])
        return real(*args, **kwargs)

    monkeypatch.setattr(service, "assess", change_then_assess)
    sha = sha_of(f"exception-{change}-in-flight")
    answer = upload(client, token, sha, HIGH)
    assert service.assess is real  # the change landed mid-upload
    expected = "failure" if change == "revoked" else "success"
    assert (answer["status"], answer["commit_status"]["state"]) == (expected, expected)
    work(app)
    shows = shown(fake_github, sha)
    assert shows is not None and shows[0] == expected


# ---------------------------------------------------------------- a delivery while an upload is in flight
# PostgreSQL runs writers together: a pull_request delivery and an upload of the same base or head, each in its own
# transaction, take turns on the locks of app.locks. (SQLite's one writer makes them take turns anyway.)

WAIT = 30  # seconds any step of these tests may take before it counts as hung


class Held:
    """Calls of `target.name` made in a thread of `threads` wait, once they are reached (`reached`), until `go` is set;
    with after=True the call runs first and the thread waits on its way out."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, target: Any, name: str, after: bool = False) -> None:
        self.reached, self.go = threading.Event(), threading.Event()
        self.threads: set[threading.Thread] = set()
        real = getattr(target, name)

        def held(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() not in self.threads:
                return real(*args, **kwargs)
            result = real(*args, **kwargs) if after else None
            self.reached.set()
            assert self.go.wait(WAIT), "the test never let the held call go on"
            return result if after else real(*args, **kwargs)

        monkeypatch.setattr(target, name, held)


class Waits:
    """Whether a delivery waits for the upload in flight: on PostgreSQL its backend is blocked by the upload's
    (pg_blocking_pids); on SQLite it came to wait for the write turn, which the upload holds (app.sqlite_writers)."""

    def __init__(self, app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
        self.app, self.threads, self.turn = app, set[threading.Thread](), threading.Event()
        self.pids: dict[threading.Thread, int] = {}  # each thread's last PostgreSQL backend
        real = sqlite_writers._wait_for

        def wait_for(fd: int) -> bool:
            if threading.current_thread() in self.threads:
                self.turn.set()
            return real(fd)

        monkeypatch.setattr(sqlite_writers, "_wait_for", wait_for)
        engine = app.extensions["fremforge.db"].engine
        if engine.dialect.name == "postgresql":

            def checked_out(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
                self.pids[threading.current_thread()] = dbapi_conn.info.backend_pid

            sa.event.listen(engine, "checkout", checked_out)

    def blocked(self, hook: threading.Thread, up: threading.Thread) -> bool:
        if self.turn.is_set():
            return True
        if hook not in self.pids or up not in self.pids:
            return False
        with self.app.app_context():
            by = sa.text("SELECT CAST(:up AS integer) = ANY(pg_blocking_pids(:hook))")
            return bool(db.session().execute(by, {"up": self.pids[up], "hook": self.pids[hook]}).scalar())

    def until_done_or_blocked(self, hook: threading.Thread, up: threading.Thread, held: Held | None = None) -> None:
        """Until the delivery `hook` ended, is blocked by the upload `up` or reached `held`'s call (at most WAIT)."""
        deadline = time.monotonic() + WAIT
        while hook.is_alive() and not self.blocked(hook, up) and not (held is not None and held.reached.is_set()):
            assert time.monotonic() < deadline, "the delivery neither ended nor waited for the upload"
            self.turn.wait(0.01)  # polls the database's lock table; wakes at once when the write turn is waited for


def in_thread(fn: Any, *threads_of: Any) -> tuple[threading.Thread, list[Any]]:
    """A started thread running fn(), registered in each of `threads_of` (Held, Waits) first; its result in the list."""
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    for h in threads_of:
        h.threads.add(thread)
    thread.start()
    return thread, out


def delivered_while_in_flight(
    app: Flask,
    monkeypatch: pytest.MonkeyPatch,
    upload_: Any,
    delivery: Any,
    held: Held | None = None,
    meanwhile: Any = None,
) -> tuple[threading.Thread, list[Any]]:
    """upload_() in a thread, held once its locks are taken and its baseline read (as it writes its rows); then
    delivery() in another, until it ends, waits for the upload or reaches `held`'s call; then meanwhile(delivery's
    thread) if given; then the upload goes on and ends. Returns the delivery's thread (still running while `held`
    holds it) and its answer once it ends."""
    stored, waits = Held(monkeypatch, store, "insert"), Waits(app, monkeypatch)
    up, answers = in_thread(upload_, stored, waits)
    try:
        assert stored.reached.wait(WAIT)
        hook, delivered = in_thread(delivery, waits, *([held] if held is not None else []))
        waits.until_done_or_blocked(hook, up, held)
        if meanwhile is not None:
            meanwhile(hook)
    finally:
        stored.go.set()
        up.join(WAIT)
    assert answers and not up.is_alive()
    return hook, delivered


def ended(hook: tuple[threading.Thread, list[Any]]) -> None:
    """The delivery ended, and was answered 2xx (pull_request asserts the status)."""
    thread, delivered = hook
    thread.join(WAIT)
    assert not thread.is_alive() and delivered


def test_a_head_made_known_while_another_heads_upload_reads_the_base_is_no_baseline(
    app, client, token, fake_github, monkeypatch
):
    """Pull request 8's head was scanned as pull_request_target stores it (under refs/heads/main) before its first
    delivery. Pull request 7's upload reads main's newest scan (8's head, not yet known as one) as its baseline while
    8's opened delivery comes: the delivery's ask for the pull requests judged against 8's head cannot see 7's scan, not
    stored yet. HEAD: 7 kept that baseline, its new high shown green. Now the delivery waits for the lock of main (the
    base, app.locks), which the upload holds, and then finds it."""
    settings(client, token, block_on="new")
    upload(client, token, sha_of("main-tip"), CLEAN, ref="refs/heads/main")
    seven, eight = sha_of("pr-7"), sha_of("pr-8")
    pull_request(client, 7, seven)
    upload(client, token, eight, HIGH, ref="refs/heads/main")  # as pull_request_target, before 8 is known
    seven_upload = lambda: upload(app.test_client(), token, seven, HIGH, ref="refs/pull/7/merge")  # noqa: E731
    ended(delivered_while_in_flight(app, monkeypatch, seven_upload, lambda: pull_request(client, 8, eight)))
    work(app)
    assert shown(fake_github, seven) == ("failure", "1 image · 1 new high · blocking")


def test_a_base_changed_while_the_heads_upload_is_in_flight_is_its_base(app, client, token, fake_github, monkeypatch):
    """Pull request 7 is moved from main (which has the high) to release (which has not) while its head's upload is in
    flight, its baseline read from main: the edit's link of the head's scans cannot see it, not stored yet. HEAD: the
    scan stayed judged against main, green. Now the delivery waits for the head commit's lock, which the upload holds,
    then links the scan and asks for it again."""
    settings(client, token, block_on="new")
    head = sha_of("moved-in-flight")
    upload(client, token, sha_of("main"), HIGH, ref="refs/heads/main")
    upload(client, token, sha_of("release"), CLEAN, ref="refs/heads/release")
    pull_request(client, 7, head, base="main")
    head_upload = lambda: upload(app.test_client(), token, head, HIGH, ref="refs/pull/7/merge")  # noqa: E731
    edit = lambda: pull_request(client, 7, head, base="release", action="edited", at="2026-12-01T11:00:00Z")  # noqa: E731
    ended(delivered_while_in_flight(app, monkeypatch, head_upload, edit))
    work(app)
    assert shown(fake_github, head) == ("failure", "1 image · 1 new high · blocking")


@pytest.mark.parametrize("action", ["opened", "closed"])
def test_a_heads_scan_under_the_base_in_flight_while_the_head_becomes_known_is_found(
    app, client, token, fake_github, monkeypatch, action
):
    """Pull request 8's head is being scanned under refs/heads/main (pull_request_target) while its first delivery comes
    (opened; or closed, its earlier ones lost). HEAD: the delivery looked for 8's scans under main before that one was
    stored, found none, and stored 8 as known only later: a worker between the two judged 7 against 8's scan as
    main's (8 not yet known), green, and nothing asked for 7 again. Now the delivery waits for the lock of 8's head
    commit, which the scan's upload holds, finds the scan and asks for 7 again. (SQLite's one writer never lets the
    worker in between: there it checks the same end.)"""
    settings(client, token, block_on="new")
    upload(client, token, sha_of("main-tip"), CLEAN, ref="refs/heads/main")
    seven, eight = sha_of("pr-7"), sha_of("pr-8")
    pull_request(client, 7, seven)
    upload(client, token, seven, HIGH, ref="refs/pull/7/merge")
    work(app)
    assert shown(fake_github, seven) == ("failure", "1 image · 1 new high · blocking")
    looked = Held(monkeypatch, pull_request_handlers, "_ask", after=True)
    eight_upload = lambda: upload(app.test_client(), token, eight, HIGH, ref="refs/heads/main")  # noqa: E731
    first = lambda: pull_request(client, 8, eight, action=action)  # noqa: E731
    hook = delivered_while_in_flight(app, monkeypatch, eight_upload, first, looked)
    try:
        assert looked.reached.wait(WAIT)  # the delivery has looked for 8's scans, and is not committed
        if db_backend(app) == "postgresql":
            work(app)  # a worker now: 7 asked again by 8's scan, judged with 8 not yet known
    finally:
        looked.go.set()
    ended(hook)
    work(app)
    assert shown(fake_github, seven) == ("failure", "1 image · 1 new high · blocking")


def test_a_base_scan_in_flight_while_a_pull_request_into_it_opens_is_its_baseline(
    app, client, token, fake_github, monkeypatch
):
    """release had the high; its fix is being uploaded while pull request 9, whose head keeps the high, is opened into
    release. HEAD: the fix's ask for the pull requests into release could not see 9 (not stored yet), and a worker
    after the delivery, before the fix was stored, judged 9 against the old release scan: green, asked by nothing
    again. Now the delivery waits for release's lock, which the fix's upload holds, and 9 is judged against the fix."""
    settings(client, token, block_on="new")
    upload(client, token, sha_of("release-old"), HIGH, ref="refs/heads/release")
    nine = sha_of("pr-9")
    upload(client, token, nine, HIGH, ref="refs/pull/9/merge")  # its pull request not known yet
    fix = lambda: upload(app.test_client(), token, sha_of("release-fix"), CLEAN, ref="refs/heads/release")  # noqa: E731

    def worker_if_delivered(hook: threading.Thread) -> None:
        if not hook.is_alive() and db_backend(app) == "postgresql":
            work(app)  # the delivery stored, the fix not yet: 9 is posted against release's scan before the fix

    opened = lambda: pull_request(client, 9, nine, base="release")  # noqa: E731
    ended(delivered_while_in_flight(app, monkeypatch, fix, opened, meanwhile=worker_if_delivered))
    work(app)
    assert shown(fake_github, nine) == ("failure", "1 image · 1 new high · blocking")


def test_a_pull_requests_asks_and_another_ask_in_key_order_never_deadlock(app, client, token, fake_github):
    """Pull request 8's head was scanned under main before its first delivery, so the delivery asks for 7 (judged
    against that scan as main's) and for 8's head, while another transaction asks for both in key order (8's head
    first), as a settings change, an exception or a retention run does. HEAD: two statements, 7's row first: holding
    it the delivery waited for 8's, which the other held while waiting for 7's: PostgreSQL cancelled the delivery as
    a deadlock (503), and 7 stayed green. Now one statement, in key order. (SQLite has one writer: no deadlock.)"""
    if db_backend(app) != "postgresql":
        return
    settings(client, token, block_on="new")
    seven, eight = "e" * 40, "1" * 40  # 8's head first in key order
    upload(client, token, sha_of("main-tip"), CLEAN, ref="refs/heads/main")
    pull_request(client, 7, seven)
    upload(client, token, seven, HIGH, ref="refs/pull/7/merge")
    upload(client, token, eight, HIGH, ref="refs/heads/main")  # as pull_request_target, before 8 is known
    work(app)
    assert shown(fake_github, seven) == ("success", "1 image · 1 high")  # judged against 8's scan as main's
    engine = app.extensions["fremforge.db"].engine
    with app.app_context():
        org_id = db.session().scalars(sa.select(Org.id).where(Org.slug == "acme")).one()
    ask = sa.text(
        "INSERT INTO reposts (org_id, repo_full_name, commit_sha, base_url, version, requested_at)"
        " VALUES (:org, :repo, :sha, 'http://localhost', 1, now())"
        " ON CONFLICT (org_id, repo_full_name, commit_sha) DO UPDATE SET version = reposts.version + 1"
    )
    with engine.connect() as other:
        other.execute(sa.text("SET LOCAL lock_timeout = '20s'"))
        other.execute(ask, {"org": org_id, "repo": REPO, "sha": eight})  # its first row in key order
        waiting_pid = other.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        hook, delivered = in_thread(lambda: pull_request(app.test_client(), 8, eight))
        blocked = sa.text(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE CAST(:pid AS integer) = ANY(pg_blocking_pids(pid)) AND query LIKE 'INSERT INTO reposts%'"
        )
        deadline = time.monotonic() + WAIT
        with engine.connect() as watch:
            while not watch.execute(blocked, {"pid": waiting_pid}).scalar_one():
                assert hook.is_alive(), "the delivery ended without waiting for the other ask"
                assert time.monotonic() < deadline, "the delivery never waited for the other ask"
                watch.rollback()
                hook.join(0.01)  # polls the lock table; wakes at once if the delivery ends
        other.execute(ask, {"org": org_id, "repo": REPO, "sha": seven})  # its next row: HEAD's delivery held it
        other.commit()
    ended((hook, delivered))
    work(app)
    assert shown(fake_github, seven) == ("failure", "1 image · 1 new high · blocking")


def test_a_base_scan_asks_once_for_a_head_two_pull_requests_share(app, client, token, fake_github):
    """Two branches at one commit, each with an open pull request into main: a new scan of main asks for that head
    once. HEAD, on PostgreSQL: the ask's upsert met the head's row twice, a 500 for the upload."""
    settings(client, token, block_on="new")
    head = sha_of("shared-head")
    upload(client, token, sha_of("main-old"), CLEAN, ref="refs/heads/main")
    pull_request(client, 7, head)
    pull_request(client, 8, head)
    upload(client, token, head, HIGH, ref="refs/pull/7/merge")
    work(app)
    assert shown(fake_github, head) == ("failure", "1 image · 1 new high · blocking")
    upload(client, token, sha_of("main-new"), HIGH, ref="refs/heads/main")  # the high reaches main: not new any more
    work(app)
    assert shown(fake_github, head) == ("success", "1 image · 1 high")


def db_backend(app: Flask) -> str:
    return str(app.extensions["fremforge.db"].engine.dialect.name)


# ---------------------------------------------------------------- what GitHub refused while the app could not post


def installation_event(client: Any, event: str, action: str, installation: int = INSTALLATION, **more: Any) -> dict:
    account = {"login": "acme", "type": "Organization"}
    return signed(client, event, {"action": action, "installation": {"id": installation, "account": account}, **more})


def refused_until_given_up(app: Flask) -> None:
    """The worker, on simulated time, until no item is pending: what GitHub refuses ends failed."""
    clock = Clock()
    for _ in range(500):
        run(app, clock)
        if not [i for i in items(app) if i.state == "pending"]:
            return
        clock.advance(30)
    raise AssertionError("items still pending after the simulated hours")


@pytest.mark.parametrize("way", ["suspended", "uninstalled", "repository-removed"])
def test_a_commit_turned_red_while_the_app_could_not_post_is_posted_once_it_can(app, client, token, fake_github, way):
    """A second image of a commit blocks while GitHub refuses the app (its installation suspended, the app uninstalled,
    the repository out of its reach): the post ends failed. HEAD: unsuspending, installing again or adding the
    repository back posted nothing, and GitHub showed the first image's green for good. Now it re-posts the org's
    commits (the open pull requests' heads and the last week's scans), as a settings change does."""
    sha = sha_of("red-while-away")
    upload(client, token, sha, CLEAN)
    work(app)
    assert shown(fake_github, sha)[0] == "success"
    if way == "suspended":
        fake_github.suspend_installation(INSTALLATION)
        fake_github.expire_tokens()  # a suspended installation's tokens are refused too
        installation_event(client, "installation", "suspend")
    elif way == "uninstalled":
        fake_github.remove_installation(INSTALLATION)
        installation_event(client, "installation", "deleted")
    else:
        fake_github.add_installation(INSTALLATION, "acme", ["acme/web"])
        removed = [{"full_name": REPO, "name": "api"}]
        installation_event(client, "installation_repositories", "removed", repositories_removed=removed)
    assert upload(client, token, sha, HIGH, image="ghcr.io/acme/worker:1")["status"] == "failure"
    refused_until_given_up(app)
    assert shown(fake_github, sha)[0] == "success"  # what GitHub shows while it refuses the app
    if way == "suspended":  # the worker found the installation by the repository: not linked again while suspended
        assert linked(app) == (None, INSTALLATION)
        assert items(app)[-1].last_error == "the GitHub App's installation on acme is suspended"
    if way == "suspended":
        fake_github.suspend_installation(INSTALLATION, suspended=False)
        installation_event(client, "installation", "unsuspend")
    elif way == "uninstalled":
        fake_github.add_installation(INSTALLATION + 1, "acme", [REPO])
        repositories = [{"full_name": REPO, "name": "api"}]
        installation_event(client, "installation", "created", INSTALLATION + 1, repositories=repositories)
    else:
        fake_github.add_installation(INSTALLATION, "acme", None)
        added = [{"full_name": REPO, "name": "api"}]
        installation_event(client, "installation_repositories", "added", repositories_added=added)
    work(app)
    assert shown(fake_github, sha) == ("failure", "2 images · 1 high · blocking")


def linked(app: Flask) -> tuple[int | None, int | None]:
    """The org's (installation_id, suspended_installation_id)."""
    with app.app_context():
        org = db.session().scalars(sa.select(Org).where(Org.slug == "acme")).one()
        return org.installation_id, org.suspended_installation_id


def asked(app: Flask) -> list[tuple[str, str]]:
    with app.app_context():
        return [tuple(r) for r in db.session().execute(sa.select(Repost.repo_full_name, Repost.commit_sha)).all()]


def test_permissions_accepted_post_again_for_the_linked_org_only(app, client, token, fake_github):
    """new_permissions_accepted: what the missing permissions refused is posted again (asserted as the ask: the fake
    has no per-permission refusals); not for an org whose installation is suspended (GitHub refuses it still), nor
    for an installation id its org does not hold."""
    sha = sha_of("permissions")
    upload(client, token, sha, HIGH)
    work(app)
    assert installation_event(client, "installation", "new_permissions_accepted", INSTALLATION + 7)["status"] == (
        "ignored"
    )
    installation_event(client, "installation", "suspend")
    assert installation_event(client, "installation", "new_permissions_accepted")["status"] == "ignored"
    assert asked(app) == []
    installation_event(client, "installation", "unsuspend")
    with app.app_context():
        db.session().execute(sa.delete(Repost))
        db.session().commit()
    assert installation_event(client, "installation", "new_permissions_accepted")["status"] == "queued"
    assert asked(app) == [(REPO, sha)]


def test_repositories_added_post_again_their_commits_only(app, client, token, fake_github):
    """Each added repository's commits, not the org's: an org adding repositories one at a time would otherwise spend
    GitHub's hourly calls on every commit it has each time."""
    sha = sha_of("added")
    upload(client, token, sha, HIGH)
    other = post(client, token, seed(HIGH, image_ref=f"{IMAGE}:1", sha=sha_of("web"), repo="acme/web"))
    assert other.status_code == 202, other.json
    added = [{"full_name": "acme/web", "name": "web"}]
    assert installation_event(client, "installation_repositories", "added", repositories_added=added)["status"] == (
        "queued"
    )
    assert asked(app) == [("acme/web", sha_of("web"))]
