"""Plots of one run of one pair (PNG and SVG), from its records alone.

The same records give byte-identical files: figures are built without pyplot (no global figure registry to
leak memory or state), the SVG hash salt is fixed, neither file carries a date or software version, and sizes
follow only from the number of panels and rows.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import uuid
from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter

from harness.leaderboard import METRICS, REFERENCE_ORDER, benchmark_columns, variant

DPI = 110
RC = {"svg.hashsalt": "bench-plots", "svg.fonttype": "path", "font.size": 9, "axes.titlesize": 9,
      "figure.titlesize": 11, "legend.fontsize": 8}
UNITS = {"pref_acc": "share of pairs", "nll_chosen": "nats/tok", "kl_teacher": "nats/tok", "rouge_l": "F1×100"}
MT_BENCH_CATEGORIES = ["writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"]
BENCHMARK_NAMES = {"mt_bench": "MT-Bench", "alpaca_eval_2": "AlpacaEval 2", "arena_hard_v0.1": "Arena-Hard v0.1",
                   "rm_winrate": "RM win rate", "lm_eval": "lm-eval tasks"}
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


def _offline_metrics(records, ctx):
    methods = {r["row"] for r in records if r["kind"] == "method"}
    panels = []
    for name, label, higher in METRICS:
        bars = {r["row"]: b for r in records if (b := error_bar(r.get("metrics", {}).get(name)))}
        if bars:
            ns = [r["metrics"][name].get("n") for r in records if r["row"] in bars]
            panels.append({"title": f"{label} (n={_ns(ns)})", "xlabel": _with_unit(name, label), "bars": bars,
                           "best": _best(bars, methods, higher)})
    if not panels:
        return []
    title = f"Offline metrics — {ctx}"
    caption = ("Offline metrics on held-out preference rows, ± one standard error over the n rows in each panel "
               "title. Orange: best trained method per panel (↑ higher / ↓ lower is better); hatched grey: "
               "reference rows (not trained); n/a: no value.")
    return [("offline_metrics", title, caption, _bars_figure(title, records, panels, max_cols=5))]


def _columns(records: list[dict]) -> tuple[list[dict], dict]:
    part = pd.DataFrame({"row": [r["row"] for r in records], "run": [r["run"] for r in records]})
    return benchmark_columns(part, records)


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
        shown = BENCHMARK_NAMES.get(bench, bench)
        title = f"{shown} — {ctx}"
        caption = (f"{shown}: one panel per score and setting (settings never share a panel). Bars: ± one standard "
                   "error, or the 95% bootstrap interval where the benchmark reports one; n: questions (MT-Bench: "
                   "judgments) behind each score. Orange: best trained method; hatched grey: reference rows. "
                   + " ".join(f"Setting {k}: {d or 'default'}." for k, d in notes.items()))
        out.append((f"benchmark_{safe_name(bench)}", title, caption, _bars_figure(title, records, panels, 4)))
    return out


# ---------------------------------------------------------------- MT-Bench radar

def _style(row: str, colors: dict) -> dict:
    if row in REF_STYLE:
        color, ls = REF_STYLE[row]
        return {"color": color, "linestyle": ls, "linewidth": 2.0}
    color, ls = colors.get(row, ("0.5", "-"))
    return {"color": color, "linestyle": ls, "linewidth": 1.3}


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


# ---------------------------------------------------------------- quality vs compute

def _flops_unit(flops: list[float]) -> tuple[float, str]:
    top = max(flops)
    for scale, unit in [(1e18, "EFLOP"), (1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP")]:
        if top >= scale:
            return scale, unit
    return 1.0, "FLOP"


def _label_points(ax, points: list[tuple[float, float]], names: list[str], fontsize: float = 7) -> None:
    """Names beside the points, each at the first nearby spot inside the axes that overlaps no placed name and
    no point (ties put many points on one line). Needs the figure's layout done: positions are in pixels."""
    px = ax.transData.transform(points) if points else []
    pt = ax.figure.dpi / 72
    h = 1.2 * fontsize * pt
    blocked = [(x - 3 * pt, y - 3 * pt, x + 3 * pt, y + 3 * pt) for x, y in px]
    spots = [(side * 4, dy) for level in range(6) for dy in (3 + 9 * level, -12 - 9 * level) for side in (1, -1)]
    inside = ax.bbox.extents
    for (x, y), point, name in zip(px, points, names):
        w = 0.62 * fontsize * pt * len(name)
        for dx, dy in spots:
            x0 = x + dx * pt - (w if dx < 0 else 0)
            box = (x0, y + dy * pt, x0 + w, y + dy * pt + h)
            if box[0] >= inside[0] and box[2] <= inside[2] and box[1] >= inside[1] and box[3] <= inside[3] \
                    and not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in blocked):
                break
        else:
            dx, dy = spots[0]
            box = None
        if box:
            blocked.append(box)
        far = abs(dy) > 12  # a leader line says whose name it is
        ax.annotate(name, point, xytext=(dx, dy), textcoords="offset points", ha="left" if dx > 0 else "right",
                    va="bottom", fontsize=fontsize, color="0.15", annotation_clip=False,
                    arrowprops={"arrowstyle": "-", "color": "0.6", "linewidth": 0.5} if far else None
                    ).set_in_layout(False)


def _quality_vs_compute(records, ctx):
    flops = {r["row"]: f for r in records if r["kind"] == "method"
             and (f := _num((r.get("compute") or {}).get("flops_estimate"))) is not None}
    if not flops:
        return []
    quality = []  # (label, higher, {row: value})
    for name, label, higher in METRICS:
        if name in ("pref_acc", "rouge_l"):
            values = {r["row"]: v for r in records if (v := _num((r["metrics"].get(name) or {}).get("value")))
                      is not None}
            quality.append((_with_unit(name, label), higher, values))
    columns, cells = _columns(records)
    settings = _settings(columns)
    for col in columns:
        if col["key"][2] == 0:  # the benchmark's headline cell
            tag = f" [setting {settings[col['benchmark']][col['variant']]}]" if len(settings[col["benchmark"]]) > 1 \
                else ""
            values = {row: v for (k, row), c in cells.items() if k == col["key"] and (v := _num(c.get("value")))
                      is not None}
            quality.append((f"{col['label']}{tag} ↑", True, values))
    quality = [q for q in quality if set(q[2]) & set(flops)]
    if not quality:
        return []
    scale, unit = _flops_unit(list(flops.values()))
    cols = min(len(quality), 3)
    fig = _figure(5.0 * cols, 0.9 + 4.0 * math.ceil(len(quality) / cols))
    title = f"Quality vs training compute — {ctx}"
    fig.suptitle(title)
    labels = []
    xmax = max(flops.values()) / scale
    for ax, (label, higher, values) in zip(_grid(fig, len(quality), 3), quality):
        rows = [r for r in flops if r in values]
        points = [(flops[r] / scale, values[r]) for r in rows]
        front = pareto_front(points, higher)
        ax.scatter([p[0] for p in points], [p[1] for p in points], s=18, color=METHOD, zorder=3)
        fx, fy = [points[i][0] for i in front], [points[i][1] for i in front]
        ax.step(fx, fy, where="post", color=BEST, linewidth=1.2, zorder=2)
        ax.scatter(fx, fy, s=55, marker="D", color=BEST, edgecolor="black", linewidth=0.6, zorder=4)
        order = front + [i for i in range(len(rows)) if i not in front]  # the front's names get the best spots
        names, spots = [rows[i] for i in order], [points[i] for i in order]
        if "student-init" in values:
            ax.scatter([0], [values["student-init"]], s=45, marker="s", color="0.45", zorder=4)
            names, spots = ["student-init", *names], [(0.0, values["student-init"]), *spots]
        if "teacher" in values:
            ax.axhline(values["teacher"], color="black", linestyle="--", linewidth=1.0)
        ax.set_xlim(-0.04 * xmax, 1.15 * xmax)
        ax.margins(y=0.12)
        ax.set_xlabel(f"training compute ({unit}, estimated) → costlier")
        ax.set_ylabel(label)
        ax.grid(color="0.92", linewidth=0.6)
        labels.append((ax, spots, names))
    fig.draw_without_rendering()  # lays the axes out, so the names can be placed in pixels
    for ax, spots, names in labels:
        _label_points(ax, spots, names)
    fig.legend(handles=[Line2D([], [], marker="o", color=METHOD, linestyle="", label="method"),
                        Line2D([], [], marker="D", color=BEST, markeredgecolor="black", label="Pareto front"),
                        Line2D([], [], marker="s", color="0.45", linestyle="", label="student-init (x = 0)"),
                        Line2D([], [], color="black", linestyle="--", label="teacher")],
               loc="outside lower center", ncols=4, frameon=False)
    caption = ("Quality against the estimated training FLOPs of each method (signals it used included). The "
               "orange step line joins the Pareto front: methods no other method beats on both compute and "
               "quality. Student-init is the starting point at zero compute; the dashed line is the teacher.")
    return [("quality_vs_compute", title, caption, fig)]


# ---------------------------------------------------------------- loss curves

def read_loss_curve(path: Path) -> tuple[list[float], list[float]]:
    steps, losses = [], []
    with open(path, newline="") as f:
        for line in csv.DictReader(f):
            step, loss = _num(line.get("step")), _num(line.get("loss"))
            if step is not None and loss is not None:
                steps.append(step)
                losses.append(loss)
    return steps, losses


def _ema(values: list[float], alpha: float) -> list[float]:
    out = []
    for v in values:
        out.append(v if not out else alpha * v + (1 - alpha) * out[-1])
    return out


def _loss_curves(records, ctx):
    curves = {}
    for rec in records:
        path = Path(rec.get("_dir", "")) / "loss_curve.csv"
        if rec["kind"] == "method" and path.is_file():
            steps, losses = read_loss_curve(path)
            if steps:
                curves[rec["row"]] = (steps, losses)
    if not curves:
        return []
    colors = _method_colors(records)
    fig = _figure(10.0, 5.5)
    title = f"Training loss — {ctx}"
    fig.suptitle(title)
    ax = fig.subplots()
    smooth = max(len(s) for s, _ in curves.values()) >= 30
    for row, (steps, losses) in curves.items():
        style = _style(row, colors)
        if smooth:  # raw steps are noisy; the bold line is an exponential moving average
            ax.plot(steps, losses, color=style["color"], linewidth=0.6, alpha=0.3)
            ax.plot(steps, _ema(losses, 0.1), label=row, **style)
        else:
            ax.plot(steps, losses, label=row, marker="o", markersize=2.5, **style)
    low, high = min(min(v) for _, v in curves.values()), max(max(v) for _, v in curves.values())
    symlog = max(abs(low), abs(high)) > 2
    if symlog:  # objectives differ by orders of magnitude and some go negative: log beyond ±1, linear inside
        ax.set_yscale("symlog", linthresh=1.0)
        magnitudes = [0, 0.5, *(m * 10**e for e in range(7) for m in (1, 2, 5))]
        ax.yaxis.set_major_locator(FixedLocator(sorted({t for v in magnitudes for t in (v, -v) if low <= t <= high})))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"training loss (each method's own objective{'; symlog axis' if symlog else ''}) ↓")
    ax.grid(color="0.92", linewidth=0.6)
    fig.legend(loc="outside right upper", frameon=False)
    caption = ("Training loss per optimizer step, one line per method" + (" (bold: exponential moving average, "
               "faint: raw)" if smooth else "") + ". Each method minimises its own objective, so compare the "
               "shapes of the curves, not their levels." + (" The y axis is linear within ±1 and logarithmic beyond."
                                                            if symlog else ""))
    return [("loss_curves", title, caption, fig)]


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
        ax.set_title(f"{BENCHMARK_NAMES.get(panel['benchmark'], panel['benchmark'])} [{number}]\n"
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


# ---------------------------------------------------------------- entry point

PLOTS = [_offline_metrics, _benchmarks, _mt_bench_radar, _quality_vs_compute, _loss_curves, _win_tie_loss]


def render_plots(records: list[dict], out_dir: Path) -> list[dict]:
    """Plots of one run (all records share pair and run). Writes out_dir/<name>.png and out_dir/<name>.svg
    and returns [{"name": str, "title": str, "caption": str, "png": Path, "svg": Path}, ...] in a fixed order.
    Plots with no data are skipped (not written, not returned)."""
    if not records:
        return []
    records = sorted(records, key=_order)
    ctx = f"{records[0]['pair']['name']} / {records[0]['run']}"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with matplotlib.rc_context(RC):
        for plot in PLOTS:
            for name, title, caption, fig in plot(records, ctx):
                entry = {"name": name, "title": title, "caption": caption}
                for fmt, metadata in (("png", {"Software": None}), ("svg", {"Date": None})):
                    buf = io.BytesIO()
                    fig.savefig(buf, format=fmt, dpi=DPI, metadata=metadata)
                    entry[fmt] = out_dir / f"{name}.{fmt}"
                    _write_bytes_atomic(entry[fmt], buf.getvalue())
                fig.clear()  # not registered with pyplot: dropping the last reference frees it
                written.append(entry)
    return written
