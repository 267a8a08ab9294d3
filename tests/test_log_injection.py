"""No value a client chose can forge a log line or a field (README "Metrics and logs", spec section 11): a request's
path with a line break, a NUL or other control characters, or with ` key=value` words in it, is written escaped and
quoted, whatever the format (text or JSON), in the app's own lines and in gunicorn's access line; the fields of a JSON
line are the code's, and its request_id is the one answered in X-Request-Id."""

from __future__ import annotations

import ast
import io
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, request
from gunicorn.glogging import SafeAtoms

from app import logs
from tests.conftest import ROOT, Capture, MakeApp
from tests.test_logs import json_lines
from tests.test_metrics import call, gunicorn, served_env

FORGED_RECORD = "2026-12-06 12:00:00,000 ERROR app.forged admin.signed_in org=acme user=attacker"
FORGED_PATH = f"/x\n{FORGED_RECORD}"
FORGED_PATH_URL = "/x%0a2026-12-06%2012:00:00,000%20ERROR%20app.forged%20admin.signed_in%20org=acme%20user=attacker"
INJECTED = " org=victim scan_run_id=999 request_id=forged event=admin.signed_in level=error delivery_id=zzz"
INJECTED_URL = INJECTED.replace(" ", "%20")
# Fields the injected words would have made (`event` is kept as github_event, `level` as level_).
INJECTED_FIELDS = {"org", "scan_run_id", "delivery_id", "github_event", "level_"}
# Raw, these end a line for someone: LF, CR, NUL, ESC, DEL, NEL (C1), the Unicode line and paragraph separators.
CONTROLS = "\n\r\x00\x1b\x7f\x85\u2028\u2029"
RAW_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")  # any but LF, which ends each line
RECORD_START = re.compile(  # the app's text lines, and gunicorn's own
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ \S+ |\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[\d+\] \[[A-Z]+\] "
)
ACCESS_LOG_FORMAT = next(  # gunicorn.conf.py's, read without running the file
    ast.literal_eval(node.value)
    for node in ast.parse((ROOT / "gunicorn.conf.py").read_text()).body
    if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["access_log_format"]
)
TEXT_FORMATTERS = [
    pytest.param(logs.TextFormatter(), id="text"),
    pytest.param(logs.Redacting(logging.Formatter(logs.TEXT_FORMAT)), id="redacting"),  # gunicorn's own lines
]


def record(msg: str, *args: Any, exc_info: Any = None) -> logging.LogRecord:
    return logging.LogRecord("app.web.errors", logging.ERROR, __file__, 1, msg, args, exc_info)


def no_forged_line(output: str) -> None:
    """Every line of `output` (as any reader splits lines) begins a record of its own or is indented (a traceback's),
    and none is the forged record."""
    assert not RAW_CONTROL.search(output), repr(output)
    for line in output.splitlines():
        assert RECORD_START.match(line) or line.startswith(" ") or not line, repr(line)
        assert not line.startswith(FORGED_RECORD[:23]), repr(line)


# ---------------------------------------------------------------- the formatters


@pytest.mark.parametrize("formatter", TEXT_FORMATTERS)
def test_a_text_line_keeps_a_value_with_control_characters_on_its_line(formatter: logging.Formatter) -> None:
    for char in CONTROLS:
        line = formatter.format(record("request.unhandled_error path=%s", f"/x{char}{FORGED_RECORD}"))
        no_forged_line(line)
        assert len(line.splitlines()) == 1
        assert line.endswith(f"request.unhandled_error path={f'/x{char}{FORGED_RECORD}'!r}"), line
    # a template's (or an f-string's) own control characters too
    line = formatter.format(record(f"request.unhandled_error path={FORGED_PATH}\x00"))
    no_forged_line(line)
    assert line.endswith(
        r"path=/x\n2026-12-06 12:00:00,000 ERROR app.forged admin.signed_in org=acme user=attacker\x00"
    )


@pytest.mark.parametrize("formatter", TEXT_FORMATTERS)
def test_a_text_traceback_is_indented_so_its_lines_cannot_pass_for_records(formatter: logging.Formatter) -> None:
    try:
        raise RuntimeError(f"cannot read {FORGED_PATH}\r\x00")
    except RuntimeError:
        line = formatter.format(record("request.unhandled_error path=%s", "/boom", exc_info=sys.exc_info()))
    no_forged_line(line)
    first, *rest = line.split("\n")
    assert first.endswith("request.unhandled_error path=/boom")
    assert rest[0] == "  Traceback (most recent call last):" and rest[1].startswith('    File "')
    assert rest[-2:] == ["  RuntimeError: cannot read /x", f"  {FORGED_RECORD}\\r\\x00"]


def test_a_json_line_takes_its_fields_from_the_code_never_from_a_value() -> None:
    formatter = logs.JsonFormatter()
    path = f"/x{INJECTED}"
    doc = json.loads(formatter.format(record("request.unreadable_body path=%s error=%s", path, "ParseException")))
    assert doc["event"] == "request.unreadable_body" and doc["level"] == "error"
    assert doc["path"] == path and doc["error"] == "ParseException"
    assert not INJECTED_FIELDS & doc.keys() and "request_id" not in doc, doc
    # however the template puts a value: after `: `, in brackets, in quotes, at the start
    for template in ("request.unreadable_body error=X: %s", "request.x (%s)", 'request.x "%s"', "%s"):
        doc = json.loads(formatter.format(record(template, path)))
        assert not INJECTED_FIELDS & doc.keys() and "request_id" not in doc, (template, doc)
        assert doc["event"] == ("app.web.errors" if template == "%s" else template.split()[0])
    doc = json.loads(formatter.format(record("request.unhandled_error path=%s", FORGED_PATH + "\u2028\x00")))
    assert doc["path"] == doc["message"].removeprefix("request.unhandled_error path=")[1:-1]
    assert "\n" not in doc["path"] and "\u2028" not in doc["path"] and "\x00" not in doc["path"]


def test_a_librarys_line_made_before_it_was_logged_gives_no_fields() -> None:
    """gunicorn makes "Invalid request from ip=...: <the request line>" itself, then logs it without arguments: the
    client's words are in the template, so none of its pairs are read as fields."""
    line = f"Invalid request from ip=127.0.0.1: Invalid HTTP Version: 'X{INJECTED}'"
    made = logging.LogRecord("gunicorn.error", logging.WARNING, __file__, 1, line, None, None)
    doc = json.loads(logs.JsonFormatter().format(made))
    assert not INJECTED_FIELDS & doc.keys() and "request_id" not in doc and "ip" not in doc, doc
    assert doc["message"] == line and doc["event"] == "gunicorn.error"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_gunicorns_access_line_writes_its_path_as_data(log_format: str) -> None:
    """The access line's atoms (a mapping: `%(U)s` is the path, percent-decoded) as gunicorn.conf.py formats them."""
    formatter = logs.formatter(log_format)
    for path in (f"/x{INJECTED}", FORGED_PATH, "/metrics\x00"):
        atoms = SafeAtoms({"m": "GET", "U": path, "s": "404", "B": 207, "M": 3, "{x-request-id}o": "the-real-id"})
        access = logging.LogRecord("gunicorn.access", logging.INFO, "", 1, ACCESS_LOG_FORMAT, (atoms,), None)
        line = formatter.format(access)
        if log_format == "text":
            no_forged_line(line)
            assert f"path={path!r} status=404 bytes=207 duration_ms=3 request_id=the-real-id remote=-" in line
        else:
            doc = json.loads(line)
            assert doc["path"] == path.replace("\n", "\\n").replace("\x00", "\\x00")
            assert doc["request_id"] == "the-real-id" and doc["status"] == 404 and doc["bytes"] == 207
            assert not INJECTED_FIELDS & doc.keys(), doc


def test_ordinary_values_are_written_as_they_are() -> None:
    text = logs.TextFormatter()
    line = text.format(record("request.unhandled_error path=%s error=%s", "/api/v1/orgs/acme/image-scans", "X"))
    assert line.endswith("request.unhandled_error path=/api/v1/orgs/acme/image-scans error=X")
    line = text.format(record("findings.uploaded status=%s accepted=%s seconds=%.3f", "success", 3, 0.08712))
    assert line.endswith("findings.uploaded status=success accepted=3 seconds=0.087")
    line = text.format(record("github.webhook.%s delivery=%r event=%s", "handled", "d-1", "push"))
    assert line.endswith("github.webhook.handled delivery='d-1' event=push")
    doc = json.loads(
        logs.JsonFormatter().format(record("github.webhook.%s delivery=%r event=%s", "handled", "d-1", "p"))
    )
    assert doc["event"] == "github.webhook.handled" and doc["delivery_id"] == "d-1" and doc["github_event"] == "p"
    doc = json.loads(logs.JsonFormatter().format(record("worker.error error=%s detail=%s", "OSError", "disk is full")))
    assert doc["error"] == "OSError" and doc["detail"] == "disk is full"  # a value with spaces is read whole


# ---------------------------------------------------------------- through the app


def failing_app(make_app: MakeApp, **config: Any) -> Flask:
    """The app failing for any path under /boom/ (an unexpected error, logged with its path: a line break in a path
    keeps it from any route, so before routing), and the admin's one-time link page failing too."""
    app = make_app(**config)

    def boom() -> None:
        if request.path.startswith("/boom/"):
            raise RuntimeError("the page failed")

    def admin_boom(token: str) -> str:
        raise RuntimeError("the admin page failed")

    app.before_request(boom)
    app.view_functions["admin.login_link"] = admin_boom
    return app


def test_a_path_cannot_forge_a_text_line(make_app: MakeApp, capture: Capture) -> None:
    app = failing_app(make_app)
    buffer: io.StringIO = capture("text")
    client = app.test_client()
    assert client.get("/boom" + FORGED_PATH_URL + "%0d%c2%85%e2%80%a8%1b").status_code == 500
    assert client.get("/admin/login/link/tx" + FORGED_PATH_URL.removeprefix("/x")).status_code == 500
    output = buffer.getvalue()
    no_forged_line(output)
    lines = output.splitlines()
    error = next(line for line in lines if "request.unhandled_error" in line)
    assert error.endswith(rf"path='/boom/x\n{FORGED_RECORD}\r\x85\u2028\x1b'"), error
    admin = next(line for line in lines if "admin.unhandled_error" in line)
    assert "path='/admin/login/link/[redacted]" in admin and admin.endswith(" org=acme user=attacker'"), admin
    assert "  RuntimeError: the page failed" in lines  # the traceback, indented


def test_a_path_cannot_inject_json_fields_nor_replace_the_request_id(make_app: MakeApp, capture: Capture) -> None:
    app = failing_app(make_app, LOG_FORMAT="json")
    buffer = capture("json")
    client = app.test_client()
    r = client.get("/boom/x" + INJECTED_URL, headers={"X-Request-Id": "real-id-1"})
    made = client.get("/boom/y" + INJECTED_URL)  # no id given: one made, and logged
    admin = client.get("/admin/login/link/t" + INJECTED_URL)
    assert r.status_code == made.status_code == admin.status_code == 500
    lines = [line for line in json_lines(buffer) if line["event"].endswith(".unhandled_error")]
    assert [line["path"] for line in lines] == [
        "/boom/x" + INJECTED,
        "/boom/y" + INJECTED,
        "/admin/login/link/[redacted]" + INJECTED,
    ]
    answered = [r.headers["X-Request-Id"], made.headers["X-Request-Id"], admin.headers["X-Request-Id"]]
    assert [line["request_id"] for line in lines] == answered and answered[0] == "real-id-1"
    for line in lines:
        assert not INJECTED_FIELDS & line.keys(), line
        assert line["level"] == "error" and line["exc_type"] == "RuntimeError"


# ---------------------------------------------------------------- through gunicorn's access line


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_gunicorns_access_line_cannot_be_forged_by_a_path(database_url: str, tmp_path: Path, log_format: str) -> None:
    """Served as `make run` serves it (gunicorn with an access log): the auditor's requests."""
    env = served_env(
        database_url, tmp_path, FREMFORGE_LOG_FORMAT=log_format, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prometheus")
    )
    log = tmp_path / "gunicorn.log"
    with gunicorn(env, log, "--access-logfile", "-", "--preload") as port:
        forged = call(port, "GET", FORGED_PATH_URL)
        nul = call(port, "GET", "/metrics%00")
        injected = call(port, "GET", "/x" + INJECTED_URL)
        given = call(port, "GET", "/y" + INJECTED_URL, headers={"X-Request-Id": "real-id-2"})
    assert forged[0] == injected[0] == given[0] == 404 and nul[0] == 400
    raw = log.read_bytes()
    assert b"\x00" not in raw and b"\r" not in raw
    output = raw.decode()
    if log_format == "text":
        no_forged_line(output)
        written = [line for line in output.splitlines() if " http.request " in line]
        assert any(f"path={FORGED_PATH!r} status=404 " in line for line in written), written
        assert any(r"path='/metrics\x00' status=400 " in line for line in written), written
        assert any(f"path='/x{INJECTED}' status=404 " in line for line in written), written
        return
    lines = [json.loads(line) for line in output.splitlines()]  # every line one object
    access = {line["path"]: line for line in lines if line["event"] == "http.request"}
    assert access[FORGED_PATH.replace("\n", "\\n")]["request_id"] == forged[1]["X-Request-Id"]
    assert access["/metrics\\x00"]["request_id"] == nul[1]["X-Request-Id"]
    for path, answer in (("/x" + INJECTED, injected), ("/y" + INJECTED, given)):
        line = access[path]
        assert line["request_id"] == answer[1]["X-Request-Id"] and line["status"] == 404, line
        assert not INJECTED_FIELDS & line.keys(), line
    assert access["/y" + INJECTED]["request_id"] == "real-id-2"
