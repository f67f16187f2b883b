"""SFT: maximum likelihood on the chosen responses."""

from __future__ import annotations

from dataclasses import dataclass

from harness.losses import forward, token_logps
from harness.method import LossOutput, Method, MethodConfig, Term
from harness.recipes import Recipe
from harness.registry import register_method


@dataclass
class SFTConfig(MethodConfig):
    """No hyperparameters: the loss is the token-mean NLL of the chosen responses over the optimizer step
    (a global token mean, not a mean of per-sequence means)."""


RECIPES = {"paper": Recipe("Token-mean NLL of the chosen responses (the standard baseline).", source="baseline")}


@register_method("sft")
class SFT(Method):
    description = "Supervised fine-tuning on the chosen responses (token-mean NLL)."
    paper = "baseline"
    Config = SFTConfig
    recipes = RECIPES
    default_recipe = "paper"

    def loss(self, model, batch):
        logp, _ = token_logps(forward(model, batch.chosen), batch.chosen)
        return LossOutput([Term("nll", -logp.sum(), "chosen_tokens")], student_tokens=batch.chosen.n_tokens)
