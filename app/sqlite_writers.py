"""SQLite writers take turns on an flock beside the database file, not in SQLite's sleeping busy handler.

SQLite lets one writer in at a time. The others wait in its busy handler, which sleeps 1, 2, 5, 10, 15 ms...
between tries, however soon the lock comes free. Under a burst of small writes (webhook deliveries, uploads,
from several gunicorn workers) those sleeps, not the work, bounded throughput: the machine sat about a third
idle while deliveries queued. Here a writer first takes an exclusive flock on `<database>.write-lock`, tried
again after pauses of at most LONGEST_PAUSE, so the next writer starts within half a millisecond of the last
one's commit. The turns are not strictly first come, first served: a newcomer tries sooner than a writer that
has waited a while, which matters little when each turn lasts about a millisecond.

SQLite's own lock still decides who writes: a program that does not take the flock (the sqlite3 shell, a
migration) is waited for in SQLite's busy handler as before. So is a writer that waited here for GIVE_UP_AFTER
(a turn held that long is not a burst of small writes): it goes on without its turn, and SQLite's busy
timeout bounds the rest of its wait, as before.
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
# Seconds waiting for a turn, after which SQLite's busy handler takes over (for up to db.DATABASE_BUSY_SECONDS):
# together well under gunicorn's 30 s worker timeout, so a write stuck behind another program gets a 503, not a
# killed worker.
GIVE_UP_AFTER = 5.0

log = logging.getLogger(__name__)
_held = threading.local()  # the lock files this thread holds: a nested write waits for no one
_unusable: set[str] = set()  # lock files that could not be opened (warned about once)
_pause = time.sleep  # between tries (tests watch it)


def database_file(engine: sa.Engine) -> str | None:
    """The file of a SQLite database (as SQLite resolves it); None for PostgreSQL and in-memory databases."""
    url = engine.url
    path = url.database
    if engine.dialect.name != "sqlite" or not path or path == ":memory:":
        return None
    if path.startswith("file:"):  # a URI filename (?uri=true): file:name, file:/abs, file:///abs
        if url.query.get("mode") == "memory":
            return None
        path = path.removeprefix("file:").split("?", 1)[0]
        if path.startswith("//"):
            path = path[2:]
        if not path or path == ":memory:":
            return None
    return path


def lock_path(engine: sa.Engine) -> str | None:
    """The turn lock of a database file, beside it; None where there is no file (one process: nothing to share)."""
    path = database_file(engine)
    return f"{path}.write-lock" if path is not None else None


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
            log.warning(
                "sqlite.write_turn.gave_up path=%s after %.0f s; waiting in SQLite's busy handler", path, GIVE_UP_AFTER
            )
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
            _pause(pause)
            pause = min(2 * pause, LONGEST_PAUSE)
