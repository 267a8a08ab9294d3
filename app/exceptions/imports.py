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
- Only not_affected statements become exceptions, and only where no later statement supersedes them (below).
- `vulnerability` (an object with `name`, or a string in v0.0.1) is the advisory id; none: BadDocument at
  `statements[i].vulnerability`, whatever the status. Its `aliases` (a list of strings) are other names of the same
  vulnerability; names are compared ignoring letter case.
- The reason is `justification: impact_statement` (either alone when the other is missing; `status_notes` stands in
  for a missing impact statement); when the statement says neither, the `reason` given to `parse`; else none, and
  validation reports `statements[i].reason`. `expires_at` is always the one given to `parse` (OpenVEX has no expiry);
  none: validation reports `statements[i].expires_at`.
- Each product of a not_affected statement must be a `pkg:oci/NAME[@DIGEST]?repository_url=REGISTRY/PATH` purl (a
  string, or an object with it as `@id` or `identifiers.purl`); its image pattern is the image name `repository_url`
  gives (percent-decoded, without a URL scheme, tag or digest), else NAME. A product that is not a pkg:oci purl is
  refused (BadDocument at `statements[i].products[j]`): an exception without an image scope would except more than
  the statement says. The purl's version (a digest) and qualifiers (`tag`, `arch`...) are dropped: the exception
  covers every tag of that image. A not_affected statement without products is refused (BadDocument at
  `statements[i].products`): OpenVEX calls such a statement incomplete (its products would come from an
  encapsulating document, which an import has not), and an exception in every image would say more than it does.
- Subcomponents (a product's `subcomponents`, or in v0.0.1 the statement's) are package purls
  (`pkg:deb/debian/openssl@...`); each gives a package name as Trivy names packages: the purl's name, with its
  namespace for language packages (`namespace/name`; Maven `group:artifact`), but not for deb, rpm and apk.
- One exception per (statement, product, subcomponent); a product with no subcomponents gives exceptions without a
  package scope. Each item's `where` is its statement (`statements[i]`), so validation errors name the statement.

Supersession (OpenVEX: a document is a sequence of statements, a later one about the same vulnerability and product
overriding an earlier one; Trivy applies the latest statement matching a finding's product and package):

- Which statement is later: by `timestamp` (the statement's, else the document's; RFC 3339, a date alone its
  midnight, no zone UTC; else BadDocument at `statements[i].timestamp` or `timestamp`), the later in the document on
  a tie. When no statement about a vulnerability has a timestamp, their order in the document; when some do and
  some do not (and the document has none), which is later cannot be told: BadDocument at `statements[i].timestamp`
  of the first without, if the vulnerability has statements of both kinds (not_affected and another).
- A not_affected statement's exception is made only where, by the latest statements, nothing it covers is affected,
  fixed or under_investigation. The exception covers more than the statement may say (every digest, tag and
  platform of the image; without a subcomponent, every package; with one, every version of the package), so it is
  withdrawn when another-status statement about the same vulnerability speaks of any part of what it covers and no
  statement later than that one speaks of all of that part. So a later `affected` for the image, for another digest
  or platform of it, or for one of its packages withdraws it, in that image only; a later not_affected for the
  whole image (or the whole package) restores it. Parts compare as purls match: no version is every version,
  qualifiers must be among the other's.
- Products of another-status statements: pkg:oci purls with a repository_url are read as above (a bad one:
  BadDocument); a package purl speaks of that package in any image (Trivy matches a package purl product against the
  image's packages); an image without its repository_url (any registry's) or a product this reader cannot tell (a
  CPE, an IRI) speaks of any image; no products at all (incomplete, as above) speaks of every image. Each withdraws
  wherever it may apply: fails closed.
- A document whose statements take more than MAX_COMPARISONS comparisons in all to tell this is refused
  (BadDocument at the statement where the budget ran out): about a second's work.

.trivyignore (Trivy's format):

- One advisory id a line; blank lines and lines starting with `#` are skipped. After the id, an optional
  `exp:YYYY-MM-DD` (the exception expires at the start of that day, UTC, as Trivy stops ignoring then), then
  optionally a `#` comment. Anything else after the id, a second `exp:`, a date that is not YYYY-MM-DD or a
  control character: BadDocument at `line N` (N counts every line from 1).
- The reason is the `reason` given to `parse` (none: validation reports `line N.reason`); the expiry `exp:`, else
  the `expires_at` given to `parse` (none: validation reports `line N.expires_at`). A line whose own `exp:` date has
  come is honoured as Trivy does, by no longer ignoring its id: `lapsed` sets it apart (skipped, and said so), so an
  older file can still be imported; a default `expires_at` already past is refused by validation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

from app import fields
from app.exceptions import IMAGE_PATTERN

FORMATS = ("openvex", "trivyignore")
OPENVEX_CONTEXT = "https://openvex.dev/ns"
STATUSES = ("not_affected", "affected", "fixed", "under_investigation")
# Purl types whose namespace is a distribution, not part of the package's name as Trivy reports it.
_DISTRO_TYPES = ("deb", "rpm", "apk", "alpm")
# Comparisons of statements an OpenVEX document may take to tell which are superseded (about a second's work); each
# needs a handful where statements do not overlap.
MAX_COMPARISONS = 250_000
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Item:
    """One exception to create: its fields, and where in the document it came from (`statements[2]`, `line 5`);
    `until` the day a .trivyignore line's own `exp:` gives (its expiry is the start of that day, UTC)."""

    where: str
    doc: dict[str, Any]
    until: date | None = None


def lapsed(items: list[Item], now: datetime) -> tuple[list[Item], list[dict[str, str]]]:
    """The items to create, and those whose own `exp:` day had begun at `now` (UTC; a naive `now` is UTC, as
    app.models.utcnow gives it), which Trivy no longer honours:
    each as `{"where", "advisory_id", "expired"}` for the answer to say it was skipped."""
    today = (now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)).date()  # naive: UTC (utcnow)
    kept: list[Item] = []
    skipped: list[dict[str, str]] = []
    for item in items:
        if item.until is not None and item.until <= today:
            skipped.append({"where": item.where, "advisory_id": item.doc["advisory_id"], "expired": str(item.until)})
        else:
            kept.append(item)
    return kept, skipped


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

# When a statement was made: the instant (whole seconds, with its zone; compared as instants) and the fraction of its
# second exactly as written (OpenVEX tools write nanoseconds, finer than a datetime holds).
_When = tuple[datetime, Decimal]
_TIMESTAMP = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})(?:[Tt ]([0-9]{2}:[0-9]{2}(?::[0-9]{2})?)(?:[.,]([0-9]+))?)?"
    r"(Z|z|[+-][0-9]{2}(?::?[0-9]{2})?)?"
)


@dataclass(frozen=True)
class _Scope:
    """What a statement speaks of, for one product and subcomponent: an image (None: any image, for a statement that
    names no product), the version (digest) and qualifiers its purl gives (none: every version, any qualifiers), and
    a package (None: every package) with its purl's version and qualifiers likewise."""

    image: str | None
    version: str | None = None
    qualifiers: frozenset[tuple[str, str]] = frozenset()
    package: str | None = None
    package_version: str | None = None
    package_qualifiers: frozenset[tuple[str, str]] = frozenset()

    def contains(self, other: _Scope) -> bool:
        """Whether everything `other` speaks of is spoken of here too (as purls match: a purl without a version
        matches every version; one with qualifiers, only purls with those qualifiers)."""
        return (
            self.image in (None, other.image)
            and self.version in (None, other.version)
            and self.qualifiers <= other.qualifiers
            and (
                self.package is None
                or (
                    self.package == other.package
                    and self.package_version in (None, other.package_version)
                    and self.package_qualifiers <= other.package_qualifiers
                )
            )
        )


@dataclass(frozen=True)
class _Said:
    """One statement as read: its status, its vulnerability's names (upper case: the name and its aliases), when it
    was made (None: neither it nor the document says), what it speaks of; for not_affected, the advisory id and the
    reason it gives."""

    index: int
    status: str
    names: frozenset[str]
    when: _When | None
    scopes: tuple[_Scope, ...]
    advisory: str
    reason: str | None

    @property
    def where(self) -> str:
        return f"statements[{self.index}]"


def _openvex(doc: Any, reason: str | None, expires_at: str | None) -> list[Item]:
    if not isinstance(doc, dict):
        raise BadDocument("$", "is not an OpenVEX document: expected a JSON object with @context and statements")
    if not _is_openvex_context(doc.get("@context")):
        raise BadDocument("@context", f"is not an OpenVEX document: @context must start with {OPENVEX_CONTEXT}")
    statements = doc.get("statements")
    if not isinstance(statements, list):
        raise BadDocument("statements", "must be a list of statements")
    issued = _timestamp(doc.get("timestamp"), "timestamp")
    said = [_statement(statement, i, issued) for i, statement in enumerate(statements)]
    withdrawn = _withdrawn(said)
    return [
        Item(
            s.where, _fields(s.advisory, s.reason or reason, expires_at, image=scope.image, package_name=scope.package)
        )
        for s in said
        if s.status == "not_affected"
        for scope in s.scopes
        if (s.index, scope) not in withdrawn
    ]


def _is_openvex_context(context: Any) -> bool:
    """A JSON-LD context naming OpenVEX's (a string, or a list holding one)."""
    if isinstance(context, list):
        return any(_is_openvex_context(c) for c in context)
    return isinstance(context, str) and (context == OPENVEX_CONTEXT or context.startswith(OPENVEX_CONTEXT + "/"))


def _statement(statement: Any, index: int, issued: _When | None) -> _Said:
    where = f"statements[{index}]"
    if not isinstance(statement, dict):
        raise BadDocument(where, "must be an object")
    status = statement.get("status")
    if status not in STATUSES:
        what = "is required" if status is None else f"{status!r} is not an OpenVEX status"
        raise BadDocument(f"{where}.status", f"{what}: one of {', '.join(STATUSES)}")
    granting = status == "not_affected"
    vulnerability = statement.get("vulnerability")
    advisory = _vulnerability(vulnerability, f"{where}.vulnerability")
    names = frozenset(n.upper() for n in [advisory, *_aliases(vulnerability, f"{where}.vulnerability.aliases")])
    because = _reason(statement, where) if granting else None
    products = statement.get("products")
    if products is not None and not isinstance(products, list):
        raise BadDocument(f"{where}.products", "must be a list of products")
    shared = statement.get("subcomponents")  # v0.0.1: the statement's, for every product
    scopes: list[_Scope] = []
    for j, product in enumerate(products or ()):
        at = f"{where}.products[{j}]"
        try:
            purl = _purl_of(product, at)
            p = parse_purl(purl, at)
        except BadDocument:
            if granting:
                raise
            scopes.append(_Scope(None))  # another status about a product this reader cannot tell: any image
            continue
        if not granting and (p.type != "oci" or not p.qualifiers.get("repository_url")):
            # Another status about a package (Trivy matches a package purl product against the image's packages) or
            # an image by its name alone (any registry's): it withdraws wherever it may apply, in any image.
            scopes.append(_withdrawn_anywhere(p, purl, at))
            continue
        image, qualifiers = _oci_image(p, purl, at), _qualifiers(p, "repository_url")
        own = product.get("subcomponents") if isinstance(product, dict) else None
        subs, subs_at = (own, f"{at}.subcomponents") if own is not None else (shared, f"{where}.subcomponents")
        scopes += [_Scope(image, p.version, qualifiers, **package) for package in _packages(subs, subs_at)]
    if not products:
        if granting:
            raise BadDocument(
                f"{where}.products",
                "names no product: a not_affected statement must name the images it speaks of (pkg:oci purls); "
                "an exception in every image of the org would except more than the statement says",
            )
        # another status naming no product: it may speak of any image, so it withdraws in every image
        scopes = [_Scope(None, **package) for package in _packages(shared, f"{where}.subcomponents")]
    when = _timestamp(statement.get("timestamp"), f"{where}.timestamp") or issued
    return _Said(index, status, names, when, tuple(scopes), advisory, because)


def _withdrawn_anywhere(p: Purl, purl: str, where: str) -> _Scope:
    """What a statement of another status about `p` speaks of, in any image: the package a package purl names (any
    image's), else every package (an image named without its registry)."""
    if p.type == "oci":
        return _Scope(None)
    try:
        return _Scope(
            None, package=_package(p, purl, where), package_version=p.version, package_qualifiers=_qualifiers(p)
        )
    except BadDocument:
        return _Scope(None)


def _vulnerability(value: Any, where: str) -> str:
    name = value.get("name") if isinstance(value, dict) else value
    if not isinstance(name, str) or not name.strip():
        raise BadDocument(where, "has no name (the advisory id, such as CVE-2019-5094)")
    return _text(name, where).strip()


def _aliases(value: Any, where: str) -> list[str]:
    """The other names a vulnerability object gives (v0.2.0 `aliases`); a v0.0.1 string has none."""
    aliases = value.get("aliases") if isinstance(value, dict) else None
    if aliases is None:
        return []
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise BadDocument(where, "must be a list of strings")
    return [_text(a, where).strip() for a in aliases if a.strip()]


def _timestamp(value: Any, where: str) -> _When | None:
    """An RFC 3339 timestamp (a date alone: its midnight; no zone: UTC); None when there is none."""
    if value is None:
        return None
    m = _TIMESTAMP.fullmatch(value.strip()) if isinstance(value, str) else None
    try:
        if m is None:
            raise ValueError
        day, clock, fraction, zone = m.groups()
        zone = "+00:00" if zone in (None, "Z", "z") else zone
        zone = zone if len(zone) != 3 else zone + ":00"
        when = datetime.fromisoformat(f"{day}T{clock or '00:00'}{zone}")  # aware: compared as instants
    except ValueError:
        raise BadDocument(where, "is not a timestamp: write RFC 3339, such as 2026-06-01T12:00:00Z") from None
    return when, Decimal(f"0.{fraction or 0}")


def _withdrawn(said: list[_Said]) -> set[tuple[int, _Scope]]:
    """The (statement, scope) of each not_affected statement's exception that a statement of another status, later
    and still in force, withdraws.

    An exception covers its image whatever the version (digest, tag, arch) and, without a package, every package:
    more than its statement may say. So it is withdrawn when, about the same vulnerability, an affected, fixed or
    under_investigation statement speaks of anything it covers (the overlap of the two) and no statement later than
    that one speaks of all of that overlap. Which is later: by timestamp (the statement's, else the document's), the
    later in the document on a tie; when no statement about the vulnerability has one, by place in the document."""
    withdrawn: set[tuple[int, _Scope]] = set()
    budget = _Budget(MAX_COMPARISONS)
    for group in _by_vulnerability(said):
        if all(s.status == "not_affected" for s in group) or all(s.status != "not_affected" for s in group):
            continue
        timeline = _Timeline(group, budget)
        for s in group:
            if s.status == "not_affected":
                withdrawn |= {(s.index, granted) for granted in s.scopes if timeline.withdraws(granted)}
    return withdrawn


class _Budget:
    """How many more comparisons of statements a document may take: a bound on the time a document made of many
    overlapping statements about one vulnerability can take (such a document is refused, naming the statement)."""

    def __init__(self, comparisons: int) -> None:
        self.left = comparisons

    def spend(self, where: str) -> None:
        self.left -= 1
        if self.left < 0:
            raise BadDocument(
                where,
                f"its vulnerability has too many statements of different statuses about the same images to compare "
                f"them (over {MAX_COMPARISONS:,} comparisons): split the document",
            )


class _Timeline:
    """The statements about one vulnerability, in order of time."""

    def __init__(self, group: list[_Said], budget: _Budget) -> None:
        self.budget, self.where = budget, group[0].where
        rank = _order(group)
        latest: dict[_Scope, int] = {}  # each scope's latest statement, any status
        denying: dict[_Scope, int] = {}  # each scope's latest affected, fixed or under_investigation statement
        for s in group:
            for scope in s.scopes:
                latest[scope] = max(latest.get(scope, -1), rank[s.index])
                if s.status != "not_affected":
                    denying[scope] = max(denying.get(scope, -1), rank[s.index])
        # the latest statements by image, version and package, latest first, for `superseded` to look up
        self.buckets: dict[tuple[str | None, str | None, str | None], list[tuple[int, _Scope]]] = {}
        for scope, r in latest.items():
            self.buckets.setdefault((scope.image, scope.version, scope.package), []).append((r, scope))
        for bucket in self.buckets.values():
            bucket.sort(key=lambda pair: pair[0], reverse=True)
        # the latest denying statements by image, and by image and package
        self.denying: dict[tuple[str | None, ...], list[tuple[_Scope, int]]] = {}
        for scope, r in denying.items():
            self.denying.setdefault((scope.image,), []).append((scope, r))
            self.denying.setdefault((scope.image, scope.package), []).append((scope, r))
        self.decided: dict[tuple[str | None, str | None], bool] = {}

    def withdraws(self, granted: _Scope) -> bool:
        """Whether a denying statement (affected, fixed, under_investigation) is in force somewhere in what an
        exception for `granted` covers: its image whatever the version, and its package (or every package)."""
        key = (granted.image, granted.package)
        if key not in self.decided:
            if granted.package is None:  # every package of the image
                overlapping: list[tuple[str | None, ...]] = [(granted.image,), (None,)]
            else:
                overlapping = [(i, p) for i in (granted.image, None) for p in (granted.package, None)]
            self.decided[key] = any(
                not self.superseded(r, denied if denied.image and denied.package else _overlap(denied, granted))
                for at in overlapping
                for denied, r in self.denying.get(at, ())
            )
        return self.decided[key]

    def superseded(self, after: int, region: _Scope) -> bool:
        """Whether a statement later than rank `after` speaks of all of `region`."""
        self.budget.spend(self.where)
        images = (region.image, None) if region.image is not None else (None,)
        versions = (region.version, None) if region.version is not None else (None,)
        packages = (region.package, None) if region.package is not None else (None,)
        for key in [(i, v, p) for i in images for v in versions for p in packages]:
            for r, scope in self.buckets.get(key, ()):
                if r <= after:
                    break
                self.budget.spend(self.where)
                if scope.contains(region):
                    return True
        return False


def _overlap(denied: _Scope, granted: _Scope) -> _Scope:
    """What a denying statement's scope and an exception for `granted` (its image, whatever the version; its package
    or every package) both cover."""
    return replace(denied, image=granted.image, package=denied.package or granted.package)


def _by_vulnerability(said: list[_Said]) -> list[list[_Said]]:
    """The statements grouped by vulnerability: two are about the same one when they share a name or an alias."""
    parent = list(range(len(said)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for s in said:
        for name in s.names:
            parent[root(s.index)] = root(first.setdefault(name, s.index))
    groups: dict[int, list[_Said]] = {}
    for s in said:
        groups.setdefault(root(s.index), []).append(s)
    return list(groups.values())


def _order(group: list[_Said]) -> dict[int, int]:
    """Each statement's rank in time among those about the same vulnerability (higher: later)."""
    timed = [s for s in group if s.when is not None]
    if not timed:
        ordered = group  # in document order
    elif len(timed) == len(group):
        ordered = sorted(group, key=lambda s: (s.when, s.index))
    else:
        untimed = next(s for s in group if s.when is None)
        raise BadDocument(
            f"{untimed.where}.timestamp",
            "is missing and the document has no timestamp, while another statement about the same vulnerability "
            "has one: which of them is later cannot be told",
        )
    return {s.index: rank for rank, s in enumerate(ordered)}


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
    version: str | None = None


def parse_purl(purl: str, where: str) -> Purl:
    """A package URL's parts (https://github.com/package-url/purl-spec): pkg:TYPE/NAMESPACE/NAME@VERSION?QUALIFIERS
    #SUBPATH, each part percent-decoded; the subpath is not needed here."""
    if not purl.startswith("pkg:"):
        raise BadDocument(where, f"{purl!r} is not a package URL (pkg:TYPE/NAME...)")
    _text(purl, where)
    rest = purl[4:].lstrip("/").partition("#")[0]
    rest, _, query = rest.partition("?")
    kind, _, path = rest.partition("/")
    path, _, version = path.rpartition("@") if "@" in path else (path, "", "")
    segments = [unquote(s) for s in path.split("/") if s]
    if not kind or not segments:
        raise BadDocument(where, f"{purl!r} is not a package URL (pkg:TYPE/NAME...)")
    qualifiers = {}
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key:
            qualifiers[key.lower()] = unquote(value)
    return Purl(kind.lower(), "/".join(segments[:-1]), segments[-1], qualifiers, unquote(version) or None)


def _qualifiers(p: Purl, *leaving_out: str) -> frozenset[tuple[str, str]]:
    return frozenset((key, value) for key, value in p.qualifiers.items() if key not in leaving_out)


def _oci_image(p: Purl, purl: str, where: str) -> str:
    """The image name a pkg:oci purl names: repository_url's (no scheme, tag or digest), else the purl's name."""
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


def _packages(subcomponents: Any, where: str) -> list[dict[str, Any]]:
    """The packages subcomponents name, as _Scope fields; [{}] (every package) when there are none."""
    if subcomponents is None or subcomponents == []:
        return [{}]
    if not isinstance(subcomponents, list):
        raise BadDocument(where, "must be a list of subcomponents")
    packages = []
    for k, sub in enumerate(subcomponents):
        at = f"{where}[{k}]"
        purl = _purl_of(sub, at)
        p = parse_purl(purl, at)
        packages.append(
            {"package": _package(p, purl, at), "package_version": p.version, "package_qualifiers": _qualifiers(p)}
        )
    return packages


def _package(p: Purl, purl: str, where: str) -> str:
    """A package purl's name as Trivy reports the package (PkgName)."""
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
        until = date.fromisoformat(expiry) if expiry is not None else None
        items.append(Item(where, _fields(advisory, reason, expiry or expires_at), until))
    return items


def _date(value: str, where: str) -> str:
    try:
        if not _DATE.fullmatch(value):
            raise ValueError
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise BadDocument(where, f"exp:{value} is not a date: write exp:YYYY-MM-DD, such as exp:2027-01-04") from None
