"""The worker loop's heartbeat: from its own thread, and only while the loop makes progress."""

from __future__ import annotations

import time

import sqlalchemy as sa

from app import db, worker
from app.models import WorkerHeartbeat


def beats(app) -> list[str]:  # type: ignore[no-untyped-def]
    with app.app_context():
        return list(db.session().scalars(sa.select(WorkerHeartbeat.name)))


def test_the_heartbeat_says_alive_while_rounds_begin_and_stops_when_the_loop_is_stuck(app):
    with app.app_context():
        loop = worker.Loop(None)
        sessions = db.database().sessions
        assert loop.beat_once(sessions) is True
        with sessions() as s:
            assert worker.alive(s.connection())
    assert beats(app) == [loop.name]
    with app.app_context():
        stuck = worker.Loop(None)
        stuck.round_began = time.monotonic() - worker.STUCK_AFTER - 1  # a round that never ended
        assert stuck.beat_once(db.database().sessions) is False
    assert beats(app) == [loop.name]


def test_each_worker_process_has_a_name_of_its_own():
    name = worker.posting.worker_name()
    _host, pid, suffix = name.rsplit(":", 2)
    assert pid.isdigit() and len(suffix) == 6 and name == worker.posting.worker_name()
