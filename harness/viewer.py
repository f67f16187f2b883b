"""The data behind the report's answer viewer: per benchmark of a run, its questions in order, each with every
row's answer, the judge's rationale and the score."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.benchmark import get_benchmark, variant
from harness.errors import BenchError
from harness.html_tables import _e
from harness.tables import finite

MAX_TEXT_CHARS = 20000  # per question, answer, rationale or reference answer in the viewer; cuts are announced


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
    from harness.questions import judged_items

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
            spec = get_benchmark(name)
            bench = benchmarks.setdefault((spec.order, name, vkey), {
                "benchmark": name, "variant": vkey, "setting": setting, "rows": [], "questions": {},
                "score_note": spec.score_note,
                "reference": (str(result.get(spec.pairwise) or "") if spec.pairwise else "")})
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
        label = get_benchmark(bench["benchmark"]).name
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
