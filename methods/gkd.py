"""GKD (Agarwal et al. 2024, arXiv 2306.13649): generalised JSD to a live teacher, on a mix of data-set
responses and the student's own on-policy samples."""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import BenchError
from harness.lazy import torch
from harness.losses import forward, generalized_jsd
from harness.method import LossOutput, Method, MethodConfig, Term
from harness.recipes import Recipe
from harness.registry import register_method


@dataclass
class GKDConfig(MethodConfig):
    """Defaults are TRL's GKDTrainer's.

    beta: the JSD's mixture weight; 0 gives forward KL(teacher || student), 1 reverse KL(student || teacher).
    lmbda: probability that a micro-batch's responses are replaced by the current student's samples
        (on-policy); otherwise the data set's chosen responses are used. Drawn per micro-batch from a generator
        seeded by (run seed, step, micro-batch), so runs repeat exactly.
    temperature: sampling temperature of the student's on-policy samples only; the loss is at temperature 1.
    The on-policy samples' length is the budget's ``gen_max_new_tokens``. Losses are token means over the step.
    """

    beta: float = 0.5
    lmbda: float = 0.5
    temperature: float = 0.9

    def __post_init__(self):
        if not 0.0 <= self.beta <= 1.0:
            raise BenchError(f"gkd: beta must be in [0, 1], got {self.beta}.")
        if not 0.0 <= self.lmbda <= 1.0:
            raise BenchError(f"gkd: lmbda must be in [0, 1], got {self.lmbda}.")
        if self.temperature <= 0:
            raise BenchError(f"gkd: temperature must be positive, got {self.temperature}.")


def on_policy(method: Method, model, batch, rng, temperature: float):
    """Replace the chosen side with the current student's samples; accounts the generated tokens."""
    from harness.generation import resample  # transformers' generation: imported when a method samples

    batch.chosen, generated = resample(model, batch.chosen, method.runtime, temperature=temperature,
                                       seed=rng.randrange(2**31))
    method.usage["generated_tokens"] += generated
    return batch


def live_divergence(method: Method, model, seqs, beta: float) -> tuple[torch.Tensor, int]:
    """Summed per-token generalised JSD between the student and the live teacher on ``seqs``."""
    logits = forward(model, seqs)
    t_logits = method.live_teacher_logits(seqs, logits.shape[-1])
    return generalized_jsd(logits, t_logits, beta).sum(), seqs.n_tokens


TRL = "huggingface/trl@f2cd577 trl/experimental/gkd/gkd_config.py"
RECIPES = {
    "official": Recipe(
        "TRL's GKDTrainer defaults (the reference implementation the GKD authors' method is most used through).",
        {"beta": 0.5, "lmbda": 0.5, "temperature": 0.9},
        {"beta": f"{TRL}:66-67", "lmbda": f"{TRL}:59-60", "temperature": f"{TRL}:55-56 (sampling only; "
                                                                        "the loss is at temperature 1)"},
        source=TRL),
}


@register_method("gkd")
class GKD(Method):
    description = "Generalised JSD to the live teacher on data and on-policy student samples (fraction lmbda)."
    paper = "Agarwal et al. 2024 (ICLR), arXiv 2306.13649"
    Config = GKDConfig
    recipes = RECIPES
    default_recipe = "official"
    needs = ("teacher_model",)
    needs_shared_vocab = True

    def prepare_batch(self, model, batch, rng):
        if rng.random() < self.config.lmbda:
            batch = on_policy(self, model, batch, rng, self.config.temperature)
        return batch

    def loss(self, model, batch):
        total, tokens = live_divergence(self, model, batch.chosen, self.config.beta)
        return LossOutput([Term("jsd", total, "chosen_tokens")], student_tokens=tokens)
