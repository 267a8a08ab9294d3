"""Parse and validate an upload (the seed shape or a raw Trivy report) into one normalised Upload, or raise."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, NotRequired

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    with_config,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from app.errors import ApiError, validation_failed
from app.policy import Signature

COMMIT_SHA = r"^[0-9a-fA-F]{40}$"
REPO_FULL_NAME = r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$"
# Checked in pydantic's Rust core (no Python call per finding); lower-cased when the finding is copied.
SEVERITY_PATTERN = r"(?i)^(critical|high|medium|low|unknown)$"


def _signature_status(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and value.lower() in ("signed", "unsigned", "unknown"):
        return value.lower()
    raise PydanticCustomError("signature_status", "must be one of signed, unsigned, unknown (any letter case)")


SeverityText = Annotated[str, StringConstraints(pattern=SEVERITY_PATTERN)]


def _utf8_within(limit: int) -> Any:
    def check(value: str) -> str:
        if len(value.encode()) > limit:  # indexed columns: PostgreSQL bounds an index row in bytes
            raise PydanticCustomError("string_too_long", f"must be at most {limit} bytes in UTF-8")
        return value

    return AfterValidator(check)


ImageRef = Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"\S"), _utf8_within(1024)]
CommitSha = Annotated[str, StringConstraints(pattern=COMMIT_SHA, to_lower=True)]
RepoFullName = Annotated[str, StringConstraints(pattern=REPO_FULL_NAME, to_lower=True)]  # GitHub: any case
AdvisoryId = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Short = Annotated[str, StringConstraints(max_length=500)]
ShortNonEmpty = Annotated[str, StringConstraints(min_length=1, max_length=500)]
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


# Findings are validated as TypedDicts: plain dicts out, several times faster than model objects.
@with_config(STRICT)
class SeedFinding(TypedDict):
    cve_id: AdvisoryId
    severity: SeverityText | None  # null (jq's for a missing Severity) counts as unknown
    package_name: ShortNonEmpty
    installed_version: Short | None
    fixed_version: NotRequired[Short | None]
    title: NotRequired[str | None]
    target: NotRequired[str | None]
    primary_url: NotRequired[str | None]
    references: NotRequired[list[str] | None]
    vendor_ids: NotRequired[list[AdvisoryId] | None]


class SeedUpload(UploadContext):
    findings: list[SeedFinding]


@with_config(STRICT)
class TrivyVulnerability(TypedDict):
    VulnerabilityID: AdvisoryId
    PkgName: ShortNonEmpty
    PkgPath: NotRequired[str | None]
    InstalledVersion: NotRequired[Short | None]
    FixedVersion: NotRequired[Short | None]
    Severity: NotRequired[SeverityText | None]
    Title: NotRequired[str | None]
    PrimaryURL: NotRequired[str | None]
    References: NotRequired[list[str] | None]
    VendorIDs: NotRequired[list[AdvisoryId] | None]


@with_config(STRICT)
class TrivyResult(TypedDict):
    Target: NotRequired[str]
    Vulnerabilities: NotRequired[list[TrivyVulnerability] | None]


@with_config(STRICT)
class TrivyReport(TypedDict):
    SchemaVersion: NotRequired[int | None]
    ArtifactName: NotRequired[str | None]
    Results: NotRequired[list[TrivyResult] | None]


TrivyReportAdapter = TypeAdapter(TrivyReport)
LegacyTrivyReport = TypeAdapter(list[TrivyResult])
_TRIVY_KEYS = ("SchemaVersion", "Results", "ArtifactName", "ArtifactType")
QUERY_FIELDS = tuple(UploadContext.model_fields)


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

    @property
    def repo_owner(self) -> str:
        return self.repo_full_name.split("/", 1)[0]


# ---------------------------------------------------------------- the body


def read_json(
    content_type: str | None, content_encoding: str | None, read_body: Callable[[], bytes], max_bytes: int
) -> Any:
    """The body's JSON value; 400/413/415 for what is not JSON, is too large, or is compressed wrongly."""
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
    if not body.strip():
        raise ApiError(400, "empty_body", "The body is empty; send the findings as JSON.")
    try:
        doc = orjson.loads(body[3:] if body.startswith(b"\xef\xbb\xbf") else body)  # a BOM is tolerated
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"The body is not valid JSON: {exc}.") from None
    if b"u0000" in body or b"U0000" in body:
        _refuse_nul(doc, "")
    return doc


def gunzip(data: bytes, max_bytes: int) -> bytes:
    """Decompress gzip (several members allowed) without ever holding more than max_bytes of output."""
    out = bytearray()
    while data:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out += d.decompress(data, max_bytes + 1 - len(out))
        except zlib.error as exc:
            raise ApiError(400, "malformed_gzip", f"The body is not valid gzip: {exc}.") from None
        if len(out) > max_bytes:
            raise ApiError(
                413,
                "payload_too_large",
                f"The body decompresses to more than the upload limit of {max_bytes / 2**20:g} MiB.",
            )
        if not d.eof:
            raise ApiError(400, "malformed_gzip", "The gzip body is truncated.")
        data = d.unused_data
    return bytes(out)


def _refuse_nul(value: Any, path: str) -> None:
    # NUL cannot be stored in PostgreSQL text; name where it is rather than fail at insert time.
    # Iterative, not recursive: orjson accepts 1024 levels of nesting, more than Python's recursion limit.
    # Each entry keeps (parent trail, key), so a path string is only built for the value that fails.
    stack: list[tuple[Any, Any]] = [(value, None)]
    while stack:
        value, trail = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                raise validation_failed(
                    [
                        {
                            "path": _trail_path(path, trail),
                            "code": "nul_character",
                            "message": "contains a NUL character (\\u0000)",
                        }
                    ]
                )
        elif isinstance(value, dict):
            for k in value:
                if "\x00" in k:
                    raise validation_failed(
                        [
                            {
                                "path": _trail_path(path, trail),
                                "code": "nul_character",
                                "message": "contains a NUL character (\\u0000) in a key",
                            }
                        ]
                    )
            stack.extend((v, (trail, k)) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((value[i], (trail, i)) for i in range(len(value) - 1, -1, -1))


def _trail_path(path: str, trail: Any) -> str:
    keys: list[Any] = []
    while trail is not None:
        trail, key = trail
        keys.append(key)
    for key in reversed(keys):
        path += f"[{key}]" if isinstance(key, int) else (f".{key}" if path else key)
    return path or "$"


# ---------------------------------------------------------------- the upload


def parse_upload(doc: Any, query: Mapping[str, str]) -> Upload:
    """Validate a whole upload before anything is stored; raise ApiError 422 naming each bad JSON path."""
    if isinstance(doc, list):
        return _from_trivy(_validate(LegacyTrivyReport.validate_python, doc), None, query, "trivy-legacy")
    if not isinstance(doc, dict):
        raise validation_failed(
            [{"path": "$", "code": "type", "message": "must be a JSON object: the seed shape or a Trivy report"}],
            "The body must be a JSON object: the seed shape (with findings) or a Trivy JSON report.",
        )
    if "findings" not in doc and any(k in doc for k in _TRIVY_KEYS):
        report = _validate(TrivyReportAdapter.validate_python, doc)
        return _from_trivy(report.get("Results"), report.get("ArtifactName"), query, "trivy")
    return _from_seed(_validate(SeedUpload.model_validate, doc))


def _validate(fn: Any, value: Any, prefix: str = "") -> Any:
    try:
        return fn(value)
    except ValidationError as exc:
        raise validation_failed([error_detail(e, prefix) for e in exc.errors(include_url=False)]) from None


def error_detail(err: Mapping[str, Any], prefix: str = "", where: str | None = None) -> dict[str, Any]:
    path = prefix
    for part in err["loc"]:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    message = err["msg"]
    if err["type"] == "missing":
        message = "is required"
    elif err["type"] == "string_pattern_mismatch":
        message = _PATTERN_MESSAGES.get(err["loc"][-1] if err["loc"] else "", message)
    detail = {"path": path or "$", "code": err["type"], "message": message}
    if where:
        detail["in"] = where
    return detail


_PATTERN_MESSAGES = {
    "commit_sha": "must be a full commit SHA: 40 hexadecimal characters",
    "repo_full_name": "must be owner/name, as in acme/api",
    "image_ref": "must not be blank",
    "severity": "must be one of critical, high, medium, low, unknown (any letter case)",
    "Severity": "must be one of critical, high, medium, low, unknown (any letter case)",
}


def _from_seed(seed: SeedUpload) -> Upload:
    unique: dict[tuple[Any, ...], dict[str, Any]] = {}
    for f in seed.findings:
        get = f.get
        installed = f["installed_version"] or ""
        target = get("target")
        key = (f["cve_id"], f["package_name"], installed, target)
        if key not in unique:
            unique[key] = {
                "cve_id": f["cve_id"],
                "severity": (f["severity"] or "unknown").lower(),
                "package": f["package_name"],
                "installed_version": installed,
                "fixed_version": get("fixed_version") or None,
                "target": target,
                "title": get("title"),
                "primary_url": get("primary_url"),
                "references": get("references") or [],
                "vendor_ids": get("vendor_ids") or [],
                "synthetic": False,
            }
    return Upload(
        image_ref=seed.image_ref,
        commit_sha=seed.commit_sha,
        repo_full_name=seed.repo_full_name,
        signature=Signature(seed.signature_status or "unknown", seed.signature_issuer, seed.signature_subject),
        findings=list(unique.values()),
        duplicates=len(seed.findings) - len(unique),
        source="seed",
    )


def _from_trivy(
    results: list[TrivyResult] | None, artifact: str | None, query: Mapping[str, str], source: str
) -> Upload:
    params = {k: query[k] for k in QUERY_FIELDS if k in query}
    if not params.get("image_ref"):
        params["image_ref"] = artifact or ""
    try:
        ctx = UploadContext.model_validate(params)
    except ValidationError as exc:
        details = [error_detail(e, where="query") for e in exc.errors(include_url=False)]
        for d in details:
            if d["path"] == "image_ref":
                d["message"] = "is required: pass ?image_ref=... (the report's ArtifactName is empty)"
        raise validation_failed(details) from None
    unique: dict[tuple[Any, ...], dict[str, Any]] = {}
    total = 0
    for r in results or ():
        result_target = r.get("Target") or None
        for v in r.get("Vulnerabilities") or ():
            total += 1
            get = v.get
            installed = get("InstalledVersion") or ""
            target = get("PkgPath") or result_target
            key = (v["VulnerabilityID"], v["PkgName"], installed, target)
            if key not in unique:
                unique[key] = {
                    "cve_id": v["VulnerabilityID"],
                    "severity": (get("Severity") or "unknown").lower(),
                    "package": v["PkgName"],
                    "installed_version": installed,
                    "fixed_version": get("FixedVersion") or None,
                    "target": target,
                    "title": get("Title"),
                    "primary_url": get("PrimaryURL"),
                    "references": get("References") or [],
                    "vendor_ids": get("VendorIDs") or [],
                    "synthetic": False,
                }
    return Upload(
        image_ref=ctx.image_ref,
        commit_sha=ctx.commit_sha,
        repo_full_name=ctx.repo_full_name,
        signature=Signature(ctx.signature_status or "unknown", ctx.signature_issuer, ctx.signature_subject),
        findings=list(unique.values()),
        duplicates=total - len(unique),
        source=source,
    )
