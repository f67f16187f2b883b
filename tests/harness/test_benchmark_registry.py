"""Benchmarks as objects under one id: old names as aliases, an outside benchmark through the `bench.benchmarks`
entry point run by `bench eval`, and `bench leaderboard` with no model library imported."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.benchmark import benchmarks, get_benchmark
from harness.errors import BenchError
from harness.evalrun import parse_benchmarks

ROOT = Path(__file__).resolve().parents[2]


def test_one_id_per_benchmark_and_old_names_as_aliases():
    assert [b.id for b in benchmarks()] == ["mt_bench", "alpaca_eval_2", "arena_hard_v0.1", "rm_winrate", "lm_eval"]
    assert get_benchmark("arena_hard") is get_benchmark("arena_hard_v0.1")
    assert get_benchmark("alpaca_eval").stem == "alpaca_eval"  # results and cached answers keep their names
    assert parse_benchmarks("arena_hard,arena_hard_v0.1,lm_eval:gsm8k") == ["arena_hard_v0.1", "lm_eval:gsm8k"]
    with pytest.raises(BenchError, match="Unknown benchmark"):
        parse_benchmarks("lm_eval")  # not runnable by name: lm_eval:<task>


def _run(args: list[str], env: dict | None = None, code: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "harness.cli", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env or dict(os.environ), capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # a fresh interpreter
def test_bench_leaderboard_imports_no_torch(tmp_path):
    code = f"""
import sys
from tests.fixtures.results_tree import build_results
from harness.cli import main
results = build_results({str(tmp_path)!r})
try:
    main(["leaderboard", "--results-dir", str(results)], standalone_mode=False)
finally:
    print("TORCH" if "torch" in sys.modules else "NO TORCH")
"""
    done = _run([], code=code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("NO TORCH"), done.stdout[-2000:]
    assert (tmp_path / "leaderboards" / "toy-a.md").is_file()


def plugin_env(tmp_path: Path) -> dict:
    """tests/fixtures/outside_benchmark.py installed as an outside package with a `bench.benchmarks` entry point."""
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    shutil.copy(ROOT / "tests" / "fixtures" / "outside_benchmark.py", plugin / "outside_benchmark.py")
    info = plugin / "outside_benchmark-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: outside-benchmark\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[bench.benchmarks]\nanswer_length = outside_benchmark\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin), str(ROOT)])}


@pytest.mark.slow  # a fresh interpreter
def test_bench_methods_imports_no_model_library():
    code = """
import sys
from harness.cli import main
try:
    main(["methods"], standalone_mode=False)
finally:
    print(sorted(m for m in ("torch", "transformers", "accelerate", "safetensors") if m in sys.modules))
"""
    done = _run([], code=code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "recipe official (default) [--methods adpa]" in done.stdout  # it did list the methods
    assert done.stdout.strip().endswith("[]"), done.stdout[-2000:]


@pytest.mark.slow  # a bench process
def test_outside_benchmark_scored_by_bench_eval(tmp_path):
    from tests.fixtures.results_tree import build_results

    results = build_results(tmp_path)
    done = _run(["eval", "--benchmarks", "answer_length", "--pair", "toy-b", "--run", "tiny-seed0",
                 "--results-dir", str(results), "--cache-dir", str(tmp_path / "cache")], env=plugin_env(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((results / "toy-b/tiny-seed0/sft/benchmarks/answer_length.json").read_text())
    assert result["metrics"] == {"mean": len("sft says 0"), "se": 0.0, "n": 2}
    board = (tmp_path / "leaderboards" / "toy-b.md").read_text()
    # the plugin's cell is a column of the board (sft and dpo answered alike: a tie, so neither is bold)
    assert "answer length (chars) [1] (n=2)" in board
    assert "| dpo | 10.00 ± 0.00 |" in board and "| sft | 10.00 ± 0.00 |" in board
