"""What a run writes per row: record.json (its layout: harness/schema.py), metrics, answers and the loss
curve; and the compute a row's training cost, its shared signals' included."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

import harness
from harness.files import write_json_atomic, write_text_atomic
from harness.schema import check_record
from harness.signal_api import parse_signal


def environment() -> dict:
    import accelerate
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "bench": harness.__version__, "platform": platform.platform(),
            "device": "cuda" if torch.cuda.is_available() else "cpu", "threads": torch.get_num_threads()}


def git_revision() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        # "dirty" only where the code that computes results differs from the revision (not docs or tests).
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "harness", "methods", "pyproject.toml"],
                               cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def compute_record(train_info: dict) -> dict:
    signals = train_info["signals"].values()
    counts_as = {s["name"]: parse_signal(s["name"]).counts_as for s in signals}

    def tokens(kind: str) -> int:
        return sum(s["forward_tokens"] for s in signals if counts_as[s["name"]] == kind)

    live_teacher = train_info.get("live_teacher_tokens", 0)
    # Teacher work: top-k forwards, its generated answers, its scoring of student samples (a signal that
    # involves several models, such as ADPA's, states its teacher tokens itself).
    cached_teacher = sum(s["teacher_tokens"] for s in signals if "teacher_tokens" in s) + tokens("teacher")
    generated = train_info.get("generated_tokens", 0) + sum(s.get("generated_tokens", 0) for s in signals)
    # 6N per trained token (forward + backward), 2N per forward-only or generated token; N = matmul parameters.
    flops = (6 * train_info["student_params"] * train_info["student_tokens"]
             + sum(s["flops"] for s in signals)
             + 2 * train_info.get("teacher_params", 0) * live_teacher
             + 2 * train_info["student_params"] * (train_info.get("generated_tokens", 0)
                                                  + train_info.get("student_forward_tokens", 0)))
    record = {
        "optimizer_steps": train_info["optimizer_steps"],
        "student_tokens_trained": train_info["student_tokens"],
        "teacher_forward_tokens": cached_teacher + live_teacher,
        "reference_forward_tokens": tokens("reference"),
        "generated_tokens": generated,
        "wall_clock_s": round(train_info["wall_clock_s"], 2),
        "flops_estimate": flops,
        "signals_shared": sorted(train_info["signals"]),
    }
    if "rows_trained" in train_info:  # only a method that narrows its rows (PAD's filters) records it
        record["rows_trained"] = train_info["rows_trained"]
    stages = {name: {"stage_key": s["stage_key"], "wall_clock_s": round(s["wall_clock_s"], 2)}
              for name, s in train_info["signals"].items() if "stage_key" in s}
    for name, s in train_info["signals"].items():  # ADPA's signal includes the (shared) teacher-DPO stage
        if s.get("teacher_dpo") and name in stages:
            stages[name]["teacher_dpo"] = {"stage_key": s["teacher_dpo"]["stage_key"],
                                           "wall_clock_s": round(s["teacher_dpo"]["wall_clock_s"], 2),
                                           "drift_kl_heldout": s["teacher_dpo"].get("drift_kl_heldout")}
    if stages:
        record["signal_stages"] = stages
    dep = train_info.get("starts_from")
    if dep:  # a method that continues another's student carries that training's cost too (ADPA+ = DCKD + ADPA)
        for field in ("optimizer_steps", "student_tokens_trained", "teacher_forward_tokens",
                      "reference_forward_tokens", "generated_tokens", "wall_clock_s", "flops_estimate"):
            record[field] = round(record[field] + dep["compute"][field], 2)
        record["starts_from"] = dep
    return record


def write_record(run_dir: Path, row: str, record: dict, evaluation: dict, loss_curve: list[dict] | None) -> None:
    folder = run_dir / row
    record = {**record, "metrics": evaluation["metrics"],
              "evaluation": {"wall_clock_s": round(evaluation["wall_clock_s"], 2),
                             "generated_tokens": evaluation["generated_tokens"], "stage_key": evaluation["key"]}}
    check_record(record, folder / "record.json")  # the layout results.load_records reads back
    write_json_atomic(folder / "record.json", record)
    write_json_atomic(folder / "metrics.json", evaluation["metrics"])
    for name in ("per_example.jsonl", "answers.jsonl"):
        write_text_atomic(folder / name, (evaluation["folder"] / name).read_text())
    if not loss_curve:  # this run trained no step: an earlier run's curve is not this row's
        (folder / "loss_curve.csv").unlink(missing_ok=True)
    else:
        keys = sorted({k for row_ in loss_curve for k in row_}, key=lambda k: (k != "step", k))
        lines = [",".join(keys)] + [",".join(_fmt(r.get(k)) for k in keys) for r in loss_curve]
        write_text_atomic(folder / "loss_curve.csv", "\n".join(lines) + "\n")


def _fmt(v) -> str:
    if v is None:
        return ""
    return f"{v:.6g}" if isinstance(v, float) else str(v)
