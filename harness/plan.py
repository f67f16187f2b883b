"""The step plan: which training rows each optimizer step of a run covers, the same for every method of the run
(or, for a method that trains on the rows its signals keep, a plan over those rows; harness/method.py)."""

from __future__ import annotations

import math

import torch

from harness.budgets import Budget
from harness.errors import BenchError


def step_plan(n_rows: int, budget: Budget, seed: int, keep: list[int] | None = None) -> list[list[list[int]]]:
    """Optimizer steps -> micro-batches -> row indices. Seeded, and the same for every method of a run.

    ``keep``: the rows a method trains on when it narrows them (Method.training_rows; PAD's filters). It makes
    as many passes over them as the budget makes over all rows, so its steps are at most the budget's. A last
    step the kept rows cannot fill is completed with rows left out, which that method's loss ignores: the step
    keeps its shape (and its split over processes) and the gradient of its kept rows alone, as the partial last
    batch of a released script's smaller training set. With too few rows left out to fill it, that tail is
    dropped, as an epoch's tail is below."""
    per_step = budget.examples_per_step
    if n_rows < per_step:
        raise BenchError(f"{n_rows} training rows cannot fill one optimizer step of {per_step} examples.")
    if keep is None:
        order: list[int] = []
        epoch = 0
        while len(order) < budget.optimizer_steps * per_step:
            perm = _shuffled(n_rows, seed, epoch)
            # An epoch's tail that cannot fill a whole step is dropped, so every step has the same shape.
            order += perm[: (n_rows // per_step) * per_step]
            epoch += 1
        order = order[:budget.optimizer_steps * per_step]
    else:
        order = _narrowed_order(n_rows, sorted(set(keep)), budget, seed)
    steps = []
    for s in range(len(order) // per_step):
        rows = order[s * per_step:(s + 1) * per_step]
        steps.append([rows[m * budget.batch_size:(m + 1) * budget.batch_size] for m in range(budget.grad_accum)])
    return steps


def _shuffled(n: int, seed: int, epoch: int) -> list[int]:
    """Epoch ``epoch``'s order of n rows under the run seed."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()


def _narrowed_order(n_rows: int, keep: list[int], budget: Budget, seed: int) -> list[int]:
    per_step = budget.examples_per_step
    if keep and not 0 <= keep[0] <= keep[-1] < n_rows:
        raise BenchError(f"A method kept training rows outside 0..{n_rows - 1}: {keep[0]}..{keep[-1]}.")
    # The budget's epochs, or with max_steps the fraction of a pass its steps make over all rows.
    passes = budget.epochs if budget.max_steps is None else budget.max_steps * per_step / n_rows
    visits = min(math.ceil(passes * len(keep)), budget.optimizer_steps * per_step)
    order: list[int] = []
    epoch = 0
    while len(order) < visits:
        order += [keep[i] for i in _shuffled(len(keep), seed, epoch)]
        epoch += 1
    order = order[:visits]
    short = -len(order) % per_step
    kept = set(keep)
    left_out = [i for i in range(n_rows) if i not in kept]
    if short and len(left_out) >= short:
        g = torch.Generator().manual_seed(seed * 1000 + 999_999)
        order += [left_out[i] for i in torch.randperm(len(left_out), generator=g)[:short].tolist()]
    return order[: (len(order) // per_step) * per_step]
