"""A fake GitHub REST API, served over real HTTP on 127.0.0.1, for tests that drive the app's githubkit client.

`FakeGitHub` answers the GitHub App endpoints the app uses (JWT → installation token, installations, commit
statuses, check runs, the pull requests of a commit, the App webhook's deliveries and their redelivery) with bodies
shaped like GitHub's, starting from the examples in `tests/fixtures/github-api/github-rest-subset.openapi.json` (the
shared subset of `shared/fixtures/github-api/` with the two webhook-delivery operations added: see its SOURCES.md).
Every request it receives is checked against that OpenAPI subset (path and query parameters, JSON body); an invalid
one gets 422 as on GitHub and is recorded in `invalid_requests`, so a test can assert the app never sent one. Its own
answers are checked against the subset's response schemas too (`invalid_responses`), which keeps the fake honest.

It also plays github.com's side of the OAuth web flow through which admins sign in: users added with `add_user`
(and their org memberships), `oauth_login_as` choosing who approves the next authorization, the authorize
redirect, the code exchange (with the App's client id and secret), and GET /user and
GET /user/memberships/orgs/{org} with the user token. (On github.com those two OAuth pages live on the web host,
not the API host; here one server plays both, as `get_oauth_base_url` in githubkit expects of a base URL that
is neither api.github.com nor GitHub Enterprise's /api/v3.)

Faults (errors, held requests, secondary rate limits, bad credentials, outages) are armed per method and path
regex. The server is threaded: a held request does not block other requests or `reset()`, and a held request
that outlives a `reset()` is dropped without touching the new state.

The App webhook's deliveries are what a test records with `add_hook_delivery` (GitHub's list of them: listed newest
first, paged by `cursor` with a Link header as GitHub does). A redelivery asked for is recorded in
`redelivery_requests`; with a target set (`redeliver_to`), the fake then POSTs the event's payload there, signed with
the webhook secret as GitHub signs it, and records that attempt as a new delivery of the event.
"""

from __future__ import annotations

import collections
import copy
import datetime as dt
import functools
import hashlib
import hmac
import itertools
import json
import re
import secrets
import string
import threading
import time
import urllib.parse
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import jsonschema_rs
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from tests import paths

SHARED = paths.SHARED
SUBSET_PATH = paths.ROOT / "tests" / "fixtures" / "github-api" / "github-rest-subset.openapi.json"
DOCS_URL = "https://docs.github.com/rest"
SECONDARY_RATE_LIMIT_MESSAGE = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. "
    "If you reach out to GitHub Support for help, please include the request ID 0000:0000:0000000:0000000:00000000."
)
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # what githubkit parses `expires_at` with
APP_SLUG = "fremforge"
APP_PERMISSIONS = {"checks": "write", "statuses": "write", "metadata": "read", "pull_requests": "read"}
JWT_MAX_LIFETIME = 600 + 60  # GitHub allows 10 minutes; one more minute of clock skew
JWT_LEEWAY = 60
HOLD_LIMIT = 30.0  # seconds a hold_until request waits at most for its release (a test that forgot it still ends)
STATUS_DESCRIPTION_MAX = 140
CHECK_OUTPUT_MAX_BYTES = 65_535  # a check run's output.summary and output.text, in bytes of UTF-8 (GitHub's answer)
CLIENT_ID = "Iv1.f4ke0a11c11e47"  # the App's OAuth client id (a GitHub App's start with "Iv1." or "Iv23")
OAUTH_CODE_LIFETIME = dt.timedelta(minutes=10)  # as on GitHub
USER_TOKEN_LIFETIME = dt.timedelta(hours=8)  # a GitHub App's user tokens expire, unless expiry is turned off
REFRESH_TOKEN_LIFETIME = dt.timedelta(days=184)
OAUTH_DOCS_URL = (
    "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors"
)


# --------------------------------------------------------------------------------------------------------------------
# The OpenAPI subset: routing and validation
# --------------------------------------------------------------------------------------------------------------------

_DATA_KEYWORDS = frozenset({"example", "examples", "default", "enum", "const", "discriminator", "externalDocs", "xml"})


def to_json_schema(node: Any) -> Any:
    """Turn an OpenAPI 3.0 schema into JSON Schema (draft 4): `nullable: true` becomes a null type / enum member."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DATA_KEYWORDS:
            out[key] = value
        elif key in ("properties", "patternProperties"):
            out[key] = {name: to_json_schema(schema) for name, schema in value.items()}
        else:
            out[key] = to_json_schema(value)
    return _nullable(out) if out.pop("nullable", False) else out


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """The same schema, also accepting null."""
    if "type" not in schema:
        return {"anyOf": [{"type": "null"}, schema]}
    kinds = [schema["type"]] if isinstance(schema["type"], str) else list(schema["type"])
    schema["type"] = [*kinds, "null"]
    if "enum" in schema and None not in schema["enum"]:
        schema["enum"] = [*schema["enum"], None]
    return schema


@dataclass
class Parameter:
    """One path or query parameter of an operation, with its compiled schema."""

    name: str
    location: str
    required: bool
    schema: dict[str, Any]
    validator: Any
    multi_segment: bool = False

    def coerce(self, raw: str) -> Any:
        """A URL string as the JSON value its schema expects (left as is where it does not convert)."""
        kind = self.schema.get("type")
        if kind == "integer" and re.fullmatch(r"-?\d+", raw):
            return int(raw)
        if kind == "boolean" and raw in ("true", "false"):
            return raw == "true"
        return raw


@dataclass
class Operation:
    """One (method, path) of the subset, with everything needed to route and check a request and its answer."""

    method: str
    template: str
    operation_id: str
    pattern: re.Pattern[str]
    parameters: list[Parameter]
    body: Any  # compiled validator, or None where the operation takes no body
    body_required: bool
    responses: dict[int, Any]  # status -> compiled validator of the JSON body


class OpenApiSubset:
    """The GitHub REST subset: finds the operation of a request and lists what is wrong with it."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.examples = {name: example["value"] for name, example in document["components"]["examples"].items()}
        schemas = document["components"]["schemas"]
        self._components = {"schemas": {name: to_json_schema(schema) for name, schema in schemas.items()}}
        self.operations = [
            self._operation(method, template, spec)
            for template, item in document["paths"].items()
            for method, spec in item.items()
        ]

    def match(self, method: str, path: str) -> tuple[Operation, dict[str, str]] | None:
        """The operation serving `method path`, with its raw path parameters."""
        for operation in self.operations:
            found = operation.pattern.fullmatch(path)
            if operation.method == method and found:
                return operation, found.groupdict()
        return None

    def request_errors(
        self, operation: Operation, path_params: dict[str, str], query: dict[str, str], body: Any, has_body: bool
    ) -> list[str]:
        """What is wrong with a request to `operation` (empty when it is valid)."""
        errors: list[str] = []
        for parameter in operation.parameters:
            raw = (path_params if parameter.location == "path" else query).get(parameter.name)
            if raw is None:
                if parameter.required:
                    errors.append(f"{parameter.location} parameter {parameter.name!r} is required")
                continue
            problems = parameter.validator.iter_errors(parameter.coerce(raw))
            errors += [f"{parameter.location} parameter {parameter.name!r}: {e.message}" for e in problems]
        if operation.body is None:
            return errors
        if not has_body:
            return [*errors, "a JSON body is required"] if operation.body_required else errors
        return errors + [_describe("body", error) for error in operation.body.iter_errors(body)]

    def response_errors(self, operation: Operation, status: int, body: Any) -> list[str]:
        """What is wrong with an answer of `operation` (empty when valid or when the subset has no schema for it)."""
        validator = operation.responses.get(status)
        if validator is None:
            return []
        return [_describe(f"{status} response", error) for error in validator.iter_errors(body)]

    def _operation(self, method: str, template: str, spec: dict[str, Any]) -> Operation:
        parameters = [self._parameter(self._deref(p)) for p in spec.get("parameters", [])]
        request_body = self._deref(spec.get("requestBody", {}))
        body_schema = request_body.get("content", {}).get("application/json", {}).get("schema")
        responses: dict[int, Any] = {}
        for status, response in spec.get("responses", {}).items():
            schema = self._deref(response).get("content", {}).get("application/json", {}).get("schema")
            if schema is not None:
                responses[int(status)] = self._compile(schema)
        return Operation(
            method=method.upper(),
            template=template,
            operation_id=spec["operationId"],
            pattern=_path_pattern(template, {p.name for p in parameters if p.multi_segment}),
            parameters=parameters,
            body=None if body_schema is None else self._compile(body_schema),
            body_required=bool(request_body.get("required")),
            responses=responses,
        )

    def _parameter(self, spec: dict[str, Any]) -> Parameter:
        schema = to_json_schema(spec.get("schema", {}))
        return Parameter(
            name=spec["name"],
            location=spec["in"],
            required=bool(spec.get("required")),
            schema=schema,
            validator=self._compile(spec.get("schema", {})),
            multi_segment=bool(spec.get("x-multi-segment")),
        )

    def _deref(self, node: dict[str, Any]) -> dict[str, Any]:
        """Follow a `$ref` to a component (parameters, request bodies, responses) of the document."""
        while "$ref" in node:
            target: Any = self.document
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node

    def _compile(self, schema: dict[str, Any]) -> Any:
        """A draft-4 validator of the schema; its `$ref`s resolve against the document's components."""
        root = {"allOf": [to_json_schema(schema)], "components": self._components}
        return jsonschema_rs.Draft4Validator(root, validate_formats=True)


def _path_pattern(template: str, multi_segment: set[str]) -> re.Pattern[str]:
    """A regex of an OpenAPI path template; `x-multi-segment` parameters may contain slashes."""
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(
        re.escape(part) if i % 2 == 0 else f"(?P<{part}>{'.+' if part in multi_segment else '[^/]+'})"
        for i, part in enumerate(parts)
    )
    return re.compile(regex)


@functools.cache
def load_subset(path: Path = SUBSET_PATH) -> OpenApiSubset:
    """The subset at `path`, read and compiled once per process."""
    return OpenApiSubset(json.loads(path.read_text(encoding="utf-8")))


def _describe(where: str, error: Any) -> str:
    """One validation error as GitHub-like text: where it is and what is wrong."""
    pointer = "/".join(str(part) for part in error.instance_path)
    message = error.message  # quotes the offending value, which may be huge: keep its start and its end
    if len(message) > 300:
        message = f"{message[:140]} … {message[-140:]}"
    return f"{where}{'/' + pointer if pointer else ''}: {message}"


# --------------------------------------------------------------------------------------------------------------------
# Recorded calls, armed faults and the fake's state
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Call:
    """One request the fake received (faulted ones too), with the status it was answered with (0 while held)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    json: Any
    status: int = 0
    at: float = 0.0


@dataclass
class Fault:
    """An armed fault: the next `remaining` requests matching it (None: until cleared) are answered by it."""

    method: str
    pattern: re.Pattern[str]
    remaining: int | None
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    hold: float = 0.0  # > 0: hold the request this long, then answer it normally
    release: threading.Event | None = None  # set: hold the request until it is set, then answer it normally
    trickle: float = 0.0  # > 0: answer normally, the answer's bytes spread evenly over this many seconds

    def hits(self, method: str, path: str) -> bool:
        return self.remaining != 0 and self.method in (method, "*") and bool(self.pattern.search(path))

    def consume(self) -> None:
        if self.remaining is not None:
            self.remaining -= 1


@dataclass
class Installation:
    """An installation of the app on one account, on all its repositories or on the named ones."""

    id: int
    login: str
    repos: frozenset[str] | None  # lower-case repository names; None: all
    account_type: str = "Organization"
    suspended: bool = False

    def covers(self, owner: str, repo: str | None = None) -> bool:
        if owner.lower() != self.login.lower():
            return False
        return repo is None or self.repos is None or repo.lower() in self.repos


@dataclass
class IssuedToken:
    """An installation token the fake handed out."""

    installation_id: int
    expires_at: dt.datetime
    repos: frozenset[str] | None  # a token asked for some repositories only covers those
    revoked: bool = False

    def live(self) -> bool:
        return not self.revoked and dt.datetime.now(dt.UTC) < self.expires_at


@dataclass
class Membership:
    """A user's membership of an org: role admin | member | billing_manager; state active | pending."""

    org: str
    role: str
    state: str = "active"


@dataclass
class User:
    """A GitHub user who can sign in through the OAuth web flow."""

    login: str
    memberships: dict[str, Membership]  # by lower-case org login


@dataclass
class OAuthCode:
    """A code handed to the app's callback by the authorize redirect; exchanged once for a user token."""

    login: str
    redirect_uri: str
    issued_at: dt.datetime


@dataclass
class UserToken:
    """A user's OAuth token (ghu_...) the fake handed out; None: it does not expire."""

    login: str
    expires_at: dt.datetime | None

    def live(self) -> bool:
        return self.expires_at is None or dt.datetime.now(dt.UTC) < self.expires_at


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime(TIME_FORMAT)


def _trickled(data: bytes, gap: float) -> Iterator[bytes]:
    """`data` a byte at a time, `gap` seconds apart (the server writes each at once)."""
    for i in range(len(data)):
        time.sleep(gap)  # the fault's pace, not a synchronisation
        yield data[i : i + 1]


def _json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, headers=headers, content_type="application/json; charset=utf-8")


def _error(status: int, message: str, **extra: Any) -> Response:
    """An error body as GitHub sends it."""
    return _json_response(status, {"message": message, "documentation_url": DOCS_URL, "status": str(status), **extra})


def _reason(status: int) -> str:
    """The reason phrase of an HTTP status."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _credential(authorization: str) -> tuple[str, str]:
    """(scheme in lower case, credential) of an Authorization header."""
    scheme, _, credential = authorization.strip().partition(" ")
    return scheme.lower(), credential.strip()


class _QuietHandler(WSGIRequestHandler):
    """The werkzeug request handler without its access log."""

    def log(self, *args: Any) -> None:
        pass


Handler = Callable[["Exchange"], Response]


@dataclass
class Route:
    """Where a request goes: its operation id, the subset operation (None for an extra route) and path params."""

    operation_id: str
    operation: Operation | None
    params: dict[str, str]
    errors: list[str] = field(default_factory=list)


@dataclass
class Exchange:
    """What a handler sees of a request."""

    call: Call
    params: dict[str, str]
    body: Any
    after: list[Callable[[], None]] = field(default_factory=list)  # done once answered, without the fake's lock


# What a redelivery target does with a delivery: POST it (headers, raw body) and return the answer's status code.
WebhookTarget = Callable[[dict[str, str], bytes], int]
PER_PAGE_DEFAULT, PER_PAGE_MAX = 30, 100


# --------------------------------------------------------------------------------------------------------------------
# The fake
# --------------------------------------------------------------------------------------------------------------------

APP_JWT_OPERATIONS = frozenset(
    {
        "apps/create-installation-access-token",
        "apps/list-installations",
        "apps/get-repo-installation",
        "apps/get-org-installation",
        "apps/list-webhook-deliveries",
        "apps/redeliver-webhook-delivery",
    }
)
# Answered with a user's OAuth token (from the web flow), not the App's JWT or an installation token.
USER_TOKEN_OPERATIONS = frozenset({"users/get-authenticated", "orgs/get-membership-for-authenticated-user"})
# github.com's OAuth web flow pages: no Authorization header; the token exchange takes a JSON or form body.
OAUTH_WEB_OPERATIONS = frozenset({"oauth/authorize", "oauth/access-token"})
# Served although not in the subset, so not validated: the app looks a check run up by name after a timed-out create;
# and the OAuth web flow, which is not part of the REST API.
EXTRA_ROUTES = [
    (
        "GET",
        re.compile(r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/commits/(?P<ref>.+)/check-runs"),
        "checks/list-for-ref",
    ),
    ("GET", re.compile(r"/login/oauth/authorize"), "oauth/authorize"),
    ("POST", re.compile(r"/login/oauth/access_token"), "oauth/access-token"),
]


class FakeGitHub:
    """GitHub's REST API for one GitHub App, over HTTP on 127.0.0.1. See the module docstring."""

    def __init__(self, app_id: str = "424242") -> None:
        self.app_id = str(app_id)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        self.client_id = CLIENT_ID
        self.client_secret = secrets.token_hex(20)
        self.public_key_pem = (
            key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )
        self.subset = load_subset()
        self.url = ""
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()
        self._ids = itertools.count(1000)  # ids keep growing across resets, so no id is ever reused
        self._generation = 0
        self._handlers: dict[str, Handler] = {
            "apps/create-installation-access-token": self._create_token,
            "apps/list-installations": self._list_installations,
            "apps/get-repo-installation": self._get_repo_installation,
            "apps/get-org-installation": self._get_org_installation,
            "apps/list-webhook-deliveries": self._list_hook_deliveries,
            "apps/redeliver-webhook-delivery": self._redeliver_hook_delivery,
            "repos/create-commit-status": self._create_status,
            "repos/get-combined-status-for-ref": self._combined_status,
            "checks/create": self._create_check_run,
            "checks/update": self._update_check_run,
            "checks/list-for-ref": self._list_check_runs,
            "repos/list-pull-requests-associated-with-commit": self._list_pulls,
            "oauth/authorize": self._oauth_authorize,
            "oauth/access-token": self._oauth_access_token,
            "users/get-authenticated": self._get_authenticated_user,
            "orgs/get-membership-for-authenticated-user": self._get_own_membership,
        }
        self.reset()

    # -- server --------------------------------------------------------------------------------------------------

    def start(self) -> FakeGitHub:
        """Serve on a free port of 127.0.0.1 in a daemon thread; `url` is then the base URL."""
        if self._server is None:
            self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True, request_handler=_QuietHandler)
            self.url = f"http://127.0.0.1:{self._server.server_port}"
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-github", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (held requests still sleeping are dropped with their daemon threads)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server = self._thread = None

    def __enter__(self) -> FakeGitHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget all state and faults; keep the server, the URL and the keys."""
        with self._lock:
            self._generation += 1
            self.installations: dict[int, Installation] = {}
            self.tokens: dict[str, IssuedToken] = {}
            self.token_exchanges: collections.Counter[int] = collections.Counter()
            self.token_lifetime = dt.timedelta(hours=1)
            self.statuses: list[dict[str, Any]] = []
            self._status_times: dict[int, str] = {}
            self.check_runs: dict[int, dict[str, Any]] = {}
            self.pull_requests: list[dict[str, Any]] = []
            self.calls: list[Call] = []
            self.invalid_requests: list[str] = []
            self.invalid_responses: list[str] = []
            self.faults: list[Fault] = []
            self._outage = False
            self.users: dict[str, User] = {}  # by lower-case login
            self.oauth_approver: str | None = None
            self.oauth_approves = True
            self.oauth_codes: dict[str, OAuthCode] = {}
            self.user_tokens: dict[str, UserToken] = {}
            self.expiring_user_tokens = True
            self.hook_deliveries: list[dict[str, Any]] = []  # hook-delivery-items, in the order recorded
            self.hook_payloads: dict[str, tuple[str, bytes]] = {}  # by guid: (event, raw JSON payload)
            self.redelivery_requests: list[int] = []  # delivery ids, in the order asked
            self.webhook_target: WebhookTarget | None = None
            self.webhook_secret = ""

    # -- state ---------------------------------------------------------------------------------------------------

    def add_installation(
        self, installation_id: int, login: str, repos: list[str] | None = None, account_type: str = "Organization"
    ) -> None:
        """Install the app on account `login`: on all its repositories (None) or on the named ones."""
        names = None if repos is None else frozenset(r.rsplit("/", 1)[-1].lower() for r in repos)
        with self._lock:
            self.installations[installation_id] = Installation(installation_id, login, names, account_type)

    def remove_installation(self, installation_id: int) -> None:
        """Uninstall: token exchanges answer 404 and the installation's tokens 401."""
        with self._lock:
            self.installations.pop(installation_id, None)

    def suspend_installation(self, installation_id: int, suspended: bool = True) -> None:
        """Suspend (or unsuspend): token exchanges answer 403 "This installation has been suspended"."""
        with self._lock:
            self.installations[installation_id].suspended = suspended

    def expire_tokens(self) -> None:
        """Every token issued so far answers 401 Bad credentials from now on."""
        with self._lock:
            for token in self.tokens.values():
                token.revoked = True

    def add_pull_request(
        self,
        owner: str,
        repo: str,
        number: int,
        head_sha: str,
        head_ref: str = "feature",
        base_ref: str = "main",
        state: str = "open",
    ) -> None:
        """A pull request whose head is `head_sha`, listed by GET /repos/{o}/{r}/commits/{head_sha}/pulls."""
        with self._lock:
            self.pull_requests.append(
                {
                    "owner": owner,
                    "repo": repo,
                    "number": number,
                    "head_sha": head_sha,
                    "head_ref": head_ref,
                    "base_ref": base_ref,
                    "state": state,
                }
            )

    def add_user(self, login: str, memberships: dict[str, str] | None = None, pending: Iterable[str] = ()) -> None:
        """A GitHub user who can sign in through OAuth.

        `memberships` maps an org login to the user's role there ("admin", "member" or "billing_manager"); orgs
        named in `pending` hold an invitation the user has not accepted yet (membership state "pending").
        """
        waiting = {org.lower() for org in pending}
        with self._lock:
            self.users[login.lower()] = User(
                login,
                {
                    org.lower(): Membership(org, role, "pending" if org.lower() in waiting else "active")
                    for org, role in (memberships or {}).items()
                },
            )

    def oauth_login_as(self, login: str | None, approve: bool = True) -> None:
        """Who is signed in to "github.com" when the next authorization is asked for, and whether they approve it
        (False: they press Cancel, and the app gets `error=access_denied`)."""
        with self._lock:
            self.oauth_approver = login
            self.oauth_approves = approve

    def add_hook_delivery(
        self,
        event: str = "pull_request",
        action: str | None = "opened",
        *,
        status_code: int = 200,
        status: str | None = None,
        guid: str | None = None,
        redelivery: bool = False,
        delivered_at: dt.datetime | None = None,
        payload: dict[str, Any] | None = None,
        installation_id: int | None = None,
        repository_id: int | None = None,
    ) -> dict[str, Any]:
        """Record a delivery of the App's webhook (a copy of it, as listed, is returned).

        `guid` is the event's id (X-GitHub-Delivery; new by default); `status_code` what the app answered (0: GitHub
        could not connect); `delivered_at` (UTC, default now) orders the list, newest first. `payload` is the event's
        body (default `{"action": action}`), POSTed to the target when a redelivery is asked for.
        """
        guid = guid or str(uuid.uuid4())
        at = delivered_at or dt.datetime.now(dt.UTC)
        at = (at.astimezone(dt.UTC) if at.tzinfo else at).replace(tzinfo=None, microsecond=0)
        with self._lock:
            item = {
                "id": next(self._ids),
                "guid": guid,
                "delivered_at": at.strftime(TIME_FORMAT),
                "redelivery": redelivery,
                "duration": 0.05,
                "status": status or _delivery_status(status_code),
                "status_code": status_code,
                "event": event,
                "action": action,
                "installation_id": installation_id,
                "repository_id": repository_id,
                "throttled_at": None,
            }
            self.hook_deliveries.append(item)
            if payload is not None or guid not in self.hook_payloads:
                body = {"action": action} if payload is None and action else (payload or {})
                self.hook_payloads[guid] = (event, json.dumps(body).encode())
            return dict(item)

    def redeliver_to(self, target: WebhookTarget | None, secret: str = "") -> None:
        """Where redeliveries asked for go (None: nowhere, only recorded), and the secret they are signed with."""
        with self._lock:
            self.webhook_target, self.webhook_secret = target, secret

    def deliveries_of(self, guid: str) -> list[dict[str, Any]]:
        """The recorded deliveries of one event, oldest first (copies)."""
        with self._lock:
            return [dict(d) for d in self.hook_deliveries if d["guid"] == guid]

    def calls_to(self, method: str, path_regex: str) -> list[Call]:
        """The recorded calls of `method` whose path matches `path_regex` (re.search)."""
        with self._lock:
            return [c for c in self.calls if c.method == method.upper() and re.search(path_regex, c.path)]

    def latest_status(self, owner: str, repo: str, sha: str, context: str = "fremforge/image-scan") -> dict | None:
        """The last commit status accepted for (owner/repo, sha, context), or None."""
        with self._lock:
            matching = [
                s
                for s in self.statuses
                if _same_repo(s, owner, repo) and s["sha"] == sha and s["context"].lower() == context.lower()
            ]
            return matching[-1] if matching else None

    def runs_of(self, owner: str, repo: str, sha: str, name: str = "fremforge/image-scan") -> list[dict[str, Any]]:
        """Every check run named `name` on the commit, oldest first (copies)."""
        with self._lock:
            return [
                copy.deepcopy(r)
                for r in sorted(self.check_runs.values(), key=lambda r: r["id"])
                if _same_repo(r, owner, repo) and r["head_sha"] == sha and r["name"] == name
            ]

    # -- faults --------------------------------------------------------------------------------------------------

    def fail(
        self,
        method: str,
        path_regex: str,
        status: int = 503,
        times: int | None = 1,
        headers: dict | None = None,
        json: Any = None,
    ) -> None:
        """Answer the matching requests with `status` (body `json`, default {"message": <reason phrase>}).

        Every fault method takes `method` ("*": any) and `path_regex` (re.search on the path, e.g. r"/check-runs$").
        """
        body = {"message": _reason(status)} if json is None else json
        self._arm(Fault(method.upper(), re.compile(path_regex), times, status, dict(headers or {}), body))

    def timeout(self, method: str, path_regex: str, times: int | None = 1, seconds: float = 5.0) -> None:
        """Hold the matching requests `seconds`, then answer them normally (so the work is done on "GitHub")."""
        self._arm(Fault(method.upper(), re.compile(path_regex), times, hold=seconds))

    def hold_until(self, method: str, path_regex: str, release: threading.Event, times: int | None = 1) -> None:
        """Hold the matching requests until `release` is set (at most HOLD_LIMIT seconds), then answer them normally:
        a post its client gave up on that "GitHub" applies as late as the test says."""
        self._arm(Fault(method.upper(), re.compile(path_regex), times, release=release))

    def latency(self, method: str, path_regex: str, seconds: float, times: int | None = None) -> None:
        """Answer the matching requests normally, `seconds` late (until cleared, by default)."""
        self.timeout(method, path_regex, times=times, seconds=seconds)

    def trickle(self, method: str, path_regex: str, seconds: float, times: int | None = 1) -> None:
        """Apply the matching requests at once, and send each answer a byte at a time over `seconds` (a slow proxy:
        never silent for long enough to trip a client's per-read timeout)."""
        self._arm(Fault(method.upper(), re.compile(path_regex), times, trickle=seconds))

    def rate_limit(
        self,
        method: str,
        path_regex: str,
        retry_after: int | None = 60,
        reset_at: int | None = None,
        status: int = 403,
        times: int | None = 1,
        remaining: int = 0,
    ) -> None:
        """GitHub's secondary rate limit: `Retry-After` and/or `x-ratelimit-reset` with `x-ratelimit-remaining`
        (`remaining`, 0 unless told: a secondary limit may leave requests of the primary one), or neither."""
        headers: dict[str, str] = {}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        if reset_at is not None:
            headers.update(
                {
                    "x-ratelimit-limit": "5000",
                    "x-ratelimit-remaining": str(remaining),
                    "x-ratelimit-used": str(5000 - remaining),
                    "x-ratelimit-reset": str(reset_at),
                    "x-ratelimit-resource": "core",
                }
            )
        body = {"message": SECONDARY_RATE_LIMIT_MESSAGE, "documentation_url": DOCS_URL, "status": str(status)}
        self._arm(Fault(method.upper(), re.compile(path_regex), times, status, headers, body))

    def unauthorized(self, method: str, path_regex: str, times: int | None = 1) -> None:
        """Answer the matching requests 401 Bad credentials."""
        body = {"message": "Bad credentials", "documentation_url": DOCS_URL, "status": "401"}
        self._arm(Fault(method.upper(), re.compile(path_regex), times, 401, {}, body))

    def outage(self, on: bool = True) -> None:
        """While on, every request is answered 503."""
        with self._lock:
            self._outage = on

    def clear_faults(self) -> None:
        """Disarm every fault and end any outage."""
        with self._lock:
            self.faults.clear()
            self._outage = False

    def _arm(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def _take_fault(self, method: str, path: str) -> Fault | None:
        """The first armed fault hitting this request, consumed once (call with the lock held)."""
        for fault in self.faults:
            if fault.hits(method, path):
                fault.consume()
                return fault
        return None

    # -- request handling ----------------------------------------------------------------------------------------

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        return self._serve(Request(environ))(environ, start_response)

    def _serve(self, request: Request) -> Response:
        """Record, apply faults, route, authenticate, validate, handle; the lock is never held while sleeping, nor
        while what a handler left for after its answer (a redelivery's POST) is done."""
        call, body, body_error = _call_of(request)
        with self._lock:
            generation = self._generation
            self.calls.append(call)
            fault = self._take_fault(call.method, call.path)
        if fault is not None and fault.release is not None:
            fault.release.wait(HOLD_LIMIT)
            fault = None
        elif fault is not None and fault.hold > 0:
            time.sleep(fault.hold)
            fault = None
        trickle = fault.trickle if fault is not None else 0.0
        if trickle:
            fault = None
        after: list[Callable[[], None]] = []
        with self._lock:
            if generation != self._generation:
                response = _error(503, "request dropped: the fake was reset while it was held")
            else:
                response = self._answer(call, body, body_error, fault, after)
            call.status = response.status_code
        for action in after:
            action()
        if trickle:
            data = response.get_data()
            response.response = _trickled(data, trickle / max(len(data), 1))  # Content-Length stays the whole
        return response

    def _answer(
        self,
        call: Call,
        body: Any,
        body_error: str | None,
        fault: Fault | None,
        after: list[Callable[[], None]] | None = None,
    ) -> Response:
        """The answer to a recorded request (call with the lock held)."""
        route = self._route(call, body, body_error)
        if self._outage:
            return _error(503, "Service Unavailable")
        if fault is not None:
            return _json_response(fault.status, fault.body, fault.headers)
        if route is None:
            return _error(404, "Not Found")
        if body_error is not None and route.operation_id != "oauth/access-token":  # that one also takes a form
            return _error(400, "Problems parsing JSON")
        denied = self._authenticate(route, call)
        if denied is not None:
            return denied
        if route.errors:
            return _error(422, "Invalid request.\n\n" + "\n".join(route.errors))
        response = self._handlers[route.operation_id](
            Exchange(call, route.params, body, after if after is not None else [])
        )
        if route.operation is not None:
            self._check_response(call, route.operation, response)
        return response

    def _route(self, call: Call, body: Any, body_error: str | None) -> Route | None:
        """The route of a request, None where nothing serves it; records what makes it invalid."""
        for method, pattern, operation_id in EXTRA_ROUTES:
            found = pattern.fullmatch(call.path)
            if method == call.method and found:
                return Route(operation_id, None, found.groupdict())
        matched = self.subset.match(call.method, call.path)
        if matched is None:
            self._invalid(call, "no operation of the GitHub REST subset matches")
            return None
        operation, params = matched
        if body_error is not None:
            errors = [body_error]
        else:
            errors = self.subset.request_errors(operation, params, call.query, body, call.json is not None)
            errors += self._github_rules(operation.operation_id, body)
        for error in errors:
            self._invalid(call, error)
        if operation.operation_id not in self._handlers:
            self._invalid(call, f"{operation.operation_id} is in the subset but not served by FakeGitHub")
            return None
        return Route(operation.operation_id, operation, params, errors)

    @staticmethod
    def _github_rules(operation_id: str, body: Any) -> list[str]:
        """Limits GitHub enforces that the OpenAPI description does not state."""
        if operation_id == "repos/create-commit-status" and isinstance(body, dict):
            description = body.get("description")
            if isinstance(description, str) and len(description) > STATUS_DESCRIPTION_MAX:
                return [f"body/description: is too long ({len(description)} > {STATUS_DESCRIPTION_MAX} characters)"]
        if operation_id in ("checks/create", "checks/update") and isinstance(body, dict):
            output = body.get("output")
            for field in ("summary", "text"):  # GitHub counts bytes: "... exceeds a maximum bytesize of 65535"
                value = output.get(field) if isinstance(output, dict) else None
                if isinstance(value, str) and len(value.encode()) > CHECK_OUTPUT_MAX_BYTES:
                    return [f"body/output/{field}: exceeds a maximum bytesize of {CHECK_OUTPUT_MAX_BYTES}"]
        return []

    def _invalid(self, call: Call, error: str) -> None:
        self.invalid_requests.append(f"{call.method} {call.path}: {error}")

    def _check_response(self, call: Call, operation: Operation, response: Response) -> None:
        """Record where the fake's own answer does not match the subset's response schema."""
        body = json.loads(response.get_data())
        for error in self.subset.response_errors(operation, response.status_code, body):
            self.invalid_responses.append(f"{call.method} {call.path}: {error}")

    # -- authentication ------------------------------------------------------------------------------------------

    def _authenticate(self, route: Route, call: Call) -> Response | None:
        """None when the request may go on, else GitHub's 401 (or 404 for a repository the token cannot see)."""
        authorization = call.headers.get("authorization", "")
        if route.operation_id in APP_JWT_OPERATIONS:
            problem = self.jwt_problem(authorization)
            return None if problem is None else _error(401, problem)
        if route.operation_id in OAUTH_WEB_OPERATIONS:
            return None  # the handlers check the client id (and secret) themselves
        if route.operation_id in USER_TOKEN_OPERATIONS:
            return None if self._user_of(authorization) is not None else _error(401, "Bad credentials")
        return self._installation_token_problem(authorization, route.params)

    def _user_of(self, authorization: str) -> User | None:
        """The user whose live OAuth token this Authorization header carries, or None."""
        scheme, credential = _credential(authorization)
        issued = self.user_tokens.get(credential) if scheme in ("token", "bearer") else None
        if issued is None or not issued.live():
            return None
        return self.users.get(issued.login.lower())

    def jwt_problem(self, authorization: str) -> str | None:
        """Why this Authorization header is not a valid app JWT (GitHub's wording where known), or None."""
        scheme, credential = _credential(authorization)
        if scheme != "bearer" or not credential:
            return "A JSON web token could not be decoded"
        try:
            claims = jwt.decode(
                credential,
                self.public_key_pem,
                algorithms=["RS256"],
                leeway=JWT_LEEWAY,
                options={"require": ["exp", "iat", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            return (
                "'Expiration time' claim ('exp') must be a numeric value representing the future time at which "
                "the assertion expires"
            )
        except (jwt.ImmatureSignatureError, jwt.InvalidIssuedAtError):
            return "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued"
        except jwt.MissingRequiredClaimError as exc:
            return f"'{exc.claim}' claim is missing"
        except jwt.InvalidTokenError:
            return "A JSON web token could not be decoded"
        if str(claims["iss"]) != self.app_id:
            return "'Issuer' claim ('iss') does not name this GitHub App"
        if claims["exp"] - claims["iat"] > JWT_MAX_LIFETIME:
            return "'Expiration time' claim ('exp') is too far in the future"
        return None

    def _installation_token_problem(self, authorization: str, params: dict[str, str]) -> Response | None:
        scheme, credential = _credential(authorization)
        issued = self.tokens.get(credential) if scheme in ("token", "bearer") else None
        if issued is None or not issued.live() or issued.installation_id not in self.installations:
            return _error(401, "Bad credentials")
        installation = self.installations[issued.installation_id]
        owner, repo = params["owner"], params["repo"]
        if not installation.covers(owner, repo) or (issued.repos is not None and repo.lower() not in issued.repos):
            return _error(404, "Not Found")
        return None

    # -- handlers: app (JWT) ---------------------------------------------------------------------------------------

    def _create_token(self, exchange: Exchange) -> Response:
        installation = self.installations.get(int(exchange.params["installation_id"]))
        if installation is None:
            return _error(404, "Not Found")
        if installation.suspended:
            return _error(403, "This installation has been suspended")
        self.token_exchanges[installation.id] += 1
        asked = (exchange.body or {}).get("repositories")
        repos = installation.repos if asked is None else frozenset(r.lower() for r in asked)
        token = "ghs_" + "".join(
            secrets.choice(string.ascii_letters + string.digits) for _ in range(36 + secrets.randbelow(55))
        )
        expires = (dt.datetime.now(dt.UTC) + self.token_lifetime).replace(microsecond=0)
        self.tokens[token] = IssuedToken(installation.id, expires, repos)
        selection = "all" if repos is None else "selected"
        return _json_response(
            201,
            {
                "token": token,
                "expires_at": expires.strftime(TIME_FORMAT),
                "permissions": dict(APP_PERMISSIONS),
                "repository_selection": selection,
            },
        )

    def _list_installations(self, exchange: Exchange) -> Response:
        return _json_response(200, [self._installation_json(i) for _, i in sorted(self.installations.items())])

    def _get_repo_installation(self, exchange: Exchange) -> Response:
        owner, repo = exchange.params["owner"], exchange.params["repo"]
        found = [i for i in self.installations.values() if i.covers(owner, repo)]
        return _json_response(200, self._installation_json(found[0])) if found else _error(404, "Not Found")

    def _get_org_installation(self, exchange: Exchange) -> Response:
        found = [i for i in self.installations.values() if i.covers(exchange.params["org"])]
        return _json_response(200, self._installation_json(found[0])) if found else _error(404, "Not Found")

    def _list_hook_deliveries(self, exchange: Exchange) -> Response:
        """GET /app/hook/deliveries: newest first, `per_page` at a time (at most 100), from the delivery `cursor`
        names; a Link header with the next page's cursor while there is one, as GitHub pages this list."""
        query = exchange.call.query
        per_page = min(int(query.get("per_page") or PER_PAGE_DEFAULT), PER_PAGE_MAX)
        if per_page < 1:
            return _error(422, "per_page must be at least 1")
        items = sorted(self.hook_deliveries, key=lambda d: (d["delivered_at"], d["id"]), reverse=True)
        wanted = query.get("status")
        if wanted is not None:
            low, high = (200, 399) if wanted == "success" else (400, 599)
            items = [d for d in items if low <= d["status_code"] <= high]
        start = 0
        cursor = query.get("cursor")
        if cursor is not None:
            found = re.fullmatch(r"v1_(\d+)", cursor)
            positions = [i for i, d in enumerate(items) if found and d["id"] == int(found.group(1))]
            if not positions:
                return _error(400, "Invalid cursor")
            start = positions[0]
        page = items[start : start + per_page]
        headers = {}
        if start + per_page < len(items):
            following = {"per_page": str(per_page), "cursor": f"v1_{items[start + per_page]['id']}"}
            if wanted is not None:
                following["status"] = wanted
            headers["Link"] = f'<{self.url}/app/hook/deliveries?{urllib.parse.urlencode(following)}>; rel="next"'
        return _json_response(200, [dict(d) for d in page], headers)

    def _redeliver_hook_delivery(self, exchange: Exchange) -> Response:
        """POST /app/hook/deliveries/{delivery_id}/attempts: recorded; with a target, the event is delivered there once
        answered (202), and that attempt recorded as a delivery of the event."""
        delivery_id = int(exchange.params["delivery_id"])
        [item] = [d for d in self.hook_deliveries if d["id"] == delivery_id] or [None]
        if item is None:
            return _error(404, "Not Found")
        self.redelivery_requests.append(delivery_id)
        target, secret, generation = self.webhook_target, self.webhook_secret, self._generation
        if target is not None:
            exchange.after.append(lambda: self._deliver(target, secret, item, generation))
        return _json_response(202, {})

    def _deliver(self, target: WebhookTarget, secret: str, item: dict[str, Any], generation: int) -> None:
        """POST an event's payload to `target` as GitHub delivers it (signed with `secret`); record the attempt."""
        event, payload = self.hook_payloads[item["guid"]]
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/fake",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": item["guid"],
            "X-GitHub-Hook-ID": "1",
            "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest(),
        }
        try:
            status_code = target(headers, payload)
        except Exception:  # the target did not answer: as GitHub records a delivery it could not make
            status_code = 0
        with self._lock:
            if generation == self._generation:
                self.add_hook_delivery(
                    event, item["action"], status_code=status_code, guid=item["guid"], redelivery=True
                )

    # -- handlers: installation token -------------------------------------------------------------------------------

    def _create_status(self, exchange: Exchange) -> Response:
        body, params = exchange.body, exchange.params
        status = {
            "owner": params["owner"],
            "repo": params["repo"],
            "sha": params["sha"],
            "state": body["state"],
            "description": body.get("description"),
            "context": body.get("context", "default"),
            "target_url": body.get("target_url"),
            "id": next(self._ids),
        }
        self.statuses.append(status)
        self._status_times[status["id"]] = _now()
        return _json_response(201, {**self._status_json(status), "creator": self._bot_user()})

    def _combined_status(self, exchange: Exchange) -> Response:
        owner, repo, ref = exchange.params["owner"], exchange.params["repo"], exchange.params["ref"]
        latest: dict[str, dict[str, Any]] = {}
        for status in self.statuses:
            if _same_repo(status, owner, repo) and status["sha"] == ref:
                latest.pop(status["context"].lower(), None)
                latest[status["context"].lower()] = status
        statuses = list(reversed(latest.values()))
        states = {s["state"] for s in statuses}
        if states & {"error", "failure"}:
            state = "failure"
        elif not statuses or "pending" in states:
            state = "pending"
        else:
            state = "success"
        return _json_response(
            200,
            {
                "state": state,
                "statuses": [self._status_json(s) for s in statuses],
                "sha": ref,
                "total_count": len(statuses),
                "repository": self._repository_json(owner, repo),
                "commit_url": f"{self.url}/repos/{owner}/{repo}/commits/{ref}",
                "url": f"{self.url}/repos/{owner}/{repo}/commits/{ref}/status",
            },
        )

    def _create_check_run(self, exchange: Exchange) -> Response:
        run_id = next(self._ids)
        run = {
            "id": run_id,
            "owner": exchange.params["owner"],
            "repo": exchange.params["repo"],
            "head_sha": exchange.body["head_sha"],
            "name": exchange.body["name"],
            "status": "queued",
            "conclusion": None,
            "output": None,
            "details_url": None,
            "external_id": None,
            "started_at": _now(),
            "completed_at": None,
            "annotations_count": 0,
            "history": [],
        }
        _apply_check_run(run, exchange.body)
        self.check_runs[run_id] = run
        return _json_response(201, self._check_run_json(run))

    def _update_check_run(self, exchange: Exchange) -> Response:
        run = self.check_runs.get(int(exchange.params["check_run_id"]))
        if run is None or not _same_repo(run, exchange.params["owner"], exchange.params["repo"]):
            return _error(404, "Not Found")
        _apply_check_run(run, exchange.body)
        return _json_response(200, self._check_run_json(run))

    def _list_check_runs(self, exchange: Exchange) -> Response:
        """GET /repos/{o}/{r}/commits/{ref}/check-runs: newest first, `filter=latest` (default) one per name."""
        query, params = exchange.call.query, exchange.params
        runs = [
            r
            for r in self.check_runs.values()
            if _same_repo(r, params["owner"], params["repo"])
            and r["head_sha"] == params["ref"]
            and query.get("check_name", r["name"]) == r["name"]
            and query.get("status", r["status"]) == r["status"]
            and query.get("app_id", self.app_id) == self.app_id  # every run here is this App's
        ]
        runs.sort(key=lambda r: r["id"], reverse=True)
        if query.get("filter", "latest") == "latest":
            runs = _newest_per_name(runs)
        return _json_response(200, {"total_count": len(runs), "check_runs": [self._check_run_json(r) for r in runs]})

    def _list_pulls(self, exchange: Exchange) -> Response:
        params = exchange.params
        pulls = [
            p
            for p in self.pull_requests
            if _same_repo(p, params["owner"], params["repo"]) and p["head_sha"] == params["commit_sha"]
        ]
        return _json_response(200, [self._pull_json(p) for p in pulls])

    # -- handlers: the OAuth web flow and the user token -------------------------------------------------------------

    def _oauth_authorize(self, exchange: Exchange) -> Response:
        """GET /login/oauth/authorize: the signed-in user approves (or cancels) at once; back to redirect_uri."""
        query = exchange.call.query
        if query.get("client_id") != self.client_id:
            return _error(404, "Not Found")  # github.com shows its 404 page for an unknown client id
        redirect_uri = query.get("redirect_uri")
        if not redirect_uri:
            return _error(400, "the fake needs redirect_uri (GitHub would use the App's callback URL)")
        if self.oauth_approver is None or self.oauth_approver.lower() not in self.users:
            return _error(403, "nobody is signed in to the fake GitHub: call add_user() and oauth_login_as() first")
        answer: dict[str, str]
        if self.oauth_approves:
            code = secrets.token_hex(10)
            self.oauth_codes[code] = OAuthCode(
                self.users[self.oauth_approver.lower()].login, redirect_uri, dt.datetime.now(dt.UTC)
            )
            answer = {"code": code}
        else:
            answer = {
                "error": "access_denied",
                "error_description": "The user has denied your application access.",
                "error_uri": OAUTH_DOCS_URL,
            }
        if "state" in query:
            answer["state"] = query["state"]
        sep = "&" if "?" in redirect_uri else "?"
        return Response(status=302, headers={"Location": redirect_uri + sep + urllib.parse.urlencode(answer)})

    def _oauth_access_token(self, exchange: Exchange) -> Response:
        """POST /login/oauth/access_token: a code (used once, within 10 minutes) for a user token.

        As on GitHub, failures are 200s with an `error`; JSON when asked for with Accept, else a form body.
        """
        raw = exchange.call.json
        fields = exchange.body if isinstance(exchange.body, dict) else {}
        if not fields and isinstance(raw, str):
            fields = {k: v[-1] for k, v in urllib.parse.parse_qs(raw).items()}
        as_json = "application/json" in exchange.call.headers.get("accept", "")
        if fields.get("client_id") != self.client_id or fields.get("client_secret") != self.client_secret:
            return _oauth_answer(
                as_json,
                {
                    "error": "incorrect_client_credentials",
                    "error_description": "The client_id and/or client_secret passed are incorrect.",
                    "error_uri": OAUTH_DOCS_URL,
                },
            )
        code = self.oauth_codes.pop(str(fields.get("code", "")), None)
        if code is None or dt.datetime.now(dt.UTC) - code.issued_at > OAUTH_CODE_LIFETIME:
            return _oauth_answer(
                as_json,
                {
                    "error": "bad_verification_code",
                    "error_description": "The code passed is incorrect or expired.",
                    "error_uri": OAUTH_DOCS_URL,
                },
            )
        if fields.get("redirect_uri") not in (None, code.redirect_uri):
            return _oauth_answer(
                as_json,
                {
                    "error": "redirect_uri_mismatch",
                    "error_description": (
                        "The redirect_uri MUST match the registered callback URL for this application."
                    ),
                    "error_uri": OAUTH_DOCS_URL,
                },
            )
        token = "ghu_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(36))
        now = dt.datetime.now(dt.UTC)
        answer: dict[str, Any] = {"access_token": token, "token_type": "bearer", "scope": ""}
        if self.expiring_user_tokens:
            answer.update(
                expires_in=int(USER_TOKEN_LIFETIME.total_seconds()),
                refresh_token="ghr_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(76)),
                refresh_token_expires_in=int(REFRESH_TOKEN_LIFETIME.total_seconds()),
            )
        expires = now + USER_TOKEN_LIFETIME if self.expiring_user_tokens else None
        self.user_tokens[token] = UserToken(code.login, expires)
        return _oauth_answer(as_json, answer)

    def _get_authenticated_user(self, exchange: Exchange) -> Response:
        user = self._user_of(exchange.call.headers.get("authorization", ""))
        assert user is not None  # _authenticate let the request through
        return _json_response(200, self._private_user_json(user.login))

    def _get_own_membership(self, exchange: Exchange) -> Response:
        """GET /user/memberships/orgs/{org}: the user's membership (active or pending), or 404 for a non-member."""
        user = self._user_of(exchange.call.headers.get("authorization", ""))
        assert user is not None
        membership = user.memberships.get(exchange.params["org"].lower())
        if membership is None:
            return _error(404, "Not Found")
        return _json_response(200, self._membership_json(user.login, membership))

    # -- GitHub-shaped bodies ----------------------------------------------------------------------------------------

    def _user(self, login: str, account_type: str) -> dict[str, Any]:
        """A simple-user for `login`, from the subset's example (the `creator` of a status)."""
        template = self.subset.examples["status"]["creator"]
        quoted = urllib.parse.quote(login)
        user = {k: v.replace("octocat", quoted) if isinstance(v, str) else v for k, v in template.items()}
        return {
            **user,
            "login": login,
            "id": zlib.crc32(login.lower().encode()),
            "node_id": f"U_{quoted}",
            "type": account_type,
        }

    def _private_user_json(self, login: str) -> dict[str, Any]:
        """The authenticated user as GET /user answers it (the subset's private-user example, renamed)."""
        example = self.subset.examples["private-user-response-with-public-and-private-profile-information"]
        body = copy.deepcopy(example)
        body.update(self._user(login, "User"))
        body.update(name=login, email=None, user_view_type="private")
        return body

    def _membership_json(self, login: str, membership: Membership) -> dict[str, Any]:
        """An org-membership (from the subset's example) of `login` in `membership.org`."""
        body = copy.deepcopy(self.subset.examples["org-membership"])
        org = membership.org
        body.pop("enterprise_teams_providing_indirect_membership", None)
        body.update(
            url=f"{self.url}/orgs/{org}/memberships/{login}",
            state=membership.state,
            role=membership.role,
            organization_url=f"{self.url}/orgs/{org}",
            user=self._user(login, "User"),
        )
        body["organization"].update(
            login=org,
            id=zlib.crc32(org.lower().encode()),
            node_id=f"O_{org}",
            url=f"{self.url}/orgs/{org}",
            repos_url=f"{self.url}/orgs/{org}/repos",
            events_url=f"{self.url}/orgs/{org}/events",
            hooks_url=f"{self.url}/orgs/{org}/hooks",
            issues_url=f"{self.url}/orgs/{org}/issues",
            members_url=f"{self.url}/orgs/{org}/members{{/member}}",
            public_members_url=f"{self.url}/orgs/{org}/public_members{{/member}}",
        )
        return body

    def _bot_user(self) -> dict[str, Any]:
        return self._user(f"{APP_SLUG}[bot]", "Bot")

    def _installation_json(self, installation: Installation) -> dict[str, Any]:
        """An installation as GET /repos/{o}/{r}/installation answers it (from the subset's example)."""
        body = copy.deepcopy(self.subset.examples["installation"])
        account = self._user(installation.login, installation.account_type)
        body.update(
            id=installation.id,
            account=account,
            target_id=account["id"],
            target_type=installation.account_type,
            repository_selection="all" if installation.repos is None else "selected",
            access_tokens_url=f"{self.url}/app/installations/{installation.id}/access_tokens",
            repositories_url=f"{self.url}/installation/repositories",
            html_url=f"https://github.com/organizations/{installation.login}/settings/installations/{installation.id}",
            app_id=int(self.app_id) if self.app_id.isdigit() else 0,
            app_slug=APP_SLUG,
            permissions=dict(APP_PERMISSIONS),
            events=["check_run", "pull_request"],
            suspended_at=_now() if installation.suspended else None,
        )
        return body

    def _status_json(self, status: dict[str, Any]) -> dict[str, Any]:
        """A status as POST /repos/{o}/{r}/statuses/{sha} answers it (also the simple-commit-status of a combined)."""
        created = self._status_times[status["id"]]
        return {
            "url": f"{self.url}/repos/{status['owner']}/{status['repo']}/statuses/{status['sha']}",
            "avatar_url": "https://avatars.githubusercontent.com/in/1?v=4",
            "id": status["id"],
            "node_id": f"SC_{status['id']}",
            "state": status["state"],
            "description": status["description"],
            "target_url": status["target_url"],
            "context": status["context"],
            "created_at": created,
            "updated_at": created,
        }

    def _repository_json(self, owner: str, repo: str) -> dict[str, Any]:
        """A minimal-repository for owner/repo (from the combined-status example)."""
        template = self.subset.examples["combined-commit-status"]["repository"]
        body = {
            k: v.replace("octocat/Hello-World", f"{owner}/{repo}") if isinstance(v, str) else v
            for k, v in template.items()
        }
        return {**body, "name": repo, "full_name": f"{owner}/{repo}", "owner": self._user(owner, "Organization")}

    def _check_run_json(self, run: dict[str, Any]) -> dict[str, Any]:
        """A check run as POST/PATCH .../check-runs answer it."""
        base = f"{self.url}/repos/{run['owner']}/{run['repo']}/check-runs/{run['id']}"
        output = run["output"] or {}
        app = copy.deepcopy(self.subset.examples["check-run"]["app"])
        app.update(id=int(self.app_id) if self.app_id.isdigit() else 0, slug=APP_SLUG, name=APP_SLUG)
        suite = zlib.crc32(f"{run['owner']}/{run['repo']}@{run['head_sha']}".lower().encode())
        return {
            "id": run["id"],
            "head_sha": run["head_sha"],
            "node_id": f"CR_{run['id']}",
            "external_id": run["external_id"] or "",
            "url": base,
            "html_url": f"https://github.com/{run['owner']}/{run['repo']}/runs/{run['id']}",
            "details_url": run["details_url"],
            "status": run["status"],
            "conclusion": run["conclusion"],
            "started_at": run["started_at"],
            "completed_at": run["completed_at"],
            "output": {
                "title": output.get("title"),
                "summary": output.get("summary"),
                "text": output.get("text"),
                "annotations_count": run["annotations_count"],
                "annotations_url": f"{base}/annotations",
            },
            "name": run["name"],
            "check_suite": {"id": suite},
            "app": app,
            "pull_requests": [],
        }

    def _pull_json(self, pull: dict[str, Any]) -> dict[str, Any]:
        """A pull-request-simple (from the subset's example) for a pull request added with add_pull_request."""
        body = copy.deepcopy(self.subset.examples["pull-request-simple-items"][0])
        owner, repo, number = pull["owner"], pull["repo"], pull["number"]
        body.update(
            id=zlib.crc32(f"{owner}/{repo}#{number}".encode()),
            number=number,
            state=pull["state"],
            url=f"{self.url}/repos/{owner}/{repo}/pulls/{number}",
            html_url=f"https://github.com/{owner}/{repo}/pull/{number}",
            title=f"Pull request {number}",
            labels=[],
            milestone=None,
            assignee=None,
            assignees=[],
            requested_reviewers=[],
            requested_teams=[],
        )
        body["head"].update(label=f"{owner}:{pull['head_ref']}", ref=pull["head_ref"], sha=pull["head_sha"])
        body["base"].update(label=f"{owner}:{pull['base_ref']}", ref=pull["base_ref"])
        return body


def _delivery_status(status_code: int) -> str:
    """A delivery's `status` as GitHub words it: "OK", the reason phrase, or why there was no answer."""
    if status_code == 0:
        return "failed to connect"
    return "OK" if 200 <= status_code < 300 else _reason(status_code)


def _same_repo(record: dict[str, Any], owner: str, repo: str) -> bool:
    """Owner and repository names are case-insensitive on GitHub."""
    return record["owner"].lower() == owner.lower() and record["repo"].lower() == repo.lower()


def _newest_per_name(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first run of each name in `runs` (sorted newest first)."""
    newest: dict[str, dict[str, Any]] = {}
    for run in runs:
        newest.setdefault(run["name"], run)
    return list(newest.values())


def _apply_check_run(run: dict[str, Any], body: dict[str, Any]) -> None:
    """A create or update body applied as GitHub does: a conclusion completes the run."""
    for key in ("name", "details_url", "external_id", "status", "conclusion", "started_at", "completed_at"):
        if key in body:
            run[key] = body[key]
    if "output" in body:
        run["output"] = {k: v for k, v in body["output"].items() if k not in ("annotations", "images")}
        run["annotations_count"] += len(body["output"].get("annotations", []))
    if body.get("conclusion") is not None:
        run["status"] = "completed"
        run["completed_at"] = body.get("completed_at") or _now()
    run["history"].append(copy.deepcopy(body))


def _oauth_answer(as_json: bool, body: dict[str, Any]) -> Response:
    """An answer of the token endpoint: always 200, in JSON or (GitHub's default) a form body."""
    if as_json:
        return _json_response(200, body)
    return Response(urllib.parse.urlencode(body), status=200, content_type="application/x-www-form-urlencoded")


def _call_of(request: Request) -> tuple[Call, Any, str | None]:
    """(the Call to record, the parsed JSON body, why the body is not JSON or None)."""
    raw = request.get_data(cache=True)
    body: Any = None
    problem = None
    if raw:
        try:
            body = json.loads(raw)
        except ValueError:
            body, problem = raw.decode("utf-8", "replace"), "the body is not JSON"
    call = Call(
        method=request.method,
        path=request.path,
        query=request.args.to_dict(),
        headers={k.lower(): v for k, v in request.headers.items()},
        json=body,
        at=time.time(),
    )
    return call, (None if problem else body), problem


def github_app_config(fake: FakeGitHub) -> dict[str, str]:
    """App config (create_app overrides) pointing the app's GitHub client at `fake`."""
    return {
        "GITHUB_APP_ID": fake.app_id,
        "GITHUB_PRIVATE_KEY": fake.private_key_pem,
        "GITHUB_API_URL": fake.url,
        "GITHUB_WEBHOOK_SECRET": "webhook-secret",
        "GITHUB_CLIENT_ID": fake.client_id,
        "GITHUB_CLIENT_SECRET": fake.client_secret,
    }
