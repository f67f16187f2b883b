"""Budgets: everything that must be identical across the methods of one run.

Per-method hyperparameters (beta, alpha, temperatures) live in each method's config, never here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from harness.errors import BenchError
from harness.registry import BUDGETS, register_budget


@dataclass(frozen=True)
class Budget:
    """One budget object shared by every method of a run."""

    name: str
    description: str
    train_examples: int  # preference rows drawn (seeded) from the train split; every method sees the same ones
    max_seq_len: int  # prompt + response tokens per sequence
    max_prompt_len: int  # prompts longer than this are cut from the left (the end of a prompt matters most)
    batch_size: int  # sequences (or preference pairs) per micro-batch
    grad_accum: int  # micro-batches per optimizer step
    epochs: int = 1  # passes over train_examples; ignored when max_steps is set
    max_steps: int | None = None  # fixes the optimizer steps directly
    learning_rate: float = 5e-5
    lr_schedule: str = "cosine"  # "cosine", "linear" or "constant", after warm-up
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    samples_per_prompt: int = 1  # for sampling methods (PAD, GKD, ...)
    gen_max_new_tokens: int = 64  # generation length for sampling and for evaluation answers
    eval_examples: int = 50  # held-out preference rows for the offline metrics
    gen_eval_examples: int = 16  # held-out prompts answered greedily for ROUGE-L
    teacher_top_k: int = 50  # teacher log-probs kept per position (plus a rest bucket)
    teacher_topk_dtype: str = "float32"  # how the cached top-k log-probs are stored: float32 (exact),
    # float16 or bfloat16 (half the value bytes; harness/topk_store.py states their rounding)
    warmstart_steps: int = 0  # shared student SFT warm-start before any method (0 = off)
    save_checkpoints: bool = True

    def __post_init__(self):
        positive = ["train_examples", "max_seq_len", "batch_size", "grad_accum", "epochs",
                    "samples_per_prompt", "gen_max_new_tokens", "eval_examples", "teacher_top_k"]
        for field in positive:
            if getattr(self, field) < 1:
                raise BenchError(f"Budget {self.name!r}: {field} must be at least 1, got {getattr(self, field)}.")
        if not 0 < self.max_prompt_len < self.max_seq_len:
            raise BenchError(
                f"Budget {self.name!r}: max_prompt_len ({self.max_prompt_len}) must be positive and below "
                f"max_seq_len ({self.max_seq_len}) so that responses keep at least one token."
            )
        if self.max_steps is not None and self.max_steps < 1:
            raise BenchError(f"Budget {self.name!r}: max_steps must be at least 1 when set.")
        if self.teacher_topk_dtype not in ("float32", "float16", "bfloat16"):
            raise BenchError(f"Budget {self.name!r}: teacher_topk_dtype must be float32, float16 or bfloat16, got "
                             f"{self.teacher_topk_dtype!r} (float32 stores the teacher's log-probs exactly).")
        if self.lr_schedule not in ("cosine", "linear", "constant"):
            raise BenchError(f"Budget {self.name!r}: lr_schedule must be cosine, linear or constant.")
        if not 0 <= self.warmup_ratio < 1:
            raise BenchError(f"Budget {self.name!r}: warmup_ratio must be in [0, 1).")
        if self.learning_rate <= 0:
            raise BenchError(f"Budget {self.name!r}: learning_rate must be positive.")
        if self.gen_eval_examples < 0 or self.warmstart_steps < 0:
            raise BenchError(f"Budget {self.name!r}: gen_eval_examples and warmstart_steps cannot be negative.")
        if self.train_examples < self.batch_size * self.grad_accum and self.max_steps is None:
            raise BenchError(
                f"Budget {self.name!r}: {self.train_examples} training examples cannot fill one optimizer step of "
                f"batch_size {self.batch_size} x grad_accum {self.grad_accum}."
            )

    @property
    def examples_per_step(self) -> int:
        return self.batch_size * self.grad_accum

    @property
    def optimizer_steps(self) -> int:
        if self.max_steps is not None:
            return self.max_steps
        return self.epochs * math.ceil(self.train_examples / self.examples_per_step)

    @property
    def warmup_steps(self) -> int:
        return int(self.warmup_ratio * self.optimizer_steps)

    def with_overrides(self, **overrides) -> Budget:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise BenchError(f"Unknown budget field(s): {', '.join(sorted(unknown))}.")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["optimizer_steps"] = self.optimizer_steps
        return d


register_budget("tiny", Budget(
    name="tiny",
    description="Tests: a handful of steps on short sequences; finishes in a minute or two on 2 CPU cores.",
    train_examples=8, max_seq_len=64, max_prompt_len=32, batch_size=2, grad_accum=2, max_steps=2,
    learning_rate=1e-4, warmup_ratio=0.0, gen_max_new_tokens=12, eval_examples=4, gen_eval_examples=2,
    teacher_top_k=20, samples_per_prompt=3, save_checkpoints=False,
))

register_budget("smoke", Budget(
    name="smoke",
    description="The CPU demo: 48 preference pairs, 12 optimizer steps; sft,kd,dckd,dpo in about 10 minutes here.",
    train_examples=48, max_seq_len=128, max_prompt_len=48, batch_size=4, grad_accum=1, epochs=1,
    learning_rate=1e-4, warmup_ratio=0.1, gen_max_new_tokens=48, eval_examples=40, gen_eval_examples=12,
    teacher_top_k=50, samples_per_prompt=4,
))

register_budget("cpu", Budget(
    name="cpu",
    description="A laptop left running for a few hours: 992 preference pairs once (248 steps), 200 held-out rows.",
    train_examples=992, max_seq_len=192, max_prompt_len=64, batch_size=4, grad_accum=1, epochs=1,
    learning_rate=5e-5, lr_schedule="cosine", warmup_ratio=0.1, gen_max_new_tokens=48, eval_examples=200,
    gen_eval_examples=50, teacher_top_k=50, samples_per_prompt=4,
))

register_budget("paper", Budget(
    name="paper",
    description="GPU, the seed papers' scale: full preference set, 2048-token sequences, effective batch 128.",
    train_examples=60_000, max_seq_len=2048, max_prompt_len=1024, batch_size=4, grad_accum=32, epochs=1,
    learning_rate=5e-6, lr_schedule="cosine", warmup_ratio=0.1, samples_per_prompt=4,
    gen_max_new_tokens=1024, eval_examples=2000, gen_eval_examples=500, teacher_top_k=50, warmstart_steps=0,
))


def comparable(budget: dict) -> dict:
    """A recorded budget in the form two records are compared in (are these runs the same budget but for the
    seed?): every field of today's Budget, with its default where an older record lacks it (a field added later
    compares equal at its default), less the seed and the description (prose, not budget)."""
    out = {}
    for f in dataclasses.fields(Budget):
        if f.name in ("seed", "description"):
            continue
        out[f.name] = budget.get(f.name, f.default)
    return out


def get_budget(name: str) -> Budget:
    return BUDGETS.get(name)
