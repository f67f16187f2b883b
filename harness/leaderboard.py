"""Leaderboards from run records alone: ``results/<pair>/<run>/<row>/record.json`` -> ``leaderboards/<pair>.{md,csv}``.

Nothing here trains, generates or judges; the output depends only on the records, so regenerating it
twice gives the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from harness.cache import stable_hash, write_text_atomic
from harness.errors import BenchError

# name, label, higher is better
METRICS = [
    ("pref_acc", "pref. acc. ↑", True),
    ("pref_margin", "margin (nats/tok) ↑", True),
    ("nll_chosen", "NLL chosen ↓", False),
    ("kl_teacher", "KL to teacher ↓", False),
    ("rouge_l", "ROUGE-L ↑", True),
]
REFERENCE_ORDER = {"teacher": 0, "student-init": 1}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BenchError(f"{path} is not valid JSON ({e.msg}); re-run the command that wrote it.") from None


def load_records(results_dir: Path) -> list[dict]:
    """Run records, each with the benchmark results found beside it (``benchmarks/*.json``) under ``_benchmarks``."""
    records = []
    for path in sorted(Path(results_dir).glob("*/*/*/record.json")):
        rec = _read_json(path)
        rec["_benchmarks"] = [_read_json(p) for p in sorted((path.parent / "benchmarks").glob("*.json"))]
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


def _interval(cell: dict) -> str:
    value = cell.get("value")
    if value is None or pd.isna(value):
        return "–"
    text = f"{value:.2f}"
    if cell.get("se") is not None and not pd.isna(cell["se"]):
        text += f" ± {cell['se']:.2f}"
    elif cell.get("ci"):
        text += f" [{cell['ci'][0]:.1f}, {cell['ci'][1]:.1f}]"
    return text


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


def _cell(value, se, best: bool) -> str:
    if value is None or pd.isna(value):
        return "–"
    text = f"{value:.3f}" + ("" if se is None or pd.isna(se) else f" ± {se:.3f}")
    return f"**{text}**" if best else text


def _int(v) -> str:
    return "–" if v is None or pd.isna(v) else f"{int(v):,}"


def benchmark_table(part: pd.DataFrame, records: list[dict]) -> list[str]:
    """The run's benchmark scores: one column per metric and variant, footnotes saying how each was judged."""
    columns, cells = benchmark_columns(part, records)
    if not columns:
        return []
    lines = ["### Benchmarks", ""]
    header = ["model"]
    notes: dict[str, int] = {}  # a footnote per distinct setting, numbered in column order
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
        if values:
            best[col["key"]] = max(values)
    for _, r in part.iterrows():
        row_cells = [cells.get((col["key"], r["row"])) for col in columns]
        if not any(row_cells):
            continue
        out = [f"*{r['row']}*" if r["kind"] == "reference" else r["row"]]
        for col, cell in zip(columns, row_cells):
            text = _interval(cell) if cell else "–"
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


def markdown(pair: str, df: pd.DataFrame, description: str = "", records: list[dict] | None = None) -> str:
    lines = [f"# Leaderboard: {pair}", ""]
    if description:
        lines += [description, ""]
    lines += [
        "Generated by `bench leaderboard` from `results/` alone. Offline metrics on held-out preference rows; "
        "each value ± one standard error over the n rows in its column header. **Bold**: best trained method "
        "per column (reference rows excluded). Regenerate with `bench leaderboard`; reproduce a run with the "
        "command in its section.",
        "",
    ]
    for run, part in df.groupby("run", sort=True):
        budget, seed = part["budget"].iloc[0], part["seed"].iloc[0]
        lines += [f"## Run `{run}` (budget `{budget}`, seed {seed})", ""]
        methods = sorted(part.loc[part["kind"] == "method", "row"])
        if methods:
            lines += [f"Reproduce: `bench run --methods {','.join(methods)} --pair {pair} --budget {budget} "
                      f"--seed {seed} --data-dir ../shared`", ""]
        best = {}
        trained = part[part["kind"] == "method"]
        for name, _, higher in METRICS:
            col = trained[name].dropna()
            if len(col):
                best[name] = col.max() if higher else col.min()
        header = ["model"] + [f"{label} (n={_n(part, name)})" for name, label, _ in METRICS]
        header += ["steps", "student tokens", "teacher tokens", "train s", "TFLOP (est.)"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for _, r in part.iterrows():
            label = f"*{r['row']}*" if r["kind"] == "reference" else r["row"]
            cells = [label]
            for name, _, _ in METRICS:
                is_best = r["kind"] == "method" and name in best and r[name] == best[name]
                cells.append(_cell(r[name], r[f"{name}_se"], is_best))
            flops = r["flops_estimate"]
            cells += [_int(r["optimizer_steps"]), _int(r["student_tokens_trained"]), _int(r["teacher_forward_tokens"]),
                      "–" if pd.isna(r["wall_clock_s"]) else f"{r['wall_clock_s']:.0f}",
                      "–" if flops is None or pd.isna(flops) else f"{flops / 1e12:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines += benchmark_table(part, records or [])
    lines += [
        "Metrics: *pref. acc.* — share of held-out pairs where the model gives the chosen response a higher "
        "length-normalised log-probability than the rejected one; *margin* — the mean difference of those "
        "(nats/token); *NLL chosen* — token-mean negative log-likelihood of the chosen responses; *KL to teacher* — "
        "token-mean KL(teacher ‖ model) on the chosen responses between top-k + rest-bucket coarsenings (a lower "
        "bound on the full KL); *ROUGE-L* — F1 ×100 of greedy answers against the chosen responses. Teacher tokens "
        "count the teacher forward passes of the cached signals a method used (shared between methods).",
        "",
    ]
    return "\n".join(lines)


def _n(part: pd.DataFrame, name: str) -> str:
    ns = sorted({int(n) for n in part[f"{name}_n"].dropna()})
    return "/".join(map(str, ns)) if ns else "–"


def regenerate(results_dir: Path, leaderboard_dir: Path) -> list[Path]:
    from harness.registry import PAIRS

    records = load_records(results_dir)
    df = frame(records)
    written = []
    if df.empty:
        return written
    for pair, part in df.groupby("pair", sort=True):
        description = PAIRS.get(pair).description if pair in PAIRS else ""
        md = leaderboard_dir / f"{pair}.md"
        write_text_atomic(md, markdown(pair, part, description, records))
        csv = leaderboard_dir / f"{pair}.csv"
        write_text_atomic(csv, part.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
        written += [md, csv]
        bench = benchmark_frame(part, [r for r in records if r["pair"]["name"] == pair])
        if not bench.empty:
            path = leaderboard_dir / f"{pair}_benchmarks.csv"
            write_text_atomic(path, bench.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
            written.append(path)
    return written
