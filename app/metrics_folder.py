"""prometheus_client's multiprocess folder: where this host's processes count, the counts of processes gone folded into
one archive file per type (never dropped: a total must not go down while another process still counts), and the folder
read whole under a lock, so that no scrape sees a fold half done.

- Where: PROMETHEUS_MULTIPROC_DIR when set; else `metrics` in the app's instance folder (0700), the same for
  gunicorn's workers (gunicorn.conf.py) and every `flask --app wsgi ...` process, the outbox worker included (wsgi.py).
- Folding (gunicorn's start, the outbox worker's start): the counter, histogram and summary files of processes no
  longer running are summed, per series and labels, into `<type>_archive.db` (prometheus_client's own file format,
  read by MultiProcessCollector like any process's file), and removed only once the archive is in place. Gauges are
  left to prometheus_client's rule: a dead process's `live*` gauge files go (mark_process_dead), the others stay.
- Two processes folding at once, or a scrape during a fold: an flock on `.lock` in the folder (a fold holds it alone,
  scrapes share it). A fold commits by writing a journal (the new archives to move in place, the files to remove); a
  fold that died after it is finished by the next fold or scrape, one that died before it left nothing counted twice.

prometheus_client is imported inside the functions: it chooses between counting in memory and in files when first
imported, and gunicorn.conf.py imports this module before it names the folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from flask import Flask

from app import config

if TYPE_CHECKING:
    from prometheus_client.core import Metric

log = logging.getLogger(__name__)

ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own variable
DEFAULT = "metrics"  # in the instance folder
FOLDED = ("counter", "histogram", "summary")  # sums: what a process added stays added after it is gone
LOCK = ".lock"
JOURNAL = "fold.journal"  # a fold's commit: {"replace": [new archives], "remove": [files folded]}
NEW = ".new"  # an archive being written: not *.db, so no scrape reads it
UNREADABLE = ".unreadable"  # a dead process's file that cannot be read (cut short by a kill): set aside, not *.db


def instance_path() -> str:
    """The instance folder create_app's app gets (Flask's choice for this package), known before the app is made."""
    return Flask("app", instance_relative_config=True).instance_path


def share(instance: str) -> Path:
    """Count this process's series in files of the host's folder: PROMETHEUS_MULTIPROC_DIR when set, else
    `<instance>/metrics` (named in the environment, for prometheus_client and the processes started from here). To be
    called before any series is made: prometheus_client is switched to its multiprocess mode when it was imported
    without the variable (its own tests switch it so)."""
    named = os.environ.get(ENV) or os.environ.get(ENV.lower())
    folder = Path(named) if named else Path(instance) / DEFAULT
    os.environ[ENV] = str(folder)
    from prometheus_client import values

    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()
    if not named:
        config.narrow_private(folder, 0o700)  # made 0700 by the first process that counts or folds
    return folder


def upkeep(folder: Path) -> None:
    """`fold` at a process's start (gunicorn's, the outbox worker's), never stopping it: metrics are not worth an
    outage, so what goes wrong is logged and the process starts."""
    try:
        fold(folder)
    except Exception:
        log.exception("metrics.fold.failed folder=%s", folder)


def fold(folder: Path) -> None:
    """Fold the counts of processes no longer running into the archives; remove their live gauges. A file that
    cannot be read (a process killed as it made it: empty or cut short) is set aside as `<name>.unreadable`, logged,
    and its counts lost, rather than every later fold failing on it."""
    from prometheus_client.multiprocess import mark_process_dead

    config.make_private_dir(folder)
    with _locked(folder, fcntl.LOCK_EX):
        _finish(folder)  # a fold that died after its commit
        gone: dict[str, list[Path]] = {kind: [] for kind in FOLDED}
        dead: set[int] = set()
        for path in sorted(folder.glob("*.db")):
            kind, number = path.stem.partition("_")[0], path.stem.rpartition("_")[2]
            if not number.isdigit() or _alive(int(number)):  # the archives, and every running process's files
                continue
            if kind in gone:
                gone[kind].append(path)
            elif kind == "gauge":
                dead.add(int(number))
        for pid in dead:
            mark_process_dead(pid, str(folder))
        for kind, files in gone.items():
            archive = folder / f"{kind}_archive.db"
            if archive.exists():
                _readable(archive)  # set aside if it cannot be read: the new archive then holds the files' alone
            gone[kind] = [p for p in files if _readable(p)]
        replace = [_write_archive(folder, kind, files) for kind, files in gone.items() if files]
        if not replace:
            return
        commit = folder / f"{JOURNAL}{NEW}"
        commit.write_text(json.dumps({"replace": replace, "remove": [p.name for f in gone.values() for p in f]}))
        os.replace(commit, folder / JOURNAL)
        _finish(folder)


def collect(folder: Path) -> list[Metric]:
    """Every series of the folder summed over its files (the archives included), read while no fold runs. A file of
    a process gone that cannot be read is set aside (as a fold does), so one bad file does not fail every scrape."""
    from prometheus_client.multiprocess import MultiProcessCollector

    with _locked(folder, fcntl.LOCK_SH):
        if not (folder / JOURNAL).exists():
            try:
                return list(MultiProcessCollector(None, path=str(folder)).collect())
            except Exception as exc:  # a file that cannot be read: set aside below, if its process is gone
                log.warning("metrics.collect.unreadable folder=%s error=%r", folder, exc)
    with _locked(folder, fcntl.LOCK_EX):  # a fold died after its commit, or a file cannot be read: mend, then read
        _finish(folder)
        for path in folder.glob("*.db"):  # (a gunicorn worker killed as it made its file, between restarts)
            number = path.stem.rpartition("_")[2]
            if not number.isdigit() or not _alive(int(number)):
                _readable(path)
        return list(MultiProcessCollector(None, path=str(folder)).collect())


def _readable(path: Path) -> bool:
    """Whether prometheus_client can read `path`; else it is set aside (UNREADABLE) and logged."""
    from prometheus_client.mmap_dict import MmapedDict

    try:
        for _ in MmapedDict.read_all_values_from_file(str(path)):  # a generator: read it to its end
            pass
    except Exception as exc:  # struct.error, a bad key's JSON or UTF-8, an OSError
        log.warning("metrics.fold.unreadable file=%s error=%r: set aside, its counts lost", path.name, exc)
        os.replace(path, path.with_name(path.name + UNREADABLE))
        return False
    return True


def _write_archive(folder: Path, kind: str, files: list[Path]) -> str:
    """`<kind>_archive.db` plus `files`, summed per series and labels, written beside it as `<name>.new`; its name."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key
    from prometheus_client.multiprocess import MultiProcessCollector

    archive = folder / f"{kind}_archive.db"
    new = folder / f"{archive.name}{NEW}"
    new.unlink(missing_ok=True)
    sources = [str(p) for p in ([archive] if archive.exists() else []) + files]
    written = MmapedDict(str(new))
    try:
        # accumulate=False: a histogram's buckets as its files keep them (each bucket's own count, not cumulated).
        for metric in MultiProcessCollector.merge(sources, accumulate=False):
            for sample in metric.samples:
                labels = sample.labels
                key = mmap_key(metric.name, sample.name, list(labels), list(labels.values()), metric.documentation)
                written.write_value(key, sample.value, 0.0)
    finally:
        written.close()
    return new.name


def _finish(folder: Path) -> None:
    """Carry out the journal's commit, when there is one (each step may have been done already); else remove what a
    fold that died before its commit wrote."""
    journal = folder / JOURNAL
    try:
        plan = json.loads(journal.read_text())
    except FileNotFoundError:
        for stray in folder.glob(f"*{NEW}"):
            stray.unlink(missing_ok=True)
        return
    for name in plan["replace"]:
        with contextlib.suppress(FileNotFoundError):  # moved in place already
            os.replace(folder / name, folder / name.removesuffix(NEW))
    for name in plan["remove"]:
        (folder / name).unlink(missing_ok=True)
    journal.unlink()


@contextlib.contextmanager
def _locked(folder: Path, how: int) -> Iterator[None]:
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, how)
        yield
    finally:
        os.close(fd)  # and with it the lock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True
