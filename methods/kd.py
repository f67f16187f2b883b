"""KD: token-level forward KL from the teacher to the student on fixed (dataset) responses."""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import BenchError
from harness.losses import forward, teacher_forward_kl, token_logps
from harness.method import LossOutput, Method, MethodConfig, Term
from harness.recipes import Recipe
from harness.registry import register_method


@dataclass
class KDConfig(MethodConfig):
    """Word-level KD (Hinton et al. 2015) as used by the seed papers' KD baselines.

    ce_weight: weight of an added NLL term on the chosen response; the loss is (1 - ce_weight)·KL +
        ce_weight·NLL (DistiLLM/MiniLLM's ``--kd-ratio`` is 1 - ce_weight). 0 is pure KD.

    The teacher distribution comes from the cached top-k signal, so the KL is taken between the (k + 1)-bucket
    coarsenings (top-k plus a rest bucket), a lower bound on the full-vocabulary KL; k is the budget's
    ``teacher_top_k``. The loss temperature is 1, as in the cache.
    """

    ce_weight: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.ce_weight <= 1.0:
            raise BenchError(f"kd: ce_weight must be in [0, 1], got {self.ce_weight}.")


RECIPES = {
    "paper": Recipe("Forward KL(teacher || student) per token, no cross-entropy term.", {"ce_weight": 0.0},
                    {"ce_weight": "arXiv 1503.02531 (the KD term alone; a CE mix is an option)"},
                    source="arXiv 1503.02531"),
}


@register_method("kd")
class KD(Method):
    description = "Forward KL(teacher || student) per token on the chosen responses."
    paper = "Hinton et al. 2015, arXiv 1503.02531"
    Config = KDConfig
    recipes = RECIPES
    default_recipe = "paper"
    needs = ("teacher_topk:chosen",)
    needs_shared_vocab = True

    def loss(self, model, batch):
        logits = forward(model, batch.chosen)
        kl, _ = teacher_forward_kl(logits, batch.chosen, batch.signals["teacher_topk:chosen"])
        w = self.config.ce_weight
        terms = [Term("kl", (1 - w) * kl.sum(), "chosen_tokens")]
        if w > 0:
            logp, _ = token_logps(logits, batch.chosen)
            terms.append(Term("nll", -w * logp.sum(), "chosen_tokens"))
        return LossOutput(terms, student_tokens=batch.chosen.n_tokens)
