"""Run records as the leaderboard reads them: ``results/<pair>/<run>/<row>/record.json`` and what sits beside it,
and the one-line-per-row frame every table starts from."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from harness.budgets import comparable
from harness.cache import stable_hash
from harness.errors import BenchError
from harness.schema import check_record

# name, label, higher is better
METRICS = [
    ("pref_acc", "pref. acc. ↑", True),
    ("pref_margin", "margin (nats/tok) ↑", True),
    ("nll_chosen", "NLL chosen ↓", False),
    ("kl_teacher", "KL to teacher ↓", False),
    ("rouge_l", "ROUGE-L ↑", True),
]
REFERENCE_ORDER = {"teacher": 0, "student-init": 1}
# frame column, header: the compute a row used, in every rendering of the run table
COMPUTE = [
    ("optimizer_steps", "steps"),
    ("student_tokens_trained", "student tokens"),
    ("teacher_forward_tokens", "teacher tokens"),
    ("reference_forward_tokens", "reference tokens"),
    ("generated_tokens", "generated tokens"),
    ("wall_clock_s", "train s"),
    ("flops_estimate", "TFLOP (est.)"),
]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BenchError(f"{path} is not valid JSON ({e.msg}); re-run the command that wrote it.") from None


def load_records(results_dir: Path) -> list[dict]:
    """Run records, each with its row folder under ``_dir`` and the benchmark results found beside it
    (``benchmarks/*.json``, each with its file name under ``_file``) under ``_benchmarks``."""
    records = []
    for path in sorted(Path(results_dir).glob("*/*/*/record.json")):
        rec = dict(check_record(_read_json(path), path))
        rec["_dir"] = str(path.parent)
        rec["_benchmarks"] = [{**_read_json(p), "_file": p.name}
                              for p in sorted((path.parent / "benchmarks").glob("*.json"))]
        records.append(rec)
    return records


def frame(records: list[dict]) -> pd.DataFrame:
    rows = []
    for rec in records:
        row = {"pair": rec["pair"]["name"], "run": rec["run"], "budget": rec["budget"]["name"], "seed": rec["seed"],
               "row": rec["row"], "kind": rec["kind"]}
        for name, _, _ in METRICS:
            m = rec["metrics"].get(name)
            row[name] = m["value"] if m else None
            row[f"{name}_se"] = m["se"] if m else None
            row[f"{name}_n"] = m["n"] if m else None
        compute = rec.get("compute", {})
        for key, _ in COMPUTE:
            row[key] = compute.get(key)
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["_order"] = df["row"].map(lambda r: REFERENCE_ORDER.get(r, 2))
    return df.sort_values(["pair", "run", "_order", "row"]).drop(columns="_order").reset_index(drop=True)


def seed_groups(records: list[dict]) -> list[list[dict]]:
    """Runs of one pair that differ only in their seed (same budget otherwise), when there are at least two."""
    groups: dict[str, dict[str, list[dict]]] = {}
    for rec in records:
        groups.setdefault(stable_hash(comparable(rec.get("budget") or {})), {}).setdefault(rec["run"], []).append(rec)
    out = []
    for runs in groups.values():
        seeds = {recs[0]["seed"] for recs in runs.values()}
        if len(runs) >= 2 and len(seeds) == len(runs):
            out.append([r for run in sorted(runs) for r in runs[run]])
    return sorted(out, key=lambda g: (g[0]["budget"]["name"], g[0]["run"]))
