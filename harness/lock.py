"""One writer per results folder.

Two `bench` processes writing the same results folder would interleave records and leaderboards; the second one
stops at once with a message naming the first. The lock is an OS file lock (``fcntl.flock``), so a killed process
releases it with its last file descriptor and no stale lock file has to be cleaned up by hand.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from harness.errors import BenchError
from harness.log import log

LOCK_NAME = ".bench.lock"


class LockedError(BenchError):
    exit_code = 75  # EX_TEMPFAIL: try again later


@contextmanager
def results_lock(results_dir: Path, command: str = ""):
    """Hold the results folder's lock for the duration of the block, or fail with who holds it."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / LOCK_NAME
    with _lock_file(path) as fd:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            raise LockedError(
                f"The results folder {results_dir} is in use by another bench process ({holder}). Wait for it to "
                "finish, or give this command another --results-dir. Nothing was changed."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # an unheld lock names nobody (and leaves the folder's files as they were)


@contextmanager
def _lock_file(path: Path):
    """An open descriptor of the lock file at ``path`` (created if missing); closing it releases any flock."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        yield fd
    finally:
        os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "holder unknown"
    command = f", running `{info['command']}`" if info.get("command") else ""
    return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}{command}"


CACHE_LOCK_NAME = ".bench-cache.lock"


@contextmanager
def cache_users(cache_dir: Path):
    """Mark the stage cache as in use for the block (a shared lock: any number of runs at once), so that
    `bench cache prune` never deletes a folder a live run is building or resuming from."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _lock_file(cache_dir / CACHE_LOCK_NAME) as fd:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # a prune holds it; it takes seconds
            log.info(f"waiting for `bench cache prune` to finish with {cache_dir}")
            fcntl.flock(fd, fcntl.LOCK_SH)
        yield


@contextmanager
def cache_alone(cache_dir: Path):
    """Hold the stage cache with no bench run using it, or fail at once saying so."""
    cache_dir = Path(cache_dir)
    with _lock_file(cache_dir / CACHE_LOCK_NAME) as fd:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(f"The stage cache {cache_dir} is in use by a running bench command (run or eval). "
                              "Prune it when that command has finished. Nothing was removed.") from None
        yield


BUILDING = ".building"


@contextmanager
def building(folder: Path):
    """Mark ``folder`` as being written by this process for the block: an exclusive lock on ``folder/.building``,
    which the OS releases when the process dies however it dies, so `bench cache list/prune` can tell a live build
    from one a killed run left (``is_locked``). The marker file is removed at the end, before the folder is
    published."""
    path = Path(folder) / BUILDING
    with _lock_file(path) as fd:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)


def is_locked(path: Path) -> bool:
    """Whether some process holds a lock on the file at ``path`` (False when there is no such file)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the probe's own lock, if it took one
    return False
