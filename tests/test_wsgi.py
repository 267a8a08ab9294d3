"""The WSGI entry point that gunicorn and the flask CLI load."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_start_up_objects_are_frozen_out_of_full_collections(tmp_path):
    """A gunicorn worker's full GC passes over start-up's ~130k objects took 45-100 ms: they are frozen instead."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FREMFORGE_")},
        "FREMFORGE_DATABASE_URL": f"sqlite:///{tmp_path / 'wsgi.db'}",
    }
    probe = "import gc, wsgi; print(gc.get_freeze_count(), wsgi.app.name)"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True
    )
    frozen, name = done.stdout.split()
    assert name == "app" and int(frozen) > 10_000
