"""SQLite writers take turns on an flock beside the database (app.sqlite_writers), through db.write_transaction."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from app import sqlite_writers
from app.db import make_engine, write_transaction

WAIT = 30  # seconds: a bound for a thread that should finish at once, not a pause


@pytest.fixture
def db_file(tmp_path: Path) -> Path:
    path = tmp_path / "writers.db"
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE marks (id INTEGER PRIMARY KEY, who TEXT NOT NULL)"))
    engine.dispose()
    return path


@pytest.fixture
def sessions(db_file: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(f"sqlite:///{db_file}")
    yield sessionmaker(engine)
    engine.dispose()


def mark(session: Session, who: str) -> None:
    session.execute(sa.text("INSERT INTO marks (who) VALUES (:who)"), {"who": who})


def marks(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as s:
        return list(s.scalars(sa.text("SELECT who FROM marks ORDER BY id")))


def turn_is_free(db_file: Path) -> bool:
    """Whether another open file description could take the turn now (it is released again at once)."""
    fd = os.open(f"{db_file}.write-lock", os.O_RDONLY | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_a_write_holds_the_turn_until_it_commits_or_rolls_back(sessions, db_file):
    with sessions() as s:
        with write_transaction(s):
            mark(s, "committed")
            assert not turn_is_free(db_file)
        assert turn_is_free(db_file)
        with pytest.raises(RuntimeError), write_transaction(s):
            mark(s, "rolled back")
            assert not turn_is_free(db_file)
            raise RuntimeError("the handler failed")
        assert turn_is_free(db_file)
    assert marks(sessions) == ["committed"]


def test_a_writer_waits_for_its_turn_then_writes(sessions, monkeypatch):
    """B, arriving while A writes, waits on the turn (not in SQLite's busy handler) and writes after A."""
    a_inside, a_may_finish, b_waiting = threading.Event(), threading.Event(), threading.Event()
    b_entered = threading.Event()
    real_pause = sqlite_writers._pause

    def pause(seconds: float) -> None:  # only a writer finding the turn taken pauses: B
        b_waiting.set()
        real_pause(seconds)

    monkeypatch.setattr(sqlite_writers, "_pause", pause)
    failures: list[BaseException] = []

    def writer(who: str, inside: threading.Event, until: threading.Event | None) -> None:
        try:
            with sessions() as s, write_transaction(s):
                inside.set()
                mark(s, who)
                if until is not None:
                    assert until.wait(WAIT)
        except BaseException as exc:  # reported by the test, not lost in the thread
            failures.append(exc)

    a = threading.Thread(target=writer, args=("A", a_inside, a_may_finish))
    a.start()
    assert a_inside.wait(WAIT)
    b = threading.Thread(target=writer, args=("B", b_entered, None))
    b.start()
    assert b_waiting.wait(WAIT)
    assert not b_entered.is_set()  # A still holds the turn
    a_may_finish.set()
    a.join(WAIT)
    b.join(WAIT)
    assert not a.is_alive() and not b.is_alive() and not failures
    assert marks(sessions) == ["A", "B"]


def test_a_nested_write_in_the_same_thread_does_not_wait_for_itself(sessions, monkeypatch):
    def pause(_seconds: float) -> None:
        raise AssertionError("the nested write waited for its own thread's turn")

    monkeypatch.setattr(sqlite_writers, "_pause", pause)
    with sessions() as s, write_transaction(s):
        mark(s, "outer")
        with write_transaction(s):
            mark(s, "inner")
    assert marks(sessions) == ["outer", "inner"]


def test_a_writer_that_waited_too_long_writes_under_sqlites_own_lock(sessions, db_file, monkeypatch, caplog):
    """A turn held elsewhere past GIVE_UP_AFTER (a stuck process, say) does not stop a write SQLite allows."""
    monkeypatch.setattr(sqlite_writers, "GIVE_UP_AFTER", 0.05)
    failures: list[BaseException] = []

    def write() -> None:
        try:
            with sessions() as s, write_transaction(s):
                mark(s, "went on")
        except BaseException as exc:
            failures.append(exc)

    fd = os.open(f"{db_file}.write-lock", os.O_RDONLY | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held by another open file description, as another process would
        writer = threading.Thread(target=write)
        writer.start()
        writer.join(WAIT)
        assert not writer.is_alive(), "the writer waited past GIVE_UP_AFTER"
    finally:
        os.close(fd)
    assert not failures
    assert marks(sessions) == ["went on"]
    assert any("sqlite.write_turn.gave_up" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("url", "lock"),
    [
        ("sqlite:////srv/fremforge.db", "/srv/fremforge.db.write-lock"),
        ("sqlite:///instance/fremforge.db", "instance/fremforge.db.write-lock"),  # relative, as SQLite opens it
        ("sqlite:///file:/srv/fremforge.db?uri=true", "/srv/fremforge.db.write-lock"),
        ("sqlite:///file:///srv/fremforge.db?uri=true&mode=rw", "/srv/fremforge.db.write-lock"),
        ("sqlite:///file:mem?mode=memory&cache=shared&uri=true", None),
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
        ("postgresql+psycopg://u@127.0.0.1/db", None),
    ],
)
def test_only_a_database_file_has_a_turn_lock(url, lock):
    assert sqlite_writers.lock_path(sa.create_engine(url, poolclass=sa.pool.NullPool)) == lock


def _write_many(path: str, who: str, count: int) -> None:
    engine = make_engine(f"sqlite:///{path}")
    sessions = sessionmaker(engine)
    for _ in range(count):
        with sessions() as s, write_transaction(s):
            mark(s, who)
    engine.dispose()


def test_processes_writing_at_once_all_write(sessions, db_file):
    """A smoke test across processes: every write of three processes at once lands (how they wait is above)."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(str(db_file), f"p{i}", 100)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    written = marks(sessions)
    assert sorted(set(written)) == ["p0", "p1", "p2"] and len(written) == 300


def test_a_lock_file_that_cannot_be_made_leaves_the_waiting_to_sqlite(sessions, db_file, monkeypatch, caplog):
    """Where `<db>.write-lock` cannot be opened, writes go on (SQLite's busy handler serialises them), warned once."""
    monkeypatch.setattr(sqlite_writers, "lock_path", lambda _engine: str(db_file.parent / "missing" / "x.write-lock"))
    with sessions() as s:
        for who in ("first", "second"):
            with write_transaction(s):
                mark(s, who)
    assert marks(sessions) == ["first", "second"]
    warnings = [r for r in caplog.records if "sqlite.write_turn.unavailable" in r.getMessage()]
    assert len(warnings) == 1
