"""Tables as data, built once and rendered by the Markdown board (here), the HTML report (harness/html_tables.py)
and the CSV files, so that the renderings cannot drift apart.

A table model is ``{scope, section, id, title, intro, columns, rows, notes}``; a column ``{label, numeric, ...}``
(the run and benchmark tables add ``key``, ``n``/``ns``, ``description``, ``higher``); a row ``{row, kind,
cells}`` and a cell ``{text, value, best}`` (benchmark cells also keep the result's ``cell``: value, se, ci, n).
"""

from __future__ import annotations

import math

import pandas as pd

from harness.benchmark import benchmark_columns
from harness.results import COMPUTE, METRICS

MISSING = {"text": "–", "value": None, "best": False}
EMPTY = "No row has a value in every column of this table, so it is left out."


def finite(value) -> float | None:
    """A finite float, or None for what a table shows as missing (None, NaN, pandas NA, inf, non-numbers)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def best_of(values: list[float], higher: bool = True) -> float | None:
    """The value to mark as best among the trained methods' values, or None when two or more methods all tie
    (marking every row would say nothing)."""
    if not values or (len(values) > 1 and len(set(values)) == 1):
        return None
    return max(values) if higher else min(values)


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


def table_model(scope: str, table_id: str, title: str, columns: list[dict], rows: list[dict],
                intro: str | None = None, notes: list[str] | None = None, section: str | None = None) -> dict:
    return {"scope": scope, "section": section, "id": table_id, "title": title, "intro": intro, "columns": columns,
            "rows": rows, "notes": notes or []}


def _ns(values) -> str:
    ns = sorted({int(v) for v in values if finite(v) is not None})
    return "/".join(map(str, ns)) if ns else "–"


def run_table(part: pd.DataFrame, scope: str = "") -> dict:
    """A run's offline metrics (value ± se; best trained method per column) and the compute each row used."""
    trained = part[part["kind"] == "method"]
    best = {name: best_of([v for v in map(finite, trained[name]) if v is not None], higher)
            for name, _, higher in METRICS}
    columns = [{"key": name, "label": label, "n": _ns(part[f"{name}_n"]), "higher": higher, "numeric": True}
               for name, label, higher in METRICS]
    columns += [{"key": key, "label": label, "n": None, "higher": None, "numeric": True} for key, label in COMPUTE]
    rows = []
    for _, r in part.iterrows():
        cells = [{"text": fmt_value(r[name], r[f"{name}_se"]), "value": r[name],
                  "best": r["kind"] == "method" and best[name] is not None and finite(r[name]) == best[name]}
                 for name, _, _ in METRICS]
        cells += [{"text": fmt_compute(key, r.get(key)), "value": r.get(key), "best": False} for key, _ in COMPUTE]
        rows.append({"row": r["row"], "kind": r["kind"], "cells": cells})
    return table_model(scope, "metrics", "Offline metrics and compute", columns, rows)


def benchmark_table(part: pd.DataFrame, records: list[dict], scope: str = "") -> dict:
    """One column per benchmark metric and variant (``description`` says how it was judged); rows that have
    no benchmark cell are left out."""
    run = scope or (part["run"].iloc[0] if len(part) else "")
    columns, cells = benchmark_columns(part["row"], run, records)
    methods = set(part.loc[part["kind"] == "method", "row"])
    for col in columns:
        col["ns"] = sorted({c["n"] for (k, _), c in cells.items() if k == col["key"] and c.get("n") is not None})
        col["numeric"] = True
        values = [finite(c.get("value")) for (k, row), c in cells.items() if k == col["key"] and row in methods]
        col["best"] = best_of([v for v in values if v is not None], col["higher"])
    rows = []
    for row, kind in zip(part["row"], part["kind"]):
        found = [cells.get((col["key"], row)) for col in columns]
        if not any(found):
            continue
        out = []
        for col, cell in zip(columns, found):
            value = finite(cell.get("value")) if cell else None
            out.append({"text": fmt_interval(cell) if cell else "–", "value": value, "cell": cell,
                        "best": kind == "method" and value is not None and value == col["best"]})
        rows.append({"row": row, "kind": kind, "cells": out})
    return table_model(run, "benchmarks", "Benchmarks", columns, rows)


def benchmark_lines(model: dict, pair: str) -> list[dict]:
    """The benchmark table in long format (the CSV): one line per row, benchmark metric and variant."""
    lines = []
    for i, col in enumerate(model["columns"]):
        for r in model["rows"]:
            cell = r["cells"][i]["cell"]
            if cell is None:
                continue
            ci = cell.get("ci") or (None, None)
            lines.append({"pair": pair, "run": model["scope"], "row": r["row"], "benchmark": col["benchmark"],
                          "metric": cell["metric"], "variant": col["variant"], "value": cell.get("value"),
                          "se": cell.get("se"), "ci95_low": ci[0], "ci95_high": ci[1], "n": cell.get("n"),
                          "setting": col["description"]})
    return lines


# ---------------------------------------------------------------- Markdown


def _md_row(r: dict) -> list[str]:
    cells = [f"*{r['row']}*" if r["kind"] == "reference" else r["row"]]
    return cells + [f"**{c['text']}**" if c["best"] else c["text"] for c in r["cells"]]


def _md_grid(header: list[str], rows: list[dict]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_md_row(r)) + " |" for r in rows]


def md_table(model: dict) -> list[str]:
    if not model["rows"] or not model["columns"]:  # never an empty `| model |` table: say why in words
        return [f"### {model['title']}", "", model.get("empty") or EMPTY, ""]
    lines = [f"### {model['title']}", ""] + ([model["intro"], ""] if model.get("intro") else [])
    lines += _md_grid(["model"] + [c["label"] for c in model["columns"]], model["rows"])
    return lines + [""] + [n for note in model["notes"] for n in (note, "")]


def md_run_table(model: dict) -> list[str]:
    header = ["model"] + [c["label"] + ("" if c["n"] is None else f" (n={c['n']})") for c in model["columns"]]
    return _md_grid(header, model["rows"]) + [""]


def md_benchmark_table(model: dict, notes: dict[str, int]) -> list[str]:
    """``notes`` (setting -> footnote number, in column order) is filled for the tables that follow."""
    if not model["columns"]:
        return []
    header = ["model"]
    for col in model["columns"]:
        note = notes.setdefault(col["description"], len(notes) + 1)
        header.append(f"{col['label']} [{note}] (n={'/'.join(map(str, col['ns'])) or '–'})")
    lines = ["### Benchmarks", ""] + _md_grid(header, model["rows"]) + [""]
    lines += [f"[{note}] {description}." for description, note in notes.items()]
    return lines + ["", "Scores ± one standard error, or [95% bootstrap interval] for Arena-Hard; n is the number of "
                    "questions (MT-Bench: judgments, both turns) behind each score.", ""]
