"""Static HTML reports from run records: ``<out>/<pair>.html`` per pair and ``<out>/index.html``.

A report opens from disk (``file://``) with no server and no network: CSS and JS are inline, the only other
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

import html
import json
import math
import os
import re
import tempfile
import urllib.parse
import uuid
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from harness.errors import BenchError
from harness.files import write_text_atomic
from harness.leaderboard import (
    BENCHMARK_ORDER,
    EMPTY,
    METRICS,
    benchmark_columns,
    best_of,
    finite,
    fmt_compute,
    fmt_interval,
    fmt_value,
    frame,
    variant,
)

CHROMIUM = os.environ.get("BENCH_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("BENCH_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")
MAX_SCREENSHOT_HEIGHT = 16000  # px; Chromium's texture limit is about 16k

MAX_TEXT_CHARS = 20000  # per question, answer, rationale or reference answer in the viewer; cuts are announced

BENCHMARK_NAMES = {"mt_bench": "MT-Bench", "alpaca_eval_2": "AlpacaEval 2", "arena_hard_v0.1": "Arena-Hard v0.1",
                   "rm_winrate": "RM win rate", "lm_eval": "lm-eval"}
SCORE_NOTES = {
    "mt_bench": "Score: the judge's rating (1-10), mean over the question's turns; E[rating]: the expected rating "
                "under the judge's verdict probabilities (constrained verdicts only).",
    "alpaca_eval_2": "Score: (preference - 1) x 100; 100 = the model's answer preferred, 0 = the reference's.",
    "arena_hard_v0.1": "Score: share (%) of the question's weighted battles won (a tie counts half); the outcomes "
                       "are the weighted battles, a strong verdict counting three times.",
    "rm_winrate": "Score: 100 when the reward model prefers the row's answer to the reference row's, 0 when not.",
}
COMPUTE = [  # frame column, header
    ("optimizer_steps", "steps"),
    ("student_tokens_trained", "student tokens"),
    ("teacher_forward_tokens", "teacher tokens"),
    ("reference_forward_tokens", "reference tokens"),
    ("generated_tokens", "generated tokens"),
    ("wall_clock_s", "train s"),
    ("flops_estimate", "TFLOP (est.)"),
]
METRIC_NOTES = {
    "pref_acc": "share of held-out pairs where the model gives the chosen response a higher length-normalised "
                "log-probability than the rejected one",
    "pref_margin": "mean difference of those length-normalised log-probabilities (nats/token)",
    "nll_chosen": "token-mean negative log-likelihood of the chosen responses",
    "kl_teacher": "token-mean KL(teacher || model) on the chosen responses between top-k + rest-bucket "
                  "coarsenings (a lower bound on the full KL)",
    "rouge_l": "ROUGE-L F1 x100 of greedy answers against the chosen responses",
}


# ---------------------------------------------------------------- small helpers


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _sort_value(value) -> str:
    v = finite(value)
    if v is None:
        return ""
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


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


# ---------------------------------------------------------------- tables


def _th(label_html: str, key: str, numeric: bool, title: str = "") -> str:
    t = f' title="{_e(title)}"' if title else ""
    kind = "num" if numeric else "text"
    return (f'<th scope="col" data-key="{_e(key)}" data-type="{kind}" tabindex="0" aria-sort="none"{t}>'
            f"{label_html}</th>")


def _td(text: str, key: str, value, best: bool = False, numeric: bool = True) -> str:
    sort = _sort_value(value) if numeric else str(value)
    cls = ' class="best"' if best else "" if numeric else ' class="text"'
    body = _value_html(text) if numeric else _e(text)
    body = f"<strong>{body}</strong>" if best else body
    return f'<td data-key="{_e(key)}" data-value="{_e(sort)}"{cls}>{body}</td>'


def _value_html(text: str) -> str:
    """"v ± se" or "v [lo, hi]" with the uncertainty in a quieter span."""
    for sep in (" \u00b1 ", " ["):
        if sep in text:
            value, rest = text.split(sep, 1)
            return f'{_e(value)}<span class="se">{_e(sep + rest)}</span>'
    return _e(text)


def _row_head(row: str, kind: str) -> str:
    badge = ' <span class="badge">reference</span>' if kind == "reference" else ""
    return f'<th scope="row" data-key="row" data-value="{_e(row)}">{_e(row)}{badge}</th>'


def _tr(row: str, kind: str, cells: list[str]) -> str:
    cls = "reference" if kind == "reference" else "method"
    return f'<tr data-row="{_e(row)}" data-kind="{_e(kind)}" class="{cls}">{_row_head(row, kind)}{"".join(cells)}</tr>'


def _glue(label: str) -> str:
    """A header label whose trailing arrow never wraps onto a line of its own."""
    return re.sub(r" ([\u2191\u2193])$", "\u00a0\\1", label)


def _ns(part: pd.DataFrame, column: str) -> str:
    ns = sorted({int(v) for v in part[column] if finite(v) is not None})
    return "/".join(map(str, ns)) if ns else "\u2013"


def metrics_table(part: pd.DataFrame, slug: str) -> str:
    """The offline metrics (value +- se, best trained method per column in bold) and the compute columns."""
    trained = part[part["kind"] == "method"]
    best = {}
    for name, _, higher in METRICS:
        values = [v for v in map(finite, trained[name]) if v is not None]
        best[name] = best_of(values, higher)
    head = [_th("model", "row", False)]
    for name, label, higher in METRICS:
        head.append(_th(f'{_e(_glue(label))}<span class="n">n={_e(_ns(part, name + "_n"))}</span>', name, True,
                        f"{METRIC_NOTES.get(name, name)}; {'higher' if higher else 'lower'} is better; "
                        "value \u00b1 one standard error"))
    for key, label in COMPUTE:
        head.append(_th(_e(label), key, True, key))
    body = []
    for _, r in part.iterrows():
        cells = []
        for name, _, _ in METRICS:
            is_best = r["kind"] == "method" and best[name] is not None and finite(r[name]) == best[name]
            cells.append(_td(fmt_value(r[name], r[f"{name}_se"]), name, r[name], is_best))
        for key, _ in COMPUTE:
            value = r[key] if key in r else None
            cells.append(_td(fmt_compute(key, value), key, value))
        body.append(_tr(r["row"], r["kind"], cells))
    return (f'<div class="table-scroll"><table class="sortable metrics" id="metrics-{slug}">'
            f"<thead><tr>{''.join(head)}</tr></thead><tbody>\n" + "\n".join(body) + "\n</tbody></table></div>")


def benchmark_table(part: pd.DataFrame, records: list[dict], slug: str) -> str:
    """One column per benchmark metric and variant, a footnote per distinct setting; empty when nothing was scored."""
    columns, cells = benchmark_columns(part, records)
    if not columns:
        return '<p class="empty">No benchmark results for this run (<code>bench eval</code> writes them).</p>'
    notes: dict[str, int] = {}
    head = [_th("model", "row", False)]
    for i, col in enumerate(columns):
        note = notes.setdefault(col["description"], len(notes) + 1) if col["description"] else None
        ns = sorted({c["n"] for (k, _), c in cells.items() if k == col["key"] and c.get("n") is not None})
        mark = f'<sup><a href="#note-{slug}-{note}">[{note}]</a></sup>' if note else ""
        head.append(_th(f'{_e(col["label"])}{mark}<span class="n">n={_e("/".join(map(str, ns)) or "-")}</span>',
                        f"b{i}", True, col["description"]))
    methods = set(part.loc[part["kind"] == "method", "row"])
    best = {}
    for col in columns:
        values = [finite(c.get("value")) for (k, row), c in cells.items() if k == col["key"] and row in methods]
        values = [v for v in values if v is not None]
        best[col["key"]] = best_of(values)
    body = []
    for _, r in part.iterrows():
        row_cells = [cells.get((col["key"], r["row"])) for col in columns]
        if not any(row_cells):
            continue
        out = []
        for i, (col, cell) in enumerate(zip(columns, row_cells)):
            value = finite(cell.get("value")) if cell else None
            is_best = r["kind"] == "method" and value is not None and value == best.get(col["key"])
            out.append(_td(fmt_interval(cell) if cell else "\u2013", f"b{i}", value, is_best))
        body.append(_tr(r["row"], r["kind"], out))
    foot = "".join(f'<li id="note-{slug}-{n}" value="{n}">{_e(d)}.</li>' for d, n in notes.items())
    return (f'<div class="table-scroll"><table class="sortable benchmarks" id="benchmarks-{slug}">'
            f"<thead><tr>{''.join(head)}</tr></thead><tbody>\n" + "\n".join(body) + "\n</tbody></table></div>"
            + (f'<ol class="footnotes" id="footnotes-{slug}">{foot}</ol>' if foot else "")
            + '<p class="note">Scores \u00b1 one standard error, or [95% bootstrap interval] for Arena-Hard; n is '
              "the number of questions (MT-Bench: judgments, both turns) behind each score. <strong>Bold</strong>: "
              "best trained method per column (reference rows excluded; none when all trained methods tie)."
              "</p>")


def _unstar(text) -> str:
    """Markdown's backslash-escaped asterisk (``\\*``, a significance mark) as a plain ``*``."""
    return str(text).replace("\\*", "*")


def _inline(text) -> str:
    """Escaped text with `backtick-quoted` parts as ``<code>``; an unmatched backtick stays literal."""
    parts = _unstar(text).split("`")
    if len(parts) % 2 == 0:
        parts[-2:] = [parts[-2] + "`" + parts[-1]]
    return "".join(f"<code>{_e(p)}</code>" if i % 2 else _e(p) for i, p in enumerate(parts))


def _class_token(text) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", str(text)).strip("-") or "table"


def extra_table(model: dict, table_id: str) -> str:
    """A table the leaderboard code formatted (``render_report``'s ``tables``), as sortable as the others: its
    title, intro, table and notes. Nothing is recomputed; every string is escaped, ``\\*`` shows as ``*``."""
    columns = list(model.get("columns") or [])
    head = [_th("model", "row", False)]
    for i, col in enumerate(columns):
        head.append(_th(_e(_glue(_unstar(col.get("label", "")))), f"c{i}", bool(col.get("numeric"))))
    body = []
    for r in model.get("rows") or []:
        cells = list(r.get("cells") or [])
        out = []
        for i, col in enumerate(columns):
            cell = cells[i] if i < len(cells) and cells[i] else {}
            text = _unstar("\u2013" if cell.get("text") is None else cell["text"])
            numeric = bool(col.get("numeric"))
            out.append(_td(text, f"c{i}", cell.get("value") if numeric else text, bool(cell.get("best")), numeric))
        body.append(_tr(_unstar(r.get("row", "")), str(r.get("kind", "method")), out))
    parts = [f'<h3>{_inline(model.get("title") or "")}</h3>']
    if not body or not columns:  # a table with nothing in it says so in words (harness/leaderboard.py EMPTY)
        return "\n".join(parts + [f'<p class="note table-empty">{_e(_unstar(model.get("empty") or EMPTY))}</p>'])
    if model.get("intro"):
        parts.append(f'<p class="note table-intro">{_e(_unstar(model["intro"]))}</p>')
    parts.append(f'<div class="table-scroll"><table class="sortable {_e(_class_token(model.get("id")))}" '
                 f'id="{_e(table_id)}"><thead><tr>{"".join(head)}</tr></thead><tbody>\n' + "\n".join(body)
                 + "\n</tbody></table></div>")
    notes = [str(n) for n in model.get("notes") or []]
    if notes:
        parts.append(f'<div class="table-notes" id="notes-{_e(table_id)}">'
                     + "".join(f'<p class="note">{_e(_unstar(n))}</p>' for n in notes) + "</div>")
    return "\n".join(parts)


# ---------------------------------------------------------------- plots


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


# ---------------------------------------------------------------- answer viewer data


class _Caps:
    def __init__(self):
        self.cut = 0
        self.chars = 0

    def text(self, value):
        if value is None:
            return None
        value = str(value)
        if len(value) <= MAX_TEXT_CHARS:
            return value
        self.cut += 1
        self.chars += len(value) - MAX_TEXT_CHARS
        return value[:MAX_TEXT_CHARS] + f"\n[\u2026 cut here: {len(value) - MAX_TEXT_CHARS:,} more characters]"


def _viewer_data(run: str, part: pd.DataFrame, records: list[dict], caps: _Caps, problems: list[str]) -> list[dict]:
    """Per benchmark (and variant) of the run: its questions in order, each with every row's judged item."""
    from harness.questions import PAIRWISE, judged_items  # written alongside; imported when a report is made

    by_row = {rec["row"]: rec for rec in records if rec["run"] == run}
    benchmarks: dict[tuple, dict] = {}
    for row, kind in zip(part["row"], part["kind"]):
        rec = by_row.get(row)
        if rec is None:
            continue
        for result in rec.get("_benchmarks", []):
            name = result.get("benchmark", "?")
            vkey, setting = variant(result)
            try:
                items = judged_items(result, Path(rec["_dir"]))
            except BenchError as e:
                problems.append(f"{row}, {result.get('_file', name)}: {e}")
                continue
            if not items:
                continue
            bench = benchmarks.setdefault((BENCHMARK_ORDER.get(name, 9), name, vkey), {
                "benchmark": name, "variant": vkey, "setting": setting, "rows": [], "questions": {},
                "score_note": SCORE_NOTES.get(name, ""),
                "reference": (str(result.get(PAIRWISE[name]) or "") if name in PAIRWISE else "")})
            bench["rows"].append({"row": row, "kind": kind})
            for item in items:
                qid = str(item.get("id"))
                q = bench["questions"].setdefault(qid, {"id": qid, "question": None, "category": None,
                                                        "reference_answer": None, "answers": {}})
                if row in q["answers"]:  # the same id twice in one row's judgments: keep both, visibly
                    n = 2
                    while f"{qid} (duplicate {n})" in bench["questions"]:
                        n += 1
                    qid = f"{qid} (duplicate {n})"
                    q = bench["questions"].setdefault(qid, {"id": qid, "question": None, "category": None,
                                                            "reference_answer": None, "answers": {}})
                entry = {"answer": caps.text(item.get("answer")), "rationale": caps.text(item.get("rationale")),
                         "score": finite(item.get("score")), "outcomes": [str(o) for o in item.get("outcomes") or []]}
                if finite(item.get("expected_score")) is not None:
                    entry["expected_score"] = finite(item["expected_score"])
                for field in ("question", "category", "reference_answer"):
                    value = item.get(field)
                    if value is None:
                        continue
                    value = caps.text(value) if field != "category" else str(value)
                    if q[field] is None:
                        q[field] = value
                    elif q[field] != value:  # shown once per question; a row that differs shows its own
                        entry[field] = value
                q["answers"][row] = entry
    out = []
    for key in sorted(benchmarks):
        bench = benchmarks[key]
        same = sum(1 for k in benchmarks if k[1] == key[1])
        label = BENCHMARK_NAMES.get(bench["benchmark"], bench["benchmark"])
        if same > 1:
            label += f" (variant {bench['variant'][:6]})"
        out.append({**bench, "key": f"{bench['benchmark']}/{bench['variant']}", "label": label,
                    "questions": list(bench["questions"].values())})
    return out


def viewer_html(slug: str, run: str, has_data: bool) -> str:
    if not has_data:
        return ('<h3>Answers</h3><p class="empty">No judged answers for this run (the answer viewer reads '
                "<code>benchmarks/*_judgments.jsonl</code> beside each row).</p>")
    return (f'<h3>Answers</h3><div class="viewer" id="viewer-{slug}" data-run="{_e(run)}">'
            '<div class="viewer-controls">'
            f'<label>Benchmark <select class="viewer-benchmark" id="viewer-{slug}-benchmark"></select></label>'
            f'<label>Question <select class="viewer-question" id="viewer-{slug}-question"></select></label>'
            "</div>"
            '<p class="viewer-setting"></p>'
            '<div class="viewer-prompt"><div class="label">Question</div><pre class="question-text"></pre></div>'
            '<details class="viewer-reference" open><summary>Reference answer</summary>'
            '<pre class="reference-answer"></pre></details>'
            '<div class="cards"></div>'
            '<noscript><p class="empty">The answer viewer needs JavaScript.</p></noscript>'
            "</div>")


# ---------------------------------------------------------------- page


CSS = """
:root { --fg: #1d2330; --muted: #5b6475; --line: #d9dee7; --ref: #f3f1fa; --best: #e3f4e6; --accent: #2456a6; }
* { box-sizing: border-box; }
body { margin: 0; padding: 1.2rem 2rem 3rem; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto,
  "Helvetica Neue", Arial, sans-serif; color: var(--fg); background: #fff; max-width: 1800px; }
h1 { font-size: 1.6rem; margin: 0.2rem 0 0.4rem; }
h2 { font-size: 1.3rem; margin: 2rem 0 0.3rem; padding-top: 0.6rem; border-top: 2px solid var(--line); }
h3 { font-size: 1.05rem; margin: 1.4rem 0 0.5rem; }
a { color: var(--accent); }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; font-size: 0.9em;
  background: #f5f6f8; padding: 0.05em 0.3em; border-radius: 3px; }
.description, .note, .run-meta, .footnotes, .viewer-setting { color: var(--muted); }
.note, .footnotes { font-size: 0.88rem; }
.footnotes { margin: 0.4rem 0; padding-left: 1.6rem; }
nav.runs { margin: 0.6rem 0; } nav.runs a { margin-right: 1rem; }
.table-scroll { overflow-x: auto; max-width: 100%; border: 1px solid var(--line); border-radius: 4px; }
table.sortable { border-collapse: collapse; font-size: 0.88rem; font-variant-numeric: tabular-nums; }
table.sortable th, table.sortable td { padding: 0.3rem 0.5rem; border-bottom: 1px solid var(--line);
  white-space: nowrap; text-align: right; }
table.sortable thead th { background: #f5f6f8; cursor: pointer; user-select: none; vertical-align: bottom;
  font-weight: 600; white-space: normal; min-width: 3.5rem; }
table.sortable thead th:hover { background: #e9edf3; }
table.sortable thead th .n { display: block; font-weight: 400; color: var(--muted); font-size: 0.8rem; }
table.sortable thead th[aria-sort="ascending"]::after { content: " \\25B2"; font-size: 0.7rem; }
table.sortable thead th[aria-sort="descending"]::after { content: " \\25BC"; font-size: 0.7rem; }
table.sortable tr > :first-child { text-align: left; position: sticky; left: 0; background: #fff; z-index: 1; }
table.sortable thead th:first-child { background: #f5f6f8; z-index: 2; }
table.sortable td.text, table.sortable th[data-type="text"] { text-align: left; }
table.sortable tbody tr:hover td, table.sortable tbody tr:hover th { background: #f7f9fc; }
tr.reference td, tr.reference th { background: var(--ref); color: #4a4560; font-style: italic; }
td.best { background: var(--best); }
td .se { color: var(--muted); font-size: 0.85em; }
td.best .se { color: inherit; }
.badge { font-size: 0.7rem; font-style: normal; color: #5a4f8a; border: 1px solid #c9c1e8; border-radius: 8px;
  padding: 0 0.35rem; margin-left: 0.3rem; vertical-align: 1px; }
.plots { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }
figure.plot { margin: 0; border: 1px solid var(--line); border-radius: 4px; padding: 9px; flex: 0 1 480px;
  max-width: 100%; min-width: 0; }
figure.plot img { width: 100%; height: auto; display: block; }
figure.plot figcaption { font-size: 0.85rem; color: var(--muted); margin-top: 0.3rem; }
.viewer-controls { display: flex; flex-wrap: wrap; gap: 1rem; align-items: center; }
.viewer-controls label { font-weight: 600; }
.viewer-controls select { margin-left: 0.4rem; max-width: min(70vw, 760px); font: inherit; padding: 0.15rem; }
.viewer-setting { font-size: 0.85rem; margin: 0.4rem 0; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; font-family: ui-monospace, SFMono-Regular, Menlo,
  Consolas, "Liberation Mono", monospace; font-size: 0.82rem; line-height: 1.4; }
.viewer-prompt, .viewer-reference { background: #f7f8fa; border: 1px solid var(--line); border-radius: 4px;
  padding: 0.5rem 0.7rem; margin: 0.5rem 0; }
.viewer-prompt pre { max-height: 14rem; overflow: auto; }
.viewer-reference pre { max-height: 11rem; overflow: auto; }
.card-answer:empty::before, .card-rationale:empty::before { content: "(empty)"; color: var(--muted);
  font-style: italic; }
.viewer-prompt .label, .viewer-reference summary { font-weight: 600; font-size: 0.85rem; cursor: default; }
.viewer-reference summary { cursor: pointer; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 0.8rem; margin-top: 0.6rem; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 0.5rem 0.7rem; background: #fff;
  display: flex; flex-direction: column; gap: 0.35rem; min-width: 0; }
.card.reference { background: var(--ref); }
.card.missing { opacity: 0.6; }
.card-head { display: flex; justify-content: space-between; align-items: baseline; gap: 0.5rem; }
.card-row { font-weight: 700; }
.card-score { font-variant-numeric: tabular-nums; font-size: 0.85rem; color: var(--muted); text-align: right; }
.card .section { font-size: 0.75rem; text-transform: uppercase; letter-spacing: 0.04em; color: var(--muted); }
.card-answer { max-height: 16rem; overflow: auto; background: #fafbfc; border-radius: 3px; padding: 0.3rem; }
.card-rationale { max-height: 10rem; overflow: auto; color: #394152; }
.outcome { display: inline-block; font-size: 0.75rem; border-radius: 8px; padding: 0 0.4rem; margin-left: 0.25rem;
  font-variant-numeric: tabular-nums; }
.outcome.win { background: #d7f0dc; color: #1d5e2b; } .outcome.tie { background: #eceff3; color: #3d4452; }
.outcome.loss { background: #f7dcdc; color: #7a2222; }
.empty { color: var(--muted); font-style: italic; }
.warning { background: #fff6df; border: 1px solid #ecd08a; padding: 0.4rem 0.7rem; border-radius: 4px; }
footer { margin-top: 2.5rem; font-size: 0.85rem; color: var(--muted); border-top: 1px solid var(--line); }
footer dt { font-weight: 600; color: var(--fg); } footer dd { margin: 0 0 0.4rem 1rem; }
"""

JS = r"""
(function () {
  "use strict";
  function cellValue(row, idx) {
    var cell = row.children[idx];
    return cell ? cell.getAttribute("data-value") : null;
  }
  function sortBy(table, th) {
    var heads = Array.prototype.slice.call(th.parentNode.children);
    var idx = heads.indexOf(th);
    var asc = th.getAttribute("aria-sort") !== "ascending";
    heads.forEach(function (h) { h.setAttribute("aria-sort", "none"); });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var numeric = th.getAttribute("data-type") === "num";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows).map(function (r, i) { return [r, i]; });
    rows.sort(function (a, b) {
      var va = cellValue(a[0], idx), vb = cellValue(b[0], idx);
      var ma = va === null || va === "", mb = vb === null || vb === "";
      if (ma || mb) { return ma && mb ? a[1] - b[1] : (ma ? 1 : -1); }  /* missing values last, both ways */
      var c = numeric ? parseFloat(va) - parseFloat(vb) : va.localeCompare(vb);
      if (!asc) { c = -c; }
      return c || a[1] - b[1];
    });
    rows.forEach(function (p) { body.appendChild(p[0]); });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
      th.addEventListener("click", function (ev) {
        if (ev.target.closest && ev.target.closest("a")) { return; }
        sortBy(table, th);
      });
      th.addEventListener("keydown", function (ev) {
        if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); sortBy(table, th); }
      });
    });
  });

  var node = document.getElementById("answers-data");
  if (!node) { return; }
  var data = JSON.parse(node.textContent);
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = text; }
    return e;
  }
  function fmt(x) { return x === null || x === undefined ? "-" : x.toFixed(2); }
  function oneLine(s, n) {
    s = (s || "").replace(/\s+/g, " ").trim();
    return s.length > n ? s.slice(0, n) + "\u2026" : s;
  }
  Array.prototype.forEach.call(document.querySelectorAll(".viewer"), function (viewer) {
    var benches = (data.runs[viewer.getAttribute("data-run")] || {}).benchmarks || [];
    var bSel = viewer.querySelector(".viewer-benchmark"), qSel = viewer.querySelector(".viewer-question");
    var setting = viewer.querySelector(".viewer-setting"), prompt = viewer.querySelector(".question-text");
    var refBox = viewer.querySelector(".viewer-reference"), ref = viewer.querySelector(".reference-answer");
    var refSummary = refBox.querySelector("summary"), cards = viewer.querySelector(".cards");
    benches.forEach(function (b, i) {
      var o = el("option", null, b.label + " (" + b.questions.length + " questions)");
      o.value = b.key;
      bSel.appendChild(o);
    });
    function bench() { return benches[bSel.selectedIndex] || null; }
    function fillQuestions() {
      var b = bench();
      while (qSel.firstChild) { qSel.removeChild(qSel.firstChild); }
      if (!b) { return; }
      b.questions.forEach(function (q) {
        var text = q.id + (q.category ? " [" + q.category + "]" : "");
        text += " \u2014 " + (q.question ? oneLine(q.question, 80) : "(question text not recorded)");
        var o = el("option", null, text);
        o.value = q.id;
        qSel.appendChild(o);
      });
      while (setting.firstChild) { setting.removeChild(setting.firstChild); }
      [b.setting ? "Setting: " + b.setting + "." : "", b.score_note].forEach(function (s) {
        if (s) { setting.appendChild(el("span", null, s)); setting.appendChild(el("br")); }
      });
    }
    function card(row, kind, a) {
      var c = el("div", "card " + (kind === "reference" ? "reference" : "method"));
      c.setAttribute("data-row", row);
      var head = el("div", "card-head");
      head.appendChild(el("span", "card-row", row));
      var score = el("span", "card-score");
      if (a) {
        var parts = ["score " + fmt(a.score)];
        if (a.expected_score !== undefined) { parts.push("E[rating] " + fmt(a.expected_score)); }
        score.appendChild(document.createTextNode(parts.join(" \u00b7 ")));
        var counts = {}, order = [];
        (a.outcomes || []).forEach(function (o) {
          if (!(o in counts)) { counts[o] = 0; order.push(o); }
          counts[o] += 1;
        });
        var outs = el("span", "card-outcomes");
        order.forEach(function (o) {
          outs.appendChild(el("span", "outcome " + (/^(win|tie|loss)$/.test(o) ? o : "other"),
                              o + (counts[o] > 1 ? " \u00d7" + counts[o] : "")));
        });
        score.appendChild(outs);
      }
      head.appendChild(score);
      c.appendChild(head);
      if (!a) {
        c.className += " missing";
        c.appendChild(el("div", "empty", "not judged on this question"));
        return c;
      }
      if (a.question) { c.appendChild(el("div", "section", "question (this row)")); c.appendChild(el("pre", "card-question", a.question)); }
      c.appendChild(el("div", "section", "answer"));
      c.appendChild(el("pre", "card-answer", a.answer === null ? "(no answer recorded)" : a.answer));
      if (a.reference_answer) {
        c.appendChild(el("div", "section", "reference answer (this row)"));
        c.appendChild(el("pre", "card-reference", a.reference_answer));
      }
      c.appendChild(el("div", "section", "judge"));
      c.appendChild(el("pre", "card-rationale", a.rationale === null ? "(no rationale recorded)" : a.rationale));
      return c;
    }
    function show() {
      var b = bench();
      while (cards.firstChild) { cards.removeChild(cards.firstChild); }
      if (!b) { return; }
      var q = b.questions[qSel.selectedIndex];
      if (!q) { return; }
      prompt.textContent = q.question === null ? "(question text not recorded in the judgments)" : q.question;
      refBox.hidden = !q.reference_answer;
      refSummary.textContent = "Reference answer" + (b.reference ? " (" + b.reference + ")" : "");
      ref.textContent = q.reference_answer || "";
      b.rows.forEach(function (r) { cards.appendChild(card(r.row, r.kind, q.answers[r.row] || null)); });
    }
    bSel.addEventListener("change", function () { fillQuestions(); show(); });
    qSel.addEventListener("change", show);
    fillQuestions();
    show();
  });
})();
"""


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
            out.append(metrics_table(part, slug))
            out.append("<h3>Benchmarks</h3>")
            out.append(benchmark_table(part, records, slug))
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
        head.append(f'<p class="warning" id="cap-note">{caps.cut} text(s) longer than {MAX_TEXT_CHARS:,} characters '
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


# ---------------------------------------------------------------- index


def _fmt_generic(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value is pd.NaT:
        return "\u2013"
    if isinstance(value, bool):
        return str(value)
    v = finite(value)
    if v is None or isinstance(value, str):
        return str(value)
    if v.is_integer() and abs(v) < 1e15:
        return f"{int(v):,}"
    return f"{v:.3f}" if abs(v) < 1e6 else f"{v:.4g}"


def _numeric_column(series: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(series):
        return False
    if pd.api.types.is_numeric_dtype(series):
        return True
    values = [v for v in series if not (v is None or (isinstance(v, float) and math.isnan(v)))]
    return bool(values) and all(finite(v) is not None and not isinstance(v, str) for v in values)


def summary_table(summary: pd.DataFrame) -> str:
    """Any DataFrame as a sortable table: a named or non-default index becomes the first column; each row's
    ``data-row`` is its first column's text."""
    df = summary
    if df.index.name is not None or not isinstance(df.index, pd.RangeIndex):
        df = df.reset_index()
    columns = [str(c) for c in df.columns]
    numeric = [_numeric_column(df.iloc[:, i]) for i in range(len(columns))]
    head = "".join(_th(_e(c), f"c{i}", numeric[i], c) for i, c in enumerate(columns))
    body = []
    for values in df.itertuples(index=False, name=None):
        first = "" if not values else _fmt_generic(values[0])
        cells = "".join(_td(_fmt_generic(v), f"c{i}", v if numeric[i] else _fmt_generic(v), numeric=numeric[i])
                        for i, v in enumerate(values))
        body.append(f'<tr data-row="{_e(first)}">{cells}</tr>')
    return ('<div class="table-scroll"><table class="sortable summary" id="summary">'
            f"<thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(body) + "\n</tbody></table></div>")


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


# ---------------------------------------------------------------- browser


def browser_missing() -> str | None:
    """Why no headless Chromium can be started here, or None."""
    for path, what in ((CHROMIUM, "Chromium"), (CHROMEDRIVER, "chromedriver")):
        if not (Path(path).is_file() and os.access(path, os.X_OK)):
            return f"{what} is not installed at {path} (set BENCH_CHROMIUM / BENCH_CHROMEDRIVER to another path)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


@contextmanager
def chromium(width: int = 1400, height: int = 1000):
    """A headless Chromium driven by selenium, with a fresh profile; never downloads a driver."""
    why = browser_missing()
    if why:
        raise BenchError(f"Cannot start a headless browser: {why}.")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not go online
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="bench-chromium-", ignore_cleanup_errors=True) as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.add_argument(f"--window-size={int(width)},{int(height)}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console errors, for tests to read
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
        try:
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                   {"width": int(width), "height": int(height), "deviceScaleFactor": 1,
                                    "mobile": False})
            yield driver
        finally:
            driver.quit()


def screenshot(html: Path, png: Path, width: int = 1400, height: int = 1000) -> Path:
    """Opens the page in headless Chromium and saves a screenshot ``width`` px wide of the whole page, up to
    ``MAX_SCREENSHOT_HEIGHT`` px tall (never less than ``height``, the viewport the page is laid out in)."""
    html, png = Path(html), Path(png)
    with chromium(width, height) as driver:
        driver.get(html.resolve().as_uri())
        full = driver.execute_script("return Math.max(document.documentElement.scrollHeight, "
                                     "document.body ? document.body.scrollHeight : 0);")
        tall = max(int(height), min(int(full or 0), MAX_SCREENSHOT_HEIGHT))
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": int(width), "height": tall, "deviceScaleFactor": 1, "mobile": False})
        data = driver.get_screenshot_as_png()
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(f".{png.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, png)
    return png

