"""Judge-based benchmarks: one module per benchmark, and the file lookup they share."""

from __future__ import annotations

from pathlib import Path

from harness.errors import BenchError
from harness.files import read_jsonl  # noqa: F401  (the benchmark loaders read their files with it)


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

