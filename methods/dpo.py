"""DPO (Rafailov et al. 2023) on the data set's preference pairs, with the initial student as reference."""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import BenchError
from harness.losses import forward_pair, sequence_logps, smoothed_sigmoid_loss
from harness.method import LossOutput, Method, MethodConfig, Term, check_label_smoothing
from harness.recipes import Recipe
from harness.registry import register_method


@dataclass
class DPOConfig(MethodConfig):
    """beta: scale of the log-ratio (TRL's default 0.1; ADPA's teacher DPO uses 0.01).
    label_smoothing: conservative DPO's epsilon (0 = plain DPO).

    Log-probs are summed over response tokens. The reference log-probs are those of the frozen initial
    student, computed once per run (TRL's ``precompute_ref_log_probs``) and shared by every method needing them.
    """

    beta: float = 0.1
    label_smoothing: float = 0.0

    def __post_init__(self):
        if self.beta <= 0:
            raise BenchError(f"dpo: beta must be positive, got {self.beta}.")
        check_label_smoothing("dpo", self.label_smoothing)


RECIPES = {
    "paper": Recipe(
        "DPO with beta 0.1 (the paper's and TRL's default), the initial student as reference.",
        {"beta": 0.1, "label_smoothing": 0.0},
        {"beta": "arXiv 2305.18290; huggingface/trl DPOConfig default"}, source="arXiv 2305.18290"),
}


@register_method("dpo")
class DPO(Method):
    description = "Direct preference optimisation on chosen/rejected pairs, reference = initial student."
    paper = "Rafailov et al. 2023, arXiv 2305.18290"
    Config = DPOConfig
    recipes = RECIPES
    default_recipe = "paper"
    needs = ("reference_logps",)

    def loss(self, model, batch):
        logits_c, logits_r = forward_pair(model, batch.chosen, batch.rejected)
        pc, _ = sequence_logps(logits_c, batch.chosen)
        pr, _ = sequence_logps(logits_r, batch.rejected)
        ref = batch.signals["reference_logps"]  # [B, 2]: chosen, rejected
        h = self.config.beta * ((pc - ref[:, 0]) - (pr - ref[:, 1]))
        losses = smoothed_sigmoid_loss(h, self.config.label_smoothing)
        return LossOutput(
            [Term("dpo", losses.sum(), "pairs")],
            student_tokens=batch.chosen.n_tokens + batch.rejected.n_tokens,
            stats={"reward_accuracy": float((h > 0).float().mean()),
                   "reward_margin": float(h.detach().mean()) / self.config.beta},
        )
