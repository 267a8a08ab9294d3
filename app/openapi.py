"""The OpenAPI 3.1 document of every /api/v1 route, served at /api/v1/openapi.json; tests keep it true."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from app.chain.verify import FAULTS
from app.exceptions import MAX_DAYS, REASON_LIMIT
from app.fields import COMMIT_SHA, GIT_REF, GIT_REF_MAX, MAX_INT32, REPO_FULL_NAME
from app.insights.advisories import MAX_QUERY, MIN_PREFIX
from app.insights.trend import DAYS as TREND_DAYS
from app.insights.trend import LEVELS as TREND_LEVELS
from app.models import (
    BLOCK_ACTIONS,
    BLOCK_ON,
    BLOCK_THRESHOLDS,
    EXCEPTION_SOURCES,
    SEVERITIES,
    SIGNATURE_STATUSES,
)
from app.policy.settings import MAX_RETENTION_DAYS
from app.tokens import SCOPES
from app.web.bodies import MAX_GZIP_MEMBERS

bp = Blueprint("openapi", __name__)


def _any_case(word: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)


SIGNATURE_ANY_CASE = {"type": "string", "pattern": "^(" + "|".join(_any_case(s) for s in SIGNATURE_STATUSES) + ")$"}
SEVERITY_ANY_CASE = {"type": "string", "pattern": "^(" + "|".join(_any_case(s) for s in SEVERITIES) + ")$"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


STR = {"type": "string"}
SHORT = {"type": "string", "maxLength": 1024}
ADVISORY_ID = {"type": "string", "minLength": 1, "maxLength": 1024}
GITREF = {"type": "string", "pattern": GIT_REF, "maxLength": GIT_REF_MAX}
LONG = {"type": "string", "maxLength": 1024}
TARGET = {"type": "string", "maxLength": 1024}
VENDOR_IDS = {"type": "array", "items": ADVISORY_ID, "maxItems": 64}
REPO = {
    "type": "string",
    "pattern": REPO_FULL_NAME,
    "maxLength": 140,
    "description": "owner/name by GitHub's rules: the owner of letters, digits and single hyphens, at most 39 "
    "characters; the name of letters, digits, '.', '-' and '_', at most 100, not '.' or '..'.",
}
CUT_TITLE = "Cut to 1024 characters (the finding is then marked truncated)."
CUT_URL = "Cut to 2048 characters (the finding is then marked truncated)."
CUT_REFERENCES = "URLs; each cut to 2048 characters and the first 64 kept (the finding is then marked truncated)."
COUNT = {"type": "integer", "minimum": 0}
HASH = {"type": "string", "pattern": "^[0-9a-f]{64}$"}

UNAUTHORIZED = {
    **_error("Missing, unknown, expired or revoked token."),
    "headers": {"WWW-Authenticate": {"schema": STR, "description": "Bearer"}},
}
_RETRY_AFTER = {
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
    "description": "Seconds to wait before trying again.",
}
RATE_LIMITED = {
    **_error(
        "The token made more requests than FREMFORGE_RATE_LIMIT allows in its current window (error rate_limited); "
        "nothing was done. Retry-After gives the seconds to the window's end."
    ),
    "headers": {"Retry-After": {**_RETRY_AFTER, "required": True}},
}
AUTH_ERRORS = {
    "401": UNAUTHORIZED,
    "403": _error("The token belongs to another organisation or lacks the scope."),
    "404": _error("Unknown organisation (or scan)."),
    "429": RATE_LIMITED,
}
BODY_ERRORS = {
    "400": _error(
        "Malformed JSON or gzip, an empty body, a body that ends before its Content-Length, or a NUL character (%00)"
        " in the URL."
    ),
    "413": _error(
        "The body (or what it decompresses to) is over the route's limit: the upload limit "
        "(FREMFORGE_MAX_UPLOAD_MB), and at most 1 MiB for settings and an exception, 4 MiB for an import or "
        f"checkpoints; or it is gzip of more than {MAX_GZIP_MEMBERS:,} members."
    ),
    "415": _error("Not sent as application/json, or an unsupported Content-Encoding."),
    "422": _error("The body breaks the schema; each detail names its JSON path."),
}
URL_ERRORS = {"400": _error("The URL contains a NUL character (%00).")}
_DATABASE_UNAVAILABLE = (
    "the database is unavailable or locked past its budget (error database_unavailable), or not migrated to this "
    "version of the app (error database_not_migrated: run flask --app wsgi db upgrade)"
)
DATABASE_ERRORS = {
    "503": {
        **_error(f"Nothing was done: {_DATABASE_UNAVAILABLE}; try again after Retry-After seconds."),
        "headers": {"Retry-After": {**_RETRY_AFTER, "required": True}},
    }
}


def _or_database_unavailable(description: str) -> dict[str, Any]:
    """A 503 of the operation's own, or the database's (which comes with Retry-After)."""
    return {
        **_error(f"{description} Or {_DATABASE_UNAVAILABLE}, with Retry-After."),
        "headers": {"Retry-After": _RETRY_AFTER},
    }


SLUG = {"name": "slug", "in": "path", "required": True, "schema": STR, "description": "The organisation's slug."}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
    "description": "1 to 255 visible ASCII characters (a UUID, say), per organisation. The same key with the same "
    "body and query string within 24 hours gets the first answer again (same status and JSON, header "
    "Idempotent-Replayed: true), and nothing is stored twice; with another body, 422 idempotency_key_reused; while "
    "the first request is in flight, 409 idempotency_key_in_flight. A request that fails frees its key.",
}
CONTENT_ENCODING = {
    "name": "Content-Encoding",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "enum": ["gzip", "x-gzip", "identity"]},
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "message", "details"],
        "properties": {
            "error": {"type": "string", "description": "A stable code, e.g. validation_failed."},
            "message": {"type": "string", "description": "A human sentence."},
            "details": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["path", "code", "message"],
                    "properties": {
                        "path": STR,
                        "code": STR,
                        "message": STR,
                        "in": {"enum": ["query", "body", "header", "path"]},
                        "limit": {"type": "integer", "description": "The limit the value is past, when it is one."},
                    },
                },
            },
        },
    },
    "SeverityCounts": {
        "type": "object",
        "required": list(SEVERITIES),
        "properties": {s: COUNT for s in SEVERITIES},
        "additionalProperties": False,
    },
    "SeedFinding": {
        "type": "object",
        "required": ["cve_id", "severity", "package_name", "installed_version"],
        "properties": {
            "cve_id": {**ADVISORY_ID, "description": "Any advisory id: CVE-, GHSA-, GMS-, RUSTSEC-..."},
            "severity": {**_nullable(SEVERITY_ANY_CASE), "description": "null counts as unknown."},
            "package_name": {**SHORT, "minLength": 1},
            "installed_version": {**_nullable(SHORT), "description": "null is taken as empty."},
            "fixed_version": {**_nullable(SHORT), "description": "null or empty: not fixable."},
            "title": {**_nullable(STR), "description": CUT_TITLE},
            "target": _nullable(TARGET),
            "primary_url": {**_nullable(STR), "description": CUT_URL},
            "references": {**_nullable({"type": "array", "items": STR}), "description": CUT_REFERENCES},
            "vendor_ids": _nullable(VENDOR_IDS),
        },
    },
    "SeedUpload": {
        "type": "object",
        "required": ["image_ref", "commit_sha", "repo_full_name", "findings"],
        "properties": {
            "image_ref": {
                "type": "string",
                "minLength": 1,
                "maxLength": 1024,
                "pattern": r"\S",
                "description": "At most 1024 bytes in UTF-8.",
            },
            "commit_sha": {"type": "string", "pattern": COMMIT_SHA},
            "repo_full_name": REPO,
            "signature_status": _nullable(SIGNATURE_ANY_CASE),
            "signature_issuer": _nullable(LONG),
            "signature_subject": _nullable(LONG),
            "ref": _nullable(
                {**GITREF, "description": "The git ref the image was built from ($GITHUB_REF): finds baselines."}
            ),
            "findings": {
                "type": "array",
                "items": _ref("SeedFinding"),
                "description": "At most MAX_FINDINGS (default 100,000) per upload; past it a 413 too_many_findings.",
            },
        },
    },
    "TrivyVulnerability": {
        "type": "object",
        "required": ["VulnerabilityID", "PkgName"],
        "properties": {
            "VulnerabilityID": ADVISORY_ID,
            "PkgName": {**SHORT, "minLength": 1},
            "PkgPath": _nullable(TARGET),
            "InstalledVersion": _nullable(SHORT),
            "FixedVersion": _nullable(SHORT),
            "Severity": _nullable(SEVERITY_ANY_CASE),
            "Title": {**_nullable(STR), "description": CUT_TITLE},
            "PrimaryURL": {**_nullable(STR), "description": CUT_URL},
            "References": {**_nullable({"type": "array", "items": STR}), "description": CUT_REFERENCES},
            "VendorIDs": _nullable(VENDOR_IDS),
        },
    },
    "TrivyResult": {
        "type": "object",
        "properties": {
            "Target": {
                **STR,
                "description": "The target of its vulnerabilities without PkgPath: at most 1024 "
                "characters where one uses it.",
            },
            "Vulnerabilities": _nullable({"type": "array", "items": _ref("TrivyVulnerability")}),
        },
    },
    "TrivyReport": {
        "type": "object",
        "description": "A raw `trivy --format json` report (SchemaVersion 2); image, commit and repo come as "
        "query parameters.",
        "anyOf": [{"required": [k]} for k in ("SchemaVersion", "Results", "ArtifactName", "ArtifactType")],
        "not": {"required": ["findings"]},
        "properties": {
            "SchemaVersion": _nullable({"type": "integer", "enum": [2]}),
            "ArtifactName": _nullable(STR),
            "ArtifactType": {},
            "Results": _nullable({"type": "array", "items": _ref("TrivyResult")}),
        },
    },
    "LegacyTrivyReport": {
        "type": "array",
        "description": "The top-level array of Results that Trivy wrote before 0.20.",
        "items": _ref("TrivyResult"),
    },
    "CommitStatusAsked": {
        "type": "object",
        "required": ["context", "state", "description"],
        "properties": {
            "context": {"const": "fremforge/image-scan"},
            "state": {"enum": ["success", "failure"]},
            "description": {"type": "string", "maxLength": 140},
        },
    },
    "IngestAccepted": {
        "type": "object",
        "required": [
            "scan_run_id",
            "accepted",
            "duplicates",
            "status",
            "severity_counts",
            "fixable",
            "commit_status",
            "url",
        ],
        "properties": {
            "scan_run_id": {"type": "integer"},
            "accepted": COUNT,
            "duplicates": COUNT,
            "status": {"enum": ["success", "failure", "skipped"]},
            "severity_counts": _ref("SeverityCounts"),
            "fixable": COUNT,
            "commit_status": _nullable(_ref("CommitStatusAsked")),
            "url": STR,
        },
    },
    "IngestDisabled": {
        "type": "object",
        "required": ["accepted", "status"],
        "properties": {"accepted": {"const": 0}, "status": {"const": "disabled"}},
        "additionalProperties": False,
    },
    "Delivery": {
        "type": "object",
        "required": ["state", "detail", "attempts", "github_shows_older"],
        "properties": {
            "state": {"enum": ["pending", "delivered", "failed", "superseded", "not_delivered"]},
            "detail": STR,
            "attempts": COUNT,
            "github_shows_older": {
                **_nullable({"enum": ["success", "failure"]}),
                "description": "While this state is not on GitHub: the older state GitHub still shows, else null.",
            },
        },
    },
    "CommitStatusPosted": {
        "type": "object",
        "required": ["context", "state", "description", "target_url", "delivery"],
        "properties": {
            "context": {"const": "fremforge/image-scan"},
            "state": {"enum": ["success", "failure"]},
            "description": {"type": "string", "maxLength": 140},
            "target_url": _nullable(STR),
            "delivery": _ref("Delivery"),
        },
    },
    "Scan": {
        "type": "object",
        "required": [
            "scan_run_id",
            "image_ref",
            "commit_sha",
            "repo_full_name",
            "pr",
            "status",
            "block_action",
            "severity_counts",
            "fixable",
            "accepted",
            "duplicates",
            "signature_status",
            "signature_issuer",
            "signature_subject",
            "created_at",
            "url",
            "commit_status",
            "ref",
            "blocking",
            "baseline_scan_id",
        ],
        "properties": {
            "scan_run_id": {"type": "integer"},
            "image_ref": STR,
            "ref": _nullable(STR),
            "commit_sha": {"type": "string", "pattern": COMMIT_SHA},
            "repo_full_name": STR,
            "pr": _nullable({"type": "integer"}),
            "status": {"enum": ["success", "failure", "skipped"]},
            "block_action": {"enum": list(BLOCK_ACTIONS)},
            "severity_counts": _ref("SeverityCounts"),
            "fixable": COUNT,
            "blocking": {
                **COUNT,
                "description": "How many of its findings blocked: counted toward its status under block_pull, by the "
                "blocking rule as it was at upload (0 under warn and none).",
            },
            "baseline_scan_id": {
                **_nullable({"type": "integer"}),
                "description": "The scan its findings were compared with under block_on new; null when none was found "
                "(every finding counted) or block_on was all.",
            },
            "accepted": COUNT,
            "duplicates": COUNT,
            "signature_status": {"enum": ["signed", "unsigned", "unknown"]},
            "signature_issuer": _nullable(STR),
            "signature_subject": _nullable(STR),
            "created_at": {"type": "string", "format": "date-time"},
            "url": STR,
            "commit_status": _nullable(_ref("CommitStatusPosted")),
        },
    },
    "Finding": {
        "type": "object",
        "required": ["seq", "redacted", "payload_hash", "chain_hash", "blocking", "new", "exception_id"],
        "properties": {
            "seq": {"type": "integer"},
            "redacted": {
                "type": "boolean",
                "description": "Retention removed the payload; the hashes remain, and so do blocking, new and "
                "exception_id.",
            },
            "blocking": {
                "type": "boolean",
                "description": "It counted toward this scan's status (block_pull, as judged at upload).",
            },
            "new": {
                **_nullable({"type": "boolean"}),
                "description": "Whether the baseline scan lacked it (same advisory id and package): true, or false "
                "when it exists on the base; null when there was no baseline or block_on was all.",
            },
            "exception_id": {
                **_nullable({"type": "integer"}),
                "description": "The exception that covered it at upload, or null.",
            },
            "payload_hash": STR,
            "chain_hash": STR,
            "cve_id": STR,
            "severity": {"enum": list(SEVERITIES)},
            "package_name": STR,
            "installed_version": STR,
            "fixed_version": _nullable(STR),
            "fixable": {"type": "boolean"},
            "target": _nullable(STR),
            "title": _nullable(STR),
            "primary_url": _nullable(STR),
            "references": {"type": "array", "items": STR},
            "vendor_ids": {"type": "array", "items": STR},
            "advisories": {
                "type": "array",
                "items": {"type": "object", "required": ["id", "url"], "properties": {"id": STR, "url": STR}},
            },
            "synthetic": {"type": "boolean", "description": "Made by the signing policy, not by the scanner."},
            "truncated": {
                "type": "boolean",
                "description": "A descriptive field was cut to its limit at upload (title 1024 characters, "
                "primary_url and each reference 2048, 64 references).",
            },
        },
    },
    "ScanDetail": {
        "allOf": [
            _ref("Scan"),
            {
                "type": "object",
                "required": ["findings", "findings_next_cursor"],
                "properties": {
                    "findings": {
                        "type": "array",
                        "items": _ref("Finding"),
                        "maxItems": 1000,
                        "description": "The first page of the scan's findings (at most 1,000), most severe first.",
                    },
                    "findings_next_cursor": {
                        **_nullable(STR),
                        "description": "Pass as `cursor` to .../{scan_run_id}/findings for more; null: no more.",
                    },
                },
            },
        ],
    },
    "ScanList": {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {"items": {"type": "array", "items": _ref("Scan")}, "next_cursor": _nullable(STR)},
    },
    "FindingList": {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": _ref("Finding"), "maxItems": 1000},
            "next_cursor": _nullable(STR),
        },
    },
    "AllowedIssuer": {
        "type": "object",
        "required": ["issuer"],
        "additionalProperties": False,
        "properties": {
            "issuer": {"type": "string", "pattern": r"^https://\S+$", "maxLength": 1024},
            "subject_pattern": {
                **_nullable({"type": "string", "maxLength": 1024}),
                "description": "A regular expression the signature subject must match.",
            },
        },
    },
    "Settings": {
        "type": "object",
        "required": [
            "enabled",
            "block_action",
            "require_signed",
            "allowed_issuers",
            "retention_days",
            "block_threshold",
            "ignore_unfixed",
            "block_on",
        ],
        "properties": {
            "enabled": {"type": "boolean"},
            "block_action": {"enum": list(BLOCK_ACTIONS)},
            "require_signed": {"type": "boolean"},
            "allowed_issuers": {"type": "array", "items": _ref("AllowedIssuer")},
            "retention_days": {"type": "integer", "minimum": 1, "maximum": MAX_RETENTION_DAYS},
            "block_threshold": {
                "enum": list(BLOCK_THRESHOLDS),
                "description": "The least severity that blocks under block_pull (unknown never does).",
            },
            "ignore_unfixed": {"type": "boolean", "description": "Findings without a fixed version never block."},
            "block_on": {
                "enum": list(BLOCK_ON),
                "description": "all, or new: only findings the pull request introduces block (no baseline: all).",
            },
        },
    },
    "Verdict": {
        "type": "object",
        "description": "The verdict on the org's chain, as `flask chain verify SLUG --json` prints it.",
        "required": [
            "org",
            "intact",
            "entries",
            "redacted",
            "head_seq",
            "head_hash",
            "first_bad_seq",
            "fault",
            "kind",
            "entry_id",
            "detail",
            "checkpoints",
            "message",
        ],
        "properties": {
            "org": STR,
            "intact": {"type": "boolean"},
            "entries": {**COUNT, "description": "Entries checked, in chain order, before the first fault."},
            "redacted": {**COUNT, "description": "Of those, how many lost their payload to retention."},
            "head_seq": COUNT,
            "head_hash": HASH,
            "first_bad_seq": {**_nullable(COUNT), "description": "The first bad seq; null when intact."},
            "fault": _nullable({"enum": list(FAULTS)}),
            "kind": _nullable({"enum": ["finding", "audit"]}),
            "entry_id": _nullable(COUNT),
            "detail": _nullable(STR),
            "checkpoints": {**COUNT, "description": "Signed checkpoints the chain was checked against."},
            "message": STR,
        },
    },
    "Checkpoint": {
        "type": "object",
        "description": "Ed25519 signature over b'fremforge/checkpoint/v1\\n' + the canonical JSON (sorted keys, "
        "compact, UTF-8) of {org, size, head_hash, time}.",
        "required": ["org", "size", "head_hash", "time", "key_id", "public_key", "signature"],
        "properties": {
            "org": STR,
            "size": {**COUNT, "description": "Entries in the chain (the seq of its last entry)."},
            "head_hash": HASH,
            "time": {**STR, "description": "When it was signed, UTC, ISO 8601."},
            "key_id": {**STR, "description": "ed25519: and the first 16 hex digits of SHA-256(public key)."},
            "public_key": {**STR, "description": "The raw 32-byte Ed25519 public key, base64."},
            "signature": {**STR, "description": "The 64-byte signature, base64."},
        },
    },
    "SettingsChange": {
        "type": "object",
        "description": "The fields to change; fields left out keep their value.",
        "additionalProperties": False,
        "properties": {
            "enabled": {"type": "boolean"},
            "block_action": {"enum": list(BLOCK_ACTIONS)},
            "require_signed": {"type": "boolean"},
            "allowed_issuers": {
                "type": "array",
                "items": {
                    "oneOf": [
                        _ref("AllowedIssuer"),
                        {
                            "type": "string",
                            "pattern": r"^https://\S+$",
                            "maxLength": 1024,
                            "description": "An issuer's URL alone: any subject.",
                        },
                    ]
                },
                "maxItems": 100,
            },
            "retention_days": {"type": "integer", "minimum": 1, "maximum": MAX_RETENTION_DAYS},
            "block_threshold": {
                "enum": list(BLOCK_THRESHOLDS),
                "description": "The least severity that blocks under block_pull (unknown never does).",
            },
            "ignore_unfixed": {"type": "boolean", "description": "Findings without a fixed version never block."},
            "block_on": {
                "enum": list(BLOCK_ON),
                "description": "all, or new: only findings the pull request introduces block (no baseline: all).",
            },
        },
    },
    "ExceptionCreate": {
        "type": "object",
        "description": "An accepted risk: this advisory does not block, here, until then, because. Text fields are "
        "taken without leading and trailing white space.",
        "required": ["advisory_id", "reason", "expires_at"],
        "additionalProperties": False,
        "properties": {
            "advisory_id": {
                **ADVISORY_ID,
                "description": "Covers a finding whose id or any of its vendor ids equals it, letter case ignored. Any "
                "advisory id (CVE-, GHSA-, DSA-, ...) without white space or `*` (one advisory, no pattern); "
                "FREMFORGE-* (the synthetic signing findings) is refused: signing has its own allowlist.",
            },
            "package_name": {
                **_nullable({"type": "string", "minLength": 1, "maxLength": 1024}),
                "description": "Only findings of this package (exact); null or left out: any package.",
            },
            "repo_full_name": {
                **_nullable(REPO),
                "description": "Only scans of this repository (letter case ignored), one of the org's GitHub account "
                "(another owner is a 422); null or left out: any.",
            },
            "image": {
                **_nullable({"type": "string", "minLength": 1, "maxLength": 1024}),
                "description": "Only scans of images whose name (the image_ref without tag and digest) matches this "
                "pattern, `*` matching any run of characters: `ghcr.io/acme/*`. A registry path without a tag or "
                "digest. Null or left out: any image.",
            },
            "reason": {
                "type": "string",
                "minLength": 1,
                "maxLength": REASON_LIMIT,
                "description": "Why, 1-2,000 characters.",
            },
            "ticket_url": {
                **_nullable({"type": "string", "pattern": r"^https://[^\s/]+\S*$", "maxLength": 2048}),
                "description": "An https:// URL of the ticket tracking the risk.",
            },
            "expires_at": {
                "type": "string",
                "minLength": 1,
                "description": f"ISO 8601, a date (2027-01-04) or a date and time (2027-01-04T12:00:00Z; no zone "
                f"means UTC); in the future and at most {MAX_DAYS} days ahead.",
            },
        },
    },
    "Exception": {
        "type": "object",
        "required": [
            "id",
            "advisory_id",
            "package_name",
            "repo_full_name",
            "image",
            "reason",
            "ticket_url",
            "expires_at",
            "created_by",
            "created_at",
            "revoked_by",
            "revoked_at",
            "source",
            "state",
        ],
        "properties": {
            "id": {"type": "integer"},
            "advisory_id": STR,
            "package_name": _nullable(STR),
            "repo_full_name": {**_nullable(STR), "description": "In lower case."},
            "image": {**_nullable(STR), "description": "An image-name pattern, `*` any run of characters."},
            "reason": STR,
            "ticket_url": _nullable(STR),
            "expires_at": {"type": "string", "format": "date-time", "description": "UTC, to the second."},
            "created_by": {
                **STR,
                "description": "Who made it: `token:ID (NAME)` for a token, the admin's GitHub login, `cli`...",
            },
            "created_at": {"type": "string", "format": "date-time"},
            "revoked_by": _nullable(STR),
            "revoked_at": _nullable({"type": "string", "format": "date-time"}),
            "source": {"enum": list(EXCEPTION_SOURCES), "description": "How it was made."},
            "state": {
                "enum": ["active", "expired", "revoked"],
                "description": "revoked once revoked; else expired from expires_at on (the database's clock); else "
                "active: it covers matching findings.",
            },
        },
    },
    "ExceptionList": {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": _ref("Exception"), "maxItems": 1000},
            "next_cursor": {**_nullable(STR), "description": "Pass as `cursor` for the next page; null: no more."},
        },
    },
    "ExceptionImport": {
        "type": "object",
        "required": ["imported", "items", "skipped"],
        "properties": {
            "imported": {**COUNT, "description": "How many exceptions were created: one per statement or line."},
            "items": {"type": "array", "items": _ref("Exception")},
            "skipped": {
                "type": "array",
                "description": "The .trivyignore lines whose own exp: day has come: Trivy no longer honours them, so "
                "neither does the import (nothing created for them).",
                "items": {
                    "type": "object",
                    "required": ["where", "advisory_id", "expired"],
                    "properties": {
                        "where": {**STR, "description": "The line (`line 3`)."},
                        "advisory_id": STR,
                        "expired": {"type": "string", "format": "date"},
                    },
                },
            },
        },
    },
    "OpenVex": {
        "type": "object",
        "description": "An OpenVEX document (https://github.com/openvex/spec). Each `not_affected` statement becomes "
        "one exception per product and subcomponent: its vulnerability's name the advisory id; `justification: "
        "impact_statement` the reason (else the `reason` parameter); its products, pkg:oci purls, image patterns "
        "(the image name of their repository_url); its subcomponents, package purls, package names. OpenVEX has no "
        "expiry: the `expires_at` parameter gives it. A later statement (by its timestamp, else the document's, "
        "else its place) about the same vulnerability and product supersedes an earlier one: an `affected`, `fixed` "
        "or `under_investigation` one withdraws the earlier `not_affected` for that product. A `not_affected` "
        "statement without products is a 422 (it would except the advisory everywhere).",
        "required": ["@context", "statements"],
        "properties": {
            "@context": {
                "anyOf": [STR, {"type": "array", "items": STR}],
                "description": "https://openvex.dev/ns, or a version of it (https://openvex.dev/ns/v0.2.0).",
            },
            "statements": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {
                        "status": {"enum": ["not_affected", "affected", "fixed", "under_investigation"]},
                        "vulnerability": {
                            "description": "An object whose `name` is the advisory id (v0.0.1: the id itself), "
                            "with optional `aliases`; required of every statement."
                        },
                        "justification": {"description": "A string."},
                        "impact_statement": {"description": "A string."},
                        "products": {
                            "description": "pkg:oci purls (strings, or objects with the purl as `@id` or "
                            "`identifiers.purl`), each with its optional `subcomponents` (package purls)."
                        },
                    },
                },
            },
        },
    },
    "ImageNow": {
        "type": "object",
        "description": "An image as the org builds it (a repo and an image name: the image_ref without tag and "
        "digest) with its latest scan.",
        "required": [
            "image_id",
            "repo_full_name",
            "image_name",
            "image_ref",
            "ref",
            "commit_sha",
            "pr",
            "severity_counts",
            "fixable",
            "verdict",
            "scan_run_id",
            "scanned_at",
            "url",
        ],
        "additionalProperties": False,
        "properties": {
            "image_id": {"type": "integer"},
            "repo_full_name": STR,
            "image_name": STR,
            "image_ref": {**STR, "description": "The latest scan's image reference, with its tag or digest."},
            "ref": _nullable(STR),
            "commit_sha": {"type": "string", "pattern": COMMIT_SHA},
            "pr": _nullable({"type": "integer"}),
            "severity_counts": _ref("SeverityCounts"),
            "fixable": COUNT,
            "verdict": {"enum": ["success", "failure", "skipped"], "description": "The latest scan's own status."},
            "scan_run_id": {"type": "integer"},
            "scanned_at": {"type": "string", "format": "date-time"},
            "url": {**STR, "description": "The latest scan's admin page."},
        },
    },
    "ImageList": {
        "type": "object",
        "required": ["items", "next_cursor"],
        "additionalProperties": False,
        "properties": {
            "items": {"type": "array", "items": _ref("ImageNow"), "maxItems": 1000},
            "next_cursor": {**_nullable(STR), "description": "Pass as `cursor` for the next page; null: no more."},
        },
    },
    "CoveringException": {
        "type": "object",
        "description": "The exception in force now that covers the finding (see /exceptions).",
        "required": ["id", "advisory_id", "package_name", "repo_full_name", "image", "reason", "expires_at"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "integer"},
            "advisory_id": STR,
            "package_name": _nullable(STR),
            "repo_full_name": _nullable(STR),
            "image": _nullable(STR),
            "reason": STR,
            "expires_at": {"type": "string", "format": "date-time"},
        },
    },
    "AdvisoryHit": {
        "type": "object",
        "description": "A finding of an image's latest scan that has the advisory.",
        "required": [
            "image_id",
            "repo_full_name",
            "image_name",
            "image_ref",
            "ref",
            "commit_sha",
            "pr",
            "scan_run_id",
            "scanned_at",
            "url",
            "cve_id",
            "vendor_ids",
            "matched_as",
            "package_name",
            "installed_version",
            "fixed_version",
            "fixable",
            "severity",
            "excepted",
            "exception",
        ],
        "additionalProperties": False,
        "properties": {
            "image_id": {"type": "integer"},
            "repo_full_name": STR,
            "image_name": STR,
            "image_ref": STR,
            "ref": _nullable(STR),
            "commit_sha": {"type": "string", "pattern": COMMIT_SHA},
            "pr": _nullable({"type": "integer"}),
            "scan_run_id": {"type": "integer"},
            "scanned_at": {"type": "string", "format": "date-time"},
            "url": {**STR, "description": "The scan's admin page."},
            "cve_id": {**STR, "description": "The finding's own advisory id."},
            "vendor_ids": {"type": "array", "items": STR},
            "matched_as": {
                "enum": ["id", "vendor id"],
                "description": "id: the finding's own id has the advisory; vendor id: one of its vendor ids.",
            },
            "package_name": _nullable(STR),
            "installed_version": _nullable(STR),
            "fixed_version": _nullable(STR),
            "fixable": {"type": "boolean"},
            "severity": _nullable({"enum": list(SEVERITIES)}),
            "excepted": {"type": "boolean", "description": "An exception in force now covers it."},
            "exception": _nullable(_ref("CoveringException")),
        },
    },
    "AdvisorySearch": {
        "type": "object",
        "required": ["advisory_id", "prefix", "items", "next_cursor"],
        "additionalProperties": False,
        "properties": {
            "advisory_id": {**STR, "description": "What was searched, in upper case (a prefix ends in *)."},
            "prefix": {"type": "boolean"},
            "items": {"type": "array", "items": _ref("AdvisoryHit"), "maxItems": 1000},
            "next_cursor": {**_nullable(STR), "description": "Pass as `cursor` for the next page; null: no more."},
        },
    },
    "Trend": {
        "type": "object",
        "required": ["days"],
        "additionalProperties": False,
        "properties": {
            "days": {
                "type": "array",
                "minItems": TREND_DAYS,
                "maxItems": TREND_DAYS,
                "description": f"The last {TREND_DAYS} days (UTC), oldest first, today last.",
                "items": {
                    "type": "object",
                    "required": ["day", *TREND_LEVELS],
                    "additionalProperties": False,
                    "properties": {"day": {"type": "string", "format": "date"}, **{s: COUNT for s in TREND_LEVELS}},
                },
            }
        },
    },
}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


IMAGE_ID = {"name": "image_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}
IMAGE_AUTH_ERRORS = {**AUTH_ERRORS, "404": _error("Unknown organisation, or no such image in it.")}

TRIVY_QUERY = [
    _query(
        "image_ref",
        {"type": "string", "maxLength": 1024},
        "Raw Trivy uploads: the image; defaults to the report's ArtifactName.",
    ),
    _query("commit_sha", {"type": "string", "pattern": COMMIT_SHA}, "Raw Trivy uploads: the commit (required)."),
    _query("repo_full_name", REPO, "Raw Trivy uploads: owner/name (required)."),
    _query("signature_status", SIGNATURE_ANY_CASE, "Raw Trivy uploads: signed, unsigned or unknown."),
    _query("signature_issuer", LONG, "Raw Trivy uploads."),
    _query("signature_subject", LONG, "Raw Trivy uploads."),
    _query(
        "ref",
        GITREF,
        "The git ref the image was built from ($GITHUB_REF); a seed body may carry it as its field `ref` instead "
        "(422 when both are given and differ).",
    ),
]

PATHS: dict[str, Any] = {
    "/api/v1/orgs/{slug}/image-scans/findings": {
        "post": {
            "operationId": "uploadFindings",
            "summary": "Upload one image's findings (the seed shape, or a raw Trivy report).",
            "description": "Scope findings:write. Validated whole before anything is stored. The query parameters "
            "are a raw report's context; each at most once (422), and with a seed body one that its own field "
            "contradicts is a 422 too.",
            "parameters": [SLUG, CONTENT_ENCODING, IDEMPOTENCY_KEY, *TRIVY_QUERY],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"oneOf": [_ref("SeedUpload"), _ref("TrivyReport"), _ref("LegacyTrivyReport")]}
                    }
                },
            },
            "responses": {
                "202": {
                    **_json(
                        "Stored (or dropped when the policy is disabled); or, for an Idempotency-Key seen before with "
                        "the same body, the first answer again.",
                        {"oneOf": [_ref("IngestAccepted"), _ref("IngestDisabled")]},
                    ),
                    "headers": {
                        "Idempotent-Replayed": {
                            "schema": {"type": "string", "enum": ["true"]},
                            "description": "Present on an answer sent again for an Idempotency-Key.",
                        }
                    },
                },
                **BODY_ERRORS,
                "409": {
                    **_error(
                        "The first request with this Idempotency-Key is still in flight "
                        "(idempotency_key_in_flight); nothing was done. Try again after Retry-After seconds."
                    ),
                    "headers": {"Retry-After": {**_RETRY_AFTER, "required": True}},
                },
                "422": _error(
                    "The body breaks the schema, each detail naming its JSON path; the Idempotency-Key header is "
                    "malformed (the detail names it); or the key was sent before with another body or query string "
                    "(idempotency_key_reused)."
                ),
                "413": _error(
                    "Nothing was stored: the body (or what it decompresses to) is over the upload limit, or it is gzip "
                    f"of more than {MAX_GZIP_MEMBERS:,} members (payload_too_large); it holds more than MAX_FINDINGS "
                    "findings (too_many_findings), or more than MAX_FINDINGS values besides them that it takes "
                    "reading one by one (too_many_values)."
                ),
                **AUTH_ERRORS,
                **DATABASE_ERRORS,
            },
        },
    },
    "/api/v1/orgs/{slug}/image-scans": {
        "get": {
            "operationId": "listScans",
            "summary": "Scans, newest first. Scope findings:read.",
            "parameters": [
                SLUG,
                _query("repo", REPO, "owner/name, any letter case"),
                _query(
                    "commit_sha",
                    {"type": "string", "pattern": COMMIT_SHA},
                    "The full commit SHA (40 hex digits, any case).",
                ),
                _query("image_ref", {"type": "string", "maxLength": 1024}, "The image."),
                _query(
                    "image_name",
                    {"type": "string", "maxLength": 1024},
                    "The image name (the image_ref without tag and digest): every scan of one image.",
                ),
                _query("ref", {"type": "string", "maxLength": GIT_REF_MAX}, "The git ref it was built from."),
                _query("pr", {"type": "integer", "minimum": 1, "maximum": MAX_INT32}, "Pull request number."),
                _query("status", {"enum": ["success", "failure", "skipped"]}, "The scan's verdict."),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}, "Page size."),
                _query("cursor", {"type": "string", "maxLength": 200}, "next_cursor of the previous page."),
            ],
            "responses": {
                "200": _json("A page of scans.", _ref("ScanList")),
                **URL_ERRORS,
                "422": BODY_ERRORS["422"],
                **AUTH_ERRORS,
                **DATABASE_ERRORS,
            },
        },
    },
    "/api/v1/orgs/{slug}/image-scans/{scan_run_id}": {
        "get": {
            "operationId": "getScan",
            "summary": "One scan with its findings, most severe first. Scope findings:read.",
            "parameters": [
                SLUG,
                {"name": "scan_run_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}},
            ],
            "responses": {
                "200": _json("The scan.", _ref("ScanDetail")),
                **URL_ERRORS,
                **AUTH_ERRORS,
                **DATABASE_ERRORS,
            },
        },
    },
    "/api/v1/orgs/{slug}/image-scans/{scan_run_id}/findings": {
        "get": {
            "operationId": "listFindings",
            "summary": "A scan's findings, most severe first, a page at a time. Scope findings:read.",
            "parameters": [
                SLUG,
                {"name": "scan_run_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}},
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 1000}, "Page size."),
                _query(
                    "cursor",
                    {"type": "string", "maxLength": 4000},
                    "findings_next_cursor of the scan, or next_cursor of the previous page.",
                ),
            ],
            "responses": {
                "200": _json("A page of findings.", _ref("FindingList")),
                **URL_ERRORS,
                "422": BODY_ERRORS["422"],
                **AUTH_ERRORS,
                **DATABASE_ERRORS,
            },
        },
    },
    "/api/v1/orgs/{slug}/image-scans/settings": {
        "get": {
            "operationId": "getSettings",
            "summary": "The org's policy. Scope findings:read or settings:write.",
            "parameters": [SLUG],
            "responses": {
                "200": _json("The policy.", _ref("Settings")),
                **URL_ERRORS,
                **AUTH_ERRORS,
                **DATABASE_ERRORS,
            },
        },
        "put": {
            "operationId": "putSettings",
            "summary": "Change the org's policy (fields left out keep their value). Scope settings:write.",
            "parameters": [SLUG, CONTENT_ENCODING],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("SettingsChange")}}},
            "responses": {
                "200": _json("The policy after the change.", _ref("Settings")),
                **BODY_ERRORS,
                **AUTH_ERRORS,
                **DATABASE_ERRORS,
            },
        },
    },
    "/api/v1/orgs/{slug}/exceptions": {
        "get": {
            "operationId": "listExceptions",
            "summary": "The org's exceptions, newest first. Scope findings:read.",
            "parameters": [
                SLUG,
                _query("state", {"enum": ["active", "expired", "revoked"]}, "Only exceptions in this state."),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "Page size."),
                _query("cursor", {"type": "string", "maxLength": 200}, "next_cursor of the previous page."),
            ],
            "responses": {
                "200": _json("A page of exceptions.", _ref("ExceptionList")),
                **URL_ERRORS,
                "422": _error("A bad query parameter (state, limit, or a cursor this API did not give out)."),
                **AUTH_ERRORS,
                **DATABASE_ERRORS,
            },
        },
        "post": {
            "operationId": "createException",
            "summary": "Create an exception (an accepted risk). Scope settings:write.",
            "description": "Recorded in the org's audit chain; the org's open pull request heads and recently scanned "
            "commits are posted again under it.",
            "parameters": [SLUG, CONTENT_ENCODING],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ExceptionCreate")}}},
            "responses": {
                "201": _json("Created.", _ref("Exception")),
                **BODY_ERRORS,
                "422": _error("A bad field (nothing was stored); each detail names it."),
                **AUTH_ERRORS,
                **DATABASE_ERRORS,
            },
        },
    },
    "/api/v1/orgs/{slug}/exceptions/{exception_id}": {
        "delete": {
            "operationId": "revokeException",
            "summary": "Revoke an exception; the row stays, revoked. Revoking a revoked one changes nothing. "
            "Scope settings:write.",
            "parameters": [
                SLUG,
                {"name": "exception_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}},
            ],
            "responses": {
                "200": _json("The exception, revoked.", _ref("Exception")),
                **URL_ERRORS,
                "401": UNAUTHORIZED,
                "403": AUTH_ERRORS["403"],
                "404": _error("Unknown organisation, or no such exception in it."),
                "429": RATE_LIMITED,
                **DATABASE_ERRORS,
            },
        },
    },
    "/api/v1/orgs/{slug}/exceptions/import": {
        "post": {
            "operationId": "importExceptions",
            "summary": "Import an OpenVEX document's not_affected statements or a .trivyignore file as exceptions, "
            "all or nothing. Scope settings:write.",
            "description": "Each statement or line becomes one exception (source openvex or trivyignore), each an "
            "audit event. A .trivyignore holds one advisory id a line, `#` comments, and Trivy's `exp:YYYY-MM-DD` "
            "honoured as the expiry.",
            "parameters": [
                SLUG,
                CONTENT_ENCODING,
                {
                    "name": "format",
                    "in": "query",
                    "required": True,
                    "schema": {"enum": ["openvex", "trivyignore"]},
                    "description": "openvex: an OpenVEX JSON document; trivyignore: a .trivyignore file as text.",
                },
                _query(
                    "reason",
                    {"type": "string", "maxLength": REASON_LIMIT},
                    "The reason of each exception whose statement gives none (a .trivyignore gives none).",
                ),
                _query(
                    "expires_at",
                    {"type": "string", "maxLength": 100},
                    "The expiry (ISO 8601) of each exception whose statement or line gives none.",
                ),
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": _ref("OpenVex")},
                    "text/plain": {"schema": {"type": "string"}},
                },
            },
            "responses": {
                "201": _json("Imported.", _ref("ExceptionImport")),
                **BODY_ERRORS,
                "400": _error(
                    "Malformed JSON or gzip, a .trivyignore that is not UTF-8, or a NUL character (%00) in the URL."
                ),
                "415": _error(
                    "An OpenVEX document not sent as application/json, a .trivyignore not sent as "
                    "text/plain, or an unsupported Content-Encoding."
                ),
                "422": _error(
                    "A bad query parameter, or a bad document: each detail names the statement or line "
                    "(statements[2].vulnerability, line 5) and its field. Nothing was imported."
                ),
                **AUTH_ERRORS,
                **DATABASE_ERRORS,
            },
        },
    },
    "/api/v1/orgs/{slug}/audit/verify": {
        "get": {
            "operationId": "verifyChain",
            "summary": "Recompute the org's chain and name its first bad entry. Scope settings:write.",
            "parameters": [SLUG],
            "responses": {
                "200": _json("The verdict (intact or not).", _ref("Verdict")),
                **URL_ERRORS,
                **AUTH_ERRORS,
                **DATABASE_ERRORS,
            },
        },
        "post": {
            "operationId": "verifyChainAgainstCheckpoints",
            "summary": "The verdict, then the chain checked against the signed checkpoints sent (one, an array, or "
            "JSON lines). Scope settings:write.",
            "parameters": [SLUG],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"anyOf": [_ref("Checkpoint"), {"type": "array", "items": _ref("Checkpoint")}]}
                    }
                },
            },
            "responses": {
                "200": _json("The verdict (intact or not).", _ref("Verdict")),
                "413": BODY_ERRORS["413"],
                "422": _error("The body is not a checkpoint, an array of them or JSON lines of them."),
                "503": _or_database_unavailable(
                    "The app's checkpoint key is missing or unreadable: checkpoints cannot be checked."
                ),
                **URL_ERRORS,
                **AUTH_ERRORS,
            },
        },
    },
    "/api/v1/orgs/{slug}/audit/checkpoint": {
        "get": {
            "operationId": "getCheckpoint",
            "summary": "A signed checkpoint of the org's chain now; the previous one when nothing was added. "
            "Any scope.",
            "parameters": [SLUG],
            "responses": {
                "200": _json("The checkpoint.", _ref("Checkpoint")),
                "409": _error(
                    "Nothing is signed: the chain no longer extends the previous checkpoint "
                    "(checkpoint_inconsistent), or this host's checkpoint key is not the deployment's (the newest "
                    "checkpoint's, of any org: checkpoint_key_changed; every host needs the same key file)."
                ),
                "503": _or_database_unavailable("The app's checkpoint key cannot be read."),
                **URL_ERRORS,
                **AUTH_ERRORS,
            },
        },
    },
    "/api/v1/orgs/{slug}/images": {
        "get": {
            "operationId": "listImages",
            "summary": "The org's images now: each (repo, image name) with its latest scan, in the order first seen. "
            "Scope findings:read.",
            "parameters": [
                SLUG,
                _query("repo", REPO, "Only this repository's images (any letter case)."),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}, "Page size."),
                _query("cursor", {"type": "string", "maxLength": 200}, "next_cursor of the previous page."),
            ],
            "responses": {
                "200": _json("A page of images.", _ref("ImageList")),
                **URL_ERRORS,
                "422": _error("A bad query parameter (repo, limit, or a cursor this API did not give out)."),
                **AUTH_ERRORS,
                **DATABASE_ERRORS,
            },
        },
    },
    "/api/v1/orgs/{slug}/images/{image_id}": {
        "get": {
            "operationId": "getImage",
            "summary": "One image with its latest scan. Scope findings:read.",
            "parameters": [SLUG, IMAGE_ID],
            "responses": {
                "200": _json("The image.", _ref("ImageNow")),
                **URL_ERRORS,
                **IMAGE_AUTH_ERRORS,
                **DATABASE_ERRORS,
            },
        },
    },
    "/api/v1/orgs/{slug}/images/{image_id}/trend": {
        "get": {
            "operationId": "getImageTrend",
            "summary": f"One image's critical, high, medium and low findings per day over the last {TREND_DAYS} "
            "days, as its latest scan had them that day. Scope findings:read.",
            "parameters": [SLUG, IMAGE_ID],
            "responses": {
                "200": _json("The trend, oldest day first.", _ref("Trend")),
                **URL_ERRORS,
                **IMAGE_AUTH_ERRORS,
                **DATABASE_ERRORS,
            },
        },
    },
    "/api/v1/orgs/{slug}/trend": {
        "get": {
            "operationId": "getTrend",
            "summary": f"The org's critical, high, medium and low findings per day over the last {TREND_DAYS} days: "
            "each image counted as its latest scan that day had them. Scope findings:read.",
            "parameters": [SLUG],
            "responses": {
                "200": _json("The trend, oldest day first.", _ref("Trend")),
                **URL_ERRORS,
                **AUTH_ERRORS,
                **DATABASE_ERRORS,
            },
        },
    },
    "/api/v1/orgs/{slug}/advisories/{advisory_id}/images": {
        "get": {
            "operationId": "searchAdvisory",
            "summary": "Every image whose latest scan has the advisory, as its id or a vendor id: one item per "
            "finding, newest first. Scope findings:read.",
            "parameters": [
                SLUG,
                {
                    "name": "advisory_id",
                    "in": "path",
                    "required": True,
                    "schema": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": MAX_QUERY + 1,
                        "pattern": r"^[A-Za-z0-9][A-Za-z0-9._:+/-]*\*?$",
                    },
                    "description": f"An advisory id (CVE-2021-44228, GHSA-..., DSA-...; letter case ignored), at most "
                    f"{MAX_QUERY} characters of letters, digits and . _ : + / -; or a prefix ending in * with at "
                    f"least {MIN_PREFIX} characters before it (CVE-2024-*).",
                },
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}, "Page size."),
                _query("cursor", {"type": "string", "maxLength": 200}, "next_cursor of the previous page."),
            ],
            "responses": {
                "200": _json("A page of findings.", _ref("AdvisorySearch")),
                **URL_ERRORS,
                "422": _error(
                    "Not an advisory id or prefix (the detail names advisory_id and says why); or a bad limit or "
                    "cursor."
                ),
                **AUTH_ERRORS,
                **DATABASE_ERRORS,
            },
        },
    },
    "/healthz": {
        "get": {
            "operationId": "healthz",
            "summary": "The process answers.",
            "security": [],
            "responses": {
                "200": _json(
                    "Up.", {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}
                ),
                **URL_ERRORS,
            },
        },
    },
    "/readyz": {
        "get": {
            "operationId": "readyz",
            "summary": (
                "The database answers and its schema is migrated to this version; with a GitHub App configured, an "
                "outbox worker posting as that App beat in the last minute; without one, no worker posting as an App "
                "is alive (this process would store every state as not delivered)."
            ),
            "security": [],
            "responses": {
                "200": _json(
                    "Ready.",
                    {
                        "type": "object",
                        "required": ["status", "database", "worker"],
                        "properties": {"status": {"const": "ok"}, "database": STR, "worker": STR},
                    },
                ),
                "503": _json(
                    "Not ready: the database is unreachable or not migrated, or no outbox worker is alive while a "
                    "GitHub App is configured (then `worker` says so).",
                    {
                        "type": "object",
                        "required": ["status", "database"],
                        "properties": {"status": {"const": "unavailable"}, "database": STR, "worker": STR},
                    },
                ),
                **URL_ERRORS,
            },
        },
    },
    "/": {
        "get": {
            "operationId": "home",
            "summary": "The front page: what this service is, with links to the admin sign-in and this document.",
            "security": [],
            "responses": {
                "200": {"description": "An HTML page.", "content": {"text/html": {"schema": STR}}},
                **URL_ERRORS,
            },
        },
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "summary": (
                "Prometheus's scrape: upload, finding, webhook and GitHub request counters, upload time, and the "
                "outbox gauges (left out while the database cannot be read). With FREMFORGE_METRICS_TOKEN set, it "
                "must come as Authorization: Bearer <token>; never rate limited."
            ),
            "security": [],
            "responses": {
                "200": {
                    "description": "Every series in Prometheus's text format.",
                    "content": {"text/plain": {"schema": STR}},
                },
                **URL_ERRORS,
                "401": {
                    **_error("FREMFORGE_METRICS_TOKEN is set and the request does not carry it."),
                    "headers": {"WWW-Authenticate": {"schema": STR, "required": True}},
                },
                "503": {
                    **_error("The metrics files cannot be read now (metrics_unavailable, logged); try again."),
                    "headers": {"Retry-After": {"schema": STR, "required": True}},
                },
            },
        },
    },
    "/webhooks/github": {
        "post": {
            "operationId": "receiveWebhook",
            "summary": (
                "GitHub's deliveries of the App's events (the README's Webhooks): the signature checked before the "
                "body is parsed, each delivery id handled once."
            ),
            "security": [],
            "parameters": [
                {
                    "name": "X-Hub-Signature-256",
                    "in": "header",
                    "required": True,
                    "schema": STR,
                    "description": "sha256= and the HMAC-SHA256 of the raw body with FREMFORGE_GITHUB_WEBHOOK_SECRET.",
                },
                {"name": "X-GitHub-Event", "in": "header", "required": True, "schema": STR},
                {"name": "X-GitHub-Delivery", "in": "header", "required": True, "schema": STR},
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "responses": {
                "200": _json(
                    "Handled (`ok`), or a delivery id handled before (`duplicate`).",
                    {"type": "object", "required": ["status"], "properties": {"status": {"enum": ["ok", "duplicate"]}}},
                ),
                "202": _json(
                    "Work queued for the worker (`queued`), or an event or action not handled here (`ignored`).",
                    {
                        "type": "object",
                        "required": ["status"],
                        "properties": {"status": {"enum": ["queued", "ignored"]}},
                    },
                ),
                "400": _error(
                    "A signed body that is not a JSON object, headers that do not name the delivery and event, or a "
                    "payload whose fields read are missing, of the wrong type or hold a NUL (bad_payload); or a NUL in "
                    "the URL."
                ),
                "401": _error("The signature is missing or does not match the body."),
                "413": _error("The body is over 25 MiB, GitHub's cap on a delivery."),
                "503": {
                    **_error(
                        "FREMFORGE_GITHUB_WEBHOOK_SECRET is not set (webhooks_not_configured: every delivery is "
                        f"refused), or {_DATABASE_UNAVAILABLE}."
                    ),
                    "headers": {"Retry-After": _RETRY_AFTER},
                },
            },
        },
    },
    "/api/v1/openapi.json": {
        "get": {
            "operationId": "getOpenApi",
            "summary": "This document.",
            "security": [],
            "responses": {
                "200": {
                    "description": "The OpenAPI document.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                **URL_ERRORS,
            },
        },
    },
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fremforge image scanning",
            "version": "1",
            "description": "Upload Trivy findings per image scan; read scans and the org's policy. Tokens are "
            f"the app's own, scoped to one org: {', '.join(SCOPES)}.",
        },
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An app token (ffis_...), made with `tokens create`.",
                }
            },
        },
        "security": [{"bearer": []}],
    }


@bp.get("/api/v1/openapi.json")
def openapi_json() -> dict[str, Any]:
    return document()
