"""Import Trivy's ignore inputs as exceptions (spec section 10): an OpenVEX document's not_affected statements, or a
.trivyignore file. Pure: a document in, the exceptions to create out (as app.exceptions.ExceptionBody fields, each
with where it came from), or BadDocument naming the statement or line.

All or nothing: anything malformed raises BadDocument, and the caller stores nothing. What the document leaves out
that an exception needs (a reason, an expiry) is left out of the item's fields too, so that validating the item
names it under the item's `where` (`statements[2].expires_at`, `line 5.reason`).

OpenVEX (https://github.com/openvex/spec, v0.2.0 and the older v0.0.1 shape):

- The document is a JSON object whose `@context` starts with https://openvex.dev/ns and whose `statements` is a list;
  else BadDocument at `$`, `@context` or `statements`. Each statement must be an object with a `status` of
  not_affected, affected, fixed or under_investigation (BadDocument at `statements[i]` or `statements[i].status`).
- Only not_affected statements become exceptions; the others are skipped.
- `vulnerability` (an object with `name`, or a string in v0.0.1) is the advisory id; none: BadDocument at
  `statements[i].vulnerability`.
- The reason is `justification: impact_statement` (either alone when the other is missing; `status_notes` stands in
  for a missing impact statement); when the statement says neither, the `reason` given to `parse`; else none, and
  validation reports `statements[i].reason`. `expires_at` is always the one given to `parse` (OpenVEX has no expiry);
  none: validation reports `statements[i].expires_at`.
- Each product must be a `pkg:oci/NAME[@DIGEST]?repository_url=REGISTRY/PATH` purl (a string, or an object with it as
  `@id` or `identifiers.purl`); its image pattern is the image name `repository_url` gives (percent-decoded, without a
  URL scheme, tag or digest), else NAME. A product that is not a pkg:oci purl is refused (BadDocument at
  `statements[i].products[j]`): an exception without an image scope would except more than the statement says.
  The purl's version (a digest) and `tag` qualifier are dropped: the exception covers every tag of that image.
- Subcomponents (a product's `subcomponents`, or in v0.0.1 the statement's) are package purls
  (`pkg:deb/debian/openssl@...`); each gives a package name as Trivy names packages: the purl's name, with its
  namespace for language packages (`namespace/name`; Maven `group:artifact`), but not for deb, rpm and apk.
- One exception per (statement, product, subcomponent): a statement with no products gives exceptions without an image
  scope; a product with no subcomponents gives exceptions without a package scope. Each item's `where` is its
  statement (`statements[i]`), so validation errors name the statement.

.trivyignore (Trivy's format):

- One advisory id a line; blank lines and lines starting with `#` are skipped. After the id, an optional
  `exp:YYYY-MM-DD` (the exception expires at the start of that day, UTC, as Trivy stops ignoring then), then
  optionally a `#` comment. Anything else after the id, a second `exp:`, a date that is not YYYY-MM-DD or a
  control character: BadDocument at `line N` (N counts every line from 1).
- The reason is the `reason` given to `parse` (none: validation reports `line N.reason`); the expiry `exp:`, else
  the `expires_at` given to `parse` (none: validation reports `line N.expires_at`). An `exp:` date already past is
  refused by validation, not skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Any
from urllib.parse import unquote

from app import fields
from app.exceptions import IMAGE_PATTERN

FORMATS = ("openvex", "trivyignore")
OPENVEX_CONTEXT = "https://openvex.dev/ns"
STATUSES = ("not_affected", "affected", "fixed", "under_investigation")
# Purl types whose namespace is a distribution, not part of the package's name as Trivy reports it.
_DISTRO_TYPES = ("deb", "rpm", "apk", "alpm")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Item:
    """One exception to create: its fields, and where in the document it came from (`statements[2]`, `line 5`)."""

    where: str
    doc: dict[str, Any]


class BadDocument(ValueError):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where, self.message = where, message


def parse(fmt: str, document: Any, reason: str | None = None, expires_at: str | None = None) -> list[Item]:
    """The exceptions a document asks for; `reason` and `expires_at` are the defaults for what it does not say.

    `document`: for openvex the parsed JSON value, for trivyignore the file's text."""
    if fmt == "openvex":
        return _openvex(document, reason, expires_at)
    if fmt == "trivyignore":
        return _trivyignore(document, reason, expires_at)
    raise ValueError(f"unknown import format {fmt!r}; one of {', '.join(FORMATS)}")


def _fields(advisory: str, reason: str | None, expires_at: str | None, **scope: str | None) -> dict[str, Any]:
    """An item's fields; what is None is left out, for validation to name as missing."""
    doc: dict[str, Any] = {"advisory_id": advisory, "reason": reason, "expires_at": expires_at, **scope}
    return {key: value for key, value in doc.items() if value is not None}


# ---------------------------------------------------------------- OpenVEX


def _openvex(doc: Any, reason: str | None, expires_at: str | None) -> list[Item]:
    if not isinstance(doc, dict):
        raise BadDocument("$", "is not an OpenVEX document: expected a JSON object with @context and statements")
    if not _is_openvex_context(doc.get("@context")):
        raise BadDocument("@context", f"is not an OpenVEX document: @context must start with {OPENVEX_CONTEXT}")
    statements = doc.get("statements")
    if not isinstance(statements, list):
        raise BadDocument("statements", "must be a list of statements")
    items: list[Item] = []
    for i, statement in enumerate(statements):
        items += _statement(statement, f"statements[{i}]", reason, expires_at)
    return items


def _is_openvex_context(context: Any) -> bool:
    """A JSON-LD context naming OpenVEX's (a string, or a list holding one)."""
    if isinstance(context, list):
        return any(_is_openvex_context(c) for c in context)
    return isinstance(context, str) and (context == OPENVEX_CONTEXT or context.startswith(OPENVEX_CONTEXT + "/"))


def _statement(statement: Any, where: str, reason: str | None, expires_at: str | None) -> list[Item]:
    if not isinstance(statement, dict):
        raise BadDocument(where, "must be an object")
    status = statement.get("status")
    if status not in STATUSES:
        what = "is required" if status is None else f"{status!r} is not an OpenVEX status"
        raise BadDocument(f"{where}.status", f"{what}: one of {', '.join(STATUSES)}")
    if status != "not_affected":
        return []
    advisory = _vulnerability(statement.get("vulnerability"), f"{where}.vulnerability")
    because = _reason(statement, where) or reason
    targets: list[tuple[str | None, str | None]] = []  # (image, package)
    products = statement.get("products")
    if products is not None and not isinstance(products, list):
        raise BadDocument(f"{where}.products", "must be a list of products")
    shared = statement.get("subcomponents")  # v0.0.1: the statement's, for every product
    for j, product in enumerate(products or ()):
        at = f"{where}.products[{j}]"
        image = _oci_image(_purl_of(product, at), at)
        own = product.get("subcomponents") if isinstance(product, dict) else None
        subs, subs_at = (own, f"{at}.subcomponents") if own is not None else (shared, f"{where}.subcomponents")
        targets += [(image, package) for package in _packages(subs, subs_at)]
    if not products:
        targets = [(None, package) for package in _packages(shared, f"{where}.subcomponents")]
    return [
        Item(where, _fields(advisory, because, expires_at, image=image, package_name=package))
        for image, package in targets
    ]


def _vulnerability(value: Any, where: str) -> str:
    name = value.get("name") if isinstance(value, dict) else value
    if not isinstance(name, str) or not name.strip():
        raise BadDocument(where, "has no name (the advisory id, such as CVE-2019-5094)")
    return _text(name, where).strip()


def _reason(statement: dict[str, Any], where: str) -> str | None:
    """`justification: impact statement` (or status notes), or either alone; None when the statement says neither."""
    said = {
        key: _optional_text(statement.get(key), f"{where}.{key}")
        for key in ("justification", "impact_statement", "status_notes")
    }
    why, how = said["justification"], said["impact_statement"] or said["status_notes"]
    if why and how:
        return f"{why}: {how}"
    return why or how


def _optional_text(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadDocument(where, "must be a string")
    return _text(value, where).strip() or None


def _text(value: str, where: str) -> str:
    if "\x00" in value:
        raise BadDocument(where, "contains a NUL character")
    return value


def _purl_of(component: Any, where: str) -> str:
    """A product's or subcomponent's purl: the string itself, or its `@id`, or `identifiers.purl`."""
    if isinstance(component, str):
        return component
    if not isinstance(component, dict):
        raise BadDocument(where, "must be a purl or an object with @id")
    ident = component.get("@id")
    if isinstance(ident, str) and ident.startswith("pkg:"):
        return ident
    identifiers = component.get("identifiers")
    purl = identifiers.get("purl") if isinstance(identifiers, dict) else None
    if isinstance(purl, str):
        return purl
    raise BadDocument(where, "names no package URL (pkg:...) in @id or identifiers.purl")


@dataclass(frozen=True)
class Purl:
    type: str
    namespace: str
    name: str
    qualifiers: dict[str, str]


def parse_purl(purl: str, where: str) -> Purl:
    """A package URL's parts (https://github.com/package-url/purl-spec): pkg:TYPE/NAMESPACE/NAME@VERSION?QUALIFIERS
    #SUBPATH, each part percent-decoded; the version and subpath are not needed here."""
    if not purl.startswith("pkg:"):
        raise BadDocument(where, f"{purl!r} is not a package URL (pkg:TYPE/NAME...)")
    _text(purl, where)
    rest = purl[4:].lstrip("/").partition("#")[0]
    rest, _, query = rest.partition("?")
    kind, _, path = rest.partition("/")
    path = path.rpartition("@")[0] if "@" in path else path
    segments = [unquote(s) for s in path.split("/") if s]
    if not kind or not segments:
        raise BadDocument(where, f"{purl!r} is not a package URL (pkg:TYPE/NAME...)")
    qualifiers = {}
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key:
            qualifiers[key.lower()] = unquote(value)
    return Purl(kind.lower(), "/".join(segments[:-1]), segments[-1], qualifiers)


def _oci_image(purl: str, where: str) -> str:
    """The image name a pkg:oci purl names: repository_url's (no scheme, tag or digest), else the purl's name."""
    p = parse_purl(purl, where)
    if p.type != "oci":
        raise BadDocument(
            where,
            f"{purl!r} is not a pkg:oci purl: only a container image (pkg:oci/NAME?repository_url=REGISTRY/PATH) "
            "can scope an imported exception",
        )
    location = re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*://", "", p.qualifiers.get("repository_url") or "").strip("/")
    image = fields.image_name(location or p.name)
    if "*" in image or not IMAGE_PATTERN.fullmatch(image) or image.endswith("/"):
        raise BadDocument(where, f"{image!r} is not an image name such as ghcr.io/acme/api")
    return image


def _packages(subcomponents: Any, where: str) -> list[str | None]:
    """The package names subcomponents give; [None] (no package scope) when there are none."""
    if subcomponents is None or subcomponents == []:
        return [None]
    if not isinstance(subcomponents, list):
        raise BadDocument(where, "must be a list of subcomponents")
    return [_package(_purl_of(sub, f"{where}[{k}]"), f"{where}[{k}]") for k, sub in enumerate(subcomponents)]


def _package(purl: str, where: str) -> str:
    """A package purl's name as Trivy reports the package (PkgName)."""
    p = parse_purl(purl, where)
    if p.type == "oci":
        raise BadDocument(where, f"{purl!r} is an image, not a package: a subcomponent names a package")
    if not p.namespace or p.type in _DISTRO_TYPES:
        return p.name
    if p.type == "maven":
        return f"{p.namespace.replace('/', ':')}:{p.name}"
    return f"{p.namespace}/{p.name}"


# ---------------------------------------------------------------- .trivyignore


def _trivyignore(text: Any, reason: str | None, expires_at: str | None) -> list[Item]:
    if not isinstance(text, str):
        raise BadDocument("$", "is not text")
    items = []
    for n, line in enumerate(text.split("\n"), start=1):
        where = f"line {n}"
        line = line.removesuffix("\r")
        if _CONTROL.search(line):
            raise BadDocument(where, "contains a control character")
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        advisory, *rest = words
        expiry = None
        for word in rest:
            if word.startswith("#"):
                break
            if not word.startswith("exp:"):
                raise BadDocument(
                    where, f"has {word!r} after the id: one id a line, then optionally exp:YYYY-MM-DD and a # comment"
                )
            if expiry is not None:
                raise BadDocument(where, "has more than one exp: date")
            expiry = _date(word.removeprefix("exp:"), where)
        items.append(Item(where, _fields(advisory, reason, expiry or expires_at)))
    return items


def _date(value: str, where: str) -> str:
    try:
        if not _DATE.fullmatch(value):
            raise ValueError
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise BadDocument(where, f"exp:{value} is not a date: write exp:YYYY-MM-DD, such as exp:2027-01-04") from None
