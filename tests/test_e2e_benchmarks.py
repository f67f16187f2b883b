"""Benchmarks end to end on a `tiny` run of the real SmolLM2 pair (sft, kd, dckd and adpa_plus, so that dckd keeps
its weights): MT-Bench, Arena-Hard and AlpacaEval 2 judged by the local SmolLM2 teacher, a real reward model, a
local lm-eval task, benchmark files from a loopback mirror of upstream, `bench run --benchmarks`, and an
evaluation killed while judging that resumes to the same scores.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
from click.testing import CliRunner

from harness.cli import main
from tests.e2e_helpers import bench, kill_when, start, tiny_workspace, with_arg
from tests.harness.benchmarks.test_download import server  # noqa: F401 (a fixture: a loopback mirror of upstream)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, shared_dir):
    return tiny_workspace(tmp_path_factory.mktemp("e2e-benchmarks"), shared_dir, ["sft", "kd", "dckd", "adpa_plus"])


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
    bad = CliRunner().invoke(main, with_arg(args, "--rows", "sft"))
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
    args = with_arg(workspace["args"], "--methods", "sft,kd") + ["--benchmarks", "mt_bench", "--judge", "local:teacher", "--verdict", "constrained", "--limit", "1",
             "--max-new-tokens", "4"]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output + repr(out.exception)
    run_dir = workspace["root"] / "results/smollm2-135m/tiny-seed0"
    rows = {p.parent.parent.name for p in run_dir.glob("*/benchmarks/mt_bench.json")}
    assert {"teacher", "student-init", "sft", "kd"} <= rows and "adpa_plus" not in rows  # what it trained, the references
    board = (workspace["root"] / "leaderboards" / "smollm2-135m.md").read_text()
    assert "### Benchmarks" in board and "MT-Bench (1-10)" in board


def test_an_evaluation_killed_while_judging_resumes_to_the_same_scores(workspace, tmp_path):
    """MT-Bench judged by the local teacher: killed (SIGKILL) after the first judgments reached the judgment
    cache, the same command makes only the missing calls and ends with the scores of an uninterrupted one."""
    def setup(name: str) -> list[str]:
        results = tmp_path / name / "results"
        shutil.copytree(workspace["root"] / "results/smollm2-135m/tiny-seed0/teacher",
                        results / "smollm2-135m/tiny-seed0/teacher")
        cache = tmp_path / name / "cache"  # the teacher's cached answers: only the judging is left to do
        shutil.copytree(workspace["root"] / "cache" / "answers", cache / "answers")
        return ["eval", "--benchmarks", "mt_bench", "--judge", "local:teacher", "--rows", "teacher", "--limit", "2",
                "--max-new-tokens", "8", "--judge-max-tokens", "48", "--run", "tiny-seed0",
                "--data-dir", workspace["args"][workspace["args"].index("--data-dir") + 1],
                "--results-dir", str(results), "--leaderboard-dir", str(tmp_path / name / "lb"),
                "--cache-dir", str(cache)]

    straight_args, resumed_args = setup("straight"), setup("resumed")
    straight = bench(straight_args)
    assert straight.returncode == 0, straight.stderr[-3000:]
    journal = tmp_path / "resumed/cache/judgments/judgments.jsonl"
    proc, err = start(resumed_args)
    kill_when(proc, err, lambda: journal.exists() and journal.read_text().count("\n") >= 1)
    n_before = journal.read_text().count("\n")
    assert n_before < 4  # killed before every judgment was made
    done = bench(resumed_args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"({4 - n_before} judge calls, {n_before} cached)" in done.stderr
    result = "results/smollm2-135m/tiny-seed0/teacher/benchmarks/mt_bench"
    a = json.loads((tmp_path / "straight" / f"{result}.json").read_text())
    b = json.loads((tmp_path / "resumed" / f"{result}.json").read_text())
    assert a["metrics"] == b["metrics"]
    judged = [{k: v for k, v in json.loads(x).items()} for x in (tmp_path / "straight" / f"{result}_judgments.jsonl")
              .read_text().splitlines()]
    assert judged == [json.loads(x) for x in (tmp_path / "resumed" / f"{result}_judgments.jsonl").read_text().splitlines()]
