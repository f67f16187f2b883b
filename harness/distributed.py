"""Training one method on several processes: the launch command and the presets (the worker: harness/worker.py).

The run itself stays in one process (data, signals, evaluation, records). Only a method's training is handed to
N processes: the parent computes everything the method needs into the stage cache first, writes a small JSON
spec, and launches ``python -m harness.worker <spec>`` under ``torchrun`` (CPU, gloo) or ``accelerate
launch`` with a preset (GPU: DDP, FSDP or DeepSpeed ZeRO-3). Each worker rebuilds the run from the spec, reads the
cached signals, and trains its share of every optimizer step (harness/trainer.py); the main worker writes the
weights and the training record where the parent picks them up.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from harness.budgets import Budget
from harness.errors import BenchError
from harness.log import log
from harness.models import ModelSpec, load_model_from
from harness.options import RunOptions
from harness.pairs import Pair
from harness.trainer import NonFiniteLoss, check_process_split

PRESET_DIR = Path(__file__).parent / "accelerate_configs"
# Which preset suits which scale (harness/accelerate_configs/<name>.yaml).
PRESETS = {
    "ddp": "one copy of student and teacher per GPU (students up to ~3B in bf16 on 80 GB cards)",
    "fsdp": "student, its optimizer and the teacher sharded across GPUs (FULL_SHARD); 8B teachers on 24-40 GB cards",
    "deepspeed-zero3": "ZeRO-3 with optimizer and parameters offloaded to CPU memory: the largest pairs on few GPUs",
}


@dataclasses.dataclass(frozen=True)
class Launcher:
    processes: int = 1
    preset: str | None = None  # a name in PRESETS or a path to an accelerate config file; None: torchrun

    def __post_init__(self):
        if self.processes < 1:
            raise BenchError(f"--processes must be at least 1, got {self.processes}.")
        if self.preset and self.preset not in PRESETS and not Path(self.preset).is_file():
            raise BenchError(f"Unknown accelerate preset {self.preset!r}: use one of {', '.join(PRESETS)} or the "
                             "path of an accelerate config file (`accelerate config` writes one).")

    def check(self, budget) -> None:
        """Before any work, the check each worker's trainer would make."""
        check_process_split(budget, self.processes)

    @property
    def distributed(self) -> bool:
        return self.processes > 1 or self.preset is not None

    def command(self, spec: Path) -> list[str]:
        worker = ["-m", "harness.worker", str(spec)]
        if self.preset is None:
            # accelerate's own launcher wants MPI for several CPU processes; torchrun starts gloo workers directly.
            return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node",
                    str(self.processes), "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *worker]
        config = PRESET_DIR / f"{self.preset}.yaml" if self.preset in PRESETS else Path(self.preset)
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                "--num_processes", str(self.processes), "--main_process_port", str(free_port()), *worker]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the spec a worker rebuilds its run from

def options_to_spec(opts) -> dict:
    """RunOptions as JSON (pair and budget as their fields)."""
    d = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}
    d["pair"] = dataclasses.asdict(opts.pair)
    d["budget"] = dataclasses.asdict(opts.budget)
    d["launcher"] = None  # a worker trains in place
    return json.loads(json.dumps(d, default=str))


def spec_to_options(d: dict):
    def model(m):
        if m is None:
            return None
        return ModelSpec(m["source"], tuple(m["drop_layers"]) if m["drop_layers"] else None, m["revision"])

    p = d["pair"]
    pair = Pair(**{**p, "teacher": model(p["teacher"]), "student": model(p["student"]),
                   "reference_teacher": model(p["reference_teacher"])})
    fields = {**d, "pair": pair, "budget": Budget(**d["budget"])}
    for name in ("results_dir", "cache_dir", "data_dir"):
        if fields[name] is not None:
            fields[name] = Path(fields[name])
    return RunOptions(**fields)


def launch(launcher: Launcher, opts, method: str, out: Path) -> tuple[object, dict]:
    """Train ``method`` on ``launcher.processes`` processes; returns the trained model and its training record."""
    out.mkdir(parents=True, exist_ok=True)
    spec = out / "spec.json"
    spec.write_text(json.dumps({"options": options_to_spec(opts), "method": method, "out": str(out)}))
    cmd = launcher.command(spec)
    log.info(f"train {method}: {launcher.processes} process(es): {' '.join(cmd)}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                        os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(cmd, env=env)
    if done.returncode != 0:
        failure = out / "failure.json"
        if failure.exists():  # a worker stopped on a non-finite loss: the same error as in one process
            f = json.loads(failure.read_text())
            raise NonFiniteLoss(method, float(f["loss"]), f["step"], f["rows"], f["last_finite_loss"])
        raise BenchError(f"Training {method} on {launcher.processes} processes failed (exit {done.returncode}); "
                         "its output is above. Checkpoints written so far are kept: the same command resumes.")
    info = json.loads((out / "train.json").read_text())
    return load_model_from(out / "model"), info
