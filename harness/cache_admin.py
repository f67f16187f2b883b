"""`bench cache list` and `bench cache prune`: what the stage cache holds, and removing what a killed run left.

A stage is built in ``<stage>/.tmp-<key>-<id>/`` and renamed into place (harness/cache.py), a converted model in
``models/<name>.tmp<pid>/``; a run killed with SIGKILL (or SIGTERM) cannot remove its temporary folder, and
nothing else ever reads it. The writer of a temporary folder holds a lock on it (``.building`` inside, or the
model's ``<name>.lock``) that the OS drops when the writer dies, so a folder is "building" while its writer lives
and "abandoned" after. ``.partial-<key>/`` folders hold a stopped stage's work in progress (training checkpoints, journalled
answers and teacher batches): the same command resumes from them, so they are removed only when asked. Pruning
takes the cache's exclusive lock, which every `bench run` and `bench eval` holds shared while it runs, so a folder
a live run is writing is never deleted. Converted models live in ``<cache>/models`` or wherever $BENCH_MODEL_CACHE
points (also where `--cache-dir` does not reach); both commands cover that folder.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import click

from harness.cache import DONE, cache_root, model_cache_dir
from harness.lock import BUILDING, CACHE_LOCK_NAME, cache_alone, is_locked
from harness.models import conversion_lock

_MODEL_TMP = re.compile(r".+\.tmp\d+$")


@dataclass(frozen=True)
class Entry:
    stage: str
    kind: str  # "done" (a finished stage), "partial" (resumable work in progress), "building" (being written by a
    # live process) or "abandoned" (its writer was killed)
    path: Path
    bytes: int
    modified: float  # the newest file's mtime, seconds since the epoch


def _size_and_mtime(path: Path) -> tuple[int, float]:
    total, newest = 0, path.stat().st_mtime
    for f in path.rglob("*"):
        if f.is_file() and not f.is_symlink():
            st = f.stat()
            total += st.st_size
            newest = max(newest, st.st_mtime)
    return total, newest


def _kind(stage: str, folder: Path) -> str | None:
    name = folder.name
    if name.startswith(".tmp-"):  # harness/cache.StageCache.build holds .building locked while it writes
        return "building" if is_locked(folder / BUILDING) else "abandoned"
    if stage == "models" and _MODEL_TMP.fullmatch(name):  # <name>.tmp<pid>, written under <name>'s lock
        return "building" if is_locked(conversion_lock(folder.with_name(name.rsplit(".tmp", 1)[0]))) else "abandoned"
    if name.startswith(".partial-"):
        return "partial"
    if (folder / DONE).exists() or (stage == "models" and (folder / "config.json").exists()):
        return "done"
    return None  # not ours (or an older layout): listed nowhere, never removed


def scan(root: Path, models: Path | None = None) -> list[Entry]:
    """Every finished stage, work in progress and abandoned build folder under the cache ``root``, and the
    converted models in ``models`` when that folder lies outside it."""
    root = Path(root)
    stages = [(d.name, d) for d in sorted(root.iterdir()) if d.is_dir()] if root.is_dir() else []
    if models is not None and Path(models).is_dir() and Path(models).resolve() != (root / "models").resolve():
        stages.append(("models", Path(models)))
    entries = []
    for stage, folder in stages:
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            kind = _kind(stage, sub)
            if kind is not None:
                entries.append(Entry(stage, kind, sub, *_size_and_mtime(sub)))
    return entries


def prune(root: Path, models: Path | None = None, *, partials: bool = False,
          dry_run: bool = False) -> list[Entry]:
    """Remove abandoned build folders (and with ``partials``, stopped work in progress); returns what was (or,
    with ``dry_run``, would be) removed. Fails without removing anything while a bench run uses the cache."""
    root = Path(root)
    if not root.is_dir() and models is None:
        return []
    kinds = {"abandoned", "partial"} if partials else {"abandoned"}
    with cache_alone(root) if root.is_dir() else contextlib.nullcontext():
        chosen = [e for e in scan(root, models) if e.kind in kinds]  # never "building": a live process writes it
        if not dry_run:
            for e in chosen:
                shutil.rmtree(e.path)
    return chosen


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _age(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours * 60:.0f} min" if hours < 1 else f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.0f} d"


# ---------------------------------------------------------------- the commands

_CACHE_DIR = click.option("--cache-dir", envvar="BENCH_CACHE_DIR", default=None, type=click.Path(path_type=Path),
                          help="Stage cache (env BENCH_CACHE_DIR; default ~/.cache/bench).")


@click.group()
def cache():
    """Inspect the stage cache and remove what killed runs left in it."""


@cache.command("list")
@_CACHE_DIR
def list_command(cache_dir):
    """Each stage's finished outputs, work in progress and abandoned build folders, with their sizes."""
    root = cache_root(cache_dir)
    entries = scan(root, model_cache_dir())
    if not entries:
        click.echo(f"{root}: empty")
        return
    click.echo(f"{root}  (lock file {CACHE_LOCK_NAME})")
    click.echo(f"{'stage':12s} {'finished':>16s} {'in progress':>16s} {'abandoned':>16s}")
    for stage in dict.fromkeys(e.stage for e in entries):
        cells = []
        for kinds in (("done",), ("partial", "building"), ("abandoned",)):
            of = [e for e in entries if e.stage == stage and e.kind in kinds]
            cells.append(f"{len(of)} ({human(sum(e.bytes for e in of))})" if of else "-")
        click.echo(f"{stage:12s} " + " ".join(f"{c:>16s}" for c in cells))
    now = time.time()
    for e in entries:
        if e.kind != "done":
            click.echo(f"  {e.kind:9s} {human(e.bytes):>10s}  last written {_age(now - e.modified)} ago  {e.path}")


@cache.command("prune")
@_CACHE_DIR
@click.option("--partials", is_flag=True, help="Also remove stopped work in progress (checkpoints, journals): "
                                                "the next run of that stage starts over.")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
def prune_command(cache_dir, partials, dry_run):
    """Remove build folders that killed runs left behind (never a finished stage)."""
    root = cache_root(cache_dir)
    removed = prune(root, model_cache_dir(), partials=partials, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for e in removed:
        click.echo(f"{verb} {e.kind} {human(e.bytes)}  {e.path}")
    click.echo(f"{verb} {len(removed)} folder(s), {human(sum(e.bytes for e in removed))}")
