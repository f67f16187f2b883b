"""End to end on the real SmolLM2 pair and real UltraFeedback rows, on the `tiny` budget.

One run of every built-in method; then the same command again (everything cached); then methods and a signal from
outside packages, found through their entry points and run by `bench run` in a fresh interpreter; a method whose
loss turns NaN; a shared warm start. Benchmarks on a tiny run: test_e2e_benchmarks.py; killed runs and a dependency
without weights: test_e2e_resume.py.
"""

from __future__ import annotations

import csv
import json
import math
import re
import time

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file

from harness.cli import main
from tests.e2e_helpers import bench, plugin_env, records, tiny_workspace, with_arg

pytestmark = pytest.mark.slow
METHODS = ["sft", "kd", "dckd", "dpo", "simpo", "seqkd", "gkd", "rkl", "plad", "pad", "dpkd", "adpa", "adpa_plus",
           "distillm", "adpa@paper"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, shared_dir):
    return tiny_workspace(tmp_path_factory.mktemp("e2e"), shared_dir, METHODS)


def test_run_writes_a_record_per_method_and_reference_rows(workspace):
    recs = records(workspace["root"])
    assert set(recs) == set(METHODS) | {"teacher", "student-init"}
    own_steps = {n: r["compute"]["optimizer_steps"] - r["compute"].get("starts_from", {}).get("compute", {})
                 .get("optimizer_steps", 0) for n, r in recs.items() if r["kind"] == "method"}
    # Identical budget for every method; pad trains one pass over the prompts its filters keep (of 8, 4 a step),
    # as its released script does, so its steps are the budget's at most.
    pad_rows = recs["pad"]["compute"]["rows_trained"]
    assert own_steps["pad"] == math.ceil(pad_rows / 4) and 0 <= pad_rows <= 8
    assert {steps for name, steps in own_steps.items() if name != "pad"} == {2}
    assert all("rows_trained" not in r.get("compute", {}) for n, r in recs.items() if n != "pad")
    # ADPA+ continues the run's own DCKD student (the same stage, not a copy) and carries its cost.
    plus = recs["adpa_plus"]["compute"]
    assert plus["starts_from"]["method"] == "dckd"
    assert plus["starts_from"]["train_stage_key"] == recs["dckd"]["train_stage_key"]
    assert plus["optimizer_steps"] == 4
    assert plus["flops_estimate"] > recs["dckd"]["compute"]["flops_estimate"]
    # ADPA and ADPA+ (released recipe) take the pair's teacher as pi_dpo, as DCKD does: no teacher-DPO stage; their
    # advantage signals differ (different starting students). The paper recipe makes a DPO teacher at its own
    # small learning rate and records how far it moved from the teacher.
    stages = {n: recs[n]["compute"]["signal_stages"]["adpa_advantage"] for n in ("adpa", "adpa_plus", "adpa@paper")}
    assert "teacher_dpo" not in stages["adpa"] and "teacher_dpo" not in stages["adpa_plus"]
    assert stages["adpa"]["stage_key"] != stages["adpa_plus"]["stage_key"]
    drift = stages["adpa@paper"]["teacher_dpo"]["drift_kl_heldout"]
    assert drift is not None and abs(drift) < 1e-3  # 2 steps at lr 5e-7 barely move the teacher (not at 1e-4)
    assert recs["adpa@paper"]["method"] == "adpa" and recs["adpa@paper"]["recipe"]["name"] == "paper"
    assert recs["adpa"]["recipe"] == {"name": "official", "source": recs["adpa"]["recipe"]["source"],
                                      "overridden": [], "learning_rate_used": 1e-4, "released_learning_rate": 5e-7}
    assert recs["adpa@paper"]["config"]["advantage_mode"] == "signed" and recs["adpa"]["config"]["sft_weight"] == 1.0
    for name in ("adpa", "adpa_plus", "distillm"):
        assert recs[name]["compute"]["teacher_forward_tokens"] > 0, name
    assert recs["adpa"]["compute"]["generated_tokens"] > 0  # the student's greedy answers
    for name in METHODS:
        rec = recs[name]
        assert rec["budget"]["name"] == "tiny" and rec["seed"] == 0
        assert rec["environment"]["torch"] and rec["environment"]["transformers"]
        assert "git_revision" in rec and rec["config"] is not None
        for metric in ("pref_acc", "pref_margin", "nll_chosen", "kl_teacher", "rouge_l"):
            assert rec["metrics"][metric]["n"] > 0
        compute = rec["compute"]
        path = workspace["root"] / "results/smollm2-135m/tiny-seed0" / name / "loss_curve.csv"
        curve = list(csv.DictReader(path.read_text().splitlines())) if path.exists() else []
        assert len(curve) == own_steps[name] and compute["flops_estimate"] > 0
        # Every step forwards: pad's steps hold kept prompts only (a filler row completing the last one is
        # masked), so it forwards exactly when it kept some prompt.
        assert (compute["student_tokens_trained"] > 0) == (len(curve) > 0), name
        assert all(row.get(f"term/{rec['config']['loss']}") for row in curve) if name == "pad" else curve, name
    # Teacher tokens only for methods that consume teacher signals; dckd reads both sides.
    assert recs["sft"]["compute"]["teacher_forward_tokens"] == 0
    assert recs["dpo"]["compute"]["teacher_forward_tokens"] == 0 and recs["dpo"]["compute"]["reference_forward_tokens"] > 0
    assert recs["dckd"]["compute"]["teacher_forward_tokens"] > recs["kd"]["compute"]["teacher_forward_tokens"] > 0
    # Cached teacher answers (seqkd) and on-policy samples with a live teacher (gkd, rkl) are accounted.
    assert recs["seqkd"]["compute"]["generated_tokens"] > 0 and recs["seqkd"]["compute"]["teacher_forward_tokens"] > 0
    for name in ("gkd", "rkl", "dpkd"):
        assert recs[name]["compute"]["teacher_forward_tokens"] > 0
    assert recs["rkl"]["compute"]["generated_tokens"] > 0  # rkl samples every micro-batch
    assert recs["simpo"]["compute"]["teacher_forward_tokens"] == 0
    # plad reads the same cached teacher answers as seqkd, plus the initial student's own samples.
    assert recs["plad"]["compute"]["generated_tokens"] > recs["seqkd"]["compute"]["generated_tokens"]
    # pad: 3 student samples per prompt (the tiny budget), scored by the teacher.
    assert recs["pad"]["compute"]["generated_tokens"] > 0 and recs["pad"]["compute"]["teacher_forward_tokens"] > 0
    # The teacher's KL to its own cached distribution is zero; the pruned student is measurably worse.
    assert recs["teacher"]["metrics"]["kl_teacher"]["value"] == pytest.approx(0.0, abs=1e-4)
    assert recs["student-init"]["metrics"]["kl_teacher"]["value"] > 0.5
    assert recs["student-init"]["metrics"]["nll_chosen"]["value"] > recs["teacher"]["metrics"]["nll_chosen"]["value"] + 0.5
    # Data provenance and truncation are recorded.
    data = recs["sft"]["data"]
    assert data["train_rows"] == 8 and data["test_rows"] == 4
    assert sum(data["truncation"]["train"].values()) > 0


def test_training_moved_the_students(workspace):
    recs = records(workspace["root"])
    init_nll = recs["student-init"]["metrics"]["nll_chosen"]["value"]
    # Two steps at lr 1e-4 on chosen responses lower held-out NLL for sft, and KL to the teacher for kd.
    assert recs["sft"]["metrics"]["nll_chosen"]["value"] < init_nll
    init_kl = recs["student-init"]["metrics"]["kl_teacher"]["value"]
    for name in ("kd", "dckd", "gkd", "rkl", "distillm", "adpa_plus"):  # methods that match the teacher's distributions
        assert recs[name]["metrics"]["kl_teacher"]["value"] < init_kl, name


NLL_TOLERANCE = 0.05  # nats/token: two steps may move held-out NLL a little either way, a collapse moves it by ~1


def non_degenerate(text: str) -> bool:
    """Text, not a run of one symbol or of end-of-turn: at least three different words of letters."""
    return len({w.lower() for w in re.findall(r"[A-Za-z]{2,}", text)}) >= 3


def test_adpa_under_the_released_recipe_does_not_collapse(workspace):
    """The committed smoke run of the old defaults (paper form, a teacher-DPO stage at the students' lr) turned ADPA's
    answers into strings of '*' and ADPA+'s into end-of-turn alone; the released recipe must not."""
    recs = records(workspace["root"])
    nll = {name: recs[name]["metrics"]["nll_chosen"]["value"] for name in recs}
    assert nll["adpa"] <= nll["student-init"] + NLL_TOLERANCE  # ADPA starts from the initial student
    assert nll["adpa_plus"] <= nll["dckd"] + NLL_TOLERANCE  # ADPA+ from the run's DCKD student
    run_dir = workspace["root"] / "results/smollm2-135m/tiny-seed0"
    for name in ("adpa", "adpa_plus"):
        answers = [json.loads(line)["answer"] for line in (run_dir / name / "answers.jsonl").read_text().splitlines()]
        assert any(non_degenerate(a) for a in answers), (name, answers)
    assert not non_degenerate("*" * 48) and not non_degenerate("") and non_degenerate("The sky is blue.")


def test_leaderboard_written_and_regenerated_from_results_alone(workspace, tmp_path):
    root = workspace["root"]
    md = (root / "leaderboards" / "smollm2-135m.md").read_text()
    for row in METHODS + ["*teacher*", "*student-init*"]:
        assert f"| {row} |" in md
    out = tmp_path / "lb"
    result = CliRunner().invoke(main, ["leaderboard", "--results-dir", str(root / "results"), "--leaderboard-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "smollm2-135m.md").read_text() == md
    assert (out / "smollm2-135m.csv").read_bytes() == (root / "leaderboards" / "smollm2-135m.csv").read_bytes()


def test_rerun_is_served_from_cache(workspace):
    root = workspace["root"]
    before = {p: p.read_bytes() for p in (root / "results").rglob("*") if p.is_file()}
    start = time.perf_counter()
    result = CliRunner().invoke(main, workspace["args"])
    elapsed = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    assert "[bench] train " not in result.output  # nothing trained
    assert "loading teacher" not in result.output
    assert elapsed < 30, f"cached re-run took {elapsed:.1f}s"
    after = {p: p.read_bytes() for p in (root / "results").rglob("*") if p.is_file()}
    assert after == before  # identical records


def test_failed_invocation_loses_nothing(workspace):
    root = workspace["root"]
    before = {p: p.read_bytes() for p in (root / "results").rglob("*") if p.is_file()}
    result = CliRunner().invoke(main, with_arg(workspace["args"], "--methods", "sft,nope"))
    assert result.exit_code == 2
    assert before == {p: p.read_bytes() for p in (root / "results").rglob("*") if p.is_file()}


def test_outside_method_registered_through_entry_point(workspace, tmp_path):
    env = plugin_env(tmp_path, "outside_method", "outside_nll")
    args = with_arg(workspace["args"], "--methods", "outside_nll,sft") + ["--option", "outside_nll.scale=2.0"]
    listing = bench(["methods"], env=env)
    assert "outside_nll" in listing.stdout, listing.stderr
    done = bench(args, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "train outside_nll" in done.stderr and "train sft:" not in done.stderr  # sft came from the cache
    rec = json.loads((workspace["root"] / "results/smollm2-135m/tiny-seed0/outside_nll/record.json").read_text())
    assert rec["config"] == {"scale": 2.0}
    assert rec["compute"]["optimizer_steps"] == 2
    curve = list(csv.DictReader((workspace["root"] / "results/smollm2-135m/tiny-seed0/outside_nll/loss_curve.csv")
                                .read_text().splitlines()))
    assert "term/nll_rejected" in curve[0]


def test_outside_signal_and_method_registered_through_entry_points(workspace, tmp_path):
    """A package outside bench defines a signal and a method that needs it: one file, two entry points."""
    env = plugin_env(tmp_path, "outside_signal", "outside_margin_nll", signal="outside_margin")
    done = bench(with_arg(workspace["args"], "--methods", "outside_margin_nll"), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "signal outside_margin (train)" in done.stderr  # computed once, into the stage cache
    rec = json.loads((workspace["root"] / "results/smollm2-135m/tiny-seed0/outside_margin_nll/record.json")
                     .read_text())
    compute = rec["compute"]
    assert rec["needs"] == ["outside_margin"] and compute["signals_shared"] == ["outside_margin"]
    stage = workspace["root"] / "cache" / "signals" / compute["signal_stages"]["outside_margin"]["stage_key"]
    info = json.loads((stage / "info.json").read_text())
    assert info["name"] == "outside_margin" and info["examples"] == rec["data"]["train_rows"]
    assert compute["teacher_forward_tokens"] == info["forward_tokens"] > 0  # counted as the teacher's work
    # The collated margins reached the loss: the step means it logged are the stored margins' own values.
    margins = load_file(str(stage / "signal.safetensors"))["margin"]
    curve = list(csv.DictReader((workspace["root"] / "results/smollm2-135m/tiny-seed0/outside_margin_nll/"
                                 "loss_curve.csv").read_text().splitlines()))
    logged = [float(row["term/teacher_margin_mean"]) for row in curve]
    assert all(margins.min() - 1e-4 <= v <= margins.max() + 1e-4 for v in logged) and any(v != 0 for v in logged)
    assert float(curve[0]["term/weighted_nll"]) > 0


def test_a_nan_loss_stops_that_method_and_the_others_finish(workspace, tmp_path):
    """A plugin method whose loss turns NaN at step 2: it stops with a diagnostic, the method that starts from
    it is skipped, sft still gets its record and the leaderboard, and the command exits non-zero."""
    env = plugin_env(tmp_path, "nan_method", "nan_method")
    root = workspace["root"]
    args = with_arg(workspace["args"], "--methods", "nan_at_step2,after_nan,sft")
    args = with_arg(with_arg(args, "--results-dir", tmp_path / "results"), "--leaderboard-dir", tmp_path / "leaderboards")
    done = bench(args, env=env)
    assert done.returncode == 3, done.stderr[-3000:]
    run_dir = tmp_path / "results/smollm2-135m/tiny-seed0"
    failure = json.loads((run_dir / "nan_at_step2" / "failure.json").read_text())
    assert failure["step"] == 2 and failure["loss"] == "nan" and math.isfinite(failure["last_finite_loss"])
    assert len(failure["rows"]) == 2 and all(len(mb) == 2 for mb in failure["rows"])  # grad_accum x batch_size
    assert not (run_dir / "nan_at_step2" / "record.json").exists()
    assert not (run_dir / "after_nan").exists()
    assert (run_dir / "sft" / "record.json").exists() and (run_dir / "teacher" / "record.json").exists()
    assert "after_nan: skipped: it starts from nan_at_step2" in done.stderr
    assert "error: 2 method(s) did not finish" in done.stderr and "Traceback" not in done.stderr
    assert re.search(r"^\| (\*\*)?sft(\*\*)? \|", (tmp_path / "leaderboards" / "smollm2-135m.md").read_text(), re.M)
    assert list((root / "cache" / "train").glob(".partial-*")) == []  # no resume folder left behind


def test_shared_warm_start_moves_the_starting_point(workspace):
    args = with_arg(workspace["args"], "--methods", "sft") + ["--set", "warmstart_steps=1", "--run-name", "warm"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "warm-start: SFT of the student for 1 steps" in result.output
    warm, cold = records(workspace["root"], "warm"), records(workspace["root"])
    assert warm["student-init"]["warmstart_steps"] == 1
    assert warm["sft"]["budget"]["warmstart_steps"] == 1
    # One SFT step on the training rows lowers the held-out NLL of the shared starting point.
    assert warm["student-init"]["metrics"]["nll_chosen"]["value"] < cold["student-init"]["metrics"]["nll_chosen"]["value"]
    # The teacher row does not depend on the student's start and comes from the cache.
    assert warm["teacher"]["metrics"] == cold["teacher"]["metrics"]
