#!/usr/bin/env python3
"""Upload a Trivy JSON report to fremforge image scanning: the script behind action.yml (Python 3.8+, no packages).

Inputs come from the environment (action.yml maps its inputs onto these names; run by hand, set them yourself):

  FREMFORGE_URL             the app's base URL, e.g. https://fremforge.example.com           (required)
  FREMFORGE_ORG             the org's slug                                                  (required)
  FREMFORGE_TOKEN           a token of that org with the scope findings:write               (required, never printed)
  FREMFORGE_REPORT          the report `trivy image --format json` wrote (or it gzipped)     (required)
  FREMFORGE_IMAGE_REF       the image scanned; empty: the server takes the report's ArtifactName
  FREMFORGE_COMMIT_SHA, FREMFORGE_REPO_FULL_NAME, FREMFORGE_REF
                            the commit the image was built from, its repository (owner/name), its git ref
  FREMFORGE_SIGNATURE_STATUS, FREMFORGE_SIGNATURE_ISSUER, FREMFORGE_SIGNATURE_SUBJECT     (optional)

The report is gzipped and POSTed as a raw Trivy upload (POST /api/v1/orgs/{org}/image-scans/findings, the
fields above as query parameters) with an Idempotency-Key that stays the same on every retry of this run, so a
retry never stores the scan twice. 5xx, 429, 409 (the same key still in flight) and connection errors are tried
again, at most FREMFORGE_UPLOAD_ATTEMPTS times in all (default 5), after Retry-After when the server sends one
(a 409 "in flight" is asked again for up to 150 s without spending attempts: the first request's own answer is
awaited, even when it died and its key waits out the server's 2-minute lease),
else after 2, 4, 8, … seconds, never more than FREMFORGE_UPLOAD_MAX_WAIT seconds (default 60) at a time. Any
other answer, or the last one, that is not a 2xx fails: exit status 1 (2 for inputs that cannot work).

Written for GitHub Actions: the answer's scan-run-id, status and url go to $GITHUB_OUTPUT, a summary to
$GITHUB_STEP_SUMMARY, and an error annotation to the log, when those are there.
"""

from __future__ import annotations

import contextlib
import email.utils
import gzip
import hashlib
import html
import http.client
import io
import json
import os
import random
import re
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

VERSION = "1"
USER_AGENT = f"fremforge-upload-action/{VERSION} python/{sys.version_info[0]}.{sys.version_info[1]}"
GZIP_MAGIC = b"\x1f\x8b"
RETRIED_STATUSES = {409, 429}  # and every 5xx
IN_FLIGHT_PATIENCE = (
    150.0  # seconds of 409 "in flight" waited for: the server's lease on a dead request's key, and more
)
SEVERITIES = ("critical", "high", "medium", "low", "unknown")
QUERY = (  # query parameter <- environment variable
    ("image_ref", "FREMFORGE_IMAGE_REF"),
    ("commit_sha", "FREMFORGE_COMMIT_SHA"),
    ("repo_full_name", "FREMFORGE_REPO_FULL_NAME"),
    ("ref", "FREMFORGE_REF"),
    ("signature_status", "FREMFORGE_SIGNATURE_STATUS"),
    ("signature_issuer", "FREMFORGE_SIGNATURE_ISSUER"),
    ("signature_subject", "FREMFORGE_SIGNATURE_SUBJECT"),
)
ENV_INPUTS = ("FREMFORGE_URL", "FREMFORGE_ORG", "FREMFORGE_TOKEN", "FREMFORGE_REPORT", *(name for _, name in QUERY))
OUTPUTS = ("scan-run-id", "status", "url")  # what goes to $GITHUB_OUTPUT (action.yml's outputs)
# The environment variables of GitHub Actions that make one run's key (a re-run is a new upload: its attempt differs).
RUN_IDENTITY = ("GITHUB_REPOSITORY", "GITHUB_RUN_ID", "GITHUB_RUN_ATTEMPT", "GITHUB_JOB", "GITHUB_ACTION")


class Failed(Exception):
    """The upload did not happen (or was refused): the message says why; `status` is the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class Settings:
    """The retry knobs (tests make the waits short with FREMFORGE_UPLOAD_TIME_SCALE, never the count)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.attempts = _number(env, "FREMFORGE_UPLOAD_ATTEMPTS", 5, int, low=1, high=20)
        self.max_wait = _number(env, "FREMFORGE_UPLOAD_MAX_WAIT", 60.0, float, low=0, high=600)
        self.backoff = _number(env, "FREMFORGE_UPLOAD_BACKOFF", 2.0, float, low=0, high=600)
        self.timeout = _number(env, "FREMFORGE_UPLOAD_TIMEOUT", 120.0, float, low=1, high=3600)
        self.time_scale = _number(env, "FREMFORGE_UPLOAD_TIME_SCALE", 1.0, float, low=0, high=1)


def _number(env: dict[str, str], name: str, default: Any, kind: Any, low: float, high: float) -> Any:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise Failed(f"{name}={raw!r} is not a number", 2) from None
    if not low <= value <= high:
        raise Failed(f"{name}={raw!r} is outside {low:g}..{high:g}", 2)
    return value


# ---------------------------------------------------------------- output


class Out:
    """Everything printed goes through here, with the token cut out wherever it might appear."""

    def __init__(self, secret: str, annotate: bool) -> None:
        self.secret = secret
        self.annotate = annotate  # in GitHub Actions: errors as annotations too

    def clean(self, text: str) -> str:
        return text.replace(self.secret, "***") if self.secret else text

    def say(self, text: str) -> None:
        # One line each: a server's text with a line break cannot begin a line the runner reads as a command.
        print(" ".join(self.clean(text).splitlines()), flush=True)

    def error(self, title: str, text: str) -> None:
        """A line the log shows as is, then the same as a GitHub error annotation (one line, escaped)."""
        self.say(f"fremforge: {title}: {text}")
        if self.annotate:
            self.say(f"::error title={_escape_property(title)}::{_escape_data(self.clean(text))}")


def _escape_data(text: str) -> str:
    """A workflow command's message: %, CR and LF escaped, so a server's text cannot start a command of its own."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def write_outputs(path: str, values: dict[str, str]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for name, value in values.items():
            f.write(f"{name}={' '.join(str(value).splitlines())}\n")


def append(path: str, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def _md(text: Any) -> str:
    """A value in a Markdown table cell: pipes, backticks, angle brackets and newlines cannot break out of it."""
    out = str(text).replace("\\", "\\\\").replace("|", "\\|").replace("`", "'")
    return " ".join(out.replace("<", "&lt;").replace(">", "&gt;").splitlines())


def summary_of(answer: dict[str, Any], image_ref: str) -> str:
    rows = [("Status", f"**{_md(answer.get('status', ''))}**")]
    if answer.get("scan_run_id") is not None:
        link = str(answer.get("url") or "")
        scan = f"[{_md(answer['scan_run_id'])}]({_md(link)})" if link.startswith(("https://", "http://")) else ""
        rows.append(("Scan", scan or _md(answer["scan_run_id"])))
    if image_ref:
        rows.append(("Image", f"`{_md(image_ref)}`"))
    counts = answer.get("severity_counts")
    if isinstance(counts, dict):
        rows.append(("Findings", ", ".join(f"{_md(counts.get(s, 0))} {s}" for s in SEVERITIES)))
        rows.append(("Fixable", _md(answer.get("fixable", ""))))
    if "accepted" in answer:
        rows.append(("Stored", f"{_md(answer['accepted'])} (duplicates: {_md(answer.get('duplicates', 0))})"))
    status = answer.get("commit_status")
    if isinstance(status, dict):
        commit = f"{_md(status.get('context'))}: {_md(status.get('state'))}, {_md(status.get('description'))}"
        rows.append(("Commit status", commit))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"### fremforge image scan\n\n| | |\n| --- | --- |\n{table}\n\n"


# ---------------------------------------------------------------- the request


class NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer (and a failure): following it would send the token, or a POST as a GET, elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def read_report(path: str) -> tuple[bytes, str]:
    """The report's bytes gzipped (a report gzipped already is sent as it is), and its SHA-256."""
    if not path:
        raise Failed("no report given (the input `report`: the file `trivy image --format json` wrote)", 2)
    if not os.path.exists(path):
        raise Failed(f"the report {path} does not exist: did the Trivy step write it there?")
    digest = hashlib.sha256()
    packed = io.BytesIO()
    first = b""
    size = 0
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 20)
            if head.startswith(GZIP_MAGIC):
                out: Any = packed
            else:
                out = gzip.GzipFile(fileobj=packed, mode="wb", compresslevel=6, mtime=0)
            chunk = head
            while chunk:
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
                if not first:  # the first character after white space and a byte-order mark (the server takes both)
                    start = chunk.lstrip()
                    first = (start[3:] if start.startswith(b"\xef\xbb\xbf") else start).lstrip()[
                        :1
                    ]  # 3.8: no removeprefix
                chunk = f.read(1 << 20)
            if out is not packed:
                out.close()
    except OSError as exc:
        raise Failed(f"the report {path} cannot be read: {exc.strerror or exc}") from None
    if size == 0:
        raise Failed(f"the report {path} is empty: did the Trivy step fail?")
    if not head.startswith(GZIP_MAGIC) and first not in (b"{", b"["):
        raise Failed(f"the report {path} is not JSON (run Trivy with --format json)")
    return packed.getvalue(), digest.hexdigest()


def idempotency_key(env: dict[str, str], org: str, report_sha256: str) -> str:
    """The same for every attempt of this upload; in GitHub Actions the same for this step of this run attempt (a
    re-run of the job uploads again: its run attempt differs). Outside Actions, new for each invocation."""
    if not env.get("GITHUB_RUN_ID"):
        return f"fremforge-upload-{uuid.uuid4().hex}"
    parts = [f"{name}={env.get(name, '')}" for name in RUN_IDENTITY]
    parts += [f"org={org}", f"report={report_sha256}"]
    parts += [f"{param}={env.get(name, '')}" for param, name in QUERY]
    return "gha-" + hashlib.sha256("\n".join(parts).encode()).hexdigest()


def upload_url(env: dict[str, str]) -> str:
    base = (env.get("FREMFORGE_URL") or "").strip().rstrip("/")
    parts = urllib.parse.urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Failed(
            f"url {base!r} is not an http(s) URL (the fremforge app's base, e.g. https://fremforge.example.com)", 2
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise Failed("url must be the app's base URL alone: no query, fragment or credentials", 2)
    try:
        parts.port  # noqa: B018  (a port that is not a number raises here, not in the middle of a request)
    except ValueError:
        raise Failed(f"url {base!r} has a port that is not a number", 2) from None
    org = (env.get("FREMFORGE_ORG") or "").strip()
    if not org:
        raise Failed("no org given (the input `org`: the organisation's slug in fremforge)", 2)
    query = [(param, env[name].strip()) for param, name in QUERY if (env.get(name) or "").strip()]
    path = f"/api/v1/orgs/{urllib.parse.quote(org, safe='')}/image-scans/findings"
    return base + path + ("?" + urllib.parse.urlencode(query) if query else "")


def check_token(token: str) -> str:
    token = token.strip()
    if not token:
        raise Failed("no token given (the input `token`: a fremforge token with the scope findings:write)", 2)
    if any(not (33 <= ord(c) <= 126) for c in token):
        # Said without the token: http.client would name the whole header in its error.
        raise Failed("the token holds spaces or characters that cannot go in an HTTP header", 2)
    return token


def retry_after(value: str | None, now: float) -> float | None:
    """Retry-After's seconds (a number of seconds or an HTTP date), or None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def backoff(settings: Settings, attempt: int, asked: float | None) -> float:
    """Seconds to wait before attempt `attempt + 1`: what the server asked, else 2, 4, 8, … with a little jitter;
    never over FREMFORGE_UPLOAD_MAX_WAIT."""
    if asked is None:
        asked = settings.backoff * (2 ** (attempt - 1)) * (1 + random.random() / 4)
    return min(asked, settings.max_wait)


def send(url: str, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int, dict[str, str], bytes]:
    """One POST: (status, headers with lower-case names, body). Raises OSError and http.client's errors."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    opener = urllib.request.build_opener(NoRedirects)
    try:
        with opener.open(request, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        with err:
            data = err.read()
        return err.code, {k.lower(): v for k, v in (err.headers or {}).items()}, data


def transient(exc: BaseException) -> bool:
    """A connection error worth another attempt (refused, reset, timed out, DNS); not a certificate refused."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    return not isinstance(reason, (ssl.SSLCertVerificationError, ssl.CertificateError, ValueError))


def describe(status: int, data: bytes) -> tuple[str, dict[str, Any] | None]:
    """An error answer in one readable line (the API's {error, message, details}) and its JSON if it was JSON."""
    try:
        answer = json.loads(data.decode("utf-8")) if data else None
    except (UnicodeDecodeError, ValueError):
        answer = None
    if isinstance(answer, dict) and ("error" in answer or "message" in answer):
        text = f"HTTP {status} {answer.get('error', '')}: {answer.get('message', '')}".replace(" :", ":")
        details = answer.get("details")
        if isinstance(details, list) and details:
            shown = []
            for d in details[:5]:
                if isinstance(d, dict):
                    where = d.get("path") or d.get("field") or ""
                    shown.append(f"{where} {d.get('message', d.get('code', ''))}".strip())
            more = f" (and {len(details) - 5} more)" if len(details) > 5 else ""
            if shown:
                text += " [" + "; ".join(shown) + more + "]"
        return text, answer
    text = html.unescape(re.sub(r"<[^>]*>", " ", data[:1000].decode("utf-8", "replace")))  # a proxy's page, as read
    snippet = " ".join(text.split())[:300]
    return f"HTTP {status}" + (f": {snippet}" if snippet else ""), None


def upload(env: dict[str, str], out: Out) -> dict[str, Any]:
    """Do the upload with its retries; the 2xx answer's JSON, or Failed."""
    settings = Settings(env)
    url = upload_url(env)
    token = check_token(env.get("FREMFORGE_TOKEN") or "")
    body, report_sha256 = read_report((env.get("FREMFORGE_REPORT") or "").strip())
    key = idempotency_key(env, (env.get("FREMFORGE_ORG") or "").strip(), report_sha256)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "::1", "localhost"):
        out.say(
            f"fremforge: warning: {parts.netloc} is reached over plain HTTP: the token crosses the network unencrypted"
        )
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
        "Accept": "application/json",
        "Idempotency-Key": key,
        "User-Agent": USER_AGENT,
    }
    shown_url = urllib.parse.urlunsplit(parts._replace(query=""))
    out.say(
        f"fremforge: uploading {env.get('FREMFORGE_REPORT', '').strip()} ({len(body)} bytes gzipped) to {shown_url}"
    )
    out.say(f"fremforge: Idempotency-Key: {key}")
    last = ""
    attempt, waited_in_flight = 0, 0.0
    while attempt < settings.attempts:
        attempt += 1
        asked: float | None = None
        try:
            status, answer_headers, data = send(url, body, headers, settings.timeout)
        except (OSError, http.client.HTTPException) as exc:
            if not transient(exc):
                raise Failed(f"cannot reach {parts.netloc}: {_reason(exc)}") from None
            last = f"cannot reach {parts.netloc}: {_reason(exc)}"
        else:
            if 200 <= status < 300:
                try:
                    answer = json.loads(data.decode("utf-8"))
                except (UnicodeDecodeError, ValueError):
                    raise Failed(f"HTTP {status}, but the answer is not JSON: is {shown_url} fremforge?") from None
                if not isinstance(answer, dict):
                    raise Failed(f"HTTP {status}, but the answer is not a JSON object")
                if answer_headers.get("idempotent-replayed") == "true":
                    out.say("fremforge: the server had this upload already (same Idempotency-Key): its first answer")
                return answer
            text, error = describe(status, data)
            if not (status >= 500 or status in RETRIED_STATUSES):
                where = answer_headers.get("location")
                hint = f" (the input `url` must be the app's base URL; it answered Location: {where})" if where else ""
                hint = hint or (" (the input `url` must be the app's base URL)" if 300 <= status < 400 else "")
                raise Failed(f"{text}{hint}")
            last = text
            asked = retry_after(answer_headers.get("retry-after"), time.time())
            in_flight = isinstance(error, dict) and error.get("error") == "idempotency_key_in_flight"
            if status == 409 and in_flight and waited_in_flight < IN_FLIGHT_PATIENCE:
                # The first request with this key is still running, or died and holds its key until the server's
                # lease (2 minutes) ends: waited for without spending attempts, so the upload it made is the answer.
                attempt -= 1
                wait = max(min(asked if asked is not None else 2.0, settings.max_wait), 1.0)
                waited_in_flight += wait
                said = last.rstrip(".")
                out.say(f"fremforge: {said}: the upload with this key is still in flight; asking again in {wait:g} s")
                time.sleep(wait * settings.time_scale)
                continue
        if attempt == settings.attempts:
            break
        wait = backoff(settings, attempt, asked)
        because = f"Retry-After: {asked:g} s" if asked is not None else "backing off"
        out.say(
            f"fremforge: attempt {attempt} of {settings.attempts}: {last.rstrip('.')}; trying again in {wait:.1f} s"
            f" ({because})"
        )
        time.sleep(wait * settings.time_scale)
    raise Failed(f"{last} (gave up after {settings.attempts} attempts)")


def _reason(exc: BaseException) -> str:
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, socket.timeout):
        return "timed out"
    text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    return str(text)


def pull_request_ref(env: dict[str, str]) -> str:
    """The ref to send: FREMFORGE_REF, unless it is the base branch's a `pull_request_target` run gives (github.ref):
    then the pull request's own, refs/pull/N/merge (N from the event's payload). A scan of a pull request's head sent
    with its base's ref would pass for a scan of the base, the baseline of every pull request into it."""
    ref = (env.get("FREMFORGE_REF") or "").strip()
    if env.get("GITHUB_EVENT_NAME") != "pull_request_target" or ref != (env.get("GITHUB_REF") or "").strip():
        return ref
    try:
        with open(env.get("GITHUB_EVENT_PATH") or "", encoding="utf-8") as f:
            number = json.load(f)["pull_request"]["number"]
    except (OSError, ValueError, KeyError, TypeError):
        return ref
    return f"refs/pull/{number}/merge" if isinstance(number, int) and not isinstance(number, bool) else ref


def main(env: dict[str, str] | None = None) -> int:
    env = dict(os.environ if env is None else env)
    env["FREMFORGE_REF"] = pull_request_ref(env)
    out = Out((env.get("FREMFORGE_TOKEN") or "").strip(), annotate=env.get("GITHUB_ACTIONS") == "true")
    summary_path = env.get("GITHUB_STEP_SUMMARY") or ""
    try:
        answer = upload(env, out)
    except Failed as failed:
        out.error("fremforge upload failed", str(failed))
        if summary_path:
            with contextlib.suppress(OSError):
                append(summary_path, out.clean(f"### fremforge image scan\n\n**Upload failed**: {_md(failed)}\n\n"))
        return failed.status
    scan_id = answer.get("scan_run_id")
    status = str(answer.get("status", ""))
    url = str(answer.get("url") or "")
    counts = answer.get("severity_counts")
    line = f"fremforge: status {status}"
    if scan_id is not None:
        line = f"fremforge: scan {scan_id} stored, status {status}"
    if isinstance(counts, dict):
        line += " (" + ", ".join(f"{counts.get(s, 0)} {s}" for s in SEVERITIES) + ")"
    out.say(line)
    if url:
        out.say(f"fremforge: {url}")
    commit_status = answer.get("commit_status")
    if isinstance(commit_status, dict):
        out.say(
            f"fremforge: commit status {commit_status.get('context')}: {commit_status.get('state')}, "
            f"{commit_status.get('description')}"
        )
    outputs = {"scan-run-id": "" if scan_id is None else str(scan_id), "status": status, "url": url}  # OUTPUTS
    problems: list[str] = []
    if env.get("GITHUB_OUTPUT"):
        try:
            write_outputs(env["GITHUB_OUTPUT"], outputs)
        except OSError as exc:
            problems.append(f"cannot write $GITHUB_OUTPUT: {exc}")
    if summary_path:
        try:
            append(summary_path, out.clean(summary_of(answer, (env.get("FREMFORGE_IMAGE_REF") or "").strip())))
        except OSError as exc:
            out.say(f"fremforge: warning: cannot write the step summary: {exc}")
    if problems:
        out.error("fremforge upload", "; ".join(problems))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
