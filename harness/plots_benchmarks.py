"""Plots of a run's benchmark results: score bars per benchmark, MT-Bench per category, wins/ties/losses."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.patches import Patch

from harness.benchmark import benchmark_columns, get_benchmark, variant
from harness.plot_kit import (
    MT_BENCH_CATEGORIES,
    _bars_figure,
    _best,
    _figure,
    _grid,
    _method_colors,
    _missing,
    _ns,
    _num,
    _row_axis,
    _style,
    error_bar,
    safe_name,
)

PLOT_NAMES = {"lm_eval": "lm-eval tasks"}  # where a plot's title says more than the benchmark's name


def _shown(benchmark: str) -> str:
    return PLOT_NAMES.get(benchmark) or get_benchmark(benchmark).name


def _columns(records: list[dict]) -> tuple[list[dict], dict]:
    return benchmark_columns([r["row"] for r in records], records[0]["run"], records)


def _settings(columns: list[dict]) -> dict:
    """Variant key -> setting number, per benchmark, so panels of different settings say which is which."""
    numbers: dict = {}
    for col in columns:
        numbers.setdefault(col["benchmark"], {}).setdefault(col["variant"], len(numbers[col["benchmark"]]) + 1)
    return numbers


def _benchmarks(records, ctx):
    columns, cells = _columns(records)
    methods = {r["row"] for r in records if r["kind"] == "method"}
    settings = _settings(columns)
    out = []
    for bench in dict.fromkeys(c["benchmark"] for c in columns):
        panels, notes = [], {}
        for col in (c for c in columns if c["benchmark"] == bench):
            found = {row: cells[(col["key"], row)] for (k, row) in cells if k == col["key"]}
            bars = {row: b for row, cell in found.items() if (b := error_bar(cell))}
            if not bars:
                continue
            number = settings[bench][col["variant"]]
            notes[number] = col["description"]
            tag = f" [setting {number}]" if len(settings[bench]) > 1 else ""
            ns = _ns(found[row].get("n") for row in bars)
            panels.append({"title": f"{col['label']}{tag}\n(n={ns})", "xlabel": f"{col['label']} ↑", "bars": bars,
                           "best": _best(bars, methods, True)})
        if not panels:
            continue
        shown = _shown(bench)
        title = f"{shown} — {ctx}"
        caption = (f"{shown}: one panel per score and setting (settings never share a panel). Bars: ± one standard "
                   "error, or the 95% bootstrap interval where the benchmark reports one; n: questions (MT-Bench: "
                   "judgments) behind each score. Orange: best trained method; hatched grey: reference rows. "
                   + " ".join(f"Setting {k}: {d or 'default'}." for k, d in notes.items()))
        out.append((f"benchmark_{safe_name(bench)}", title, caption, _bars_figure(title, records, panels, 4)))
    return out


# ---------------------------------------------------------------- MT-Bench radar

def _mt_bench_radar(records, ctx):
    variants: dict = {}
    for rec in records:
        for result in rec.get("_benchmarks", []):
            cats = (result.get("metrics") or {}).get("categories")
            if result["benchmark"] == "mt_bench" and cats:
                key, description = variant(result)
                variants.setdefault(key, (description, {}))[1][rec["row"]] = cats
    if not variants:
        return []
    colors = _method_colors(records)
    fig = _figure(2.0 + 5.5 * len(variants), 6.0)
    title = f"MT-Bench per category — {ctx}"
    fig.suptitle(title)
    for number, (_, by_row) in enumerate(variants.values(), 1):
        present = {c for cats in by_row.values() for c in cats}
        names = [c for c in MT_BENCH_CATEGORIES if c in present] + sorted(present - set(MT_BENCH_CATEGORIES))
        angles = [2 * math.pi * i / len(names) for i in range(len(names))]
        ax = fig.add_subplot(1, len(variants), number, projection="polar")
        ax.set_theta_offset(math.pi / 2)  # first category on top, then clockwise like the published charts
        ax.set_theta_direction(-1)
        for rec in records:
            if rec["row"] in by_row:
                scores = [_num(by_row[rec["row"]].get(c)) for c in names]
                scores = [math.nan if s is None else s for s in scores]
                ax.plot([*angles, angles[0]], [*scores, scores[0]], label=rec["row"], **_style(rec["row"], colors))
        ax.set_xticks(angles, names)
        ax.set_ylim(0, 10)
        ax.set_yticks([2, 4, 6, 8, 10])
        ax.set_rlabel_position(180 / len(names))  # between two spokes, off the polygons' corners
        ax.tick_params(axis="y", labelsize=7, labelcolor="0.4")
        ax.tick_params(axis="x", pad=6)
        ax.set_title("mean judge score (1–10), ↑ outward" + (f" [setting {number}]" if len(variants) > 1 else ""),
                     pad=18)
    drawn = {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}  # rows of any setting
    fig.legend(handles=[drawn[r["row"]] for r in records if r["row"] in drawn], loc="outside right upper",
               frameon=False)
    caption = ("MT-Bench mean judge score per category (1–10, higher is better), one polygon per row; dashed "
               "black: teacher, dotted grey: student-init. "
               + " ".join(f"Setting {k}: {d or 'default'}." for k, (d, _) in enumerate(variants.values(), 1)))
    return [("mt_bench_radar", title, caption, fig)]


# ---------------------------------------------------------------- win / tie / loss

def _win_tie_loss(records, ctx):
    from harness.questions import outcome_counts

    panels: dict = {}  # variant key -> {benchmark, description, reference, counts: {row: (w, t, l)}}
    for rec in records:
        for result in rec.get("_benchmarks", []):
            counts = outcome_counts(result, Path(rec["_dir"]))
            if not counts or not sum(_num(counts[k]) or 0 for k in ("win", "tie", "loss")):
                continue
            key, description = variant(result)
            panel = panels.setdefault(key, {"benchmark": result["benchmark"], "description": description,
                                            "reference": counts["reference"], "counts": {}})
            panel["counts"][rec["row"]] = tuple(_num(counts[k]) or 0.0 for k in ("win", "tie", "loss"))
    if not panels:
        return []
    rows = [r["row"] for r in records]
    ref = {r["row"] for r in records if r["kind"] == "reference"}
    ordered = sorted(panels.values(), key=lambda p: (p["benchmark"], p["reference"], p["description"]))
    cols = min(len(ordered), 3)
    fig = _figure(1.5 + 3.6 * cols, 0.9 + math.ceil(len(ordered) / cols) * (0.9 + 0.24 * len(rows)))
    title = f"Wins, ties and losses against the reference — {ctx}"
    fig.suptitle(title)
    shades = [("win", "#54a24b"), ("tie", "0.75"), ("loss", "#e45756")]
    for number, (ax, panel) in enumerate(zip(_grid(fig, len(ordered), 3, sharey=True), ordered), 1):
        for y, row in enumerate(rows):
            counts = panel["counts"].get(row)
            if counts is None:
                _missing(ax, y)
                continue
            left = 0.0
            for share, (_, color) in zip((100 * c / sum(counts) for c in counts), shades):
                ax.barh(y, share, left=left, height=0.7, color=color)
                if share >= 12:
                    ax.text(left + share / 2, y, f"{share:.0f}", ha="center", va="center", fontsize=6.5)
                left += share
        ns = _ns(sum(c) for c in panel["counts"].values())
        ax.set_title(f"{_shown(panel['benchmark'])} [{number}]\n"
                     f"vs {panel['reference']} (n={ns})")
        ax.set_xlim(0, 100)
        ax.axvline(50, color="0.2", linewidth=0.6, linestyle=":")
        ax.set_xlabel("share of judgments (%)")
        _row_axis(ax, rows, ref)
    fig.legend(handles=[Patch(color=c, label=f"{k} for the row") for k, c in shades],
               loc="outside lower center", ncols=3, frameon=False)
    caption = ("Shares of the judged comparisons each row wins, ties and loses against the benchmark's reference "
               "answers (Arena-Hard: weighted battles, a strong verdict counting several times), in %; n: "
               "comparisons per row. " + " ".join(f"[{k}] {p['description'] or 'default setting'}."
                                                    for k, p in enumerate(ordered, 1)))
    return [("win_tie_loss", title, caption, fig)]
