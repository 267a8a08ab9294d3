"""The documented production set-up: make run's restarter, the systemd units, the environment file example, and the
backup and restore runbook (deploy/BACKUP.md) run against PostgreSQL."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from tests.conftest import postgres_base_url, skip_or_fail

ROOT = Path(__file__).resolve().parent.parent
KEEP_RUNNING = ROOT / "deploy" / "keep-running.sh"
CHILD = "import os, sys, time; open(sys.argv[1], 'a').write(f'{os.getpid()}\\n'); time.sleep(60)"


def pids(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def wait_for(condition, seconds: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_killed_worker_is_started_again_and_a_stop_stops_both(tmp_path):
    started = tmp_path / "started"
    proc = subprocess.Popen(["bash", str(KEEP_RUNNING), sys.executable, "-c", CHILD, str(started)])
    try:
        wait_for(lambda: len(pids(started)) == 1)
        first = pids(started)[0]
        os.kill(first, signal.SIGKILL)  # the worker dies, whatever the reason
        wait_for(lambda: len(pids(started)) == 2)
        second = pids(started)[1]
        assert second != first and alive(second)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        wait_for(lambda: not alive(second))  # the worker is stopped with it, not left behind
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in pids(started):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_make_run_and_the_systemd_units_restart_the_worker():
    makefile = (ROOT / "Makefile").read_text()
    assert "deploy/keep-running.sh $(BIN)/flask --app wsgi worker" in makefile
    for unit in ("fremforge-worker.service", "fremforge-web.service"):
        text = (ROOT / "deploy" / unit).read_text()
        assert "Restart=always" in text and "KillSignal=SIGTERM" in text


# ---------------------------------------------------------------- the systemd units, the environment file


UNITS = ("fremforge-web.service", "fremforge-worker.service")
ENV_EXAMPLE = ROOT / "deploy" / "fremforge.env.example"
# Spec section 8's settings (FREMFORGE_ + each); with app.config.DEFAULTS, what the example must name.
SPEC_SETTINGS = {
    "DATABASE_URL",
    "SECRET_KEY",
    "PUBLIC_URL",
    "GITHUB_API_URL",
    "GITHUB_APP_ID",
    "GITHUB_PRIVATE_KEY",
    "GITHUB_PRIVATE_KEY_FILE",
    "GITHUB_WEBHOOK_SECRET",
    "GITHUB_CLIENT_ID",
    "GITHUB_CLIENT_SECRET",
    "MAX_UPLOAD_MB",
    "MAX_FINDINGS",
    "CHECKPOINT_KEY_FILE",
    "ENV",
    "LOG_FORMAT",
    "METRICS_TOKEN",
    "RATE_LIMIT",
}
SECRETS = ("SECRET_KEY", "GITHUB_PRIVATE_KEY", "GITHUB_WEBHOOK_SECRET", "GITHUB_CLIENT_SECRET", "METRICS_TOKEN")
SETTING = re.compile(r"^(#\s*)?FREMFORGE_([A-Z0-9_]+)=(.*)$")


# The files that tell an installer how to make /etc/fremforge and its env file.
DOCUMENTS = ("README.md", "deploy/fremforge.env.example", "deploy/BACKUP.md", *(f"deploy/{unit}" for unit in UNITS))
MODE = re.compile(r"(?<![0-9])0[0-7]{3}(?![0-9])")


def test_every_mention_of_the_env_files_mode_says_0640_root_fremforge_in_a_0750_folder():
    """Review: the README's prose and both units' headers said /etc/fremforge/env is 0600, which the fremforge user
    could not read for `db upgrade` and deploy/BACKUP.md (the README's install and the example make it 0640
    root:fremforge, in a folder 0750 root:fremforge). Each line naming /etc/fremforge and a mode says that."""
    mentions = {}
    for name in DOCUMENTS:
        for number, line in enumerate((ROOT / name).read_text().splitlines(), 1):
            modes = MODE.findall(line)
            if "/etc/fremforge" not in line or not modes:
                continue
            where = f"{name}:{number}: {line.strip()}"
            mentions[name] = mentions.get(name, 0) + 1
            assert set(modes) <= {"0640", "0750"}, f"/etc/fremforge (the env file 0640, its folder 0750): {where}"
            assert "root:fremforge" in line or "-o root -g fremforge" in line, f"owner root, group fremforge: {where}"
            assert "0640" not in modes or "/etc/fremforge/env" in line, f"0640 is the env file's mode: {where}"
    assert set(mentions) >= {"README.md", "deploy/fremforge.env.example", *(f"deploy/{unit}" for unit in UNITS)}


def env_example_settings() -> dict[str, tuple[bool, str]]:
    """Each FREMFORGE_ setting the example names: (active, value); a commented one is not active."""
    found: dict[str, tuple[bool, str]] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = SETTING.match(line)
        if match:
            assert match[2] not in found, f"FREMFORGE_{match[2]} twice in {ENV_EXAMPLE.name}"
            found[match[2]] = (match[1] is None, match[3])
    return found


def active_env(path: Path = ENV_EXAMPLE, **values: str) -> dict[str, str]:
    """The settings an environment file sets (as systemd and `set -a; . FILE` read these simple lines)."""
    env = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", name), f"not a KEY=value line: {line!r}"
            assert not re.search(r"[\s\"'`$\\;&|<>]", value), f"a value a shell or systemd would read otherwise: {line}"
            env[name] = value
    for name, value in values.items():
        assert name in env, f"{name} is not set in {path.name}"
        env[name] = value
    return env


def render_env(path: Path, **values: str) -> Path:
    """The example with some active settings changed, written to `path` (as an installer edits /etc/fremforge/env)."""
    text = ENV_EXAMPLE.read_text()
    for name, value in values.items():
        text, n = re.subn(rf"(?m)^{name}=.*$", f"{name}={value}", text)
        assert n == 1, f"{name} is not set in {ENV_EXAMPLE.name}"
    path.write_text(text)
    return path


def test_the_env_example_names_every_setting_under_a_comment_and_holds_no_secret():
    from app.config import DEFAULTS

    settings = env_example_settings()
    assert set(settings) >= set(DEFAULTS) | SPEC_SETTINGS, "settings missing from the example"
    assert set(settings) <= set(DEFAULTS) | SPEC_SETTINGS, "settings the app does not know"
    lines = ENV_EXAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        if SETTING.match(line):  # each setting, or the group of settings it is in, has a comment of its own above
            first = i
            while first > 0 and SETTING.match(lines[first - 1]):
                first -= 1
            assert first > 0 and lines[first - 1].startswith("# "), f"no comment above {line!r}"
    for name in SECRETS:
        active, value = settings[name]
        assert not value or "REPLACE" in value, f"FREMFORGE_{name} looks like a real value: {value!r}"
        assert name == "SECRET_KEY" or not active, f"FREMFORGE_{name} is a placeholder: it must stay commented out"
    assert settings["ENV"] == (True, "production")
    assert settings["PUBLIC_URL"][1].startswith("https://")
    active_env()  # every active line is one systemd and a shell read alike


def run_wsgi_import(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`python -c 'import wsgi'` (what gunicorn --preload does first) with only `env`'s FREMFORGE_ settings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("FREMFORGE_")}
    return subprocess.run(
        [sys.executable, "-c", "import wsgi"],
        cwd=ROOT,
        env={**base, **env, "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_env_example_refuses_to_start_until_its_secret_key_is_replaced(tmp_path):
    as_copied = active_env()
    refused = run_wsgi_import(as_copied, tmp_path)
    assert refused.returncode == 3, refused.stderr
    assert refused.stderr.startswith("fremforge cannot start: FREMFORGE_SECRET_KEY"), refused.stderr
    assert as_copied["FREMFORGE_SECRET_KEY"] not in refused.stderr and "Traceback" not in refused.stderr
    # With a real key in place it starts (the database is not reached while loading).
    replaced = active_env(FREMFORGE_SECRET_KEY=secrets.token_urlsafe(48))
    started = run_wsgi_import(replaced, tmp_path)
    assert started.returncode == 0, started.stderr


def test_the_units_read_the_env_file_and_keep_the_checkpoint_key_in_their_state_directory():
    key_file = Path(env_example_settings()["CHECKPOINT_KEY_FILE"][1])
    for unit in UNITS:
        text = (ROOT / "deploy" / unit).read_text()
        assert "EnvironmentFile=/etc/fremforge/env" in text
        assert f"StateDirectory={key_file.parent.name}" in text and key_file.parent.parent == Path("/var/lib")
        assert "StateDirectoryMode=0700" in text and "UMask=0077" in text and "User=fremforge" in text


def test_systemd_accepts_the_units(tmp_path):
    """`systemd-analyze verify` on the units (installed under this checkout instead of /opt/fremforge): no unknown
    key, no bad value, every command there."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        skip_or_fail("checking the units needs systemd-analyze (apt-get install systemd)")
    for unit in UNITS:
        (tmp_path / unit).write_text((ROOT / "deploy" / unit).read_text().replace("/opt/fremforge", str(ROOT)))
    done = subprocess.run(
        [analyze, "verify", *(str(tmp_path / u) for u in UNITS)], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


# ---------------------------------------------------------------- deploy/BACKUP.md, run


RUNBOOK = ROOT / "deploy" / "BACKUP.md"
BLOCK = re.compile(r"<!-- runbook:([a-z-]+) -->\n( *)```sh\n(.*?)\n\2```", re.S)


def runbook() -> dict[str, str]:
    """The runbook's blocks marked `<!-- runbook:NAME -->`, by name."""
    blocks = {m[1]: textwrap.dedent(m[3]) for m in BLOCK.finditer(RUNBOOK.read_text())}
    assert set(blocks) == {"backup-database", "backup-key", "restore", "verify"}, set(blocks)
    return blocks


def run_block(name: str, env_file: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """A runbook block run by bash as written, with /etc/fremforge/env and /opt/fremforge moved here."""
    text = runbook()[name]
    assert "/etc/fremforge/env" in text
    text = text.replace("/etc/fremforge/env", str(env_file)).replace("/opt/fremforge", str(ROOT))
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-euo", "pipefail", "-c", text],
        env={**base, **env, "PYTHONDONTWRITEBYTECODE": "1"},
        cwd=env_file.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )


@contextmanager
def fresh_databases(*names: str) -> Iterator[list[str]]:
    """Empty PostgreSQL databases (on FREMFORGE_TEST_DATABASE_URL's server) as plain postgresql:// URLs; dropped."""
    base = postgres_base_url()
    if base is None:
        skip_or_fail("the backup runbook needs PostgreSQL: set FREMFORGE_TEST_DATABASE_URL")
    for tool in ("pg_dump", "pg_restore"):
        if shutil.which(tool) is None:
            skip_or_fail(f"the backup runbook needs {tool} (apt-get install postgresql-client)")
    assert base is not None
    url = sa.make_url(base)
    suffix = secrets.token_hex(4)
    dbs = [f"fremforge_{name}_{suffix}" for name in names]
    admin = sa.create_engine(url.set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            for db in dbs:
                conn.execute(sa.text(f'CREATE DATABASE "{db}"'))
        yield [url.set(drivername="postgresql", database=db).render_as_string(hide_password=False) for db in dbs]
    finally:
        with admin.connect() as conn:
            for db in dbs:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()


def append_checkpoint(client, token: str, path: Path) -> dict:  # type: ignore[no-untyped-def]
    """What the README's daily export does: one more signed checkpoint, a JSON line."""
    r = client.get("/api/v1/orgs/acme/audit/checkpoint", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.get_data(as_text=True)
    with path.open("a") as f:
        f.write(r.get_data(as_text=True).strip() + "\n")
    return r.get_json()


def test_the_backup_runbook_restores_a_chain_that_verifies_against_its_checkpoints(tmp_path):
    from app import create_app, migrate
    from tests.factories import census, make_org, make_token, post, seed

    checkpoints = tmp_path / "checkpoints"
    backups = tmp_path / "backups"
    old_host, new_host = tmp_path / "old-host", tmp_path / "new-host"
    for d in (checkpoints, old_host / "state", new_host / "state"):
        d.mkdir(parents=True)
    with fresh_databases("backup", "restore") as (old_db, new_db):
        key = old_host / "state" / "checkpoint_ed25519.pem"
        app = create_app(
            {"TESTING": True, "SECRET_KEY": "test-secret", "DATABASE_URL": old_db, "CHECKPOINT_KEY_FILE": str(key)}
        )
        migrate.upgrade(app)
        make_org(app)
        token = make_token(app)
        client = app.test_client()
        export = checkpoints / "acme-checkpoints.jsonl"
        for i in range(3):
            assert post(client, token, seed(image_ref=f"ghcr.io/acme/api:{i}")).status_code == 202
            if i:
                append_checkpoint(client, token, export)
        before = census(app)

        # The old host: its env file, from the example; the nightly dump and the key's copy.
        old_env = render_env(
            old_host / "env",
            FREMFORGE_DATABASE_URL=old_db,
            FREMFORGE_SECRET_KEY=secrets.token_urlsafe(48),
            FREMFORGE_CHECKPOINT_KEY_FILE=str(key),
        )
        for block in ("backup-database", "backup-key"):
            done = run_block(block, old_env, BACKUP_DIR=str(backups))
            assert done.returncode == 0, f"{block}:\n{done.stdout}{done.stderr}"
        assert [p.name for p in backups.iterdir() if p.suffix == ".dump"] != []
        assert (backups / "checkpoint_ed25519.pem").read_bytes() == key.read_bytes()
        assert {stat.S_IMODE(p.stat().st_mode) for p in backups.iterdir()} == {0o600}

        # After the dump: one more upload and checkpoint, which the restore will not have.
        assert post(client, token, seed(image_ref="ghcr.io/acme/api:late")).status_code == 202
        late = tmp_path / "late.jsonl"
        append_checkpoint(client, token, late)
        app.extensions["fremforge.db"].engine.dispose()

        # The new host: an empty database and no key yet; restored, then verified as the runbook says.
        new_key = new_host / "state" / "checkpoint_ed25519.pem"
        new_env = render_env(
            new_host / "env",
            FREMFORGE_DATABASE_URL=new_db,
            FREMFORGE_SECRET_KEY=secrets.token_urlsafe(48),
            FREMFORGE_CHECKPOINT_KEY_FILE=str(new_key),
        )
        restored = run_block("restore", new_env, BACKUP_DIR=str(backups))
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert new_key.read_bytes() == key.read_bytes() and stat.S_IMODE(new_key.stat().st_mode) == 0o600
        verified = run_block("verify", new_env, CHECKPOINTS=str(checkpoints))
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "chain of acme is intact: " in verified.stdout and "2 checkpoint(s) consistent" in verified.stdout

        restored_app = create_app({"TESTING": True, "SECRET_KEY": "test-secret", "DATABASE_URL": new_db})
        try:
            assert census(restored_app) == before
        finally:
            restored_app.extensions["fremforge.db"].engine.dispose()

        # What the runbook says the other verdicts mean.
        def verify(against: Path) -> subprocess.CompletedProcess[str]:
            env = {**active_env(new_env), "PATH": os.environ["PATH"], "PYTHONDONTWRITEBYTECODE": "1"}
            cmd = [str(ROOT / ".venv" / "bin" / "flask"), "--app", "wsgi", "chain", "verify", "acme"]
            return subprocess.run(
                [*cmd, "--checkpoint", str(against)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
            )

        cut = verify(late)  # a checkpoint exported after the dump: the uploads since are what was lost
        assert cut.returncode == 1 and "its tail was cut" in cut.stdout, cut.stdout + cut.stderr
        new_key.write_bytes(
            Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        )
        wrong = verify(export)  # another key than the one that signed them
        assert wrong.returncode == 1 and "is not signed by this app's key" in wrong.stdout, wrong.stdout
        new_key.unlink()
        missing = verify(export)  # the key not restored yet
        assert missing.returncode == 2 and "there is no checkpoint key at" in missing.stderr, missing.stderr
