"""Per-question scores and paired differences between rows: each row against the best trained method of
every column, with paired bootstrap intervals over the questions both answered."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import pandas as pd

from harness.benchmark import get_benchmark, variant
from harness.files import read_jsonl
from harness.questions import question_scores
from harness.results import METRICS
from harness.stats import N_BOOT, ROW_METRICS, bootstrap_indices, paired_bootstrap
from harness.tables import MISSING, table_model


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
        bench = get_benchmark(result["benchmark"])
        for position, (field, label, decimals) in enumerate(bench.question_columns):
            scores = question_scores(result, row_dir, field)
            if scores:
                if result["benchmark"] == "rm_winrate":
                    label = f"{label} vs {result.get('reference', '?')}"
                out.append(({"id": f"{result['benchmark']}:{field}:{key}", "label": label,
                             "higher": bench.higher_is_better,
                             "decimals": decimals, "description": description,
                             "order": (1, bench.order, result["benchmark"], position,
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
               "noise over questions (not over training seeds). Where methods tie for best, the first by name is marked. "
               "NLL and KL enter as each row's token mean, so rows weigh equally; the table above weighs rows by "
               "their tokens, so a difference here need not equal the difference of the two values there."
               + (" Arena-Hard here is the share of weighted battles won, the per-question quantity behind its "
                  "score." if any(c["id"].startswith("arena_hard") for c in columns) else ""))
    return table_model(scope, "differences", "Paired differences from the best method", header, body,
                       notes=[explain]), diffs
