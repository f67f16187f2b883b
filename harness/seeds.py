"""Across seeds and pairs: mean ± spread over the seeds of a budget (with paired differences over seed-averaged
question scores), and the summary ranking methods over every pair."""

from __future__ import annotations

import pandas as pd

from harness.benchmark import benchmark_columns, get_benchmark
from harness.differences import differences_table
from harness.results import METRICS, REFERENCE_ORDER, seed_groups
from harness.stats import seed_spread
from harness.tables import MISSING, best_of, table_model


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
        cols, cells = benchmark_columns([r["row"] for r in recs], run, recs)
        for col in cols:
            key = (1,) + col["key"]
            columns.setdefault(key, {"label": col["label"], "higher": col["higher"], "decimals": 2,
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
    if col["label"] in get_benchmark(col["key"][2]).secondary:
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
