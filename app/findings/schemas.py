"""Parse and validate an upload (the seed shape or a raw Trivy report) into one normalised Upload, or raise.

Memory stays bounded whatever the body holds (spec sections 2 and 9). The body is never turned into Python
objects whole: parsed whole, 64 MiB of tiny findings took 1.2 GiB (orjson's tree, then pydantic's copy of it),
and 64 MiB of `[{},{},...]` 2 GiB. Instead `_Reader` walks the outer structure by byte positions (the top-level
object, `findings`, `Results` and their `Vulnerabilities`); the findings are parsed by orjson a chunk (CHUNK
bytes) at a time, checked by hand (`_finding`), and only their stored columns kept, merged by identity as they
come. So what is held at any time is the body, the unique findings as they will be stored, and one chunk being
read. A list of more than MAX_FINDINGS findings is refused before any of them is parsed (`_Reader.more_than`: a
regex pass that counts and builds nothing), at the latest when the reader reaches the first one past the limit.

Values the walk does not keep (unknown keys, Trivy's Metadata, Packages, ...) are still parsed, so that a body
that is not JSON is a 400 wherever the fault is, and then dropped. A value whose parse could take much memory
(many small values: `_parse_cost` over `PARSE_BUDGET`) is walked the same way instead of parsed whole, at most
MAX_FINDINGS values in a body (413 too_many_values), so that no shape of body takes long either.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, StringConstraints, ValidationError
from pydantic_core import PydanticCustomError

from app.fields import COMMIT_SHA, GIT_REF_TEXT, REPO_RULE_TEXT, is_git_ref, is_repo_full_name
from app.models import SEVERITIES
from app.policy import Signature
from app.web.bodies import PATTERN_MESSAGES, Errors, check_nul, error_detail, not_json, refuse, refuse_twice
from app.web.errors import ApiError, validation_failed

FINDING_PATTERN_MESSAGES = {
    **PATTERN_MESSAGES,
    "ref": GIT_REF_TEXT,
    "image_ref": "must not be blank",
    "severity": "must be one of critical, high, medium, low, unknown (any letter case)",
    "Severity": "must be one of critical, high, medium, low, unknown (any letter case)",
}
_SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}  # most severe first; unknown never blocks

# Limits per finding (spec section 2). Identity fields over their limit are refused (422); descriptive fields
# are cut to theirs, and the finding says so (`truncated`). The stricter bounds of cve_id, package and versions
# are their columns' widths.
DEFAULT_MAX_FINDINGS = 100_000
ADVISORY_ID_MAX = 1024  # cve_id and each vendor id (spec §2: identity fields at most 1,024 characters)
SHORT_MAX = 1024  # package_name, installed_version, fixed_version: VARCHAR(1024)
TARGET_MAX = 1024
TITLE_MAX = 1024
URL_MAX = 2048  # primary_url and each reference
REFERENCES_MAX = 64
VENDOR_IDS_MAX = 64  # ids an advisory is matched by (exceptions, advisory search): more in a finding refused


def _signature_status(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and value.lower() in ("signed", "unsigned", "unknown"):
        return value.lower()
    raise PydanticCustomError("signature_status", "must be one of signed, unsigned, unknown (any letter case)")


def _utf8_within(limit: int) -> Any:
    def check(value: str) -> str:
        if len(value.encode()) > limit:  # indexed columns: PostgreSQL bounds an index row in bytes
            raise PydanticCustomError("string_too_long", f"must be at most {limit} bytes in UTF-8")
        return value

    return AfterValidator(check)


def git_ref(value: str) -> str:
    """A git ref as sent ($GITHUB_REF), or a pattern error naming the rule."""
    if not is_git_ref(value):
        raise PydanticCustomError("string_pattern_mismatch", GIT_REF_TEXT)
    return value


def repo_full_name(value: str) -> str:
    """owner/name in lower case (GitHub's names are case-insensitive), or a pattern error naming the rules."""
    if not is_repo_full_name(value):
        raise PydanticCustomError("string_pattern_mismatch", REPO_RULE_TEXT)
    return value.lower()


ImageRef = Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"\S"), _utf8_within(1024)]
CommitSha = Annotated[str, StringConstraints(pattern=COMMIT_SHA, to_lower=True)]
GitRef = Annotated[str, AfterValidator(git_ref)]
RepoFullName = Annotated[str, AfterValidator(repo_full_name)]
Long = Annotated[str, StringConstraints(max_length=1024)]
SignatureStatus = Annotated[str | None, BeforeValidator(_signature_status)]
STRICT = ConfigDict(strict=True, extra="ignore")


class UploadContext(BaseModel):
    """What the finding set is about: fields of the seed body, or query parameters of a Trivy upload."""

    model_config = STRICT

    image_ref: ImageRef
    commit_sha: CommitSha
    repo_full_name: RepoFullName
    signature_status: SignatureStatus = None
    signature_issuer: Long | None = None
    signature_subject: Long | None = None
    ref: GitRef | None = None


def _schema_version(value: int | None) -> int | None:
    """Only SchemaVersion 2 is read as such (or none: a report cut down by hand): another version's findings could
    be where this reader does not look, and a report read as empty passes the gate."""
    if value is not None and value != 2:
        raise PydanticCustomError(
            "schema_version",
            f"is {value}: only Trivy's SchemaVersion 2 reports (and the legacy top-level array) are read",
        )
    return value


class TrivyHeader(BaseModel):
    """The top-level fields of a SchemaVersion 2 report the upload reads (Results is walked on its own)."""

    model_config = STRICT

    SchemaVersion: Annotated[int | None, AfterValidator(_schema_version)] = None
    ArtifactName: str | None = None


_TRIVY_KEYS = ("SchemaVersion", "Results", "ArtifactName", "ArtifactType")
QUERY_FIELDS = tuple(UploadContext.model_fields)
_CASE_FOLDED = ("commit_sha", "repo_full_name", "signature_status")  # stored lower-cased: any letter case, one value


def _same(key: str, body_value: Any, query_value: str) -> bool:
    """Whether a context field given in the body and as a query parameter says the same (as it is stored)."""
    if key in _CASE_FOLDED and isinstance(body_value, str):
        return body_value.lower() == query_value.lower()
    return bool(body_value == query_value)


@dataclass
class Upload:
    """A validated upload: what it is about, and its unique findings in the stored column names."""

    image_ref: str
    commit_sha: str
    repo_full_name: str
    signature: Signature
    findings: list[dict[str, Any]]
    duplicates: int
    source: str  # "seed" | "trivy" | "trivy-legacy"
    ref: str | None = None  # the git ref the image was built from ($GITHUB_REF)

    @property
    def repo_owner(self) -> str:
        return self.repo_full_name.split("/", 1)[0]


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def too_many_findings(limit: int, path: str) -> ApiError:
    return ApiError(
        413,
        "too_many_findings",
        f"The upload holds more than {limit:,} findings, the most this server takes in one upload "
        f"(MAX_FINDINGS); nothing was stored. Split the findings over several uploads.",
        [
            {
                "path": path,
                "code": "too_many_findings",
                "message": f"is past the limit of {limit:,} findings per upload (MAX_FINDINGS)",
                "limit": limit,
            }
        ],
    )


def too_deep(at: int) -> ApiError:
    return ApiError(
        413,
        "too_many_values",
        "The upload nests large values inside one another, so deep that reading them one at a time would read the "
        f"body over and over (at byte {at}); nothing was stored.",
        [
            {
                "path": "$",
                "code": "too_many_values",
                "message": f"nests large values too deep to read one at a time (at byte {at})",
            }
        ],
    )


def too_many_values(limit: int, path: str) -> ApiError:
    return ApiError(
        413,
        "too_many_values",
        f"The upload holds a list or object too large to parse whole (at {path or '$'}), and more values in such "
        f"than the {limit:,} this server reads one at a time in one upload (MAX_FINDINGS, at least "
        f"{WALKED_FLOOR:,}); nothing was stored.",
        [
            {
                "path": path or "$",
                "code": "too_many_values",
                "message": f"is past the limit of {limit:,} values read one at a time (MAX_FINDINGS, at least "
                f"{WALKED_FLOOR:,})",
                "limit": limit,
            }
        ],
    )


def _malformed(message: str, at: int | None = None) -> ApiError:
    where = f" at byte {at}" if at is not None else ""
    return ApiError(400, "malformed_json", f"The body is not valid JSON: {message}{where}.")


# ---------------------------------------------------------------- reading JSON without building it whole

_WS = re.compile(rb"[ \t\n\r]*")
_STR = rb'"(?:[^"\\]++|\\.)*+"'
_STRING = re.compile(_STR, re.S)
_SCALAR = re.compile(rb'[^ \t\n\r,:\[\]{}"]++')
_ATOM = rb'[^"\[\]{}]++|' + _STR
_TOKEN = re.compile(_ATOM + rb"|[\[\]{}]", re.S)


def _balanced(depth: int) -> bytes:
    """A container nested at most `depth` + 1 levels, to its closing bracket: one regex call finds where a value
    ends (valid JSON only; what it spans is then parsed by orjson, which checks everything)."""
    inner = _ATOM
    for _ in range(depth):
        inner = rb"(?:" + _ATOM + rb"|[\[{](?:" + inner + rb")*+[\]}])"
    return rb"[\[{](?:" + inner + rb")*+[\]}]"


_CONTAINER = re.compile(_balanced(8), re.S)
_ELEMENT = rb"[ \t\n\r]*+(?:" + _balanced(8) + rb"|" + _STR + rb'|[^ \t\n\r,:\[\]{}"]++)[ \t\n\r]*+,'


@functools.lru_cache(maxsize=16)
def _at_least(n: int) -> re.Pattern[bytes]:
    """Matches the first `n` elements of an array and the comma after each: there are more than `n`."""
    return re.compile(rb"(?:" + _ELEMENT + rb"){%d}" % n, re.S)


MAX_DEPTH = 1024  # as orjson: deeper nesting is a 400
# Values read one at a time in one upload (keys of its objects, Results, values of containers too large to parse
# whole): MAX_FINDINGS of them, and never fewer than this, whatever MAX_FINDINGS is (a body's own keys count too).
WALKED_FLOOR = 100_000
DEEP_TOKENS = 1_000_000  # tokens read a token at a time (values nested deeper than _CONTAINER reaches) in one upload
SMALL_VALUE = 64 * 1024  # bytes of JSON parsed whole without counting what they hold
PARSE_BUDGET = 48 * 2**20  # at most this much memory for one value parsed whole, by _parse_cost
_OPEN = (0x5B, 0x7B)  # [ {
_QUOTE, _COMMA, _COLON, _CLOSE_ARRAY, _CLOSE_OBJECT = 0x22, 0x2C, 0x3A, 0x5D, 0x7D


class _TooBig:
    """Stands for a container kept out of memory where a string or list was expected: its type is wrong."""

    __slots__ = ()


_TOO_BIG = _TooBig()


class _Reader:
    """Byte positions in one JSON text: walk its containers, find where values end, parse pieces with orjson."""

    def __init__(self, buf: bytes, max_values: int) -> None:
        self.buf = buf
        self.view = memoryview(buf)
        self.size = len(buf)
        self.nul = b"u0000" in buf or b"U0000" in buf  # the only way a NUL character can be in valid JSON
        self.braces = buf.count(b"}")  # at least one per object: more objects than this there cannot be
        self.errors = Errors()  # outside the findings (those have their own, see _Rows)
        self.walked = 0  # values besides the findings read one by one (for too_many_values)
        self.keys = 0  # keys of objects read a key at a time, and Results (for too_many_values too)
        self.deep_tokens = 0  # tokens read by _end_of_deep (for too_deep)
        self.scanned = 0  # bytes of large containers end_of has scanned: twice the body at most (for too_deep)
        self.scan_budget = 2 * len(buf)
        self.max_values = max_values

    def ws(self, pos: int) -> int:
        return _WS.match(self.buf, pos).end()  # type: ignore[union-attr]  # matches the empty string

    def byte(self, pos: int) -> int:
        return self.buf[pos] if pos < self.size else -1

    def end_of(self, pos: int, depth: int) -> int:
        """Where the value starting at `pos` ends (a structural check only: parse what it spans to validate)."""
        c = self.byte(pos)
        if c in _OPEN:
            m = _CONTAINER.match(self.buf, pos)
            end = m.end() if m else self._end_of_deep(pos, depth)
            if end - pos > SMALL_VALUE:  # a large value walked is scanned again at each level it nests
                self.scanned += end - pos
                if self.scanned > self.scan_budget:
                    raise too_deep(pos)
            return end
        m = (_STRING if c == _QUOTE else _SCALAR).match(self.buf, pos)
        if m is None:
            raise _malformed("a value was expected" if c != -1 else "the body ends early", pos)
        return m.end()

    def _end_of_deep(self, pos: int, depth: int) -> int:
        """end_of, a token at a time: for values nested deeper than _CONTAINER reaches, or not well-formed. At most
        DEEP_TOKENS tokens in one body (a value walked is read again at each level it nests: a few MiB nested a few
        dozen levels deep took minutes)."""
        buf, match, level, start = self.buf, _TOKEN.match, 0, pos
        left = DEEP_TOKENS - self.deep_tokens
        try:
            while True:
                left -= 1
                if left < 0:
                    raise too_deep(start)
                m = match(buf, pos)
                if m is None:
                    raise _malformed("a string is not closed" if pos < self.size else "the body ends early", pos)
                c = buf[pos]
                if c in _OPEN:
                    level += 1
                    if depth + level > MAX_DEPTH:
                        raise _malformed(f"nested deeper than {MAX_DEPTH} levels", pos)
                elif c in (_CLOSE_ARRAY, _CLOSE_OBJECT):
                    level -= 1
                    if level <= 0:
                        return m.end()
                pos = m.end()
        finally:
            self.deep_tokens = DEEP_TOKENS - max(left, 0)

    def more_than(self, pos: int, n: int, objects: int) -> bool:
        """Whether the array at `pos` has more than `n` elements, found by one regex call that builds nothing
        (False too when its elements nest deeper than _CONTAINER reaches: the caller counts as it reads).

        Skipped when the body has at most `n` objects besides `objects` others known: then it cannot have more than
        `n` findings that are objects, and entries of other types are refused (422) as they are counted, without
        a row built for them."""
        if n <= 0 or self.braces - objects <= n:
            return False
        return _at_least(n).match(self.buf, pos + 1) is not None

    def load(self, start: int, end: int) -> Any:
        try:
            return orjson.loads(self.view[start:end])
        except orjson.JSONDecodeError as exc:
            raise not_json(self.view, exc.msg, start + exc.pos, start, end) from None

    def cheap(self, start: int, end: int) -> bool:
        """Whether parsing buf[start:end] whole stays within PARSE_BUDGET (_parse_cost, an upper bound)."""
        return end - start <= SMALL_VALUE or _parse_cost(self.buf, start, end) <= PARSE_BUDGET

    def value(self, start: int, depth: int, path: str, errors: Errors) -> tuple[Any, int]:
        """The value at `start` and where it ends: parsed, or _TOO_BIG for a container too costly to hold (which
        is then walked to validate it)."""
        end = self.end_of(start, depth)
        if self.cheap(start, end) or self.buf[start] not in _OPEN:  # a lone string is at most 4x its bytes
            v = self.load(start, end)
            if self.nul:
                check_nul(v, path, errors)
            return v, end
        self._walk(start, depth, path, errors)
        return _TOO_BIG, end

    def skip(self, start: int, depth: int, path: str, errors: Errors) -> int:
        """Validate the value at `start` without keeping it; return where it ends."""
        return self.value(start, depth, path, errors)[1]

    def _walk(self, start: int, depth: int, path: str, errors: Errors) -> int:
        def child(key: str | int, pos: int) -> int:
            self.count_walked(path, key)
            return self.skip(pos, depth + 1, _join(path, key), errors)

        if self.buf[start] == _OPEN[1]:
            return self.members(start, depth, path, errors, child)
        return self.items(start, depth, child)

    def count_walked(self, path: str, key: str | int) -> None:
        """One more value read on its own inside a container too large to parse whole: at most max_values of
        them in a body, so that a body of millions of tiny values is refused in well under a second."""
        self.walked += 1
        if self.walked > self.max_values:
            raise too_many_values(self.max_values, _join(path, key))

    def count_key(self, path: str, key: str | int) -> None:
        """One more key of an object read a key at a time (the body's, a Result's, a finding's too large to parse
        whole), or one more Result: at most max_values of them in a body, besides the values count_walked counts."""
        self.keys += 1
        if self.keys > self.max_values:
            raise too_many_values(self.max_values, _join(path, key))

    def members(self, pos: int, depth: int, path: str, errors: Errors, member: Callable[[str, int], int]) -> int:
        """Call member(key, value position) for each member of the object at `pos` (which returns where that
        value ends); return where the object ends."""
        if depth + 1 > MAX_DEPTH:
            raise _malformed(f"nested deeper than {MAX_DEPTH} levels", pos)
        buf, ws = self.buf, self.ws
        pos = ws(pos + 1)
        if self.byte(pos) == _CLOSE_OBJECT:
            return pos + 1
        while True:
            m = _STRING.match(buf, pos)
            if m is None:
                raise _malformed("a key was expected", pos)
            key = self.load(pos, m.end())
            if self.nul and "\x00" in key:
                errors.add(path, "nul_character", "contains a NUL character (\\u0000) in a key")
            pos = ws(m.end())
            if self.byte(pos) != _COLON:
                raise _malformed("':' was expected", pos)
            pos = ws(member(key, ws(pos + 1)))
            c = self.byte(pos)
            if c == _COMMA:
                pos = ws(pos + 1)
            elif c == _CLOSE_OBJECT:
                return pos + 1
            else:
                raise _malformed("',' or '}' was expected", pos)

    def items(self, pos: int, depth: int, item: Callable[[int, int], int]) -> int:
        """Call item(index, position) for each element of the array at `pos` (which returns where that element
        ends); return where the array ends."""
        if depth + 1 > MAX_DEPTH:
            raise _malformed(f"nested deeper than {MAX_DEPTH} levels", pos)
        ws = self.ws
        pos = ws(pos + 1)
        if self.byte(pos) == _CLOSE_ARRAY:
            return pos + 1
        i = 0
        while True:
            pos = ws(item(i, pos))
            c = self.byte(pos)
            if c == _COMMA:
                pos = ws(pos + 1)
                i += 1
            elif c == _CLOSE_ARRAY:
                return pos + 1
            else:
                raise _malformed("',' or ']' was expected", pos)


def _parse_cost(buf: bytes, start: int, end: int) -> int:
    """An upper bound of the memory orjson takes to build buf[start:end]: every value (at most one per ',', ':',
    '[' or '{') as a Python object with its container slot, and every string at 4 bytes a character."""
    values = buf.count(b",", start, end) + buf.count(b":", start, end)
    values += buf.count(b"[", start, end) + buf.count(b"{", start, end)
    return 160 * (values + 1) + 4 * (end - start)


CHUNK = 256 * 1024  # bytes of findings parsed by one orjson call: at most some MiB of objects, whatever they hold
_WS_BYTES = b" \t\n\r"


def _cut(buf: bytes, start: int, end: int) -> int:
    """The position of the last ',' in buf[start:end] that looks like one between two objects of a list ('}' ','
    '{', with white space), or -1. A guess: the parse of what comes before it proves it (see _Upload._list)."""
    j = end
    for _ in range(64):  # a '{' inside a finding is preceded by ':' (a Trivy vulnerability has a few)
        j = buf.rfind(b"{", start + 1, j)
        if j < 0:
            return -1
        k = j - 1
        while buf[k] in _WS_BYTES:
            k -= 1
        if buf[k] == _COMMA:
            comma = k
            k -= 1
            while buf[k] in _WS_BYTES:
                k -= 1
            if buf[k] == _CLOSE_OBJECT:
                return comma
    return -1


# ---------------------------------------------------------------- one finding


_MISSING: Any = object()
_SEVERITIES = {s: s for s in SEVERITIES}
SEED_NAMES = (
    "cve_id",
    "severity",
    "package_name",
    "installed_version",
    "fixed_version",
    "target",
    "title",
    "primary_url",
    "references",
    "vendor_ids",
)
TRIVY_NAMES = (
    "VulnerabilityID",
    "Severity",
    "PkgName",
    "InstalledVersion",
    "FixedVersion",
    "PkgPath",
    "Title",
    "PrimaryURL",
    "References",
    "VendorIDs",
)
_LISTS = {"references", "vendor_ids", "References", "VendorIDs"}
_FINDING_LISTS = ("findings", "Results")  # a body's keys whose value holds findings
_READ_FIELDS = frozenset((*QUERY_FIELDS, "SchemaVersion", "ArtifactName"))  # the body's other keys that are read
# A key given twice where the findings are (JSON parsers keep the last; a gate must not guess, so the upload is a 422)
TWICE = "is given twice in the same object: which one is meant is unclear"
BOTH_LISTS = (
    "findings (the seed shape) and Results (a Trivy report) are both given: which holds the findings is unclear, so "
    "neither is read; send one"
)
# The lists a body's findings are in, by their spelling folded: another spelling would be skipped as an unknown
# member, and the findings in it with it (0 findings: a green gate). Vulnerabilities is a Result's.
_LISTS_FOLDED = {"findings": "findings", "results": "Results", "vulnerabilities": "Vulnerabilities"}
# A top-level member by which another scanner format is known: such a body has no findings this reader could read.
_OTHER_FORMATS = {"runs": "SARIF", "bomFormat": "CycloneDX", "spdxVersion": "SPDX"}
# Members of a whole Trivy report: an array of reports (`jq -s` of several) read as a legacy array of Results would
# give Results with no Vulnerabilities.
_REPORT_ONLY_KEYS = ("SchemaVersion", "Results", "ArtifactName", "ArtifactType", "Metadata")


# Distinct references and vendor ids one upload keeps. Each is a Python string of about 50 bytes however short it is
# in the body ("ab", five bytes there), so 64 MiB of short distinct ones would take most of a GiB: past this many
# new ones are cut, as a cut reference is (`truncated`). A value seen before costs a pointer (_Kept keeps one string
# of each), and a real report repeats its advisories' links and ids across packages: it comes nowhere near.
KEPT_STRINGS_MAX = 1_000_000


class _Kept:
    """The distinct references and vendor ids of one upload, one string object each, at most KEPT_STRINGS_MAX."""

    __slots__ = ("strings",)

    def __init__(self) -> None:
        self.strings: dict[str, str] = {}

    def keep(self, values: Sequence[str]) -> tuple[tuple[str, ...], bool]:
        """`values` (strings) as kept, and whether some were cut (new ones past KEPT_STRINGS_MAX)."""
        strings = self.strings
        if len(strings) + len(values) <= KEPT_STRINGS_MAX:  # room even if every one is new
            same = strings.setdefault
            return tuple([same(v, v) for v in values]), False
        kept = []
        for v in values:
            found = strings.get(v)
            if found is None:
                if len(strings) >= KEPT_STRINGS_MAX:
                    continue
                strings[v] = found = v
            kept.append(found)
        return tuple(kept), len(kept) < len(values)


def _finding(
    f: Any, names: tuple[str, ...], path: str, errors: Errors, seed: bool, kept: _Kept
) -> dict[str, Any] | None:
    """One finding as stored (the column names), or None when it breaks the schema (each fault added to
    errors with its path). `names` are the body's field names, in the order of SEED_NAMES; `kept` holds the
    upload's references and vendor ids."""
    if type(f) is not dict:
        errors.add(path, "dict_type" if seed else "model_type", "must be an object")
        return None
    before = errors.total
    k_id, k_sev, k_pkg, k_inst, k_fixed, k_target, k_title, k_url, k_refs, k_vids = names
    get = f.get

    # Each check inline for a value that passes, through _text (which names the fault) for one that does not:
    # this runs for every finding of every upload.
    cve_id = get(k_id, _MISSING)
    if type(cve_id) is not str or not 0 < len(cve_id) <= ADVISORY_ID_MAX:
        _text(cve_id, ADVISORY_ID_MAX, path, k_id, errors, required=True, nullable=False)
    elif not cve_id.isascii():
        _indexable(cve_id, f"{path}.{k_id}", errors)
    package = get(k_pkg, _MISSING)
    if type(package) is not str or not 0 < len(package) <= SHORT_MAX:
        _text(package, SHORT_MAX, path, k_pkg, errors, required=True, nullable=False)
    installed = get(k_inst, _MISSING)
    if installed is _MISSING and not seed:
        installed = None
    elif installed is not None and (type(installed) is not str or len(installed) > SHORT_MAX):
        _text(installed, SHORT_MAX, path, k_inst, errors, required=True)
    fixed = get(k_fixed)
    if fixed is not None and (type(fixed) is not str or len(fixed) > SHORT_MAX):
        _text(fixed, SHORT_MAX, path, k_fixed, errors)
    target = get(k_target)
    if target is not None and (type(target) is not str or len(target) > TARGET_MAX):
        _text(target, TARGET_MAX, path, k_target, errors)

    severity = get(k_sev, _MISSING)
    if severity is None or (severity is _MISSING and not seed):
        severity = "unknown"
    elif severity is _MISSING:
        errors.add(f"{path}.{k_sev}", "missing", "is required")
    elif type(severity) is not str:
        errors.add(f"{path}.{k_sev}", "string_type", "must be a string")
    else:
        severity = _SEVERITIES.get(severity) or _SEVERITIES.get(severity.lower())
        if severity is None:
            errors.add(f"{path}.{k_sev}", "string_pattern_mismatch", FINDING_PATTERN_MESSAGES["severity"])

    truncated = False
    title = get(k_title)
    if title is not None:
        if type(title) is not str:
            errors.add(f"{path}.{k_title}", "string_type", "must be a string")
        elif len(title) > TITLE_MAX:
            title, truncated = title[:TITLE_MAX], True
    url = get(k_url)
    if url is not None:
        if type(url) is not str:
            errors.add(f"{path}.{k_url}", "string_type", "must be a string")
        elif len(url) > URL_MAX:
            url, truncated = url[:URL_MAX], True

    # Tuples, not lists: a row holding only strings and tuples of strings drops out of the garbage collector's
    # sight, which otherwise rescans every row kept so far (a third of the parse time of 100,000 findings).
    references: Any = get(k_refs)
    if references is None:
        references = ()
    elif type(references) is not list:
        errors.add(f"{path}.{k_refs}", "list_type", "must be a list of strings")
    else:
        if len(references) > REFERENCES_MAX:
            _check_items(references[REFERENCES_MAX:], REFERENCES_MAX, path, k_refs, errors)
            del references[REFERENCES_MAX:]  # the list is this parse's own
            truncated = True
        for i, ref in enumerate(references):
            if type(ref) is not str:
                errors.add(f"{path}.{k_refs}[{i}]", "string_type", "must be a string")
            elif len(ref) > URL_MAX:
                references[i], truncated = ref[:URL_MAX], True

    vendor_ids: Any = get(k_vids)
    if vendor_ids is None:
        vendor_ids = ()
    elif type(vendor_ids) is not list:
        errors.add(f"{path}.{k_vids}", "list_type", "must be a list of advisory ids")
    else:
        if len(vendor_ids) > VENDOR_IDS_MAX:
            errors.add(f"{path}.{k_vids}", "too_long", f"must hold at most {VENDOR_IDS_MAX} ids", VENDOR_IDS_MAX)
        for i, vid in enumerate(vendor_ids):
            _text(vid, ADVISORY_ID_MAX, f"{path}.{k_vids}", i, errors, nullable=False, item=True)
            if type(vid) is str and not vid.isascii() and len(vid) <= ADVISORY_ID_MAX:
                _indexable(vid, f"{path}.{k_vids}[{i}]", errors)

    if errors.total != before:
        return None
    if references or vendor_ids:  # every one a string by now
        references, cut = kept.keep(references)
        vendor_ids, cut_ids = kept.keep(vendor_ids)
        truncated = truncated or cut or cut_ids
    else:
        references = vendor_ids = ()  # none given, or empty lists: tuples all the same
    return {
        "cve_id": cve_id,
        "severity": severity,
        "package": package,
        "installed_version": installed or "",
        "fixed_version": fixed or None,
        "target": target or None,  # "" says what no target says: one finding, not two (duplicates)
        "title": title,
        "primary_url": url,
        "references": references,
        "vendor_ids": vendor_ids,
        "synthetic": False,
        "truncated": truncated,
    }


def _text(
    v: Any,
    limit: int,
    path: str,
    key: str | int,
    errors: Errors,
    *,
    required: bool = False,
    nullable: bool = True,
    item: bool = False,
) -> Any:
    """A string field of at most `limit` characters (an empty one refused where null is: ids and names)."""
    if v is None and nullable:
        return None
    if type(v) is str:
        if len(v) > limit:
            errors.add(
                f"{path}[{key}]" if item else f"{path}.{key}",
                "string_too_long",
                f"must be at most {limit:,} characters",
                limit,
            )
        elif not v and not nullable:
            errors.add(f"{path}[{key}]" if item else f"{path}.{key}", "string_too_short", "must not be empty")
        return v
    where = f"{path}[{key}]" if item else f"{path}.{key}"
    if v is _MISSING:
        if required:
            errors.add(where, "missing", "is required")
        return None
    errors.add(where, "string_type", "must be a string")
    return None


def _indexable(advisory_id: str, where: str, errors: Errors) -> None:
    """An advisory id is indexed in upper case (the advisory search's latest_advisories), and PostgreSQL bounds an
    index row in bytes: beyond ASCII, its upper case must fit ADVISORY_ID_MAX bytes in UTF-8 (as image_ref must)."""
    if len(advisory_id.upper().encode()) > ADVISORY_ID_MAX:
        errors.add(where, "string_too_long", f"must be at most {ADVISORY_ID_MAX:,} bytes in UTF-8", ADVISORY_ID_MAX)


def _check_items(extra: list[Any], offset: int, path: str, key: str, errors: Errors) -> None:
    """References past the kept ones are dropped, but must still be strings."""
    for i, ref in enumerate(extra, offset):
        if type(ref) is not str:
            errors.add(f"{path}.{key}[{i}]", "string_type", "must be a string")


class _Rows:
    """The unique findings of one finding list, merged as they are read."""

    __slots__ = ("errors", "total", "unique")

    def __init__(self) -> None:
        self.unique: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.total = 0
        self.errors = Errors()

    def add(self, row: dict[str, Any]) -> None:
        """Store a finding once per (id, package, installed version, target): the copy kept takes the most
        severe severity and a non-empty fixed version of all copies (a gate fails closed), every copy's vendor ids and
        references (up to their caps: `truncated` past them), and the first title and primary URL given."""
        key = (row["cve_id"], row["package"], row["installed_version"], row["target"])
        kept = self.unique.setdefault(key, row)
        if kept is not row:
            if _SEVERITY_RANK[row["severity"]] < _SEVERITY_RANK[kept["severity"]]:
                kept["severity"] = row["severity"]
            if not kept["fixed_version"] and row["fixed_version"]:
                kept["fixed_version"] = row["fixed_version"]
            for field, cap in (("vendor_ids", VENDOR_IDS_MAX), ("references", REFERENCES_MAX)):
                if row[field] and row[field] != kept[field]:  # an exception or a search by another vendor's id
                    merged = tuple(dict.fromkeys((*kept[field], *row[field])))
                    if len(merged) > cap:
                        merged, kept["truncated"] = merged[:cap], True
                    kept[field] = merged
            for field in ("title", "primary_url"):
                if not kept[field] and row[field]:
                    kept[field] = row[field]
            # Any copy cut: in whatever order the copies come (the flag is in the chain's payload), the finding says so.
            kept["truncated"] = kept["truncated"] or row["truncated"]

    @property
    def duplicates(self) -> int:
        return self.total - len(self.unique)


# ---------------------------------------------------------------- the upload


def parse_upload(body: bytes, query: Mapping[str, str], max_findings: int = DEFAULT_MAX_FINDINGS) -> Upload:
    """Validate a whole upload before anything is stored.

    400 for a body that is not JSON, 413 (too_many_findings) past `max_findings` findings, 422 naming each bad
    JSON path (the first MAX_DETAILS of them).
    """
    refuse_twice(query, QUERY_FIELDS)
    start = 3 if body.startswith(b"\xef\xbb\xbf") else 0  # a BOM is tolerated
    return _Upload(_Reader(body, max(max_findings, WALKED_FLOOR)), max_findings).parse(start, query)


class _Upload:
    """One body read into an Upload: the top-level value, its findings and its context."""

    def __init__(self, reader: _Reader, max_findings: int) -> None:
        self.r = reader
        self.max_findings = max_findings
        self.kept = _Kept()  # the references and vendor ids kept
        self.findings: _Rows | None = None  # the last `findings` list of a seed body
        self.results: _Rows | None = None  # the last `Results` list of a Trivy report

    def parse(self, start: int, query: Mapping[str, str]) -> Upload:
        r = self.r
        pos = r.ws(start)
        c = r.byte(pos)
        if c == _OPEN[0]:
            end = self._results(pos, 0, "")
            self._end(end)
            return self._trivy(None, query, "trivy-legacy")
        if c != _OPEN[1]:
            end = r.skip(pos, 0, "", r.errors)
            self._end(end)
            raise validation_failed(
                [{"path": "$", "code": "type", "message": "must be a JSON object: the seed shape or a Trivy report"}],
                "The body must be a JSON object: the seed shape (with findings) or a Trivy JSON report.",
            )
        present: set[str] = set()
        fields: dict[str, Any] = {}

        def member(key: str, pos: int) -> int:
            r.count_key("", key)  # the body's own keys count too: millions of them are walked one by one
            if key in present and (key in _FINDING_LISTS or key in _READ_FIELDS):  # which is meant is unclear
                r.errors.add(key, "duplicate_key", TWICE)
                return r.skip(pos, 1, key, r.errors)
            present.add(key)
            if key in _FINDING_LISTS and present.issuperset(_FINDING_LISTS):  # a report with seed fields added?
                r.errors.add(key, "conflict", BOTH_LISTS)
                return r.skip(pos, 1, key, r.errors)
            if key not in _FINDING_LISTS and key.lower() in _LISTS_FOLDED:
                where_it_goes = _LISTS_FOLDED[key.lower()]
                why = (
                    "is not read here: Vulnerabilities are a Result's, in Results"
                    if where_it_goes == "Vulnerabilities"
                    else f"is not read: the list is spelt {where_it_goes}"
                )
                r.errors.add(key, "unknown_spelling", why)
                return r.skip(pos, 1, key, r.errors)
            if key == "findings":
                return self._findings(pos)
            if key == "Results":
                return self._results(pos, 1, "Results")
            if key in _READ_FIELDS:
                fields[key], end = r.value(pos, 1, key, r.errors)
                return end
            return r.skip(pos, 1, key, r.errors)

        self._end(r.members(pos, 0, "", r.errors, member))
        if "findings" not in present and any(k in present for k in _TRIVY_KEYS):
            return self._trivy(fields, query, "trivy")
        other = next((name for key, name in _OTHER_FORMATS.items() if key in present), None)
        if "findings" not in present and other is not None:
            message = f"is a {other} document, not a Trivy JSON report: run trivy with --format json"
            raise validation_failed(
                [{"path": "$", "code": "format", "message": message}],
                f"The body {message} (or send the seed shape, with findings).",
            )
        return self._seed(fields, "findings" in present, query)

    def _end(self, end: int) -> None:
        end = self.r.ws(end)
        if end != self.r.size:
            raise _malformed("unexpected content after the JSON value", end)

    def _findings(self, pos: int) -> int:
        """The seed's findings array: each finding parsed, checked and merged on its own."""
        r = self.r
        rows = self.findings = _Rows()
        c = r.byte(pos)
        if c != _OPEN[0]:
            end = r.skip(pos, 1, "findings", rows.errors)
            rows.errors.add("findings", "list_type", "must be a list of findings")
            return end
        if r.more_than(pos, self.max_findings, 1):  # refused before a single finding is built (1: the body's own)
            raise too_many_findings(self.max_findings, f"findings[{self.max_findings}]")

        def take(i: int, f: Any) -> None:
            row = _finding(f, SEED_NAMES, f"findings[{i}]", rows.errors, True, self.kept)
            if row is not None and not rows.errors.total:
                rows.add(row)

        return self._list(pos, 1, "findings", rows, take)

    def _list(self, pos: int, depth: int, prefix: str, rows: _Rows, take: Callable[[int, Any], None]) -> int:
        """A list of findings at `pos` (its '['): each finding counted against MAX_FINDINGS, parsed, and handed to
        take(index, value); return where the list ends.

        Findings are parsed a chunk at a time: one orjson call for those in the next CHUNK bytes, up to a ','
        between two of them. That ',' is guessed (the last '}' ',' '{' in the chunk, see _cut) and proven by the
        parse: text that parses as a list of values from the start of a finding up to a ',' is exactly the
        findings before that ','. Where the guess fails (the '{' was inside a string, or the text is not JSON),
        the findings up to it are read one at a time.
        """
        r = self.r
        buf, ws, byte = r.buf, r.ws, r.byte
        pos = ws(pos + 1)
        if byte(pos) == _CLOSE_ARRAY:
            return pos + 1
        i, misses, single_until = 0, 0, -1
        while True:
            if pos > single_until and misses < 8:
                cut = _cut(buf, pos, min(pos + CHUNK, r.size))
                if cut > 0:
                    chunk = bytearray(b"[")
                    chunk += r.view[pos:cut]
                    chunk += b"]"
                    try:
                        values = orjson.loads(chunk)
                    except orjson.JSONDecodeError:
                        misses, single_until = misses + 1, cut
                    else:
                        if rows.total + len(values) > self.max_findings:
                            past = i + self.max_findings - rows.total
                            raise too_many_findings(self.max_findings, f"{prefix}[{past}]")
                        rows.total += len(values)
                        for value in values:
                            if r.nul:
                                check_nul(value, f"{prefix}[{i}]", rows.errors)
                            take(i, value)
                            i += 1
                        pos = ws(cut + 1)
                        continue
            if rows.total >= self.max_findings:
                raise too_many_findings(self.max_findings, f"{prefix}[{i}]")
            rows.total += 1
            end = r.end_of(pos, depth + 1)
            if r.cheap(pos, end):
                value = r.load(pos, end)
                if r.nul:
                    check_nul(value, f"{prefix}[{i}]", rows.errors)
            else:
                value = self._one_walked(pos, depth + 1, f"{prefix}[{i}]", rows.errors)
            take(i, value)
            i += 1
            pos = ws(end)
            c = byte(pos)
            if c == _COMMA:
                pos = ws(pos + 1)
            elif c == _CLOSE_ARRAY:
                return pos + 1
            else:
                raise _malformed("',' or ']' was expected", pos)

    def _one_walked(self, pos: int, depth: int, path: str, errors: Errors) -> Any:
        """A finding too costly to parse whole (a list of a million references, say), a field at a time."""
        r = self.r
        if r.buf[pos] != _OPEN[1]:
            r.skip(pos, depth, path, errors)
            return _TOO_BIG
        f: dict[str, Any] = {}

        def member(key: str, pos: int) -> int:
            where = _join(path, key)
            r.count_key(path, key)  # a finding of millions of keys is refused, not walked to the end
            if key in _LISTS and r.byte(pos) == _OPEN[0]:
                kept: list[Any] = []

                def item(i: int, pos: int) -> int:
                    r.count_walked(where, i)
                    if len(kept) <= max(REFERENCES_MAX, VENDOR_IDS_MAX):  # one more than kept: "there were more"
                        v, end = r.value(pos, depth + 2, _join(where, i), errors)
                        kept.append(v)
                        return end
                    if r.byte(pos) != _QUOTE:
                        errors.add(_join(where, i), "string_type", "must be a string")
                    return r.skip(pos, depth + 2, _join(where, i), errors)

                end = r.items(pos, depth + 1, item)
                f[key] = kept
                return end
            f[key], end = r.value(pos, depth + 1, where, errors)
            return end

        r.members(pos, depth, path, errors, member)
        return f

    def _results(self, pos: int, depth: int, prefix: str) -> int:
        """Trivy's Results (the top-level array of a legacy report, depth 0): each Result's Vulnerabilities read
        as the seed's findings, its other members validated and dropped."""
        r = self.r
        rows = self.results = _Rows()
        c = r.byte(pos)
        if c != _OPEN[0]:
            end = r.skip(pos, depth, prefix or "$", rows.errors)
            if r.buf[pos:end] != b"null":
                rows.errors.add(prefix or "$", "list_type", "must be a list of Results")
            return end

        def result(i: int, pos: int) -> int:
            where = f"{prefix}[{i}]"
            r.count_key(prefix, i)  # each Result is read on its own: millions of them are refused
            if r.byte(pos) != _OPEN[1]:
                end = r.skip(pos, depth + 1, where, rows.errors)
                rows.errors.add(where, "model_type", "must be an object")
                return end
            target: Any = None
            found: list[dict[str, Any]] = []
            seen: set[str] = set()

            def member(key: str, pos: int) -> int:
                nonlocal target, found
                r.count_key(where, key)
                if key in seen and key in ("Target", "Vulnerabilities"):
                    rows.errors.add(_join(where, key), "duplicate_key", TWICE)
                    return r.skip(pos, depth + 2, _join(where, key), rows.errors)
                seen.add(key)
                if key in _REPORT_ONLY_KEYS or key in _OTHER_FORMATS or key == "findings" or key in QUERY_FIELDS:
                    rows.errors.add(  # a whole report, or a seed body, in an array (`jq -s`): none is a Result
                        _join(where, key),
                        "report_in_results",
                        "belongs to a whole report or upload body, not to a Trivy Result: upload each on its own",
                    )
                    return r.skip(pos, depth + 2, _join(where, key), rows.errors)
                if key != "Vulnerabilities" and key.lower() == "vulnerabilities":
                    rows.errors.add(
                        _join(where, key), "unknown_spelling", "is not read: the list is spelt Vulnerabilities"
                    )
                    return r.skip(pos, depth + 2, _join(where, key), rows.errors)
                if key == "Target":
                    target, end = r.value(pos, depth + 2, f"{where}.Target", rows.errors)
                    if target is not None and type(target) is not str:  # null: no Target, as Vulnerabilities null
                        rows.errors.add(f"{where}.Target", "string_type", "must be a string")
                        target = None
                    return end
                if key == "Vulnerabilities":
                    found = []
                    return self._vulnerabilities(pos, depth + 2, f"{where}.Vulnerabilities", rows, found)
                return r.skip(pos, depth + 2, _join(where, key), rows.errors)

            end = r.members(pos, depth + 1, where, rows.errors, member)
            if found and target and len(target) > TARGET_MAX and any(row["target"] is None for row in found):
                rows.errors.add(  # a vulnerability without PkgPath takes the Result's Target as its target
                    f"{where}.Target", "string_too_long", f"must be at most {TARGET_MAX:,} characters", TARGET_MAX
                )
            if not rows.errors.total:
                for row in found:
                    if row["target"] is None:
                        row["target"] = target or None
                    rows.add(row)
            return end

        return r.items(pos, depth, result)

    def _vulnerabilities(self, pos: int, depth: int, prefix: str, rows: _Rows, found: list[dict[str, Any]]) -> int:
        r = self.r
        if r.byte(pos) != _OPEN[0]:
            end = r.skip(pos, depth, prefix, rows.errors)
            if r.buf[pos:end] != b"null":
                rows.errors.add(prefix, "list_type", "must be a list of vulnerabilities")
            return end
        room = self.max_findings - rows.total
        if r.more_than(pos, room, 0):
            raise too_many_findings(self.max_findings, f"{prefix}[{room}]")

        def take(i: int, v: Any) -> None:
            row = _finding(v, TRIVY_NAMES, f"{prefix}[{i}]", rows.errors, False, self.kept)
            if row is not None and not rows.errors.total:
                if not row["target"]:  # an empty PkgPath falls back to the Result's Target
                    row["target"] = None
                found.append(row)

        return self._list(pos, depth, prefix, rows, take)

    def _seed(self, fields: dict[str, Any], has_findings: bool, query: Mapping[str, str]) -> Upload:
        """A seed body; its `ref` may come as a query parameter instead (spec section 2). Another field given both
        in the body and as a query parameter (as a raw report's context comes) must say the same: which one was
        meant is unclear otherwise."""
        context = Errors()
        query_ref = query.get("ref")
        if query_ref is not None:
            if fields.get("ref") is None:
                if is_git_ref(query_ref):
                    fields["ref"] = query_ref
                else:
                    context.extend(
                        [{"path": "ref", "code": "string_pattern_mismatch", "message": GIT_REF_TEXT, "in": "query"}]
                    )
            elif fields["ref"] != query_ref:
                context.add("ref", "conflict", "differs from the query parameter ref: send the ref once")
        for key in QUERY_FIELDS:
            if key != "ref" and key in query and key in fields and not _same(key, fields[key], query[key]):
                context.add(key, "conflict", f"differs from the query parameter {key}: send it once")
        try:
            ctx = UploadContext.model_validate({k: v for k, v in fields.items() if k in QUERY_FIELDS})
        except ValidationError as exc:
            ctx = None
            details = [error_detail(e, messages=FINDING_PATTERN_MESSAGES) for e in exc.errors(include_url=False)]
            for d in details:
                if d["code"] == "missing" and d["path"] in query:  # given where a raw report's context comes
                    d["message"] = "is required in the body: a seed body gives its own (the query's are a raw report's)"
            context.extend(details)
        rows = self.findings or _Rows()
        if not has_findings:
            context.add("findings", "missing", "is required")
        refuse(context, self.r.errors, rows.errors)
        assert ctx is not None
        return Upload(
            image_ref=ctx.image_ref,
            commit_sha=ctx.commit_sha,
            repo_full_name=ctx.repo_full_name,
            signature=Signature(ctx.signature_status or "unknown", ctx.signature_issuer, ctx.signature_subject),
            findings=list(rows.unique.values()),
            duplicates=rows.duplicates,
            source="seed",
            ref=ctx.ref,
        )

    def _trivy(self, header: dict[str, Any] | None, query: Mapping[str, str], source: str) -> Upload:
        """A Trivy report: its findings read from the body (with `header`, its top-level fields, None for the
        legacy array), what it is about from the query."""
        errors = Errors()
        artifact = None
        if header is not None:
            try:
                artifact = TrivyHeader.model_validate(
                    {k: v for k, v in header.items() if k in ("SchemaVersion", "ArtifactName")}
                ).ArtifactName
            except ValidationError as exc:
                found = exc.errors(include_url=False)
                errors.extend([error_detail(e, messages=FINDING_PATTERN_MESSAGES) for e in found])
        rows = self.results or _Rows()
        refuse(errors, self.r.errors, rows.errors)  # the body first: a bad body is refused whatever the query says
        params = {k: query[k] for k in QUERY_FIELDS if k in query}
        from_report = not params.get("image_ref")  # the image is the report's ArtifactName unless the query names it
        if from_report:
            params["image_ref"] = artifact or ""
        try:
            ctx = UploadContext.model_validate(params)
        except ValidationError as exc:
            details = [
                error_detail(e, where="query", messages=FINDING_PATTERN_MESSAGES) for e in exc.errors(include_url=False)
            ]
            for d in details:
                if d["path"] != "image_ref" or not from_report:
                    continue
                if params["image_ref"].strip():  # the report's ArtifactName, refused: said where it came from
                    d["path"], d["in"] = "ArtifactName", "body"
                    d["message"] += " (the report's ArtifactName, taken as image_ref: pass ?image_ref=... instead)"
                else:
                    d["message"] = "is required: pass ?image_ref=... (the report's ArtifactName is empty)"
            raise validation_failed(details) from None
        return Upload(
            image_ref=ctx.image_ref,
            commit_sha=ctx.commit_sha,
            repo_full_name=ctx.repo_full_name,
            signature=Signature(ctx.signature_status or "unknown", ctx.signature_issuer, ctx.signature_subject),
            findings=list(rows.unique.values()),
            duplicates=rows.duplicates,
            source=source,
            ref=ctx.ref,
        )
