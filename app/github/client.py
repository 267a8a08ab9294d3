"""githubkit clients: the App (JWT) and its installations, whose tokens githubkit caches until shortly before expiry."""

from __future__ import annotations

import dataclasses
import email.utils
import functools
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpcore
import httpx
import jwt
from flask import Flask, current_app
from githubkit import AppAuthStrategy, GitHub, Response
from githubkit.auth.app import AppAuth, AppInstallationAuthStrategy
from githubkit.cache import MemCacheStrategy
from githubkit.exception import RequestFailed

from app import metrics

log = logging.getLogger(__name__)

JWT_BACKDATE = timedelta(seconds=60)  # GitHub's advice against clock drift: issue the JWT a minute in the past
JWT_LIFETIME = timedelta(minutes=10)  # GitHub's maximum
JWT_TIME_ERRORS = ("'Issued at' claim", "'Expiration time' claim")  # GitHub's words for a JWT whose times are off


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class _SkewAwareAppAuth(AppAuth):
    """githubkit's App auth flow, with the JWT's times taken on GitHub's clock (ours plus the offset learnt)."""

    offset: Callable[[], timedelta] = lambda: timedelta(0)

    def _create_jwt(self) -> str:
        issued = utcnow() + self.offset() - JWT_BACKDATE
        claims = {"iss": self.issuer, "iat": issued, "exp": issued + JWT_LIFETIME}
        return jwt.encode(claims, self.private_key, algorithm="RS256")


@dataclass
class _AppStrategy(AppAuthStrategy):
    offset: Callable[[], timedelta] = lambda: timedelta(0)

    def get_auth_flow(self, github: Any) -> httpx.Auth:
        return _SkewAwareAppAuth(
            github, self.app_id, self.private_key, self.client_id, self.client_secret, offset=self.offset
        )


@dataclass
class _InstallationStrategy(AppInstallationAuthStrategy):
    offset: Callable[[], timedelta] = lambda: timedelta(0)

    def get_auth_flow(self, github: Any) -> _SkewAwareAppAuth:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(AppInstallationAuthStrategy)}
        return _SkewAwareAppAuth(github, **fields, offset=self.offset)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's default TLS context, built once per process: githubkit opens a new httpx client for every call,
    and loading the CA bundle each time cost ~25 ms per GitHub call (most of the worker's time)."""
    return httpx.create_ssl_context()


@dataclass
class GitHubApp:
    """One per process: the App client, and one client per installation sharing its token cache."""

    app_id: str
    private_key: str
    api_url: str
    timeout: float = 10.0
    cache: MemCacheStrategy = field(default_factory=MemCacheStrategy)
    # The outbox worker's circuit breaker of this process (app.github.posting.Circuit), kept here as it lives as long.
    circuit: object | None = None
    clock_offset: timedelta = timedelta(0)  # GitHub's clock minus ours, learnt when GitHub refused a JWT's times
    _installations: dict[int, GitHub[_InstallationStrategy]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.app = self._client(_AppStrategy(self.app_id, self.private_key, offset=self._offset))

    def _offset(self) -> timedelta:
        return self.clock_offset

    def _client(self, auth: AppAuthStrategy | AppInstallationAuthStrategy) -> GitHub:
        return new_client(auth, self.api_url, self.timeout, self.cache)

    def installation(self, installation_id: int) -> GitHub[_InstallationStrategy]:
        """A client acting as the installation; its token is exchanged once and reused until near expiry."""
        with self._lock:
            client = self._installations.get(installation_id)
            if client is None:
                auth = _InstallationStrategy(self.app_id, self.private_key, installation_id, offset=self._offset)
                client = self._installations[installation_id] = self._client(auth)
            return client

    def forget_token(self, installation_id: int) -> None:
        """Drop the cached installation token, so the next call mints a new one (after a 401)."""
        client = self.installation(installation_id)
        flow = client.auth.get_auth_flow(client)
        key = flow._get_installation_cache_key()
        self.cache.get_cache_storage().set(key, "", timedelta(0))

    def learn_clock(self, response: Response[Any, Any]) -> bool:
        """After GitHub refused a JWT for its times: take GitHub's clock from the answer's Date header, so the next
        JWT is issued on it, and drop the cached one. False when the answer says nothing of the kind."""
        if response.status_code != 401 or not any(words in response.text for words in JWT_TIME_ERRORS):
            return False
        try:
            github_now = email.utils.parsedate_to_datetime(response.headers["date"])
        except (KeyError, TypeError, ValueError):
            return False
        self.clock_offset = github_now - utcnow()
        log.warning("github.jwt.clock_skew offset=%.0fs", self.clock_offset.total_seconds())
        key = AppAuth.JWT_CACHE_KEY.format(issuer=self.app_id)
        self.cache.get_cache_storage().set(key, "", timedelta(0))
        return True


def new_client(auth: Any, api_url: str, timeout: float, cache: Any = None) -> GitHub[Any]:
    """Every githubkit client the app makes (the App's, its installations', a signed-in user's): one set of options.

    No retries by githubkit: ours (the outbox worker's) survive restarts and honour leases, and a person signing in
    is better told at once. No redirects followed. No HTTP cache; TLS by the system's trust store (tls_context).
    Every exchange is counted
    in fremforge_github_requests_total: each answer by its status (the response hook, proxied ones included), each
    request that got none as `error` (the transport). `timeout` bounds each request whole, its answer read to the
    end (the transport): httpx's own timeouts are per read, and an answer that trickles in never trips them.
    """
    return GitHub(
        auth,
        base_url=api_url,
        timeout=timeout,
        auto_retry=False,
        follow_redirects=False,  # a POST redirected would become a GET, its 200 taken for the post (app.github.posting)
        http_cache=False,
        cache_strategy=cache,
        ssl_verify=tls_context(),
        transport=CountingTransport(timeout),
        event_hooks={"response": [_count_answer]},
    )


def _count_answer(response: httpx.Response) -> None:
    metrics.github_request(str(response.status_code))


class CountingTransport(httpx.BaseTransport):
    """httpx's own transport (TLS by tls_context), counting the requests that got no answer, each request ending
    within `total` seconds, its answer read to the end (`_DeadlineBackend`).

    githubkit makes an httpx client per call (or per `with` block) and closes it after, closing its transport; this
    one is shared by every client of one githubkit client, so it keeps a pool per thread and closes only the calling
    thread's: each call still gets a pool of its own, as it did with httpx's default transport.
    """

    def __init__(self, total: float) -> None:
        self.total = total
        self._local = threading.local()

    def _pool(self) -> httpx.HTTPTransport:
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = httpx.HTTPTransport(verify=tls_context())
            # httpx's transport with its connection pool's network made deadline-aware (the pool's other settings
            # are httpx's defaults, as HTTPTransport makes them; the attribute is private: tests/test_github_client.py)
            pool._pool = httpcore.ConnectionPool(
                ssl_context=tls_context(),
                max_connections=100,
                max_keepalive_connections=20,
                keepalive_expiry=5.0,
                network_backend=_DeadlineBackend(),
            )
        return pool

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        _deadline.at = time.monotonic() + self.total  # the answer's body is read on this thread, by this deadline
        try:
            return self._pool().handle_request(request)
        except Exception:
            metrics.github_request("error")
            raise

    def close(self) -> None:
        pool = getattr(self._local, "pool", None)
        self._local.pool = None
        if pool is not None:
            pool.close()


# When the calling thread's GitHub request must be over (time.monotonic()): set as each request starts, read by
# every socket operation of its connection (its answer's body too, read after the transport returned it).
_deadline = threading.local()


def _within(timeout: float | None, late: type[Exception]) -> float | None:
    """A socket operation's timeout, cut to what is left of the request's time; `late` raised when none is left."""
    at = getattr(_deadline, "at", None)
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise late("the GitHub request took longer than its timeout")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the request's deadline: an answer sent a byte at a time,
    each within httpx's per-read timeout, still ends the call at the timeout (a read timeout, retried)."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _within(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _within(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        inner = self._stream.start_tls(ssl_context, server_hostname, _within(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(inner)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's own sockets, as `_DeadlineStream`s."""

    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        within = _within(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_tcp(host, port, within, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        within = _within(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_unix_socket(path, within, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def github_message(exc: RequestFailed) -> str | None:
    """GitHub's own message for a failed call (its JSON body's `message`), at most 300 characters; None if none."""
    try:
        body = exc.response.json()
    except ValueError:
        return None
    text = str(body.get("message") or "") if isinstance(body, dict) else ""
    return text[:300] or None


def web_base_url(api_url: str) -> str:
    """Where GitHub's web pages (the OAuth authorize page and token endpoint) are, from its REST API base URL.

    https://api.github.com -> https://github.com; GitHub Enterprise Server's https://HOST/api/v3 -> https://HOST;
    anything else (a test double) serves both from the same base. githubkit derives the token endpoint the same way.
    """
    api = api_url.rstrip("/")
    if re.fullmatch(r"https://api\.github\.com", api, re.IGNORECASE):
        return "https://github.com"
    return api.removesuffix("/api/v3")


def init_app(app: Flask) -> None:
    if app.config["GITHUB_APP_CONFIGURED"]:
        app.extensions["fremforge.github"] = GitHubApp(
            str(app.config["GITHUB_APP_ID"]),
            app.config["GITHUB_PRIVATE_KEY"],
            app.config["GITHUB_API_URL"],
            float(app.config.get("GITHUB_TIMEOUT_SECONDS") or 10),
        )


def github_app() -> GitHubApp | None:
    """The GitHub App of this process, or None when none is configured."""
    return current_app.extensions.get("fremforge.github")
