"""Static HTML reports from run records: ``<out>/<pair>.html`` per pair and ``<out>/index.html``.

A report opens from disk (``file://``) with no server and no network: CSS and JS (harness/assets/) are inline, the only other
files it refers to are the plot images beside it. Per run of the pair it shows the offline metrics and compute
table, the benchmark table (both sortable by clicking a column header), any extra tables the leaderboard code
gives for the run (paired differences), the plots, and an answer viewer that puts every row's answer, the judge's
rationale and the score for one question side by side. Extra tables of other scopes (means across seeds) get
sections of their own after the runs.

Model and judge text never becomes markup: it travels as JSON in a ``<script type="application/json">``
element with ``<``, ``>`` and ``&`` escaped as ``\\u003c`` etc., and the page's script puts it in the DOM with
``textContent``. Everything else goes through ``html.escape``. The same inputs give the same bytes, and the file
is pure ASCII (non-ASCII text becomes character references), so no locale can change it.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from importlib.resources import files
from pathlib import Path

import pandas as pd

from harness import viewer
from harness.errors import BenchError
from harness.files import write_text_atomic
from harness.html_tables import (
    METRIC_NOTES,
    _class_token,
    _e,
    _inline,
    benchmark_table,
    extra_table,
    metrics_table,
    summary_table,
)
from harness.results import METRICS, frame
from harness.tables import benchmark_table as benchmark_model
from harness.tables import run_table
from harness.viewer import _Caps, _viewer_data, viewer_html

CSS = files("harness").joinpath("assets/report.css").read_text(encoding="ascii")
JS = files("harness").joinpath("assets/report.js").read_text(encoding="ascii")


def _slug(text: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "x"
    slug, i = base, 2
    while slug in taken:
        slug, i = f"{base}-{i}", i + 1
    taken.add(slug)
    return slug


def _href(target: Path | str, out_dir: Path) -> str:
    """A URL relative to ``out_dir`` (where the HTML file lives); both paths absolute or both relative to the
    working directory."""
    rel = os.path.relpath(Path(target), Path(out_dir))
    return urllib.parse.quote(Path(rel).as_posix())


def _json_for_script(obj) -> str:
    """JSON that no text can end early: ``<``, ``>`` and ``&`` become ``\\u003c``, ``\\u003e`` and ``\\u0026``
    (only strings can hold them), and ``ensure_ascii`` writes every non-ASCII character, U+2028/2029 included,
    as an escape."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _ascii(document: str) -> str:
    """Non-ASCII characters outside the scripts and the style become character references. The JSON, the JS and
    the CSS are ASCII already (character references would not be decoded there)."""
    return document.encode("ascii", "xmlcharrefreplace").decode("ascii")


def _write_pair_name_ok(pair: str) -> None:
    if not pair or pair.startswith(".") or "/" in pair or "\\" in pair or pair == "index":
        raise BenchError(f"Cannot write a report named {pair!r}: a pair name is a plain file name and not 'index'.")


def _natural_width(image) -> int | None:
    """An SVG's width in CSS px from its root element (matplotlib writes ``width="432pt"``), or None."""
    try:
        with open(image, "rb") as f:
            head = f.read(4096).decode("utf-8", "replace")
    except OSError:
        return None
    m = re.search(r'<svg\b[^>]*?\swidth="([0-9.]+)\s*(pt|px)?"', head)
    if not m:
        return None
    width = float(m.group(1)) * (4 / 3 if m.group(2) == "pt" else 1)
    return int(round(width)) if 50 <= width <= 10000 else None


def plots_html(plots: list[dict], out_dir: Path, slug: str) -> str:
    if not plots:
        return ""
    figures = []
    taken: set[str] = set()
    for plot in plots:
        name = str(plot.get("name", ""))
        title, caption = str(plot.get("title") or name), str(plot.get("caption") or "")
        svg, png = plot.get("svg"), plot.get("png")
        image = svg or png
        width = _natural_width(svg) if svg else None
        size = f' style="flex-basis: {width + 20}px"' if width else ""  # wide plots get a row of their own
        cap = f' style="max-width: {width}px"' if width else ""  # never scaled up past the natural size
        img = f'<img src="{_e(_href(image, out_dir))}" alt="{_e(title)}"{cap}>' if image else ""
        if png:
            img = f'<a href="{_e(_href(png, out_dir))}">{img}</a>'
            caption_link = f' <a class="png" href="{_e(_href(png, out_dir))}">PNG</a>'
        else:
            caption_link = ""
        figures.append(f'<figure class="plot" id="plot-{slug}-{_slug(name, taken)}" data-plot="{_e(name)}"{size}>{img}'
                       f"<figcaption><strong>{_e(title)}</strong> {_e(caption)}{caption_link}</figcaption></figure>")
    return f'<h3>Plots</h3><div class="plots" id="plots-{slug}">' + "".join(figures) + "</div>"


def _legend() -> str:
    items = "".join(f"<dt>{_e(label)}</dt><dd>{_e(METRIC_NOTES[name])}.</dd>" for name, label, _ in METRICS
                    if name in METRIC_NOTES)
    return ("<footer><h3>Metrics</h3><dl>" + items + "</dl><p>Offline metrics on held-out preference rows; each "
            "value \u00b1 one standard error over the n rows in its column header. Teacher tokens count the teacher "
            "forward passes of the cached signals a method used (shared between methods). Click a column header to "
            "sort; click again to reverse. Generated by <code>bench leaderboard</code> from "
            "<code>results/</code> alone.</p></footer>")


def _page(title: str, body: str, data: dict | None = None) -> str:
    scripts = ""
    if data is not None:
        scripts += f'<script type="application/json" id="answers-data">{_json_for_script(data)}</script>\n'
    scripts += f"<script>{JS}</script>\n"
    document = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
                f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n{scripts}</body>\n</html>\n")
    return _ascii(document)


def _extra_ids(tables: list[dict], runs: list[str], slugs: dict[str, str], taken: set[str]) -> tuple[dict, list]:
    """Where each extra table goes and its element id: ``{run: [(id, model)]}`` for the run scopes, and
    ``[(scope, slug, [(id, model)])]`` for the others, in the order first given. Ids are ``<id>-<scope slug>``,
    made unique against each other and the page's fixed ids."""
    ids = {"top", "cap-note", "answer-problems", "answers-data"}
    ids |= {f"{kind}-{slug}" for slug in slugs.values()
            for kind in ("run", "metrics", "benchmarks", "footnotes", "plots", "viewer")}
    by_run: dict[str, list] = {}
    others: dict[str, tuple] = {}
    run_set = set(runs)
    for model in tables:
        scope = str(model.get("scope", ""))
        if scope in run_set:
            slug, place = slugs[scope], by_run.setdefault(scope, [])
        else:
            if scope not in others:
                others[scope] = (_slug(scope, taken), [])
                ids.add(f"scope-{others[scope][0]}")
            slug, place = others[scope][0], others[scope][1]
        table_id = _slug(f"{_class_token(model.get('id'))}-{slug}", ids)
        place.append((table_id, model))
    return by_run, [(scope, slug, place) for scope, (slug, place) in others.items()]


def render_report(pair: str, records: list[dict], plots: dict[str, list[dict]], out_dir: Path,
                  description: str = "", tables: list[dict] | None = None) -> Path:
    """Writes ``out_dir/<pair>.html`` (static; opens from disk with ``file://``; no network and nothing external
    but the plot images, referred to relative to the page) and returns its path. ``records`` are
    ``harness.leaderboard.load_records`` rows (those of other pairs are left out); ``plots`` maps a run to its
    ``{name, title, caption, png, svg}`` plots, paths inside ``out_dir``. ``tables`` are table models the
    leaderboard code formatted (``{scope, section, id, title, intro, columns: [{label, numeric}], rows: [{row,
    kind, cells: [{text, value, best}]}], notes}``): one scoped to a run of the pair goes into that run's section
    after the benchmark table; the others get a section per scope (headed by ``section``) after all the runs, in
    the order given."""
    _write_pair_name_ok(pair)
    out_dir = Path(out_dir)
    records = [r for r in records if r.get("pair", {}).get("name") == pair]
    df = frame(records)
    runs = sorted((set() if df.empty else set(df["run"])) | {run for run, some in (plots or {}).items() if some})
    taken: set[str] = set()
    slugs = {run: _slug(run, taken) for run in runs}
    extra_by_run, extra_scopes = _extra_ids(list(tables or []), runs, slugs, taken)
    caps, problems = _Caps(), []
    sections, data = [], {"runs": {}}
    for run in runs:
        slug = slugs[run]
        part = df[df["run"] == run].reset_index(drop=True) if not df.empty else df
        out = [f'<section class="run" id="run-{slug}" data-run="{_e(run)}">', f"<h2>Run <code>{_e(run)}</code></h2>"]
        if not part.empty:
            budget, seed = part["budget"].iloc[0], part["seed"].iloc[0]
            methods = sorted(part.loc[part["kind"] == "method", "row"])
            meta = f"budget <code>{_e(budget)}</code>, seed {_e(seed)}, {len(part)} rows"
            if methods:
                meta += (f"; reproduce: <code>bench run --methods {_e(','.join(methods))} --pair {_e(pair)} "
                         f"--budget {_e(budget)} --seed {_e(seed)} --data-dir ../shared</code>")
            out.append(f'<p class="run-meta">{meta}</p>')
            out.append("<h3>Offline metrics and compute</h3>")
            out.append(metrics_table(run_table(part, run), slug))
            out.append("<h3>Benchmarks</h3>")
            out.append(benchmark_table(benchmark_model(part, records, run), slug))
        out += [extra_table(model, table_id) for table_id, model in extra_by_run.get(run, [])]
        out.append(plots_html((plots or {}).get(run, []), out_dir, slug))
        if not part.empty:
            benches = _viewer_data(run, part, records, caps, problems)
            if benches:
                data["runs"][run] = {"benchmarks": benches}
            out.append(viewer_html(slug, run, bool(benches)))
        out.append("</section>")
        sections.append("\n".join(x for x in out if x))
    for scope, slug, models in extra_scopes:
        heading = next((m["section"] for _, m in models if m.get("section")), scope)
        sections.append("\n".join([f'<section class="scope" id="scope-{slug}" data-scope="{_e(scope)}">',
                                   f"<h2>{_inline(heading)}</h2>"]
                                  + [extra_table(model, table_id) for table_id, model in models] + ["</section>"]))
    head = [f'<header id="top"><p class="up"><a href="index.html">\u2190 all pairs</a></p>'
            f"<h1>Report: {_e(pair)}</h1>"]
    if description:
        head.append(f'<p class="description">{_e(description)}</p>')
    if len(runs) > 1:
        head.append('<nav class="runs">Runs: ' + "".join(f'<a href="#run-{slugs[r]}">{_e(r)}</a>' for r in runs)
                    + "</nav>")
    if not runs:
        head.append('<p class="empty">No records for this pair.</p>')
    if caps.cut:
        head.append(f'<p class="warning" id="cap-note">{caps.cut} text(s) longer than {viewer.MAX_TEXT_CHARS:,} characters '
                    f"are cut in the answer viewer ({caps.chars:,} characters left out, each cut marked where it "
                    "happens); the full texts are in each row's <code>benchmarks/*_judgments.jsonl</code>.</p>")
    if problems:
        head.append('<div class="warning" id="answer-problems"><p>Some judgments could not be read; their answers '
                    "are not in the viewer:</p><ul>" + "".join(f"<li>{_e(p)}</li>" for p in problems)
                    + "</ul></div>")
    head.append("</header>")
    body = "\n".join(head + sections + [_legend()])
    path = out_dir / f"{pair}.html"
    write_text_atomic(path, _page(f"Report: {pair}", body, data if data["runs"] else None))
    return path


def render_index(pairs: list[str], summary: pd.DataFrame | None, out_dir: Path) -> Path:
    """Writes ``out_dir/index.html``: a link to each pair's report and, when given, the cross-pair summary table
    (one row per method; its columns rendered as they are, sortable)."""
    out_dir = Path(out_dir)
    seen = list(dict.fromkeys(pairs))
    for pair in seen:
        _write_pair_name_ok(pair)
    links = "".join(f'<li><a class="pair-link" data-pair="{_e(p)}" href="{_e(urllib.parse.quote(p + ".html"))}">'
                    f"{_e(p)}</a></li>" for p in seen)
    body = ['<header id="top"><h1>Preference-distillation benchmark</h1></header>', "<h2>Pairs</h2>",
            f'<ul class="pairs" id="pairs">{links}</ul>' if seen else '<p class="empty">No pairs.</p>']
    if summary is not None:
        body += ["<h2>Summary across pairs</h2>",
                 summary_table(summary) if len(summary.columns) else '<p class="empty">Empty summary.</p>']
    path = out_dir / "index.html"
    write_text_atomic(path, _page("Preference-distillation benchmark", "\n".join(body)))
    return path
