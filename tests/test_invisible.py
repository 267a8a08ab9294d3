"""Invisible format characters: the rule (app.invisible), and every page showing an uploaded one as a marker."""

from __future__ import annotations

import unicodedata

import pytest
from flask import Flask, render_template_string
from flask.testing import FlaskClient
from markupsafe import Markup

from app import invisible
from app.github import checks
from tests.conftest import admin_login
from tests.factories import SHA, finding, make_org, make_token, post, seed

SECTION = "/admin/orgs/acme/code-security/image-scanning"
EMOJI_SEQUENCES = ("👩\u200d💻", "🏳\ufe0f\u200d🌈", "👩🏽\u200d💻")  # technologist, rainbow flag, with a skin tone


# Bidi controls, zero-width characters, word joiner, BOM, soft hyphen, a tag character, a lone surrogate.
FORMAT_CHARACTERS = "\u202a\u202e\u2066\u2069\u061c\u200b\u200c\u200d\u200e\u200f\u2060\ufeff\u00ad\U000e0041\ud800"


@pytest.mark.parametrize("ch", list(FORMAT_CHARACTERS))
def test_format_characters_and_surrogates_are_invisible(ch: str) -> None:
    assert unicodedata.category(ch) in ("Cf", "Cs")
    assert invisible.is_invisible(f"a{ch}b", 1)
    assert invisible.show(f"a{ch}b") == f"a[U+{ord(ch):04X}]b"


@pytest.mark.parametrize("text", ["ascii", "é · … 日本", "a\u00a0b", "tab\there\n", *EMOJI_SEQUENCES])
def test_what_draws_something_is_left_as_it_is(text: str) -> None:
    assert invisible.show(text) == text
    assert not any(invisible.is_invisible(text, at) for at in range(len(text)))


@pytest.mark.parametrize(
    "text", ["a\u200db", "\u200d👩", "👩\u200d", "👩\u200d\u200d💻", "👩\u200da", "\u202e\u200d💻"]
)
def test_a_joiner_outside_an_emoji_sequence_is_invisible(text: str) -> None:
    assert "[U+200D]" in invisible.show(text)


def test_show_leaves_non_strings_alone_and_keeps_markup_safe() -> None:
    for value in (None, 3, 2.5, ["\u202e"], b"\xe2\x80\xae"):
        assert invisible.show(value) is value
    plain = "ghcr.io/acme/api:1"
    assert invisible.show(plain) is plain  # the fast path: nothing built
    shown = invisible.show(Markup("<b>\u202eab</b>"))
    assert isinstance(shown, Markup) and shown == Markup("<b>[U+202E]ab</b>")


def test_finalize_runs_before_autoescape(app: Flask) -> None:
    """Jinja compiles {{ x }} as escape(finalize(x)): the marker is escaped like any text, Markup is not."""
    assert app.jinja_env.finalize is invisible.show
    with app.test_request_context():
        assert render_template_string("{{ x }}", x="<\u202e>") == "&lt;[U+202E]&gt;"
        assert render_template_string("{{ x }}", x=Markup("<i>\u2066</i>")) == "<i>[U+2066]</i>"
        assert render_template_string("{{ x }}", x="\u202e".join("ab")) == "a[U+202E]b"


# -- every page an uploaded string reaches --------------------------------------------------------------------------

IMAGE_REF = "ghcr.io/acme/\u202e0.1:ipa"  # reads as "ghcr.io/acme/api:1.0"
HOSTILE = [
    finding(
        "CVE-2024-0001",
        "critical",
        package="lib\u200bssl",
        installed="1.0\u00ad.1",
        fixed="1.0.\u20662",
        title="🏳\ufe0f\u200d🌈 \u2066evil\u2069 title \u202ecilbup",
        target="/usr/lib/\u202eos.3",
    ),
    finding("CVE-2024-0002", "high", package="👩\u200d💻-tools\ufeff", installed="2\u2060.0", fixed="2.1"),
]
MARKERS = ["[U+202E]", "[U+200B]", "[U+00AD]", "[U+2066]", "[U+2069]", "[U+FEFF]", "[U+2060]"]


def raw_invisible(html: str) -> list[str]:
    """Every invisible format character left in `html` (an emoji's joiner is not one)."""
    return [f"U+{ord(html[at]):04X}" for at in range(len(html)) if invisible.is_invisible(html, at)]


def test_every_page_shows_uploaded_format_characters_as_markers(app: Flask, client: FlaskClient) -> None:
    """Review: a bidi override in an image ref reached the scans list as is, so "ghcr.io/acme/\\u202e0.1:ipa" read
    as "ghcr.io/acme/api:1.0" beside the real image; titles, packages, targets and versions the same elsewhere."""
    make_org(app, "acme", "acme-gh")
    token = make_token(app, "acme")
    r = post(client, token, seed(HOSTILE, image_ref=IMAGE_REF, repo="acme-gh/api"))
    assert r.status_code == 202, r.get_json()
    admin_login(app, client)
    pages = {
        "scans": SECTION,
        "scan": f"{SECTION}/scans/{r.get_json()['scan_run_id']}",
        "commit": f"{SECTION}/commits/{SHA}?repo=acme-gh/api",
        "images": f"{SECTION}/images",
        "image": f"{SECTION}/images/1",
        "advisory": f"{SECTION}/advisories?q=CVE-2024-0001",
    }
    shown = {}
    for name, url in pages.items():
        response = client.get(url)
        assert response.status_code == 200, (name, response.status_code)
        html = response.get_data(as_text=True)
        assert raw_invisible(html) == [], name
        assert "ghcr.io/acme/[U+202E]0.1:ipa" in html, name  # the image ref on every one of them
        shown[name] = html
    scan = shown["scan"]  # the page listing the findings: every field
    for mark in MARKERS:
        assert mark in scan, mark
    assert "lib[U+200B]ssl" in scan and "1.0[U+00AD].1" in scan and "/usr/lib/[U+202E]os.3" in scan
    assert "🏳\ufe0f\u200d🌈" in scan and "👩\u200d💻-tools[U+FEFF]" in scan  # an emoji kept whole
    assert "lib[U+200B]ssl" in shown["advisory"] and "1.0.[U+2066]2" in shown["advisory"]


def test_github_output_drops_what_the_pages_mark() -> None:
    """One definition: what a page marks, the check run and commit status drop; an emoji's joiner both keep (and a
    cut field never ends in one, which would join nothing)."""
    assert checks.one_line(IMAGE_REF) == "ghcr.io/acme/0.1:ipa"
    assert checks.one_line("a\u200db 👩\u200d💻 \u2066x\u2069") == "ab 👩\u200d💻 x"
    assert checks.one_line("ab 👩\u200d💻x", 6) == "ab 👩…"
