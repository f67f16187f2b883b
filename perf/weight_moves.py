"""How far a trained row's weights moved from its starting student, against what its optimizer steps allow.

    python perf/weight_moves.py results/smollm2-135m/cpu-seed0/pad [--cache-dir ~/.cache/bench]

Reads the row's record and loss curve, loads its trained student from the stage cache (the record's
``train_stage_key``; the cache must still hold it) and the pair's starting student, and prints quantiles of
|w_trained - w_start| over all weights. Beside them, two bounds from the loss curve's steps with a gradient (those
that logged a loss term): sum(lr), about the most a weight moves under AdamW when every step has a gradient, and
sum(lr * sqrt((1 - 0.999^t) / 0.001)), the move AdamW (betas 0.9, 0.999) makes after a lone gradient at step t
with only zero gradients before it, since its second moment is then averaged over the zero steps (README, the
`cpu` budget's pad bullet).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import torch

from harness.cache import cache_root
from harness.models import load_model, load_model_from
from harness.pairs import get_pair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("row", type=Path, help="a row's results folder (record.json, loss_curve.csv)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="the stage cache (default: bench's)")
    args = parser.parse_args()

    record = json.loads((args.row / "record.json").read_text())
    cache = cache_root(args.cache_dir)  # the starting student is read from its models/ too, as bench run does
    trained_dir = cache / "train" / record["train_stage_key"] / "checkpoint"
    if not trained_dir.is_dir():
        raise SystemExit(f"{trained_dir} is not in the cache; run the row's `bench run` command again first.")
    # Parameters, not the state dict: a tied output embedding is one set of weights, not two.
    start = dict(load_model(get_pair(record["pair"]["name"]).student).named_parameters())
    trained = dict(load_model_from(trained_dir).named_parameters())
    moves = torch.cat([(trained[k].detach() - start[k].detach()).abs().flatten() for k in trained])
    sample = moves[torch.randperm(moves.numel(), generator=torch.Generator().manual_seed(0))[:2_000_000]]
    qs = [0.1, 0.5, 0.9, 0.99]
    print(f"{args.row}: {moves.numel():,} weights, {float((moves > 0).float().mean()):.2%} moved")
    for q, v in zip(qs, torch.quantile(sample, torch.tensor(qs)).tolist()):
        print(f"  |dw| quantile {q:.2f}: {v:.3e}")
    print(f"  |dw| max:           {float(moves.max()):.3e}")

    curve = args.row / "loss_curve.csv"  # absent when the row trained no step (pad keeping no prompt)
    rows = list(csv.DictReader(curve.read_text().splitlines())) if curve.exists() else []
    terms = [k for k in (rows[0] if rows else {}) if k.startswith("term/")]
    stepped = [r for r in rows if any(r.get(k) for k in terms)]
    dense = sum(float(r["lr"]) for r in stepped)
    lone = sum(float(r["lr"]) * math.sqrt((1 - 0.999 ** int(r["step"])) / 0.001) for r in stepped)
    print(f"{len(stepped)} of {len(rows)} steps had a gradient (steps {', '.join(r['step'] for r in stepped)})")
    print(f"  dense bound, sum(lr):                        {dense:.3e}")
    print(f"  lone-gradient move, sum(lr*sqrt((1-0.999^t)/0.001)): {lone:.3e}")


if __name__ == "__main__":
    main()
