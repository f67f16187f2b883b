"""Reverse KL on the student's own samples: MiniLLM's objective (Gu et al. 2024, arXiv 2306.08543) without
its policy-gradient machinery."""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import BenchError
from harness.method import LossOutput, Method, MethodConfig, Term
from harness.recipes import Recipe
from harness.registry import register_method
from methods.gkd import live_divergence, on_policy


@dataclass
class RKLConfig(MethodConfig):
    """Every micro-batch's responses are sampled from the current student (top-k 0, top-p 1, at
    ``temperature``), and the loss is the token-level full-vocabulary KL(student || teacher) on them, against
    the live teacher, a token mean over the step.

    This is MiniLLM's "single-step" reverse-KL term alone: no PPO, no sequence-level reward, no teacher-mixed
    sampling and no pre-training LM loss. Gradients flow through the student's distribution at each position,
    not through the sampling (the samples are treated as fixed data), which is the usual token-level surrogate.
    """

    temperature: float = 1.0

    def __post_init__(self):
        if self.temperature <= 0:
            raise BenchError(f"rkl: temperature must be positive, got {self.temperature}.")


RECIPES = {
    "paper": Recipe("Token-level KL(student || teacher) on the student's samples (MiniLLM's single-step term).",
                    {"temperature": 1.0}, {"temperature": "arXiv 2306.08543 (samples at temperature 1)"},
                    source="arXiv 2306.08543"),
}


@register_method("rkl")
class RKL(Method):
    description = "Token-level reverse KL(student || teacher) on the student's own on-policy samples."
    paper = "MiniLLM objective, Gu et al. 2024 (ICLR), arXiv 2306.08543 (without PPO)"
    Config = RKLConfig
    recipes = RECIPES
    default_recipe = "paper"
    needs = ("teacher_model",)
    needs_shared_vocab = True

    def prepare_batch(self, model, batch, rng):
        return on_policy(self, model, batch, rng, self.config.temperature)

    def loss(self, model, batch):
        total, tokens = live_divergence(self, model, batch.chosen, beta=1.0)
        return LossOutput([Term("rkl", total, "chosen_tokens")], student_tokens=tokens)
