"""One process of a distributed training (``python -m harness.worker <spec>``, started by harness/distributed.py):
it rebuilds the run from the spec, trains the method on its share of every step, and the main process writes
the weights and the training record where the parent picks them up."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import torch

import methods  # noqa: F401  (registers the built-in methods)
from harness import recipes
from harness.distributed import spec_to_options
from harness.pipeline import build_methods
from harness.stages import Run
from harness.trainer import NonFiniteLoss


def worker(spec_path: str) -> None:
    """One process of a distributed training: rebuild the run, train the method, main process writes results."""
    spec = json.loads(Path(spec_path).read_text())
    opts = spec_to_options(spec["options"])
    out = Path(spec["out"])
    r = Run(opts)
    r.methods = dict(build_methods(opts))
    r.prepare_data()
    name = spec["method"]
    method = r.methods.get(name) or recipes.build_row(name)  # a dependency the run does not list: its recipe
    main = int(os.environ.get("RANK", "0")) == 0
    try:
        model, info = r.train_here(name, method)
    except NonFiniteLoss as e:
        if main:
            (out / "failure.json").write_text(json.dumps(e.diagnostic()))
        raise SystemExit(3) from None
    if main:
        tmp = out / f".model-{os.getpid()}"
        model.save_pretrained(tmp, safe_serialization=True)
        shutil.rmtree(out / "model", ignore_errors=True)
        os.replace(tmp, out / "model")
        (out / "train.json").write_text(json.dumps(info, default=str))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    worker(sys.argv[1])
