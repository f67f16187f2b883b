"""What a method is: a config dataclass, a declaration of the signals it needs, and a loss.

A method never fetches a teacher signal itself: it names what it needs in ``needs`` and finds it, collated
for the micro-batch, in ``batch.signals``. The pipeline prepares each needed signal once for every method
of a run (see harness/signals.py).

Losses return *sums* with the count they are to be divided by; the trainer divides by that count summed
over the whole optimizer step (and all processes). Batch 4 x accumulation 1 and batch 1 x accumulation 4
therefore give the same gradient.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

from harness.batch import Batch
from harness.errors import BenchError
from harness.lazy import torch
from harness.losses import response_logits


@dataclass
class MethodConfig:
    """Base of every method config; subclasses add documented fields and validate in __post_init__."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_label_smoothing(method: str, value: float) -> None:
    """Conservative DPO's epsilon (DPO, DPKD, SimPO): at 0.5 the loss no longer prefers the chosen response."""
    if not 0.0 <= value < 0.5:
        raise BenchError(f"{method}: label_smoothing must be in [0, 0.5), got {value}.")


@dataclass
class Term:
    name: str
    total: torch.Tensor  # a sum over the micro-batch, weights already applied
    per: str  # the count it is normalised by: "pairs", "chosen_tokens" or "rejected_tokens"


@dataclass
class Runtime:
    """What the pipeline hands a method before training: token ids, generation limits, a live teacher."""

    pad_id: int
    eos_id: int
    max_new_tokens: int
    max_seq_len: int
    teacher: object | None = None  # set when the method needs "teacher_model"
    total_steps: int = 0  # optimizer steps of the budget
    steps_per_epoch: int = 0  # optimizer steps per pass over the training rows
    validation: list = field(default_factory=list)  # spare train-split rows (Encoded) never trained on


@dataclass
class LossOutput:
    terms: list[Term]
    student_tokens: int  # tokens forwarded through the student (prompt included), for compute accounting
    stats: dict[str, float] = field(default_factory=dict)  # extra per-micro-batch figures to log (means)


class Method:
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    Config: ClassVar[type] = MethodConfig
    needs: ClassVar[tuple[str, ...]] = ()  # signal names, e.g. "teacher_topk:chosen", "reference_logps"
    needs_shared_vocab: ClassVar[bool] = False
    # Another method whose trained student this one starts from (ADPA+ starts from DCKD): a stage dependency.
    starts_from: ClassVar[str | None] = None
    registered_name: ClassVar[str] = ""
    # Named configurations (harness/recipes.py): "official" (the released code's) and "paper" (the equation's).
    # The config's dataclass defaults equal ``recipes[default_recipe]``.
    recipes: ClassVar[dict] = {}
    default_recipe: ClassVar[str | None] = None

    def __init__(self, config: MethodConfig | None = None):
        self.config = config if config is not None else self.Config()
        self.recipe = self.default_recipe  # the run's rows are built by harness/recipes.build, which sets both
        self.options_set: list[str] = []  # config fields the user set on top of the recipe
        self.runtime: Runtime | None = None
        # Work done inside prepare_batch/loss beyond the student's own forward passes, for compute records.
        self.usage = {"teacher_tokens": 0, "generated_tokens": 0, "student_forward_tokens": 0}
        self.step = 0  # the optimizer step being prepared (1-based), set by the trainer

    def check_pair(self, pair) -> None:
        """Raise a BenchError, before any work, when this configuration cannot run on ``pair``."""

    def signal_options(self, name: str) -> dict:
        """Settings of this method's config that change how a needed signal is computed (they join its cache
        key); most signals have none."""
        return {}

    def start_training(self) -> None:
        """Called by the trainer before the first step: reset any state kept across steps."""

    def state_dict(self) -> dict:
        """State kept across steps (JSON-able), saved with training checkpoints so a resumed run continues
        exactly; most methods keep none."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""

    def prepare_batch(self, model, batch: Batch, rng) -> Batch:
        """Called once per micro-batch before the step's counts are taken: on-policy methods replace
        responses with the current student's samples here. ``rng`` is seeded per (run seed, step, micro-batch)."""
        return batch

    def training_rows(self, signals: dict, n_rows: int) -> list[int] | None:
        """The training rows (indices) this method trains on, decided from its prepared signals before the first
        step; None: all of them. A method whose released code removes rows from its training set (PAD's filters)
        returns the rest; the trainer then plans its passes over those rows only (harness/plan.py, step_plan).
        The loss must ignore every row left out: the trainer may fill a last, partial step with them."""
        return None

    def narrows_rows(self) -> bool:
        """True when this configuration may return rows from ``training_rows``: it joins the training stage's
        cache key, since the steps run differ from a stage trained over every row."""
        return False

    def inert(self, batch: Batch) -> bool:
        """True when this prepared micro-batch adds nothing to the loss or its gradient (a filter drops every
        row), so the trainer may skip its forward and backward. Only say so when the loss is then exactly zero
        with a zero gradient: the optimizer step still runs, on zero gradients, as it would have."""
        return False

    @property
    def name(self) -> str:
        return self.registered_name

    def live_teacher_logits(self, seqs, vocab: int) -> torch.Tensor:
        """The live teacher's next-token logits at the response positions of ``seqs``, packed as the student's
        ([N, vocab], fp32, no gradient; harness/losses.py), cut to the student's vocabulary (a larger teacher's
        padded embedding rows); the tokens count as teacher compute."""
        with torch.no_grad():
            logits = response_logits(self.runtime.teacher, seqs)
        self.usage["teacher_tokens"] += seqs.n_tokens
        return logits[:, :vocab].float()

    def loss(self, model, batch: Batch) -> LossOutput:
        raise NotImplementedError
