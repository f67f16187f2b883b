"""Plots of one run: which plots come out, their files (valid, sized, labelled, byte-identical on a re-run), and
the pure helpers behind the Pareto front and the error bars, on hand-computed cases."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest

from harness.plot_kit import error_bar, pareto_front, safe_name
from harness.plots import render_plots
from harness.results import load_records

LOCAL_JUDGE = {"kind": "transformers", "model": {"source": "pkg:llm/judge.gguf"}}
GPT4_JUDGE = {"kind": "openai", "model": "gpt-4", "base_url": "https://api.openai.com/v1"}


def metric(value, se=0.05, n=8):
    return {"value": value, "se": se, "n": n}


def mt_bench(score, categories, judge=LOCAL_JUDGE):
    return {"benchmark": "mt_bench", "judge": judge, "verdict": "constrained",
            "metrics": {"score": score, "se": 0.5, "n": 4, "categories": categories}}


def alpaca(win_rate):
    return {"benchmark": "alpaca_eval_2", "judge": LOCAL_JUDGE, "reference_generator": "gpt4_1106_preview",
            "metrics": {"win_rate": win_rate, "standard_error": 10.0, "n_total": 3, "lc_win_rate_minimal": None}}


def write_row(root: Path, row, kind, metrics, flops=None, benchmarks=(), loss_rows=None):
    """One row folder as `bench run` and `bench eval` leave it: record.json, loss_curve.csv, benchmarks/."""
    d = root / "toy-pair" / "r1" / row
    (d / "benchmarks").mkdir(parents=True)
    rec = {"pair": {"name": "toy-pair"}, "run": "r1", "seed": 0, "budget": {"name": "tiny"}, "row": row, "kind": kind,
           "metrics": metrics}
    if flops is not None:
        rec["compute"] = {"flops_estimate": flops}
    (d / "record.json").write_text(json.dumps(rec))
    for stem, result, judgments in benchmarks:
        (d / "benchmarks" / f"{stem}.json").write_text(json.dumps(result))
        if judgments:
            lines = "".join(json.dumps(j) + "\n" for j in judgments)
            (d / "benchmarks" / f"{stem}_judgments.jsonl").write_text(lines)
    if loss_rows is not None:
        lines = "".join(f"{step},{loss},0.1,{loss}\n" for step, loss in loss_rows)
        (d / "loss_curve.csv").write_text("step,loss,lr,term/nll\n" + lines)


def preferences(*ps):  # AlpacaEval judgments: 2 = the row's answer wins, 1 = the reference's, 1.5 = tie
    return [{"index": i, "preference": p} for i, p in enumerate(ps)]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """Four rows in run order-scrambling names. No row has a margin (no offline panel for it); kd has no
    ROUGE-L, no loss curve and no AlpacaEval; sft alone was also judged by a second judge (a second setting)."""
    root = tmp_path_factory.mktemp("run") / "results"
    cats = {"coding": 3.0, "writing": 7.0, "humanities": 6.0}
    write_row(root, "teacher", "reference",
              {"pref_acc": metric(0.75), "nll_chosen": metric(1.2), "kl_teacher": metric(None, None),
               "rouge_l": metric(20.0, 2.0, 2)},
              benchmarks=[("mt_bench", mt_bench(8.0, cats), None),
                          ("alpaca_eval", alpaca(66.7), preferences(2.0, 2.0, 1.0))])
    write_row(root, "student-init", "reference",
              {"pref_acc": metric(0.5), "nll_chosen": metric(2.0), "kl_teacher": metric(0.3),
               "rouge_l": metric(10.0, 1.0, 2)},
              benchmarks=[("mt_bench", mt_bench(4.0, cats), None)])
    write_row(root, "sft", "method",
              {"pref_acc": metric(0.625), "nll_chosen": metric(1.5), "kl_teacher": metric(0.25),
               "rouge_l": metric(12.5, 1.5, 2)}, flops=3.5e12,
              benchmarks=[("mt_bench", mt_bench(5.0, {**cats, "roleplay": 9.0}), None),
                          ("mt_bench_gpt4", mt_bench(5.5, cats, judge=GPT4_JUDGE), None),
                          ("alpaca_eval", alpaca(50.0), preferences(1.5, 2.0, 1.0))],
              loss_rows=[(1, 2.0), (2, ""), (3, 1.0)])
    write_row(root, "kd", "method",
              {"pref_acc": metric(0.5), "nll_chosen": metric(1.6), "kl_teacher": metric(0.2),
               "rouge_l": metric(float("nan"), None, 0)}, flops=7.3e12,
              benchmarks=[("mt_bench", mt_bench(6.0, cats), None)])
    return root


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def svg_texts(path: Path) -> str:
    text = path.read_text()
    assert text.lstrip().startswith("<?xml") and text.rstrip().endswith("</svg>")
    return text


EXPECTED = ["offline_metrics", "benchmark_mt_bench", "benchmark_alpaca_eval_2", "mt_bench_radar",
            "quality_vs_compute", "loss_curves", "win_tie_loss"]


@pytest.fixture(scope="module")
def rendered(results) -> list[dict]:  # rendering takes seconds: once for the tests that only read the files
    return render_plots(load_records(results), results.parent / "plots")


def test_plots_of_a_run(rendered):
    plots, out = rendered, rendered[0]["png"].parent
    assert [p["name"] for p in plots] == EXPECTED
    assert sorted(f.name for f in out.iterdir()) == sorted(f"{n}.{e}" for n in EXPECTED for e in ("png", "svg"))
    for p in plots:
        assert p["png"] == out / f"{p['name']}.png" and p["svg"] == out / f"{p['name']}.svg"
        assert p["title"].endswith("toy-pair / r1") and p["caption"]
        png_size(p["png"])
    by_name = {p["name"]: p for p in plots}

    # four offline panels (no row has a margin) by four rows: (1.5 + 4 × 2.9) in wide, 0.9 + (0.9 + 4 × 0.24)
    # in high, both rounded up to a quarter inch, at 110 dpi
    assert png_size(by_name["offline_metrics"]["png"]) == (int(13.25 * 110), int(3.0 * 110))
    offline = svg_texts(by_name["offline_metrics"]["svg"])
    rows = [offline.index(f"<!-- {row} -->") for row in ("teacher", "student-init", "kd", "sft")]
    assert rows == sorted(rows)  # references first, then methods alphabetically
    assert "margin" not in offline
    assert offline.count("<!-- n/a -->") == 2  # the teacher's KL and kd's NaN ROUGE-L: skipped, not drawn as 0

    # the two MT-Bench judges are two settings: two panels, never one
    mt = svg_texts(by_name["benchmark_mt_bench"]["svg"])
    assert "<!-- MT-Bench (1-10) [setting 1] -->" in mt and "<!-- MT-Bench (1-10) [setting 2] -->" in mt
    assert "gpt-4" in by_name["benchmark_mt_bench"]["caption"]
    assert png_size(by_name["benchmark_alpaca_eval_2"]["png"]) == (int(6.0 * 110), int(3.0 * 110))

    radar = svg_texts(by_name["mt_bench_radar"]["svg"])
    for name in ("writing", "roleplay", "coding", "humanities", "teacher", "kd"):
        assert f"<!-- {name} -->" in radar

    qc = svg_texts(by_name["quality_vs_compute"]["svg"])
    assert "TFLOP" in qc and "<!-- Pareto front -->" in qc
    assert all(f"<!-- {row} -->" in qc for row in ("student-init", "sft", "kd"))

    loss = svg_texts(by_name["loss_curves"]["svg"])
    assert "<!-- sft -->" in loss and "<!-- kd -->" not in loss  # kd has no loss_curve.csv

    wtl = svg_texts(by_name["win_tie_loss"]["svg"])
    assert "vs gpt4_1106_preview (n=3)" in wtl
    assert wtl.count("<!-- 67 -->") == 1 and wtl.count("<!-- 33 -->") == 4  # teacher 2/0/1, sft 1/1/1


def test_plots_without_data_are_skipped(tmp_path):
    root = tmp_path / "results"
    write_row(root, "teacher", "reference", {"pref_acc": metric(0.75)})
    write_row(root, "sft", "method", {"pref_acc": metric(0.5)})  # no compute, benchmarks or loss curve
    plots = render_plots(load_records(root), tmp_path / "plots")
    assert [p["name"] for p in plots] == ["offline_metrics"]
    assert sorted(f.name for f in (tmp_path / "plots").iterdir()) == ["offline_metrics.png", "offline_metrics.svg"]

    empty = tmp_path / "empty"
    write_row(empty, "sft", "method", {"pref_acc": metric(None, None)})
    assert render_plots(load_records(empty), tmp_path / "none") == []
    assert not any((tmp_path / "none").iterdir())
    assert render_plots([], tmp_path / "nothing") == []


def test_same_records_give_the_same_bytes(results, rendered, tmp_path):
    again = render_plots(list(reversed(load_records(results))), tmp_path / "again")
    assert [p["name"] for p in again] == EXPECTED
    for a, b in zip(rendered, again):
        assert a["png"].read_bytes() == b["png"].read_bytes(), a["name"]
        assert a["svg"].read_bytes() == b["svg"].read_bytes(), a["name"]


def test_pareto_front():
    #        0          1          2 (same compute as 1, worse)  3 (as good as 1, costlier)  4 (cheapest)
    points = [(1, 0.5), (2, 0.7), (2, 0.6), (3, 0.7), (0.5, 0.2)]
    assert pareto_front(points) == [4, 0, 1]
    assert pareto_front([(1, 1.0), (1, 1.0), (2, 0.5)]) == [0, 1]  # equal points don't dominate each other
    lower = [(1, 3.0), (2, 2.0), (3, 2.5), (4, 1.0)]  # e.g. KL to teacher: lower is better
    assert pareto_front(lower, higher_is_better=False) == [0, 1, 3]
    assert pareto_front(lower, higher_is_better=True) == [0]
    assert pareto_front([]) == []


def test_error_bar():
    assert error_bar({"value": 5.0, "se": 0.5, "ci": [0, 10]}) == (5.0, 0.5, 0.5)  # se wins over an interval
    assert error_bar({"value": 50.0, "se": None, "ci": [40.0, 66.0]}) == (50.0, 10.0, 16.0)
    assert error_bar({"value": 50.0, "se": math.nan, "ci": [45.0, 55.0]}) == (50.0, 5.0, 5.0)
    assert error_bar({"value": 30.0, "ci": [40.0, 66.0]}) == (30.0, 0.0, 36.0)  # a point outside its interval
    assert error_bar({"value": 7.0, "se": None, "ci": None}) == (7.0, 0.0, 0.0)
    assert error_bar({"value": None, "se": 1.0}) is None
    assert error_bar({"value": math.nan, "se": 1.0}) is None
    assert error_bar(None) is None


def test_safe_name():
    assert safe_name("arena_hard_v0.1") == "arena_hard_v0.1"
    assert safe_name("my bench/v2:a") == "my_bench_v2_a"
