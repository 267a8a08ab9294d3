"""Keyset cursors over ids, as every list of the API and the admin pages gives them out: opaque, tied to the kind
of list (a scans cursor is no exceptions cursor), and checked when they come back."""

from __future__ import annotations

import base64
import binascii

from app.fields import MAX_INT32
from app.web.errors import ApiError


class BadCursor(ValueError):
    """A cursor this app did not give out (tampered, or of another list)."""


def encode(kind: str, row_id: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{row_id}".encode()).decode().rstrip("=")


def decode(kind: str, cursor: str, largest: int = MAX_INT32) -> int:
    """The id a cursor of `kind` names. Ids are 32-bit integers (PostgreSQL `integer`), findings' 64-bit (pass
    `largest=MAX_INT64`): a larger one is no cursor this app gave out."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        found, _, value = text.partition(":")
        if found != kind or not (value.isascii() and value.isdigit()) or len(value) > 19 or int(value) > largest:
            raise ValueError
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadCursor(cursor) from None


def bad_cursor() -> ApiError:
    """422 for a `cursor` this API did not give out."""
    return ApiError(
        422,
        "validation_failed",
        "The cursor is not one this API gave out.",
        [{"path": "cursor", "in": "query", "code": "cursor", "message": "is not valid"}],
    )


def encode_key(kind: str, text: str, number: int) -> str:
    """A cursor over a list keyed by (text, number), such as the advisory search's (advisory id, seq)."""
    return encode(kind, number) + "." + base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_key(kind: str, cursor: str, largest: int = MAX_INT32, longest: int = 1024) -> tuple[str, int]:
    """The (text, number) a cursor of encode_key names; BadCursor if it is none this app gave out."""
    number_part, dot, text_part = cursor.partition(".")
    if not dot:
        raise BadCursor(cursor)
    number = decode(kind, number_part, largest)
    try:
        text = base64.urlsafe_b64decode(text_part + "=" * (-len(text_part) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadCursor(cursor) from None
    if not text or len(text) > longest or "\x00" in text:
        raise BadCursor(cursor)
    return text, number
