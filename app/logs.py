"""Log lines: text as always, or one JSON object a line (FREMFORGE_LOG_FORMAT=json) with the request id and the ids in
play; secrets are redacted from both.

The app's lines read `event.name key=value ...` (`github.posting.delivered outbox=12 commit=abc`). In JSON the first
word is `event` and the pairs become fields, beside `time`, `level`, `logger`, `message` (the whole line) and, where
known, `request_id`, `org`, `scan_run_id`, `delivery_id` (a webhook's X-GitHub-Delivery) and `outbox_id`. Those come
from the request being answered (its X-Request-Id, taken when sane and made otherwise, and sent back on every
answer) or from what a thread bound with `set_context` (the outbox worker, for the item in hand).

Whatever the format, a line never carries a secret: the configured ones (secret key, GitHub App private key, webhook
and OAuth secrets, metrics token, database password, checkpoint key) are replaced wherever they appear, and so is
anything shaped like a credential (API tokens, bearer values, GitHub tokens, JWTs, PEM private keys, credentials in a
URL's query or userinfo, one-time login links), in messages and tracebacks alike.

Nor can a value logged forge a line or a field (a request's path, a header, a webhook's payload: whatever a client
chose). The formatters, not the call sites, make sure of it: a record's template is the code's, its arguments are
data. An argument that could change how the line reads (a control character or a line separator, a `key=` or a quote
at its start or after a space) is written quoted and escaped, as `%r` writes it (`path='/x org=victim'`); others as
they are (`path=/api/v1/orgs/acme/image-scans`). A JSON line's fields come from the template's `key=` words only,
each argument read whole as the value of the pair it stands in (or of none), so no value adds or replaces a field.
And no text line carries a raw control character: whatever is left (in a template, an f-string, a library's line) is
escaped the same way (`\\n`, `\\x00`, `\\u2028`), and a traceback's lines are indented, so that a line that does not
begin with a space always begins a record.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import logging
import numbers
import re
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qsl, urlsplit

import orjson
from flask import Flask, Response, g, has_request_context, request

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")  # taken from the client only when it looks like this
DELIVERY_ID = re.compile(r"[0-9A-Za-z._:-]{1,100}")  # app.github.webhooks checks the same before trusting it
WEBHOOK_ENDPOINT = "github_webhooks.receive"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
REDACTED = "[redacted]"
CHECKPOINT_KEY_NAME = "checkpoint_ed25519.pem"  # app.chain.checkpoints.KEY_FILE_NAME (in the instance folder)

# A line's first word is its event when it looks like one (`github.webhook.bad_signature`, `retention.skipped:`);
# other lines (gunicorn's, libraries') take their logger's name as event.
_EVENT = re.compile(r"([a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+):?(?=\s|$)")
_PAIR = re.compile(r"(?<!\S)([A-Za-z_][A-Za-z0-9_]*)=('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|\S*)")
_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]{0,14})")
_DECIMAL = re.compile(r"-?[0-9]{1,15}\.[0-9]{1,9}")
# What the JSON formatter sets itself; a message's pair of the same name is kept as `<name>_`.
_OWN_FIELDS = frozenset({"time", "level", "event", "logger", "message", "exc", "stack"})
# Message keys named as the fields that carry them everywhere (`event=` in a webhook line is GitHub's event).
_ALIASES = {"event": "github_event", "delivery": "delivery_id", "outbox": "outbox_id", "scan": "scan_run_id"}

# Credential shapes, replaced wherever they appear (messages, tracebacks, gunicorn's lines); each with the texts of
# which an ASCII line must hold one (lowercased) for the shape to be there at all. Most lines hold none, and a
# substring test costs a hundredth of a search: the upload's line was 20 µs of searches, twice over.
_PATTERNS: tuple[tuple[re.Pattern[str], str, tuple[str, ...]], ...] = (
    (
        re.compile(r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END[A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S),
        "[redacted private key]",
        ("-----begin",),
    ),
    (
        re.compile(r"(?i)(\bauthorization[\"']?\s*[:=]\s*[\"']?)(?:(?:basic|bearer|token)\s+)?[A-Za-z0-9._~+/=-]+"),
        rf"\1{REDACTED}",
        ("authorization",),
    ),
    (re.compile(r"(?i)\b(bearer)(\s+)[A-Za-z0-9._~+/=-]{6,}"), rf"\1\2{REDACTED}", ("bearer",)),
    # the app's API tokens (app.web.auth.PREFIX)
    (re.compile(r"\bffis_[A-Za-z0-9]{6,}"), f"ffis_{REDACTED}", ("ffis_",)),
    (  # GitHub's tokens
        re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{16,}|github_pat_[A-Za-z0-9_]{16,})"),
        REDACTED,
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    ),
    # JWTs (the App's)
    (re.compile(r"\beyJ[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]*"), REDACTED, ("eyj",)),
    (
        re.compile(
            r"(?i)([?&;](?:access_token|refresh_token|token|code|state|client_secret|secret|password|passwd|key"
            r"|api_key|sig|signature)=)[^&;\s\"'#]+"
        ),
        rf"\1{REDACTED}",
        ("token=", "code=", "state=", "secret=", "password=", "passwd=", "key=", "sig=", "signature="),
    ),
    # user:password@ in URLs
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^/@\s:]*:)[^/@\s]+@"), rf"\1{REDACTED}@", ("://",)),
    # one-time sign-in links
    (re.compile(r"(/admin/login/link/)[^/?#\s\"']+"), rf"\1{REDACTED}", ("/admin/login/link/",)),
)
_NEEDLES = re.compile("|".join(re.escape(n) for _shape, _replacement, needles in _PATTERNS for n in needles))
_MIN_SECRET = 8  # shorter configured values are not searched for (they would blank ordinary words)

_secrets: set[str] = set()
_secrets_pattern: re.Pattern[str] | None = None
_secrets_lock = threading.Lock()

_context: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar("fremforge_log", default=None)


# ---------------------------------------------------------------- redaction


def register_secrets(values: Iterable[Any]) -> None:
    """Search every log line of this process for these values (and for each long line of a multi-line one, such as a
    PEM key's), and replace them."""
    global _secrets_pattern
    found: set[str] = set()
    for value in values:
        if not value:
            continue
        text = value if isinstance(value, str) else str(value)
        found.add(text.strip())
        found.update(line.strip() for line in text.splitlines() if not line.strip().startswith("-----"))
    found = {s for s in found if len(s) >= _MIN_SECRET}
    with _secrets_lock:
        if found <= _secrets:
            return
        _secrets.update(found)
        alternatives = sorted(_secrets, key=len, reverse=True)  # the longest first: a whole key before its lines
        _secrets_pattern = re.compile("|".join(re.escape(s) for s in alternatives))


def redact(text: str) -> str:
    """`text` without the configured secrets and without anything shaped like a credential."""
    pattern = _secrets_pattern
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    if not text.isascii():  # a case-insensitive shape matches more than lowercased ASCII shows (the Kelvin sign: k)
        for shape, replacement, _needles in _PATTERNS:
            text = shape.sub(replacement, text)
        return text
    lowered = text.lower()
    if _NEEDLES.search(lowered) is None:  # the usual line, and most of a JSON line's fields
        return text
    for shape, replacement, needles in _PATTERNS:
        if any(n in lowered for n in needles):
            text = shape.sub(replacement, text)
            lowered = text.lower()  # what the next shape looks for is in the text as it is now
    return text


def secrets_of(config: Mapping[str, Any], instance_path: str | None = None) -> list[Any]:
    """The configured values no log line may show (the checkpoint key's when its file exists already)."""
    found = [config.get(name) for name in ("SECRET_KEY", "GITHUB_PRIVATE_KEY", "GITHUB_WEBHOOK_SECRET")]
    found += [config.get(name) for name in ("GITHUB_CLIENT_SECRET", "METRICS_TOKEN")]
    url = str(config.get("DATABASE_URL") or "")
    with contextlib.suppress(ValueError):
        parts = urlsplit(url)
        found.append(parts.password)
        found += [v for k, v in parse_qsl(parts.query) if k.lower() in ("password", "sslpassword")]  # libpq's too
    key_file = config.get("CHECKPOINT_KEY_FILE") or (instance_path and Path(instance_path) / CHECKPOINT_KEY_NAME)
    if key_file:
        # Made later, or unreadable: a whole PEM key is still caught by its shape.
        with contextlib.suppress(OSError, UnicodeDecodeError):
            found.append(Path(key_file).read_text())
    return found


# ---------------------------------------------------------------- values as data: no forged line, no forged field

# What no line may carry raw: C0 and C1 controls (LF, CR, NUL, ESC...), DEL, and the line and paragraph separators.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Inside a value, what would read as the start of a token of the line: a pair (` key=`) or a quoted value.
_TOKEN_START = re.compile(r"(?:^|\s)(?:[A-Za-z_][A-Za-z0-9_]*=|['\"])")
# Where an argument stands in a record's template while the line is laid out (the template has no raw NUL: escaped).
_MARK = re.compile("\x00([0-9]+)\x00")


def escape(text: str) -> str:
    """`text` on one line: each control character or line separator written as Python writes it (`\\n`, `\\x00`)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def _as_data(text: str) -> str:
    """A value as it may stand in a line: as it is, unless it could change how the line reads (a control character or
    another unprintable one, a ` key=` or a quote that would start a token); then quoted and escaped, as %r does."""
    if text.isprintable() and not _TOKEN_START.search(text):
        return text
    return repr(text)


class _Slot:
    """A record's argument while its template is laid out: `%s` or `%r` leaves a mark where it stands and keeps the
    text it is written as (`_as_data`; %r's of a string as it always is), its secrets redacted."""

    __slots__ = ("texts", "value")

    def __init__(self, value: Any, texts: list[str]) -> None:
        self.value, self.texts = value, texts

    def _mark(self, text: str) -> str:
        self.texts.append(text)
        return f"\x00{len(self.texts) - 1}\x00"

    def __str__(self) -> str:
        return self._mark(_as_data(redact(str(self.value))))

    def __repr__(self) -> str:
        if isinstance(self.value, str):
            return self._mark(repr(redact(self.value)))  # quoted and escaped already
        return self._mark(_as_data(redact(repr(self.value))))


class _Slots(Mapping[str, Any]):
    """A record's mapping of arguments (gunicorn's access atoms: `%(U)s`...) while its template is laid out."""

    def __init__(self, values: Mapping[str, Any], texts: list[str]) -> None:
        self.given, self.texts = values, texts

    def __getitem__(self, key: str) -> Any:
        return _slot(self.given[key], self.texts)  # the mapping's own lookup: gunicorn's gives "-" for a missing atom

    def __iter__(self) -> Iterator[str]:
        return iter(self.given)

    def __len__(self) -> int:
        return len(self.given)

    def __str__(self) -> str:  # the mapping itself, given to a plain `%s`
        return str(_Slot(self.given, self.texts))

    def __repr__(self) -> str:
        return repr(_Slot(self.given, self.texts))


def _slot(value: Any, texts: list[str]) -> Any:
    return value if isinstance(value, numbers.Number) else _Slot(value, texts)  # a number stays one: %d, %.3f


def _lay_out(record: logging.LogRecord) -> tuple[str, list[str]] | None:
    """The record's template with its arguments put in as marks, and the texts the marks stand for; None for a
    template that wants what a mark is not (`%x` of a string...)."""
    template = escape(redact(str(record.msg)))  # redacted first: a secret is searched for as it is
    texts: list[str] = []
    args = record.args
    try:
        if not args:  # as logging: no arguments, no % formatting
            skeleton = template
        elif isinstance(args, Mapping):
            skeleton = template % _Slots(args, texts)
        else:
            skeleton = template % tuple(_slot(arg, texts) for arg in args)
    except (TypeError, ValueError, KeyError):
        return None
    if "\x00" in _MARK.sub("", skeleton):  # a mark cut short (%.3s...), or a NUL made by %c
        return None
    return skeleton, texts


def _filled(skeleton: str, texts: list[str]) -> str:
    return _MARK.sub(lambda m: texts[int(m.group(1))], skeleton)


def message(record: logging.LogRecord) -> str:
    """The record's message on one line: its arguments written as data (`_as_data`), every control character left
    escaped, secrets redacted."""
    if _plain(record.args):  # every value reads as itself (the upload's line): no need to lay the template out
        return escape(redact(record.getMessage()))
    laid_out = _lay_out(record)
    text = _filled(*laid_out) if laid_out else record.getMessage()
    return escape(redact(text))


def _plain(args: Any) -> bool:
    """Whether every argument is a number or a string `_as_data` writes as it is."""
    if not isinstance(args, tuple):
        return False
    return all(
        (isinstance(a, numbers.Number) and not isinstance(a, bool))
        or (type(a) is str and a.isprintable() and not _TOKEN_START.search(a))
        for a in args
    )


def read(record: logging.LogRecord) -> tuple[str, str | None, dict[str, Any]]:
    """The record's message (`message`), its event and its `key=value` pairs: the keys are the template's, never a
    value's (a value logged is read whole, as the value of the pair its template gives it, or of none)."""
    laid_out = _lay_out(record)
    if laid_out is None:  # no telling the template from the values: no pairs
        text = escape(redact(record.getMessage()))
        return text, None, {}
    skeleton, texts = laid_out
    if not texts:
        text = redact(skeleton)
        if not _ours(record):  # a library's line made before it was logged (gunicorn's "Invalid request from ...:
            return text, None, {}  # the request line"): no telling its words from a client's, so no pairs
        return (text, *parse(text))
    text = escape(redact(_filled(skeleton, texts)))
    match = None if skeleton.startswith("\x00") else _EVENT.match(text)  # an event begins in the code's words
    pairs: dict[str, Any] = {}
    for key, raw in _PAIR.findall(skeleton):  # (an event has no `=`: no pair in it)
        pairs.setdefault(key, _value(redact(_filled(raw, texts))))
    return text, match.group(1) if match else None, pairs


def _ours(record: logging.LogRecord) -> bool:
    """Whether the record is the app's own (its template written in this code, never made from a request's values)."""
    return record.name == "app" or record.name.startswith("app.")


def _indented(text: str) -> str:
    """A traceback's (or a stack's) lines, each indented and escaped: none can pass for a record of its own."""
    return "\n".join(f"  {escape(line)}" if line else "" for line in redact(text).split("\n"))


def _safe_copy(record: logging.LogRecord, formatter: logging.Formatter) -> logging.LogRecord:
    """A copy of the record for `formatter` to write: its message made by `message`, its traceback `_indented` (the
    record itself is left as it is, for the other handlers)."""
    safe = copy.copy(record)
    safe.msg, safe.args = message(record), None
    safe.exc_info = None
    exc = formatter.formatException(record.exc_info) if record.exc_info else record.exc_text
    safe.exc_text = _indented(exc) if exc else None
    safe.stack_info = _indented(formatter.formatStack(record.stack_info)) if record.stack_info else None
    return safe


# ---------------------------------------------------------------- what a line is about


def set_context(**fields: Any) -> None:
    """Add these fields to every line this thread logs from now on, until `clear_context` (the worker binds the outbox
    item in hand: `outbox_id`, `scan_run_id`, `org`). Fields of a request come from the request itself."""
    _context.set({k: v for k, v in fields.items() if v is not None})


def name_org(slug: str) -> None:
    """The org this request turned out to be about (a webhook delivery's, found from its payload): the lines it logs
    from now on carry it as `org`."""
    if has_request_context():
        g.log_org = slug


def clear_context() -> None:
    _context.set(None)


def context_fields() -> dict[str, Any]:
    """The ids known where a line is logged: the request's (id, org, scan, webhook delivery) and the thread's."""
    fields = dict(_context.get() or {})
    if has_request_context():
        request_id = g.get("request_id")
        if request_id:
            fields["request_id"] = request_id
        args = request.view_args or {}
        org = g.get("log_org") or args.get("slug")
        if org:
            fields.setdefault("org", str(org)[:100])
        scan = g.get("scan_run_id") or args.get("scan_run_id")
        if scan is not None:
            fields.setdefault("scan_run_id", scan)
        delivery = g.get("delivery_id")
        if delivery:
            fields.setdefault("delivery_id", delivery)
    return fields


def parse(message: str) -> tuple[str | None, dict[str, Any]]:
    """A line's event (its first word, when it reads like `area.what`) and its `key=value` pairs."""
    match = _EVENT.match(message)
    event = match.group(1) if match else None
    rest = message[match.end() :] if match else message
    pairs: dict[str, Any] = {}
    for key, raw in _PAIR.findall(rest):
        pairs.setdefault(key, _value(raw))
    return event, pairs


_ESCAPED = re.compile(r"\\([\\'\"])")  # what %r escapes in a quoted value: a backslash or a quote


def _value(raw: str) -> Any:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return _ESCAPED.sub(r"\1", raw[1:-1])
    raw = raw.removesuffix(":").removesuffix(",")
    if raw in ("None", "-", ""):
        return None
    if _INTEGER.fullmatch(raw):
        return int(raw)
    if _DECIMAL.fullmatch(raw):
        return float(raw)
    return raw


# ---------------------------------------------------------------- formatters and the handler


class TextFormatter(logging.Formatter):
    """The text lines of old (`time LEVEL logger message`), secrets redacted (traceback included); one line a record
    (its traceback's lines indented), the values logged written as data."""

    def __init__(self, fmt: str = TEXT_FORMAT) -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(_safe_copy(record, self)))


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, event, logger, the ids known, the line's pairs, message, exc."""

    def format(self, record: logging.LogRecord) -> str:
        text, event, pairs = read(record)  # the fields named in the code, never by a value logged
        at = datetime.fromtimestamp(record.created, UTC)
        doc: dict[str, Any] = {
            "time": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "event": event or record.name,
            "logger": record.name,
        }
        doc.update(context_fields())
        for key, value in pairs.items():
            name = _ALIASES.get(key, key)
            if name in _OWN_FIELDS:
                name += "_"
            if value is not None:
                doc.setdefault(name, value)
        doc["message"] = text
        if record.exc_info:
            doc["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        clean = {k: _clean(k, v) for k, v in doc.items()}
        return orjson.dumps(clean, default=lambda v: redact(str(v))).decode()


def _clean(key: str, value: Any) -> Any:
    """A JSON field, redacted; a string on one line (a traceback's breaks are JSON's to escape)."""
    if not isinstance(value, str):
        return value
    value = redact(value)
    return value if key in ("exc", "stack") else escape(value)


class Redacting(logging.Formatter):
    """Another formatter's lines (gunicorn's own, say), secrets redacted; its message made as the text lines' are (one
    line, the values logged written as data), its traceback's lines indented."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(_safe_copy(record, self.inner)))


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of FREMFORGE_LOG_FORMAT (`text` or `json`)."""
    return JsonFormatter() if log_format == "json" else TextFormatter()


class _Handler(logging.StreamHandler):
    """The app's handler on the root logger (one per process, whichever app was made last sets its format)."""

    fremforge = True


def install(log_format: str, stream: TextIO | None = None) -> logging.Handler:
    """Put the app's handler on the root logger (in place of one installed before), at INFO; writing to `stream`
    (standard error by default)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "fremforge", False)]:
        root.removeHandler(old)
    handler = _Handler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter(log_format))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


def init_app(app: Flask) -> None:
    """Log in the configured format (unless something else, such as a test runner, configured logging first), keep
    the app's secrets out of every line, and give every request an id."""
    register_secrets(secrets_of(app.config, app.instance_path))
    root = logging.getLogger()
    if all(getattr(h, "fremforge", False) for h in root.handlers):
        install(app.config["LOG_FORMAT"])
    logging.getLogger("alembic").setLevel(logging.WARNING)
    app.before_request(_begin)
    app.after_request(_answer)


def _begin() -> None:
    """The request's id (the client's X-Request-Id when sane, else a new one) and start time; a webhook's delivery."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    g.request_started = time.perf_counter()
    if request.endpoint == WEBHOOK_ENDPOINT:
        delivery = request.headers.get("X-GitHub-Delivery", "")
        if DELIVERY_ID.fullmatch(delivery):
            g.delivery_id = delivery


def _answer(response: Response) -> Response:
    if not g.get("request_id"):  # an earlier before_request answered first
        _begin()
    response.headers[REQUEST_ID_HEADER] = g.request_id
    return response
