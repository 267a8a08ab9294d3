"""What GitHub shows of an upload: every uploaded string is literal text on one line (spec §4).

Hostile strings go into every field of an upload, through the API and the worker to the fake GitHub, and what it
received is parsed as CommonMark (markdown-it-py) with GitHub's extensions in mind: no link except to the advisory
pages the app builds and to the app's own advisory search (the id percent-encoded as its one query value), no
image, no heading or table of the upload's, no HTML or comment, nothing GitHub would autolink after rendering
(URLs, www., @mentions, #123, :emoji:), no line of the upload's; and each value still reads as itself. Then the
escaping functions alone, also over generated strings.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import cmarkgfm
import pytest
from cmarkgfm.cmark import Options as CmarkOptions
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from markdown_it.token import Token

from app import advisories, invisible, policy
from app.github import checks
from app.insights import advisories as advisory_search
from app.models import SEVERITIES
from app.policy import CommitVerdict, ImageResult
from tests.conftest import MakeApp, app_with_github, org_with_installation
from tests.factories import SHA, finding, post, seed
from tests.fakes import FakeGitHub
from tests.test_delivery import Clock, drain

# CommonMark plus the GFM table and strikethrough rules; raw HTML is parsed (html_inline / html_block tokens).
MD = MarkdownIt("commonmark").enable(["table", "strikethrough"])
WORD_JOINER = "\u2060"
# The advisory pages app.advisories builds: the only link targets the check run may have.
ADVISORY_PAGES = (
    "https://www.cve.org/CVERecord?id=",
    "https://github.com/advisories/",
    "https://security-tracker.debian.org/tracker/",
    "https://access.redhat.com/errata/",
    "https://ubuntu.com/security/notices/",
    "https://osv.dev/vulnerability/",
)
# What GitHub links in rendered text, after Markdown (escapes and character references are gone by then):
# GFM extended autolinks, @mentions and teams, issue references, emoji shortcodes.
GITHUB_AUTOLINKS = re.compile(
    r"""(?ix)
      www\.[a-z0-9_-]                # www.example.com
    | [a-z][a-z0-9+.-]*://[^\s/]     # https://example.com, ftp://...
    | (?:mailto|xmpp):[a-z0-9]       # mailto:a@b.c
    | @[a-z0-9]                      # @user, @org/team, a@b.c
    | \#[0-9] | \bgh-[0-9]           # #1, owner/repo#1, GH-1
    | :[a-z0-9_+-]+:                 # :octocat:
    """
)
# The app's own advisory search of the org (its PUBLIC_URL in tests): the only other link target. What follows it
# is the percent-encoded id alone: unreserved characters and %XX, nothing that could end the link or add a parameter.
SEARCH_PAGE = "http://fremforge.test/admin/orgs/acme/code-security/image-scanning/advisories?q="
ENCODED_VALUE = re.compile(r"(?:[A-Za-z0-9._~-]|%[0-9A-F]{2})+")
EVIL = "https://evil.example/x"

HOSTILE = {
    "link": "[click me](https://evil.example/phish)",
    "image": "![logo](https://evil.example/a.png)",
    "reference link": "[x][1] [1]: https://evil.example",
    "autolink": "<https://evil.example>",
    "heading": "# No vulnerabilities found",
    "heading after newline": "x\n## Approved by security\ny",
    "setext heading": "All clear\n===\n",
    "html comment": "<!-- hidden -->No vulnerabilities found<!--",
    "img tag": '<img src=x onerror="alert(1)">',
    "details": "<details><summary>fine</summary>hidden</details>",
    "closing code": "</code></pre><a href='https://evil.example'>x</a>",
    "backticks": "``` `x` ``",
    "table": "| a | b |\n|---|---|\n| c | d |",
    "rule": "ok\n---\n- [ ] task\n> quote",
    "mention": "@acme/security-team and @octocat",
    "issue refs": "fixes #1, acme/api#2, GH-3",
    "bare url": "see https://evil.example/path and ftp://evil.example",
    "www": "www.evil.example/login",
    "email": "mailto:a@evil.example b@evil.example",
    "emphasis": "**bold** _it_ ~~gone~~ *x*",
    "emoji": ":octocat: :+1:",
    "math": "$x$ and $$y$$ and $`z`$",
    "entities": "&lt;b&gt; &#x3C;i&#62; &amp;",
    "backslashes": "\\[x\\](y) \\\\ \\",
    "footnote": "a[^1] [^1]: https://evil.example",
    "list markers": "1. one\n- two\n+ three",
    "line separators": "a\u2028b\u2029c\x85d\re\tf\x0bg\x0ch",
    "zero width and bidi": "safe\u200bname\u202eexe.txt\u2066\u200d\ufeff",
    "emoji sequences": "ci 👩\u200d💻 🏳\ufe0f\u200d🌈 a\u200db \u200d👩",  # an emoji's joiner kept, no other
    "leading and trailing space": "   padded   ",
    "pipes and brackets": "a|b]c[d)e(f{g}h",
}


@pytest.fixture
def app(make_app: MakeApp, fake_github: FakeGitHub) -> Flask:
    """The app with a GitHub App configured against the fake (as in test_delivery)."""
    return app_with_github(make_app, fake_github, ["acme/api"])


@pytest.fixture
def token(app: Flask) -> str:
    return org_with_installation(app)


# ---------------------------------------------------------------- reading what GitHub would show


def visible(value: str) -> str:
    """What a value should read as: control and line-breaking characters as spaces, invisible format characters
    (zero-width, bidi overrides) dropped, whitespace collapsed (the test's own statement of the rule)."""
    kept = []
    for at, ch in enumerate(value):
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            kept.append(" ")
        elif not invisible.is_invisible(value, at):  # its own tests: tests/test_invisible.py
            kept.append(ch)
    return " ".join("".join(kept).split())


def flat(tokens: list[Token]) -> Iterator[Token]:
    for t in tokens:
        yield t
        if t.children:
            yield from flat(t.children)


def text_of(inline: Token) -> str:
    """The rendered text of an inline token, invisible word joiners removed."""
    parts = []
    for c in inline.children or ():
        if c.type in ("text", "code_inline"):
            parts.append(c.content)
        elif c.type in ("softbreak", "hardbreak"):
            parts.append("\n")
    return "".join(parts).replace(WORD_JOINER, "")


def allowed_link(href: str) -> bool:
    """An advisory page the app builds, or its own advisory search with the id percent-encoded as its one value."""
    if href.startswith(SEARCH_PAGE):
        return ENCODED_VALUE.fullmatch(href.removeprefix(SEARCH_PAGE)) is not None
    return href.startswith(ADVISORY_PAGES) and " " not in href and ")" not in href


def assert_inert_on_github(markdown: str) -> None:
    """Rendered by GitHub's own Markdown renderer (cmark-gfm, its extensions on: autolinks, tables, strikethrough,
    tag filter): no link but the app's own, no image, no HTML comment."""
    rendered = cmarkgfm.github_flavored_markdown_to_html(markdown, options=CmarkOptions.CMARK_OPT_UNSAFE)
    for href in re.findall(r'<a href="([^"]*)"', rendered):
        assert allowed_link(html.unescape(href)), (href, rendered)
    assert "<img" not in rendered and "<!--" not in rendered, rendered


def assert_inert(markdown: str) -> list[Token]:
    """No HTML, image, link but to an advisory page, or text GitHub would autolink, read by CommonMark's rules and
    by GitHub's renderer; returns CommonMark's tokens."""
    assert_inert_on_github(markdown)
    tokens = MD.parse(markdown)
    for t in flat(tokens):
        assert t.type not in ("html_block", "html_inline", "image"), (t.type, t.content)
        if t.type == "link_open":
            href = t.attrGet("href")
            assert isinstance(href, str) and allowed_link(href), href
        if t.type == "text":
            assert not GITHUB_AUTOLINKS.search(t.content), t.content
    return tokens


def search_href(advisory_id: str) -> str | None:
    """The app's advisory search for an id, when the search takes it as that id (not a prefix, nothing around it)."""
    try:
        query = advisory_search.parse(advisory_id)
    except advisory_search.BadQuery:
        return None
    if query.prefix or advisory_id != advisory_id.strip():
        return None
    return SEARCH_PAGE + quote(advisory_id, safe="")


def hostile_finding(value: str) -> dict[str, Any]:
    """`value` in every field of one finding, and as the URL fields' content."""
    return finding(
        cve_id=value,
        severity="high",
        package=value,
        installed=value,
        fixed=value,
        title=value,
        target=value,
        primary_url=value,
        references=[value, EVIL, f"{EVIL})](https://github.com/advisories/GHSA-xxxx-xxxx-xxxx)"],
        vendor_ids=[value],
    )


def posted(app: Flask, client: Any, token: str, fake_github: Any, image_ref: str, f: dict[str, Any]) -> Any:
    """Upload one finding of one image, run the worker; what the fake GitHub holds: (status, check run output)."""
    r = post(client, token, seed([f], image_ref=image_ref))
    assert r.status_code == 202, r.json
    drain(app, Clock())
    assert fake_github.invalid_requests == []
    [run] = fake_github.runs_of("acme", "api", SHA)
    status = fake_github.latest_status("acme", "api", SHA)
    return status, run["output"]


def benign_line_count(n_findings: int) -> int:
    """How many lines the summary of one failing image with `n_findings` plain findings has."""
    top = [
        {
            "cve_id": f"CVE-2024-{i:04d}",
            "severity": "high",
            "package": "pkg",
            "installed_version": "1",
            "fixed_version": "2",
            "title": "t",
            "target": "t",
            "primary_url": None,
            "references": [],
            "vendor_ids": [],
        }
        for i in range(n_findings)
    ]
    counts = dict.fromkeys(SEVERITIES, 0) | {"high": n_findings}
    v = policy.commit_verdict("block_pull", [ImageResult("reg/a:1", "failure", counts, n_findings, 1, top)])
    assert v is not None
    return len(checks.summary(v).splitlines())


def assert_one_line(text: str, limit: int) -> None:
    assert len(text) <= limit
    assert not any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in text), repr(text)
    assert not any(invisible.is_invisible(text, at) for at in range(len(text))), repr(text)
    assert text == " ".join(text.split())


# ---------------------------------------------------------------- through the API to the fake GitHub


@pytest.mark.parametrize("value", list(HOSTILE.values()), ids=list(HOSTILE))
def test_an_uploaded_string_reaches_github_as_literal_text_on_one_line(app, client, token, fake_github, value):
    status, output = posted(app, client, token, fake_github, value, hostile_finding(value))
    v = visible(value)

    # the commit status and the title: plain text GitHub shows as is, counts only
    assert status["description"] == "1 image · 1 high · blocking"
    assert output["title"] == status["description"]
    for text in (status["description"], output["title"]):
        assert_one_line(text, 140)

    for field in ("summary", "text"):
        if output.get(field) is None:
            continue
        markdown = output[field]
        tokens = assert_inert(markdown)
        assert EVIL not in markdown.replace(WORD_JOINER, "")
        # the app's own structure: one heading (the image), one table, one finding; no line of the upload's
        assert len(markdown.splitlines()) == benign_line_count(1)
        headings = [t for t in tokens if t.type == "heading_open"]
        assert [h.tag for h in headings] == ["h3"]
        assert sum(t.type == "table_open" for t in tokens) == 1
        assert sum(t.type == "list_item_open" for t in tokens) == 1
        heading = tokens[tokens.index(headings[0]) + 1]
        assert [c.type for c in heading.children] == ["text", "code_inline"]
        assert text_of(heading) == f"❌ {v}"
        # the finding reads as its fields, each whole: id (linked to its advisory), package, versions, title, target;
        # then the app's link to its advisory search, when the id is one the search takes
        [item] = [t for t in tokens if t.type == "inline" and t.map and markdown.splitlines()[t.map[0]].startswith("-")]
        links = [t for t in flat(item.children) if t.type == "link_open"]
        search = search_href(value)
        assert [t.attrGet("href") for t in links] == [advisories.page(value), *([search] if search else [])]
        more = " · images with it" if search else ""
        assert text_of(item) == f"high {v} in {v} {v} → {v} — {v} ({v}){more}"


def test_long_uploaded_strings_are_cut_short_on_one_line(app, client, token, fake_github):
    attack = " [x](https://evil.example) `\n# heading"
    f = finding(
        cve_id=("C" * 200)[: 200 - len(attack)] + attack,
        package=("p" * 500)[: 500 - len(attack)] + attack,
        installed="1" * 499 + "\n",
        fixed="2" * 500,
        title="t" * 100_000 + attack,  # stored whole or cut to its limit
        target=("/" * 1024)[: 1024 - len(attack)] + attack,  # at the most an upload may carry
    )
    status, output = posted(app, client, token, fake_github, "r" * 1000 + attack[:24], f)
    assert status["description"] == "1 image · 1 high · blocking"
    markdown = output["summary"]
    tokens = assert_inert(markdown)
    assert len(markdown.splitlines()) == benign_line_count(1)
    assert len(markdown) < 6_000  # each field shown within a bound, whatever was uploaded
    [heading] = [t for t in tokens if t.type == "inline" and t.map and t.map[0] == 2]
    assert text_of(heading).startswith("❌ rrrr") and text_of(heading).endswith("…")
    [item] = [t for t in tokens if t.type == "inline" and t.map and markdown.splitlines()[t.map[0]].startswith("-")]
    shown = text_of(item)
    assert "ttttt…" in shown and "11111" in shown and "22222…" in shown and "\n" not in shown


def test_uploaded_urls_never_become_links(app, client, token, fake_github):
    f = finding(
        cve_id="NOT-A-KNOWN-ID",
        primary_url=f"{EVIL})[x](https://evil.example/y",
        references=[EVIL, "https://github.com/advisories/GHSA-jf85-cpcp-j695/../../../evil", "javascript:alert(1)"],
        vendor_ids=["CVE-2024-0001) [x](https://evil.example"],
    )
    _, output = posted(app, client, token, fake_github, "ghcr.io/acme/api:1", f)
    tokens = assert_inert(output["summary"])
    hrefs = [t.attrGet("href") for t in flat(tokens) if t.type == "link_open"]
    assert hrefs == ["https://osv.dev/vulnerability/NOT-A-KNOWN-ID", SEARCH_PAGE + "NOT-A-KNOWN-ID"]
    assert "evil" not in output["summary"]


def test_each_listed_finding_links_to_its_advisory_search(app, client, token, fake_github):
    """Every top finding of every image links to the app's advisory search for its own id (percent-encoded), after
    its advisory page; an id the search cannot take (white space, a trailing *) gets no search link."""
    ids = ["CVE-2021-44228", "GHSA-jfh8-c2jp-5v3q", "RHSA-2020:1234", "DSA-5000-1", "GO-2022+0001/a", "CVE 2024 1"]
    findings = [finding(i, "critical", package=f"p{n}") for n, i in enumerate(ids[:5])]
    r = post(client, token, seed(findings, image_ref="ghcr.io/acme/api:1"))
    assert r.status_code == 202, r.json
    r = post(
        client, token, seed([finding(ids[5], "high"), finding("CVE-2024-*", "high")], image_ref="ghcr.io/acme/web:1")
    )
    assert r.status_code == 202, r.json
    drain(app, Clock())
    [run] = fake_github.runs_of("acme", "api", SHA)
    markdown = run["output"]["summary"]
    tokens = assert_inert(markdown)
    items = [t for t in tokens if t.type == "inline" and t.map and markdown.splitlines()[t.map[0]].startswith("- **")]
    linked = {}
    for item in items:
        hrefs = [c.attrGet("href") for c in item.children or () if c.type == "link_open"]
        searches = [h for h in hrefs if isinstance(h, str) and h.startswith(SEARCH_PAGE)]
        linked[text_of(item).split(" in ")[0].split(" ", 1)[1]] = searches
    assert linked == {
        "CVE-2021-44228": [SEARCH_PAGE + "CVE-2021-44228"],
        "GHSA-jfh8-c2jp-5v3q": [SEARCH_PAGE + "GHSA-jfh8-c2jp-5v3q"],
        "RHSA-2020:1234": [SEARCH_PAGE + "RHSA-2020%3A1234"],
        "DSA-5000-1": [SEARCH_PAGE + "DSA-5000-1"],
        "GO-2022+0001/a": [SEARCH_PAGE + "GO-2022%2B0001%2Fa"],
        "CVE 2024 1": [],
        "CVE-2024-*": [],
    }


# ---------------------------------------------------------------- the summary, cut to GitHub's limit


def test_a_summary_cut_to_the_limit_leaves_no_code_span_open():
    # refs that carry a link after their first backtick: cut inside one, the code span would open and not close
    for pad in range(0, 1000, 111):  # cuts at different places in the lines
        ref = "[x](https://evil.example) " + "a" * (pad + 600)
        imgs = [ImageResult(f"{i:05d}{ref}", "failure", dict.fromkeys(SEVERITIES, 1), 1, i, []) for i in range(200)]
        v = policy.commit_verdict("block_pull", imgs)
        assert v is not None
        text = checks.summary(v)
        assert len(text.encode()) <= checks.SUMMARY_LIMIT and text.endswith("see the details page for every image")
        assert_inert(text)


# ---------------------------------------------------------------- the escaping functions


def paragraph_text(markdown: str) -> str:
    """The text of markdown that must parse as one paragraph of plain text (no other token)."""
    tokens = MD.parse(markdown)
    assert [t.type for t in tokens] in ([], ["paragraph_open", "inline", "paragraph_close"]), markdown
    if not tokens:
        return ""
    assert {c.type for c in tokens[1].children} <= {"text"}, (markdown, [c.type for c in tokens[1].children])
    return text_of(tokens[1])


def assert_md_text_is_literal(value: str) -> None:
    out = checks.md_text(value, limit=10**6)
    assert "\n" not in out and "\r" not in out
    assert_inert(out)
    assert paragraph_text(out) == visible(value)  # alone, even at the start of a line
    # after the app's own text, and as link text
    assert paragraph_text("high " + out + " → x") == f"high {visible(value)} → x"
    if not visible(value):
        return
    tokens = assert_inert(f"- **high** [{out}](https://osv.dev/vulnerability/X) in `p`")
    [item] = [t for t in tokens if t.type == "inline"]
    shown = [c for c in item.children if c.type != "text" or c.content]
    types = ["strong_open", "text", "strong_close", "text", "link_open", "text", "link_close", "text", "code_inline"]
    assert [c.type for c in shown] == types
    assert shown[5].content.replace(WORD_JOINER, "") == visible(value)


def assert_md_code_is_literal(value: str) -> None:
    out = checks.md_code(value, limit=10**6)
    assert "\n" not in out
    for markdown in (out, f"### ❌ {out}", f"a {out} b"):
        tokens = assert_inert(markdown)
        codes = [t for t in flat(tokens) if t.type == "code_inline"]
        assert [c.content for c in codes] == [visible(value) or " "], markdown


@pytest.mark.parametrize("value", list(HOSTILE.values()), ids=list(HOSTILE))
def test_md_text_and_md_code_render_hostile_strings_literally(value):
    assert_md_text_is_literal(value)
    assert_md_code_is_literal(value)


MARKDOWN_CHARS = "\\`*_{}[]()#+-.!|<>&~=:@$^%/?;'\" \n\r\t\x0b\x0c\x85\u2028\u2029\u200b\u202e\u2060\ufeffaAw1"
MARKDOWN_PIECES = ["www.", "https://", "<!--", "-->", "<img", "&amp;", "&#36;", "[^1]", "1. ", "- ", "GH-1", ":+1:"]
MARKDOWN_ALPHABET = st.sampled_from([*MARKDOWN_CHARS, *MARKDOWN_PIECES])
ANY_TEXT = st.one_of(st.text(max_size=80), st.lists(MARKDOWN_ALPHABET, max_size=40).map("".join))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ANY_TEXT)
def test_md_text_round_trips_any_string(value):
    assert_md_text_is_literal(value)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ANY_TEXT)
def test_md_code_round_trips_any_string(value):
    assert_md_code_is_literal(value)


@given(ANY_TEXT, st.integers(min_value=1, max_value=60))
def test_one_line_is_one_line_within_its_limit(value, limit):
    out = checks.one_line(value, limit)
    assert_one_line(out, limit)
    assert out == visible(value) or (out.endswith("…") and visible(value).startswith(out[:-1].rstrip()))


def test_plain_values_are_shown_as_they_are():
    # ids, versions and package names GitHub users search for read the same in the Markdown source
    for value in ("CVE-2023-1234", "GHSA-5crp-9r3c-p9vr", "2.0.5-1+deb10u1", "libidn2-0", "Newtonsoft.Json", "3.0.7"):
        assert checks.md_text(value) == value
    assert checks.md_code("ghcr.io/acme/api:1") == "`ghcr.io/acme/api:1`"
    assert checks.md_code("a`b") == "``a`b``" and checks.md_code("`x") == "`` `x ``"


def test_links_go_only_to_the_advisory_pages_the_app_builds():
    for advisory_id in ("CVE-2024-1", "GHSA-jf85-cpcp-j695", "DSA-1-1", "RHSA-2024:1", "USN-1-1", "RUSTSEC-2024-1"):
        url = advisories.page(advisory_id)
        assert url is not None and url.startswith(checks.ADVISORY_LINK_PREFIXES) and url.startswith(ADVISORY_PAGES)
        assert checks.md_link(advisory_id, url) == f"[{checks.md_text(advisory_id)}]({url})"
    for url in (EVIL, "javascript:alert(1)", "http://www.cve.org/CVERecord?id=1", "https://osv.dev.evil.example/"):
        assert checks.md_link("x", url) == "x"
    # a built URL is percent-encoded: nothing in it ends the link early
    link = checks.md_link("[x]", "https://osv.dev/vulnerability/a) b<c>\\`")
    [tokens] = [t for t in MD.parse(link) if t.type == "inline"]
    assert [c.type for c in tokens.children] == ["link_open", "text", "link_close"]
    assert tokens.children[0].attrGet("href") == "https://osv.dev/vulnerability/a%29%20b%3Cc%3E%5C%60"
    assert tokens.children[1].content == "[x]"


def test_the_status_description_is_one_plain_line_within_140_characters():
    counts = dict.fromkeys(SEVERITIES, 0)
    bad = CommitVerdict(
        "failure", "1 image\n· <b>x</b>\u202e " + "y" * 300, (ImageResult("a", "failure", counts, 0),), "x"
    )
    body = checks.commit_status(bad, None)
    assert_one_line(body["description"], 140)
    assert body["description"].startswith("1 image · <b>x</b> y")  # plain text on GitHub: not entity-escaped
    assert_one_line(checks.check_run(bad, "0" * 40, None, "x")["output"]["title"], 140)
