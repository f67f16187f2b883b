"""Leaderboards from run records alone: ``results/<pair>/<run>/<row>/record.json`` -> ``leaderboards/<pair>.{md,csv}``.

Nothing here trains, generates or judges; the output depends only on the records, so regenerating it
twice gives the same bytes.
"""

from __future__ import annotations

import json
import math
from itertools import combinations
from pathlib import Path

import pandas as pd

from harness.budgets import comparable
from harness.cache import stable_hash
from harness.errors import BenchError
from harness.files import read_jsonl, write_text_atomic
from harness.questions import question_scores
from harness.stats import N_BOOT, ROW_METRICS, bootstrap_indices, paired_bootstrap, seed_spread

# name, label, higher is better
METRICS = [
    ("pref_acc", "pref. acc. ↑", True),
    ("pref_margin", "margin (nats/tok) ↑", True),
    ("nll_chosen", "NLL chosen ↓", False),
    ("kl_teacher", "KL to teacher ↓", False),
    ("rouge_l", "ROUGE-L ↑", True),
]
REFERENCE_ORDER = {"teacher": 0, "student-init": 1}


def best_of(values: list[float], higher: bool = True) -> float | None:
    """The value to mark as best among the trained methods' values, or None when two or more methods all tie
    (marking every row would say nothing)."""
    if not values or (len(values) > 1 and len(set(values)) == 1):
        return None
    return max(values) if higher else min(values)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BenchError(f"{path} is not valid JSON ({e.msg}); re-run the command that wrote it.") from None


def load_records(results_dir: Path) -> list[dict]:
    """Run records, each with its row folder under ``_dir`` and the benchmark results found beside it
    (``benchmarks/*.json``, each with its file name under ``_file``) under ``_benchmarks``."""
    records = []
    for path in sorted(Path(results_dir).glob("*/*/*/record.json")):
        rec = _read_json(path)
        rec["_dir"] = str(path.parent)
        rec["_benchmarks"] = [{**_read_json(p), "_file": p.name}
                              for p in sorted((path.parent / "benchmarks").glob("*.json"))]
        records.append(rec)
    return records


# ---------------------------------------------------------------- benchmark columns

BENCHMARK_ORDER = {"mt_bench": 0, "alpaca_eval_2": 1, "arena_hard_v0.1": 2, "rm_winrate": 3, "lm_eval": 4}
QUESTIONS = {"mt_bench": 80, "alpaca_eval_2": 805, "arena_hard_v0.1": 500}  # the full sets


def benchmark_cells(result: dict) -> list[dict]:
    """A result's leaderboard cells: ``{metric, label, value, se, ci, n}``; the interval is ± se or a 95% interval."""
    m, name = result.get("metrics") or {}, result["benchmark"]
    if name == "mt_bench":
        cells = [{"metric": "score", "label": "MT-Bench (1-10)", "value": m.get("score"), "se": m.get("se"),
                  "ci": None, "n": m.get("n")}]
        if m.get("expected_score") is not None:  # constrained verdicts only
            cells.append({"metric": "expected_score", "label": "MT-Bench E[rating]", "value": m["expected_score"],
                          "se": m.get("expected_score_se"), "ci": None, "n": m.get("expected_score_n")})
        return cells
    if name == "alpaca_eval_2":
        official_lc = [{"metric": "lc_win_rate", "label": "AlpacaEval 2 LC %", "value": m.get("lc_win_rate"),
                        "se": m.get("lc_standard_error"), "ci": None, "n": m.get("n_total")}]
        return [{"metric": "win_rate", "label": "AlpacaEval 2 WR %", "value": m.get("win_rate"),
                 "se": m.get("standard_error"), "ci": None, "n": m.get("n_total")},
                *(official_lc if m.get("lc_win_rate") is not None else []),
                {"metric": "lc_win_rate_minimal", "label": "AlpacaEval 2 LC-minimal %",
                 "value": m.get("lc_win_rate_minimal"), "se": None, "ci": None, "n": m.get("n_total")}]
    if name == "arena_hard_v0.1":
        return [{"metric": "score", "label": "Arena-Hard v0.1 %", "value": m.get("score"), "se": None,
                 "ci": m.get("ci95"), "n": m.get("n_questions")}]
    if name == "rm_winrate":
        return [{"metric": "win_rate", "label": f"RM WR % vs {result.get('reference', '?')}",
                 "value": m.get("win_rate"), "se": m.get("win_rate_se"), "ci": None, "n": m.get("n")}]
    if name == "lm_eval":
        cells = []
        for task, metrics in sorted(result.get("tasks", {}).items()):
            for metric, v in sorted(metrics.items()):
                cells.append({"metric": f"{task}/{metric}", "label": f"{task} {metric}", "value": v.get("value"),
                              "se": v.get("se"), "ci": None, "n": v.get("n")})
        return cells
    return []


def judge_label(identity: dict | None) -> str:
    if not identity:
        return "none"
    if identity.get("kind") == "transformers":
        return "local " + Path(str(identity["model"].get("source", "?"))).name
    if identity.get("kind") == "openai":
        url = identity.get("base_url", "")
        return identity["model"] + ("" if "api.openai.com" in url else f" at {url}")
    return str(identity.get("model", identity.get("kind")))


def variant(result: dict) -> tuple[str, str]:
    """A result's column identity (a hash of everything that makes its numbers comparable) and its description.
    Rows judged differently, on other questions or with other settings never share a column."""
    keep = ("benchmark", "judge", "verdict", "judge_decoding", "limit", "question_ids", "answer_max_new_tokens",
            "seed", "reference", "reward_model", "lm_eval_version", "num_fewshot", "reference_answers_sha256",
            "baseline")
    key = stable_hash({k: result.get(k) for k in keep})
    parts = []
    if result.get("judge"):
        parts.append(f"judge {judge_label(result['judge'])}"
                     + ("" if result.get("official_judge") else " (not the official judge)"))
    if result.get("verdict") == "constrained":
        parts.append("constrained verdicts (the judge's most likely verdict string; not the protocol)")
    if result.get("reward_model"):
        parts.append(f"reward model {judge_label(result['reward_model'])}, reference row {result.get('reference')}")
    if result.get("limit"):
        total = QUESTIONS.get(result["benchmark"])
        parts.append(f"seeded subset of {len(result.get('question_ids') or [])}{f' of {total}' if total else ''} "
                     f"questions (--limit "
                     f"{result['limit']}, seed {result.get('seed')})")
    if result.get("answer_max_new_tokens"):
        parts.append(f"answers ≤ {result['answer_max_new_tokens']} new tokens")
    if result["benchmark"] == "alpaca_eval_2":
        parts.append("LC-minimal is alpaca-eval's length_controlled_minimal GLM, not the official LC")
    return key, "; ".join(parts)


def benchmark_columns(part: pd.DataFrame, records: list[dict]) -> tuple[list[dict], dict]:
    """Columns (one per benchmark metric and variant) and each row's cells, for one run."""
    rows = set(part["row"])
    run = part["run"].iloc[0]
    columns: dict[tuple, dict] = {}
    cells: dict[tuple, dict] = {}
    for rec in records:
        if rec["run"] != run or rec["row"] not in rows:
            continue
        for result in rec.get("_benchmarks", []):
            key, description = variant(result)
            for position, cell in enumerate(benchmark_cells(result)):
                col = (BENCHMARK_ORDER.get(result["benchmark"], 9), result["benchmark"], position, cell["label"], key)
                columns.setdefault(col, {"label": cell["label"], "description": description, "variant": key,
                                         "benchmark": result["benchmark"], "metric": cell["metric"]})
                cells[(col, rec["row"])] = cell
    ordered = [dict(columns[c], key=c) for c in sorted(columns)]
    return ordered, cells


def finite(value) -> float | None:
    """A finite float, or None for what a table shows as missing (None, NaN, pandas NA, inf, non-numbers)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


# The cell texts of the Markdown board and the HTML report, so that the two always read the same.
def fmt_value(value, se) -> str:
    v, s = finite(value), finite(se)
    return "–" if v is None else f"{v:.3f}" + ("" if s is None else f" ± {s:.3f}")


def fmt_interval(cell: dict) -> str:
    """A benchmark cell: value ± se, or value [95% interval]."""
    v, se, ci = finite(cell.get("value")), finite(cell.get("se")), cell.get("ci")
    if v is None:
        return "–"
    text = f"{v:.2f}"
    if se is not None:
        text += f" ± {se:.2f}"
    elif ci and finite(ci[0]) is not None and finite(ci[1]) is not None:
        text += f" [{finite(ci[0]):.1f}, {finite(ci[1]):.1f}]"
    return text


def fmt_compute(name: str, value) -> str:
    v = finite(value)
    if v is None:
        return "–"
    if name == "wall_clock_s":
        return f"{v:.0f}"
    if name == "flops_estimate":
        return f"{v / 1e12:.1f}"
    return f"{int(v):,}"


def frame(records: list[dict]) -> pd.DataFrame:
    rows = []
    for rec in records:
        row = {"pair": rec["pair"]["name"], "run": rec["run"], "budget": rec["budget"]["name"], "seed": rec["seed"],
               "row": rec["row"], "kind": rec["kind"]}
        for name, _, _ in METRICS:
            m = rec["metrics"].get(name)
            row[name] = m["value"] if m else None
            row[f"{name}_se"] = m["se"] if m else None
            row[f"{name}_n"] = m["n"] if m else None
        compute = rec.get("compute", {})
        for key in ("optimizer_steps", "student_tokens_trained", "teacher_forward_tokens",
                    "reference_forward_tokens", "generated_tokens", "wall_clock_s", "flops_estimate"):
            row[key] = compute.get(key)
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["_order"] = df["row"].map(lambda r: REFERENCE_ORDER.get(r, 2))
    return df.sort_values(["pair", "run", "_order", "row"]).drop(columns="_order").reset_index(drop=True)


def benchmark_table(part: pd.DataFrame, records: list[dict], notes: dict[str, int] | None = None) -> list[str]:
    """The run's benchmark scores: one column per metric and variant, footnotes saying how each was judged.
    ``notes`` (setting -> footnote number, in column order) is filled for the tables that follow."""
    columns, cells = benchmark_columns(part, records)
    if not columns:
        return []
    lines = ["### Benchmarks", ""]
    header = ["model"]
    notes = {} if notes is None else notes
    for col in columns:
        note = notes.setdefault(col["description"], len(notes) + 1)
        ns = sorted({c["n"] for (k, _), c in cells.items() if k == col["key"] and c.get("n") is not None})
        header.append(f"{col['label']} [{note}] (n={'/'.join(map(str, ns)) or '–'})")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    best = {}
    for col in columns:
        values = [c["value"] for (k, row), c in cells.items()
                  if k == col["key"] and c.get("value") is not None and row in set(part.loc[part["kind"] == "method",
                                                                                            "row"])]
        best[col["key"]] = best_of(values)
    for _, r in part.iterrows():
        row_cells = [cells.get((col["key"], r["row"])) for col in columns]
        if not any(row_cells):
            continue
        out = [f"*{r['row']}*" if r["kind"] == "reference" else r["row"]]
        for col, cell in zip(columns, row_cells):
            text = fmt_interval(cell) if cell else "–"
            if cell and r["kind"] == "method" and cell.get("value") is not None \
                    and cell.get("value") == best.get(col["key"]):
                text = f"**{text}**"
            out.append(text)
        lines.append("| " + " | ".join(out) + " |")
    lines.append("")
    for description, note in notes.items():
        lines.append(f"[{note}] {description}.")
    lines += ["", "Scores ± one standard error, or [95% bootstrap interval] for Arena-Hard; n is the number of "
              "questions (MT-Bench: judgments, both turns) behind each score.", ""]
    return lines


def benchmark_frame(df: pd.DataFrame, records: list[dict]) -> pd.DataFrame:
    """Long format for pandas users: one line per row, benchmark metric and variant."""
    lines = []
    for run, part in df.groupby("run", sort=True):
        columns, cells = benchmark_columns(part, records)
        for col in columns:
            for row in part["row"]:
                cell = cells.get((col["key"], row))
                if cell is None:
                    continue
                ci = cell.get("ci") or (None, None)
                lines.append({"pair": part["pair"].iloc[0], "run": run, "row": row, "benchmark": col["benchmark"],
                              "metric": cell["metric"], "variant": col["variant"], "value": cell.get("value"),
                              "se": cell.get("se"), "ci95_low": ci[0], "ci95_high": ci[1], "n": cell.get("n"),
                              "setting": col["description"]})
    return pd.DataFrame(lines)


def budget_line(budget: dict) -> str:
    """What every method of the run was allowed, in one sentence."""
    get = budget.get
    parts = [f"Budget `{get('name')}`:"]
    if get("train_examples") is not None:
        parts.append(f"{get('train_examples')} training pairs,")
    if get("optimizer_steps") is not None:
        parts.append(f"{get('optimizer_steps')} optimizer steps"
                     + (f" of {get('batch_size')} × {get('grad_accum', 1)} sequences" if get("batch_size") else "")
                     + ",")
    if get("max_seq_len") is not None:
        parts.append(f"sequences ≤ {get('max_seq_len')} tokens (prompts ≤ {get('max_prompt_len')}),")
    if get("learning_rate") is not None:
        parts.append(f"lr {get('learning_rate'):g} ({get('lr_schedule', '?')}),")
    if get("eval_examples") is not None:
        parts.append(f"evaluated on {get('eval_examples')} held-out rows ({get('gen_eval_examples', 0)} answered, "
                     f"≤ {get('gen_max_new_tokens', '?')} new tokens).")
    text = " ".join(parts)
    return text[:-1] + "." if text.endswith(",") else text


COMPUTE = [("optimizer_steps", "steps"), ("student_tokens_trained", "student tokens"),
           ("teacher_forward_tokens", "teacher tokens"), ("generated_tokens", "generated tokens"),
           ("wall_clock_s", "train s"), ("flops_estimate", "TFLOP (est.)")]


def run_table(part: pd.DataFrame) -> list[str]:
    """Offline metrics (± s.e., best trained method bold) and the compute each row used."""
    best = {}
    trained = part[part["kind"] == "method"]
    for name, _, higher in METRICS:
        best[name] = best_of(list(trained[name].dropna()), higher)
    header = ["model"] + [f"{label} (n={_n(part, name)})" for name, label, _ in METRICS] + [h for _, h in COMPUTE]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in part.iterrows():
        cells = [f"*{r['row']}*" if r["kind"] == "reference" else r["row"]]
        for name, _, _ in METRICS:
            text = fmt_value(r[name], r[f"{name}_se"])
            is_best = r["kind"] == "method" and best[name] is not None and r[name] == best[name]
            cells.append(f"**{text}**" if is_best else text)
        cells += [fmt_compute(name, r[name]) for name, _ in COMPUTE]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def plot_lines(plots: list[dict], base: Path) -> list[str]:
    """Links to a run's plots (relative to the Markdown file); the first is shown inline."""
    if not plots:
        return []
    lines = ["### Plots", ""]
    first = plots[0]
    lines += [f"![{first['title']}]({first['png'].relative_to(base).as_posix()})", ""]
    lines += [f"- [{p['title']}]({p['png'].relative_to(base).as_posix()}) "
              f"([SVG]({p['svg'].relative_to(base).as_posix()})): {p['caption']}" for p in plots]
    return lines + [""]


def markdown(pair: str, df: pd.DataFrame, description: str = "", records: list[dict] | None = None,
             plots: dict[str, list[dict]] | None = None, base: Path | None = None) -> tuple[str, list[dict], list[dict]]:
    """The pair's leaderboard, every paired difference behind it (for the CSV), and the table models of its
    differences and seed tables (for the HTML report)."""
    records = records or []
    plots = plots or {}
    lines = [f"# Leaderboard: {pair}", ""]
    if description:
        lines += [description, ""]
    lines += [
        "Generated by `bench leaderboard` from `results/` alone. Offline metrics on held-out preference rows; "
        "each value ± one standard error over the n rows in its column header. **Bold**: best trained method "
        "per column (reference rows excluded; none where all trained methods tie). Regenerate with "
        "`bench leaderboard`; reproduce a run with the command in its section.",
        "",
    ]
    if base is not None:
        lines += [f"The HTML report [`{pair}.html`]({pair}.html) has these tables (sortable), the plots and the "
                  "answers side by side with the judges' rationales.", ""]
    all_diffs, tables = [], []
    for run, part in df.groupby("run", sort=True):
        budget, seed = part["budget"].iloc[0], part["seed"].iloc[0]
        run_records = [r for r in records if r["run"] == run]
        lines += [f"## Run `{run}` (budget `{budget}`, seed {seed})", ""]
        budgets = [r["budget"] for r in run_records if r.get("budget")]
        if budgets:
            lines += [budget_line(budgets[0]), ""]
        methods = sorted(part.loc[part["kind"] == "method", "row"])
        if methods:
            lines += [f"Reproduce: `bench run --methods {','.join(methods)} --pair {pair} --budget {budget} "
                      f"--seed {seed} --data-dir ../shared`", ""]
        lines += run_table(part)
        notes: dict[str, int] = {}
        lines += benchmark_table(part, run_records, notes)
        model, diffs = differences_table(run, part, run_records, notes)
        if model:
            lines += md_table(model)
            tables.append(model)
        all_diffs += [{"pair": pair, "scope": run, **d} for d in diffs]
        lines += plot_lines(plots.get(run, []), base) if base is not None else []
    for group in seed_groups(records):
        models, diffs = seed_section(pair, group)
        lines += [f"## {models[0]['section']}", ""] + [line for m in models for line in md_table(m)]
        tables += models
        all_diffs += diffs
    lines += [
        "Metrics: *pref. acc.* — share of held-out pairs where the model gives the chosen response a higher "
        "length-normalised log-probability than the rejected one; *margin* — the mean difference of those "
        "(nats/token); *NLL chosen* — token-mean negative log-likelihood of the chosen responses; *KL to teacher* — "
        "token-mean KL(teacher ‖ model) on the chosen responses between top-k + rest-bucket coarsenings (a lower "
        "bound on the full KL); *ROUGE-L* — F1 ×100 of greedy answers against the chosen responses. Teacher tokens "
        "count the teacher forward passes of the cached signals a method used (shared between methods); generated "
        "tokens, the tokens sampled for the method's training signals; TFLOP, 6 × student parameters × trained "
        "tokens plus 2 × parameters × tokens for every forward pass and generation its signals needed.",
        "",
    ]
    return "\n".join(lines), all_diffs, tables


# ---------------------------------------------------------------- seeds

def seed_groups(records: list[dict]) -> list[list[dict]]:
    """Runs of one pair that differ only in their seed (same budget otherwise), when there are at least two."""
    groups: dict[str, dict[str, list[dict]]] = {}
    for rec in records:
        groups.setdefault(stable_hash(comparable(rec.get("budget") or {})), {}).setdefault(rec["run"], []).append(rec)
    out = []
    for runs in groups.values():
        seeds = {recs[0]["seed"] for recs in runs.values()}
        if len(runs) >= 2 and len(seeds) == len(runs):
            out.append([r for run in sorted(runs) for r in runs[run]])
    return sorted(out, key=lambda g: (g[0]["budget"]["name"], g[0]["run"]))


def seed_values(group: list[dict]) -> tuple[list[dict], dict[str, dict[str, list[float]]]]:
    """Columns (offline metrics, then benchmark cells matched by variant) and {column: {row: [value per seed]}}."""
    columns: dict[tuple, dict] = {}
    values: dict[tuple, dict[str, list[float]]] = {}
    for position, (name, label, higher) in enumerate(METRICS):
        columns[(0, position)] = {"label": label, "higher": higher, "decimals": 3, "description": None}
        for rec in group:
            m = (rec.get("metrics") or {}).get(name)
            if m and m.get("value") is not None:
                values.setdefault((0, position), {}).setdefault(rec["row"], []).append(m["value"])
    for run in sorted({r["run"] for r in group}):
        recs = [r for r in group if r["run"] == run]
        part = pd.DataFrame({"run": [run] * len(recs), "row": [r["row"] for r in recs]})
        cols, cells = benchmark_columns(part, recs)
        for col in cols:
            key = (1,) + col["key"]
            columns.setdefault(key, {"label": col["label"], "higher": True, "decimals": 2,
                                     "description": col["description"]})
            for rec in recs:
                cell = cells.get((col["key"], rec["row"]))
                if cell and cell.get("value") is not None:
                    values.setdefault(key, {}).setdefault(rec["row"], []).append(cell["value"])
    ordered = [dict(columns[k], key=k) for k in sorted(columns) if k in values]
    return ordered, values


def seed_section(pair: str, group: list[dict]) -> tuple[list[dict], list[dict]]:
    """Table models for a seed group (mean ± sd across seeds, then paired differences over seed-averaged
    question scores), and those differences for the CSV."""
    runs = sorted({r["run"] for r in group})
    seeds = sorted({r["seed"] for r in group})
    budget = group[0]["budget"]["name"]
    scope = f"seeds:{budget}:{','.join(map(str, seeds))}"
    section = f"Budget `{budget}` across seeds {', '.join(map(str, seeds))} (runs {', '.join(runs)})"
    # A spread needs every seed: rows run with only some of them stay in their runs' tables, and so do columns
    # (benchmarks) scored on one seed only.
    counts = pd.Series([r["row"] for r in group]).value_counts()
    partial = sorted(counts.index[counts < len(runs)])
    group = [r for r in group if r["row"] not in partial]
    columns, values = seed_values(group)
    columns = [c for c in columns if max(len(v) for v in values[c["key"]].values()) == len(runs)]
    notes: dict[str, int] = {}
    for col in columns:
        if col["description"]:
            notes.setdefault(col["description"], len(notes) + 1)
    kinds = {r["row"]: r["kind"] for r in group}
    rows = sorted(kinds, key=lambda r: (REFERENCE_ORDER.get(r, 2), r))
    spreads = [{row: seed_spread(v) for row, v in values[col["key"]].items()} for col in columns]
    body = [{"row": row, "kind": kinds[row], "cells": []} for row in rows]
    for col, by_row in zip(columns, spreads):
        means = [sp["mean"] for r, sp in by_row.items() if kinds[r] == "method"]
        best = best_of(means, col["higher"])
        d = col["decimals"]
        for out in body:
            sp = by_row.get(out["row"])
            if sp is None:
                out["cells"].append(MISSING)
                continue
            text = f"{sp['mean']:.{d}f}" + ("" if sp["sd"] is None else f" ± {sp['sd']:.{d}f}") \
                + ("" if sp["seeds"] == len(seeds) else f" ({sp['seeds']} seeds)")
            out["cells"].append({"text": text, "value": sp["mean"],
                                 "best": out["kind"] == "method" and sp["mean"] == best})
    header = [{"label": col["label"] + (f" [{notes[col['description']]}]" if col["description"] else ""),
               "numeric": True} for col in columns]
    seed_table = table_model(
        scope, "seeds", "Mean and spread across seeds", header, body, section=section,
        intro="Mean ± standard deviation across seeds (the spread to expect from re-running with another seed); "
              "the number of seeds behind a cell is given where it is fewer than all. **Bold**: best trained "
              "method by mean." + (f" Rows run with only some of the seeds ({', '.join(partial)}) are in their "
                                   "runs' tables above." if partial else ""),
        notes=[f"[{n}] {d}." for d, n in notes.items()])
    seed_table["empty"] = (
        f"No row was run with every seed of this group ({', '.join(partial) or 'none'} ran with only some), so "
        "there is no spread across seeds to show; each run's own table is above." if not rows else
        "No column has a value from every seed, so there is no spread across seeds to show.")
    part = pd.DataFrame({"row": rows, "kind": [kinds[r] for r in rows]})
    model, diffs = differences_table(scope, part, group, notes, min_runs=len(runs))
    models = [seed_table]
    if model:
        model.update(section=section, title="Paired differences from the best method (question scores averaged "
                                            "over seeds)")
        same_rows = all(r.get("schema", 1) >= 2 for r in group)  # schema 2: held-out rows fixed by the data
        model["notes"].append(
            "Every seed was evaluated on the same held-out rows and benchmark questions, so each row's scores are "
            "averaged over seeds and the differences stay paired." if same_rows else
            "Records written before schema 2 drew their held-out rows with the training seed, so for the offline "
            "metrics the i-th rows of the seeds are averaged together; all rows of one seed answered the same "
            "ones, so the differences stay paired. Benchmark questions are the same on every seed.")
        models.append(model)
    return models, [{"pair": pair, "scope": scope, **d} for d in diffs]


def _n(part: pd.DataFrame, name: str) -> str:
    ns = sorted({int(n) for n in part[f"{name}_n"].dropna()})
    return "/".join(map(str, ns)) if ns else "–"


# ---------------------------------------------------------------- per-question scores and paired differences

# Columns whose per-question scores a paired bootstrap resamples: (key in questions.judged_items, label, decimals).
QUESTION_COLUMNS = {
    "mt_bench": [("score", "MT-Bench rating", 2), ("expected_score", "MT-Bench E[rating]", 2)],
    "alpaca_eval_2": [("score", "AlpacaEval 2 WR %", 1)],
    "arena_hard_v0.1": [("score", "Arena-Hard battles won %", 1)],
    "rm_winrate": [("score", "RM WR %", 1)],
}


def question_columns(rec: dict) -> list[tuple[dict, dict[str, float]]]:
    """A row's per-question scores: (column, {question id: score}) for each offline metric it reports (held-out
    rows from per_example.jsonl and answers.jsonl) and each judged benchmark result."""
    row_dir = Path(rec["_dir"])
    examples = read_jsonl(row_dir / "per_example.jsonl", missing_ok=True)
    answers = read_jsonl(row_dir / "answers.jsonl", missing_ok=True)
    out = []
    for position, (name, label, higher) in enumerate(METRICS):
        if name not in (rec.get("metrics") or {}):
            continue
        if name == "rouge_l":
            scores = {str(a["row"]): a["rouge_l"] for a in answers if a.get("rouge_l") is not None}
        else:
            scores = {str(e["row"]): ROW_METRICS[name](e) for e in examples
                      if name != "kl_teacher" or e.get("kl_sum") is not None}
        if scores:
            out.append(({"id": name, "label": label, "higher": higher, "decimals": 3, "description": None,
                         "order": (0, position)}, scores))
    for result in rec.get("_benchmarks", []):
        key, description = variant(result)
        for position, (field, label, decimals) in enumerate(QUESTION_COLUMNS.get(result["benchmark"], [])):
            scores = question_scores(result, row_dir, field)
            if scores:
                if result["benchmark"] == "rm_winrate":
                    label = f"{label} vs {result.get('reference', '?')}"
                out.append(({"id": f"{result['benchmark']}:{field}:{key}", "label": label, "higher": True,
                             "decimals": decimals, "description": description,
                             "order": (1, BENCHMARK_ORDER.get(result["benchmark"], 9), result["benchmark"], position,
                                       key)}, scores))
    return out


def scope_scores(records: list[dict], min_runs: int = 1) -> tuple[list[dict], dict[str, dict[str, dict[str, float]]]]:
    """Columns and {column: {row: {question: score}}} over a scope: one run, or the runs of several seeds, where a
    question's score is its mean over the seeds that scored it; only columns some row has from ``min_runs`` runs."""
    columns: dict[str, dict] = {}
    sums: dict[str, dict[str, dict[str, list[float]]]] = {}
    runs: dict[str, set[tuple[str, str]]] = {}
    for rec in records:
        for col, scores in question_columns(rec):
            columns.setdefault(col["id"], col)
            runs.setdefault(col["id"], set()).add((rec["row"], rec["run"]))
            per_row = sums.setdefault(col["id"], {}).setdefault(rec["row"], {})
            for q, v in scores.items():
                per_row.setdefault(q, []).append(v)
    keep = [c for c in columns.values()
            if max(pd.Series([row for row, _ in runs[c["id"]]]).value_counts()) >= min_runs]
    means = {c["id"]: {row: {q: sum(v) / len(v) for q, v in qs.items()} for row, qs in sums[c["id"]].items()}
             for c in keep}
    return sorted(keep, key=lambda c: c["order"]), means


def paired_differences(scope: str, columns: list[dict], scores: dict) -> list[dict]:
    """Every pair of rows on every column: mean difference (a - b) over the questions both have, with a 95%
    paired bootstrap interval. Resamples are seeded by scope and column, so the output is reproducible."""
    out = []
    for col in columns:
        by_row = scores[col["id"]]
        indices = {}
        for a, b in combinations(sorted(by_row), 2):
            common = sorted(set(by_row[a]) & set(by_row[b]))
            if len(common) < 2:
                continue
            if len(common) not in indices:
                indices[len(common)] = bootstrap_indices(len(common), f"{scope}|{col['id']}|{len(common)}")
            diff = paired_bootstrap([by_row[a][q] for q in common], [by_row[b][q] for q in common],
                                    indices[len(common)])
            out.append({"column": col["id"], "label": col["label"], "a": a, "b": b, **diff})
    return out


def _against_best(col: dict, rows: list[str], methods: set[str], scores: dict, diffs: dict) -> dict[str, dict]:
    """Each row's cell in the differences table: its paired difference from the column's best method."""
    by_row = scores[col["id"]]
    means = {r: sum(v.values()) / len(v) for r, v in by_row.items() if v}
    candidates = [r for r in rows if r in methods and r in means]
    if not candidates:
        return {}
    # ties go to the first name, and the others show their zero difference
    best = min(candidates, key=lambda r: (-means[r] if col["higher"] else means[r], r))
    cells, d = {best: {"text": "best", "value": 0.0, "best": True}}, col["decimals"]

    def num(x: float) -> str:
        return f"{0.0 if round(x, d) == 0 else x:+.{d}f}"

    for row in rows:
        if row == best or row not in means:
            continue
        a, b = sorted((row, best))
        entry = diffs.get((col["id"], a, b))
        if entry is None:
            continue
        sign = 1 if a == row else -1  # entries are (a - b); the cell is (row - best)
        lo, hi = sorted((sign * entry["ci95_low"], sign * entry["ci95_high"]))
        mark = " \\*" if lo > 0 or hi < 0 else ""
        cells[row] = {"text": f"{num(sign * entry['difference'])} [{num(lo)}, {num(hi)}]{mark}",
                      "value": sign * entry["difference"], "best": False}
    return cells


def table_model(scope: str, table_id: str, title: str, columns: list[dict], rows: list[dict],
                intro: str | None = None, notes: list[str] | None = None, section: str | None = None) -> dict:
    """A formatted table that both the Markdown board (``md_table``) and the HTML report render."""
    return {"scope": scope, "section": section, "id": table_id, "title": title, "intro": intro, "columns": columns,
            "rows": rows, "notes": notes or []}


EMPTY = "No row has a value in every column of this table, so it is left out."


def md_table(model: dict) -> list[str]:
    if not model["rows"] or not model["columns"]:  # never an empty `| model |` table: say why in words
        return [f"### {model['title']}", "", model.get("empty") or EMPTY, ""]
    header = ["model"] + [c["label"] for c in model["columns"]]
    lines = [f"### {model['title']}", ""] + ([model["intro"], ""] if model.get("intro") else [])
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in model["rows"]:
        cells = [f"*{r['row']}*" if r["kind"] == "reference" else r["row"]]
        cells += [f"**{c['text']}**" if c["best"] else c["text"] for c in r["cells"]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""] + [n for note in model["notes"] for n in (note, "")]


MISSING = {"text": "–", "value": None, "best": False}


def differences_table(scope: str, part: pd.DataFrame, records: list[dict], notes: dict[str, int],
                      min_runs: int = 1) -> tuple[dict | None, list[dict]]:
    """Each row against the best trained method of every column, with paired bootstrap intervals (a table
    model); and all the pairwise differences (for the CSV). Columns that no row has from ``min_runs`` runs are
    left out (a seed group's benchmarks scored on one seed only)."""
    columns, scores = scope_scores(records, min_runs)
    diffs = paired_differences(scope, columns, scores)
    if not diffs:
        return None, diffs
    index = {(d["column"], d["a"], d["b"]): d for d in diffs}
    rows = list(dict.fromkeys(part["row"]))
    methods = set(part.loc[part["kind"] == "method", "row"])
    cells = {col["id"]: _against_best(col, rows, methods, scores, index) for col in columns}
    columns = [c for c in columns if cells[c["id"]]]
    header = []
    for c in columns:
        ns = sorted({d["n"] for d in diffs if d["column"] == c["id"]})
        arrow = "" if c["label"][-1] in "↑↓" else (" ↑" if c["higher"] else " ↓")
        note = f" [{notes[c['description']]}]" if c["description"] in notes else ""
        header.append({"label": f"{c['label']}{arrow}{note} (n={'/'.join(map(str, ns))})", "numeric": True})
    kinds = dict(zip(part["row"], part["kind"]))
    body = [{"row": row, "kind": kinds.get(row, "method"),
             "cells": [cells[c["id"]].get(row, MISSING) for c in columns]} for row in rows]
    explain = ("Each cell is the row minus the column's best trained method, averaged over the questions (held-out "
               "rows for the offline metrics) both answered, with a 95% paired bootstrap interval over those "
               f"questions ({N_BOOT} resamples). \\* the interval excludes 0: a difference beyond resampling "
               "noise over questions (not over training seeds). Where methods tie for best, the first by name is marked."
               + (" Arena-Hard here is the share of weighted battles won, the per-question quantity behind its "
                  "score." if any(c["id"].startswith("arena_hard") for c in columns) else ""))
    return table_model(scope, "differences", "Paired differences from the best method", header, body,
                       notes=[explain]), diffs


# ---------------------------------------------------------------- cross-pair summary

def scopes(records: list[dict]) -> list[tuple[str, list[dict]]]:
    """What a pair's ranking is computed on: each seed group (means over seeds), and each run outside one."""
    grouped = seed_groups(records)
    in_group = {r["run"] for g in grouped for r in g}
    out = [(f"seeds:{g[0]['budget']['name']}", g) for g in grouped]
    for run in sorted({r["run"] for r in records} - in_group):
        out.append((run, [r for r in records if r["run"] == run]))
    return out


def summary_frame(records: list[dict]) -> pd.DataFrame:
    """Methods by their average rank (1 = best; ties share the mean rank) over every pair, scope and ranked
    column (offline metrics and benchmark columns; a benchmark's secondary views and the official-LC's
    duplicate WR are left out)."""
    ranks = []
    for pair in sorted({r["pair"]["name"] for r in records}):
        for scope, group in scopes([r for r in records if r["pair"]["name"] == pair]):
            columns, values = seed_values(group)
            for col in columns:
                if col["key"][0] == 1 and _is_secondary(col, columns):
                    continue
                means = {row: sum(v) / len(v) for row, v in values[col["key"]].items()
                         if any(r["row"] == row and r["kind"] == "method" for r in group)}
                if len(means) < 2:
                    continue
                series = pd.Series(means).rank(ascending=not col["higher"], method="average")
                ranks += [{"pair": pair, "scope": scope, "column": col["label"], "method": m, "rank": float(v)}
                          for m, v in series.items()]
    if not ranks:
        return pd.DataFrame()
    long = pd.DataFrame(ranks)
    out = long.groupby("method").agg(average_rank=("rank", "mean"), columns=("rank", "size"),
                                     pairs=("pair", "nunique")).reset_index()
    per_pair = long.pivot_table(index="method", columns="pair", values="rank", aggfunc="mean")
    per_pair.columns = [f"rank_{c}" for c in per_pair.columns]
    out = out.merge(per_pair.reset_index(), on="method")
    return out.sort_values(["average_rank", "method"]).reset_index(drop=True)


def _is_secondary(col: dict, columns: list[dict]) -> bool:
    """Another view of a ranked column: shown on the boards, not ranked twice."""
    if col["label"] in ("MT-Bench E[rating]", "AlpacaEval 2 LC-minimal %"):
        return True
    # AlpacaEval's raw WR is ranked only where the official LC is absent for the same variant
    return col["label"] == "AlpacaEval 2 WR %" and any(
        c["label"] == "AlpacaEval 2 LC %" and c["key"][-1] == col["key"][-1] for c in columns)


def summary_markdown(summary: pd.DataFrame) -> str:
    pairs = [c[len("rank_"):] for c in summary.columns if c.startswith("rank_")]
    lines = ["# Summary across pairs", "",
             "Generated by `bench leaderboard` from `results/` alone. Each trained method's rank (1 = best) on every "
             "ranked column of every pair — offline metrics and benchmark scores, means over seeds where a budget "
             "was run with several — averaged. Benchmark columns include non-official judges where the pair's "
             "leaderboard says so; read the per-pair boards for their intervals before trusting a small gap.", "",
             "| method | average rank ↓ | columns | pairs | " + " | ".join(f"rank on {p}" for p in pairs) + " |",
             "|" + "---|" * (4 + len(pairs))]
    for _, r in summary.iterrows():
        cells = [r["method"], f"{r['average_rank']:.2f}", str(int(r["columns"])), str(int(r["pairs"]))]
        cells += ["–" if pd.isna(r[f"rank_{p}"]) else f"{r[f'rank_{p}']:.2f}" for p in pairs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + [""])


def remove_stale(plots_dir: Path, runs: set[str]) -> None:
    """Plot folders of runs no longer in the results (a removed or renamed run): their PNG/SVG files go, so the
    plots folder always matches the board."""
    if not plots_dir.is_dir():
        return
    for folder in plots_dir.iterdir():
        if folder.is_dir() and folder.name not in runs:
            for f in folder.iterdir():
                if f.suffix in (".png", ".svg"):
                    f.unlink()
            if not any(folder.iterdir()):
                folder.rmdir()


def regenerate(results_dir: Path, leaderboard_dir: Path) -> list[Path]:
    """Every file under ``leaderboard_dir`` from the records under ``results_dir``: per pair the Markdown board,
    CSVs (rows, benchmark cells, seed means, paired differences), plots and HTML report; then the cross-pair
    summary and the index page. Same records, same bytes."""
    from harness.plots import render_plots
    from harness.registry import PAIRS
    from harness.report import render_index, render_report

    records = load_records(results_dir)
    df = frame(records)
    written = []
    if df.empty:
        return written
    leaderboard_dir = Path(leaderboard_dir)
    pairs = []
    for pair, part in df.groupby("pair", sort=True):
        pairs.append(pair)
        pair_records = [r for r in records if r["pair"]["name"] == pair]
        description = PAIRS.get(pair).description if pair in PAIRS else ""
        plots = {run: render_plots([r for r in pair_records if r["run"] == run],
                                   leaderboard_dir / "plots" / pair / run)
                 for run in sorted({r["run"] for r in pair_records})}
        written += [p[k] for ps in plots.values() for p in ps for k in ("png", "svg")]
        remove_stale(leaderboard_dir / "plots" / pair, set(plots))
        text, diffs, tables = markdown(pair, part, description, pair_records, plots, leaderboard_dir)
        md = leaderboard_dir / f"{pair}.md"
        write_text_atomic(md, text)
        csv = leaderboard_dir / f"{pair}.csv"
        write_text_atomic(csv, part.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
        written += [md, csv]
        bench = benchmark_frame(part, pair_records)
        path = leaderboard_dir / f"{pair}_benchmarks.csv"
        if not bench.empty:
            write_text_atomic(path, bench.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
            written.append(path)
        else:  # a file from records that are gone would contradict the board
            path.unlink(missing_ok=True)
        path = leaderboard_dir / f"{pair}_differences.csv"
        if diffs:
            write_text_atomic(path, pd.DataFrame(diffs).to_csv(index=False, float_format="%.6g", lineterminator="\n"))
            written.append(path)
        else:
            path.unlink(missing_ok=True)
        written.append(render_report(pair, pair_records, plots, leaderboard_dir, description, tables=tables))
    summary = summary_frame(records)
    if not summary.empty:
        for path, text in ((leaderboard_dir / "summary.md", summary_markdown(summary)),
                           (leaderboard_dir / "summary.csv",
                            summary.to_csv(index=False, float_format="%.6g", lineterminator="\n"))):
            write_text_atomic(path, text)
            written.append(path)
    written.append(render_index(pairs, None if summary.empty else summary, leaderboard_dir))
    return written
