"""Command line (`flask --app wsgi ...`): db, orgs, tokens, policy, exceptions, admin and webhooks groups."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click
import sqlalchemy as sa
from flask import Flask, current_app
from flask.cli import AppGroup, ScriptInfo, with_appcontext
from pydantic import ValidationError

from app import clock, db, exceptions, fields, metrics, metrics_folder, migrate, orgs, tokens
from app import worker as worker_loop
from app.admin import login_links
from app.chain import checkpoints, retention
from app.db import write_transaction
from app.exceptions import imports
from app.github import redeliver
from app.github.client import github_app
from app.models import BLOCK_ACTIONS, BLOCK_ON, BLOCK_THRESHOLDS, Org, utcnow
from app.policy import settings as policy_settings
from app.web import auth, bodies, urls
from app.web.urls import LOCAL_URL

log = logging.getLogger(__name__)


class _Migrated(click.Command):
    """A command that refuses to run on an older schema (`refuse_unmigrated`), once its arguments are read: `--help`
    and a usage error need no database."""

    def invoke(self, ctx: click.Context) -> Any:
        refuse_unmigrated(ctx.ensure_object(ScriptInfo).load_app())
        return super().invoke(ctx)


class Commands(AppGroup):
    """A group of commands that end in one line, not a traceback, when the database cannot be reached, is locked past
    its budget, or is not migrated to this version of the app (each but db's refuses to run on an older schema)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.name != "db":  # what db upgrade is for
            self.command_class = _Migrated

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except sa.exc.SQLAlchemyError as exc:
            problem = database_problem(exc, ctx.ensure_object(ScriptInfo).load_app(), self.name != "db")
            if problem is None:
                raise
            raise click.ClickException(problem) from None


def refuse_unmigrated(app: Flask) -> None:
    """One line and exit 1 when the database is at an older schema than this app's, or none (`migrate.older`)."""
    if migrate.older(app):
        raise click.ClickException(migrate.NOT_MIGRATED[0].lower() + migrate.NOT_MIGRATED[1:])


def database_problem(exc: sa.exc.SQLAlchemyError, app: Flask, ask_revision: bool = True) -> str | None:
    """What a command says of a database error that is not its own bug: the database unavailable (with the driver's
    first line, which says which: no such role or database, refused, a lock; the URL's password never), or not
    migrated; None for any other error."""
    if db.unavailable(exc):
        orig = getattr(exc, "orig", None) or exc
        said = _without_secrets(" ".join(str(orig).strip().splitlines()[:1])[:300], app.config["DATABASE_URL"])
        why = f"{type(orig).__name__}: {said}" if said else type(orig).__name__
        return f"the database cannot be reached or is busy ({why}); try again once it answers"
    if ask_revision:
        with app.app_context():
            if migrate.behind(app):
                return migrate.NOT_MIGRATED[0].lower() + migrate.NOT_MIGRATED[1:]
    return None


def _without_secrets(text: str, url: str) -> str:
    """`text` with whatever of the database URL's password it may hold blanked: the password as parsed, the raw text
    between `://` and the host's `@` (a password with an unencoded `@` is parsed short, and the rest shows up in the
    driver's message as a host name), each of its pieces, and a `password=` query parameter."""
    secrets_ = set()
    with contextlib.suppress(Exception):
        parsed = sa.engine.make_url(url)
        secrets_ |= {str(parsed.password or ""), str(parsed.query.get("password") or "")}
    rest = url.split("://", 1)[-1]
    userinfo = rest.rsplit("@", 1)[0] if "@" in rest else ""
    secrets_.add(userinfo.split(":", 1)[1] if ":" in userinfo else "")
    for piece in list(secrets_):
        secrets_ |= set(re.split(r"[@:/?#&=]", piece))
    for secret in sorted((p for p in secrets_ if len(p) >= 3), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


db_cli = Commands("db", help="Create or migrate the schema.")
orgs_cli = Commands("orgs", help="Organisations.")
tokens_cli = Commands("tokens", help="The app's API tokens.")
policy_cli = Commands("policy", help="An organisation's policy.")
exceptions_cli = Commands("exceptions", help="An organisation's exceptions (accepted risks).")
admin_cli = Commands("admin", help="The admin pages.")
chain_cli = Commands("chain", help="The tamper-evident chain of each organisation.")
retention_cli = Commands("retention", help="Ageing out old payloads.")
webhooks_cli = Commands("webhooks", help="GitHub's webhook deliveries to this app.")


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def _org(slug: str) -> Org:
    session = db.session()
    org = orgs.by_slug(session, slug)
    if org is None:
        like = orgs.slug_like(session, slug)
        if like is not None:  # slugs are exact; an org made from a GitHub login may have capitals
            raise click.ClickException(f"there is no organisation {slug!r}; there is {like!r} (slugs are exact)")
        if not orgs.SLUG.fullmatch(slug):  # no command to copy from what was typed: it could be a shell's
            raise click.ClickException(f"there is no organisation {slug!r}: a slug is letters, digits and hyphens")
        raise click.ClickException(f"there is no organisation {slug!r} (create it with: orgs create {slug})")
    return org


# ---------------------------------------------------------------- db


@db_cli.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="The Alembic revision to reach.")
def db_upgrade(revision: str) -> None:
    """Create the schema, or migrate it to the latest version."""
    unknown = migrate.unknown_revision(revision)
    if unknown is not None:
        raise click.ClickException(unknown)
    try:
        before = migrate.upgrade(current_app, revision)
    except migrate.MigrationBusy:
        raise click.ClickException(
            f"another db upgrade has been migrating this database for {migrate.MIGRATION_WAIT_SECONDS} s; nothing "
            "done: try again once it ends"
        ) from None
    now = migrate.current(current_app)
    past = f" (already past {revision}: an upgrade never goes back)" if revision not in ("head", "heads", now) else ""
    done = ", the head: nothing to do" if before == now == migrate.head() and not past else ""
    click.echo(f"database at {migrate.describe_url(current_app)} is at revision {now}{past}{done}")


@db_cli.command("check")
def db_check() -> None:
    """Fail when the models and the migrations disagree."""
    problems = migrate.differences(current_app)
    if problems:
        raise click.ClickException("models and migrations disagree:\n" + "\n".join(map(str, problems)))
    click.echo("models and migrations agree")


# ---------------------------------------------------------------- orgs


def _org_json(org: Org) -> dict[str, Any]:
    return {"id": org.id, "slug": org.slug, "github_login": org.github_login, "installation_id": org.installation_id}


@orgs_cli.command("create")
@click.argument("slug")
@click.option("--github-login", help="The GitHub account (org or user) whose repos it scans; default: SLUG.")
@click.option("--installation-id", type=click.IntRange(1, 2**63 - 1), help="The GitHub App installation id, if known.")
def orgs_create(slug: str, github_login: str | None, installation_id: int | None) -> None:
    """Add an organisation (with the default policy)."""
    session = db.session()
    try:
        with write_transaction(session):
            org = orgs.create(session, slug, github_login, installation_id)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    _echo_json(_org_json(org))


@orgs_cli.command("list")
def orgs_list() -> None:
    """List organisations (JSON)."""
    import sqlalchemy as sa

    _echo_json([_org_json(o) for o in db.session().scalars(sa.select(Org).order_by(Org.slug))])


# ---------------------------------------------------------------- tokens


def _token_json(t: Any, now: datetime) -> dict[str, Any]:
    """A token as the CLI prints it, its state at `now` (the database's clock, as requests judge it)."""
    return {
        "id": t.id,
        "name": t.name,
        "prefix": t.prefix,
        "scopes": t.scope_list,
        "state": auth.state(t, now),
        "created_at": t.created_at,
        "expires_at": t.expires_at,
        "last_used_at": t.last_used_at,
        "revoked_at": t.revoked_at,
    }


@tokens_cli.command("create")
@click.option("--org", "slug", required=True, help="The organisation the token acts for.")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice(auth.SCOPES),
    help="Repeat for several scopes.",
)
@click.option("--name", help="A label to tell tokens apart, e.g. the workflow that uses it.")
@click.option("--expires-days", type=click.IntRange(1, 3650), help="Expire after this many days (default: never).")
def tokens_create(slug: str, scopes: tuple[str, ...], name: str | None, expires_days: int | None) -> None:
    """Make a token; it is printed once, alone on the last line, and only its hash is kept."""
    session = db.session()
    try:
        with write_transaction(session):
            new = tokens.create(session, _org(slug), list(scopes), name, expires_days, actor="cli")
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    r = new.record
    click.echo(
        f"token {r.id} ({r.name}) for {slug} with scopes {' '.join(r.scope_list)}"
        + (f", expires {r.expires_at:%Y-%m-%d}" if r.expires_at else ", no expiry")
    )
    click.echo("store it now; it is not shown again:")
    click.echo(new.secret)


@tokens_cli.command("list")
@click.option("--org", "slug", required=True)
def tokens_list(slug: str) -> None:
    """List an organisation's tokens (JSON; never the secrets)."""
    session = db.session()
    now = clock.now_of(session.connection())
    _echo_json([_token_json(t, now) for t in tokens.list_for(session, _org(slug).id)])


@tokens_cli.command("revoke")
@click.argument("token_id", type=click.IntRange(1, fields.MAX_INT32))
def tokens_revoke(token_id: int) -> None:
    """Revoke a token by id; it stops working at once."""
    session = db.session()
    try:
        with write_transaction(session):
            record = tokens.revoke(session, token_id, actor="cli")
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None
    _echo_json(_token_json(record, clock.now_of(session.connection())))


# ---------------------------------------------------------------- policy


@policy_cli.command("show")
@click.argument("slug")
def policy_show(slug: str) -> None:
    """Print the policy (JSON)."""
    _echo_json(policy_settings.as_dict(orgs.settings_of(db.session(), _org(slug).id)))


@policy_cli.command("set")
@click.argument("slug")
@click.option("--enabled/--disabled", default=None, help="Turn image scanning on or off for the org.")
@click.option("--block-action", type=click.Choice(BLOCK_ACTIONS))
@click.option("--require-signed/--no-require-signed", default=None)
@click.option(
    "--allowed-issuer",
    "issuers",
    multiple=True,
    metavar="'URL [SUBJECT_REGEX]'",
    help="Repeat for several; replaces the list. Pass '' once to empty it.",
)
@click.option("--retention-days", type=int)
@click.option("--block-threshold", type=click.Choice(BLOCK_THRESHOLDS), help="The least severity that blocks.")
@click.option(
    "--ignore-unfixed/--no-ignore-unfixed", default=None, help="Findings without a fixed version never block."
)
@click.option("--block-on", type=click.Choice(BLOCK_ON), help="all, or new: only what the pull request introduces.")
def policy_set(
    slug: str,
    enabled: bool | None,
    block_action: str | None,
    require_signed: bool | None,
    issuers: tuple[str, ...],
    retention_days: int | None,
    block_threshold: str | None,
    ignore_unfixed: bool | None,
    block_on: str | None,
) -> None:
    """Change the policy; options left out keep their value. Prints the policy (JSON)."""
    doc: dict[str, Any] = {}
    for key, value in (
        ("enabled", enabled),
        ("block_action", block_action),
        ("require_signed", require_signed),
        ("retention_days", retention_days),
        ("block_threshold", block_threshold),
        ("ignore_unfixed", ignore_unfixed),
        ("block_on", block_on),
    ):
        if value is not None:
            doc[key] = value
    if issuers:
        doc["allowed_issuers"] = [policy_settings.parse_issuer_option(i) for i in issuers if i.strip()]
    try:
        changes = policy_settings.parse_change(doc)
    except policy_settings.ValidationError as exc:
        lines = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)]
        raise click.ClickException("invalid policy:\n" + "\n".join(lines)) from None
    session = db.session()
    org = _org(slug)
    with write_transaction(session):
        settings = orgs.settings_for_update(session, org.id)
        repost = urls.configured() if current_app.config["GITHUB_APP_CONFIGURED"] else None
        policy_settings.apply(session, settings, changes, actor="cli", repost=repost)
    _echo_json(policy_settings.as_dict(settings))


# ---------------------------------------------------------------- exceptions


def _repost() -> urls.Urls | None:
    """Where re-posted links point, when something is posted at all (a GitHub App is configured)."""
    return urls.configured() if current_app.config["GITHUB_APP_CONFIGURED"] else None


def _refused(what: str, details: list[dict[str, Any]]) -> click.ClickException:
    """Each bad path and why, once each (a statement with several products repeats its statement's errors)."""
    lines = dict.fromkeys(f"{d['path']}: {d['message']}" for d in details)
    return click.ClickException(f"{what}, nothing stored:\n" + "\n".join(lines))


# The create command's options, by the field each one gives (so an error names the option that was given).
_CREATE_OPTIONS = {
    "advisory_id": "--advisory",
    "reason": "--reason",
    "expires_at": "--expires",
    "package_name": "--package",
    "repo_full_name": "--repo",
    "image": "--image",
    "ticket_url": "--ticket",
}


@exceptions_cli.command("create")
@click.argument("slug")
@click.option("--advisory", required=True, help="The advisory id it covers (a finding's id or any vendor id).")
@click.option("--reason", required=True, help="Why the risk is accepted (1-2,000 characters).")
@click.option("--expires", required=True, metavar="ISO-8601", help="Until when: at most 365 days ahead.")
@click.option("--package", help="Only findings in this package (exact name).")
@click.option("--repo", help="Only findings of this repository (owner/name).")
@click.option("--image", metavar="PATTERN", help="Only images named like this; * matches any run of characters.")
@click.option("--ticket", metavar="URL", help="An https:// link to the ticket that tracks it.")
def exceptions_create(
    slug: str,
    advisory: str,
    reason: str,
    expires: str,
    package: str | None,
    repo: str | None,
    image: str | None,
    ticket: str | None,
) -> None:
    """Add an exception: ADVISORY does not block in SLUG (where the options say) until EXPIRES. Prints it (JSON)."""
    given = (advisory, reason, expires, package, repo, image, ticket)
    doc = {key: value for key, value in zip(_CREATE_OPTIONS, given, strict=True) if value is not None}
    org = _org(slug)
    try:
        body = exceptions.validate(doc, utcnow(), org.github_login)
    except ValidationError as exc:
        details = [bodies.error_detail(e) for e in exc.errors(include_url=False)]
        for d in details:
            d["path"] = _CREATE_OPTIONS.get(d["path"], d["path"])
        raise _refused("invalid exception", details) from None
    session = db.session()
    with write_transaction(session):
        [row] = exceptions.create_many(session, org.id, [body], actor="cli", source="cli", repost=_repost())
    _echo_json(exceptions.as_dict(row, utcnow()))


@exceptions_cli.command("list")
@click.argument("slug")
@click.option("--all", "every", is_flag=True, help="Expired and revoked ones too (default: the active ones).")
def exceptions_list(slug: str, every: bool) -> None:
    """List an organisation's exceptions, newest first (JSON)."""
    session = db.session()
    org = _org(slug)
    rows, before = [], None
    while True:
        found, before = exceptions.page(session, org.id, None if every else "active", before, 500)
        rows += found
        if before is None:
            break
    now = utcnow()
    _echo_json([exceptions.as_dict(e, now) for e in rows])


@exceptions_cli.command("revoke")
@click.argument("slug")
@click.argument("exception_id", type=click.IntRange(1, fields.MAX_INT32))
def exceptions_revoke(slug: str, exception_id: int) -> None:
    """Revoke one of SLUG's exceptions by id; it stays listed, as revoked. Prints it (JSON)."""
    session = db.session()
    org = _org(slug)
    with write_transaction(session):
        row = exceptions.revoke(session, org.id, exception_id, actor="cli", repost=_repost())
    if row is None:
        raise click.ClickException(f"there is no exception {exception_id} in {slug}")
    _echo_json(exceptions.as_dict(row, utcnow()))


@exceptions_cli.command("import")
@click.argument("slug")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--format", "fmt", required=True, type=click.Choice(imports.FORMATS), help="What FILE is.")
@click.option("--reason", help="The reason of what FILE gives none for (every .trivyignore line).")
@click.option("--expires", metavar="ISO-8601", help="The expiry of what FILE gives none for (required for openvex).")
def exceptions_import(slug: str, file: str, fmt: str, reason: str | None, expires: str | None) -> None:
    """Import an OpenVEX document's not_affected statements or a .trivyignore file (FILE; - for standard input) as
    exceptions: all or nothing. Prints what was imported (JSON)."""
    org = _org(slug)
    with click.open_file(file, "rb") as stream:
        data = stream.read()
    try:
        text = data.decode("utf-8-sig")
        document = json.loads(text) if fmt == "openvex" else text
    except UnicodeDecodeError:
        raise click.ClickException(f"{file} is not UTF-8 text; nothing stored") from None
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"{file} is not JSON ({exc}); nothing stored") from None
    try:
        items = imports.parse(fmt, document, reason=reason, expires_at=expires)
    except imports.BadDocument as exc:
        bad = [{"path": exc.where, "message": exc.message}]
        raise _refused(f"{file} is not a valid {fmt} file", bad) from None
    now = utcnow()
    items, skipped = imports.lapsed(items, now)
    found, details = [], []
    for item in items:
        try:
            found.append(exceptions.validate(item.doc, now, org.github_login))
        except ValidationError as exc:
            details += [bodies.error_detail(e, prefix=item.where) for e in exc.errors(include_url=False)]
    if details:
        raise _refused(f"{file} does not give valid exceptions", details)
    session = db.session()
    with write_transaction(session):
        rows = exceptions.create_many(session, org.id, found, actor="cli", source=fmt, repost=_repost())
    now = utcnow()
    _echo_json({"imported": len(rows), "items": [exceptions.as_dict(e, now) for e in rows], "skipped": skipped})


# ---------------------------------------------------------------- admin


@admin_cli.command("login-url")
@click.argument("slug")
@click.option(
    "--minutes",
    type=click.IntRange(1, login_links.MAX_MINUTES),
    default=login_links.DEFAULT_MINUTES,
    show_default=True,
    help="How long the link stays valid.",
)
def admin_login_url(slug: str, minutes: int) -> None:
    """Print a one-time link that signs a browser in to SLUG's admin pages (the URL alone on the last line)."""
    session = db.session()
    org = _org(slug)
    with write_transaction(session):
        new = login_links.create(session, org, minutes, actor="cli")
    base = current_app.config.get("PUBLIC_URL")
    if not base:
        click.echo(f"FREMFORGE_PUBLIC_URL is not set: the link assumes the app is served at {LOCAL_URL}.")
        base = LOCAL_URL
    click.echo(
        f"One-time sign-in link to the admin pages of {slug}: it works once, until "
        f"{new.record.expires_at:%Y-%m-%d %H:%M} UTC ({minutes} min). Keep it to yourself."
    )
    click.echo(f"{base}/admin/login/link/{new.token}")


# ---------------------------------------------------------------- chain and retention


class CannotCheck(click.ClickException):
    """The verification could not be done (exit 2), as opposed to a broken chain (exit 1)."""

    exit_code = 2


@chain_cli.command("verify")
@click.argument("slug")
@click.option(
    "--checkpoint",
    "checkpoint_file",
    type=click.File("r", encoding="utf-8-sig"),
    help="Signed checkpoints to check the chain against: one JSON object, a JSON array or JSON lines.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
@click.pass_context
def chain_verify(ctx: click.Context, slug: str, checkpoint_file: Any, as_json: bool) -> None:
    """Recompute the org's chain; exit 0 when intact, else 1 naming the first bad seq and what is wrong."""
    org = _org(slug)
    docs: list[dict[str, Any]] = []
    if checkpoint_file is not None:
        try:
            docs = checkpoints.parse(checkpoint_file.read())
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--checkpoint") from None
    db.session().rollback()
    try:
        key = checkpoints.key_of(current_app, create=False) if docs else None
    except checkpoints.KeyUnavailable as exc:
        raise CannotCheck(str(exc)) from None
    verdict = checkpoints.verify_with(db.database().engine, org.id, slug, key, docs)
    if as_json:
        _echo_json({"org": slug, **verdict.as_dict(), "message": verdict.describe(slug)})
    else:
        click.echo(verdict.describe(slug))
    ctx.exit(0 if verdict.intact else 1)


@chain_cli.command("checkpoint")
@click.argument("slug")
@click.option(
    "--new-key",
    is_flag=True,
    help="Sign with this service's key although the deployment's checkpoints (the newest of any org's) were signed by "
    "another: the key was replaced on purpose (pin the new key id). Without it such a checkpoint is refused.",
)
def chain_checkpoint(slug: str, new_key: bool) -> None:
    """Print a signed checkpoint of the org's chain now (JSON), as GET /api/v1/orgs/SLUG/audit/checkpoint does."""
    org = _org(slug)
    session = db.session()
    try:
        # A key is made only for the deployment's first checkpoint, or one replaced on purpose (--new-key): a host
        # without the deployment's file is told so, not given a key of its own.
        key = checkpoints.key_of(current_app, create=new_key or checkpoints.deployment_key_id(session) is None)
        with write_transaction(session):
            doc = checkpoints.issue(session, key, org.id, slug, utcnow(), new_key)
    except checkpoints.KeyUnavailable as exc:
        raise click.ClickException(
            f"{exc}, nor signed: give this host the deployment's key file (or, replacing the key on purpose, run "
            "again with --new-key)"
        ) from None
    except checkpoints.Inconsistent as exc:
        raise click.ClickException(f"no checkpoint signed: {exc}") from None
    except checkpoints.KeyChanged as exc:
        raise click.ClickException(
            f"no checkpoint signed: {exc}. Give this host the deployment's FREMFORGE_CHECKPOINT_KEY_FILE, or, if the "
            "key was replaced on purpose, run again with --new-key"
        ) from None
    click.echo(json.dumps(doc))


def _parse_now(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO-8601 time, e.g. 2026-11-25T00:00:00Z") from None
    return at.astimezone(UTC).replace(tzinfo=None) if at.tzinfo else at


@retention_cli.command("run")
@click.option("--now", callback=_parse_now, help="Apply retention as of this time (ISO-8601; default: now, UTC).")
def retention_run(now: datetime | None) -> None:
    """Remove the payload of chain entries older than each org's retention_days; keep seq and hashes."""
    ahead = (now - utcnow()).total_seconds() if now is not None else 0.0
    if ahead > 60:  # allowed (to see what a later run will do), but nothing undoes it: said first
        click.echo(
            f"warning: --now is {ahead / 86400:.1f} days ahead of this machine's clock: payloads are aged out as of "
            "then, which no later run undoes",
            err=True,
        )
    try:
        outcomes = retention.run(db.session(), now or utcnow())
    except retention.Busy as exc:
        raise click.ClickException(f"{exc}; nothing done, try again when it ends") from None
    for outcome in outcomes:
        click.echo(outcome.describe())


# ---------------------------------------------------------------- worker


@click.command("worker")
@click.option("--once", is_flag=True, help="Deliver what is due now, then exit (no retention run).")
@click.option(
    "--poll-seconds",
    type=click.FloatRange(0.1, 60),
    default=1.0,
    show_default=True,
    help="How long to wait when nothing is due.",
)
@click.option(
    "--parallel",
    type=click.IntRange(1, 32),
    default=4,
    show_default=True,
    help="Rows delivered at once (threads): GitHub's latency, not this process, bounds a single thread.",
)
@with_appcontext
def worker(once: bool, poll_seconds: float, parallel: int) -> None:
    """Deliver pending commit statuses and check runs to GitHub, with retries; apply retention once a day.

    A service (systemd's journal reads it): every line it writes is a log line, in FREMFORGE_LOG_FORMAT, on standard
    error; its end too (`worker.stopped`, or `worker.failed reason=...` and exit status 1), never a plain one.
    """
    counted_in = metrics.multiprocess_dir()
    if counted_in:  # the counts of this worker's earlier runs (any process gone) folded in, never lost
        metrics_folder.upkeep(Path(counted_in))
    gh = github_app()
    if gh is None:  # the rest of its work goes on: exceptions' expiry, the search's index, retention
        log.warning(
            "worker.no_github_app: no GitHub App configured (FREMFORGE_GITHUB_APP_ID and FREMFORGE_GITHUB_PRIVATE_KEY):"
            " nothing to deliver"
        )
    loop = worker_loop.Loop(gh, poll_seconds=poll_seconds, parallel=parallel, once=once)
    for sig in (signal.SIGTERM, signal.SIGINT):  # finish the row in hand, give the rest back, then exit
        signal.signal(sig, lambda *_: loop.stop.set())
    try:
        try:
            refuse_unmigrated(current_app)  # (a newer release's schema is served on: migrate.older)
            loop.schema_seen = True
        except sa.exc.SQLAlchemyError:
            if once:
                raise
            # unreachable: the loop waits for the database as after any outage, and asks before its first round
        handled = loop.run()  # never ends on a database error, but with --once
    except click.ClickException as exc:  # refused: the database is not migrated
        _worker_failed(exc.format_message())
    except sa.exc.SQLAlchemyError as exc:
        problem = database_problem(exc, current_app)
        if problem is None:
            log.exception("worker.failed reason=%s", type(exc).__name__)
            raise SystemExit(1) from None
        _worker_failed(problem)
    except Exception as exc:  # a bug: its traceback in one log record, not on the terminal's lines
        log.exception("worker.failed reason=%s", type(exc).__name__)
        raise SystemExit(1) from None
    log.info("worker.stopped deliveries=%s", handled)


def _worker_failed(problem: str) -> NoReturn:
    """The worker's one line for what ends it (a database away or not migrated), as a log line; exit status 1."""
    log.error("worker.failed reason=%s", problem)
    raise SystemExit(1)


# ---------------------------------------------------------------- webhooks


@webhooks_cli.command("redeliver")
@click.option(
    "--since",
    callback=_parse_now,
    help="Look at deliveries since this time (ISO-8601; default: where the last look began; at most 3 days back).",
)
def webhooks_redeliver(since: datetime | None) -> None:
    """Ask GitHub to redeliver the webhook deliveries that failed and that the app has not handled."""
    gh = github_app()
    if gh is None:
        raise click.ClickException(
            "no GitHub App configured (FREMFORGE_GITHUB_APP_ID and FREMFORGE_GITHUB_PRIVATE_KEY): nothing to redeliver"
        )
    look = redeliver.redeliver_failed(db.session(), gh, since=since)
    for line in look.lines():
        click.echo(line)
    if look.error is not None:
        raise click.ClickException(look.error)


def init_app(app: Flask) -> None:
    groups = (db_cli, orgs_cli, tokens_cli, policy_cli, exceptions_cli, admin_cli, chain_cli, retention_cli)
    for group in (*groups, webhooks_cli):
        app.cli.add_command(group)
    app.cli.add_command(worker)
