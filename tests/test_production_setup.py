"""The documented production set-up, run as the README shows it: Debian's nginx with deploy/fremforge-nginx.conf in
front of `gunicorn --workers N --bind 127.0.0.1:PORT wsgi:app` (sync workers). Uploads, signed webhooks, the admin
pages and the front page go through it, and the app builds its links with the scheme and host nginx gives it (TLS
ending in nginx as the file documents: https links), never what a client claims in X-Forwarded-* headers. Slow
clients without credentials never stall it, while without nginx the same clients stall gunicorn; a webhook body
over GitHub's 25 MiB cap is refused before it is read, by nginx and by the app itself (spec sections 5, 9 and 11).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import io
import ipaddress
import json
import os
import re
import secrets
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flask import Flask
from werkzeug.test import EnvironBuilder, run_wsgi_app

from app import db, orgs
from app.admin import login_links
from app.config import DEFAULTS
from app.db import write_transaction
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


@dataclass
class Tls:
    """TLS ending in nginx, as the site file's comment documents it: a certificate, and the port-80 redirect."""

    cert: Path
    key: Path
    http_port: int  # the documented plain-HTTP server that redirects to https


def render_site(nginx_port: int, gunicorn_port: int, tls: Tls | None = None) -> str:
    """deploy/fremforge-nginx.conf with only its two ports changed (and no IPv6 listener: the test is on 127.0.0.1);
    with `tls`, the TLS lines its comment documents put in place of the `listen 80` lines, with this test's
    certificate, and the documented redirect server on `tls.http_port`."""
    text = SITE.read_text()
    listen_line = f"listen {HOST}:{nginx_port};"
    if tls is not None:
        documented = tls_documented(text)
        listen_line = " ".join(documented["listen"].replace("443", f"{HOST}:{nginx_port}", 1).split())
        listen_line += "\n    " + f"ssl_certificate {tls.cert};\n    ssl_certificate_key {tls.key};"
        listen_line += "\n    " + documented["ssl_protocols"]
    text, listen = re.subn(r"(?m)^(\s*)listen 80;$", lambda m: m[1] + listen_line, text)
    text, listen6 = re.subn(r"(?m)^\s*listen \[::\]:80;\n", "", text)
    text, upstream = re.subn(r"(?m)^(\s*)server 127\.0\.0\.1:8000;", rf"\g<1>server {HOST}:{gunicorn_port};", text)
    assert (listen, listen6, upstream) == (1, 1, 1), f"{SITE.name} no longer has the lines this test changes"
    if tls is not None:
        redirect = documented["redirect"].replace("listen 80;", f"listen {HOST}:{tls.http_port};")
        text += "\n" + redirect.replace(" listen [::]:80;", "") + "\n"
    return text


def tls_documented(text: str) -> dict[str, str]:
    """The TLS lines the site file's comment gives: the listen line, ssl_protocols, and the redirect server."""
    match = re.search(r"(?s)Replace the two `listen 80` lines with:\n(.*?)# and set FREMFORGE_PUBLIC_URL", text)
    assert match, f"{SITE.name} no longer documents its TLS lines where this test reads them"
    lines = [line.strip().lstrip("#").strip() for line in match[1].splitlines()]
    found = {
        "listen": next(line for line in lines if line.startswith("listen 443 ")),
        "ssl_protocols": next(line for line in lines if line.startswith("ssl_protocols ")),
        "redirect": next(line for line in lines if line.startswith("server {") and "return 301 https://" in line),
    }
    assert any(line.startswith("ssl_certificate ") for line in lines)
    assert any(line.startswith("ssl_certificate_key ") for line in lines)
    return found


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for fremforge.test (and 127.0.0.1) and its key, for nginx in the TLS tests."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fremforge.test")])
    now = datetime.now(UTC)
    san = x509.SubjectAlternativeName([x509.DNSName("fremforge.test"), x509.IPAddress(ipaddress.ip_address(HOST))])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(san, critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "fremforge.test.crt", tmp / "fremforge.test.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def client_tls(cert: Path) -> ssl.SSLContext:
    """A client that trusts the test's certificate alone."""
    context = ssl.create_default_context(cafile=str(cert))
    context.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)  # a bare self-signed leaf, not a CA
    return context


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


# What reached gunicorn from nginx, a line per request (the tests' access log, not the unit's).
FORWARDED_LOG = (
    "%(m)s %(U)s host=%({host}i)s xff=%({x-forwarded-for}i)s proto=%({x-forwarded-proto}i)s "
    "ssl=%({x-forwarded-ssl}i)s protocol=%({x-forwarded-protocol}i)s fhost=%({x-forwarded-host}i)s "
    "fport=%({x-forwarded-port}i)s forwarded=%({forwarded}i)s"
)


@contextmanager
def gunicorn(tmp: Path, database_url: str, public_url: str | None = "http://fremforge.test") -> Iterator[int]:
    """`gunicorn --workers WORKERS --preload --bind 127.0.0.1:PORT wsgi:app` in production mode (as the README runs
    it), webhooks configured, no GitHub App (so FREMFORGE_PUBLIC_URL may be left unset: `public_url=None`); its
    port. Its access log (tmp/gunicorn-access.log) says which forwarding headers reached it."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FREMFORGE_")}
    env.update(
        FREMFORGE_ENV="production",
        FREMFORGE_DATABASE_URL=database_url,
        FREMFORGE_SECRET_KEY=secrets.token_urlsafe(48),
        FREMFORGE_GITHUB_WEBHOOK_SECRET=WEBHOOK_SECRET,
        FREMFORGE_CHECKPOINT_KEY_FILE=str(tmp / "checkpoint_ed25519.pem"),
        PYTHONDONTWRITEBYTECODE="1",
        HOME=str(tmp / "home"),  # where gunicorn would put its control socket: gunicorn.conf.py turns it off
    )
    (tmp / "home").mkdir(exist_ok=True)
    if public_url is not None:
        env["FREMFORGE_PUBLIC_URL"] = public_url
    cmd = [str(GUNICORN), "--workers", str(WORKERS), "--preload", "--bind", f"{HOST}:{port}"]
    cmd += ["--access-logfile", str(tmp / "gunicorn-access.log"), "--access-logformat", FORWARDED_LOG]
    cmd.append("wsgi:app")
    log = tmp / "gunicorn.log"
    with running(cmd, log, lambda: answers_healthz(port), env):
        yield port
    assert not (tmp / "home" / ".gunicorn").exists()  # no control socket shared by every instance on the host
    trouble = [line for line in log.read_text(errors="replace").splitlines() if SERVER_TROUBLE.search(line)]
    assert not trouble, "gunicorn logged trouble:\n" + "\n".join(trouble[:20])


@dataclass
class Nginx:
    port: int
    prefix: Path
    tls: ssl.SSLContext | None = None  # set when nginx speaks TLS on `port`
    http_port: int | None = None  # then: the plain-HTTP server that redirects to https

    def access_log(self) -> list[str]:
        return (self.prefix / "access.log").read_text().splitlines()


@contextmanager
def nginx(tmp: Path, gunicorn_port: int, tls: bool = False) -> Iterator[Nginx]:
    """nginx with the site config (its ports changed; with `tls`, its documented TLS lines in place), checked with
    `nginx -t` first, in the foreground."""
    binary = nginx_binary()
    prefix = tmp / "nginx"
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / sub).mkdir(parents=True)
    port = free_port()
    site_tls = Tls(*self_signed(prefix), http_port=free_port()) if tls else None
    context = client_tls(site_tls.cert) if site_tls else None
    (prefix / "fremforge.conf").write_text(render_site(port, gunicorn_port, site_tls))
    # Started as root (as in CI), nginx runs its workers as `nobody`, who cannot reach this test's directory.
    user = "user root;\n" if os.geteuid() == 0 else ""
    (prefix / "nginx.conf").write_text(WRAPPER.format(user=user, prefix=prefix))
    base = [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")]
    checked = subprocess.run([*base, "-t"], capture_output=True, text=True, timeout=STOP)
    assert checked.returncode == 0, f"nginx -t refused the config:\n{checked.stderr}"
    with running([*base, "-g", "daemon off;"], prefix / "nginx.out", lambda: answers_healthz(port, context)):
        yield Nginx(port, prefix, context, site_tls.http_port if site_tls else None)


@contextmanager
def production(
    tmp: Path, database_url: str, public_url: str | None = "http://fremforge.test", tls: bool = False
) -> Iterator[tuple[Nginx, int]]:
    """gunicorn behind nginx, as the README documents them: (nginx, gunicorn's port)."""
    nginx_binary()  # skipped (failed in strict mode) before anything starts when nginx is not installed
    with gunicorn(tmp, database_url, public_url) as gunicorn_port, nginx(tmp, gunicorn_port, tls) as proxy:
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
    tls: ssl.SSLContext | None = None,
) -> Reply:
    """One request on a new connection (over TLS with `tls`), answered within `timeout` seconds or an error."""
    started = time.monotonic()
    if tls is not None:
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(HOST, port, timeout=timeout, context=tls)
    else:
        conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, time.monotonic() - started)


def answers_healthz(port: int, tls: ssl.SSLContext | None = None) -> bool:
    try:
        return call(port, "GET", "/healthz", timeout=2, tls=tls).status == 200
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


# ---------------------------------------------------------------- through nginx: what the set-up serves


SCANS_PAGE = "/admin/orgs/acme/code-security/image-scanning"
# What a client may claim; nginx replaces or drops each (the site's proxy_set_header lines). The app would read none
# of X-Forwarded-For/-Host/-Port or Forwarded anyway (no ProxyFix: gunicorn takes the scheme from X-Forwarded-Proto
# alone, from 127.0.0.1), and Host is nginx's $host.
CLAIMS = {
    "X-Forwarded-For": "203.0.113.9",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Port": "8443",
    "X-Forwarded-Ssl": "on",
    "X-Forwarded-Protocol": "ssl",
    "Forwarded": "for=203.0.113.9;proto=https;host=evil.example",
}
FORWARDED_BY_NGINX = "host=fremforge.test xff=127.0.0.1 proto={} ssl=- protocol=- fhost=- fport=- forwarded=-"


def login_link(app: Flask) -> str:
    """A one-time admin sign-in link's token for acme, as `flask --app wsgi admin login-url acme` makes one."""
    with app.app_context():
        session = db.session()
        org = orgs.by_slug(session, "acme")
        assert org is not None
        with write_transaction(session):
            return login_links.create(session, org, actor="test").token


def sign_in(proxy: Nginx, token: str, host: str) -> str:
    """Sign in through nginx with a one-time link, as a browser does (the link's page, then its form): the cookie."""
    page = call(proxy.port, "GET", f"/admin/login/link/{token}", headers={"Host": host}, tls=proxy.tls)
    assert page.status == 200, page.body[:500]
    cookie = page.headers["set-cookie"].split(";", 1)[0]
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.body.decode())
    assert csrf, "no CSRF token on the sign-in link's page"
    form = {"Host": host, "Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}
    body = urlencode({"csrf_token": csrf[1]}).encode()
    done = call(proxy.port, "POST", f"/admin/login/link/{token}", body, form, tls=proxy.tls)
    assert (done.status, done.headers.get("location")) == (303, SCANS_PAGE), done.body[:500]
    return done.headers["set-cookie"].split(";", 1)[0]


def forwarded(tmp: Path, path: str) -> list[str]:
    """What gunicorn's access log says reached it for `path`: host, X-Forwarded-For/-Proto/-Ssl/-Protocol."""
    found = re.finditer(r"\b[A-Z]+ (\S+) (host=.*? forwarded=\S*)", (tmp / "gunicorn-access.log").read_text())
    return [m[2] for m in found if m[1] == path]  # (the app's logging may put a prefix before gunicorn's line)


def test_uploads_webhooks_admin_pages_and_the_front_page_go_through_nginx(app: Flask, tmp_path: Path) -> None:
    """No FREMFORGE_PUBLIC_URL (allowed without a GitHub App): the links follow what nginx forwards, http here,
    whatever the client claims."""
    make_org(app)
    token = make_token(app)
    link = login_link(app)
    host = {"Host": "fremforge.test"}
    upload = json.dumps(seed()).encode()
    ping = ping_of_size(200)
    with production(tmp_path, app.config["DATABASE_URL"], public_url=None) as (proxy, _):
        front = call(proxy.port, "GET", "/", headers=host)
        document = call(proxy.port, "GET", "/api/v1/openapi.json", headers=host)
        auth = {**host, **CLAIMS, "X-Forwarded-Proto": "https", "Authorization": f"Bearer {token}"}
        stored = call(proxy.port, "POST", UPLOAD_PATH, upload, {**auth, "Content-Type": "application/json"})
        hook = call(proxy.port, "POST", "/webhooks/github", ping, {**signed(ping), **host, **CLAIMS})
        cookie = sign_in(proxy, link, "fremforge.test")
        scans = call(proxy.port, "GET", SCANS_PAGE, headers={**host, "Cookie": cookie})
        refused = call(proxy.port, "GET", SCANS_PAGE, headers=host)  # no session: sent to sign in
        log = proxy.access_log()
    assert front.status == 200 and front.headers["content-type"].startswith("text/html"), front.body[:300]
    assert_front_page(front.body.decode())
    assert document.status == 200 and document.json()["openapi"].startswith("3.")
    assert stored.status == 202, stored.body[:500]
    answer = stored.json()
    assert answer["url"] == f"http://fremforge.test{SCANS_PAGE}/scans/{answer['scan_run_id']}"
    assert (hook.status, hook.json()) == (200, {"status": "ok"})
    assert scans.status == 200 and b"ghcr.io/acme/api:1" in scans.body, scans.body[:500]
    assert scans.headers["x-frame-options"] == "DENY" and scans.headers["cache-control"] == "no-store"
    assert refused.status in (302, 303) and "/admin/login" in refused.headers["location"]
    # Every one of them reached gunicorn through nginx, with nginx's own forwarding headers.
    assert all("upstream=-" not in line for line in log if " / " in line or "/admin/" in line or "findings" in line)
    # Review: nginx logged the one-time sign-in link whole (anyone reading the log could use it in its 10 minutes).
    assert all(link not in line for line in log) and any(SCANS_PAGE in line for line in log), log
    for path in (UPLOAD_PATH, "/webhooks/github", SCANS_PAGE, "/"):
        seen = forwarded(tmp_path, path)
        assert seen and set(seen) == {FORWARDED_BY_NGINX.format("http")}, (path, seen)


def test_a_raw_report_whose_query_fields_are_as_long_as_allowed_goes_through(app: Flask, tmp_path: Path) -> None:
    """A raw Trivy upload's context is its query: image_ref and the signature subject at 1,024 characters (their
    limit; here some needing percent-encoding) make a request line past gunicorn's default 4094 bytes."""
    make_org(app)
    token = make_token(app)
    image = "ghcr.io/acme/" + "%/" * 505  # 1,023 characters, each of the 1,010 percent-encoded in 3 bytes
    query = {"commit_sha": SHA_OF_LONG, "repo_full_name": "acme/api", "image_ref": image}
    query |= {"signature_status": "signed", "signature_subject": "repo:acme/api:ref:refs/heads/" + "x/" * 480}
    path = f"{UPLOAD_PATH}?{urlencode(query)}"
    assert len(path) > 4094
    report = json.dumps({"SchemaVersion": 2, "ArtifactName": "x", "Results": []}).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    with production(tmp_path, app.config["DATABASE_URL"]) as (proxy, gunicorn_port):
        through_nginx = call(proxy.port, "POST", path, report, headers)
        direct = call(gunicorn_port, "POST", path, report, headers)
    assert through_nginx.status == 202, through_nginx.body[:300]
    assert direct.status == 202, direct.body[:300]
    assert through_nginx.json()["scan_run_id"] != direct.json()["scan_run_id"]


SHA_OF_LONG = "c" * 40


def test_gunicorn_refuses_a_body_that_ends_before_its_content_length(app: Flask, tmp_path: Path) -> None:
    """A client sends a whole JSON upload, announces 100 bytes more and stops sending (half-closes): gunicorn's
    stream ends there, and the app answers 400 instead of storing what came."""
    make_org(app)
    token = make_token(app)
    body = json.dumps(seed()).encode()
    head = (
        f"POST {UPLOAD_PATH} HTTP/1.1\r\nHost: fremforge.test\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body) + 100}\r\nConnection: close\r\n\r\n"
    ).encode()
    with gunicorn(tmp_path, app.config["DATABASE_URL"]) as port:
        with socket.create_connection((HOST, port), timeout=PROMPT) as sock:
            sock.sendall(head + body)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        whole = call(
            port, "POST", UPLOAD_PATH, body, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        )
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 400"), answer[:500]
    error = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert (
        error["error"] == "bad_request"
        and f"ended after {len(body)} of the {len(body) + 100} bytes" in error["message"]
    )
    assert whole.status == 202, whole.body[:300]  # the same upload, whole: stored
    assert whole.json()["scan_run_id"] == 1  # the first scan stored: the short one was not


def raw(port: int, request: bytes) -> Reply:
    """`request` as it is, on a new connection; the answer read to its end (the server closes after a refusal)."""
    started = time.monotonic()
    with socket.create_connection((HOST, port), timeout=PROMPT) as sock:
        sock.sendall(request)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        data = resp.read()
    return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, time.monotonic() - started)


# Requests refused before the app sees them, each with the error code both gunicorn and nginx answer it with. The
# oversized ones carry markup, which must not come back.
REFUSED = {
    "a header field over 8 KiB": (
        b"GET /healthz HTTP/1.1\r\nHost: fremforge.test\r\nX-Big: <h1>" + b"x" * 9000 + b"\r\n\r\n",
        431,
        "header_fields_too_large",
    ),
    "a request line over 8 KiB": (
        b"GET /healthz?q=<h1>" + b"x" * 9000 + b" HTTP/1.1\r\nHost: fremforge.test\r\n\r\n",
        414,
        "uri_too_long",
    ),
    "a line that is not HTTP": (b"<h1>HELLO</h1> there\r\n\r\n", 400, "bad_request"),
}


@pytest.mark.parametrize("what", list(REFUSED))
def test_requests_refused_before_the_app_get_its_json_error_shape_from_gunicorn_and_nginx(
    what: str, tmp_path: Path
) -> None:
    request, status, code = REFUSED[what]
    with production(tmp_path, unused_sqlite(tmp_path)) as (proxy, gunicorn_port):
        answers = {"nginx": raw(proxy.port, request), "gunicorn": raw(gunicorn_port, request)}
        if what == "a line that is not HTTP":  # on the webhook route too, which has error pages of its own
            answers["nginx, webhooks"] = raw(
                proxy.port,
                b"POST /webhooks/github HTTP/1.1\r\nHost: fremforge.test\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",
            )
    for server, answer in answers.items():
        assert (answer.status, answer.headers.get("content-type")) == (status, "application/json"), (server, answer)
        assert answer.headers.get("x-content-type-options") == "nosniff", (server, answer)
        assert int(answer.headers["content-length"]) == len(answer.body), (server, answer)
        error = answer.json()
        assert (error["error"], error["details"]) == (code, []), (server, error)
        assert error["message"].endswith(".") and b"<h1>" not in answer.body, (server, error)


def test_the_apps_own_errors_pass_through_nginx_unchanged_and_its_error_pages_are_not_reachable(
    tmp_path: Path,
) -> None:
    with production(tmp_path, unused_sqlite(tmp_path)) as (proxy, gunicorn_port):
        through = call(proxy.port, "GET", "/healthz?q=%00")
        direct = call(gunicorn_port, "GET", "/healthz?q=%00")
        pages = [call(proxy.port, "GET", f"/.fremforge-errors/{name}") for name in ("bad_request", "uri_too_long")]
        coding = raw(proxy.port, b"POST /x HTTP/1.1\r\nHost: fremforge.test\r\nTransfer-Encoding: gzip\r\n\r\n")
    assert (coding.status, coding.json()["error"]) == (501, "not_implemented")  # nginx's own, as JSON (gunicorn: 400)
    assert (through.status, through.body) == (direct.status, direct.body) == (400, direct.body)
    assert b"NUL character" in through.body  # the app's own sentence, not nginx's page
    assert [page.status for page in pages] == [404, 404]


def test_nginx_answers_metrics_to_this_host_only(app: Flask, tmp_path: Path) -> None:
    """/metrics is open in the app without FREMFORGE_METRICS_TOKEN; the documented nginx passes it on from this host
    only (127.0.0.1), and refuses another address (127.0.0.2, another loopback address here) before gunicorn."""
    with production(tmp_path, app.config["DATABASE_URL"]) as (proxy, _):
        here = call(proxy.port, "GET", "/metrics")
        conn = http.client.HTTPConnection(HOST, proxy.port, timeout=PROMPT, source_address=("127.0.0.2", 0))
        try:
            conn.request("GET", "/metrics")
            elsewhere = conn.getresponse()
            elsewhere.read()
        finally:
            conn.close()
        deadline = time.monotonic() + PROMPT  # nginx logs a request once it has answered it: read until it has
        while (
            not any(line.startswith("403 GET /metrics") for line in proxy.access_log()) and time.monotonic() < deadline
        ):
            time.sleep(0.01)
        log = proxy.access_log()
    assert here.status == 200 and b"fremforge_uploads_total" in here.body, here.body[:300]
    assert elsewhere.status == 403
    assert "403 GET /metrics upstream=-" in log and "200 GET /metrics upstream=-" not in log, log


def test_behind_tls_in_nginx_the_app_builds_https_links(app: Flask, tmp_path: Path) -> None:
    """The site's documented TLS lines in place: the app, told https by nginx (X-Forwarded-Proto, which gunicorn
    trusts from 127.0.0.1), hands out https links; plain HTTP is redirected to https."""
    make_org(app)
    token = make_token(app)
    link = login_link(app)
    host = {"Host": "fremforge.test"}
    upload = json.dumps(seed()).encode()
    with production(tmp_path, app.config["DATABASE_URL"], public_url=None, tls=True) as (proxy, _):
        assert proxy.tls is not None and proxy.http_port is not None
        front = call(proxy.port, "GET", "/", headers=host, tls=proxy.tls)
        claims = {**host, **CLAIMS, "X-Forwarded-Proto": "http", "Authorization": f"Bearer {token}"}
        stored = call(
            proxy.port, "POST", UPLOAD_PATH, upload, {**claims, "Content-Type": "application/json"}, tls=proxy.tls
        )
        cookie = sign_in(proxy, link, "fremforge.test")
        scans = call(proxy.port, "GET", SCANS_PAGE, headers={**host, "Cookie": cookie}, tls=proxy.tls)
        plain = call(proxy.http_port, "GET", f"{SCANS_PAGE}?x=1", headers=host)
    assert front.status == 200
    assert_front_page(front.body.decode())
    assert stored.status == 202, stored.body[:500]
    answer = stored.json()
    assert answer["url"] == f"https://fremforge.test{SCANS_PAGE}/scans/{answer['scan_run_id']}"
    assert scans.status == 200 and b"ghcr.io/acme/api:1" in scans.body
    assert (plain.status, plain.headers["location"]) == (301, f"https://fremforge.test{SCANS_PAGE}?x=1")
    for path in (UPLOAD_PATH, SCANS_PAGE, "/"):
        seen = forwarded(tmp_path, path)
        assert seen and set(seen) == {FORWARDED_BY_NGINX.format("https")}, (path, seen)


def assert_front_page(page: str) -> None:
    assert "<title>fremforge image scanning</title>" in page and "<h1>fremforge image scanning</h1>" in page
    assert 'href="/admin/login"' in page and 'href="/api/v1/openapi.json"' in page


def test_the_front_page_names_the_service_and_links_the_sign_in_and_the_api_document(app: Flask) -> None:
    client = app.test_client()
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert_front_page(page.get_data(as_text=True))
    assert page.headers["X-Frame-Options"] == "DENY" and "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Content-Type-Options"] == "nosniff" and page.headers["Cache-Control"] == "no-store"
    missing = client.get("/nothing-here")  # Werkzeug's own page for a path no route serves, sent the same way
    assert missing.status_code == 404 and missing.headers["Cache-Control"] == "no-store"
    assert (
        missing.headers["X-Frame-Options"] == "DENY"
        and "frame-ancestors 'none'" in missing.headers["Content-Security-Policy"]
    )
    assert (
        missing.headers["X-Content-Type-Options"] == "nosniff" and missing.headers["Referrer-Policy"] == "no-referrer"
    )
    for href in re.findall(r'href="([^"]+)"', page.get_data(as_text=True)):
        with client.get(href) as linked:  # every link on it answers (closed: a static file is streamed)
            assert linked.status_code == 200, href
    assert client.head("/").status_code == 200 and client.post("/").status_code == 405


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
