"""DPKD (Li et al. 2024, arXiv 2406.19774): direct preference knowledge distillation — the teacher acts as the
reference policy and its own outputs are preferred over the student's."""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import BenchError
from harness.lazy import torch
from harness.losses import (
    forward,
    forward_pair,
    sequence_logps,
    smoothed_sigmoid_loss,
    stack_sides,
    token_logps,
)
from harness.method import LossOutput, Method, MethodConfig, Term, check_label_smoothing
from harness.recipes import Recipe
from harness.registry import register_method


@dataclass
class DPKDConfig(MethodConfig):
    """Defaults: the released code's recipe (``official``, the token_argmax variant); ``dpkd@paper`` is the sequence form.

    variant "sequence" (the paper's form): the paper derives an implicit reward from a reverse-KL
    regularised objective (its first stage) and then maximises the Bradley-Terry probability that the teacher's
    output y_t beats the student's y_s, with the teacher p as reference:
        L = -log sigmoid(beta [log q(y_t)/p(y_t) - log q(y_s)/p(y_s)])   (summed log-probs)
    y_t is the teacher's greedy answer, y_s one temperature-1 sample of the initial student, both generated once
    per run; the teacher's log-probs come from the live teacher.

    variant "token_argmax" (the released microsoft/LMOps ``dpkd/``, ``--seqKD-DPO``; default): teacher-forced on
    the data set's chosen response (the released runner's are the teacher's pseudo-labels), at each position h_t = [log q(argmax p) - log q(argmax q)] - [log p(argmax p) - log p(argmax q)];
    the per-token DPO loss is mixed with the NLL: (1 - kd_ratio) CE + kd_ratio * mean_t loss_t. Positions where
    the two argmaxes agree contribute log 2 and no gradient. (The code's bf16 log-softmax is not reproduced: fp32.)

    beta: 0.1 (LMOps default). label_smoothing: conservative epsilon. kd_ratio: token variant only (0.5 there).
    """

    variant: str = "token_argmax"
    beta: float = 0.1
    label_smoothing: float = 0.0
    kd_ratio: float = 0.5

    def __post_init__(self):
        if self.variant not in ("sequence", "token_argmax"):
            raise BenchError(f"dpkd: variant must be 'sequence' or 'token_argmax', got {self.variant!r}.")
        if self.beta <= 0:
            raise BenchError(f"dpkd: beta must be positive, got {self.beta}.")
        check_label_smoothing("dpkd", self.label_smoothing)
        if not 0.0 <= self.kd_ratio <= 1.0:
            raise BenchError(f"dpkd: kd_ratio must be in [0, 1], got {self.kd_ratio}.")


LMOPS = "microsoft/LMOps@4f2a9de dpkd/"
RUNNER = "scripts/dpkd-gpt2_base_runner.sh"
RECIPES = {
    "official": Recipe(
        "The released code (microsoft/LMOps dpkd/, --seqKD-DPO): token-level argmax DPO mixed 50/50 with the NLL.",
        {"variant": "token_argmax", "beta": 0.1, "label_smoothing": 0.0, "kd_ratio": 0.5},
        {"variant": f"{LMOPS}{RUNNER}:80 (--seqKD-DPO), main.py:213-256", "kd_ratio": f"{LMOPS}{RUNNER}:82",
         "beta": f"{LMOPS}arguments.py:52 (the runner passes no --dpo-beta)",
         "label_smoothing": f"{LMOPS}arguments.py:51"},
        learning_rate=5e-4, source=f"{LMOPS}{RUNNER}"),
    "paper": Recipe(
        "The paper's form: sequence-level DPO, teacher as reference, teacher answer preferred to a student sample.",
        {"variant": "sequence", "beta": 0.1, "label_smoothing": 0.0},
        {"variant": "arXiv 2406.19774, the DPKD objective (Bradley-Terry on y_t over y_s, teacher as reference)",
         "beta": f"{LMOPS}arguments.py:52"},
        source="arXiv 2406.19774"),
}


@register_method("dpkd")
class DPKD(Method):
    description = "DPO with the teacher as reference: the teacher's answer preferred over the student's own."
    paper = "Li et al. 2024, arXiv 2406.19774"
    Config = DPKDConfig
    needs = ("teacher_samples", "student_samples", "teacher_model")  # the sequence variant's; token_argmax below
    needs_shared_vocab = True
    recipes = RECIPES
    default_recipe = "official"

    def __init__(self, config=None):
        super().__init__(config)
        if self.config.variant == "token_argmax":  # teacher-forced on the data's responses: no samples to make
            self.needs = ("teacher_model",)

    def loss(self, model, batch):
        if self.config.variant == "token_argmax":
            return self._token_loss(model, batch)
        cfg = self.config
        good, bad = batch.signals["teacher_samples"], batch.signals["student_samples"]
        logits_good, logits_bad = forward_pair(model, good, bad)
        q_good, _ = sequence_logps(logits_good, good)
        q_bad, _ = sequence_logps(logits_bad, bad)
        t_good, t_bad = self.live_teacher_logits(stack_sides(good, bad), logits_good.shape[-1]).split(
            [len(logits_good), len(logits_bad)])
        p_good, _ = sequence_logps(t_good, good)
        p_bad, _ = sequence_logps(t_bad, bad)
        h = cfg.beta * ((q_good - p_good) - (q_bad - p_bad))
        return LossOutput([Term("dpkd", smoothed_sigmoid_loss(h, cfg.label_smoothing).sum(), "pairs")],
                          student_tokens=good.n_tokens + bad.n_tokens,
                          stats={"reward_accuracy": float((h.detach() > 0).float().mean())})

    def _token_loss(self, model, batch):
        cfg = self.config
        seqs = batch.chosen
        logits = forward(model, seqs)
        lq = torch.log_softmax(logits, dim=-1)
        lp = torch.log_softmax(self.live_teacher_logits(seqs, logits.shape[-1]), dim=-1)
        y_t = lp.argmax(-1, keepdim=True)
        y_s = lq.detach().argmax(-1, keepdim=True)
        h = (lq.gather(-1, y_t) - lq.gather(-1, y_s) - (lp.gather(-1, y_t) - lp.gather(-1, y_s))).squeeze(-1)
        per_token = smoothed_sigmoid_loss(cfg.beta * h, cfg.label_smoothing)  # [N]: response positions only
        terms = [Term("dpkd", cfg.kd_ratio * per_token.sum(), "chosen_tokens")]
        if cfg.kd_ratio < 1:
            logp, _ = token_logps(logits, seqs)
            terms.append(Term("nll", -(1 - cfg.kd_ratio) * logp.sum(), "chosen_tokens"))
        disagree = float((y_t != y_s).float().mean()) if len(h) else 0.0
        return LossOutput(terms, student_tokens=seqs.n_tokens, stats={"argmax_disagreement": disagree})
