"""`bench cache list` / `prune` (harness/cache_admin.py): a build folder left by a process killed with SIGKILL is
found and removed, finished stages never are, stopped work in progress only when asked, and nothing while a bench
run holds the cache."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cache import StageCache
from harness.cache_admin import human, prune, scan
from harness.cli import main
from harness.lock import BUILDING, LockedError, cache_users

ROOT = Path(__file__).resolve().parents[2]


def write(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


def killed_build(root: Path, stage: str, key: str) -> None:
    """A real process that starts building a stage, writes into it and dies by SIGKILL, as a killed run does."""
    code = textwrap.dedent(f"""
        import os, signal
        from harness.cache import StageCache
        with StageCache({str(root)!r}).build({stage!r}, {key!r}) as out:
            (out / "weights.bin").write_bytes(b"w" * 3000)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture()
def cache(tmp_path):
    root = tmp_path / "cache"
    c = StageCache(root)
    with c.build("train", "done1") as out:
        write(out / "checkpoint" / "model.safetensors", 5000)
    with c.build("signals", "done2") as out:
        write(out / "signal.safetensors", 700)
    write(c.partial("train", "stopped") / "checkpoints" / "step-10" / "state.pt", 2048)
    killed_build(root, "train", "killed")
    write(root / "models" / "smollm2-abc" / "config.json", 10)  # a converted model
    write(root / "models" / "smollm2-def.tmp4242" / "model.safetensors", 900)  # its conversion killed
    write(root / "judgments" / "mt_bench.jsonl", 50)  # a file, not a stage folder: left alone
    return root


def kinds(entries):
    return sorted((e.stage, e.kind, e.path.name.split("-")[0] if e.kind == "abandoned" else e.path.name)
                  for e in entries)


def test_scan_finds_finished_partial_and_abandoned_folders_with_their_sizes(cache):
    entries = scan(cache)
    assert kinds(entries) == [
        ("models", "abandoned", "smollm2"), ("models", "done", "smollm2-abc"), ("signals", "done", "done2"),
        ("train", "abandoned", ".tmp"), ("train", "done", "done1"), ("train", "partial", ".partial-stopped")]
    size = {(e.stage, e.kind): e.bytes for e in entries}
    assert size[("train", "abandoned")] == 3000  # what the killed process wrote
    assert size[("train", "done")] == 5000  # the DONE marker is empty
    assert size[("train", "partial")] == 2048
    assert size[("models", "abandoned")] == 900


def test_prune_removes_only_abandoned_builds(cache):
    removed = prune(cache)
    assert sorted((e.stage, e.bytes) for e in removed) == [("models", 900), ("train", 3000)]
    assert all(not e.path.exists() for e in removed)
    assert kinds(scan(cache)) == [("models", "done", "smollm2-abc"), ("signals", "done", "done2"),
                                  ("train", "done", "done1"), ("train", "partial", ".partial-stopped")]
    assert StageCache(cache).has("train", "done1") and (cache / "judgments" / "mt_bench.jsonl").exists()
    assert prune(cache) == []


def test_prune_with_partials_also_removes_stopped_work(cache):
    removed = prune(cache, partials=True)
    assert sorted(e.kind for e in removed) == ["abandoned", "abandoned", "partial"]
    assert {e.kind for e in scan(cache)} == {"done"}


def test_a_dry_run_removes_nothing(cache):
    before = scan(cache)
    assert {e.path for e in prune(cache, partials=True, dry_run=True)} == {
        e.path for e in before if e.kind != "done"}
    assert scan(cache) == before


def test_nothing_is_pruned_while_a_run_uses_the_cache(cache):
    before = scan(cache)
    with cache_users(cache), cache_users(cache):  # runs share the cache with each other
        with pytest.raises(LockedError, match="in use by a running bench command"):
            prune(cache, partials=True)
    assert scan(cache) == before
    assert len(prune(cache)) == 2  # the runs have finished


def test_the_commands(cache, monkeypatch):
    monkeypatch.setenv("BENCH_MODEL_CACHE", str(cache / "models"))  # the default place, inside the cache
    listed = CliRunner().invoke(main, ["cache", "list", "--cache-dir", str(cache)])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    train = next(line for line in lines if line.startswith("train "))
    assert train.split() == ["train", "1", "(4.9", "KiB)", "1", "(2.0", "KiB)", "1", "(2.9", "KiB)"]
    assert sum("abandoned" in line and str(cache) in line for line in lines) == 2
    dry = CliRunner().invoke(main, ["cache", "prune", "--cache-dir", str(cache), "--dry-run"])
    assert dry.exit_code == 0 and dry.output.splitlines()[-1] == "would remove 2 folder(s), 3.8 KiB"
    done = CliRunner().invoke(main, ["cache", "prune", "--cache-dir", str(cache)])
    assert done.exit_code == 0 and done.output.splitlines()[-1] == "removed 2 folder(s), 3.8 KiB"
    with cache_users(cache):
        busy = CliRunner().invoke(main, ["cache", "prune", "--cache-dir", str(cache), "--partials"])
    assert busy.exit_code == 75 and "Nothing was removed" in busy.output


def test_a_build_under_way_is_listed_as_building_and_never_pruned(cache):
    with StageCache(cache).build("signals", "live") as out:
        write(out / "generation.jsonl", 64)
        live = [e for e in scan(cache) if e.kind == "building"]
        assert [(e.stage, e.path) for e in live] == [("signals", out)]
        assert out not in {e.path for e in prune(cache, partials=True)}  # not even with --partials
        assert out.exists()
    assert not (StageCache(cache).path("signals", "live") / BUILDING).exists()  # the marker is not published
    assert StageCache(cache).has("signals", "live")


def test_a_model_cache_elsewhere_is_covered_but_a_conversion_under_way_is_kept(cache, tmp_path, monkeypatch):
    models = tmp_path / "models-elsewhere"  # $BENCH_MODEL_CACHE outside the stage cache
    write(models / "smollm2-abc" / "config.json", 10)
    write(models / "smollm2-abc.tmp77" / "model.safetensors", 400)  # a conversion killed
    write(models / "other-xyz.tmp88" / "model.safetensors", 600)  # a conversion under way: its lock is held
    assert scan(cache, cache / "models") == scan(cache)  # the default place is not listed twice
    with open(models / "other-xyz.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as harness/models.materialise holds it while it converts
        assert kinds(e for e in scan(cache, models) if models in e.path.parents) == [
            ("models", "abandoned", "smollm2"), ("models", "building", "other-xyz.tmp88"),
            ("models", "done", "smollm2-abc")]
        removed = prune(cache, models)
    assert sorted(e.path.name.split("-")[0] for e in removed) == [".tmp", "smollm2", "smollm2"]
    assert (models / "other-xyz.tmp88").exists() and (models / "smollm2-abc" / "config.json").exists()
    assert [e.path.name for e in prune(cache, models)] == ["other-xyz.tmp88"]  # its converter has let go

    write(models / "third.tmp99" / "model.safetensors", 5)
    monkeypatch.setenv("BENCH_MODEL_CACHE", str(models))
    listed = CliRunner().invoke(main, ["cache", "list", "--cache-dir", str(cache)])
    assert listed.exit_code == 0 and any(str(models / "third.tmp99") in line for line in listed.output.splitlines())
    done = CliRunner().invoke(main, ["cache", "prune", "--cache-dir", str(cache)])
    assert done.exit_code == 0 and not (models / "third.tmp99").exists(), done.output


def test_human_sizes():
    assert [human(n) for n in (0, 1023, 1024, 1536, 5 * 2**20, 3 * 2**30, 5000 * 2**30)] == [
        "0 B", "1023 B", "1.0 KiB", "1.5 KiB", "5.0 MiB", "3.0 GiB", "5000.0 GiB"]
