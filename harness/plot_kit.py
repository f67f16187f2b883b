"""What every plot shares: the style, byte-stable figures, bar panels and the row axis."""

from __future__ import annotations

import math
import os
import re
import uuid
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from harness.results import REFERENCE_ORDER

DPI = 110
RC = {"svg.hashsalt": "bench-plots", "svg.fonttype": "path", "font.size": 9, "axes.titlesize": 9,
      "figure.titlesize": 11, "legend.fontsize": 8}
UNITS = {"pref_acc": "share of pairs", "nll_chosen": "nats/tok", "kl_teacher": "nats/tok", "rouge_l": "F1×100"}
MT_BENCH_CATEGORIES = ["writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"]
METHOD, BEST, REFERENCE = "#4c78a8", "#f58518", "0.8"
# tab20 dark shades first: neighbouring methods get distinct hues, not a dark/light pair of one hue
PALETTE = [matplotlib.colormaps["tab20"](i) for i in [*range(0, 20, 2), *range(1, 20, 2)]]
REF_STYLE = {"teacher": ("black", "--"), "student-init": ("0.45", ":")}



# ---------------------------------------------------------------- pure helpers

def _num(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def error_bar(cell: dict | None) -> tuple[float, float, float] | None:
    """(value, lower error, upper error) of a cell: ± se where it has one, else its [lo, hi] interval;
    None without a value (missing values are skipped, never drawn as 0)."""
    value = _num((cell or {}).get("value"))
    if value is None:
        return None
    se = _num(cell.get("se"))
    if se is not None:
        return value, se, se
    lo, hi = (cell.get("ci") or (None, None))[:2]
    lo, hi = _num(lo), _num(hi)
    if lo is not None and hi is not None:  # an interval need not contain the point estimate; bars can't go negative
        return value, max(value - lo, 0.0), max(hi - value, 0.0)
    return value, 0.0, 0.0


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool = True) -> list[int]:
    """Indices of the (compute, quality) points no other point dominates, i.e. none has ≤ compute and
    at-least-as-good quality with one of the two strictly better (equal points all stay). By compute."""
    s = 1 if higher_is_better else -1

    def dominates(a, b):
        return a[0] <= b[0] and s * a[1] >= s * b[1] and (a[0] < b[0] or s * a[1] > s * b[1])

    front = [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]
    return sorted(front, key=lambda i: (points[i][0], -s * points[i][1], i))


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _order(rec: dict) -> tuple:
    """Reference rows first (teacher, student-init, any other), then methods, alphabetically: the leaderboard's
    order, and the rule between references and methods stays right for any reference row."""
    return rec["kind"] != "reference", REFERENCE_ORDER.get(rec["row"], len(REFERENCE_ORDER)), rec["row"]


def _ns(ns) -> str:
    ns = sorted({int(n) for n in ns if _num(n) is not None})
    return "/".join(map(str, ns)) or "–"


def _method_colors(records: list[dict]) -> dict:
    methods = [r["row"] for r in records if r["kind"] != "reference"]
    return {m: (PALETTE[i % len(PALETTE)], "-" if i < 10 else "-.") for i, m in enumerate(methods)}


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _figure(width: float, height: float) -> Figure:
    # quarter inches: exact in binary, so the pixel size never depends on float rounding
    return Figure(figsize=(math.ceil(width * 4) / 4, math.ceil(height * 4) / 4), dpi=DPI, layout="constrained")


def _grid(fig: Figure, n: int, max_cols: int, **kw):
    cols = min(n, max_cols)
    axes = fig.subplots(math.ceil(n / cols), cols, squeeze=False, **kw).ravel()
    for ax in axes[n:]:
        ax.remove()
    return axes[:n]


# ---------------------------------------------------------------- bar charts (offline metrics, benchmarks)

def _row_axis(ax, rows: list[str], ref: set) -> None:
    """Rows down the side, first on top, references (first by sort order) italic and ruled off."""
    ax.set_yticks(range(len(rows)), rows)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    if 0 < len(ref) < len(rows):
        ax.axhline(len(ref) - 0.5, color="0.3", linewidth=0.8)
    for label in ax.get_yticklabels():
        if label.get_text() in ref:
            label.set_fontstyle("italic")


def _missing(ax, y: float) -> None:
    ax.text(0.02, y, "n/a", transform=ax.get_yaxis_transform(), va="center", fontsize=7, color="0.5")


def _bars_figure(title: str, records: list[dict], panels: list[dict], max_cols: int) -> Figure:
    """Horizontal bars, one panel per metric, rows down the side (their names stay readable for any count)."""
    rows = [r["row"] for r in records]
    ref = {r["row"] for r in records if r["kind"] == "reference"}
    cols = min(len(panels), max_cols)
    grid_rows = math.ceil(len(panels) / cols)
    fig = _figure(max(1.5 + 2.9 * cols, 6.0), 0.9 + grid_rows * (0.9 + 0.24 * len(rows)))
    fig.suptitle(title)
    for ax, panel in zip(_grid(fig, len(panels), max_cols, sharey=True), panels):
        for y, row in enumerate(rows):
            bar = panel["bars"].get(row)
            if bar is None:
                _missing(ax, y)
                continue
            value, lo, hi = bar
            color = REFERENCE if row in ref else BEST if row in panel["best"] else METHOD
            ax.barh(y, value, height=0.7, color=color, hatch="///" if row in ref else None,
                    edgecolor="0.35" if row in ref else color, linewidth=0.5)
            if lo or hi:
                ax.errorbar(value, y, xerr=[[lo], [hi]], fmt="none", ecolor="0.15", elinewidth=0.8, capsize=2)
        ax.set_title(panel["title"])
        ax.set_xlabel(panel["xlabel"])
        ax.axvline(0, color="0.3", linewidth=0.6)
        ax.grid(axis="x", color="0.9", linewidth=0.6)
        ax.set_axisbelow(True)
        _row_axis(ax, rows, ref)
    fig.legend(handles=[Patch(color=METHOD, label="method"), Patch(color=BEST, label="best method"),
                        Patch(facecolor=REFERENCE, edgecolor="0.35", hatch="///", label="reference (not trained)")],
               loc="outside lower center", ncols=3, frameon=False)
    return fig


def _best(bars: dict, methods: set, higher: bool) -> set:
    values = {row: b[0] for row, b in bars.items() if row in methods}
    if not values:
        return set()
    top = (max if higher else min)(values.values())
    best = {row for row, v in values.items() if v == top}
    return best if len(best) < len(values) else set()  # when all methods tie, none is best


def _with_unit(name: str, label: str) -> str:
    unit = UNITS.get(name)
    if not unit:
        return label
    head, arrow = label.rsplit(" ", 1)
    return f"{head} ({unit}) {arrow}"


def _style(row: str, colors: dict) -> dict:
    if row in REF_STYLE:
        color, ls = REF_STYLE[row]
        return {"color": color, "linestyle": ls, "linewidth": 2.0}
    color, ls = colors.get(row, ("0.5", "-"))
    return {"color": color, "linestyle": ls, "linewidth": 1.3}
