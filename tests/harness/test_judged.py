"""Arena-Hard's intervals as `bench eval` records them: joint over the rows scored and the same judge's published
judgments (upstream's table), or per row; the judge is an OpenAI-compatible one that is never called."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.benchmarks import arena_hard
from harness.evalrun import EvalOptions
from harness.judged import arena_intervals
from harness.judges import OpenAIJudge

ROWS = {"sft": ["win", "loss", "tie", "loss"] * 5, "dpo": ["win", "win", "tie", "loss"] * 4}


def _opts(tmp_path: Path, interval: str) -> EvalOptions:
    return EvalOptions(results_dir=tmp_path, cache_dir=tmp_path, data_dir=tmp_path, pair="p", run="r",
                       arena_interval=interval)


def _publish(root: Path, judge_model: str) -> None:
    folder = root / "model_judgment" / judge_model
    folder.mkdir(parents=True)
    rows = [{"question_id": f"q{i}", "model": "gpt-4-0613", "games": [{"score": "A>B"}, {"score": "A=B"}]}
            for i in range(6)]
    (folder / "gpt-4-0613.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_joint_interval_pools_rows_then_the_same_judges_published_models(tmp_path):
    _publish(tmp_path, "judge-x")
    judge = OpenAIJudge("judge-x", base_url="http://127.0.0.1:9/v1")
    intervals, how = arena_intervals(_opts(tmp_path, "joint"), tmp_path, judge, ROWS)
    assert how["bootstrap"] == "joint" and how["models"] == ["dpo", "sft", "gpt-4-0613"]
    published = arena_hard.load_published_battles(tmp_path, "judge-x")
    expected = arena_hard.joint_bootstrap({"dpo": ROWS["dpo"], "sft": ROWS["sft"], **published})
    assert intervals == {"sft": expected["sft"], "dpo": expected["dpo"]}
    # a judge of another model pools only the run's rows
    other = OpenAIJudge("judge-y", base_url="http://127.0.0.1:9/v1")
    alone, how = arena_intervals(_opts(tmp_path, "joint"), tmp_path, other, ROWS)
    assert how["models"] == ["dpo", "sft"] and alone != intervals


def test_per_row_interval_is_each_rows_own_bootstrap(tmp_path):
    judge = OpenAIJudge("judge-x", base_url="http://127.0.0.1:9/v1")
    intervals, how = arena_intervals(_opts(tmp_path, "per-row"), tmp_path, judge, ROWS)
    assert how == {"bootstrap": "per-row", "rounds": 100, "seed": 42}
    assert intervals == {r: arena_hard.bootstrap_interval(b) for r, b in ROWS.items()}


def test_unknown_interval_kind_is_a_clear_error(tmp_path):
    from harness.errors import BenchError

    with pytest.raises(BenchError, match="--arena-interval must be joint or per-row"):
        _opts(tmp_path, "pooled")
