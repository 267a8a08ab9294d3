"""gunicorn's settings for the app, read from the working directory by every `gunicorn ... wsgi:app` started here
(`make run`, deploy/fremforge-web.service, the tests); the command line still sets workers and the address.

- Metrics across workers: prometheus_client's multiprocess mode (app.metrics_folder). Each worker counts into files
  of PROMETHEUS_MULTIPROC_DIR and GET /metrics sums them, whichever worker answers. The variable is set here, before
  the app is loaded, to `metrics` in the app's instance folder when the environment does not name one: the folder
  the outbox worker on this host counts in too (wsgi.py). At start the counts of processes no longer running are
  folded into archives (a total never goes down while another process, an outbox worker, still counts); gunicorn
  marks each worker that exits (child_exit), whose live gauges go.
- Requests gunicorn refuses before the app sees them (an oversized header or request line, a line that is not HTTP)
  answered in the app's JSON error shape, not gunicorn's HTML page, and without echoing what the client sent.
- gunicorn's own lines in the app's log format (FREMFORGE_LOG_FORMAT), secrets redacted, and an access line (when
  --access-logfile is given) that names the path without its query string, never a header but the request id; a
  value a client chose (the path) cannot forge a line or a field (app.logs).
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from gunicorn import glogging, util

from app import metrics_folder

METRICS_FOLDER = metrics_folder.share(metrics_folder.instance_path())  # before the app is loaded (--preload)

# One line a request, key=value like the app's own (one JSON object a line with FREMFORGE_LOG_FORMAT=json): the
# path without its query (a token could be in it), no Referer, no headers but the request id the app answered with.
# %(U)s is the client's path, percent-decoded: app.logs's formatters write every value of a record as data (quoted
# and escaped, `path='/x\n...'`, when it holds a control character or a ` key=` of its own), so it can neither end
# the line nor add a field to its JSON object; the request_id field is always the one answered in X-Request-Id.
access_log_format = (
    "http.request method=%(m)s path=%(U)s status=%(s)s bytes=%(B)s duration_ms=%(M)s "
    "request_id=%({x-request-id}o)s remote=%(h)s"
)


def _log_format() -> str:
    from app import config

    chosen = str(config.from_environment().get("LOG_FORMAT") or "text").strip().lower()
    return chosen if chosen in config.LOG_FORMATS else "text"  # the app itself refuses a bad value, in one line


class Logger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's logger, secrets redacted from its lines. With FREMFORGE_LOG_FORMAT=json they are JSON like the app's
    (app.logs); in text gunicorn's own lines look as always, and the access line above gets the app's time, level and
    logger in front (an --access-logformat of one's own is left as it is)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        from app import logs

        log_format = _log_format()
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                if log_format == "json":
                    handler.setFormatter(logs.JsonFormatter())
                elif log is self.access_log and cfg.access_log_format == access_log_format:
                    handler.setFormatter(logs.TextFormatter())
                else:
                    handler.setFormatter(logs.Redacting(handler.formatter))


logger_class = Logger

# A raw Trivy report's context comes as query parameters (image_ref, the signature fields: up to 1,024 characters
# each), so its request line can pass gunicorn's default 4094 bytes once percent-encoded: take up to gunicorn's
# most, 8190 (deploy/fremforge-nginx.conf passes lines up to 8 KiB too).
limit_request_line = 8190

# gunicorn's control socket (`gunicornc`) is not used: by default every instance on a host would share
# ~/.gunicorn/gunicorn.ctl (a second one takes it over), and a home the service may not write (systemd's
# ProtectHome=true) logs an error at each start.
control_socket_disable = True


# What gunicorn's refusals say, by status (gunicorn's workers/base.py handle_error chooses the status; its own message
# quotes what the client sent, so it is not repeated).
_REFUSALS = {
    400: ("bad_request", "The request is not well-formed HTTP/1.1."),
    403: ("forbidden", "The request was refused before it reached the app."),
    414: ("uri_too_long", f"The request line (path and query) is over {limit_request_line:,} bytes."),
    417: ("expectation_failed", "The request's Expect header is not supported."),
    431: (
        "header_fields_too_large",
        "The request's header fields are too many or too long (at most 100 of 8,190 bytes).",
    ),
    501: ("not_implemented", "The request's transfer coding is not supported."),
}


def _write_refusal(sock: Any, status: int, _reason: str, _message: str) -> None:
    """gunicorn's util.write_error, in the app's JSON error shape (app.web.errors). The reason phrase is the status's
    own (gunicorn passes "Bad Request" with a 500 or a 501)."""
    code, message = _REFUSALS.get(status, ("internal_error", "An unexpected error happened; it was logged."))
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:  # no status gunicorn chooses, but a refusal must never fail
        reason = "Error"
    body = json.dumps({"error": code, "message": message, "details": []}).encode() + b"\n"
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"X-Content-Type-Options: nosniff\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


util.write_error = _write_refusal  # looked up at each refusal by gunicorn's workers (forked from this process)


def on_starting(server: Any) -> None:
    """Fold the counts of processes no longer running (a previous run's workers, an outbox worker restarted) into the
    folder's archives; a running process's files (an outbox worker's) stay as they are."""
    metrics_folder.upkeep(METRICS_FOLDER)


def child_exit(server: Any, worker: Any) -> None:
    """A worker exited: its live gauges go (its counters stay in the sums, as counters must)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, str(METRICS_FOLDER))
