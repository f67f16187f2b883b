"""The benchmarks that ship with bench: MT-Bench, AlpacaEval 2, Arena-Hard v0.1, reward-model win rate, lm-eval.

Their loaders and scorers sit beside this module; their runners (``bench eval``) in harness/judged.py and
harness/evalrun.py, imported only when they run.
"""

from __future__ import annotations

from harness.benchmark import Benchmark, register_benchmark


def _cell(metric, label, value, se=None, ci=None, n=None) -> dict:
    return {"metric": metric, "label": label, "value": value, "se": se, "ci": ci, "n": n}


def _mt_bench_cells(result: dict) -> list[dict]:
    m = result.get("metrics") or {}
    cells = [_cell("score", "MT-Bench (1-10)", m.get("score"), m.get("se"), n=m.get("n"))]
    if m.get("expected_score") is not None:  # constrained verdicts only
        cells.append(_cell("expected_score", "MT-Bench E[rating]", m["expected_score"], m.get("expected_score_se"),
                           n=m.get("expected_score_n")))
    return cells


def _alpaca_eval_cells(result: dict) -> list[dict]:
    m = result.get("metrics") or {}
    official_lc = [_cell("lc_win_rate", "AlpacaEval 2 LC %", m.get("lc_win_rate"), m.get("lc_standard_error"),
                         n=m.get("n_total"))]
    return [_cell("win_rate", "AlpacaEval 2 WR %", m.get("win_rate"), m.get("standard_error"), n=m.get("n_total")),
            *(official_lc if m.get("lc_win_rate") is not None else []),
            _cell("lc_win_rate_minimal", "AlpacaEval 2 LC-minimal %", m.get("lc_win_rate_minimal"),
                  n=m.get("n_total"))]


def _arena_hard_cells(result: dict) -> list[dict]:
    m = result.get("metrics") or {}
    return [_cell("score", "Arena-Hard v0.1 %", m.get("score"), ci=m.get("ci95"), n=m.get("n_questions"))]


def _rm_winrate_cells(result: dict) -> list[dict]:
    m = result.get("metrics") or {}
    return [_cell("win_rate", f"RM WR % vs {result.get('reference', '?')}", m.get("win_rate"), m.get("win_rate_se"),
                  n=m.get("n"))]


def _lm_eval_cells(result: dict) -> list[dict]:
    return [_cell(f"{task}/{metric}", f"{task} {metric}", v.get("value"), v.get("se"), n=v.get("n"))
            for task, metrics in sorted(result.get("tasks", {}).items()) for metric, v in sorted(metrics.items())]


MT_BENCH = register_benchmark(Benchmark(
    id="mt_bench", name="MT-Bench", order=0, questions=80, judged=True, runner="harness.judged:eval_mt_bench",
    cells=_mt_bench_cells, settings={"max_new_tokens": 1024, "judge_max_tokens": 2048},
    question_columns=(("score", "MT-Bench rating", 2), ("expected_score", "MT-Bench E[rating]", 2)),
    secondary=("MT-Bench E[rating]",),
    score_note="Score: the judge's rating (1-10), mean over the question's turns; E[rating]: the expected rating "
               "under the judge's verdict probabilities (constrained verdicts only).",
    description="single-answer grading of two-turn questions, 1-10"))
ALPACA_EVAL = register_benchmark(Benchmark(
    id="alpaca_eval_2", name="AlpacaEval 2", legacy_name="alpaca_eval", order=1, questions=805, judged=True,
    runner="harness.judged:eval_alpaca_eval", cells=_alpaca_eval_cells, settings={"max_new_tokens": 2048},
    question_columns=(("score", "AlpacaEval 2 WR %", 1),), pairwise="reference_generator",
    secondary=("AlpacaEval 2 LC-minimal %",),
    score_note="Score: (preference - 1) x 100; 100 = the model's answer preferred, 0 = the reference's.",
    description="pairwise against GPT-4 Turbo's answers, win rate and length-controlled win rate"))
ARENA_HARD = register_benchmark(Benchmark(
    id="arena_hard_v0.1", name="Arena-Hard v0.1", legacy_name="arena_hard", order=2, questions=500, judged=True,
    runner="harness.judged:eval_arena_hard", cells=_arena_hard_cells,
    settings={"max_new_tokens": 4096, "judge_max_tokens": 4096},
    question_columns=(("score", "Arena-Hard battles won %", 1),), pairwise="baseline",
    score_note="Score: share (%) of the question's weighted battles won (a tie counts half); the outcomes "
               "are the weighted battles, a strong verdict counting three times.",
    description="pairwise against GPT-4-0314's answers, both orders, Bradley-Terry score"))
RM_WINRATE = register_benchmark(Benchmark(
    id="rm_winrate", name="RM win rate", order=3, runner="harness.judged:eval_rm_winrate", cells=_rm_winrate_cells,
    question_columns=(("score", "RM WR %", 1),), pairwise="reference",
    score_note="Score: 100 when the reward model prefers the row's answer to the reference row's, 0 when not.",
    description="a reward model's preference between each row's held-out answers and the reference row's"))
LM_EVAL = register_benchmark(Benchmark(
    id="lm_eval", name="lm-eval", order=4, runner=None, cells=_lm_eval_cells,
    description="any lm-eval task, as lm_eval:<task>"))
