"""A small webhook router keyed by (event, action), composed from one router per event family."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.web.urls import Urls


@dataclass(frozen=True)
class Context:
    """What a handler may need beyond the payload, given by the view: handlers read no request or app config."""

    urls: Urls  # the app's URLs, for what is queued to post to GitHub
    deliver: bool  # a GitHub App is configured: queued work will be posted


# A handler does database work only (no GitHub call) inside the caller's write transaction. It returns
# None when it did its work, or the status to answer with: "queued" (work left for the worker) or
# "ignored" (the event does not concern us, e.g. an account with no org here).
Handler = Callable[[Session, dict[str, Any], Context], str | None]


class BadPayload(ValueError):
    """A correctly signed payload that lacks a field its handler needs (answered 400, nothing stored)."""


class Router:
    """Maps (event, action) to one handler; events without an action (ping) are keyed (event, None)."""

    def __init__(self, *routers: Router) -> None:
        self._routes: dict[tuple[str, str | None], Handler] = {}
        for other in routers:
            for key, handler in other._routes.items():
                self._add(key, handler)

    def register(self, event: str, *actions: str) -> Callable[[Handler], Handler]:
        """Decorator: route `event` with each of `actions` (or, with none given, the action-less event)."""

        def decorate(handler: Handler) -> Handler:
            for action in actions or (None,):
                self._add((event, action), handler)
            return handler

        return decorate

    def _add(self, key: tuple[str, str | None], handler: Handler) -> None:
        if key in self._routes:
            raise ValueError(f"webhook {key} is routed twice")
        self._routes[key] = handler

    def handler_for(self, event: str, action: str | None) -> Handler | None:
        return self._routes.get((event, action))

    def routes(self) -> set[tuple[str, str | None]]:
        return set(self._routes)

    def routed_events(self) -> set[str]:
        """The events some handler takes: what the app must receive (see app.yml's default_events)."""
        return {event for event, _ in self._routes}


def get(payload: dict[str, Any], *path: str) -> Any:
    """payload[a][b]... or None where a level is missing or not an object (examples differ in what they carry).

    A string holding a NUL character is a BadPayload: no column can store it on PostgreSQL (SQLite would), and a
    delivery must be refused alike on both (GitHub's own payloads hold none)."""
    value: Any = payload
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    if isinstance(value, str) and "\x00" in value:
        raise BadPayload(f"{'.'.join(path)} contains a NUL character")
    return value


def need_str(payload: dict[str, Any], *path: str) -> str:
    value = get(payload, *path)
    if not isinstance(value, str) or not value:
        raise BadPayload(f"{'.'.join(path)} must be a non-empty string")
    return value


def need_int(payload: dict[str, Any], *path: str, below: int = 2**63) -> int:
    value = get(payload, *path)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < below:
        raise BadPayload(f"{'.'.join(path)} must be a positive integer")
    return value


def installation_id(payload: dict[str, Any]) -> int | None:
    """The installation the delivery is for; None when the payload has none (older examples, ping)."""
    value = get(payload, "installation", "id")
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63 else None
