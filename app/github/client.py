"""githubkit clients: the App (JWT) and its installations, whose tokens githubkit caches until shortly before expiry."""

from __future__ import annotations

import functools
import ssl
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

import httpx
from flask import Flask, current_app
from githubkit import AppAuthStrategy, GitHub
from githubkit.auth.app import AppInstallationAuthStrategy
from githubkit.cache import MemCacheStrategy

if TYPE_CHECKING:
    from app.github.delivery import Circuit


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
    circuit: Circuit | None = None  # the delivery worker's circuit breaker (app.github.delivery), per process
    _installations: dict[int, GitHub] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.app = self._client(AppAuthStrategy(self.app_id, self.private_key))

    def _client(self, auth: AppAuthStrategy | AppInstallationAuthStrategy) -> GitHub:
        # Our own retries (app.github.delivery) replace githubkit's: they survive restarts and honour leases.
        return GitHub(
            auth,
            base_url=self.api_url,
            timeout=self.timeout,
            auto_retry=False,
            http_cache=False,
            cache_strategy=self.cache,
            ssl_verify=tls_context(),
        )

    def installation(self, installation_id: int) -> GitHub:
        """A client acting as the installation; its token is exchanged once and reused until near expiry."""
        with self._lock:
            client = self._installations.get(installation_id)
            if client is None:
                auth = AppAuthStrategy(self.app_id, self.private_key).as_installation(installation_id)
                client = self._installations[installation_id] = self._client(auth)
            return client

    def forget_token(self, installation_id: int) -> None:
        """Drop the cached installation token, so the next call mints a new one (after a 401)."""
        client = self.installation(installation_id)
        flow = client.auth.get_auth_flow(client)
        key = flow._get_installation_cache_key()  # type: ignore[attr-defined]
        self.cache.get_cache_storage().set(key, "", timedelta(0))


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
