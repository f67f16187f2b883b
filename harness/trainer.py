"""One training loop for every method, on accelerate (so the same code runs under DDP/FSDP/DeepSpeed).

The loop owns what must be identical across methods: data order, optimizer, schedule, steps, clipping,
and how a loss is normalised over gradient accumulation. A method only supplies its loss.

The budget is global: an optimizer step always covers ``batch_size x grad_accum`` rows. Under N processes each
takes every N-th micro-batch of the step, so one process and N processes train on the same rows with the same
normaliser (a run's budget does not change with the machine it runs on).

Training checkpoints (weights, optimizer, RNG, method state, loss curve) are written every few steps into a
resume folder, so a killed run continues from its last checkpoint and ends where an uninterrupted one would.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object, set_seed
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from harness.batch import collate
from harness.budgets import Budget
from harness.data import Encoded
from harness.errors import BenchError
from harness.method import Method
from harness.plan import step_plan
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
    rows_trained: int | None = None  # distinct rows trained on, when the method narrowed them (else all)


def step_loss(method: Method, model, micro_batches, accelerator: Accelerator) -> tuple[float, dict, int]:
    """Accumulate gradients over one optimizer step (this process's micro-batches). Returns the step's loss and
    its terms, and the student tokens forwarded, over every process."""
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
    loss_value, terms, stats, tokens = 0.0, {}, {}, 0
    # A micro-batch a filter empties (method.inert) would add a zero loss and zero gradients: skip its forward
    # and backward. Single process only: under DDP every process must join each backward's all-reduce.
    skip = [accelerator.num_processes == 1 and method.inert(mb) for mb in micro_batches]
    for i, mb in enumerate(micro_batches):
        if skip[i]:
            continue
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
            stats[k] = stats.get(k, 0.0) + v / len(micro_batches)
    if skip and all(skip):  # the zero gradients a backward would have left: AdamW still decays moments and weights
        for p in model.parameters():
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)
    if accelerator.num_processes > 1:  # each process holds part of the sums and its own mean of the stats
        t_keys, s_keys = sorted(terms), sorted(stats)
        values = torch.tensor([loss_value] + [terms[k] for k in t_keys] + [stats[k] / scale for k in s_keys],
                              dtype=torch.float64, device=accelerator.device)
        values = accelerator.reduce(values, "sum").tolist()
        tokens = int(accelerator.reduce(torch.tensor([tokens], device=accelerator.device), "sum").item())
        loss_value = values[0]
        terms = dict(zip(t_keys, values[1:1 + len(t_keys)]))
        stats = dict(zip(s_keys, values[1 + len(t_keys):]))
    return loss_value, {**terms, **stats}, tokens


class NonFiniteLoss(BenchError):
    """A method's loss became NaN or infinite: that method stops; the run's other methods go on."""

    def __init__(self, method: str, loss: float, step: int, rows: list, last_finite: float | None):
        self.method, self.loss, self.step, self.rows, self.last_finite = method, loss, step, rows, last_finite
        super().__init__(f"{method}: the loss became {loss} at optimizer step {step} (rows {rows}); the last finite "
                         f"loss was {last_finite}. Lower the learning rate or check the data.")

    def diagnostic(self) -> dict:
        return {"error": "non-finite loss", "loss": str(self.loss), "step": self.step, "rows": self.rows,
                "last_finite_loss": self.last_finite, "message": str(self)}


@dataclass
class Checkpointing:
    """Where and how often training saves what it needs to resume: every ``every_steps`` optimizer steps when
    set, otherwise whenever ``every_s`` seconds have passed since the last save."""

    folder: Path
    every_steps: int | None = None
    every_s: float = 600.0

    def due(self, step: int, since_last: float) -> bool:
        if self.every_steps:
            return step % self.every_steps == 0
        return since_last >= self.every_s

    def latest(self) -> Path | None:
        done = sorted(self.folder.glob("step-*")) if self.folder.is_dir() else []
        return done[-1] if done else None


def save_checkpoint(ck: Checkpointing, step: int, accelerator: Accelerator, model, optimizer, scheduler,
                    method: Method, result: TrainResult, elapsed: float) -> None:
    """Weights and optimizer moments as safetensors, the rest as JSON; written to a temporary folder and renamed,
    so a kill leaves either the previous checkpoint or this one, never half of one."""
    state_dict = accelerator.get_state_dict(model)
    # Each process has its own micro-batches, so its own usage counts and method state (DistiLLM's buffer).
    per_rank = [{"usage": method.usage, "method": method.state_dict()}]
    if accelerator.num_processes > 1:
        per_rank = gather_object(per_rank)
    if accelerator.is_main_process:
        tmp = ck.folder / f".tmp-step-{step:07d}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        # Tied weights share storage, which safetensors refuses: each tensor is stored on its own.
        save_file({k: v.detach().cpu().clone().contiguous() for k, v in state_dict.items()}, str(tmp / "model.safetensors"))
        opt = optimizer.state_dict()
        tensors = {"rng.torch": torch.get_rng_state()}
        moments: dict = {}
        for idx, st in opt["state"].items():
            for name, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"optimizer.{idx}.{name}"] = v.detach().cpu().contiguous()
                else:
                    moments.setdefault(str(idx), {})[name] = v
        save_file(tensors, str(tmp / "state.safetensors"))
        state = {"step": step, "param_groups": opt["param_groups"], "optimizer_scalars": moments,
                 "scheduler": scheduler.state_dict(), "rng_python": random.getstate(), "per_rank": per_rank,
                 "loss_curve": result.loss_curve,
                 "student_tokens": result.student_tokens, "elapsed_s": elapsed}
        (tmp / "state.json").write_text(json.dumps(state, default=_jsonable))
        os.replace(tmp, ck.folder / f"step-{step:07d}")
        for old in ck.folder.glob("step-*"):
            if old.name != f"step-{step:07d}":
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _jsonable(v):
    if torch.is_tensor(v):
        return v.item() if v.numel() == 1 else v.tolist()
    raise TypeError(f"cannot store {type(v).__name__} in a training checkpoint")


def load_checkpoint(folder: Path, model, optimizer, scheduler, method: Method, result: TrainResult,
                    rank: int = 0) -> tuple[int, float]:
    """Restore a checkpoint into the (unprepared) model, optimizer and scheduler; returns (step, elapsed s)."""
    state = json.loads((folder / "state.json").read_text())
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    tensors = load_file(str(folder / "state.safetensors"))
    opt_state: dict = {}
    for key, v in tensors.items():
        if key.startswith("optimizer."):
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = v
    for idx, scalars in state["optimizer_scalars"].items():
        opt_state.setdefault(int(idx), {}).update(scalars)
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    version, internal, gauss = state["rng_python"]
    random.setstate((version, tuple(internal), gauss))
    if rank >= len(state["per_rank"]):
        raise BenchError(f"The checkpoint in {folder} was written by {len(state['per_rank'])} process(es); resume "
                         "it with as many, or delete that folder to start the method again.")
    method.load_state_dict(state["per_rank"][rank]["method"])
    method.usage = dict(state["per_rank"][rank]["usage"])
    result.loss_curve = state["loss_curve"]
    result.student_tokens = state["student_tokens"]
    return state["step"], state["elapsed_s"]


def shard_teacher(accelerator: Accelerator, method: Method) -> None:
    """The frozen live teacher is spread like the student where the student is: sharded under FSDP (each
    forward gathers one layer at a time), partitioned (and offloaded to CPU where the preset offloads) under
    DeepSpeed ZeRO-3, so an 8B teacher fits beside the student. Under DDP every process holds a full copy.
    Written against accelerate's FSDP2 and DeepSpeed's inference-engine APIs; exercised only on GPU machines."""
    teacher = method.runtime.teacher if method.runtime is not None else None
    if teacher is None:
        return
    teacher.requires_grad_(False)
    if accelerator.distributed_type == DistributedType.FSDP:
        from accelerate.utils.fsdp_utils import fsdp2_prepare_model

        method.runtime.teacher = fsdp2_prepare_model(accelerator, teacher)
    elif accelerator.distributed_type == DistributedType.DEEPSPEED:
        import copy

        import deepspeed

        # The student's (already resolved) config, minus what only an optimizer needs; below ZeRO-3 a frozen
        # model gains nothing from partitioning, so it runs as stage 0 (a plain replicated copy).
        config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
        config.pop("optimizer", None)
        config.pop("scheduler", None)
        if config.get("zero_optimization", {}).get("stage") != 3:
            config["zero_optimization"] = {"stage": 0}
        engine, *_ = deepspeed.initialize(model=teacher, config=config)
        method.runtime.teacher = engine.module.eval()


def check_process_split(budget: Budget, processes: int) -> None:
    """Each of N processes takes every N-th micro-batch of an optimizer step, so N must divide grad_accum."""
    if budget.grad_accum % processes:
        raise BenchError(f"grad_accum ({budget.grad_accum}) must be a multiple of the number of processes "
                         f"({processes}): each process takes every {processes}-th micro-batch of an optimizer "
                         f"step. Use --set grad_accum={processes * max(1, budget.grad_accum // processes)} "
                         "(and adjust batch_size).")


def lr_factor(step: int, *, warmup: int, total: int, schedule: str) -> float:
    """The budget's learning rate is multiplied by this at optimizer step ``step`` (0-based).

    Warm-up ramps (step + 1) / (warmup + 1), so no step runs at learning rate 0 (transformers' schedulers start
    warm-up at 0, which wasted the first of a short budget's steps); after warm-up the decay is transformers'
    cosine / linear / constant over the remaining steps, unchanged."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def train(method: Method, model, rows: list[Encoded], signals: dict, budget: Budget, pad_id: int,
          seed: int, desc: str = "train", checkpoints: Checkpointing | None = None) -> TrainResult:
    set_seed(seed)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    n_proc, rank = accelerator.num_processes, accelerator.process_index
    check_process_split(budget, n_proc)
    model.train()
    # Fused AdamW: one kernel per step instead of a loop over tensors (3.8x faster on 2 CPU cores, and TRL's
    # default), same update up to float rounding.
    optimizer = torch.optim.AdamW(model.parameters(), lr=budget.learning_rate, weight_decay=budget.weight_decay,
                                  fused=True)
    keep = method.training_rows(signals, len(rows))
    plan_all = step_plan(len(rows), budget, seed, keep)
    rows_trained = None if keep is None else len(set(keep))
    if rows_trained is not None and accelerator.is_main_process:
        steps = f"{len(plan_all)} optimizer step{'' if len(plan_all) == 1 else 's'}"
        tqdm.write(f"[bench] {desc}: the method trains on {rows_trained} of {len(rows)} rows: {steps} of the "
                   f"budget's {budget.optimizer_steps}", file=sys.stderr)
    # The schedule spans the steps that run (the budget's, or fewer on narrowed rows, as a released script's
    # scheduler spans its own smaller training set); the peak learning rate is the budget's for every method.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(
        lr_factor, warmup=int(budget.warmup_ratio * len(plan_all)), total=len(plan_all),
        schedule=budget.lr_schedule))
    result = TrainResult()
    method.usage = {k: 0 for k in method.usage}
    method.start_training()
    done, elapsed_before = 0, 0.0
    latest = checkpoints.latest() if checkpoints else None
    if latest is not None:
        done, elapsed_before = load_checkpoint(latest, model, optimizer, scheduler, method, result, rank)
        if accelerator.is_main_process:
            tqdm.write(f"[bench] {desc}: resuming from the checkpoint at step {done}", file=sys.stderr)
    # The scheduler stays unprepared: accelerate would step it once per process, assuming each process saw
    # its own batches, while here N processes share one optimizer step.
    model, optimizer = accelerator.prepare(model, optimizer)
    shard_teacher(accelerator, method)
    start = last_save = time.perf_counter()
    last_finite = result.loss_curve[-1]["loss"] if result.loss_curve else None
    bar = tqdm(plan_all, desc=desc, unit="step", leave=False, initial=done, total=len(plan_all),
               disable=not accelerator.is_local_main_process)
    for step, plan in enumerate(plan_all[done:], done + 1):
        method.step = step
        micro = []
        for m, idx in enumerate(plan):
            if m % n_proc != rank:
                continue
            mb = collate([rows[i] for i in idx], idx, pad_id)
            mb.signals = collate_signals(signals, mb, pad_id)
            # Unwrapped: DDP/FSDP wrappers do not expose generate(), which on-policy methods call here.
            micro.append(method.prepare_batch(accelerator.unwrap_model(model), mb,
                                              random.Random(seed * 1_000_003 + step * 1009 + m)))
        loss, terms, tokens = step_loss(method, model, micro, accelerator)
        if not math.isfinite(loss):
            raise NonFiniteLoss(method.name, loss, step, plan, last_finite)
        last_finite = loss
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), budget.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        result.student_tokens += tokens
        result.loss_curve.append({"step": step, "loss": loss, "lr": lr, "grad_norm": float(grad_norm),
                                  **{f"term/{k}": v for k, v in terms.items()}})
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if checkpoints and step < len(plan_all):
            due = checkpoints.due(step, time.perf_counter() - last_save)
            if n_proc > 1:  # every process must take the same decision (the save gathers state from all)
                due = bool(accelerator.reduce(torch.tensor([int(due)], device=accelerator.device), "max").item())
            if due:
                save_checkpoint(checkpoints, step, accelerator, model, optimizer, scheduler, method, result,
                                elapsed_before + time.perf_counter() - start)
                last_save = time.perf_counter()
    bar.close()
    usage = dict(method.usage)
    if n_proc > 1:  # counted per process
        keys = sorted(usage)
        totals = accelerator.reduce(torch.tensor([usage[k] for k in keys], device=accelerator.device), "sum")
        usage = dict(zip(keys, (int(v) for v in totals.tolist())))
    result.optimizer_steps = len(result.loss_curve)
    result.rows_trained = rows_trained
    result.teacher_tokens = usage["teacher_tokens"]
    result.generated_tokens = usage["generated_tokens"]
    result.student_forward_tokens = usage["student_forward_tokens"]
    result.wall_clock_s = elapsed_before + time.perf_counter() - start
    model = accelerator.unwrap_model(model)
    model.eval()
    return result
