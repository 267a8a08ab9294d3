"""The documented set-up keeps the outbox worker running: make run's restarter and the systemd units."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
