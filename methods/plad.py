"""PLaD (Zhang et al. 2024, ACL Findings, arXiv 2406.02886): preference-based distillation from pseudo-preference
pairs — the teacher's answer is taken as better than the student's — with a calibration loss on the student's
sequence likelihood. Black-box: only the teacher's text is used, so any tokenizer works.

No official code exists. Every choice below is ours, made from the abstract and the SLiC line of work the
paper's calibration loss comes from, and recorded in the config.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import BenchError
from harness.lazy import torch
from harness.losses import forward_pair, log_sigmoid, sequence_logps, token_logps
from harness.method import LossOutput, Method, MethodConfig, Term
from harness.recipes import Recipe
from harness.registry import register_method


@dataclass
class PLaDConfig(MethodConfig):
    """Pairs: y+ = the teacher's greedy answer, y- = one answer sampled (temperature 1, seeded) from the initial
    student; both are generated once per run and shared with other methods.

    loss: "hinge" — SLiC-style calibration, max(0, delta - s(y+) + s(y-)) — or "sigmoid" — a Bradley-Terry
        ranking loss, -log sigmoid(beta * (s(y+) - s(y-))).
    score: "sum" (log P(y|x), the sequence likelihood; the PAD repository's PLaD traces use the sum) or "mean"
        (per-token mean, which removes the length advantage of short answers).
    delta: the hinge margin. beta: the sigmoid scale.
    sft_weight: weight of an added token-mean NLL on y+ (SLiC's regulariser); 0 = ranking loss alone.
    """

    loss: str = "hinge"
    score: str = "sum"
    delta: float = 1.0
    beta: float = 0.1
    sft_weight: float = 0.0

    def __post_init__(self):
        if self.loss not in ("hinge", "sigmoid"):
            raise BenchError(f"plad: loss must be 'hinge' or 'sigmoid', got {self.loss!r}.")
        if self.score not in ("sum", "mean"):
            raise BenchError(f"plad: score must be 'sum' or 'mean', got {self.score!r}.")
        if self.delta < 0 or self.beta <= 0 or self.sft_weight < 0:
            raise BenchError("plad: delta and sft_weight cannot be negative and beta must be positive.")


RECIPES = {
    "paper": Recipe(
        "Our reading of the paper (no code released): hinge calibration, summed log-probs, margin 1, no NLL.",
        {"loss": "hinge", "score": "sum", "delta": 1.0, "sft_weight": 0.0},
        {"loss": "arXiv 2406.02886 (calibration loss; exact form unverified)",
         "score": "summed log-probs, as the PLaD traces in EganGu/PAD@89f2a91 scripts/simpo_trainer.py:1071"},
        source="arXiv 2406.02886"),
}


@register_method("plad")
class PLaD(Method):
    description = "Calibration loss ranking the teacher's answer above the student's own (pseudo-preference pairs)."
    paper = "Zhang et al. 2024 (ACL Findings), arXiv 2406.02886 (no official code)"
    Config = PLaDConfig
    recipes = RECIPES
    default_recipe = "paper"
    needs = ("teacher_samples", "student_samples")

    def loss(self, model, batch):
        cfg = self.config
        good, bad = batch.signals["teacher_samples"], batch.signals["student_samples"]
        logits_good, logits_bad = forward_pair(model, good, bad)
        s_good, n_good = sequence_logps(logits_good, good)
        s_bad, n_bad = sequence_logps(logits_bad, bad)
        if cfg.score == "mean":
            s_good, s_bad = s_good / n_good.clamp(min=1), s_bad / n_bad.clamp(min=1)
        diff = s_good - s_bad
        losses = torch.relu(cfg.delta - diff) if cfg.loss == "hinge" else -log_sigmoid(cfg.beta * diff)
        terms = [Term("rank", losses.sum(), "pairs")]
        if cfg.sft_weight > 0:
            logp, _ = token_logps(logits_good, good)
            terms.append(Term("nll", -cfg.sft_weight * logp.sum(), "teacher_samples_tokens"))
        return LossOutput(terms, student_tokens=good.n_tokens + bad.n_tokens,
                          stats={"pair_accuracy": float((diff.detach() > 0).float().mean())})
