"""The one builder of the app's own URLs: the admin pages GitHub links back to and the OAuth callback."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from flask import current_app, request

LOCAL_URL = "http://127.0.0.1:8000"  # where `make run` serves, for links made outside a request without PUBLIC_URL


@dataclass(frozen=True)
class Urls:
    """The app's URLs under `base_url` (FREMFORGE_PUBLIC_URL, else the request's own origin)."""

    base_url: str

    def section(self, slug: str) -> str:
        """The org's Admin → Code security → Image scanning page."""
        return f"{self.base_url}/admin/orgs/{quote(slug)}/code-security/image-scanning"

    def scan(self, slug: str, scan_id: int) -> str:
        return f"{self.section(slug)}/scans/{scan_id}"

    def commit(self, slug: str, repo: str, sha: str) -> str:
        return f"{self.section(slug)}/commits/{sha}?repo={quote(repo, safe='')}"

    def advisory_search(self, slug: str, advisory_id: str) -> str:
        """The org's advisory search page for one id (every image whose latest scan has it); the id percent-encoded,
        so it is a query value and nothing more."""
        return f"{self.section(slug)}/advisories?q={quote(advisory_id, safe='')}"

    def oauth_callback(self) -> str:
        """The GitHub App's registered callback URL."""
        return f"{self.base_url}/admin/oauth/callback"


def for_request() -> Urls:
    """The URLs as this request's answer gives them: under PUBLIC_URL when set; else, with a GitHub App configured
    (development: production needs PUBLIC_URL), where `make run` serves, since they may be posted to GitHub and a
    request's Host header is the client's to choose; else under the request's host."""
    public = current_app.config.get("PUBLIC_URL")
    if public:
        return Urls(public)
    if current_app.config.get("GITHUB_APP_CONFIGURED"):
        return configured()
    return Urls(request.host_url.rstrip("/"))


def configured() -> Urls:
    """The URLs outside a request (the CLI, the worker): under PUBLIC_URL, else where `make run` serves."""
    return Urls(current_app.config.get("PUBLIC_URL") or LOCAL_URL)
