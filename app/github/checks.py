"""Pure builders of the commit status and check run bodies from a commit's verdict; no I/O.

Every string that comes from an upload (image ref, advisory id, package, versions, title, target) reaches GitHub
through one of three functions, all built on `one_line`:

- `md_text`: Markdown text (also link text). Escaped so it renders literally and can add no link, image,
  heading, HTML, comment, table cell, emphasis, math or autolink, at parse time or at GitHub's later passes.
- `md_code`: an inline code span (image refs, packages, targets): literal by construction.
- `plain_text`: the commit status description, which GitHub shows as plain text.

Links go only to the advisory pages `app.advisories` builds (`md_link`) and to the app's own advisory search
(`search_link`, a URL `app.web.urls` builds with the id percent-encoded); an uploaded URL never becomes one.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from app import advisories, invisible
from app.insights import advisories as advisory_search
from app.models import SEVERITIES
from app.policy import (
    CONTEXT,
    DESCRIPTION_LIMIT,
    EXCEPTED,
    NOT_BLOCKING,
    CommitVerdict,
    ImageResult,
    blocking_counts,
)
from app.policy.exceptions import ActiveException, first_expiring

# One dict maps our verdict onto GitHub's vocabularies (commit status state, check run conclusion).
STATES = {"success": ("success", "success"), "failure": ("failure", "failure")}
SUMMARY_LIMIT = 65_535  # bytes of UTF-8: GitHub refuses a longer one ("exceeds a maximum bytesize of 65535")
TITLE_LIMIT = 140
TOP_FINDINGS = 5
# Longest shown form of an uploaded field (characters, before escaping); longer values end in "…".
FIELD_LIMIT = 200
IMAGE_REF_LIMIT = 256

# Where the summary may link: the advisory pages app.advisories.page builds, nothing an upload names.
ADVISORY_LINK_PREFIXES = (
    "https://www.cve.org/CVERecord?id=",
    "https://github.com/advisories/",
    "https://security-tracker.debian.org/tracker/",
    "https://access.redhat.com/errata/",
    "https://ubuntu.com/security/notices/",
    "https://osv.dev/vulnerability/",
)

# Where each listed finding links in the app itself: its org's advisory search for the finding's id
# (Urls.advisory_search with the org's slug bound), so "which other images have it?" is one click away.
SearchUrl = Callable[[str], str]
SEARCH_LINK_TEXT = "images with it"

# U+2060 WORD JOINER: invisible, and no word character. Put after the character that starts a pattern GitHub
# links after rendering (mentions, issue references, emoji, bare URLs are found in the rendered text, where
# backslash escapes and character references are already gone), it breaks the pattern; nothing else can.
BREAK = "\u2060"
# ASCII punctuation with a meaning somewhere in GitHub Markdown, escaped with a backslash. Not escaped, as they
# mean nothing within a line: - . + / , ; ? % ' " (a leading - + or "1." is escaped, see md_text).
_BACKSLASHED = frozenset("\\`*_{}[]()#!|~=^:@")
# As character references: HTML (< > &), and $ (GitHub's math; its docs do not rely on \$ outside math).
_ENTITIES = {"<": "&lt;", ">": "&gt;", "&": "&amp;", "$": "&#36;"}
# Characters after which BREAK goes: @mention, team and e-mail; #123 and owner/repo#123; scheme: (https://,
# mailto:, xmpp:) and :emoji:.
_BREAK_AFTER = frozenset("@#:")
# Each escaped character's replacement, for str.translate.
_ESCAPES = str.maketrans(
    {
        ch: (_ENTITIES.get(ch) or "\\" + ch) + (BREAK if ch in _BREAK_AFTER else "")
        for ch in (*_ENTITIES, *_BACKSLASHED, *_BREAK_AFTER)
    }
)
# www.example.com (broken inside "www": GitHub's autolinker takes a word joiner after "www." for part of the host
# name) and GH-123.
_BREAK_PATTERNS = re.compile(r"(?i)(ww(?=w\.)|gh-(?=\d))")
# What would start a list item, thematic break or setext underline, should the text ever start a line:
# a leading - or + (group 1), or the dot of a leading "1." (group 2).
_LEADING_MARKER = re.compile(r"^(?:([-+])|(\d{1,9})(?=\.(?: |$)))")


def one_line(value: Any, limit: int = FIELD_LIMIT) -> str:
    """The text of an uploaded value on one line: line breaks, tabs and other control characters (also U+2028,
    U+2029, U+0085) become a space; invisible format characters (`app.invisible`: zero-width, bidirectional
    overrides, BOM, soft hyphen, word joiner; not an emoji's joiner) are dropped; runs of whitespace collapse to one
    space, none at either end; longer than `limit` characters, it ends in "…"."""
    if value is None:
        return ""
    value = str(value)
    if value.isascii() and value.isprintable():  # the usual case: no control or format character to look up
        text = " ".join(value.split())
        return text if len(text) <= limit else text[: max(limit - 1, 0)].rstrip() + "…"
    kept = []
    for at, ch in enumerate(value):
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            kept.append(" ")
        elif not invisible.is_invisible(value, at):
            kept.append(ch)
    text = " ".join("".join(kept).split())
    if len(text) > limit:  # not cut after an emoji's joiner: it would join nothing
        text = text[: max(limit - 1, 0)].rstrip(" " + invisible.ZWJ) + "…"
    return text


def md_text(value: Any, limit: int = FIELD_LIMIT) -> str:
    """An uploaded value as GitHub Markdown that renders as its `one_line` text (plus invisible word joiners),
    wherever it is placed in a line or as link text: nothing in it can start a link, image, autolink, mention,
    issue reference, emoji, heading, list, table cell, emphasis, code, math, HTML tag or comment."""
    return _md_text(None if value is None else str(value), limit)


@functools.lru_cache(maxsize=4096)  # severities, versions and titles come back upload after upload
def _md_text(value: str | None, limit: int) -> str:
    escaped = one_line(value, limit).translate(_ESCAPES)
    escaped = _BREAK_PATTERNS.sub(lambda m: m.group(1) + BREAK, escaped)
    return _LEADING_MARKER.sub(lambda m: "\\" + m.group(1) if m.group(1) else m.group(2) + "\\", escaped)


def md_code(value: Any, limit: int = FIELD_LIMIT) -> str:
    """An uploaded value as an inline code span, which Markdown and GitHub's later passes leave literal: fenced by
    more backticks than any run inside it, padded when it starts or ends with one; on one line (`one_line`)."""
    return _md_code(None if value is None else str(value), limit)


@functools.lru_cache(maxsize=4096)  # packages, targets and image refs come back upload after upload
def _md_code(value: str | None, limit: int) -> str:
    text = one_line(value, limit)
    if not text:
        return "` `"
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text[0] == "`" or text[-1] == "`" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def plain_text(value: Any, limit: int) -> str:
    """A plain-text field GitHub shows as is (the commit status description): one line, at most `limit`."""
    return one_line(value, limit)


def md_link(text: Any, url: str | None) -> str:
    """A Markdown link to one of the advisory pages the app builds, with escaped text; any other URL (such as an
    upload's primary_url or references) gives the text alone. The target is percent-encoded: no space, parenthesis,
    angle bracket or backslash can end it early."""
    label = md_text(text)
    if not url or not url.startswith(ADVISORY_LINK_PREFIXES):
        return label
    return f"[{label}]({quote(url, safe=':/?=&%#~._-')})"


_SEARCH_LINK_TEXT = md_text(SEARCH_LINK_TEXT)


def search_link(advisory_id: str, search: SearchUrl | None) -> str:
    """` · [images with it](URL)`: a link to the app's advisory search for `advisory_id`, or "" when there is no
    search (`search` None) or the id is not one it can take. The URL is the app's own (`search` is the URL builder),
    the id percent-encoded in it; encoded once more here as md_link does, so nothing in it can end the link early."""
    if search is None or not searchable(advisory_id):
        return ""
    return f" · [{_SEARCH_LINK_TEXT}]({quote(search(advisory_id), safe=':/?=&%#~._-')})"


@functools.lru_cache(maxsize=4096)  # the same ids come back upload after upload
def searchable(advisory_id: str) -> bool:
    """Whether the advisory search takes the id as that id (not a prefix, no white space around it)."""
    try:
        query = advisory_search.parse(advisory_id)
    except advisory_search.BadQuery:
        return False
    return not query.prefix and advisory_id == advisory_id.strip()


def commit_status(verdict: CommitVerdict, target_url: str | None) -> dict[str, Any]:
    state, _ = STATES[verdict.state]
    description = plain_text(verdict.description, DESCRIPTION_LIMIT)
    body: dict[str, Any] = {"state": state, "description": description, "context": CONTEXT}
    if target_url:
        body["target_url"] = target_url
    return body


def check_run(
    verdict: CommitVerdict,
    head_sha: str,
    details_url: str | None,
    external_id: str,
    sections: Mapping[str, str] | None = None,
    search: SearchUrl | None = None,
) -> dict[str, Any]:
    """The check run's body; `sections` may hold images' `image_section` already rendered, by image ref; `search`
    gives the app's advisory search page of an id, where each listed finding links."""
    _, conclusion = STATES[verdict.state]
    body: dict[str, Any] = {
        "name": CONTEXT,
        "head_sha": head_sha,
        "status": "completed",
        "conclusion": conclusion,
        "external_id": external_id,
        "output": {
            "title": plain_text(verdict.description, TITLE_LIMIT),
            "summary": summary(verdict, sections, search),
        },
    }
    if details_url:
        body["details_url"] = details_url
    return body


def image_section(image: ImageResult, block_action: str, block_on: str, search: SearchUrl | None = None) -> str:
    """One image's part of the summary: heading with its verdict, severity counts, what blocks and what does not
    (and why), its baseline under block_on new, top findings (each linked to the advisory search by `search`);
    then a blank line."""
    mark = "❌" if image.status == "failure" else "✅"
    lines = [f"### {mark} {md_code(image.image_ref, IMAGE_REF_LIMIT)}", ""]
    lines += ["| " + " | ".join(s.capitalize() for s in SEVERITIES) + " | Fixable |"]
    lines += ["|" + "---:|" * (len(SEVERITIES) + 1)]
    lines += ["| " + " | ".join(str(int(image.counts[s])) for s in SEVERITIES) + f" | {int(image.fixable)} |", ""]
    lines += [split_line(image, block_action, block_on), ""]
    if image.exceptions:
        lines += [exception_line(e) for e in image.exceptions[:TOP_FINDINGS]]
        if len(image.exceptions) > TOP_FINDINGS:
            lines.append(f"- … and {len(image.exceptions) - TOP_FINDINGS} more exceptions")
        lines.append("")
    listed = [finding_line(f, search) for f in image.top_findings[:TOP_FINDINGS]]
    more = sum(int(n) for n in image.counts.values()) - len(listed)
    lines += listed + (
        [f"- … and {more} more findings (the details page lists them all)"] if listed and more > 0 else []
    )
    lines.append("")
    return "\n".join(lines)


def split_line(image: ImageResult, block_action: str, block_on: str) -> str:
    """`**Blocking: 2** (2 new high) · Not blocking: 7 (4 below the threshold, 2 unfixed, 1 existing on the base)`,
    then `· 3 excepted, the first expiring 2027-01-04` and the baseline: what block_on new compared with, or
    `· no baseline: every finding counts` (the spec's words, §3 and §10)."""
    t = image.tally
    blocking = blocking_counts(t.blocking, block_on, t.signing)
    label = "Blocking" if block_action == "block_pull" else "Would block (warn: not enforced)"
    text = f"**{label}: {t.blocks}**" + (f" ({blocking})" if blocking else "")
    why = ", ".join(f"{n} {NOT_BLOCKING[r]}" for r, n in t.not_blocking.items() if r != EXCEPTED)
    not_blocking = sum(n for r, n in t.not_blocking.items() if r != EXCEPTED)
    text += f" · Not blocking: {not_blocking}" + (f" ({why})" if why else "")
    if t.not_blocking.get(EXCEPTED):
        first = first_expiring(image.exceptions)
        until = f", the first expiring {first.expires_at:%Y-%m-%d}" if first is not None else ""
        text += f" · {t.not_blocking[EXCEPTED]} excepted{until}"  # the spec's words (§10)
    if image.redacted:
        text += (
            f" · Removed by retention: {int(image.redacted)} (judged by their stored severity,"
            " as fixable, new and not excepted)"
        )
    if block_on == "new":
        if image.baseline_scan_id is None:
            text += " · no baseline: every finding counts" + (f" ({image.no_baseline})" if image.no_baseline else "")
        else:
            text += f" · Compared with the base's scan {int(image.baseline_scan_id)}"
    return text


def exception_line(e: ActiveException) -> str:
    """An exception that covered findings of the image: what it excepts, until when, and why (the org's words,
    escaped like an upload's)."""
    scope = f" in {md_code(e.package_name)}" if e.package_name else ""
    return (
        f"- Excepted until {e.expires_at:%Y-%m-%d}: {md_code(e.advisory_id)}{scope} — {md_text(e.reason)}"
        f" (exception {int(e.id)})"
    )


def finding_line(f: Any, search: SearchUrl | None = None) -> str:
    """One top finding as a list item: severity, advisory link, package, versions, title and target; then, with
    `search`, a link to the app's advisory search for its id."""
    ids = advisories.pages(f["cve_id"], f.get("vendor_ids") or (), f.get("references") or ())
    name = md_link(f["cve_id"], ids[0][1]) if ids else md_code(f["cve_id"])
    line = f"- **{md_text(f['severity'])}** {name} in {md_code(f['package'])} {md_text(f['installed_version'])}"
    if f.get("fixed_version"):
        line += f" → {md_text(f['fixed_version'])}"
    if f.get("title"):
        line += f" — {md_text(f['title'])}"
    if f.get("target"):
        line += f" ({md_code(f['target'])})"
    return line + search_link(f["cve_id"], search)


def summary(verdict: CommitVerdict, sections: Mapping[str, str] | None = None, search: SearchUrl | None = None) -> str:
    """Markdown: per image its verdict, severity counts, fixable count and top findings; within 65,535 chars.

    The failing images first (then by image ref, as the verdict has them), so that what blocks is what a reviewer
    reads first and what the limit never cuts while a passing image is shown; cut at a whole image, the images left
    out counted (how many fail among them) in a last line.
    Each uploaded value is one escaped line fragment (md_text, md_code, md_link), so the lines are the app's own.
    `sections`, made ahead (ingest's assessment, before its locks), must have been made with the same `search`.
    """
    sections = sections or {}
    # Failing images, then those that would block under warn, then the rest; by image ref within each (stable).
    images = sorted(verdict.images, key=lambda i: (i.status != "failure", not i.tally.blocks))

    def section(image: ImageResult) -> str:
        return sections.get(image.image_ref) or image_section(image, verdict.block_action, verdict.block_on, search)

    parts = [f"**{md_text(verdict.description, TITLE_LIMIT)}** (policy: `{verdict.block_action}`)\n"]
    used = _bytes(parts[0])  # the size of "\n".join(parts): GitHub's limit is 65,535 bytes of UTF-8, not characters
    for n, image in enumerate(images):
        part = section(image)
        if used + 1 + _bytes(part) <= SUMMARY_LIMIT - _LEFT_OUT_ROOM:
            parts.append(part)
            used += 1 + _bytes(part)
            continue
        rest, total = [part], used + 1 + _bytes(part)  # do all the others fit without the last line's room?
        for later in images[n + 1 :]:
            if total > SUMMARY_LIMIT:
                break
            rest.append(section(later))
            total += 1 + _bytes(rest[-1])
        if total <= SUMMARY_LIMIT and len(rest) == len(images) - n:
            parts += rest
        else:
            parts.append(_left_out(images[n:]))
        break
    text = "\n".join(parts)
    if _bytes(text) > SUMMARY_LIMIT:  # not reached: the last line fits in the room kept for it
        cut = "\n\n… (truncated; see the details page for every image)"
        kept = text.encode()[: SUMMARY_LIMIT - _bytes(cut)].decode(errors="ignore")
        # Whole lines only: a line cut short could leave a code span or an escape open.
        text = kept[: max(kept.rfind("\n"), 0)] + cut
    return text


def _bytes(text: str) -> int:
    return len(text.encode())


def _left_out(images: Sequence[ImageResult]) -> str:
    """The summary's last line for the images its limit leaves out: `… and 40 more images (2 failing, 1 would block):
    see the details page for every image`."""
    failing = sum(1 for i in images if i.status == "failure")
    would = sum(1 for i in images if i.status != "failure" and i.tally.blocks)
    which = [f"{failing} failing"] * bool(failing) + [f"{would} would block"] * bool(would)
    said = f" ({', '.join(which)})" if which else ""
    return (
        f"… and {len(images)} more image{'s' if len(images) != 1 else ''}{said}: see the details page for every image"
    )


_LEFT_OUT_ROOM = 200  # the summary's last line when images are left out
