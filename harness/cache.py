"""Content-keyed stage cache.

A stage's output lives in ``<cache>/<stage>/<key>/`` where the key hashes everything the output depends on,
so re-running a command skips finished work and a changed input never reuses a stale output. Outputs are
built in a temporary folder and renamed into place, so a killed run leaves no half-written stage behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

from harness.files import publish_dir
from harness.lock import building

DONE = "DONE"


def default_cache_dir() -> Path:
    return Path(os.environ.get("BENCH_CACHE_DIR", Path.home() / ".cache" / "bench"))


def cache_root(cache_dir: Path | str | None) -> Path:
    """The stage cache a command uses: ``--cache-dir``, else $BENCH_CACHE_DIR, else ~/.cache/bench. Converted
    models go to its ``models/`` folder unless $BENCH_MODEL_CACHE names another; the choice is pinned in the
    environment, so that the flag moves the models as the variable does, here and in the processes this one
    starts (accelerate workers)."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    os.environ.setdefault("BENCH_MODEL_CACHE", str(root / "models"))
    return root


def model_cache_dir() -> Path:
    """Converted models (de-quantised GGUF, pruned students) can live apart from stage outputs."""
    return Path(os.environ.get("BENCH_MODEL_CACHE", default_cache_dir() / "models"))


def stable_hash(obj, length: int = 16) -> str:
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


class StageCache:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def partial(self, stage: str, key: str) -> Path:
        """Work in progress on a stage that must survive a kill (training checkpoints, generation journals);
        ``build`` removes it once the stage's output is in place."""
        return self.root / stage / f".partial-{key}"

    def has(self, stage: str, key: str) -> bool:
        return (self.path(stage, key) / DONE).exists()

    @contextmanager
    def build(self, stage: str, key: str):
        """Yield a fresh folder to write the stage's output into; it becomes visible only on success, and the
        stage's work in progress (``partial``) is then removed."""
        final = self.path(stage, key)
        tmp = final.parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True, exist_ok=False)
        try:
            with building(tmp):
                yield tmp
                (tmp / DONE).write_text("")
            publish_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(self.partial(stage, key), ignore_errors=True)

