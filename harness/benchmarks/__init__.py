"""Judge-based benchmarks: one module per benchmark, and the file lookup they share."""

from __future__ import annotations

import json
from pathlib import Path

from harness.errors import BenchError


def find_file(root, subdir: str, name: str, what: str, extra_hint: str = "") -> Path:
    """``root`` is the benchmark's own folder or a shared data folder holding ``subdir`` (e.g. ../shared)."""
    root = Path(root).expanduser()
    tried = [root / name, root / subdir / name]
    for path in tried:
        if path.is_file():
            return path
    raise BenchError(
        f"{what} {name} not found; looked at: {', '.join(str(p) for p in tried)}. Point --data-dir "
        f"(or BENCH_DATA_DIR) at the shared data folder that holds {subdir}/ (this project uses ../shared)"
        f"{extra_hint}."
    )


def read_jsonl(path) -> list[dict]:
    """Rows of a JSONL file; a bad line is named by file and line number."""
    rows = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise BenchError(f"File {path} does not exist; give the path of an existing JSONL file.") from None
    for lineno, line in enumerate(lines, 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise BenchError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}).") from None
    return rows
