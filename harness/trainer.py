"""One training loop for every method, on accelerate (so the same code runs under DDP/FSDP/DeepSpeed).

The loop owns what must be identical across methods: data order, optimizer, schedule, steps, clipping,
and how a loss is normalised over gradient accumulation. A method only supplies its loss.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from harness.batch import collate
from harness.budgets import Budget
from harness.data import Encoded
from harness.errors import BenchError
from harness.method import Method
from harness.signals import collate_signals


@dataclass
class TrainResult:
    loss_curve: list[dict] = field(default_factory=list)
    student_tokens: int = 0
    teacher_tokens: int = 0  # live-teacher forward tokens (cached signals are accounted separately)
    generated_tokens: int = 0
    student_forward_tokens: int = 0  # forward-only student tokens outside the loss (e.g. a validation loss)
    optimizer_steps: int = 0
    wall_clock_s: float = 0.0


def step_plan(n_rows: int, budget: Budget, seed: int) -> list[list[list[int]]]:
    """Optimizer steps -> micro-batches -> row indices. Seeded, and the same for every method of a run."""
    per_step = budget.examples_per_step
    if n_rows < per_step:
        raise BenchError(f"{n_rows} training rows cannot fill one optimizer step of {per_step} examples.")
    order: list[int] = []
    epoch = 0
    while len(order) < budget.optimizer_steps * per_step:
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        perm = torch.randperm(n_rows, generator=g).tolist()
        # An epoch's tail that cannot fill a whole step is dropped, so every step has the same shape.
        order += perm[: (n_rows // per_step) * per_step]
        epoch += 1
    steps = []
    for s in range(budget.optimizer_steps):
        rows = order[s * per_step:(s + 1) * per_step]
        steps.append([rows[m * budget.batch_size:(m + 1) * budget.batch_size] for m in range(budget.grad_accum)])
    return steps


def step_loss(method: Method, model, micro_batches, accelerator: Accelerator) -> tuple[float, dict, int]:
    """Accumulate gradients over one optimizer step. Returns the step's loss, its terms, and tokens forwarded."""
    totals: dict[str, int] = {}
    for mb in micro_batches:
        for k, v in mb.counts().items():
            totals[k] = totals.get(k, 0) + v
    if accelerator.num_processes > 1:
        keys = sorted(totals)
        t = accelerator.reduce(torch.tensor([totals[k] for k in keys], device=accelerator.device), "sum")
        totals = dict(zip(keys, t.tolist()))
    # DDP averages gradients over processes; the global normaliser already divides by all of them.
    scale = accelerator.num_processes
    loss_value, terms, tokens = 0.0, {}, 0
    for i, mb in enumerate(micro_batches):
        mb = mb.to(accelerator.device)
        sync = i == len(micro_batches) - 1
        ctx = accelerator.no_sync(model) if not sync and accelerator.num_processes > 1 else nullcontext()
        with ctx:
            out = method.loss(model, mb)
            loss = sum(term.total / max(totals[term.per], 1) for term in out.terms) * scale
            accelerator.backward(loss)
        tokens += out.student_tokens
        loss_value += float(loss.detach()) / scale
        for term in out.terms:
            terms[term.name] = terms.get(term.name, 0.0) + float(term.total.detach()) / max(totals[term.per], 1)
        for k, v in out.stats.items():
            terms[k] = terms.get(k, 0.0) + v / len(micro_batches)
    return loss_value, terms, tokens


def train(method: Method, model, rows: list[Encoded], signals: dict, budget: Budget, pad_id: int,
          seed: int, desc: str = "train") -> TrainResult:
    set_seed(seed)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=budget.learning_rate, weight_decay=budget.weight_decay)
    schedule = "constant_with_warmup" if budget.lr_schedule == "constant" else budget.lr_schedule
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=budget.warmup_steps,
                              num_training_steps=budget.optimizer_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    result = TrainResult()
    start = time.perf_counter()
    last_finite = None
    method.usage = {k: 0 for k in method.usage}
    method.start_training()
    bar = tqdm(step_plan(len(rows), budget, seed), desc=desc, unit="step", leave=False)
    for step, plan in enumerate(bar, 1):
        method.step = step
        micro = []
        for m, idx in enumerate(plan):
            mb = collate([rows[i] for i in idx], idx, pad_id)
            mb.signals = collate_signals(signals, mb, pad_id)
            # Unwrapped: DDP/FSDP wrappers do not expose generate(), which on-policy methods call here.
            micro.append(method.prepare_batch(accelerator.unwrap_model(model), mb,
                                              random.Random(seed * 1_000_003 + step * 1009 + m)))
        loss, terms, tokens = step_loss(method, model, micro, accelerator)
        if not math.isfinite(loss):
            raise BenchError(f"{method.name}: the loss became {loss} at optimizer step {step} (rows {plan}); "
                             f"the last finite loss was {last_finite}. Lower the learning rate or check the data.")
        last_finite = loss
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), budget.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        result.student_tokens += tokens
        result.loss_curve.append({"step": step, "loss": loss, "lr": lr, "grad_norm": float(grad_norm),
                                  **{f"term/{k}": v for k, v in terms.items()}})
        bar.set_postfix(loss=f"{loss:.4f}")
    result.optimizer_steps = len(result.loss_curve)
    result.teacher_tokens = method.usage["teacher_tokens"]
    result.generated_tokens = method.usage["generated_tokens"]
    result.student_forward_tokens = method.usage["student_forward_tokens"]
    result.wall_clock_s = time.perf_counter() - start
    model = accelerator.unwrap_model(model)
    model.eval()
    return result
