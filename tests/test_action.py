"""The GitHub Action (action.yml, action/upload.py): its one composite step run as GitHub runs it, against the app on
loopback and against a loopback server that answers what a test tells it to (spec section 11)."""

from __future__ import annotations

import ast
import gzip
import importlib.util
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from flask import Flask

from tests.conftest import ROOT
from tests.factories import FIXTURES, SHA, SHA2, make_org, make_token
from tests.pgcluster import free_port

ACTION = ROOT / "action.yml"
SCRIPT = ROOT / "action" / "upload.py"
REPORT = FIXTURES / "trivy" / "alpine-39.json"  # 6 vulnerabilities
IMAGE = "ghcr.io/acme/api:" + SHA
MERGE_SHA = "fedcba9876543210fedcba9876543210fedcba98"  # github.sha of a pull_request event: the merge commit
TIME_SCALE = 0.01  # the waits the script plans, run at a hundredth of their length (FREMFORGE_UPLOAD_TIME_SCALE)
RUN = 60  # seconds: a bound for one run of the step, not a pause


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fremforge_upload_action", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


upload_script = load_script()


# ---------------------------------------------------------------- action.yml, read as GitHub reads it


def action() -> dict[str, Any]:
    return yaml.safe_load(ACTION.read_text())


def the_step() -> dict[str, Any]:
    steps = action()["runs"]["steps"]
    assert len(steps) == 1, "the action is one step"
    return steps[0]


EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
OPERAND = re.compile(r"(inputs|github)(\.[A-Za-z0-9_-]+)+")


def evaluate(value: str, context: dict[str, Any]) -> str:
    """What GitHub makes of a value with `${{ a.b || c.d }}` expressions: dotted lookups, `||` taking the first
    truthy one (all this action uses; anything else fails the test, so action.yml cannot outgrow this reading)."""

    def one(match: re.Match[str]) -> str:
        for operand in (part.strip() for part in match.group(1).split("||")):
            assert OPERAND.fullmatch(operand), f"an expression this test cannot evaluate: {operand!r}"
            node: Any = context
            for key in operand.split("."):
                node = node.get(key) if isinstance(node, dict) else None
            if node:
                return str(node)
        return ""

    return EXPRESSION.sub(one, value)


def github_context(event: str = "pull_request") -> dict[str, Any]:
    """The parts of the `github` context the action reads, for a pull request (head SHA, merge commit) or a push."""
    if event == "pull_request":
        return {
            "sha": MERGE_SHA,
            "repository": "acme/api",
            "ref": "refs/pull/7/merge",
            "event": {"pull_request": {"head": {"sha": SHA}}},
        }
    return {"sha": SHA2, "repository": "acme/api", "ref": "refs/heads/main", "event": {}}


def step_env(inputs: dict[str, str], github: dict[str, Any] | None = None) -> dict[str, str]:
    """The step's env block as GitHub evaluates it: the inputs given, the others at their defaults."""
    declared = action()["inputs"]
    unknown = set(inputs) - set(declared)
    assert not unknown, f"not inputs of action.yml: {unknown}"
    values = {name: str(spec.get("default", "")) for name, spec in declared.items()}
    values.update(inputs)
    context = {"inputs": values, "github": github or github_context()}
    return {name: evaluate(str(value), context) for name, value in the_step()["env"].items()}


@dataclass
class StepRun:
    returncode: int
    output: str  # stdout and stderr together: all the log shows
    outputs: dict[str, str]
    summary: str


def run_step(tmp: Path, inputs: dict[str, str], extra_env: dict[str, str] | None = None, **github: Any) -> StepRun:
    """Run the composite step's `run` script with bash, with its env mapped from `inputs` and the environment the
    runner gives every step (GITHUB_OUTPUT, GITHUB_STEP_SUMMARY, GITHUB_ACTION_PATH, the run's ids)."""
    outputs, summary = tmp / "github_output", tmp / "step_summary"
    for path in (outputs, summary):
        path.write_text("")
    keep = ("HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")])
    env.update(
        GITHUB_ACTIONS="true",
        GITHUB_ACTION_PATH=str(ROOT),
        GITHUB_OUTPUT=str(outputs),
        GITHUB_STEP_SUMMARY=str(summary),
        GITHUB_REPOSITORY="acme/api",
        GITHUB_RUN_ID="8123456789",
        GITHUB_RUN_ATTEMPT="1",
        GITHUB_JOB="image",
        GITHUB_ACTION="__fremforge_upload",
        FREMFORGE_UPLOAD_TIME_SCALE=str(TIME_SCALE),
    )
    env.update(step_env(inputs, github_context(**github)))
    env.update(extra_env or {})
    step = the_step()
    assert step["shell"] == "bash"
    done = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
        cwd=tmp,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=RUN,
    )
    written = dict(line.split("=", 1) for line in outputs.read_text().splitlines() if line)
    return StepRun(done.returncode, done.stdout, written, summary.read_text())


def inputs_for(url: str, token: str, report: Path = REPORT, **more: str) -> dict[str, str]:
    return {"url": url, "org": "acme", "token": token, "report": str(report), "image-ref": IMAGE, **more}


# ---------------------------------------------------------------- a loopback server that answers as told


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Scripted:
    """Answers in turn (the last one again once they run out); every request it was sent."""

    answers: list[tuple[int, dict[str, str], bytes]]
    requests: list[Seen] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def accepted(scan_run_id: int = 41) -> tuple[int, dict[str, str], bytes]:
    body = {
        "scan_run_id": scan_run_id,
        "accepted": 6,
        "duplicates": 0,
        "status": "failure",
        "severity_counts": {"critical": 0, "high": 2, "medium": 3, "low": 1, "unknown": 0},
        "fixable": 5,
        "commit_status": {"context": "fremforge/image-scan", "state": "failure", "description": "2 high"},
        "url": f"https://fremforge.test/admin/orgs/acme/code-security/image-scanning/scans/{scan_run_id}",
    }
    return 202, {"Content-Type": "application/json"}, json.dumps(body).encode()


def error(status: int, code: str, message: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"error": code, "message": message, "details": []}).encode()
    return status, {"Content-Type": "application/json", **headers}, body


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    state = Scripted(answers=[accepted()])
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                seen = Seen(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic())
                state.requests.append(seen)
                n = len(state.requests)
                status, headers, answer = state.answers[min(n, len(state.answers)) - 1]
            if callable(answer):
                answer = answer(seen)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:  # quiet: the test reads `requests`
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


# ---------------------------------------------------------------- action.yml and the script agree


def test_action_yml_is_a_composite_action_whose_inputs_outputs_and_env_match_the_script() -> None:
    spec = action()
    assert spec["runs"]["using"] == "composite"
    inputs = spec["inputs"]
    assert set(inputs) == {
        "url",
        "org",
        "token",
        "report",
        "image-ref",
        "signature-status",
        "signature-issuer",
        "signature-subject",
        "commit-sha",
        "repository",
        "ref",
    }
    assert {name for name, i in inputs.items() if i.get("required")} == {"url", "org", "token", "report"}
    assert all(i.get("description") for i in inputs.values())
    step = the_step()
    # Every input reaches the script, under a name it reads; the script reads nothing the step does not set.
    env = step["env"]
    assert set(env) == set(upload_script.ENV_INPUTS)
    used = {m.group(1) for value in env.values() for m in re.finditer(r"inputs\.([A-Za-z0-9_-]+)", str(value))}
    assert used == set(inputs)
    assert "python3" in step["run"] and '"$GITHUB_ACTION_PATH/action/upload.py"' in step["run"]
    # Outputs: the step's, under the names the script writes.
    assert set(spec["outputs"]) == set(upload_script.OUTPUTS)
    for name, output in spec["outputs"].items():
        assert output["value"] == f"${{{{ steps.{step['id']}.outputs.{name} }}}}"
        assert output["description"]
    # Secrets never in a `run` line, where they would be part of the script bash is given (and of its traces).
    assert "inputs.token" not in step["run"] and "${{" not in step["run"]


def test_the_env_mapping_takes_the_pull_requests_head_not_the_merge_commit() -> None:
    pr = step_env(inputs_for("https://fremforge.test", "t"), github_context("pull_request"))
    assert (pr["FREMFORGE_COMMIT_SHA"], pr["FREMFORGE_REPO_FULL_NAME"], pr["FREMFORGE_REF"]) == (
        SHA,
        "acme/api",
        "refs/pull/7/merge",
    )
    push = step_env(inputs_for("https://fremforge.test", "t"), github_context("push"))
    assert (push["FREMFORGE_COMMIT_SHA"], push["FREMFORGE_REF"]) == (SHA2, "refs/heads/main")
    given = step_env(
        inputs_for("https://fremforge.test", "t", **{"commit-sha": SHA2, "repository": "acme/web", "ref": "refs/x"})
    )
    assert (given["FREMFORGE_COMMIT_SHA"], given["FREMFORGE_REPO_FULL_NAME"], given["FREMFORGE_REF"]) == (
        SHA2,
        "acme/web",
        "refs/x",
    )
    assert pr["FREMFORGE_SIGNATURE_STATUS"] == "" and pr["FREMFORGE_IMAGE_REF"] == IMAGE


# ---------------------------------------------------------------- against the app


def test_the_step_uploads_the_report_and_writes_its_outputs(app: Flask, live_server: str, tmp_path: Path) -> None:
    make_org(app)
    token = make_token(app)
    signature = {
        "signature-status": "signed",
        "signature-issuer": "https://token.actions.githubusercontent.com",
        "signature-subject": "https://github.com/acme/api/.github/workflows/build.yml@refs/heads/main",
    }
    run = run_step(tmp_path, inputs_for(live_server, token, **signature))
    assert run.returncode == 0, run.output
    assert set(run.outputs) == set(upload_script.OUTPUTS)
    scan_id = int(run.outputs["scan-run-id"])
    assert run.outputs["url"] == f"{live_server}/admin/orgs/acme/code-security/image-scanning/scans/{scan_id}"
    # The log says what happened, and where to look.
    assert f"scan {scan_id} stored, status {run.outputs['status']}" in run.output
    assert run.outputs["url"] in run.output
    assert "### fremforge image scan" in run.summary and run.outputs["url"] in run.summary
    assert token not in run.output + run.summary + json.dumps(run.outputs)

    scan = app.test_client().get(
        f"/api/v1/orgs/acme/image-scans/{scan_id}", headers={"Authorization": f"Bearer {token}"}
    )
    assert scan.status_code == 200, scan.get_data(as_text=True)
    stored = scan.get_json()
    assert stored["status"] == run.outputs["status"] in ("success", "failure")
    assert (stored["image_ref"], stored["commit_sha"], stored["repo_full_name"], stored["ref"]) == (
        IMAGE,
        SHA,  # the pull request's head, not github.sha (the merge commit)
        "acme/api",
        "refs/pull/7/merge",
    )
    assert (stored["signature_status"], stored["signature_subject"]) == ("signed", signature["signature-subject"])
    assert stored["accepted"] == 6 and len(stored["findings"]) == 6


def test_a_refused_token_fails_the_step_with_the_servers_error(app: Flask, live_server: str, tmp_path: Path) -> None:
    make_org(app)
    wrong = "ffs_" + "x" * 40
    run = run_step(tmp_path, inputs_for(live_server, wrong))
    assert run.returncode == 1, run.output
    assert "fremforge: fremforge upload failed: HTTP 401 unauthorized:" in run.output
    assert "::error title=fremforge upload failed::HTTP 401" in run.output  # an annotation on the run's page
    assert "trying again" not in run.output  # a 4xx is an answer, not a hiccup
    assert run.outputs == {}
    assert "Upload failed" in run.summary and "HTTP 401" in run.summary
    assert wrong not in run.output + run.summary
    listed = app.test_client().get(
        "/api/v1/orgs/acme/image-scans", headers={"Authorization": f"Bearer {make_token(app)}"}
    )
    assert listed.get_json()["items"] == []


def test_the_step_run_again_in_the_same_run_attempt_stores_the_scan_once(
    app: Flask, live_server: str, tmp_path: Path
) -> None:
    """The same Idempotency-Key and body (the step's own retry, or a second step alike): the first answer again;
    a re-run of the job (its run attempt differs) is a new upload."""
    make_org(app)
    token = make_token(app)
    first = run_step(tmp_path, inputs_for(live_server, token))
    again = run_step(tmp_path, inputs_for(live_server, token))
    rerun = run_step(tmp_path, inputs_for(live_server, token), {"GITHUB_RUN_ATTEMPT": "2"})
    assert (first.returncode, again.returncode, rerun.returncode) == (0, 0, 0), first.output + again.output
    assert again.outputs == first.outputs and "the server had this upload already" in again.output
    assert rerun.outputs["scan-run-id"] != first.outputs["scan-run-id"]
    listed = app.test_client().get("/api/v1/orgs/acme/image-scans", headers={"Authorization": f"Bearer {token}"})
    assert len(listed.get_json()["items"]) == 2


# ---------------------------------------------------------------- retries, against a server that answers as told


def test_5xx_429_and_409_are_tried_again_with_the_same_key_honouring_retry_after(
    scripted: Scripted, tmp_path: Path
) -> None:
    scripted.answers = [
        error(503, "database_unavailable", "The database is unavailable.", **{"Retry-After": "20"}),
        error(429, "rate_limited", "Too many requests.", **{"Retry-After": "3600"}),  # past the bound: waits 30
        error(409, "idempotency_in_flight", "The first request with this key is in flight."),  # no Retry-After
        (502, {"Content-Type": "text/html"}, b"<html><body><h1>502 Bad Gateway</h1></body></html>"),
        accepted(41),
    ]
    token = "ffs_secret_token_value_0123456789"
    env = {"FREMFORGE_UPLOAD_MAX_WAIT": "30", "FREMFORGE_UPLOAD_BACKOFF": "2"}
    run = run_step(tmp_path, inputs_for(scripted.url, token), env)
    assert run.returncode == 0, run.output
    assert run.outputs == {
        "scan-run-id": "41",
        "status": "failure",
        "url": "https://fremforge.test/admin/orgs/acme/code-security/image-scanning/scans/41",
    }
    seen = scripted.requests
    assert len(seen) == 5
    assert len({r.headers["idempotency-key"] for r in seen}) == 1 and seen[0].headers["idempotency-key"].startswith(
        "gha-"
    )
    report = REPORT.read_bytes()
    for r in seen:
        assert r.path.startswith("/api/v1/orgs/acme/image-scans/findings?")
        assert (r.headers["content-encoding"], r.headers["content-type"]) == ("gzip", "application/json")
        assert r.headers["authorization"] == f"Bearer {token}"
        assert gzip.decompress(r.body) == report
    query = dict(p.split("=", 1) for p in seen[0].path.split("?", 1)[1].split("&"))
    assert query["commit_sha"] == SHA and query["repo_full_name"] == "acme%2Fapi" and "signature_status" not in query
    # The waits it planned: the server's Retry-After, within FREMFORGE_UPLOAD_MAX_WAIT; else 2, 4, 8, 16 s (+ up
    # to a quarter of jitter).
    planned = [float(s) for s in re.findall(r"trying again in ([\d.]+) s", run.output)]
    assert planned[:2] == [20.0, 30.0], run.output
    assert 8.0 <= planned[2] <= 10.0 and 16.0 <= planned[3] <= 20.0, planned
    assert "(Retry-After: 20 s)" in run.output and "(Retry-After: 3600 s)" in run.output
    gaps = [b.at - a.at for a, b in itertools.pairwise(seen)]
    for gap, wait in zip(gaps, planned, strict=True):
        assert wait * TIME_SCALE <= gap < wait * TIME_SCALE + 5, (gaps, planned)
    assert "attempt 4 of 5: HTTP 502: 502 Bad Gateway" in run.output  # an HTML answer, read as text
    assert token not in run.output + run.summary


def test_a_key_still_in_flight_is_waited_for_without_spending_attempts(scripted: Scripted, tmp_path: Path) -> None:
    """The first request died (its worker killed) or waits on a lock: the server answers 409 in flight until its
    answer is there or the key's 2-minute lease ends. HEAD spent an attempt on each 409 and failed the step after about
    8 s, though the upload it made was stored a moment later (and a re-run of the job stored it again)."""
    in_flight = error(409, "idempotency_key_in_flight", "Still being processed.", **{"Retry-After": "2"})
    scripted.answers = [error(502, "bad_gateway", "The proxy lost the worker."), *[in_flight] * 30, accepted(43)]
    run = run_step(tmp_path, inputs_for(scripted.url, "tok_abcdef0123456789"), {"FREMFORGE_UPLOAD_ATTEMPTS": "3"})
    assert run.returncode == 0, run.output
    assert run.outputs["scan-run-id"] == "43" and len(scripted.requests) == 32
    assert "still in flight; asking again in 2 s" in run.output


def test_5xx_to_the_last_attempt_fails_the_step(scripted: Scripted, tmp_path: Path) -> None:
    scripted.answers = [error(503, "database_unavailable", "The database is unavailable.", **{"Retry-After": "1"})]
    run = run_step(tmp_path, inputs_for(scripted.url, "tok_abcdef0123456789"), {"FREMFORGE_UPLOAD_ATTEMPTS": "3"})
    assert run.returncode == 1, run.output
    assert len(scripted.requests) == 3
    assert len({r.headers["idempotency-key"] for r in scripted.requests}) == 1
    assert (
        "fremforge upload failed: HTTP 503 database_unavailable: The database is unavailable. "
        "(gave up after 3 attempts)" in run.output
    )
    assert run.outputs == {}


def test_a_connection_refused_is_tried_again_then_fails(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    run = run_step(tmp_path, inputs_for(closed, "tok_abcdef0123456789"), {"FREMFORGE_UPLOAD_ATTEMPTS": "2"})
    assert run.returncode == 1, run.output
    assert "attempt 1 of 2: cannot reach 127.0.0.1:" in run.output
    assert "(gave up after 2 attempts)" in run.output


@pytest.mark.parametrize(
    "answer",
    [
        error(422, "idempotency_key_reused", "This Idempotency-Key came with another body."),
        error(403, "forbidden", "The token lacks the scope findings:write."),
        (301, {"Location": "https://elsewhere.example/api/v1/orgs/acme/image-scans/findings"}, b""),
    ],
    ids=["422", "403", "redirect"],
)
def test_other_answers_fail_at_once(
    scripted: Scripted, tmp_path: Path, answer: tuple[int, dict[str, str], bytes]
) -> None:
    scripted.answers = [answer]
    run = run_step(tmp_path, inputs_for(scripted.url, "tok_abcdef0123456789"))
    assert run.returncode == 1, run.output
    assert len(scripted.requests) == 1  # not retried, and a redirect is not followed (it would take the token along)
    assert f"fremforge upload failed: HTTP {answer[0]}" in run.output


def test_the_token_is_never_printed_even_when_the_server_repeats_it_nor_a_servers_command_run(
    scripted: Scripted, tmp_path: Path
) -> None:
    token = "ffs_do_not_print_me_0123456789abcdef"

    def echo(seen: Seen) -> bytes:
        said = f"Bad header: {seen.headers['authorization']}\n::add-mask::x\n::stop-commands::y"
        return json.dumps({"error": "bad_request", "message": said, "details": []}).encode()

    scripted.answers = [(400, {"Content-Type": "application/json"}, echo)]  # type: ignore[list-item]
    run = run_step(tmp_path, inputs_for(scripted.url, token))
    assert run.returncode == 1
    assert "Bad header: Bearer ***" in run.output
    assert token not in run.output + run.summary
    # The server's line breaks cannot start workflow commands of their own: only this script's annotation does.
    assert [line for line in run.output.splitlines() if line.startswith("::")] == [
        "::error title=fremforge upload failed::HTTP 400 bad_request: Bad header: Bearer ***%0A::add-mask::x%0A"
        "::stop-commands::y"  # (%0A: a line break inside the annotation)
    ]


@pytest.mark.parametrize(
    ("name", "content", "said"),
    [
        ("missing.json", None, "does not exist: did the Trivy step write it there?"),
        (".", None, "cannot be read: Is a directory"),
        ("empty.json", b"", "is empty: did the Trivy step fail?"),
        ("table.txt", b"Total: 3 (HIGH: 3, CRITICAL: 0)\n", "is not JSON (run Trivy with --format json)"),
    ],
    ids=["missing", "unreadable", "empty", "not-json"],
)
def test_a_missing_or_unusable_report_fails_before_any_request(
    scripted: Scripted, tmp_path: Path, name: str, content: bytes | None, said: str
) -> None:
    report = tmp_path / "reports" / name
    (tmp_path / "reports").mkdir()
    if content is not None:
        report.write_bytes(content)
    token = "tok_abcdef0123456789"
    run = run_step(tmp_path, inputs_for(scripted.url, token, report=str(report)))
    assert run.returncode == 1, run.output
    assert said in run.output and "::error title=fremforge upload failed::" in run.output
    assert "Upload failed" in run.summary and run.outputs == {}
    assert scripted.requests == [] and token not in run.output


def test_a_report_with_a_byte_order_mark_is_sent_as_it_is(scripted: Scripted, tmp_path: Path) -> None:
    marked = tmp_path / "trivy.json"
    marked.write_bytes(b"\xef\xbb\xbf" + REPORT.read_bytes())  # the server takes it (test_bad_input)
    run = run_step(tmp_path, inputs_for(scripted.url, "tok_abcdef0123456789", report=str(marked)))
    assert run.returncode == 0 and len(scripted.requests) == 1, run.output  # not refused as "not JSON"


def test_a_gzipped_report_is_sent_as_it_is(scripted: Scripted, tmp_path: Path) -> None:
    packed = tmp_path / "trivy.json.gz"
    packed.write_bytes(gzip.compress(REPORT.read_bytes()))
    run = run_step(tmp_path, inputs_for(scripted.url, "tok_abcdef0123456789", report=str(packed)))
    assert run.returncode == 0, run.output
    assert scripted.requests[0].body == packed.read_bytes()


@pytest.mark.parametrize(
    ("inputs", "said"),
    [
        ({"url": "fremforge.example.com"}, "is not an http(s) URL"),
        ({"url": "https://fremforge.example.com/?x=1"}, "no query, fragment or credentials"),
        ({"org": ""}, "no org given"),
        ({"token": ""}, "no token given"),
        ({"token": "abc\ndef"}, "cannot go in an HTTP header"),
        ({"report": ""}, "no report given"),
    ],
    ids=["url-scheme", "url-query", "org", "token", "token-newline", "report"],
)
def test_inputs_that_cannot_work_fail_with_status_2(tmp_path: Path, inputs: dict[str, str], said: str) -> None:
    run = run_step(tmp_path, {**inputs_for("https://fremforge.example.com", "tok_abc"), **inputs})
    assert run.returncode == 2, run.output
    assert said in run.output


# ---------------------------------------------------------------- the script's parts


def test_an_html_error_page_is_read_as_its_text() -> None:
    """gunicorn's own pages (a 414, say) escape what they quote: the step's line says it as a person reads it."""
    page = b"<html><body><h1>Bad Request</h1>Request Line is too large (4263 &gt; 4094)</body></html>"
    assert upload_script.describe(414, page) == ("HTTP 414: Bad Request Request Line is too large (4263 > 4094)", None)


def test_the_idempotency_key_is_one_per_run_attempt_step_image_and_report() -> None:
    run = {
        "GITHUB_REPOSITORY": "acme/api",
        "GITHUB_RUN_ID": "1",
        "GITHUB_RUN_ATTEMPT": "1",
        "GITHUB_JOB": "image",
        "GITHUB_ACTION": "__run",
        "FREMFORGE_IMAGE_REF": IMAGE,
    }
    key = upload_script.idempotency_key
    first = key(run, "acme", "a" * 64)
    assert first == key(dict(run), "acme", "a" * 64) and re.fullmatch(r"gha-[0-9a-f]{64}", first)
    assert key({**run, "GITHUB_RUN_ATTEMPT": "2"}, "acme", "a" * 64) != first  # a re-run uploads again
    assert key({**run, "FREMFORGE_IMAGE_REF": IMAGE + "-debug"}, "acme", "a" * 64) != first
    assert key(run, "acme", "b" * 64) != first
    outside = key({}, "acme", "a" * 64)  # outside Actions: one per invocation
    assert outside != key({}, "acme", "a" * 64) and outside.startswith("fremforge-upload-")


def test_retry_after_in_seconds_or_as_a_date() -> None:
    now = 1_700_000_000.0
    assert upload_script.retry_after("7", now) == 7.0
    assert upload_script.retry_after("Tue, 14 Nov 2023 22:13:40 GMT", now) == 20.0
    assert upload_script.retry_after("Tue, 14 Nov 2023 22:13:00 GMT", now) == 0.0  # past
    assert upload_script.retry_after("soon", now) is None and upload_script.retry_after(None, now) is None
    settings = upload_script.Settings({"FREMFORGE_UPLOAD_MAX_WAIT": "60"})
    assert upload_script.backoff(settings, 1, 600.0) == 60.0
    assert 2.0 <= upload_script.backoff(settings, 1, None) <= 2.5
    assert upload_script.backoff(settings, 9, None) == 60.0


def test_workflow_command_text_from_the_server_cannot_start_a_command() -> None:
    assert upload_script._escape_data("a\n::set-output name=x::y%") == "a%0A::set-output name=x::y%25"


def test_under_pull_request_target_the_pull_requests_own_ref_is_sent(tmp_path: Path) -> None:
    """pull_request_target runs with the base branch's github.ref: the head's scan must not pass for the base's."""
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"number": 12, "head": {"sha": SHA}}}))
    base = {"GITHUB_REF": "refs/heads/main", "FREMFORGE_REF": "refs/heads/main", "GITHUB_EVENT_PATH": str(event)}
    assert upload_script.pull_request_ref({**base, "GITHUB_EVENT_NAME": "pull_request_target"}) == "refs/pull/12/merge"
    assert upload_script.pull_request_ref({**base, "GITHUB_EVENT_NAME": "push"}) == "refs/heads/main"
    given = {**base, "GITHUB_EVENT_NAME": "pull_request_target", "FREMFORGE_REF": "refs/heads/release"}
    assert upload_script.pull_request_ref(given) == "refs/heads/release"  # the input `ref` wins
    unreadable = {**base, "GITHUB_EVENT_NAME": "pull_request_target", "GITHUB_EVENT_PATH": str(tmp_path / "none")}
    assert upload_script.pull_request_ref(unreadable) == "refs/heads/main"


# What Python 3.9 and later added that the script, for 3.8, must not use (its runners' python3 may be that old).
NEWER_THAN_3_8 = re.compile(
    r"\.removeprefix\(|\.removesuffix\(|functools\.cache\b|\bzoneinfo\b|\bgraphlib\b|itertools\.pairwise|math\.lcm"
    r"|strict=|\bmatch\s+\w+:|\(\s*\)\s*\|"
)


def test_the_script_keeps_to_python_3_8_as_it_says() -> None:
    """HEAD used bytes.removeprefix (3.9): on 3.8 the step died with a traceback, no annotation, no summary."""
    source = SCRIPT.read_text()
    assert "Python 3.8+" in source
    ast.parse(source, feature_version=(3, 8))
    assert NEWER_THAN_3_8.findall(source) == []
