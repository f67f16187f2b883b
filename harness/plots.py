"""Plots of one run of one pair (PNG and SVG), from its records alone.

The same records give byte-identical files: figures are built without pyplot (no global figure registry to
leak memory or state), the SVG hash salt is fixed, neither file carries a date or software version, and sizes
follow only from the number of panels and rows.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import matplotlib
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter

from harness.plot_kit import (
    BEST,
    DPI,
    METHOD,
    RC,
    _bars_figure,
    _best,
    _figure,
    _grid,
    _method_colors,
    _ns,
    _num,
    _order,
    _style,
    _with_unit,
    _write_bytes_atomic,
    error_bar,
    pareto_front,
)
from harness.plots_benchmarks import _benchmarks, _columns, _mt_bench_radar, _settings, _win_tie_loss
from harness.results import METRICS


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
