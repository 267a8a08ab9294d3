"""The documented production set-up, run as the README shows it: Debian's nginx with deploy/fremforge-nginx.conf in
front of `gunicorn --workers N --bind 127.0.0.1:PORT wsgi:app` (sync workers). Slow clients without credentials
never stall it, while without nginx the same clients stall gunicorn; a webhook body over GitHub's 25 MiB cap is
refused before it is read, by nginx and by the app itself (spec sections 5 and 9).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import io
import json
import os
import re
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.test import EnvironBuilder, run_wsgi_app

from app.config import DEFAULTS
from app.github import webhooks
from tests.conftest import ROOT, WEBHOOK_SECRET, MakeApp, skip_or_fail
from tests.factories import make_org, make_token, seed
from tests.pgcluster import free_port

SITE = ROOT / "deploy" / "fremforge-nginx.conf"
WEB_UNIT = ROOT / "deploy" / "fremforge-web.service"
GUNICORN = ROOT / ".venv" / "bin" / "gunicorn"
HOST = "127.0.0.1"
MiB = 1024 * 1024
CAP = webhooks.MAX_BODY_BYTES  # GitHub's cap on a webhook delivery
UPLOAD_LIMIT = int(DEFAULTS["MAX_UPLOAD_MB"]) * MiB  # FREMFORGE_MAX_UPLOAD_MB's default
UPLOAD_PATH = "/api/v1/orgs/acme/image-scans/findings"
WORKERS = 2  # gunicorn's sync workers in these tests; production runs 4 (deploy/fremforge-web.service)
SLOW_CLIENTS = 6  # more than either: each would hold a worker of gunicorn alone
TRICKLE = 1.0  # seconds between two bytes of a slow client ("a header byte a second", spec section 9)
PROMPT = 5.0  # seconds: what a normal request is answered within while the slow clients are connected
HEADER_TIMEOUT = 10.0  # seconds: client_header_timeout in the site config (test_the_site_config_... checks it)
START = 60.0  # seconds: a bound for gunicorn and nginx to come up, not a pause
STOP = 30.0  # seconds: a bound for them to stop
SERVER_TROUBLE = re.compile(r"WORKER TIMEOUT|Traceback|request\.unhandled_error|\bCRITICAL\b|Worker .* (died|exited)")


# ---------------------------------------------------------------- the site config itself


def directive(name: str, text: str) -> str:
    """The value of the one `name ...;` directive in text (comments aside)."""
    values = re.findall(rf"(?m)^\s*{re.escape(name)}\s+([^;#\n]+);", text)
    assert len(values) == 1, f"{name}: expected one, found {values}"
    return values[0].strip()


def location(pattern: str, text: str) -> str:
    match = re.search(rf"(?ms)^\s*location {re.escape(pattern)} \{{\n(.*?)^\s*\}}", text)
    assert match, f"no `location {pattern}` block in {SITE.name}"
    return match.group(1)


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s?)", value)
    assert match, f"write nginx times in seconds here: {value!r}"
    return float(match.group(1))


def test_the_site_config_holds_the_apps_limits_and_the_web_units_port() -> None:
    text = SITE.read_text()
    server = text.split("location ", 1)[0]  # the server-wide directives come before the first location
    assert directive("client_max_body_size", server) == f"{UPLOAD_LIMIT // MiB}m"
    assert directive("client_max_body_size", location("= /webhooks/github", text)) == f"{CAP // MiB}m"
    assert directive("proxy_request_buffering", server) == "on" and directive("proxy_buffering", server) == "on"
    assert seconds(directive("client_header_timeout", server)) == HEADER_TIMEOUT
    for name in ("client_body_timeout", "send_timeout", "keepalive_timeout"):
        assert 0 < seconds(directive(name, server)) <= 60, name
    # gunicorn's own request timeout (30 s, its default: the unit does not change it) ends a stuck request first.
    assert "--timeout" not in WEB_UNIT.read_text()
    assert seconds(directive("proxy_read_timeout", server)) > 30
    upstream = directive("server", text.split("upstream fremforge {", 1)[1].split("}", 1)[0])
    assert f"--bind {upstream} " in WEB_UNIT.read_text() and upstream.startswith("127.0.0.1:"), upstream
    for header in ("X-Forwarded-For", "X-Forwarded-Proto", "Host"):
        assert re.search(rf"(?m)^\s*proxy_set_header {header} \$", server), header


# ---------------------------------------------------------------- running gunicorn and nginx


def nginx_binary() -> str:
    """Debian's nginx: on PATH, or in /usr/sbin (which a user's PATH may lack)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if found is None:
        skip_or_fail("the production set-up tests need Debian's nginx (apt-get install nginx)")
    assert found is not None
    return found


def render_site(nginx_port: int, gunicorn_port: int) -> str:
    """deploy/fremforge-nginx.conf with only its two ports changed (and no IPv6 listener: the test is on 127.0.0.1)."""
    text = SITE.read_text()
    text, listen = re.subn(r"(?m)^(\s*)listen 80;$", rf"\g<1>listen {HOST}:{nginx_port};", text)
    text, listen6 = re.subn(r"(?m)^\s*listen \[::\]:80;\n", "", text)
    text, upstream = re.subn(r"(?m)^(\s*)server 127\.0\.0\.1:8000;", rf"\g<1>server {HOST}:{gunicorn_port};", text)
    assert (listen, listen6, upstream) == (1, 1, 1), f"{SITE.name} no longer has the lines this test changes"
    return text


# What Debian's /etc/nginx/nginx.conf gives the site (an http block), with every path under this test's directory.
# The access log names the upstream each request went to ("-": nginx answered it alone).
WRAPPER = """\
{user}worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 256; }}
http {{
    log_format upstream '$status $request_method $request_uri upstream=$upstream_addr';
    access_log {prefix}/access.log upstream;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/fremforge.conf;
}}
"""


@contextmanager
def running(cmd: list[str], log: Path, ready: Callable[[], bool], env: dict[str, str] | None = None) -> Iterator[None]:
    """A server process, up once `ready()` says so (within START seconds); stopped with SIGTERM on the way out, and
    its process group killed if it does not stop within STOP seconds."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + START
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{Path(cmd[0]).name} did not come up:\n{log.read_text(errors='replace')}")
            time.sleep(0.05)  # the readiness poll's interval, not a synchronisation point
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=STOP)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=STOP)


@contextmanager
def gunicorn(tmp: Path, database_url: str) -> Iterator[int]:
    """`gunicorn --workers WORKERS --preload --bind 127.0.0.1:PORT wsgi:app` in production mode (as the README runs
    it), webhooks configured; its port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FREMFORGE_")}
    env.update(
        FREMFORGE_ENV="production",
        FREMFORGE_DATABASE_URL=database_url,
        FREMFORGE_SECRET_KEY=secrets.token_urlsafe(48),
        FREMFORGE_PUBLIC_URL="http://fremforge.test",
        FREMFORGE_GITHUB_WEBHOOK_SECRET=WEBHOOK_SECRET,
        FREMFORGE_CHECKPOINT_KEY_FILE=str(tmp / "checkpoint_ed25519.pem"),
        PYTHONDONTWRITEBYTECODE="1",
    )
    cmd = [str(GUNICORN), "--workers", str(WORKERS), "--preload", "--bind", f"{HOST}:{port}", "--no-control-socket"]
    cmd.append("wsgi:app")
    log = tmp / "gunicorn.log"
    with running(cmd, log, lambda: answers_healthz(port), env):
        yield port
    trouble = [line for line in log.read_text(errors="replace").splitlines() if SERVER_TROUBLE.search(line)]
    assert not trouble, "gunicorn logged trouble:\n" + "\n".join(trouble[:20])


@dataclass
class Nginx:
    port: int
    prefix: Path

    def access_log(self) -> list[str]:
        return (self.prefix / "access.log").read_text().splitlines()


@contextmanager
def nginx(tmp: Path, gunicorn_port: int) -> Iterator[Nginx]:
    """nginx with the site config (its ports changed), checked with `nginx -t` first, in the foreground."""
    binary = nginx_binary()
    prefix = tmp / "nginx"
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / sub).mkdir(parents=True)
    port = free_port()
    (prefix / "fremforge.conf").write_text(render_site(port, gunicorn_port))
    # Started as root (as in CI), nginx runs its workers as `nobody`, who cannot reach this test's directory.
    user = "user root;\n" if os.geteuid() == 0 else ""
    (prefix / "nginx.conf").write_text(WRAPPER.format(user=user, prefix=prefix))
    base = [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")]
    checked = subprocess.run([*base, "-t"], capture_output=True, text=True, timeout=STOP)
    assert checked.returncode == 0, f"nginx -t refused the config:\n{checked.stderr}"
    with running([*base, "-g", "daemon off;"], prefix / "nginx.out", lambda: answers_healthz(port)):
        yield Nginx(port, prefix)


@contextmanager
def production(tmp: Path, database_url: str) -> Iterator[tuple[Nginx, int]]:
    """gunicorn behind nginx, as the README documents them: (nginx, gunicorn's port)."""
    nginx_binary()  # skipped (failed in strict mode) before anything starts when nginx is not installed
    with gunicorn(tmp, database_url) as gunicorn_port, nginx(tmp, gunicorn_port) as proxy:
        yield proxy, gunicorn_port


def unused_sqlite(tmp: Path) -> str:
    """A database URL for tests whose requests never reach the database."""
    return f"sqlite:///{tmp / 'unused.db'}"


# ---------------------------------------------------------------- clients


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = PROMPT,
) -> Reply:
    """One request on a new connection, answered within `timeout` seconds or an error."""
    started = time.monotonic()
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, time.monotonic() - started)


def answers_healthz(port: int) -> bool:
    try:
        return call(port, "GET", "/healthz", timeout=2).status == 200
    except (OSError, http.client.HTTPException):
        return False


def headers_only(port: int, path: str, content_length: int, headers: dict[str, str]) -> Reply:
    """A POST that announces `content_length` bytes and sends none of them: answered within PROMPT or an error."""
    started = time.monotonic()
    lines = [f"POST {path} HTTP/1.1", "Host: fremforge.test", f"Content-Length: {content_length}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection((HOST, port), timeout=PROMPT) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        data = resp.read()
    return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, time.monotonic() - started)


def signed(body: bytes, event: str = "ping") -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": secrets.token_hex(16),
        "X-Hub-Signature-256": "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest(),
    }


def ping_of_size(size: int) -> bytes:
    """A JSON ping delivery of exactly `size` bytes."""
    head, tail = b'{"zen": "Keep it logically awesome.", "hook_id": 1, "padding": "', b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


@dataclass
class Slow:
    sock: socket.socket
    rest: bytes  # still to send, a byte per TRICKLE seconds
    opened: float
    ended: float | None = None  # when the server answered or hung up
    answer: bytes = b""


class SlowClients:
    """Connections that send their request a byte a TRICKLE (after a first part at once), none with credentials,
    driven by one thread that also notes when the server answers or hangs up; all closed on the way out."""

    def __init__(self, port: int, requests: list[tuple[bytes, bytes]]) -> None:
        self.port = port
        self.requests = requests  # (sent at once, then trickled)
        self.clients: list[Slow] = []
        self.changed = threading.Condition()  # notified after each round of the thread
        self._wake, self._waker = socket.socketpair()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SlowClients:
        try:
            for first, rest in self.requests:
                sock = socket.create_connection((HOST, self.port), timeout=PROMPT)
                self.clients.append(Slow(sock, rest, time.monotonic()))
                sock.sendall(first)  # connected, and started on its request, before the next one is
                sock.setblocking(False)
        except BaseException:
            self._close()
            raise
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self.changed:
            self._stop = True
        self._waker.send(b"x")
        self._thread.join(STOP)
        self._close()
        assert not self._thread.is_alive(), "the slow clients' thread did not stop"

    def _close(self) -> None:
        for c in self.clients:
            c.sock.close()
        self._wake.close()
        self._waker.close()

    def open(self) -> list[Slow]:
        """Those the server has neither answered nor hung up on."""
        with self.changed:
            return [c for c in self.clients if c.ended is None]

    def wait_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(condition, timeout)

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._wake, selectors.EVENT_READ)
        for c in self.clients:
            selector.register(c.sock, selectors.EVENT_READ, c)
        next_byte = time.monotonic() + TRICKLE
        deadline = time.monotonic() + 600  # a bound whatever happens: no test keeps them this long
        while time.monotonic() < deadline:
            events = selector.select(timeout=max(0.0, next_byte - time.monotonic()))
            with self.changed:
                if self._stop:
                    return
                for key, _ in events:
                    if key.data is not None:
                        self._read(key.data, selector)
                if time.monotonic() >= next_byte:
                    next_byte += TRICKLE
                    for c in self.clients:
                        if c.ended is None and c.rest:
                            self._send_one(c, selector)
                self.changed.notify_all()

    def _read(self, c: Slow, selector: selectors.BaseSelector) -> None:
        try:
            data = c.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        c.answer += data
        if c.ended is None:
            c.ended = time.monotonic()
        if not data:
            selector.unregister(c.sock)

    def _send_one(self, c: Slow, selector: selectors.BaseSelector) -> None:
        try:
            c.sock.send(c.rest[:1])
            c.rest = c.rest[1:]
        except BlockingIOError:
            pass
        except OSError:
            c.ended = time.monotonic()
            selector.unregister(c.sock)


def slow_requests(n: int) -> list[tuple[bytes, bytes]]:
    """Half send a request line and trickle headers that never end; half send a webhook's headers at once, with a
    signature that is not GitHub's, and trickle its body (which the webhook route must read to check it)."""
    out = []
    for i in range(n):
        if i % 2 == 0:
            line = f"GET /healthz?slow={i} HTTP/1.1\r\nHost: fremforge.test\r\n".encode()
            out.append((line, b"".join(f"X-Slow-{j}: {'x' * 20}\r\n".encode() for j in range(90))))
        else:
            head = (
                f"POST /webhooks/github?slow={i} HTTP/1.1\r\nHost: fremforge.test\r\nContent-Type: application/json\r\n"
                f"Content-Length: 4096\r\nX-GitHub-Event: ping\r\nX-GitHub-Delivery: slow-{i}\r\n"
                f"X-Hub-Signature-256: sha256={'0' * 64}\r\n\r\n"
            ).encode()
            out.append((head, b"{" + b" " * 4095))
    return out


def normal_requests(port: int, token: str) -> list[Reply]:
    """What must keep working: a health check, an authenticated upload, a signed webhook delivery."""
    upload = json.dumps(seed()).encode()
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    ping = ping_of_size(200)
    return [
        call(port, "GET", "/healthz"),
        call(port, "POST", UPLOAD_PATH, upload, auth),
        call(port, "POST", "/webhooks/github", ping, signed(ping)),
    ]


# ---------------------------------------------------------------- slow clients


def test_slow_clients_without_credentials_do_not_stall_gunicorn_behind_nginx(app: Flask, tmp_path: Path) -> None:
    make_org(app)
    token = make_token(app)
    with production(tmp_path, app.config["DATABASE_URL"]) as (proxy, _):
        with SlowClients(proxy.port, slow_requests(SLOW_CLIENTS)) as slow:
            replies = normal_requests(proxy.port, token)
            again = normal_requests(proxy.port, token)  # and again: no worker was taken by them meanwhile
            still_open = len(slow.open())
        log = proxy.access_log()
    assert [r.status for r in replies + again] == [200, 202, 200] * 2, [(r.status, r.body[:300]) for r in replies]
    assert max(r.seconds for r in replies + again) < PROMPT
    assert still_open == SLOW_CLIENTS, "nginx hung up on a slow client before the normal requests were done"
    # nginx handed none of the slow requests to gunicorn (they never completed).
    assert [line for line in log if "slow=" in line and "upstream=-" not in line] == []


def test_without_nginx_the_same_slow_clients_stall_gunicorn(tmp_path: Path) -> None:
    """The test above can fail: with no proxy in front, the same slow clients hold both sync workers, and a health
    check that comes after them waits until they hang up."""
    with gunicorn(tmp_path, unused_sqlite(tmp_path)) as port, ExitStack() as stack:
        with SlowClients(port, slow_requests(SLOW_CLIENTS)):
            probe = stack.enter_context(socket.create_connection((HOST, port), timeout=PROMPT))  # behind them
            probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: fremforge.test\r\nConnection: close\r\n\r\n")
            answered_meanwhile = readable(probe, PROMPT)
        # The slow clients have hung up (on the way out of the block): now the health check is answered.
        answered = readable(probe, PROMPT)
        first = probe.recv(100) if answered else b""
    assert not answered_meanwhile, "gunicorn answered while slow clients held its workers: this test proves nothing"
    assert first.startswith(b"HTTP/1.1 200"), first


def readable(sock: socket.socket, timeout: float) -> bool:
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        return bool(selector.select(timeout))


def test_nginx_hangs_up_on_headers_that_trickle_past_client_header_timeout(tmp_path: Path) -> None:
    with production(tmp_path, unused_sqlite(tmp_path)) as (proxy, _):
        trickling = [r for i, r in enumerate(slow_requests(SLOW_CLIENTS)) if i % 2 == 0]
        with SlowClients(proxy.port, trickling) as slow:
            ended = slow.wait_until(lambda: not slow.open(), HEADER_TIMEOUT + 2 * TRICKLE + PROMPT)
            held = [c.ended - c.opened for c in slow.clients if c.ended is not None]
        log = proxy.access_log()
    assert ended, f"nginx still held trickling headers after {HEADER_TIMEOUT + 2 * TRICKLE + PROMPT:.0f} s"
    assert all(HEADER_TIMEOUT - TRICKLE <= s <= HEADER_TIMEOUT + 2 * TRICKLE for s in held), held
    assert sorted(line for line in log if "slow=" in line) == [
        f"408 GET /healthz?slow={i} upstream=-" for i in range(0, SLOW_CLIENTS, 2)
    ]


# ---------------------------------------------------------------- webhook bodies over GitHub's cap


def test_nginx_refuses_a_webhook_over_25_mib_at_once_and_passes_one_of_exactly_25_mib(
    app: Flask, tmp_path: Path
) -> None:
    make_org(app)
    token = make_token(app)
    hook = signed(b"{}")
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    with production(tmp_path, app.config["DATABASE_URL"]) as (proxy, gunicorn_port):
        refused = headers_only(proxy.port, "/webhooks/github?over=1", CAP + 1, hook)
        upload = headers_only(proxy.port, f"{UPLOAD_PATH}?over=1", UPLOAD_LIMIT + 1, auth)
        # The app says the same, itself, without reading the body (straight to gunicorn).
        app_refused = headers_only(gunicorn_port, "/webhooks/github", CAP + 1, hook)
        app_upload = headers_only(gunicorn_port, UPLOAD_PATH, UPLOAD_LIMIT + 1, auth)
        largest = ping_of_size(CAP)
        accepted = call(proxy.port, "POST", "/webhooks/github", largest, signed(largest), timeout=STOP)
        log = proxy.access_log()
    for reply in (refused, upload, app_refused, app_upload):
        assert reply.status == 413 and reply.headers["content-type"] == "application/json", reply
        assert reply.seconds < PROMPT, reply.seconds
    assert refused.json() == app_refused.json()
    assert refused.json()["error"] == "payload_too_large" and "25 MiB" in refused.json()["message"]
    assert upload.json() == app_upload.json()
    assert [line for line in log if "over=1" in line] == [
        "413 POST /webhooks/github?over=1 upstream=-",
        f"413 POST {UPLOAD_PATH}?over=1 upstream=-",
    ]
    assert (accepted.status, accepted.json()) == (200, {"status": "ok"}), accepted.body[:300]


class Unreadable:
    """A request body that fails the test if a byte of it is read."""

    def read(self, *args: Any) -> bytes:
        raise AssertionError("the body was read")

    readinto = readline = read


def test_the_webhook_view_refuses_a_content_length_over_25_mib_before_reading(
    webhook_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    client = webhook_app.test_client()
    r = client.post(
        "/webhooks/github",
        headers=signed(b"{}"),
        environ_overrides={"wsgi.input": Unreadable(), "CONTENT_LENGTH": str(CAP + 1)},
    )
    assert r.status_code == 413 and r.get_json() == {
        "error": "payload_too_large",
        "message": "The body is over GitHub's webhook payload cap of 25 MiB.",
        "details": [],
    }
    assert "github.webhook.too_large delivery='" in caplog.text and f"content_length={CAP + 1}" in caplog.text


def test_the_checks_before_the_size_keep_their_order(webhook_app: Flask) -> None:
    """No signature: 401 (the size is not looked at, nor the body read); no secret configured: 503."""
    too_big = {"wsgi.input": Unreadable(), "CONTENT_LENGTH": str(CAP + 1)}
    r = webhook_app.test_client().post("/webhooks/github", environ_overrides=too_big)
    assert (r.status_code, r.get_json()["error"]) == (401, "missing_signature")
    webhook_app.config["GITHUB_WEBHOOK_SECRET"] = None
    r = webhook_app.test_client().post("/webhooks/github", headers=signed(b"{}"), environ_overrides=too_big)
    assert (r.status_code, r.get_json()["error"]) == (503, "webhooks_not_configured")


class Endless:
    """A chunked body (no Content-Length) that never ends: counts what is read of it."""

    def __init__(self) -> None:
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        n = 64 * 1024 if size is None or size < 0 else size
        self.read_bytes += n
        return b"x" * n

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def chunked(app: Flask, stream: Any, headers: dict[str, str]) -> Any:
    """The request as gunicorn presents a chunked one: no CONTENT_LENGTH, wsgi.input_terminated."""
    environ = EnvironBuilder(path="/webhooks/github", method="POST", headers=headers).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ.update({"wsgi.input": stream, "wsgi.input_terminated": True, "HTTP_TRANSFER_ENCODING": "chunked"})
    app_iter, status, response_headers = run_wsgi_app(app, environ, buffered=True)
    return app.response_class(b"".join(app_iter), status=status, headers=response_headers)


def test_the_webhook_view_stops_reading_a_chunked_body_at_the_cap(webhook_app: Flask) -> None:
    endless = Endless()
    r = chunked(webhook_app, endless, signed(b"{}"))
    assert r.status_code == 413 and r.get_json()["error"] == "payload_too_large"
    assert CAP < endless.read_bytes <= CAP + 64 * 1024, endless.read_bytes  # the cap and one read, no more


@pytest.mark.parametrize("how", ["content_length", "chunked"])
def test_a_delivery_of_exactly_25_mib_is_handled(webhook_app: Flask, how: str) -> None:
    body = ping_of_size(CAP)
    if how == "chunked":
        r = chunked(webhook_app, io.BytesIO(body), signed(body))
    else:
        r = webhook_app.test_client().post("/webhooks/github", data=body, headers=signed(body))
    assert (r.status_code, r.get_json()) == (200, {"status": "ok"})


def test_the_webhook_cap_does_not_follow_a_lower_upload_limit(make_app: MakeApp) -> None:
    """FREMFORGE_MAX_UPLOAD_MB=1 limits uploads; GitHub's deliveries (up to 25 MiB) still arrive."""
    small = make_app(GITHUB_WEBHOOK_SECRET=WEBHOOK_SECRET, MAX_UPLOAD_MB="1")
    body = ping_of_size(2 * MiB)
    r = small.test_client().post("/webhooks/github", data=body, headers=signed(body))
    assert (r.status_code, r.get_json()) == (200, {"status": "ok"})
