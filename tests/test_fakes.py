"""The fake GitHub (tests/fakes.py), driven by githubkit over real HTTP as the app drives it.

Every test also checks, at teardown, that the fake's own answers matched the OpenAPI subset's response schemas.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from githubkit import AppAuthStrategy, GitHub, OAuthAppAuthStrategy, UnauthAuthStrategy
from githubkit.cache import MemCacheStrategy
from githubkit.exception import RequestError, RequestFailed, RequestTimeout, SecondaryRateLimitExceeded
from jwt.api_jws import PyJWS

from tests.fakes import FakeGitHub, github_app_config, to_json_schema

INSTALLATION = 7
OWNER, REPO, SHA = "acme", "web", "0123456789abcdef0123456789abcdef01234567"
CONTEXT = "fremforge/image-scan"
TOKEN = re.compile(r"ghs_[A-Za-z0-9]{36,90}")


@pytest.fixture
def fake(fake_github: FakeGitHub) -> Iterator[FakeGitHub]:
    """The fake with one installation on every repository of `acme`; its answers must match the subset."""
    fake_github.add_installation(INSTALLATION, OWNER)
    yield fake_github
    assert fake_github.invalid_responses == []


def app_client(fake: FakeGitHub, private_key: str | None = None, **config: Any) -> GitHub:
    """A githubkit client authenticating as the App, configured as the app's: a token cache of its own, no retries,
    and no HTTP cache (githubkit's hishel cache client does not honour `timeout`)."""
    auth = AppAuthStrategy(fake.app_id, private_key or fake.private_key_pem)
    return GitHub(auth, **client_config(fake, cache_strategy=MemCacheStrategy(), **config))


def plain_client(fake: FakeGitHub) -> GitHub:
    """A githubkit client sending no credentials of its own."""
    return GitHub(UnauthAuthStrategy(), **client_config(fake))


def client_config(fake: FakeGitHub, **config: Any) -> dict[str, Any]:
    return {"base_url": fake.url, "auto_retry": False, "http_cache": False, **config}


def installation_client(fake: FakeGitHub, installation_id: int = INSTALLATION, **config: Any) -> GitHub:
    """A githubkit client acting as the installation."""
    gh = app_client(fake, **config)
    return gh.with_auth(gh.auth.as_installation(installation_id))


def post_status(
    gh: GitHub,
    state: str = "failure",
    description: str = "1 image · 2 critical · blocking",
    sha: str = SHA,
    repo: str = REPO,
) -> Any:
    return gh.rest.repos.create_commit_status(
        OWNER,
        repo,
        sha,
        data={"state": state, "description": description, "context": CONTEXT, "target_url": "http://fremforge.test/c"},
    )


def failure(call: Callable[[], Any]) -> RequestFailed:
    """The RequestFailed that `call` raises. githubkit wraps one raised by the token exchange (inside httpx's auth
    flow) in a plain RequestError; that is unwrapped here."""
    with pytest.raises(RequestError) as caught:
        call()
    error = caught.value if isinstance(caught.value, RequestFailed) else caught.value.exc
    assert isinstance(error, RequestFailed), repr(caught.value)
    return error


def failed_status(call: Callable[[], Any]) -> int:
    """The HTTP status of the RequestFailed that `call` raises."""
    return failure(call).response.status_code


def wait_for(condition: Callable[[], Any], seconds: float = 5.0) -> Any:
    """Poll until `condition()` is truthy (the fake finishes held requests in its own threads)."""
    deadline = time.monotonic() + seconds
    while not (result := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
    return result


def app_jwt(private_key: str, iss: Any, iat_offset: int = -60, lifetime: int = 600, algorithm: str = "RS256") -> str:
    """A JWT as an app would make it (signed as is: PyJWT's own encode refuses an integer `iss`)."""
    now = int(time.time()) + iat_offset
    return sign({"iss": iss, "iat": now, "exp": now + lifetime}, private_key, algorithm)


def sign(claims: dict[str, Any], key: str, algorithm: str = "RS256") -> str:
    return PyJWS().encode(json.dumps(claims).encode(), key, algorithm=algorithm)


@functools.cache
def other_private_key() -> str:
    """An RSA key that is not the app's (made once)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


# -- server and config ---------------------------------------------------------------------------------------------


def test_serves_on_loopback_and_config_points_at_it(fake: FakeGitHub) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", fake.url)
    assert fake.private_key_pem.startswith("-----BEGIN PRIVATE KEY-----")
    assert fake.public_key_pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert github_app_config(fake) == {
        "GITHUB_APP_ID": fake.app_id,
        "GITHUB_PRIVATE_KEY": fake.private_key_pem,
        "GITHUB_API_URL": fake.url,
        "GITHUB_WEBHOOK_SECRET": "webhook-secret",
        "GITHUB_CLIENT_ID": fake.client_id,
        "GITHUB_CLIENT_SECRET": fake.client_secret,
    }


def test_reset_forgets_state_and_faults_but_keeps_server_and_keys(fake: FakeGitHub) -> None:
    url, key = fake.url, fake.private_key_pem
    post_status(installation_client(fake))
    fake.fail("GET", ".*", times=None)
    fake.outage()
    fake.reset()
    assert (fake.url, fake.private_key_pem) == (url, key)
    assert fake.statuses == fake.calls == fake.faults == [] and not fake.token_exchanges and not fake.installations
    fake.add_installation(INSTALLATION, OWNER)
    assert post_status(installation_client(fake)).status_code == 201


def test_a_second_fake_starts_and_stops_on_its_own_port(fake: FakeGitHub) -> None:
    with FakeGitHub(app_id="7") as other:
        assert other.url != fake.url
        assert httpx.get(f"{other.url}/app/installations").status_code == 401
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{other.url}/app/installations")


# -- installation tokens -----------------------------------------------------------------------------------------------


def test_token_is_exchanged_once_then_cached(fake: FakeGitHub) -> None:
    gh = installation_client(fake)
    for state in ("pending", "failure", "success"):
        assert post_status(gh, state).status_code == 201
    assert fake.token_exchanges == {INSTALLATION: 1}
    [exchange] = fake.calls_to("POST", r"^/app/installations/\d+/access_tokens$")
    assert exchange.status == 201 and exchange.headers["authorization"].startswith("Bearer ")
    [token] = fake.tokens
    assert {c.headers["authorization"] for c in fake.calls_to("POST", "/statuses/")} == {f"token {token}"}


def test_tokens_vary_in_length_and_expire_as_githubkit_parses(fake: FakeGitHub) -> None:
    fake.token_lifetime = dt.timedelta(hours=2)
    gh = app_client(fake)
    answers = [gh.rest.apps.create_installation_access_token(INSTALLATION).parsed_data for _ in range(12)]
    assert all(TOKEN.fullmatch(a.token) for a in answers)
    assert len({len(a.token) for a in answers}) > 1
    expires = dt.datetime.strptime(answers[0].expires_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    assert abs(expires - dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)) < dt.timedelta(seconds=5)
    assert answers[0].repository_selection == "all" and fake.token_exchanges[INSTALLATION] == 12


def test_expired_tokens_answer_401_and_a_fresh_exchange_works(fake: FakeGitHub) -> None:
    gh = installation_client(fake)
    post_status(gh)
    fake.expire_tokens()
    error = failure(lambda: post_status(gh))  # githubkit still holds the old token in its cache
    assert error.response.status_code == 401 and error.response.json()["message"] == "Bad credentials"
    assert post_status(installation_client(fake)).status_code == 201
    assert fake.token_exchanges[INSTALLATION] == 2


def test_unknown_removed_and_suspended_installations(fake: FakeGitHub) -> None:
    assert failed_status(lambda: post_status(installation_client(fake, 99))) == 404
    fake.add_installation(8, "other")
    fake.suspend_installation(8)
    suspended = installation_client(fake, 8)  # keep the client referenced: `.rest` only holds a weak reference
    assert failed_status(lambda: suspended.rest.repos.get_combined_status_for_ref("other", REPO, SHA)) == 403
    gh = installation_client(fake)
    post_status(gh)
    fake.remove_installation(INSTALLATION)
    assert failed_status(lambda: post_status(gh)) == 401


def test_token_only_reaches_the_installations_repositories(fake: FakeGitHub) -> None:
    fake.add_installation(8, "beta", ["beta/api"])
    gh = installation_client(fake, 8)
    assert gh.rest.repos.create_commit_status("beta", "api", SHA, data={"state": "success"}).status_code == 201
    success = {"state": "success"}
    assert failed_status(lambda: gh.rest.repos.create_commit_status("beta", "web", SHA, data=success)) == 404
    assert failed_status(lambda: post_status(gh)) == 404  # another owner's repository
    no_token = plain_client(fake)
    assert failed_status(lambda: post_status(no_token)) == 401
    assert len(fake.statuses) == 1


# -- app JWT -------------------------------------------------------------------------------------------------------


def test_installation_lookups_with_the_app_jwt(fake: FakeGitHub) -> None:
    fake.add_installation(8, "beta", ["api"], account_type="User")
    gh = app_client(fake)
    found = gh.rest.apps.get_repo_installation(OWNER, "anything").parsed_data
    assert (found.id, found.account.login, found.repository_selection) == (INSTALLATION, OWNER, "all")
    assert gh.rest.apps.get_repo_installation("BETA", "api").parsed_data.id == 8
    assert failed_status(lambda: gh.rest.apps.get_repo_installation("beta", "web")) == 404
    assert gh.rest.apps.get_org_installation(OWNER).parsed_data.id == INSTALLATION
    assert failed_status(lambda: gh.rest.apps.get_org_installation("nobody")) == 404
    assert [i.id for i in gh.rest.apps.list_installations().parsed_data] == [INSTALLATION, 8]
    assert {c.status for c in fake.calls} == {200, 404}


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (lambda key, app_id: app_jwt(other_private_key(), app_id), "could not be decoded"),
        (lambda key, app_id: app_jwt(key, app_id, lifetime=3600), "too far in the future"),
        (lambda key, app_id: app_jwt(key, app_id, iat_offset=-1200), "Expiration time"),
        (lambda key, app_id: app_jwt(key, app_id, iat_offset=600), "Issued at"),
        (lambda key, app_id: app_jwt(key, "1"), "Issuer"),
        (lambda key, app_id: sign({"iss": app_id, "iat": int(time.time())}, key), "exp"),
        (lambda key, app_id: app_jwt("a-shared-secret-of-at-least-32-bytes!", app_id, algorithm="HS256"), "decoded"),
    ],
    ids=["wrong-key", "over-long-lifetime", "expired", "issued-in-future", "wrong-issuer", "no-exp", "hs256"],
)
def test_bad_app_jwts_are_refused(fake: FakeGitHub, token: Callable[[str, str], str], message: str) -> None:
    gh = plain_client(fake)
    bearer = {"Authorization": f"Bearer {token(fake.private_key_pem, fake.app_id)}"}
    error = failure(lambda: gh.rest.apps.list_installations(headers=bearer))
    assert error.response.status_code == 401 and message in error.response.json()["message"]
    assert not fake.token_exchanges


def test_wrong_key_through_githubkit_and_token_scheme_are_refused(fake: FakeGitHub) -> None:
    gh = app_client(fake, private_key=other_private_key())
    assert failed_status(lambda: gh.rest.apps.get_repo_installation(OWNER, REPO)) == 401
    wrong_installation = gh.with_auth(gh.auth.as_installation(INSTALLATION))
    assert failed_status(lambda: post_status(wrong_installation)) == 401
    plain = plain_client(fake)
    jwt_as_token = {"Authorization": f"token {app_jwt(fake.private_key_pem, fake.app_id)}"}
    assert failed_status(lambda: plain.rest.apps.list_installations(headers=jwt_as_token)) == 401
    assert not fake.token_exchanges


def test_good_hand_made_jwts_are_accepted_with_the_issuer_compared_as_a_string(fake: FakeGitHub) -> None:
    gh = plain_client(fake)
    for iss in (fake.app_id, int(fake.app_id)):
        bearer = {"Authorization": f"Bearer {app_jwt(fake.private_key_pem, iss, lifetime=660)}"}
        assert gh.rest.apps.list_installations(headers=bearer).status_code == 200


# -- statuses, check runs, pull requests ---------------------------------------------------------------------------


def test_status_is_recorded_and_combined(fake: FakeGitHub) -> None:
    gh = installation_client(fake)
    created = post_status(gh).parsed_data
    assert (created.state, created.context, created.creator.login) == ("failure", CONTEXT, "fremforge[bot]")
    gh.rest.repos.create_commit_status(OWNER, REPO, SHA, data={"state": "success", "context": "other/ci"})
    post_status(gh, "success", "1 image · clean")
    assert fake.statuses[0] == {
        "owner": OWNER,
        "repo": REPO,
        "sha": SHA,
        "state": "failure",
        "description": "1 image · 2 critical · blocking",
        "context": CONTEXT,
        "target_url": "http://fremforge.test/c",
        "id": created.id,
    }
    assert fake.latest_status(OWNER, REPO, SHA)["state"] == "success"
    assert fake.latest_status(OWNER, REPO, "f" * 40) is None
    combined = gh.rest.repos.get_combined_status_for_ref(OWNER, REPO, SHA).parsed_data
    assert (combined.state, combined.total_count, combined.repository.full_name) == ("success", 2, f"{OWNER}/{REPO}")
    assert [s.context for s in combined.statuses] == [CONTEXT, "other/ci"]
    post_status(gh, "error")
    assert gh.rest.repos.get_combined_status_for_ref(OWNER, REPO, SHA).parsed_data.state == "failure"
    assert gh.rest.repos.get_combined_status_for_ref(OWNER, REPO, "f" * 40).parsed_data.state == "pending"


def test_check_run_is_created_patched_and_found_by_name(fake: FakeGitHub) -> None:
    gh = installation_client(fake)
    create = {
        "name": CONTEXT,
        "head_sha": SHA,
        "status": "in_progress",
        "external_id": "scan-1",
        "details_url": "http://fremforge.test/c",
        "output": {"title": "Scanning", "summary": "…"},
    }
    created = gh.rest.checks.create(OWNER, REPO, data=create).parsed_data
    assert (created.status, created.conclusion, created.app.slug) == ("in_progress", None, "fremforge")
    patch = {"conclusion": "failure", "output": {"title": "Blocking", "summary": "## api:1.0\n3 critical"}}
    updated = gh.rest.checks.update(OWNER, REPO, created.id, data=patch).parsed_data
    assert (updated.id, updated.status, updated.conclusion, updated.output.summary) == (
        created.id,
        "completed",
        "failure",
        "## api:1.0\n3 critical",
    )
    run = fake.check_runs[created.id]
    assert {k: run[k] for k in ("owner", "repo", "head_sha", "name", "status", "conclusion", "external_id")} == {
        "owner": OWNER,
        "repo": REPO,
        "head_sha": SHA,
        "name": CONTEXT,
        "status": "completed",
        "conclusion": "failure",
        "external_id": "scan-1",
    }
    assert run["history"] == [create, patch] and run["details_url"] == "http://fremforge.test/c"
    assert run["output"] == patch["output"] and run["completed_at"]
    listed = gh.rest.checks.list_for_ref(OWNER, REPO, SHA, check_name=CONTEXT).parsed_data
    assert (listed.total_count, [r.id for r in listed.check_runs]) == (1, [created.id])
    assert gh.rest.checks.list_for_ref(OWNER, REPO, SHA, check_name="other").parsed_data.total_count == 0
    assert failed_status(lambda: gh.rest.checks.update(OWNER, REPO, 1, data=patch)) == 404
    assert failed_status(lambda: gh.rest.checks.update(OWNER, "api", created.id, data=patch)) == 404
    assert fake.invalid_requests == []


def test_check_runs_list_latest_per_name_or_all(fake: FakeGitHub) -> None:
    gh = installation_client(fake)
    ids = [gh.rest.checks.create(OWNER, REPO, data={"name": CONTEXT, "head_sha": SHA}).parsed_data.id for _ in range(2)]
    assert [r.id for r in gh.rest.checks.list_for_ref(OWNER, REPO, SHA).parsed_data.check_runs] == [ids[1]]
    every = gh.rest.checks.list_for_ref(OWNER, REPO, SHA, filter_="all").parsed_data
    assert [r.id for r in every.check_runs] == ids[::-1]


def test_pull_requests_of_a_commit(fake: FakeGitHub) -> None:
    fake.add_pull_request(OWNER, REPO, 12, SHA, head_ref="feat/x")
    fake.add_pull_request(OWNER, "api", 13, SHA)
    gh = installation_client(fake)
    pulls = gh.rest.repos.list_pull_requests_associated_with_commit(OWNER, REPO, SHA)
    assert [(p.number, p.head.sha, p.head.ref, p.state) for p in pulls.parsed_data] == [(12, SHA, "feat/x", "open")]


# -- validation ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "error"),
    [
        ("statuses", {"state": "failure", "description": "x" * 141}, "too long"),
        ("statuses", {"state": "bad"}, "body/state"),
        ("statuses", {"description": "no state"}, "state"),
        ("statuses", {"state": "success", "context": None}, "body/context"),
        ("check-runs", {"name": CONTEXT, "head_sha": SHA, "status": "completed"}, "body"),
        (
            "check-runs",
            {"name": CONTEXT, "head_sha": SHA, "output": {"title": "t", "summary": "x" * 65536}},
            "body/output/summary",
        ),
        ("check-runs", {"name": CONTEXT}, "head_sha"),
        ("check-runs", {"name": CONTEXT, "head_sha": SHA, "details_url": None}, "body/details_url"),
        ("check-runs", {"name": CONTEXT, "head_sha": SHA, "started_at": "yesterday"}, "date-time"),
    ],
    ids=[
        "description-141",
        "bad-state",
        "no-state",
        "null-context",
        "completed-no-conclusion",
        "summary-65536",
        "no-head-sha",
        "null-details-url",
        "bad-date",
    ],
)
def test_invalid_bodies_get_422_and_are_recorded(fake: FakeGitHub, path: str, body: dict, error: str) -> None:
    gh = installation_client(fake, rest_api_validate_body=False)
    url = f"/repos/{OWNER}/{REPO}/statuses/{SHA}" if path == "statuses" else f"/repos/{OWNER}/{REPO}/check-runs"
    assert failed_status(lambda: gh.request("POST", url, json=body)) == 422
    assert any(error in e for e in fake.invalid_requests), fake.invalid_requests
    assert fake.statuses == [] and fake.check_runs == {}


def test_limits_themselves_are_accepted_and_nullable_fields_may_be_null(fake: FakeGitHub) -> None:
    gh = installation_client(fake)
    post_status(gh, description="x" * 140)
    gh.rest.repos.create_commit_status(
        OWNER, REPO, SHA, data={"state": "success", "description": None, "target_url": None}
    )
    output = {"title": "t", "summary": "x" * 65535}
    gh.rest.checks.create(
        OWNER, REPO, data={"name": CONTEXT, "head_sha": SHA, "conclusion": "success", "output": output}
    )
    assert fake.invalid_requests == [] and len(fake.statuses) == 2 and len(fake.check_runs) == 1
    too_long = {"title": "t", "summary": "→" * 21846}  # 21,846 characters, 65,538 bytes: GitHub counts bytes
    with pytest.raises(RequestFailed):
        gh.rest.checks.create(
            OWNER, REPO, data={"name": CONTEXT, "head_sha": SHA, "conclusion": "success", "output": too_long}
        )
    assert fake.invalid_requests and "bytesize" in fake.invalid_requests[-1]


def test_bad_parameters_unknown_routes_and_broken_json_are_recorded(fake: FakeGitHub) -> None:
    gh = installation_client(fake)
    status_url = f"/repos/{OWNER}/{REPO}/commits/{SHA}/status"
    assert failed_status(lambda: gh.request("GET", status_url, params={"per_page": "many"})) == 422
    assert failed_status(lambda: gh.request("PATCH", f"/repos/{OWNER}/{REPO}/check-runs/abc", json={})) == 422
    membership = f"/orgs/{OWNER}/memberships/octocat"
    assert failed_status(lambda: gh.request("GET", membership)) == 404  # in the subset, not served
    assert failed_status(lambda: gh.request("DELETE", f"/repos/{OWNER}/{REPO}")) == 404
    with pytest.raises(RequestFailed) as caught:
        gh.request(
            "POST",
            f"/repos/{OWNER}/{REPO}/statuses/{SHA}",
            content=b"{not json",
            headers={"Content-Type": "application/json"},
        )
    assert caught.value.response.status_code == 400
    recorded = "\n".join(fake.invalid_requests)
    for expected in ("per_page", "check_run_id", "orgs/get-membership-for-user", "DELETE", "not JSON"):
        assert expected in recorded
    assert gh.request("GET", status_url, params={"per_page": 5}).status_code == 200


def test_openapi_nullable_becomes_json_schema_null() -> None:
    assert to_json_schema({"type": "string", "nullable": True}) == {"type": ["string", "null"]}
    assert to_json_schema({"type": "string", "enum": ["a"], "nullable": True}) == {
        "type": ["string", "null"],
        "enum": ["a", None],
    }
    assert to_json_schema({"nullable": True, "allOf": [{"$ref": "#/x"}]}) == {
        "anyOf": [{"type": "null"}, {"allOf": [{"$ref": "#/x"}]}]
    }
    assert to_json_schema({"properties": {"nullable": {"type": "boolean"}}, "example": {"nullable": True}}) == {
        "properties": {"nullable": {"type": "boolean"}},
        "example": {"nullable": True},
    }


# -- faults --------------------------------------------------------------------------------------------------------


def test_fail_answers_the_given_status_and_counts_down(fake: FakeGitHub) -> None:
    gh = installation_client(fake)
    fake.fail("POST", r"/statuses/", status=502, times=2, headers={"X-Why": "test"}, json={"message": "bad gateway"})
    for _ in range(2):
        error = failure(lambda: post_status(gh))
        assert (error.response.status_code, error.response.headers["x-why"]) == (502, "test")
        assert error.response.json() == {"message": "bad gateway"}
    assert post_status(gh).status_code == 201
    assert [c.status for c in fake.calls_to("POST", "/statuses/")] == [502, 502, 201]
    assert all(c.json["state"] == "failure" for c in fake.calls_to("POST", "/statuses/"))


def test_fault_without_count_lasts_until_cleared(fake: FakeGitHub) -> None:
    gh = installation_client(fake)
    fake.fail("POST", r"/check-runs$", times=None)
    for _ in range(3):
        assert failed_status(lambda: gh.rest.checks.create(OWNER, REPO, data={"name": CONTEXT, "head_sha": SHA})) == 503
    fake.clear_faults()
    assert gh.rest.checks.create(OWNER, REPO, data={"name": CONTEXT, "head_sha": SHA}).status_code == 201


def test_faults_match_method_and_path(fake: FakeGitHub) -> None:
    gh = installation_client(fake)
    fake.fail("PATCH", r"/statuses/")
    fake.fail("POST", r"/check-runs$")
    assert post_status(gh).status_code == 201
    assert len(fake.faults) == 2 and all(f.remaining == 1 for f in fake.faults)


def test_token_exchange_can_fail_too_and_githubkit_wraps_that_failure(fake: FakeGitHub) -> None:
    fake.fail("POST", r"^/app/installations/\d+/access_tokens$", status=500)
    gh = installation_client(fake)
    with pytest.raises(RequestError) as caught:
        post_status(gh)
    assert not isinstance(caught.value, RequestFailed) and isinstance(caught.value.exc, RequestFailed)
    assert caught.value.exc.response.status_code == 500
    assert fake.statuses == [] and post_status(gh).status_code == 201


def test_unauthorized_answers_bad_credentials(fake: FakeGitHub) -> None:
    gh = installation_client(fake)
    fake.unauthorized("POST", r"/statuses/")
    error = failure(lambda: post_status(gh))
    assert error.response.status_code == 401 and error.response.json()["message"] == "Bad credentials"


def test_secondary_rate_limit_with_retry_after(fake: FakeGitHub) -> None:
    gh = installation_client(fake)
    fake.rate_limit("POST", r"/check-runs$", retry_after=30)
    with pytest.raises(SecondaryRateLimitExceeded) as caught:
        gh.rest.checks.create(OWNER, REPO, data={"name": CONTEXT, "head_sha": SHA})
    assert caught.value.response.status_code == 403
    assert caught.value.retry_after == dt.timedelta(seconds=30)
    assert "secondary rate limit" in caught.value.response.json()["message"]


def test_secondary_rate_limit_with_reset_time_and_429(fake: FakeGitHub) -> None:
    gh = installation_client(fake)
    reset_at = int(time.time()) + 120
    fake.rate_limit("POST", r"/statuses/", retry_after=None, reset_at=reset_at, status=429)
    with pytest.raises(SecondaryRateLimitExceeded) as caught:
        post_status(gh)
    response = caught.value.response
    assert response.status_code == 429 and "retry-after" not in response.headers
    assert (response.headers["x-ratelimit-remaining"], response.headers["x-ratelimit-reset"]) == ("0", str(reset_at))
    assert dt.timedelta(seconds=100) < caught.value.retry_after <= dt.timedelta(seconds=120)


def test_outage_answers_503_everywhere_until_off(fake: FakeGitHub) -> None:
    gh = installation_client(fake)
    fake.outage()
    assert failed_status(lambda: post_status(gh)) == 503
    app = app_client(fake)
    assert failed_status(lambda: app.rest.apps.list_installations()) == 503
    fake.outage(False)
    assert post_status(gh).status_code == 201
    assert [c.status for c in fake.calls] == [503, 503, 201, 201]  # the exchange, the lookup, then both for real


def test_timeout_holds_the_request_then_does_the_work_without_blocking_others(fake: FakeGitHub) -> None:
    gh = installation_client(fake, timeout=0.3)
    post_status(gh)  # the token is exchanged before the hold
    fake.timeout("POST", r"/check-runs$", seconds=1.2)
    started = time.monotonic()
    with pytest.raises(RequestTimeout):
        gh.rest.checks.create(OWNER, REPO, data={"name": CONTEXT, "head_sha": SHA})
    assert time.monotonic() - started < 1.0
    [held] = fake.calls_to("POST", r"/check-runs$")
    assert post_status(gh, "success").status_code == 201 and held.status == 0  # served while the create is held
    found = wait_for(lambda: gh.rest.checks.list_for_ref(OWNER, REPO, SHA, check_name=CONTEXT).parsed_data.check_runs)
    assert held.status == 201 and [r.id for r in found] == list(fake.check_runs)


def test_a_request_held_across_reset_leaves_the_new_state_alone(fake: FakeGitHub) -> None:
    gh = installation_client(fake, timeout=0.2)
    fake.timeout("POST", r"/statuses/", seconds=0.6)
    with pytest.raises(RequestTimeout):
        post_status(gh)
    [held] = fake.calls_to("POST", "/statuses/")
    fake.reset()
    fake.add_installation(INSTALLATION, OWNER)
    wait_for(lambda: held.status)
    assert held.status == 503 and fake.statuses == [] and fake.calls == []


def test_concurrent_posts_are_all_recorded(fake: FakeGitHub) -> None:
    gh = installation_client(fake)
    post_status(gh)
    threads = [threading.Thread(target=post_status, args=(gh, "success", f"n{i}")) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(fake.statuses) == 9 and len({s["id"] for s in fake.statuses}) == 9
    assert fake.token_exchanges[INSTALLATION] == 1


# -- the OAuth web flow (admin sign-in) ----------------------------------------------------------------------------

CALLBACK = "http://fremforge.test/admin/oauth/callback"


def authorize(fake: FakeGitHub, state: str = "s1") -> dict[str, str]:
    """What the authorize page sends back to the callback (its query), for whoever `oauth_login_as` named."""
    query = {"client_id": fake.client_id, "redirect_uri": CALLBACK, "state": state, "scope": "read:org"}
    answer = httpx.get(f"{fake.url}/login/oauth/authorize", params=query)
    assert answer.status_code == 302, answer.text
    location = httpx.URL(answer.headers["location"])
    assert str(location.copy_with(query=None)) == CALLBACK
    return dict(location.params)


def user_client(fake: FakeGitHub, code: str) -> GitHub:
    """A githubkit client with the App's client credentials and a web-flow code, as the app's sign-in makes it."""
    auth = OAuthAppAuthStrategy(fake.client_id, fake.client_secret).as_web_user(code, CALLBACK)
    return GitHub(auth, **client_config(fake))


def test_web_flow_through_githubkit_gives_the_user_and_their_memberships(fake: FakeGitHub) -> None:
    fake.add_user("Octo", {"acme": "admin", "widgets": "member"}, pending=["gadgets"])
    fake.add_user("someone-else", {"acme": "member"})
    fake.add_user("octo-pending", {"gadgets": "admin"}, pending=["gadgets"])
    fake.oauth_login_as("octo")
    answer = authorize(fake, state="xyz")
    assert answer["state"] == "xyz" and re.fullmatch(r"[0-9a-f]{20}", answer["code"])
    with user_client(fake, answer["code"]) as gh:
        assert gh.rest.users.get_authenticated().parsed_data.login == "Octo"
        acme = gh.rest.orgs.get_membership_for_authenticated_user("ACME").parsed_data
        assert (acme.role, acme.state, acme.organization.login) == ("admin", "active", "acme")
        assert gh.rest.orgs.get_membership_for_authenticated_user("widgets").parsed_data.role == "member"
        assert failed_status(lambda: gh.rest.orgs.get_membership_for_authenticated_user("gadgets")) == 404
    [exchange] = fake.calls_to("POST", "/login/oauth/access_token")
    assert exchange.json["code"] == answer["code"] and exchange.headers["accept"] == "application/json"
    assert fake.calls_to("GET", "^/user$")[0].headers["authorization"].startswith("token ghu_")
    assert fake.invalid_requests == []


def test_codes_work_once_and_need_the_client_secret_and_the_same_redirect_uri(fake: FakeGitHub) -> None:
    fake.add_user("octo", {"acme": "admin"})
    fake.oauth_login_as("octo")
    url = f"{fake.url}/login/oauth/access_token"
    code = authorize(fake)["code"]
    wrong_secret = {"client_id": fake.client_id, "client_secret": "nope", "code": code}
    json_accept = {"Accept": "application/json"}
    assert httpx.post(url, json=wrong_secret, headers=json_accept).json()["error"] == "incorrect_client_credentials"
    good = {"client_id": fake.client_id, "client_secret": fake.client_secret, "code": code}
    other_uri = {**good, "redirect_uri": "http://elsewhere.test/cb"}
    assert httpx.post(url, json=other_uri, headers=json_accept).json()["error"] == "redirect_uri_mismatch"
    code = authorize(fake)["code"]
    form = httpx.post(url, data={**good, "code": code})  # a form body, and a form answer without Accept: JSON
    assert form.status_code == 200 and form.headers["content-type"].startswith("application/x-www-form-urlencoded")
    token = dict(httpx.QueryParams(form.text))
    assert token["access_token"].startswith("ghu_") and token["refresh_token"].startswith("ghr_")
    assert token["token_type"] == "bearer" and int(token["expires_in"]) == 8 * 3600
    again = httpx.post(url, json={**good, "code": code}, headers=json_accept).json()
    assert again["error"] == "bad_verification_code"
    user = httpx.get(f"{fake.url}/user", headers={"Authorization": f"token {token['access_token']}"})
    assert user.status_code == 200 and user.json()["login"] == "octo"
    for authorization in ("token ghu_unknown", "", f"Bearer {fake.client_secret}"):
        assert httpx.get(f"{fake.url}/user", headers={"Authorization": authorization}).status_code == 401


def test_authorize_refuses_unknown_clients_and_reports_a_cancel(fake: FakeGitHub) -> None:
    query = {"client_id": "Iv1.unknown", "redirect_uri": CALLBACK, "state": "s"}
    assert httpx.get(f"{fake.url}/login/oauth/authorize", params=query).status_code == 404
    query["client_id"] = fake.client_id
    assert httpx.get(f"{fake.url}/login/oauth/authorize", params=query).status_code == 403  # nobody signed in
    fake.add_user("octo")
    fake.oauth_login_as("octo", approve=False)
    assert authorize(fake, state="s")["error"] == "access_denied"
