"""A throwaway PostgreSQL cluster for fault injection: initdb and pg_ctl in a temporary directory, on a free port.

    cluster = Cluster()           # raises Unavailable (say why) when the server binaries are missing
    cluster.start()
    cluster.url                   # postgresql://postgres@127.0.0.1:PORT/postgres (trust auth)
    cluster.restart("immediate")  # or stop("fast"), then start()
    cluster.cleanup()             # stopped (immediately) and removed; also `with Cluster() as cluster:`

The server binaries are taken from /usr/lib/postgresql/<newest>/bin (Debian's layout), else from PATH. PostgreSQL
refuses to run as root: run as root, every command runs as the `postgres` OS user (runuser), which owns the
temporary directory. The server listens on 127.0.0.1 and on a unix socket inside that directory; fsync is off
(a process crash, which is what `immediate` is, loses nothing: the kernel still has the data).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

HOST = "127.0.0.1"
COMMAND_TIMEOUT = 60  # seconds for initdb, and for pg_ctl to see the server start or stop
OS_USER = "postgres"  # who runs the server when we are root
MODES = ("smart", "fast", "immediate")


class Unavailable(RuntimeError):
    """This machine cannot run a throwaway cluster; the message says why (a reason to skip)."""


def _bin_dir() -> Path:
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: [int(x) for x in Path(p).parts[-3].split(".")]
    )
    if versions:
        return Path(versions[-1]).parent
    on_path = shutil.which("initdb"), shutil.which("pg_ctl")
    if all(on_path):
        return Path(on_path[0]).parent  # type: ignore[arg-type]
    raise Unavailable("no PostgreSQL server binaries (initdb, pg_ctl) in /usr/lib/postgresql/*/bin or on PATH")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self) -> None:
        self.bin = _bin_dir()
        self._as_user: list[str] = []
        owner = None
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            if runuser is None:
                raise Unavailable("running as root, and no runuser to run PostgreSQL as another user")
            try:
                owner = pwd.getpwnam(OS_USER)
            except KeyError:
                raise Unavailable(f"running as root, and there is no {OS_USER!r} OS user to run PostgreSQL") from None
            self._as_user = [runuser, "-u", OS_USER, "--"]
        # Not under pytest's tmp_path: its parents are private to root, and the server runs as postgres.
        self.dir = Path(tempfile.mkdtemp(prefix="fremforge-pg-"))
        if owner is not None:
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.port = free_port()
        self.running = False
        self._initialised = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        """Run a server binary as the cluster's owner; its output (pg_ctl's too) goes to a file, never a pipe the
        server it starts would inherit."""
        out_path = self.dir / "commands.log"
        with out_path.open("ab") as out:
            done = subprocess.run(
                [*self._as_user, str(self.bin / args[0]), *args[1:]],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=COMMAND_TIMEOUT + 10,
                check=False,
            )
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} exited with {done.returncode}:\n{self.output()}")

    def output(self) -> str:
        """The commands' and the server's logs, for a failure message."""
        parts = []
        for path in (self.dir / "commands.log", self.log):
            if path.exists():
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-8000:]}")
        return "\n".join(parts)

    def _initdb(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "-N")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"port = {self.port}\n"
                f"listen_addresses = '{HOST}'\n"
                f"unix_socket_directories = '{self.dir}'\n"
                "fsync = off\n"
                "shared_buffers = 32MB\n"
                "max_connections = 50\n"
            )
        self._initialised = True

    def start(self) -> Cluster:
        """Start the server (made on first start) and wait until it accepts connections."""
        if not self._initialised:
            self._initdb()
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(COMMAND_TIMEOUT), "start")
        self.running = True
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` ends the sessions and checkpoints; `immediate` kills it, as a crash would."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", str(COMMAND_TIMEOUT), "stop")
        self.running = False

    def restart(self, mode: str = "fast") -> None:
        """Stop (in `mode`), then start again on the same port; connections made before are gone."""
        self.stop(mode)
        self.start()

    def cleanup(self) -> None:
        """Stop the server if it runs, and remove the directory."""
        try:
            if self.running:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.cleanup()
