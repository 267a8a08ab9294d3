"""Typed SQLAlchemy models: the stored data and its small invariants; no I/O."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base

SEVERITIES = ("critical", "high", "medium", "low", "unknown")
BLOCK_ACTIONS = ("none", "warn", "block_pull")
# The policy of an org that never changed it (spec section 3): the one source of these defaults.
DEFAULT_ENABLED = True
DEFAULT_BLOCK_ACTION = "warn"
DEFAULT_REQUIRE_SIGNED = False
DEFAULT_RETENTION_DAYS = 365
BLOCK_THRESHOLDS = ("critical", "high", "medium", "low")  # the least severity that blocks; unknown never does
DEFAULT_BLOCK_THRESHOLD = "high"
DEFAULT_IGNORE_UNFIXED = False
BLOCK_ON = ("all", "new")  # new: only what the pull request introduces blocks
DEFAULT_BLOCK_ON = "all"
SIGNATURE_STATUSES = ("signed", "unsigned", "unknown")
SCAN_STATUSES = ("success", "failure", "skipped")
GENESIS_HASH = "0" * 64
# A finding's payload columns (what retention empties), in the order store.insert takes them.
FINDING_PAYLOAD_COLUMNS = (
    "cve_id",
    "severity",
    "package",
    "installed_version",
    "fixed_version",
    "target",
    "title",
    "primary_url",
    "references",
    "vendor_ids",
    "synthetic",
    "truncated",
)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Org(Base):
    """An organisation: a GitHub account that installed (or will install) the app."""

    __tablename__ = "orgs"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(sa.String(100), unique=True)
    github_login: Mapped[str] = mapped_column(sa.String(100), index=True)
    installation_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    # The installation a suspension unlinked: its unsuspend finds the org by it, whatever the account's login is by
    # then (renamed while suspended). Cleared when an installation is linked again.
    suspended_installation_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class OrgSettings(Base):
    """The org's policy (spec section 3); an org that never changed it has the DEFAULT_* values."""

    __tablename__ = "org_settings"

    org_id: Mapped[int] = mapped_column(sa.ForeignKey("orgs.id", ondelete="CASCADE"), primary_key=True)
    enabled: Mapped[bool] = mapped_column(default=DEFAULT_ENABLED)
    block_action: Mapped[str] = mapped_column(sa.String(20), default=DEFAULT_BLOCK_ACTION)
    require_signed: Mapped[bool] = mapped_column(default=DEFAULT_REQUIRE_SIGNED)
    # [{"issuer": "https://...", "subject_pattern": "^https://github.com/acme/" | null}, ...]
    allowed_issuers: Mapped[list[dict[str, Any]]] = mapped_column(sa.JSON, default=list)
    retention_days: Mapped[int] = mapped_column(default=DEFAULT_RETENTION_DAYS)
    block_threshold: Mapped[str] = mapped_column(
        sa.String(10), default=DEFAULT_BLOCK_THRESHOLD, server_default=DEFAULT_BLOCK_THRESHOLD
    )
    ignore_unfixed: Mapped[bool] = mapped_column(default=DEFAULT_IGNORE_UNFIXED, server_default=sa.false())
    block_on: Mapped[str] = mapped_column(sa.String(10), default=DEFAULT_BLOCK_ON, server_default=DEFAULT_BLOCK_ON)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The latest expiry of the org's exceptions not revoked: after it none is active, and an upload (which reads
    # this row anyway) skips reading them. Kept by app.exceptions; NULL: the org has none.
    exceptions_until: Mapped[datetime | None]
    # Moved by every change to the org's exceptions (app.exceptions, with exceptions_until): an upload that read
    # them before locking the policy reads them again when this moved meanwhile (app.findings.service).
    exceptions_version: Mapped[int] = mapped_column(default=0, server_default="0")

    @classmethod
    def defaults(cls, org_id: int) -> OrgSettings:
        """The settings of an org that has no row (made by hand), not added to any session."""
        return cls(
            org_id=org_id,
            enabled=DEFAULT_ENABLED,
            block_action=DEFAULT_BLOCK_ACTION,
            require_signed=DEFAULT_REQUIRE_SIGNED,
            allowed_issuers=[],
            retention_days=DEFAULT_RETENTION_DAYS,
            block_threshold=DEFAULT_BLOCK_THRESHOLD,
            ignore_unfixed=DEFAULT_IGNORE_UNFIXED,
            block_on=DEFAULT_BLOCK_ON,
            exceptions_version=0,
        )


class ChainHead(Base):
    """The tip of an org's hash chain; locking this row serialises appends to that org's chain."""

    __tablename__ = "chain_heads"

    org_id: Mapped[int] = mapped_column(sa.ForeignKey("orgs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    head_hash: Mapped[str] = mapped_column(sa.String(64), default=GENESIS_HASH)


class ApiToken(Base):
    """One of the app's own bearer tokens; only its SHA-256 is kept."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(sa.ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    prefix: Mapped[str] = mapped_column(sa.String(20))  # shown in lists, so a user can tell tokens apart
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    scopes: Mapped[str] = mapped_column(sa.String(200))  # space-separated
    created_by: Mapped[str] = mapped_column(sa.String(200), default="cli")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]

    @property
    def scope_list(self) -> list[str]:
        return self.scopes.split()


class ScanRun(Base):
    """One upload: an image of a commit, with its verdict and precomputed counts."""

    __tablename__ = "scan_runs"
    __table_args__ = (
        sa.Index("ix_scan_runs_org_id_id", "org_id", "id"),
        sa.Index("ix_scan_runs_org_commit", "org_id", "repo_full_name", "commit_sha", "image_ref"),
        sa.Index("ix_scan_runs_org_image", "org_id", "image_ref", "id"),
        # Filters of the scans page and API that would otherwise read every scan of the org.
        sa.Index("ix_scan_runs_org_commit_sha", "org_id", "commit_sha", "id"),
        sa.Index("ix_scan_runs_org_pr", "org_id", "pr_number", "id"),
        sa.Index("ix_scan_runs_org_status", "org_id", "status", "id"),
        # A scan's baseline (spec section 3): the newest scan of an image name built from a branch, in one probe.
        sa.Index("ix_scan_runs_baseline", "org_id", "repo_full_name", "image_name", "ref", "id"),
        # An image's history (app.insights: its scans before the trend's window).
        sa.Index("ix_scan_runs_image_history", "org_id", "repo_full_name", "image_name", "created_at"),
        sa.Index("ix_scan_runs_org_created", "org_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(sa.ForeignKey("orgs.id", ondelete="CASCADE"))
    image_ref: Mapped[str] = mapped_column(sa.String(1024))
    image_name: Mapped[str | None] = mapped_column(sa.String(1024))  # image_ref without tag and digest
    ref: Mapped[str | None] = mapped_column(sa.String(255))  # the git ref it was built from ($GITHUB_REF), if sent
    commit_sha: Mapped[str] = mapped_column(sa.String(40))
    repo_full_name: Mapped[str] = mapped_column(sa.String(200))
    signature_status: Mapped[str] = mapped_column(sa.String(20), default="unknown")
    signature_issuer: Mapped[str | None] = mapped_column(sa.String(1024))
    signature_subject: Mapped[str | None] = mapped_column(sa.String(1024))
    pr_number: Mapped[int | None]
    status: Mapped[str] = mapped_column(sa.String(20))  # this scan's own verdict: success|failure|skipped
    block_action: Mapped[str] = mapped_column(sa.String(20))  # the policy it was judged under
    critical: Mapped[int] = mapped_column(default=0)
    high: Mapped[int] = mapped_column(default=0)
    medium: Mapped[int] = mapped_column(default=0)
    low: Mapped[int] = mapped_column(default=0)
    unknown: Mapped[int] = mapped_column(default=0)
    fixable: Mapped[int] = mapped_column(default=0)
    accepted: Mapped[int] = mapped_column(default=0)
    duplicates: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    blocking: Mapped[int] = mapped_column(default=0, server_default="0")  # findings that counted toward `status`
    baseline_scan_id: Mapped[int | None]  # the scan its findings were compared with (block_on new), if one was found
    block_on: Mapped[str | None] = mapped_column(sa.String(10))  # the policy's block_on it was judged under

    @property
    def severity_counts(self) -> dict[str, int]:
        return {s: getattr(self, s) for s in SEVERITIES}


class Finding(Base):
    """A stored finding; also an entry of its org's hash chain (seq, payload_hash, chain_hash)."""

    __tablename__ = "findings"
    __table_args__ = (
        sa.UniqueConstraint("org_id", "seq", name="uq_findings_org_id_seq"),
        sa.Index("ix_findings_scan_run_id", "scan_run_id"),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    # No foreign keys (migration 0011): written only with its scan, in one transaction; neither is ever deleted.
    org_id: Mapped[int]
    scan_run_id: Mapped[int]
    seq: Mapped[int] = mapped_column(sa.BigInteger)
    payload_hash: Mapped[str] = mapped_column(sa.String(64))
    chain_hash: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The payload: set to NULL by retention, when the hashes above are all that remains.
    cve_id: Mapped[str | None] = mapped_column(sa.String(1024))
    severity: Mapped[str | None] = mapped_column(sa.String(10))
    package: Mapped[str | None] = mapped_column(sa.String(1024))
    installed_version: Mapped[str | None] = mapped_column(sa.String(1024))
    fixed_version: Mapped[str | None] = mapped_column(sa.String(1024))
    target: Mapped[str | None] = mapped_column(sa.Text)
    title: Mapped[str | None] = mapped_column(sa.Text)
    primary_url: Mapped[str | None] = mapped_column(sa.Text)
    references: Mapped[list[str] | None] = mapped_column(sa.JSON)
    vendor_ids: Mapped[list[str] | None] = mapped_column(sa.JSON)
    synthetic: Mapped[bool | None]
    # A descriptive field (title, primary_url, references) was cut to its limit at upload. In the hashed payload
    # only when true, so every finding stored before it existed, and every finding not cut, hashes as it did.
    truncated: Mapped[bool | None]
    redacted_at: Mapped[datetime | None]
    # The gate as evaluated at upload (history; what GitHub is shown follows the current policy, app.commits):
    # whether it counted toward the scan's verdict, whether it is new against the baseline (NULL: no baseline, or
    # block_on all asked none), and the exception that covered it. Not payload: retention keeps them.
    blocking: Mapped[bool | None]
    new: Mapped[bool | None]
    exception_id: Mapped[int | None]


class AuditEvent(Base):
    """Something an admin or the system did (settings changed, token created...); also a chain entry."""

    __tablename__ = "audit_events"
    __table_args__ = (sa.UniqueConstraint("org_id", "seq", name="uq_audit_events_org_id_seq"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(sa.ForeignKey("orgs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(sa.BigInteger)
    payload_hash: Mapped[str] = mapped_column(sa.String(64))
    chain_hash: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    action: Mapped[str | None] = mapped_column(sa.String(50))
    actor: Mapped[str | None] = mapped_column(sa.String(200))
    details: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    redacted_at: Mapped[datetime | None]


class ChainCheckpoint(Base):
    """A signed statement of an org's chain (size and head hash at a time): what later checkpoints must extend."""

    __tablename__ = "chain_checkpoints"
    __table_args__ = (sa.Index("ix_chain_checkpoints_org_id_id", "org_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(sa.ForeignKey("orgs.id", ondelete="CASCADE"))
    size: Mapped[int] = mapped_column(sa.BigInteger)
    head_hash: Mapped[str] = mapped_column(sa.String(64))
    signed_at: Mapped[str] = mapped_column(sa.String(40))  # the "time" of the signed statement, as signed
    key_id: Mapped[str] = mapped_column(sa.String(100))
    signature: Mapped[str] = mapped_column(sa.String(200))  # base64


class OutboxItem(Base):
    """A item to post a commit status and check run, written in the same transaction as its scan."""

    __tablename__ = "outbox"
    __table_args__ = (
        sa.Index("ix_outbox_commit", "org_id", "repo_full_name", "commit_sha", "id"),
        sa.Index("ix_outbox_state_next", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(sa.ForeignKey("orgs.id", ondelete="CASCADE"))
    scan_run_id: Mapped[int] = mapped_column(sa.ForeignKey("scan_runs.id", ondelete="CASCADE"), index=True)
    repo_full_name: Mapped[str] = mapped_column(sa.String(200))
    commit_sha: Mapped[str] = mapped_column(sa.String(40))
    # pending -> delivered | failed | superseded; not_delivered when no GitHub App is configured.
    state: Mapped[str] = mapped_column(sa.String(20))
    commit_status: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    check_run: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    # Each half is posted once, even across retries.
    status_posted: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    check_posted: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    attempts: Mapped[int] = mapped_column(default=0)
    refusals: Mapped[int] = mapped_column(default=0, server_default="0")  # 404/422 answers: retried a few times
    # Times it was put back to pending after it was given up on during a GitHub outage (app.github.redeliver).
    revivals: Mapped[int] = mapped_column(default=0, server_default="0")
    # Bumped when the row must be posted again (a stale state landed after it): a worker that read an older
    # revision records its outcome without marking the row delivered.
    revision: Mapped[int] = mapped_column(default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None]  # on the database's clock
    lease_until: Mapped[datetime | None]  # a worker's claim, on the database's clock; past it, another may take it
    claimed_by: Mapped[str | None] = mapped_column(sa.String(100))  # the claim's fencing token
    # Until when a post of this row may still land on GitHub (it timed out, or a gateway answered 502/504), on the
    # database's clock: until then the commit's newest state is checked against what GitHub shows
    # (app.github.posting.DOUBT_WINDOW).
    doubt_until: Mapped[datetime | None]
    # Set when a post of this row is sent (to when its doubt would end, were it never answered), cleared when the
    # worker that sent it records the answer: one left set is a post whose worker died before its answer came.
    posting_until: Mapped[datetime | None]
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]
    # Set by retention, which trims the check run body to what names no finding (app.chain.retention.trimmed).
    redacted_at: Mapped[datetime | None]

    # Not stored: what GitHub still shows while this item is not posted (findings.queries.note_shown_before).
    shown_before = None  # type: str | None


class CheckRunRecord(Base):
    """The one check run of a commit that later scans update in place (PATCH)."""

    __tablename__ = "check_runs"
    __table_args__ = (sa.UniqueConstraint("org_id", "repo_full_name", "commit_sha", name="uq_check_runs_commit"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(sa.ForeignKey("orgs.id", ondelete="CASCADE"))
    repo_full_name: Mapped[str] = mapped_column(sa.String(200))
    commit_sha: Mapped[str] = mapped_column(sa.String(40))
    github_id: Mapped[int | None] = mapped_column(sa.BigInteger)  # None: create one (new, or after rerequested)
    create_attempted_at: Mapped[datetime | None]  # a create whose answer was lost: look it up before creating
    # Creates sent for this commit (answered or not) and when the last was sent: while GitHub lists fewer of our
    # runs than were sent, a create that timed out may still land, so the worker looks again for a while.
    creates_sent: Mapped[int] = mapped_column(default=0, server_default="0")
    last_create_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


EXCEPTION_SOURCES = ("api", "admin", "cli", "openvex", "trivyignore")
EXCEPTION_STATES = ("active", "expired", "revoked")


class PolicyException(Base):
    """An accepted risk (spec section 10): this advisory does not block, here, until then, because. Never deleted:
    revoked or expired, the row stays."""

    __tablename__ = "exceptions"
    __table_args__ = (
        sa.Index("ix_exceptions_org_id_id", "org_id", "id"),
        sa.Index("ix_exceptions_expiry", "expiry_recorded_at", "expires_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(sa.ForeignKey("orgs.id", ondelete="CASCADE"))
    advisory_id: Mapped[str] = mapped_column(sa.String(1024))
    package_name: Mapped[str | None] = mapped_column(sa.String(1024))
    repo_full_name: Mapped[str | None] = mapped_column(sa.String(200))  # folded to lower case
    image: Mapped[str | None] = mapped_column(sa.String(1024))  # an image-name pattern, `*` any run of characters
    reason: Mapped[str] = mapped_column(sa.Text)
    ticket_url: Mapped[str | None] = mapped_column(sa.String(2048))
    expires_at: Mapped[datetime]
    source: Mapped[str] = mapped_column(sa.String(20))
    created_by: Mapped[str] = mapped_column(sa.String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_by: Mapped[str | None] = mapped_column(sa.String(200))
    revoked_at: Mapped[datetime | None]
    # When the worker recorded its expiry (audit event, re-posts); NULL while active or revoked before it expired.
    expiry_recorded_at: Mapped[datetime | None]

    def state(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expires_at <= now else "active"


class Repost(Base):
    """A commit whose posted state waits to be evaluated again under the current policy (app.reposts): one row per
    commit however often it is asked, so a settings change makes at most one outbox item per commit."""

    __tablename__ = "reposts"
    __table_args__ = (sa.Index("ix_reposts_due", "claimed_until"),)

    org_id: Mapped[int] = mapped_column(sa.ForeignKey("orgs.id", ondelete="CASCADE"), primary_key=True)
    repo_full_name: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    commit_sha: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    base_url: Mapped[str] = mapped_column(sa.String(2048))  # where the posted links point (the asking request's)
    version: Mapped[int]  # bumped by each ask: a worker done with an older one leaves the row for another pass
    requested_at: Mapped[datetime]
    claimed_until: Mapped[datetime | None]  # a worker's lease, on the database's clock


class Image(Base):
    """An image as an org builds it, per repo and image name (an image reference without tag and digest), with its
    latest scan: what the images-now list, the advisory search and the trend read (app.insights). Moved by every
    upload in the upload's own transaction, to the highest scan id seen; its latest scan's advisory ids are indexed
    by the worker after."""

    __tablename__ = "images"
    __table_args__ = (
        sa.UniqueConstraint("org_id", "repo_full_name", "image_name", name="uq_images_org_repo_name"),
        sa.Index("ix_images_org_id_id", "org_id", "id"),
        sa.Index("ix_images_latest_scan", "latest_scan_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(sa.ForeignKey("orgs.id", ondelete="CASCADE"))
    repo_full_name: Mapped[str] = mapped_column(sa.String(200))
    image_name: Mapped[str] = mapped_column(sa.String(1024))
    latest_scan_id: Mapped[int] = mapped_column(sa.ForeignKey("scan_runs.id", ondelete="CASCADE"))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The scan whose advisory ids are in latest_advisories (the worker's app.insights.index); the
    # advisory search reads an image whose latest scan is not that one from the scan's findings.
    indexed_scan_id: Mapped[int | None] = mapped_column(sa.Integer)


# Advisory ids compare byte by byte on PostgreSQL too (collation "C"), as on SQLite: a prefix is an index range.
ADVISORY_ID = sa.String(1024).with_variant(postgresql.VARCHAR(1024, collation="C"), "postgresql")


class LatestAdvisory(Base):
    """An advisory id (a finding's own id or one of its vendor ids, in upper case) of a finding of an image's latest
    scan: the advisory search's index (app.insights.advisories), so a search reads only the rows of that id, however
    many images and scans there are. An upload moving its image's latest scan adds its rows in its own transaction
    (app.findings.latest); the worker prunes those of scans no longer latest, and the search reads only the latest
    scans' rows meanwhile. No foreign keys, as for findings: written only with its scan."""

    __tablename__ = "latest_advisories"
    __table_args__ = {"sqlite_with_rowid": False}  # SQLite: the primary key is the table, one b-tree to write

    org_id: Mapped[int] = mapped_column(primary_key=True)
    advisory_id: Mapped[str] = mapped_column(ADVISORY_ID, primary_key=True)
    seq: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)  # the finding's (findings: org_id, seq)
    scan_run_id: Mapped[int]


class TrendChange(Base):
    """How much an org's images' latest counts changed on a day: the sum, over the day's uploads that moved an
    image's latest scan, of the new scan's counts minus the one it replaced. The org's trend is their running sum
    (app.insights.trend); written with the image's move (app.insights.images), so reading it never walks scans."""

    __tablename__ = "trend_changes"

    org_id: Mapped[int] = mapped_column(sa.ForeignKey("orgs.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[date] = mapped_column(primary_key=True)
    critical: Mapped[int] = mapped_column(default=0)
    high: Mapped[int] = mapped_column(default=0)
    medium: Mapped[int] = mapped_column(default=0)
    low: Mapped[int] = mapped_column(default=0)


class WorkerHeartbeat(Base):
    """An outbox worker's sign of life, on the database's clock: /readyz wants one from the last minute."""

    __tablename__ = "worker_heartbeats"

    name: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    started_at: Mapped[datetime]
    beat_at: Mapped[datetime] = mapped_column(index=True)
    github_app_id: Mapped[str | None] = mapped_column(sa.String(200))  # the App it posts as; NULL: none configured


class PullRequestLink(Base):
    """Which pull request a head commit belongs to, learnt from pull_request webhooks."""

    __tablename__ = "pull_requests"
    __table_args__ = (
        sa.UniqueConstraint("org_id", "repo_full_name", "number", name="uq_pull_requests_number"),
        sa.Index("ix_pull_requests_head", "org_id", "repo_full_name", "head_sha"),
        sa.Index("ix_pull_requests_open", "org_id", "repo_full_name", "state"),  # a repo's open ones (app.reposts)
        sa.Index("ix_pull_requests_merge", "org_id", "repo_full_name", "merge_sha"),  # fast-forwards (app.commits)
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(sa.ForeignKey("orgs.id", ondelete="CASCADE"))
    repo_full_name: Mapped[str] = mapped_column(sa.String(200))
    number: Mapped[int]
    head_sha: Mapped[str] = mapped_column(sa.String(40))
    # What a scan of the head is compared with (spec section 3): the base branch as a ref, refs/heads/<base>, and the
    # base commit. NULL when the event did not say (or said something that is not a branch or a commit SHA).
    base_ref: Mapped[str | None] = mapped_column(sa.String(255))
    base_sha: Mapped[str | None] = mapped_column(sa.String(40))
    state: Mapped[str] = mapped_column(sa.String(20))  # open | closed
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Closed by a merge: GitHub's merge_commit_sha; equal to head_sha when the head itself reached the base (a
    # fast-forward), whose scans under the base's ref are then the base's (app.commits).
    merge_sha: Mapped[str | None] = mapped_column(sa.String(40))


class PullRequestHead(Base):
    """Every (head commit, base ref) a pull request had, as its webhooks said, kept when it moves on or closes: a scan
    of such a head stored under that base's ref (a pull_request_target run) is never the base's baseline."""

    __tablename__ = "pull_request_heads"
    __table_args__ = (
        sa.UniqueConstraint(
            "org_id", "repo_full_name", "head_sha", "base_ref", "number", name="uq_pull_request_heads_head"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(sa.ForeignKey("orgs.id", ondelete="CASCADE"))
    repo_full_name: Mapped[str] = mapped_column(sa.String(200))
    head_sha: Mapped[str] = mapped_column(sa.String(40))
    base_ref: Mapped[str] = mapped_column(sa.String(255))
    number: Mapped[int]


class InstallationRepository(Base):
    """A repository the org's installation of the app can reach (installation_repositories webhooks)."""

    __tablename__ = "installation_repositories"
    __table_args__ = (sa.UniqueConstraint("org_id", "repo_full_name", name="uq_installation_repositories_repo"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(sa.ForeignKey("orgs.id", ondelete="CASCADE"))
    repo_full_name: Mapped[str] = mapped_column(sa.String(200))
    added_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """A webhook delivery seen, by its X-GitHub-Delivery id: a redelivery is acknowledged and ignored."""

    __tablename__ = "webhook_deliveries"

    delivery_id: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    event: Mapped[str] = mapped_column(sa.String(50))
    action: Mapped[str | None] = mapped_column(sa.String(50))
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class AdminLoginLink(Base):
    """A one-time sign-in link to an org's admin pages (`admin login-url`); only its SHA-256 is kept."""

    __tablename__ = "admin_login_links"

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(sa.ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]  # set once, by the sign-in that spends the link


class AdminSession(Base):
    """A signed-in admin session (spec §6); the browser's cookie holds a random id, of which only the SHA-256 is kept.

    It lives until `expires_at` (12 hours from sign-in, never extended) unless revoked first (signing out, or the
    owner role found lost on GitHub). `github_token` is the user's GitHub token for re-checking that role, sealed
    with a key derived from the cookie's id: the database alone cannot unseal it.
    """

    __tablename__ = "admin_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    org_id: Mapped[int] = mapped_column(sa.ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    login: Mapped[str] = mapped_column(sa.String(100))  # the GitHub login, or "login-link"
    via: Mapped[str] = mapped_column(sa.String(20))  # "oauth" | "link"
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    role_checked_at: Mapped[datetime | None]  # when GitHub last confirmed the owner role (oauth sessions)
    github_token: Mapped[str | None] = mapped_column(sa.Text)
    revoked_at: Mapped[datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(sa.String(40))


class IdempotencyKey(Base):
    """An upload's `Idempotency-Key` (spec section 11), one per org and key: claimed before ingest, holding the first
    answer for 24 hours (app.web.idempotency). Times on the database's clock."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (sa.Index("ix_idempotency_keys_created_at", "created_at"),)

    org_id: Mapped[int] = mapped_column(sa.ForeignKey("orgs.id", ondelete="CASCADE"), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(sa.String(64))  # SHA-256 of the decompressed body and the query string
    claim: Mapped[str] = mapped_column(sa.String(32))  # the claiming request's random id: only it stores the answer
    created_at: Mapped[datetime]  # when claimed; the key is forgotten 24 hours later
    lease_until: Mapped[datetime]  # while no answer is stored: past it, the claim's request is taken for dead
    status_code: Mapped[int | None]  # the first answer (NULL while in flight) ...
    response: Mapped[str | None] = mapped_column(sa.Text)  # ... and its JSON body, as sent


class RateLimitWindow(Base):
    """A token's request count in the current fixed window of `FREMFORGE_RATE_LIMIT` (app.web.ratelimit): one row per
    token, moved to each new window by the request that opens it."""

    __tablename__ = "rate_limits"

    token_id: Mapped[int] = mapped_column(sa.ForeignKey("api_tokens.id", ondelete="CASCADE"), primary_key=True)
    window_start: Mapped[int] = mapped_column(sa.BigInteger)  # Unix seconds on the database's clock
    count: Mapped[int]


class RedeliveryLook(Base):
    """The look for webhook deliveries that failed (app.github.redeliver), one row per webhook ("app": the App's),
    shared by every worker process. Times on the database's clock."""

    __tablename__ = "webhook_redelivery_looks"

    hook: Mapped[str] = mapped_column(sa.String(50), primary_key=True)
    looked_at: Mapped[datetime | None]  # when the last successful look began: the next one looks from there
    tried_at: Mapped[datetime | None]  # when the worker's last hourly look began (successful or not)
