"""SQLite writers take turns on an flock beside the database file, not in SQLite's sleeping busy handler.

SQLite lets one writer in at a time. The others wait in its busy handler, which sleeps 1, 2, 5, 10, 15 ms...
between tries, however soon the lock comes free. Under a burst of small writes (webhook deliveries, uploads,
from several gunicorn workers) those sleeps, not the work, bounded throughput: the machine sat about a third
idle while deliveries queued. Here a writer first takes an exclusive flock on `<database>.write-lock`, tried
again after pauses of at most LONGEST_PAUSE, so the next writer starts well within a millisecond of the last
one's commit.

SQLite's own lock still decides who writes: a program that does not take the flock (the sqlite3 shell, a
migration) is waited for in SQLite's busy handler as before, and so is a writer that waited here longer than
GIVE_UP_AFTER (the busy timeout), which then goes on without its turn rather than failing sooner than before.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

FIRST_PAUSE = 20e-6  # seconds; doubled after each try that finds the lock taken ...
LONGEST_PAUSE = 500e-6  # ... up to this: a waiter notices a free lock within half a millisecond
GIVE_UP_AFTER = 30.0  # seconds; also the busy timeout (db._sqlite_connect), SQLite's own wait after this one

log = logging.getLogger(__name__)
_held = threading.local()  # the lock files this thread holds: a nested write waits for no one


def lock_path(engine: sa.Engine) -> str | None:
    """The turn lock of a file database; None for PostgreSQL and in-memory SQLite (one process: nothing to share)."""
    path = engine.url.database
    if engine.dialect.name != "sqlite" or not path or path == ":memory:" or path.startswith("file:"):
        return None
    return f"{path}.write-lock"


_unusable: set[str] = set()  # lock files that could not be opened (warned about once)


@contextmanager
def turn(path: str | None) -> Iterator[None]:
    """Wait for this thread's turn to write (held until the block ends); with no path, go straight on."""
    held: set[str] = _held.__dict__.setdefault("paths", set())
    if path is None or path in held:
        yield
        return
    # Read-only is enough for flock, and works on a lock file another user created. Closing releases the lock,
    # and so does the end of a process that dies holding it.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError as exc:  # no lock file (a directory we may not write?): SQLite's own waiting still serialises
        if path not in _unusable:
            _unusable.add(path)
            log.warning("sqlite.write_turn.unavailable path=%s: %s; writers wait in SQLite's busy handler", path, exc)
        yield
        return
    try:
        if _wait_for(fd):
            held.add(path)
            try:
                yield
            finally:
                held.discard(path)
        else:
            yield
    finally:
        os.close(fd)


def _wait_for(fd: int) -> bool:
    """Take the flock, trying again after short, growing pauses; False when GIVE_UP_AFTER passed without it."""
    pause = FIRST_PAUSE
    deadline = time.monotonic() + GIVE_UP_AFTER
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(2 * pause, LONGEST_PAUSE)
