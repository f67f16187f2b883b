"""perf/speed.py: its step arithmetic, and a quick run of two figures on the real student checked for its
files, fields and internal consistency (the figures' values depend on the machine, so only their signs and
relations are checked)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "perf" / "speed.py"


def load_speed():
    """The script as a module (perf/ is not a package); registered first, as dataclasses look it up."""
    if "speed_benchmark" not in sys.modules:
        spec = importlib.util.spec_from_file_location("speed_benchmark", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["speed_benchmark"] = module
        spec.loader.exec_module(module)
    return sys.modules["speed_benchmark"]


def test_step_times_are_intervals_between_step_starts_and_the_end_after_warm_up():
    speed = load_speed()
    assert speed.intervals([0.0, 5.0, 7.0, 10.0], 11.5, warmup=1) == [2.0, 3.0, 1.5]
    t = speed.Timing(seconds=[2.0, 3.0], tokens=[100, 150])
    assert t.step_s == 2.5
    assert t.tokens_per_s == 50.0
    assert t.to_dict()["tokens_per_step"] == 125


def test_live_kd_matches_kd_on_the_cached_top_k(tiny_model):
    """kd-live must time the same loss as kd, only with the top-k computed in the step."""
    import torch

    from harness.batch import collate
    from harness.data import Encoded
    from harness.method import Runtime
    from harness.signals import collate_signals, compute_topk
    from methods.kd import KD

    speed = load_speed()
    rows = [Encoded([1, 2, 3], [4, 5, 6, 7], [8, 9]), Encoded([3, 4], [10, 11, 12], [13])]
    torch.manual_seed(1)
    teacher = type(tiny_model)(tiny_model.config).eval()
    k = 5
    topk, _ = compute_topk(teacher, rows, "chosen", k, 0, 64, desc="t")
    batch = collate(rows, [0, 1], 0)
    batch.signals = collate_signals({"teacher_topk:chosen": topk}, batch, 0)
    cached = KD().loss(tiny_model, batch)
    live = speed.LiveKD(k, 64)
    live.runtime = Runtime(0, 0, 4, 16, teacher)
    on_the_fly = live.loss(tiny_model, collate(rows, [0, 1], 0))
    assert torch.allclose(cached.terms[0].total, on_the_fly.terms[0].total, atol=1e-5)
    assert live.usage["teacher_tokens"] == batch.chosen.n_tokens


@pytest.mark.slow
def test_quick_run_writes_consistent_figures(tmp_path, shared_dir):
    cmd = [sys.executable, str(SCRIPT), "--quick", "--only", "generation,flops", "--label", "test",
           "--out-dir", str(tmp_path), "--data-dir", str(shared_dir), "--batch-size", "2", "--seq-len", "64",
           "--prompt-len", "32", "--train-examples", "8", "--gen-batch", "3", "--gen-new-tokens", "4",
           "--matmul-n", "256"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "speed-test.json").read_text())
    markdown = (tmp_path / "speed-test.md").read_text()
    assert markdown.strip() in proc.stdout
    assert "## Generation" in markdown and "## Achieved FLOP/s" in markdown and "## Training step" not in markdown
    assert {"methods", "trl", "memory"}.isdisjoint(report)
    assert report["machine"]["cores"] >= 1 and report["machine"]["torch_threads"] >= 1
    assert {"torch", "transformers", "trl"} <= set(report["versions"])
    assert report["git_revision"] and "perf/speed.py --quick" in report["command"]
    assert report["settings"]["steps"] == 2 and report["settings"]["warmup"] == 1

    gen = report["generation"]
    for mode in ("one_at_a_time", "batched"):
        m = gen[mode]
        assert m["seconds"] > 0 and 0 < m["new_tokens"] <= gen["prompts"] * gen["max_new_tokens"]
        assert math.isclose(m["tokens_per_s"], m["new_tokens"] / m["seconds"], rel_tol=1e-9)
    assert gen["one_at_a_time"]["batch_size"] == 1 and gen["batched"]["batch_size"] == gen["prompts"] == 3
    assert math.isclose(gen["speedup"], gen["batched"]["tokens_per_s"] / gen["one_at_a_time"]["tokens_per_s"])
    assert gen["goal_met"] == (gen["speedup"] >= 4.0)

    f = report["flops"]
    assert f["matmul_params"] > 0 and f["step_s"] > 0 and f["tokens_per_step"] > 0 and f["peak_flops"] > 0
    assert math.isclose(f["achieved_flops"], 6 * f["matmul_params"] * f["tokens_per_step"] / f["step_s"])
    assert math.isclose(f["utilisation"], f["achieved_flops"] / f["peak_flops"])
    assert f"{f['utilisation']:.1%}" in markdown
