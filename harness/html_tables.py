"""The report's HTML tables: the run, benchmark and any other table model (harness/tables.py) and any
DataFrame, sortable by clicking a column header. Every string is escaped; nothing is recomputed here."""

from __future__ import annotations

import html
import math
import re

import pandas as pd

from harness.tables import EMPTY, finite

METRIC_NOTES = {
    "pref_acc": "share of held-out pairs where the model gives the chosen response a higher length-normalised "
                "log-probability than the rejected one",
    "pref_margin": "mean difference of those length-normalised log-probabilities (nats/token)",
    "nll_chosen": "token-mean negative log-likelihood of the chosen responses",
    "kl_teacher": "token-mean KL(teacher || model) on the chosen responses between top-k + rest-bucket "
                  "coarsenings (a lower bound on the full KL)",
    "rouge_l": "ROUGE-L F1 x100 of greedy answers against the chosen responses",
}


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _sort_value(value) -> str:
    v = finite(value)
    if v is None:
        return ""
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


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


def metrics_table(model: dict, slug: str) -> str:
    """The run table (harness.tables.run_table): offline metrics with their n and tooltip, then compute."""
    head = [_th("model", "row", False)]
    for col in model["columns"]:
        if col["n"] is None:
            head.append(_th(_e(col["label"]), col["key"], True, col["key"]))
            continue
        head.append(_th(f'{_e(_glue(col["label"]))}<span class="n">n={_e(col["n"])}</span>', col["key"], True,
                        f"{METRIC_NOTES.get(col['key'], col['key'])}; {'higher' if col['higher'] else 'lower'} is "
                        "better; value \u00b1 one standard error"))
    body = [_tr(r["row"], r["kind"], [_td(c["text"], col["key"], c["value"], c["best"])
                                      for col, c in zip(model["columns"], r["cells"])]) for r in model["rows"]]
    return (f'<div class="table-scroll"><table class="sortable metrics" id="metrics-{slug}">'
            f"<thead><tr>{''.join(head)}</tr></thead><tbody>\n" + "\n".join(body) + "\n</tbody></table></div>")


def benchmark_table(model: dict, slug: str) -> str:
    """The benchmark table (harness.tables.benchmark_table), a footnote per distinct setting; a sentence when
    nothing was scored."""
    columns = model["columns"]
    if not columns:
        return '<p class="empty">No benchmark results for this run (<code>bench eval</code> writes them).</p>'
    notes: dict[str, int] = {}
    head = [_th("model", "row", False)]
    for i, col in enumerate(columns):
        note = notes.setdefault(col["description"], len(notes) + 1) if col["description"] else None
        mark = f'<sup><a href="#note-{slug}-{note}">[{note}]</a></sup>' if note else ""
        ns = "/".join(map(str, col["ns"])) or "-"
        head.append(_th(f'{_e(col["label"])}{mark}<span class="n">n={_e(ns)}</span>', f"b{i}", True,
                        col["description"]))
    body = [_tr(r["row"], r["kind"], [_td(c["text"], f"b{i}", c["value"], c["best"]) for i, c in enumerate(r["cells"])])
            for r in model["rows"]]
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
