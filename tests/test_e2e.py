"""End to end on the real SmolLM2 pair and real UltraFeedback rows, on the `tiny` budget.

One run of every built-in method; then the same command again (everything cached); then a method from an
outside package, found through its entry point and run by `bench run` in a fresh interpreter.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file

from harness.cli import main
from tests.harness.benchmarks.test_download import server  # noqa: F401 (a fixture: a loopback mirror of upstream)

pytestmark = pytest.mark.slow
METHODS = ["sft", "kd", "dckd", "dpo", "simpo", "seqkd", "gkd", "rkl", "plad", "pad", "dpkd", "adpa", "adpa_plus",
           "distillm", "adpa@paper"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, shared_dir):
    root = tmp_path_factory.mktemp("e2e")
    args = ["run", "--methods", ",".join(METHODS), "--pair", "smollm2-135m", "--budget", "tiny",
            "--data-dir", str(shared_dir), "--results-dir", str(root / "results"),
            "--leaderboard-dir", str(root / "leaderboards"), "--cache-dir", str(root / "cache")]
    start = time.perf_counter()
    result = CliRunner().invoke(main, args)
    elapsed = time.perf_counter() - start
    assert result.exit_code == 0, result.output + repr(result.exception)
    return {"root": root, "args": args, "first_run_s": elapsed, "output": result.output}


def records(root: Path, run: str = "tiny-seed0") -> dict[str, dict]:
    run_dir = root / "results" / "smollm2-135m" / run
    return {p.parent.name: json.loads(p.read_text()) for p in run_dir.glob("*/record.json")}


def test_run_writes_a_record_per_method_and_reference_rows(workspace):
    recs = records(workspace["root"])
    assert set(recs) == set(METHODS) | {"teacher", "student-init"}
    own_steps = {n: r["compute"]["optimizer_steps"] - r["compute"].get("starts_from", {}).get("compute", {})
                 .get("optimizer_steps", 0) for n, r in recs.items() if r["kind"] == "method"}
    assert set(own_steps.values()) == {2}  # identical budget for every method
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
        assert compute["student_tokens_trained"] > 0 and compute["flops_estimate"] > 0
        curve = (workspace["root"] / "results/smollm2-135m/tiny-seed0" / name / "loss_curve.csv").read_text()
        assert len(list(csv.DictReader(curve.splitlines()))) == 2
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
    assert data["train_rows"] == 8 and data["test_rows"] == 8
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
    args = list(workspace["args"])
    args[args.index("--methods") + 1] = "sft,nope"
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert before == {p: p.read_bytes() for p in (root / "results").rglob("*") if p.is_file()}


def plugin_env(tmp_path: Path, module: str, entry: str, signal: str | None = None) -> dict:
    """The environment of a subprocess that sees tests/fixtures/<module>.py installed as an outside package whose
    `bench.methods` entry point `entry` names it (and its `bench.signals` entry point `signal`, if given)."""
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    shutil.copy(Path(__file__).parent / "fixtures" / f"{module}.py", plugin / f"{module}.py")
    info = plugin / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n")
    signals = f"\n[bench.signals]\n{signal} = {module}\n" if signal else ""
    (info / "entry_points.txt").write_text(f"[bench.methods]\n{entry} = {module}\n{signals}")
    return {**os.environ, "PYTHONPATH": str(plugin)}


def test_outside_method_registered_through_entry_point(workspace, tmp_path):
    env = plugin_env(tmp_path, "outside_method", "outside_nll")
    args = list(workspace["args"])
    args[args.index("--methods") + 1] = "outside_nll,sft"
    args += ["--option", "outside_nll.scale=2.0"]
    listing = subprocess.run([sys.executable, "-m", "harness.cli", "methods"], env=env, capture_output=True, text=True)
    assert "outside_nll" in listing.stdout, listing.stderr
    done = subprocess.run([sys.executable, "-m", "harness.cli", *args], env=env, capture_output=True, text=True,
                          timeout=900)
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
    args = list(workspace["args"])
    args[args.index("--methods") + 1] = "outside_margin_nll"
    done = subprocess.run([sys.executable, "-m", "harness.cli", *args], env=env, capture_output=True, text=True,
                          timeout=900)
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
    args = list(workspace["args"])
    args[args.index("--methods") + 1] = "nan_at_step2,after_nan,sft"
    args[args.index("--results-dir") + 1] = str(tmp_path / "results")
    args[args.index("--leaderboard-dir") + 1] = str(tmp_path / "leaderboards")
    done = subprocess.run([sys.executable, "-m", "harness.cli", *args], env=env,
                          capture_output=True, text=True, timeout=900)
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
    args = list(workspace["args"])
    args[args.index("--methods") + 1] = "sft"
    args += ["--set", "warmstart_steps=1", "--run-name", "warm"]
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


def test_a_dependency_cached_without_weights_gets_them_when_another_method_starts_from_it(workspace, tmp_path):
    """tiny saves no checkpoints: dckd alone leaves none; adpa_plus then needs its weights, so dckd is trained
    again and its weights are added to the same stage; the option reaches ADPA+'s config."""
    args = list(workspace["args"])
    cache = tmp_path / "cache"
    args[args.index("--cache-dir") + 1] = str(cache)
    args[args.index("--results-dir") + 1] = str(tmp_path / "results")
    args[args.index("--methods") + 1] = "dckd"
    assert CliRunner().invoke(main, args).exit_code == 0
    stage = next((cache / "train").iterdir())
    assert not (stage / "checkpoint").exists()
    args[args.index("--methods") + 1] = "adpa_plus"
    result = CliRunner().invoke(main, args + ["--option", "adpa_plus.reference=student"])
    assert result.exit_code == 0, result.output
    assert (stage / "checkpoint" / "model.safetensors").exists()
    assert "train dckd:" in result.output and "train adpa_plus:" in result.output
    rec = json.loads((tmp_path / "results/smollm2-135m/tiny-seed0/adpa_plus/record.json").read_text())
    assert rec["config"]["reference"] == "student"
    assert rec["compute"]["starts_from"]["train_stage_key"] == stage.name


def eval_args(workspace, *extra: str) -> list[str]:
    root = workspace["root"]
    return ["eval", "--run", "tiny-seed0", "--data-dir",
            str(workspace["args"][workspace["args"].index("--data-dir") + 1]),
            "--results-dir", str(root / "results"), "--cache-dir", str(root / "cache"),
            "--leaderboard-dir", str(root / "lb"), *extra]


def test_mt_bench_eval_with_a_local_judge_is_cached_and_recorded(workspace):
    """bench eval on the tiny run's teacher and dckd rows (dckd keeps its weights: adpa_plus starts from it), a
    2-question subset, the real SmolLM2 teacher as judge. A second call answers and judges nothing anew."""
    root = workspace["root"]
    args = eval_args(workspace, "--benchmarks", "mt_bench", "--judge", "local:teacher", "--rows", "teacher,dckd",
                     "--limit", "2", "--max-new-tokens", "8", "--judge-max-tokens", "8")
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output + repr(first.exception)
    for row in ("teacher", "dckd"):
        folder = root / "results/smollm2-135m/tiny-seed0" / row / "benchmarks"
        result = json.loads((folder / "mt_bench.json").read_text())
        m = result["metrics"]
        assert m["n"] + m["n_failed"] == 4  # 2 questions x 2 turns; unparsed ratings are counted, not dropped silently
        assert result["limit"] == 2 and len(result["question_ids"]) == 2 and not result["official_judge"]
        assert result["judge"]["kind"] == "transformers" and result["judge_decoding"]["max_tokens"] == 8
        assert result["judge_calls"]["called"] == 4
        assert result["answer_prompt"].startswith("the model's own chat template")  # not FastChat's: said so
        lines = [json.loads(x) for x in (folder / "mt_bench_judgments.jsonl").read_text().splitlines()]
        assert [(x["turn"], x["prompt"].endswith("multi-turn")) for x in lines[:2]] == [(1, False), (2, True)]
        assert all(x["judgment"] for x in lines)
    # Two categories, not two questions of one.
    cats = {x["category"] for x in map(json.loads, (root / "results/smollm2-135m/tiny-seed0/teacher/benchmarks/"
                                                     "mt_bench_judgments.jsonl").read_text().splitlines())}
    assert len(cats) == 2
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0, second.output
    assert "(0 judge calls, 4 cached)" in second.output and "MT-Bench turn" not in second.output
    # A row whose budget kept no weights: a clear error, nothing else lost.
    args[args.index("--rows") + 1] = "sft"
    bad = CliRunner().invoke(main, args)
    assert bad.exit_code == 2 and "saved no checkpoint" in bad.output


def test_arena_hard_eval_plays_two_games_per_question(workspace):
    root = workspace["root"]
    args = eval_args(workspace, "--benchmarks", "arena_hard", "--judge", "local:teacher", "--rows", "teacher",
                     "--limit", "1", "--max-new-tokens", "4", "--judge-max-tokens", "4")
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output + repr(first.exception)
    folder = root / "results/smollm2-135m/tiny-seed0/teacher/benchmarks"
    result = json.loads((folder / "arena_hard.json").read_text())
    m = result["metrics"]
    assert m["n_questions"] == 1 and m["n_games"] == 2 and result["baseline"] == "gpt-4-0314"
    assert 2 <= result["judge_calls"] <= 4  # one call per game, a second when the first gave no verdict
    assert (m["score"] is None) == (m["n_battles"] == 0)
    line = json.loads((folder / "arena_hard_judgments.jsonl").read_text())
    assert len(line["games"]) == 2 and all(g["judgment"] for g in line["games"])
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "(0 judge calls)" in again.output


def test_alpaca_eval_with_constrained_local_verdicts(workspace):
    """AlpacaEval 2 on the teacher row: the local judge's log-probs of `m` and `M` give each preference through
    the upstream switch rule; the leaderboard gets a labelled column; a second call is served from the caches."""
    from harness.benchmarks.alpaca_eval import preference_from_top_logprobs

    args = eval_args(workspace, "--benchmarks", "alpaca_eval", "--judge", "local:teacher", "--verdict",
                     "constrained", "--rows", "teacher", "--limit", "2", "--max-new-tokens", "4")
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output + repr(first.exception)
    folder = workspace["root"] / "results/smollm2-135m/tiny-seed0/teacher/benchmarks"
    result = json.loads((folder / "alpaca_eval.json").read_text())
    assert result["verdict"] == "constrained" and result["judge_decoding"]["choices"] == ["m", "M"]
    lines = [json.loads(x) for x in (folder / "alpaca_eval_judgments.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and len({x["dataset"] for x in lines}) == 2  # stratified: two source data sets
    for x in lines:
        assert [t for t, _ in x["top_logprobs"]] == ["m", "M"]
        assert x["preference"] == pytest.approx(preference_from_top_logprobs(x["top_logprobs"], x["switched"]))
    prefs = [x["preference"] for x in lines]
    assert result["metrics"]["win_rate"] == pytest.approx(100 * sum(p - 1 for p in prefs) / 2)
    assert result["metrics"]["n_total"] == 2 and result["metrics"]["lc_win_rate_minimal"] is None
    board = (workspace["root"] / "lb" / "smollm2-135m.md").read_text()
    assert re.search(r"AlpacaEval 2 WR % \[\d\] \(n=2\)", board) and "constrained verdicts" in board
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "(0 judge calls, 2 cached)" in again.output
    assert "alpaca_eval answers" not in again.output


def test_arena_hard_with_constrained_verdicts_always_has_battles(workspace):
    args = eval_args(workspace, "--benchmarks", "arena_hard", "--judge", "local:teacher", "--verdict",
                     "constrained", "--rows", "teacher", "--limit", "1", "--max-new-tokens", "4")
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output + repr(first.exception)
    result = json.loads((workspace["root"] / "results/smollm2-135m/tiny-seed0/teacher/benchmarks/arena_hard.json")
                        .read_text())
    m = result["metrics"]
    assert m["n_unparsed_games"] == 0 and m["n_battles"] >= 2 and result["judge_calls"] == 2
    assert m["score"] is not None and m["ci95"][0] <= m["score"] <= m["ci95"][1]
    # upstream's joint bootstrap over the rows scored (here one), the judge config's attempts, answer lengths
    assert result["interval"] == {"bootstrap": "joint", "rounds": 100, "seed": 42, "models": ["teacher"]}
    assert result["judgment_attempts"] == 2
    assert 0 < m["avg_answer_tokens"] <= 4 and m["answer_token_counter"].startswith(("tiktoken", "the row's own"))


def test_rm_winrate_with_a_real_reward_model(workspace, tmp_path):
    """A real sequence-classification reward model (SmolLM2's first two layers and a seeded score head, saved
    as safetensors) scores the sft and kd answers against the teacher's; the win rate follows from the rewards
    it recorded, and a second call scores nothing anew."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from harness.models import drop_decoder_layers, materialise
    from harness.registry import PAIRS

    folder = materialise(PAIRS.get("smollm2-135m").teacher)
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, dtype=torch.float32)
    drop_decoder_layers(rm, 2, rm.config.num_hidden_layers).save_pretrained(tmp_path / "rm")
    AutoTokenizer.from_pretrained(folder).save_pretrained(tmp_path / "rm")
    args = eval_args(workspace, "--benchmarks", "rm_winrate", "--reward-model", str(tmp_path / "rm"), "--rows",
                     "teacher,sft,kd")
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output + repr(first.exception)
    run_dir = workspace["root"] / "results/smollm2-135m/tiny-seed0"
    assert not (run_dir / "teacher/benchmarks/rm_winrate.json").exists()  # the reference is not scored against itself
    for row in ("sft", "kd"):
        result = json.loads((run_dir / row / "benchmarks/rm_winrate.json").read_text())
        per = [json.loads(x) for x in (run_dir / row / "benchmarks/rm_winrate_judgments.jsonl").read_text().splitlines()]
        wins = [1.0 if p["reward"] > p["reward_ref"] else 0.5 if p["reward"] == p["reward_ref"] else 0.0 for p in per]
        assert result["metrics"]["n"] == len(per) == 2
        assert result["metrics"]["win_rate"] == pytest.approx(100 * sum(wins) / len(wins))
        assert result["reference"] == "teacher" and result["reward_model"]["kind"] == "reward_model"
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert json.loads((run_dir / "kd/benchmarks/rm_winrate.json").read_text())["reward_calls"] == 0


def test_an_lm_eval_task_scores_checkpoints_and_reaches_the_leaderboard(workspace, tmp_path, shared_dir):
    """A local lm-eval YAML task (chosen vs rejected as a two-way choice on shared UltraFeedback rows) run on the
    teacher and a trained row through `bench eval`: one result per row with the seeded documents, a column on
    the leaderboard."""
    import yaml

    from tests.harness.benchmarks.test_lm_eval_tasks import mc_rows, mc_task

    source = [json.loads(line) for line in
              (shared_dir / "data/ultrafeedback_binarized_1k/test.jsonl").read_text().splitlines()]
    (tmp_path / "pref.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc_rows(source, 10, 60)))
    (tmp_path / "bench_e2e_pref.yaml").write_text(yaml.safe_dump(mc_task("bench_e2e_pref",
                                                                         str(tmp_path / "pref.jsonl"))))
    args = eval_args(workspace, "--benchmarks", "lm_eval:bench_e2e_pref", "--lm-eval-include", str(tmp_path),
                     "--rows", "teacher,dckd", "--limit", "4")
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output + repr(out.exception)
    run_dir = workspace["root"] / "results/smollm2-135m/tiny-seed0"
    results = [json.loads((run_dir / row / "benchmarks/lm_eval_bench_e2e_pref.json").read_text())
               for row in ("teacher", "dckd")]
    for r in results:
        acc = r["tasks"]["bench_e2e_pref"]["acc"]
        assert acc["n"] == 4 and acc["value"] in (0.0, 0.25, 0.5, 0.75, 1.0)
        assert len(r["question_ids"]) == 4 and r["limit"] == 4
    assert results[0]["question_ids"] == results[1]["question_ids"]
    assert "bench_e2e_pref acc [" in (workspace["root"] / "lb" / "smollm2-135m.md").read_text()


def test_without_data_dir_the_benchmark_files_come_from_upstream(workspace, server):  # noqa: F811
    """No --data-dir: MT-Bench's files are downloaded (here from a loopback mirror of the upstream URLs) into
    the cache, then the benchmark runs on them."""
    root = workspace["root"]
    cache = root / "cache-download"
    args = ["eval", "--benchmarks", "mt_bench", "--judge", "local:teacher", "--verdict", "constrained", "--run",
            "tiny-seed0", "--rows", "teacher", "--limit", "1", "--max-new-tokens", "4",
            "--results-dir", str(root / "results"), "--cache-dir", str(cache), "--leaderboard-dir", str(root / "lb")]
    out = CliRunner().invoke(main, args, env={"BENCH_DATA_DIR": ""})
    assert out.exit_code == 0, out.output + repr(out.exception)
    assert (cache / "data/benchmarks/mt_bench/question.jsonl").exists()
    assert any("question.jsonl" in path for path in server.requests)
    result = json.loads((root / "results/smollm2-135m/tiny-seed0/teacher/benchmarks/mt_bench.json").read_text())
    assert result["metrics"]["n"] == 2 and result["metrics"]["n_failed"] == 0  # constrained: every rating parses


def test_bench_run_scores_benchmarks_in_the_same_command(workspace):
    """`bench run --benchmarks`: the (cached) training, then MT-Bench on every row of the run, one command."""
    args = [a for a in workspace["args"]]
    args[args.index("--methods") + 1] = "sft,kd"
    args += ["--benchmarks", "mt_bench", "--judge", "local:teacher", "--verdict", "constrained", "--limit", "1",
             "--max-new-tokens", "4"]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output + repr(out.exception)
    run_dir = workspace["root"] / "results/smollm2-135m/tiny-seed0"
    rows = {p.parent.parent.name for p in run_dir.glob("*/benchmarks/mt_bench.json")}
    assert {"teacher", "student-init", "sft", "kd"} <= rows and "rkl" not in rows  # what it trained, the references
    board = (workspace["root"] / "leaderboards" / "smollm2-135m.md").read_text()
    assert "### Benchmarks" in board and "MT-Bench (1-10)" in board


# ---------------------------------------------------------------- killed runs resume (a real SIGKILL)

def start(args: list[str]) -> tuple[subprocess.Popen, list[bytes]]:
    """A `bench` process whose stderr is collected as it arrives (progress bars end lines with \\r, not \\n)."""
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    chunks: list[bytes] = []

    def pump():
        for chunk in iter(lambda: proc.stderr.read1(4096), b""):
            chunks.append(chunk)

    threading.Thread(target=pump, daemon=True).start()
    return proc, chunks


def kill_when(proc: subprocess.Popen, chunks: list[bytes], ready, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, b"".join(chunks).decode(errors="replace")[-3000:]
        assert time.monotonic() < deadline, "the moment to kill never came"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def copy_cache(workspace, dest: Path, parts=("signals", "eval", "answers")) -> Path:
    """The finished stages a resumed run should reuse (not the multi-GB checkpoints it does not need)."""
    for part in parts:
        if (workspace["root"] / "cache" / part).exists():
            shutil.copytree(workspace["root"] / "cache" / part, dest / part)
    return dest


def test_a_run_killed_while_sampling_and_while_training_resumes_to_the_same_metrics(workspace, tmp_path):
    """seqkd samples the teacher's answers, then trains. Killed (SIGKILL) during the sampling, then again after a
    training checkpoint, the same command ends with the metrics and loss curve of a run never interrupted."""
    cache = copy_cache(workspace, tmp_path / "cache")

    def args(results: str) -> list[str]:
        a = list(workspace["args"])
        a[a.index("--methods") + 1] = "seqkd"
        for flag, value in (("--results-dir", tmp_path / results), ("--leaderboard-dir", tmp_path / f"lb-{results}"),
                            ("--cache-dir", cache)):
            a[a.index(flag) + 1] = str(value)
        return a + ["--set", "max_steps=4", "--checkpoint-every", "1"]

    straight = subprocess.run([sys.executable, "-m", "harness.cli", *args("straight")], capture_output=True, text=True,
                              timeout=900)
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
    done = subprocess.run([sys.executable, "-m", "harness.cli", *args("resumed")], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"train seqkd: resuming from the checkpoint at step [123]", done.stderr)
    assert not checkpoints.parent.exists()  # the finished stage removed its resume folder
    resumed = tmp_path / "resumed/smollm2-135m/tiny-seed0/seqkd"
    assert json.loads((resumed / "metrics.json").read_text()) == json.loads((row / "metrics.json").read_text())
    assert (resumed / "loss_curve.csv").read_text() == (row / "loss_curve.csv").read_text()
    assert (resumed / "answers.jsonl").read_text() == (row / "answers.jsonl").read_text()


def test_an_evaluation_killed_while_judging_resumes_to_the_same_scores(workspace, tmp_path):
    """MT-Bench judged by the local teacher: killed (SIGKILL) after the first judgments reached the judgment
    cache, the same command makes only the missing calls and ends with the scores of an uninterrupted one."""
    def setup(name: str) -> list[str]:
        results = tmp_path / name / "results"
        shutil.copytree(workspace["root"] / "results/smollm2-135m/tiny-seed0/teacher",
                        results / "smollm2-135m/tiny-seed0/teacher")
        cache = copy_cache(workspace, tmp_path / name / "cache", parts=("answers",))
        return ["eval", "--benchmarks", "mt_bench", "--judge", "local:teacher", "--rows", "teacher", "--limit", "2",
                "--max-new-tokens", "8", "--judge-max-tokens", "48", "--run", "tiny-seed0",
                "--data-dir", workspace["args"][workspace["args"].index("--data-dir") + 1],
                "--results-dir", str(results), "--leaderboard-dir", str(tmp_path / name / "lb"),
                "--cache-dir", str(cache)]

    straight_args, resumed_args = setup("straight"), setup("resumed")
    straight = subprocess.run([sys.executable, "-m", "harness.cli", *straight_args], capture_output=True, text=True,
                              timeout=900)
    assert straight.returncode == 0, straight.stderr[-3000:]
    journal = tmp_path / "resumed/cache/judgments/judgments.jsonl"
    proc, err = start(resumed_args)
    kill_when(proc, err, lambda: journal.exists() and journal.read_text().count("\n") >= 1)
    n_before = journal.read_text().count("\n")
    assert n_before < 4  # killed before every judgment was made
    done = subprocess.run([sys.executable, "-m", "harness.cli", *resumed_args], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"({4 - n_before} judge calls, {n_before} cached)" in done.stderr
    result = "results/smollm2-135m/tiny-seed0/teacher/benchmarks/mt_bench"
    a = json.loads((tmp_path / "straight" / f"{result}.json").read_text())
    b = json.loads((tmp_path / "resumed" / f"{result}.json").read_text())
    assert a["metrics"] == b["metrics"]
    judged = [{k: v for k, v in json.loads(x).items()} for x in (tmp_path / "straight" / f"{result}_judgments.jsonl")
              .read_text().splitlines()]
    assert judged == [json.loads(x) for x in (tmp_path / "resumed" / f"{result}_judgments.jsonl").read_text().splitlines()]
