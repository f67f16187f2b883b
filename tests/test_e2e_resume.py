"""Killed and partial runs on the real SmolLM2 pair, `tiny` budget, each in a cache of its own: a run killed
(SIGKILL) while sampling and again while training resumes to the metrics of one never interrupted; a dependency
cached without weights gets them when another method starts from it.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
from click.testing import CliRunner

from harness.cli import main
from tests.e2e_helpers import bench, kill_when, start, tiny_args, with_arg

pytestmark = pytest.mark.slow


def test_a_run_killed_while_sampling_and_while_training_resumes_to_the_same_metrics(tmp_path, shared_dir):
    """seqkd samples the teacher's answers, then trains. Killed (SIGKILL) during the sampling, then again after a
    training checkpoint, the same command ends with the metrics and loss curve of a run never interrupted."""
    cache = tmp_path / "cache"

    def args(results: str) -> list[str]:
        a = tiny_args(tmp_path, shared_dir, "seqkd")
        a = with_arg(with_arg(a, "--results-dir", tmp_path / results), "--leaderboard-dir", tmp_path / f"lb-{results}")
        return a + ["--set", "max_steps=4", "--checkpoint-every", "1"]

    straight = bench(args("straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    row = tmp_path / "straight/smollm2-135m/tiny-seed0/seqkd"
    record = json.loads((row / "record.json").read_text())
    samples_key = record["compute"]["signal_stages"]["teacher_samples"]["stage_key"]
    train_key = record["train_stage_key"]
    for stage in (cache / "signals" / samples_key, cache / "train" / train_key,
                  cache / "eval" / record["evaluation"]["stage_key"]):
        shutil.rmtree(stage)  # to be computed again, and interrupted

    proc, err = start(args("resumed"))
    kill_when(proc, err, lambda: b"signal teacher_samples (train)" in b"".join(err))
    assert not (cache / "signals" / samples_key).exists()  # no half-written stage
    checkpoints = cache / "train" / f".partial-{train_key}" / "checkpoints"
    proc, err = start(args("resumed"))
    kill_when(proc, err, lambda: any(checkpoints.glob("step-*")))
    done = bench(args("resumed"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"train seqkd: resuming from the checkpoint at step [123]", done.stderr)
    assert not checkpoints.parent.exists()  # the finished stage removed its resume folder
    resumed = tmp_path / "resumed/smollm2-135m/tiny-seed0/seqkd"
    assert json.loads((resumed / "metrics.json").read_text()) == json.loads((row / "metrics.json").read_text())
    assert (resumed / "loss_curve.csv").read_text() == (row / "loss_curve.csv").read_text()
    assert (resumed / "answers.jsonl").read_text() == (row / "answers.jsonl").read_text()


def test_a_dependency_cached_without_weights_gets_them_when_another_method_starts_from_it(tmp_path, shared_dir):
    """tiny saves no checkpoints: dckd alone leaves none; adpa_plus then needs its weights, so dckd is trained
    again and its weights are added to the same stage; the option reaches ADPA+'s config."""
    args = tiny_args(tmp_path, shared_dir, "dckd")
    cache = tmp_path / "cache"
    assert CliRunner().invoke(main, args).exit_code == 0
    stage = next((cache / "train").iterdir())
    assert not (stage / "checkpoint").exists()
    result = CliRunner().invoke(main, with_arg(args, "--methods", "adpa_plus") + ["--option", "adpa_plus.reference=student"])
    assert result.exit_code == 0, result.output
    assert (stage / "checkpoint" / "model.safetensors").exists()
    assert "train dckd:" in result.output and "train adpa_plus:" in result.output
    rec = json.loads((tmp_path / "results/smollm2-135m/tiny-seed0/adpa_plus/record.json").read_text())
    assert rec["config"]["reference"] == "student"
    assert rec["compute"]["starts_from"]["train_stage_key"] == stage.name
