"""SimPO (Meng et al. 2024, arXiv 2405.14734): reference-free preference optimisation on length-normalised
log-probabilities with a target margin."""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import BenchError
from harness.losses import forward_pair, sequence_logps, smoothed_sigmoid_loss
from harness.method import LossOutput, Method, MethodConfig, Term, check_label_smoothing
from harness.recipes import Recipe
from harness.registry import register_method


@dataclass
class SimPOConfig(MethodConfig):
    """L = -log sigmoid(beta/|y_w| log pi(y_w) - beta/|y_l| log pi(y_l) - gamma), gamma = gamma_beta_ratio * beta.

    beta: reward scale (the paper's settings use 2.0-2.5; the official repo's configs use 2.0-10).
    gamma_beta_ratio: the target margin as a fraction of beta, as the official SimPO code parametrises it
        (0.5 there; TRL's CPOTrainer takes gamma directly, default 0.5; PAD's SimPO baseline hard-codes 0.3).
    label_smoothing: conservative variant's epsilon (0 = plain SimPO).
    """

    beta: float = 2.0
    gamma_beta_ratio: float = 0.5
    label_smoothing: float = 0.0

    def __post_init__(self):
        if self.beta <= 0:
            raise BenchError(f"simpo: beta must be positive, got {self.beta}.")
        if self.gamma_beta_ratio < 0:
            raise BenchError(f"simpo: gamma_beta_ratio cannot be negative, got {self.gamma_beta_ratio}.")
        check_label_smoothing("simpo", self.label_smoothing)


SIMPO = "princeton-nlp/SimPO@1b3e8f3"
RECIPES = {
    "official": Recipe(
        "The released code's margin parametrisation with its base-model config (beta 2.0, gamma = 0.5 beta).",
        {"beta": 2.0, "gamma_beta_ratio": 0.5, "label_smoothing": 0.0},
        {"beta": f"{SIMPO} training_configs/llama-3-8b-base-simpo.yaml:16",
         "gamma_beta_ratio": f"{SIMPO} training_configs/llama-3-8b-base-simpo.yaml:17; loss scripts/simpo_trainer.py:576-584",
         "label_smoothing": f"{SIMPO} scripts/simpo_config.py:58"},
        learning_rate=6e-7, source=f"{SIMPO} training_configs/llama-3-8b-base-simpo.yaml"),
    "pad_baseline": Recipe(
        "PAD's SimPO baseline and SimPO's instruct v2 config: beta 10, margin 0.3 beta.",
        {"beta": 10.0, "gamma_beta_ratio": 0.3, "label_smoothing": 0.0},
        {"beta": "EganGu/PAD@89f2a91 gemma-log/simpo.log:25; "
                 f"{SIMPO} training_configs/llama-3-8b-instruct-simpo-v2.yaml:16",
         "gamma_beta_ratio": "EganGu/PAD@89f2a91 scripts/simpo_trainer.py:933 (hard-coded 0.3); "
                             f"{SIMPO} training_configs/llama-3-8b-instruct-simpo-v2.yaml:17"},
        learning_rate=8e-7, source="EganGu/PAD@89f2a91 scripts/simpo_trainer.py"),
}


@register_method("simpo")
class SimPO(Method):
    description = "Reference-free DPO variant on length-normalised log-probs with a target margin."
    paper = "Meng et al. 2024, arXiv 2405.14734"
    Config = SimPOConfig
    recipes = RECIPES
    default_recipe = "official"

    def loss(self, model, batch):
        cfg = self.config
        logits_c, logits_r = forward_pair(model, batch.chosen, batch.rejected)
        pc, nc = sequence_logps(logits_c, batch.chosen)
        pr, nr = sequence_logps(logits_r, batch.rejected)
        h = cfg.beta * (pc / nc.clamp(min=1) - pr / nr.clamp(min=1)) - cfg.gamma_beta_ratio * cfg.beta
        losses = smoothed_sigmoid_loss(h, cfg.label_smoothing)
        return LossOutput([Term("simpo", losses.sum(), "pairs")],
                          student_tokens=batch.chosen.n_tokens + batch.rejected.n_tokens,
                          stats={"reward_accuracy": float((h.detach() > 0).float().mean())})
