"""Which cached stages the methods of one run shared, and the wall-clock that sharing saved.

Reads results/<pair>/<run>/*/record.json only (no model is loaded). A stage used by k methods was computed once;
without sharing it would have been computed k times, so it saved (k - 1) x its wall-clock.

    python perf/stage_sharing.py --pair smollm2-135m --run smoke-seed0
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def stages_of(record: dict) -> list[tuple[str, str, float]]:
    """(stage kind, stage key, wall-clock s) of every cached stage a method's training consumed."""
    compute = record["compute"]
    out = []
    for name, stage in compute.get("signal_stages", {}).items():
        out.append((f"signal {name}", stage["stage_key"], stage["wall_clock_s"]))
        if "teacher_dpo" in stage:
            out.append(("teacher DPO", stage["teacher_dpo"]["stage_key"], stage["teacher_dpo"]["wall_clock_s"]))
    dep = compute.get("starts_from")
    if dep:  # the other method's training, which this one continues (and its signals)
        out.append((f"train {dep['method']}", dep["train_stage_key"], dep["compute"]["wall_clock_s"]))
        out += stages_of({"compute": dep["compute"]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument("--pair", default="smollm2-135m")
    parser.add_argument("--run", default="smoke-seed0")
    args = parser.parse_args()
    run_dir = args.results_dir / args.pair / args.run
    users: dict[tuple[str, str], set[str]] = defaultdict(set)
    seconds: dict[tuple[str, str], float] = {}
    for path in sorted(run_dir.glob("*/record.json")):
        record = json.loads(path.read_text())
        if record.get("kind") != "method":
            continue
        own = record["compute"]["wall_clock_s"] - record["compute"].get("starts_from", {}).get(
            "compute", {}).get("wall_clock_s", 0)
        for kind, key, wall in [(f"train {record['row']}", record["train_stage_key"], own), *stages_of(record)]:
            users[(kind, key)].add(record["row"])
            seconds[(kind, key)] = wall
    print("| stage | key | wall-clock s | used by | saved s |\n|---|---|---|---|---|")
    once = saved = 0.0
    for (kind, key), methods in sorted(users.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        wall = seconds[(kind, key)]
        once += wall
        saved += (len(methods) - 1) * wall
        print(f"| {kind} | `{key}` | {wall:.1f} | {', '.join(sorted(methods))} | {(len(methods) - 1) * wall:.1f} |")
    print(f"\nComputed once: {once:.0f} s; without sharing: {once + saved:.0f} s; saved: {saved:.0f} s.")


if __name__ == "__main__":
    main()
