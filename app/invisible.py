"""Invisible format characters (bidi overrides, zero-width characters, soft hyphen, BOM...): the one definition, by
which GitHub's output drops them (app.github.checks) and every page shows them as a marker (`show`)."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from markupsafe import Markup

# Unicode's format characters (Cf: the bidi controls U+202A-U+202E, U+2066-U+2069 and U+061C, U+200B-U+200F, U+2060,
# U+FEFF, U+00AD...) and lone surrogates (Cs). They draw nothing themselves, but reorder, join or hide what is around
# them: "ghcr.io/acme/\u202e0.1:ipa" reads as "ghcr.io/acme/api:1.0".
CATEGORIES = ("Cf", "Cs")
ZWJ = "\u200d"
_EMOJI_PRESENTATION = "\ufe0f"
_SKIN_TONES = ("\U0001f3fb", "\U0001f3ff")  # emoji modifiers (Sk), first and last
_NON_ASCII = re.compile(r"[^\x00-\x7f]")  # no ASCII character is a format character


def is_invisible(text: str, at: int) -> bool:
    """Whether text[at] is an invisible format character (CATEGORIES). One is not: a ZERO WIDTH JOINER inside an emoji
    sequence, after an emoji, its skin tone or its U+FE0F and before an emoji (woman ZWJ laptop is one technologist,
    white flag U+FE0F ZWJ rainbow one rainbow flag). There it joins two pictures into one and can reorder or hide
    nothing; marked, such an emoji would read as noise, and a token name may hold one."""
    ch = text[at]
    if unicodedata.category(ch) not in CATEGORIES:
        return False
    if ch != ZWJ or at == 0 or at + 1 == len(text):
        return True
    before, after = text[at - 1], text[at + 1]
    emoji_before = (
        unicodedata.category(before) == "So"
        or before == _EMOJI_PRESENTATION
        or _SKIN_TONES[0] <= before <= _SKIN_TONES[1]
    )
    return not (emoji_before and unicodedata.category(after) == "So")


def marker(ch: str) -> str:
    """How a page shows an invisible format character: its code point, "[U+202E]" (no character HTML gives a meaning,
    so escaping leaves it as it is)."""
    return f"[U+{ord(ch):04X}]"


def show(value: Any) -> Any:
    """`value` with each invisible format character written as its marker: the Jinja environment's `finalize`, which
    every `{{ ... }}` of every page goes through before it is escaped. Anything but a string is left alone, and so is a
    string with none (ASCII, or printable: one pass in C each); Markup stays Markup."""
    if not isinstance(value, str) or value.isascii() or value.isprintable():
        return value
    marked = _NON_ASCII.sub(_mark, value)
    return Markup(marked) if isinstance(value, Markup) else marked


def _mark(match: re.Match[str]) -> str:
    ch = match.group()
    return marker(ch) if is_invisible(match.string, match.start()) else ch
