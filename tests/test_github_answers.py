"""What GitHub (or something between it and the worker) answers a post with is checked, not trusted: a 2xx that is
not the answer to the post, a redirect, a check run of another commit, a one-off refusal of any kind, a status that
cannot be posted any more. In every case GitHub must end up showing the newest, failing state."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from tests.conftest import MakeApp, app_with_github, org_with_installation
from tests.factories import SHA
from tests.fakes import FakeGitHub
from tests.test_delivery import Clock, drain, rows, upload


@pytest.fixture
def app(make_app: MakeApp, fake_github: FakeGitHub) -> Flask:
    return app_with_github(make_app, fake_github, ["acme/api", "acme/web"])


@pytest.fixture
def token(app: Flask) -> str:
    return org_with_installation(app)


def shown(fake: FakeGitHub, sha: str = SHA) -> tuple[Any, list[Any]]:
    """The commit's status for our context, and its check runs' conclusions."""
    status = fake.latest_status("acme", "api", sha)
    return (status and status["state"], [r["conclusion"] for r in fake.runs_of("acme", "api", sha)])


def green_then_blocking(app: Flask, client: Any, token: str, fake_github: FakeGitHub, clock: Clock) -> None:
    upload(client, token, severity="low")
    drain(app, clock)
    assert shown(fake_github) == ("success", ["success"])
    upload(client, token, severity="critical")  # blocking now


@pytest.mark.parametrize("body", [{"unexpected": "shape"}, "<html>a proxy's page</html>", {}])
def test_a_2xx_that_is_not_the_answer_to_the_post_is_not_taken_for_it(app, client, token, fake_github, body):
    clock = Clock()
    green_then_blocking(app, client, token, fake_github, clock)
    fake_github.fail("POST", r"/statuses/", status=200, json=body, times=1)
    fake_github.fail("PATCH", r"/check-runs/\d+$", status=200, json=body, times=1)
    drain(app, clock)
    assert shown(fake_github) == ("failure", ["failure"]), rows(app)[-1].last_error


@pytest.mark.parametrize("code", [301, 302, 303, 307])
def test_a_redirected_post_is_not_followed_nor_taken_for_the_post(app, client, token, fake_github, code):
    """httpx would re-send a redirected POST as a GET (301-303), whose 200 passed for the post."""
    clock = Clock()
    green_then_blocking(app, client, token, fake_github, clock)
    status_url = f"{fake_github.url}/repos/acme/api/commits/{SHA}/status"
    fake_github.fail("POST", r"/statuses/", status=code, times=1, headers={"Location": status_url})
    runs_url = f"{fake_github.url}/repos/acme/api/commits/{SHA}/check-runs"
    fake_github.fail("PATCH", r"/check-runs/\d+$", status=code, times=1, headers={"Location": runs_url})
    drain(app, clock)
    assert shown(fake_github) == ("failure", ["failure"])
    assert not fake_github.calls_to("GET", r"/commits/[0-9a-f]+/status$")  # the redirect was not followed


def test_a_created_check_run_of_another_commit_is_not_recorded_as_this_commits(app, client, token, fake_github):
    clock = Clock()
    other = "f" * 40
    upload(client, token, severity="critical", sha=other)  # commit B: blocking
    drain(app, clock)
    [b_run] = fake_github.runs_of("acme", "api", other)
    body = fake_github._check_run_json(fake_github.check_runs[b_run["id"]])
    fake_github.fail("POST", r"/check-runs$", status=201, json=body, times=1)  # B's run, as the answer for A's
    upload(client, token, severity="low")  # commit A: passing
    drain(app, clock)
    upload(client, token, severity="low", image="ghcr.io/acme/api:2")  # another passing image on A
    drain(app, clock)
    assert shown(fake_github, other) == ("failure", ["failure"])
    assert shown(fake_github)[0] == "success" and set(shown(fake_github)[1]) == {"success"}


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (403, {}),  # a proxy's 403, no GitHub message
        (403, {"message": "Resource not accessible by integration"}),  # a permission withdrawn for a moment
        (400, {}),
        (409, {"message": "Conflict"}),
    ],
)
def test_a_one_off_refusal_of_any_kind_does_not_leave_the_older_green(app, client, token, fake_github, status, body):
    clock = Clock()
    green_then_blocking(app, client, token, fake_github, clock)
    fake_github.fail("POST", r"/statuses/", status=status, json=body, times=1)  # one answer, then GitHub is fine
    drain(app, clock)
    assert shown(fake_github) == ("failure", ["failure"]), rows(app)[-1].last_error


def test_a_status_refused_for_good_still_brings_the_check_run_to_the_newest_conclusion(app, client, token, fake_github):
    """GitHub takes at most 1,000 statuses per commit and context (then 422, for good); the check run has no such
    limit: it shows the failure, and the row ends failed, saying why."""
    clock = Clock()
    green_then_blocking(app, client, token, fake_github, clock)
    limit = "This SHA and context has reached the maximum number of statuses."
    refusal = {"message": "Validation Failed", "errors": [{"resource": "Status", "code": "custom", "message": limit}]}
    fake_github.fail("POST", r"/statuses/", status=422, times=None, json=refusal)
    drain(app, clock)
    assert shown(fake_github) == ("success", ["failure"])
    newest = rows(app)[-1]
    assert newest.state == "failed" and newest.last_status_code == 422
