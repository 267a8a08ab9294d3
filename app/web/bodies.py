"""Request bodies and their faults: JSON read by its headers (gzip allowed, bounded), pydantic's errors as details
of a 422, and the collection of many faults into one answer. Every API view reads its body through here."""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import orjson
from flask import current_app, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge
from werkzeug.wsgi import LimitedStream, get_content_length

from app.fields import COMMIT_SHA_TEXT, GIT_REF_TEXT, REPO_RULE_TEXT
from app.web.errors import MAX_DETAILS, ApiError, validation_failed

M = TypeVar("M", bound=BaseModel)


class WholeBodies:
    """WSGI middleware: a body that ends before its Content-Length is a 400, never read as if it were whole.

    gunicorn marks its input as terminated (`wsgi.input_terminated`), so Werkzeug reads it as it comes; when a client
    stops sending early (it half-closes, or a proxy gives up), gunicorn's stream just ends, and a body that happened
    to be valid JSON so far (a complete document followed by a promise of more bytes) would be stored. Here such a
    request's input is held to its Content-Length: a read that finds the stream ended short raises the 400 (the API
    answers it as JSON, the admin pages with their page). Chunked bodies carry their own framing (gunicorn raises on
    a broken one: app.web.errors)."""

    def __init__(self, wsgi_app: Any) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        length = get_content_length(environ)
        if length and environ.get("wsgi.input_terminated"):
            environ["wsgi.input"] = _Announced(environ["wsgi.input"], length)
        return self.wsgi_app(environ, start_response)


class _Announced(LimitedStream):
    """A request's input held to the length its Content-Length announced."""

    def on_disconnect(self, error: Exception | None = None) -> None:
        raise BadRequest(f"The body ended after {self._pos} of the {self.limit} bytes its Content-Length announced.")


# The largest body of the routes that parse theirs whole (settings, one exception; imports and checkpoint files),
# whatever FREMFORGE_MAX_UPLOAD_MB allows uploads: orjson's tree of a body of tiny values takes about 34 times its
# bytes (64 MiB of `[{},{},...]` took 2.2 GiB), so these stay small enough to parse within the 512 MiB a process
# has. Uploads are walked, never parsed whole (app.findings.schemas).
SMALL_BODY_BYTES = 1 * 2**20
DOCUMENT_BODY_BYTES = 4 * 2**20


def too_large(limit: int) -> ApiError:
    """413 for a body (or what it decompresses to) over `limit` bytes."""
    return ApiError(413, "payload_too_large", f"The body is over this route's limit of {limit / 2**20:g} MiB.")


def request_body(max_bytes: int | None = None) -> bytes:
    """The raw body, at most `max_bytes` (default: the upload limit, MAX_CONTENT_LENGTH) or a 413, never silently
    cut. A Content-Length over the limit is refused before anything is read. A body without one (chunked, which
    gunicorn passes through) is read to one byte past the limit: Werkzeug would stop at the limit itself without an
    error, so that a body of exactly the limit and a longer one looked the same."""
    upload_limit = current_app.config.get("MAX_CONTENT_LENGTH")
    limit = upload_limit if max_bytes is None else min(max_bytes, upload_limit or max_bytes)
    if limit is None:
        return request.get_data(cache=False)
    over = too_large(limit) if max_bytes is not None else RequestEntityTooLarge()  # the upload limit's own answer
    if request.content_length is not None:
        if request.content_length > limit:
            raise over
        return request.get_data(cache=False)
    request.max_content_length = limit + 1  # set before the stream is made
    data = request.get_data(cache=False)
    if len(data) > limit:
        raise over
    return data


TWICE_IN_QUERY = "is given twice in the query: which one is meant is unclear"


def refuse_twice(query: Mapping[str, str], names: Iterable[str]) -> None:
    """422 duplicate_key naming each of `names` that `query` (a request's arguments, where a name may come more than
    once) gives more than once: which one is meant is unclear, as with a JSON key given twice."""
    getlist = getattr(query, "getlist", None)
    twice = [k for k in names if len(getlist(k)) > 1] if getlist is not None else []
    if twice:
        raise validation_failed(
            [{"path": k, "code": "duplicate_key", "message": TWICE_IN_QUERY, "in": "query"} for k in twice]
        )


def validate_query(model: type[M]) -> M:
    """The request's query string as `model`, or a 422 naming each bad parameter (one given twice too)."""
    refuse_twice(request.args, model.model_fields)
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise validation_failed([error_detail(e, where="query") for e in exc.errors(include_url=False)]) from None


def read_body(
    content_type: str | None, content_encoding: str | None, read_body: Callable[[], bytes], max_bytes: int
) -> bytes:
    """The body's bytes, decompressed; 400/413/415 for what is not JSON by its headers, too large or empty."""
    mimetype = (content_type or "").split(";", 1)[0].strip().lower()
    if mimetype != "application/json" and not (mimetype.startswith("application/") and mimetype.endswith("+json")):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"The body must be JSON sent as Content-Type: application/json, not {mimetype or 'nothing'}.",
        )
    encoding = (content_encoding or "identity").strip().lower()
    body = read_body()
    if encoding in ("gzip", "x-gzip"):
        body = gunzip(body, max_bytes)
    elif encoding not in ("identity", ""):
        raise ApiError(
            415, "unsupported_media_type", f"Content-Encoding {encoding!r} is not supported; send gzip or no encoding."
        )
    if not body or body.isspace():
        raise ApiError(400, "empty_body", "The body is empty; send a JSON document.")
    return body


_GZIP_MAGIC = b"\x1f\x8b"


def not_json(
    body: bytes | memoryview, message: str, at: int | None, start: int = 0, end: int | None = None
) -> ApiError:
    """The 400 for JSON orjson refused with `message` at byte `at`, read from body[start:end]; bytes that are not UTF-8
    said plainly (orjson says "surrogates not allowed"), with a hint for a gzip body sent without its Content-Encoding.
    Only that piece is decoded to find the byte: the body may be 64 MiB with most of its findings held already."""
    if "UTF-8" in message:
        try:
            bytes(body[start:end]).decode()
        except UnicodeDecodeError as exc:
            hint = ""
            if bytes(body[:2]) == _GZIP_MAGIC:
                hint = ": it starts as gzip does, so send it with Content-Encoding: gzip"
            return ApiError(400, "malformed_json", f"The body is not UTF-8 text (byte {start + exc.start}){hint}.")
    where = f" at byte {at}" if at is not None else ""
    return ApiError(400, "malformed_json", f"The body is not valid JSON: {message}{where}.")


def read_json(max_bytes: int) -> Any:
    """The request's JSON value, parsed whole, for the small bodies of settings, exceptions and imports: the body and
    what it decompresses to at most `max_bytes` (SMALL_BODY_BYTES, DOCUMENT_BODY_BYTES); 400/413/415/422 as
    read_body."""
    limit = min(max_bytes, current_app.config["MAX_UPLOAD_BYTES"])
    body = read_body(request.content_type, request.headers.get("Content-Encoding"), lambda: request_body(limit), limit)
    start = 3 if body.startswith(b"\xef\xbb\xbf") else 0  # a BOM is tolerated
    try:
        doc = orjson.loads(memoryview(body)[start:])
    except orjson.JSONDecodeError as exc:
        raise not_json(body, exc.msg, start + exc.pos, start) from None
    if b"u0000" in body or b"U0000" in body:
        errors = Errors()
        check_nul(doc, "", errors)
        refuse(errors)
    return doc


# Real clients send one gzip member; bgzip-style files (64 KiB blocks) a few thousand at most. Every member costs a
# decompressor and at least 20 bytes, so a body of hundreds of thousands of empty ones inflates to nothing and no size
# limit stops it: their number is bounded instead.
MAX_GZIP_MEMBERS = 10_000
# The decompressor is fed slices of this many bytes: what follows a member's end is copied into its `unused_data`,
# and fed the whole rest of the body that copy was made once per member (quadratic: 400,000 empty members in 8 MB
# took past gunicorn's 30 s timeout). A slice bounds it.
_GZIP_SLICE = 16 * 1024


def gunzip(data: bytes, max_bytes: int) -> bytes:
    """Decompress gzip (at most MAX_GZIP_MEMBERS members) without ever holding more than max_bytes of output; 400
    malformed_gzip for what is not gzip, truncated or followed by anything else, 413 payload_too_large past either
    limit. Linear time in the body's length."""
    out = bytearray()
    view = memoryview(data)
    pos = members = 0
    while pos < len(view):
        members += 1
        if members > MAX_GZIP_MEMBERS:
            raise ApiError(
                413,
                "payload_too_large",
                f"The gzip body has more than {MAX_GZIP_MEMBERS:,} members, the limit; compress it as one stream.",
            )
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        while not d.eof:
            piece = view[pos : pos + _GZIP_SLICE]
            if not piece:
                raise ApiError(400, "malformed_gzip", "The gzip body is truncated.")
            try:
                out += d.decompress(piece, max_bytes + 1 - len(out))
            except zlib.error as exc:
                raise ApiError(400, "malformed_gzip", f"The body is not valid gzip: {exc}.") from None
            if len(out) > max_bytes:
                raise ApiError(
                    413,
                    "payload_too_large",
                    f"The body decompresses to more than the limit of {max_bytes / 2**20:g} MiB.",
                )
            pos += len(piece) - len(d.unconsumed_tail)
        pos -= len(d.unused_data)  # the bytes after the member's end: the next member's start
    return out  # type: ignore[return-value]  # a bytearray: no second copy of up to max_bytes


class Errors:
    """Schema violations: the first MAX_DETAILS kept, all counted, so a huge bad body gets a small answer."""

    __slots__ = ("kept", "total")

    def __init__(self) -> None:
        self.kept: list[dict[str, Any]] = []
        self.total = 0

    def add(self, path: str, code: str, message: str, limit: int | None = None) -> None:
        self.total += 1
        if len(self.kept) < MAX_DETAILS:
            detail: dict[str, Any] = {"path": path or "$", "code": code, "message": message}
            if limit is not None:
                detail["limit"] = limit
            self.kept.append(detail)

    def extend(self, details: list[dict[str, Any]]) -> None:
        for d in details:
            self.total += 1
            if len(self.kept) < MAX_DETAILS:
                self.kept.append(d)


def refuse(*found: Errors) -> None:
    """Raise one 422 for every violation found, in the order given; nothing when there is none."""
    total = sum(e.total for e in found)
    if not total:
        return
    details = [d for e in found for d in e.kept][:MAX_DETAILS]
    where = f" at {details[0]['path']}" if details[0].get("path") else ""
    more = f" (and {total - 1} more)" if total > 1 else ""
    raise validation_failed(details, f"The request is not valid{where}: {details[0]['message']}{more}.")


def error_detail(
    err: Mapping[str, Any], prefix: str = "", where: str | None = None, messages: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """One of pydantic's errors as a detail of a 422: its path, code and a message (`messages` by field name for a
    pattern mismatch, PATTERN_MESSAGES by default); `where` the part of the request ("query")."""
    path = prefix
    for part in err["loc"]:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    message = str(err["msg"]).removeprefix("Value error, ")  # a validator's own sentence, as it wrote it
    kind = err["type"]
    if kind in TYPE_MESSAGES:
        message = TYPE_MESSAGES[kind]
    elif kind == "string_pattern_mismatch":  # pydantic's quotes the regular expression
        message = (messages or PATTERN_MESSAGES).get(err["loc"][-1] if err["loc"] else "", "is not of the form asked")
    elif kind == "string_too_short" and (err.get("ctx") or {}).get("min_length") == 1:
        message = "must not be empty or only white space"  # what is stripped first counts as nothing
    else:  # "Input should be ...": the sentence about the field at `path`
        message = _SHOULD.sub("must ", message)
    detail = {"path": path or "$", "code": err["type"], "message": message}
    if where:
        detail["in"] = where
    return detail


# pydantic's messages name its own classes ("a valid dictionary or instance of SettingsChange"): said plainly instead
TYPE_MESSAGES = {
    "missing": "is required",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "dict_type": "must be an object",
    "list_type": "must be a list",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_parsing_size": "must be an integer of at most 4,300 digits",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "extra_forbidden": "is not a field of this object",
}
_SHOULD = re.compile(r"^(?:Input|String|Value|List|Dictionary|Tuple|Set|Object|Decimal|Number|Data) should ")

PATTERN_MESSAGES = {  # the message of a pattern mismatch, by field name
    "ticket_url": "must be an https:// URL",
    "issuer": "must be an https:// URL",
    "commit_sha": COMMIT_SHA_TEXT,
    "repo_full_name": REPO_RULE_TEXT,
    "repo": REPO_RULE_TEXT,
    "ref": GIT_REF_TEXT,
}


def check_nul(value: Any, path: str, errors: Errors) -> None:
    """Name where a NUL character is (PostgreSQL text cannot hold one) rather than fail at insert time.

    Iterative, not recursive: orjson accepts 1024 levels of nesting, more than Python's recursion limit.
    Each entry keeps (parent trail, key), so a path string is only built for the value that fails.
    """
    stack: list[tuple[Any, Any]] = [(value, None)]
    while stack:
        value, trail = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                errors.add(trail_path(path, trail), "nul_character", "contains a NUL character (\\u0000)")
                return
        elif isinstance(value, dict):
            if any("\x00" in k for k in value):
                errors.add(trail_path(path, trail), "nul_character", "contains a NUL character (\\u0000) in a key")
                return
            stack.extend((v, (trail, k)) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((value[i], (trail, i)) for i in range(len(value) - 1, -1, -1))


def trail_path(path: str, trail: Any) -> str:
    keys: list[Any] = []
    while trail is not None:
        trail, key = trail
        keys.append(key)
    for key in reversed(keys):
        path += f"[{key}]" if isinstance(key, int) else (f".{key}" if path else key)
    return path or "$"
