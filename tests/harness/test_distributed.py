"""Two CPU processes (torchrun, gloo) against one process: the same budget trains on the same rows.

The budget is global (batch_size x grad_accum rows per optimizer step); with two processes each takes every
other micro-batch, so one process at grad_accum 2 and two processes at one micro-batch each must produce the same
loss curve, up to the order of floating-point sums across processes.
"""

from __future__ import annotations

import pytest
import torch

import methods  # noqa: F401  (registers the built-in methods)
from harness.budgets import get_budget
from harness.distributed import Launcher, launch, options_to_spec, spec_to_options
from harness.errors import BenchError
from harness.pairs import get_pair
from harness.pipeline import Run, RunOptions, build_methods
from harness.pipeline import run as run_pipeline

# Stated tolerance: losses agree to 1e-4 (relative) per step; weights after training to 1e-4 (absolute).
LOSS_RTOL = 1e-4


def options(tmp_path, shared_dir, method: str) -> RunOptions:
    budget = get_budget("tiny").with_overrides(max_steps=3, batch_size=2, grad_accum=2)
    return RunOptions(methods=[method], pair=get_pair("smollm2-135m"), budget=budget,
                      results_dir=tmp_path / "results", cache_dir=tmp_path / "cache", data_dir=shared_dir)


@pytest.mark.slow  # two training processes
@pytest.mark.parametrize("method", ["dpo"])  # pairs normalised over both processes; sft adds little
def test_two_processes_match_one_process_at_twice_the_accumulation(tmp_path, shared_dir, method):
    opts = options(tmp_path, shared_dir, method)
    run = Run(opts)
    run.methods = build_methods(opts)
    run.prepare_data()
    one_model, one = run.train_here(method, run.methods[method])
    for s in run.methods[method].needs:  # the signals the workers read from the cache
        run.signal(s, "train", run.methods[method])
    two_model, two = launch(Launcher(processes=2), opts, method, tmp_path / "two")

    a = [row["loss"] for row in one["loss_curve"]]
    b = [row["loss"] for row in two["loss_curve"]]
    assert len(a) == len(b) == 3
    assert a[0] != a[-1]  # training moved the loss, so agreement is not trivial
    assert b == pytest.approx(a, rel=LOSS_RTOL)
    assert [r["lr"] for r in two["loss_curve"]] == pytest.approx([r["lr"] for r in one["loss_curve"]])
    assert two["student_tokens"] == one["student_tokens"]  # tokens summed over both processes
    state_a, state_b = one_model.state_dict(), two_model.state_dict()
    for name, w in state_a.items():
        assert torch.allclose(w, state_b[name], atol=1e-4), name
    initial = run.load_student_init().state_dict()
    moved = sum(int(not torch.equal(initial[n], state_a[n])) for n in state_a)
    assert moved > 0


def test_grad_accum_must_split_across_processes(tmp_path, shared_dir):
    opts = options(tmp_path, shared_dir, "sft")
    opts.budget = opts.budget.with_overrides(grad_accum=3)
    opts.launcher = Launcher(processes=2)
    with pytest.raises(BenchError, match=r"grad_accum \(3\) must be a multiple of the number of processes \(2\)"):
        run_pipeline(opts)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("DONE"))  # checked first


def test_options_travel_to_the_workers_intact(tmp_path, shared_dir):
    opts = options(tmp_path, shared_dir, "dpo")
    opts.method_options = {"dpo": {"beta": 0.2}}
    back = spec_to_options(options_to_spec(opts))
    assert back.pair == opts.pair and back.budget == opts.budget
    assert back.method_options == {"dpo": {"beta": 0.2}} and back.cache_dir == opts.cache_dir


def test_launcher_commands():
    cpu = Launcher(processes=2).command(__import__("pathlib").Path("/x/spec.json"))
    assert cpu[1:3] == ["-m", "torch.distributed.run"] and "--nproc_per_node" in cpu and cpu[-3:] == [
        "-m", "harness.worker", "/x/spec.json"]
    gpu = Launcher(processes=8, preset="fsdp").command(__import__("pathlib").Path("/x/spec.json"))
    assert "accelerate.commands.launch" in gpu and gpu[gpu.index("--num_processes") + 1] == "8"
    assert gpu[gpu.index("--config_file") + 1].endswith("accelerate_configs/fsdp.yaml")
    with pytest.raises(BenchError, match="Unknown accelerate preset"):
        Launcher(processes=2, preset="zero9")
