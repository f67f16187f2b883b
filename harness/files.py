"""Reading and writing result files: atomic writes (a killed run never leaves half a file), JSONL rows with the
bad line named, and the early check that a folder can be written at all."""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from pathlib import Path

from harness.errors import BenchError


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def publish_dir(tmp: Path, final: Path) -> None:
    """Rename a finished folder into place. Parallel processes (test workers, two runs sharing a cache) may build
    the same content-keyed folder at once; the first rename wins and the loser's copy, equal by its key, is
    dropped, instead of failing with "Directory not empty"."""
    try:
        os.replace(tmp, final)
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def write_json_atomic(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_jsonl(path, *, missing_ok: bool = False) -> list[dict]:
    """The objects of a JSONL file; a broken line is named by file and line number. ``missing_ok``: an absent
    file reads as no rows (results a run has not written yet) instead of an error (an input the user named)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        if missing_ok:
            return []
        raise BenchError(f"File {path} does not exist; give the path of an existing JSONL file.") from None
    rows = []
    for lineno, line in enumerate(lines, 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise BenchError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}); fix or delete "
                                 "the line, or re-run the command that wrote it.") from None
    return rows


def check_writable(folder: Path) -> None:
    """Fail before any work starts, rather than after an hour of training, if results cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".bench-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise BenchError(f"Cannot write to {folder}: {e.strerror or e}. Choose another folder with "
                         "--results-dir / --leaderboard-dir / --cache-dir, or fix its permissions.") from None
