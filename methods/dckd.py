"""DCKD (Gao et al., arXiv 2502.17927): KD with two KL constraints from the aligned teacher to the student,
one on the chosen and one on the rejected response of each preference pair."""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import BenchError
from harness.lazy import torch
from harness.losses import bucket_forward_kl, forward, forward_pair, packed_teacher_kl, token_logps
from harness.method import LossOutput, Method, MethodConfig, Term
from harness.recipes import Recipe
from harness.registry import register_method

ADPA_CODE = "gaoshiping/ADPA@a95c32f"
RECIPE = "recipes/llama3.2-1b-deita-dpomix/student_dckd.yaml"


@dataclass
class DCKDConfig(MethodConfig):
    """Defaults: the released recipe (``official``): 1 * NLL(chosen) + 0.1 * KL(chosen) + 0.1 * KL(rejected), with
    the code's clamps. The ``paper`` recipe is the equation alone: the two KL constraints, equal weights, exact.

    chosen_weight, rejected_weight: the two constraints' weights (the code's ``chosen_distil_weight`` and
        ``rejected_distil_weight``, times its ``distillation_weight`` of 1).
    sft_weight: token-mean NLL on the chosen response (the code's ``sft_on_chosen``).
    official_clamp: the code's probability clamps: both bucket distributions clamped to [1e-8, 1 - 1e-8] and the
        student's floored at 1e-7 before the log. Off, the KL is exact (the rest bucket's mass is a log-sum-exp,
        never 1 - sum(p) rounded to 0).

    Each side's KL is a token mean over that side's response tokens in the optimizer step. (The official code
    takes the token mean per micro-batch, which weights micro-batches equally whatever their token counts.)
    The teacher is the pair's aligned teacher; the distributions are its cached top-k plus a rest bucket.
    """

    chosen_weight: float = 0.1
    rejected_weight: float = 0.1
    sft_weight: float = 1.0
    official_clamp: bool = True

    def __post_init__(self):
        for name in ("chosen_weight", "rejected_weight", "sft_weight"):
            if getattr(self, name) < 0:
                raise BenchError(f"dckd: {name} cannot be negative, got {getattr(self, name)}.")
        if self.chosen_weight == 0 and self.rejected_weight == 0:
            raise BenchError("dckd: chosen_weight and rejected_weight are both 0, so there is no distillation term.")


def official_bucket_kl(t_topk, t_rest, s_topk, s_rest) -> torch.Tensor:
    """The official code's FKL51: probabilities clamped to [1e-8, 1-1e-8], student floored at 1e-7."""
    t = torch.cat([t_topk, t_rest.unsqueeze(-1)], -1).exp().clamp(1e-8, 1 - 1e-8)
    s = torch.cat([s_topk, s_rest.unsqueeze(-1)], -1).exp().clamp(1e-8, 1 - 1e-8).clamp(min=1e-7)
    return (t * (t.log() - s.log())).sum(-1)


RECIPES = {
    "official": Recipe(
        "The released recipe: NLL on chosen + 0.1 KL on chosen + 0.1 KL on rejected, clamped as the code.",
        {"chosen_weight": 0.1, "rejected_weight": 0.1, "sft_weight": 1.0, "official_clamp": True},
        {"chosen_weight": f"{ADPA_CODE} {RECIPE}:43-44 (distillation_weight 1 x chosen_distil_weight 0.1)",
         "rejected_weight": f"{ADPA_CODE} {RECIPE}:43,45", "sft_weight": f"{ADPA_CODE} {RECIPE}:41",
         "official_clamp": f"{ADPA_CODE} scripts/run_distill_dpo.py:1228-1236, utils/compress_logits.py:435-437"},
        learning_rate=5e-7, source=f"{ADPA_CODE} {RECIPE}"),
    "paper": Recipe(
        "The paper's equation: KL(pi_dpo || pi_theta) on chosen plus on rejected, equal weights, exact, no NLL.",
        {"chosen_weight": 1.0, "rejected_weight": 1.0, "sft_weight": 0.0, "official_clamp": False},
        {"chosen_weight": "arXiv 2502.17927, DCKD: two KL constraints", "rejected_weight": "arXiv 2502.17927",
         "sft_weight": "arXiv 2502.17927: the KL terms alone", "official_clamp": "exact KL"},
        source="arXiv 2502.17927"),
}


@register_method("dckd")
class DCKD(Method):
    description = "KL(aligned teacher || student) on both the chosen and the rejected response."
    paper = "Gao et al. 2025 (ICLR), arXiv 2502.17927"
    Config = DCKDConfig
    needs = ("teacher_topk:chosen", "teacher_topk:rejected")
    needs_shared_vocab = True
    recipes = RECIPES
    default_recipe = "official"

    def loss(self, model, batch):
        cfg = self.config
        kl_fn = official_bucket_kl if cfg.official_clamp else bucket_forward_kl
        terms, tokens = [], 0
        sides = [(side, seqs, weight) for side, seqs, weight in
                 (("chosen", batch.chosen, cfg.chosen_weight), ("rejected", batch.rejected, cfg.rejected_weight))
                 if weight > 0 or (side == "chosen" and cfg.sft_weight > 0)]
        both = forward_pair(model, batch.chosen, batch.rejected) if len(sides) == 2 else None
        for i, (side, seqs, weight) in enumerate(sides):
            logits = both[i] if both else forward(model, seqs)
            tokens += seqs.n_tokens
            if weight > 0:
                kl = packed_teacher_kl(logits, seqs, batch.signals[f"teacher_topk:{side}"], kl_fn)
                terms.append(Term(f"kl_{side}", weight * kl.sum(), f"{side}_tokens"))
            if side == "chosen" and cfg.sft_weight > 0:
                logp, _ = token_logps(logits, seqs)
                terms.append(Term("nll", -cfg.sft_weight * logp.sum(), "chosen_tokens"))
        return LossOutput(terms, student_tokens=tokens)
