"""Prometheus metrics: GET /metrics, the counters every process keeps, and the outbox gauges read at scrape time.

Series (see the README's "Metrics and logs"):
- `fremforge_uploads_total{status}`: upload answers; `status` is the answer's own (success, failure, skipped,
  disabled), `replayed` for an Idempotency-Key replay, or the HTTP status code of a refused upload (401, 413, 422...);
- `fremforge_findings_ingested_total`: the findings stored (the answers' `accepted`);
- `fremforge_upload_seconds`: histogram of the time to answer an accepted upload (2xx, replays aside);
- `fremforge_outbox_pending`, `fremforge_outbox_oldest_pending_seconds`: read from the database at each scrape, the
  age on the database's clock;
- `fremforge_github_requests_total{status}`: every HTTP exchange with GitHub (token exchanges included), by status
  code, or `error` when no answer came (connection error, timeout);
- `fremforge_webhook_deliveries_total{event,outcome}`: webhook deliveries by GitHub event (`unverified` until the
  signature holds) and outcome (the answer's `status`, or its `error` code).

Every series is exposed from the start, with its HELP and TYPE lines (a labelled one with no sample until something
counts it; one without labels at 0), whatever process counted or not.

Across processes: prometheus_client's multiprocess mode (app.metrics_folder) when PROMETHEUS_MULTIPROC_DIR is set;
gunicorn.conf.py and wsgi.py set it, when the environment names none, to the instance folder's `metrics`, so that
gunicorn's workers and the outbox worker on one host count in the same folder. Each process writes its counts to
files there and any web worker answers /metrics with the sum; the counts of processes gone are folded into archives,
never dropped. Without it (the tests, an app made by create_app alone) the process counts in memory and serves its
own.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from werkzeug.exceptions import HTTPException

from app import clock, config, db, metrics_folder
from app.models import OutboxItem
from app.web.errors import ApiError

log = logging.getLogger(__name__)
bp = Blueprint("metrics", __name__)

UPLOAD_ENDPOINT = "findings_api.upload"
WEBHOOK_ENDPOINT = "github_webhooks.receive"
UPLOAD_STATUSES = ("success", "failure", "skipped", "disabled")
UPLOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
REPLAYED_HEADER = "Idempotent-Replayed"  # app.web.idempotency marks an answer sent again so
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own variable, read by it when first imported


@dataclass(frozen=True)
class Series:
    registry: CollectorRegistry | None  # None in multiprocess mode: the counts are in files
    uploads: Counter
    findings: Counter
    upload_seconds: Histogram
    github_requests: Counter
    webhook_deliveries: Counter


_series: Series | None = None
_lock = threading.Lock()


def multiprocess_dir() -> str | None:
    """The directory of prometheus_client's multiprocess mode, when this process counts in it.

    The library decides once, when first imported, from PROMETHEUS_MULTIPROC_DIR: this says what it decided.
    """
    if not getattr(values.ValueClass, "_multiprocess", False):
        return None
    return os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower())


def series() -> Series:
    """This process's series, made on first use (in multiprocess mode a process that never counts writes no file)."""
    global _series
    if _series is None:
        with _lock:
            if _series is None:
                _series = _make_series()
    return _series


def _make_series() -> Series:
    directory = multiprocess_dir()
    if directory:
        config.make_private_dir(Path(directory))
    disable_created_metrics()  # no `_created` series beside each counter (multiprocess mode has none either)
    registry = None if directory else CollectorRegistry()
    made = Series(
        registry,
        Counter(
            "fremforge_uploads",
            "Upload answers, by the answer's status (success, failure, skipped, disabled, replayed) or, for a "
            "refused upload, its HTTP status code.",
            ["status"],
            registry=registry,
        ),
        Counter("fremforge_findings_ingested", "Findings stored by uploads.", registry=registry),
        Histogram(
            "fremforge_upload_seconds",
            "Seconds to answer an accepted upload (read, validate, store, evaluate).",
            buckets=UPLOAD_BUCKETS,
            registry=registry,
        ),
        Counter(
            "fremforge_github_requests",
            "HTTP requests to GitHub's API, by the answer's status code, or `error` when none came.",
            ["status"],
            registry=registry,
        ),
        Counter(
            "fremforge_webhook_deliveries",
            "Webhook deliveries received, by GitHub event (`unverified` until the signature holds) and outcome.",
            ["event", "outcome"],
            registry=registry,
        ),
    )
    for status in UPLOAD_STATUSES:  # present from the start, so that rate() has a zero to begin from
        made.uploads.labels(status)
    return made


def github_request(status: str) -> None:
    """Count one exchange with GitHub (app.github.client's transport and hook call it)."""
    series().github_requests.labels(status).inc()


# ---------------------------------------------------------------- counting answers


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.after_request(_count)


def _count(response: Response) -> Response:
    """Uploads and webhook deliveries, counted from their answers (the views stay as they are)."""
    try:
        if request.endpoint == UPLOAD_ENDPOINT:
            _count_upload(response)
        elif request.endpoint == WEBHOOK_ENDPOINT:
            _count_delivery(response)
    except Exception:  # counting must never cost an answer
        log.exception("metrics.count_failed endpoint=%s", request.endpoint)
    return response


def _json(response: Response) -> dict[str, Any]:
    """The answer's JSON object, read with orjson (Werkzeug's get_json was a sixth of the upload's counting)."""
    if not response.is_json or response.is_streamed:
        return {}
    try:
        body = orjson.loads(response.get_data())
    except orjson.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}


def _count_upload(response: Response) -> None:
    s = series()
    body = _json(response)
    started = g.get("request_started")
    seconds = time.perf_counter() - started if started is not None else 0.0
    if not 200 <= response.status_code < 300:
        s.uploads.labels(str(response.status_code)).inc()
        log.info(
            "findings.upload_refused http_status=%s error=%s seconds=%.3f",
            response.status_code,
            str(body.get("error") or "-")[:50],
            seconds,
        )
        return
    if isinstance(body.get("scan_run_id"), int):
        g.scan_run_id = body["scan_run_id"]  # the lines logged from here on name the scan
    if response.headers.get(REPLAYED_HEADER) == "true":  # the first answer again: nothing stored this time
        s.uploads.labels("replayed").inc()
        log.info("findings.upload_replayed seconds=%.3f", seconds)
        return
    status = body.get("status")
    label = status if status in UPLOAD_STATUSES else "other"
    accepted = body["accepted"] if isinstance(body.get("accepted"), int) else 0
    s.uploads.labels(label).inc()
    if accepted > 0:
        s.findings.inc(accepted)
    s.upload_seconds.observe(seconds)
    log.info("findings.uploaded status=%s accepted=%s seconds=%.3f", label, accepted, seconds)


def _count_delivery(response: Response) -> None:
    body = _json(response)
    event = g.get("webhook_event") or "unverified"
    if 200 <= response.status_code < 300:
        outcome = str(body.get("status") or response.status_code)
    else:
        outcome = str(body.get("error") or response.status_code)
    series().webhook_deliveries.labels(event[:50], outcome[:50]).inc()


# ---------------------------------------------------------------- the scrape


_outbox = OutboxItem.__table__
# One statement, on the pending rows alone (ix_outbox_state_next), with the database's clock beside them.
PENDING = sa.select(sa.func.count(), sa.func.min(_outbox.c.created_at), clock.database_now()).where(
    _outbox.c.state == "pending"
)


def _datetime(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


OUTBOX_PENDING = ("fremforge_outbox_pending", "Outbox items waiting to be posted to GitHub.")
OUTBOX_OLDEST = (
    "fremforge_outbox_oldest_pending_seconds",
    "Age of the oldest outbox item waiting to be posted (0 when none), on the database's clock.",
)


def outbox_families() -> list[Metric]:
    """The outbox gauges, read now; none when the database does not answer (the rest of the scrape still does)."""
    try:
        count, oldest, now = db.session().connection().execute(PENDING).one()
    except sa.exc.SQLAlchemyError as exc:
        log.warning("metrics.outbox_unavailable error=%s", type(exc).__name__)
        db.discard_session()
        return []
    oldest, now = _datetime(oldest), _datetime(now)
    age = max(0.0, (now - oldest).total_seconds()) if oldest is not None and now is not None else 0.0
    return [GaugeMetricFamily(*OUTBOX_PENDING, value=count), GaugeMetricFamily(*OUTBOX_OLDEST, value=age)]


def declared(s: Series) -> list[Metric]:
    """Every family the app exposes, in order, without samples: its name, HELP and TYPE."""
    counted = (s.uploads, s.findings, s.upload_seconds, s.github_requests, s.webhook_deliveries)
    return [
        *(family for metric in counted for family in metric.describe()),
        GaugeMetricFamily(*OUTBOX_PENDING),
        GaugeMetricFamily(*OUTBOX_OLDEST),
    ]


def exposition() -> bytes:
    """Every series in Prometheus's text format: this process's (or, in multiprocess mode, the sum over every
    process's files) and the outbox gauges. A family nothing has counted yet is there too, with its HELP and TYPE:
    in multiprocess mode only the files say what was counted, and a labelled series has none before its first count."""
    s = series()
    directory = multiprocess_dir()
    if directory:
        counted = metrics_folder.collect(Path(directory))
    else:
        assert s.registry is not None
        counted = list(s.registry.collect())
    found = {family.name: family for family in [*counted, *outbox_families()]}
    families = [found.pop(family.name, family) for family in declared(s)]
    families.extend(found.values())  # counted by an older release, say
    registry = CollectorRegistry()
    registry.register(_Families(families))
    return generate_latest(registry)


def _authorised() -> bool:
    expected = current_app.config.get("METRICS_TOKEN")
    if not expected:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # Compared in constant time, as bytes (compare_digest refuses non-ASCII text).
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), str(expected).encode())


@bp.get("/metrics")
def scrape() -> Response:
    """Prometheus's scrape: never rate limited (no API token is involved), not part of the /api/v1 document."""
    if not _authorised():
        raise ApiError(
            401,
            "unauthorized",
            "GET /metrics needs the header Authorization: Bearer <FREMFORGE_METRICS_TOKEN>.",
            headers={"WWW-Authenticate": 'Bearer realm="fremforge metrics"'},
        )
    try:
        body = exposition()
    except (HTTPException, sa.exc.SQLAlchemyError):  # the app's own answers (a database outage: its 503 page)
        raise
    except Exception:  # the files cannot be read now (a live process's being made): a 503 to retry, logged
        log.exception("metrics.scrape.failed")
        raise ApiError(
            503, "metrics_unavailable", "The metrics cannot be read now; try again.", headers={"Retry-After": "5"}
        ) from None
    response = Response(body, content_type=CONTENT_TYPE_LATEST)
    response.headers["Cache-Control"] = "no-store"
    return response
