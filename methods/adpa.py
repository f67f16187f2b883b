"""ADPA and ADPA+ (Gao et al., arXiv 2502.17927): the student maximises, along its own answers, the expected
advantage of its next-token distribution, the advantage being the aligned teacher's log-ratio to its reference:

    A(s_t, a) = log pi_dpo(a | s_t) - log pi_ref(a | s_t)
    L_ADPA    = - sum_t sum_a pi_theta(a | s_t) * A(s_t, a)

over the DPO teacher's top-k tokens a at every position t of the starting student's greedy answer. ADPA+ is
the same loss started from the DCKD student (a stage dependency: the run's own DCKD, trained once).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.errors import BenchError
from harness.losses import bucket_logps, forward, response_mask, token_logps
from harness.method import LossOutput, Method, MethodConfig, Term
from harness.registry import register_method

FLOOR = 1e-7  # the official code's probability floor before logs
CLAMP = 1e-8  # the official code's advantage clamp [1e-8, 1 - 1e-8] (prob_stabilize)


@dataclass
class ADPAConfig(MethodConfig):
    """Paper form by default: signed advantages, the SFT (reference) teacher as reference.

    advantage_mode: "signed" (the paper: A may be negative, tokens outside the teacher's top-k get no
        advantage) or "clamped_official" (the official code: probabilities floored at 1e-7, a reference token
        outside the reference's own top-k imputed with the DPO teacher's smallest top-k probability, A clamped
        to [1e-8, 1 - 1e-8] so negative advantages vanish, and the rest bucket given 1e-8).
    reference: "teacher" (the paper: the reference teacher, i.e. the teacher before DPO) or "student" (the
        official README's command: the starting student's own log-probs).
    adpa_weight: scale of the ADPA term (the code's ``adpa_weight``; the paper states no beta).
    sft_weight: NLL on the data set's chosen response (the code's ``sft_on_chosen``; 0 in the paper form).
    teacher_dpo_beta, teacher_dpo_lr: the teacher-DPO stage, run when the pair names no reference teacher: the
        pair's teacher is trained with DPO on the run's preference rows (same rows, order and steps as the
        budget) and becomes pi_dpo, the untouched teacher pi_ref. beta 0.01 is the official recipe's; its lr
        5e-7 (for an 8B teacher over a full epoch of 7k pairs) would leave a small budget's teacher unchanged,
        so the default (None) uses the budget's learning rate instead, and says so in the signal record.

    The student's answers are greedy (temperature 0) as in the official code, one per prompt, at most the
    budget's ``gen_max_new_tokens``. The loss is a token mean over the answers' tokens in the optimizer step.
    Not reproduced: the code's ``adpa_importance_sampling`` (a non-detached sequence weight on a batch mean).
    """

    advantage_mode: str = "signed"
    reference: str = "teacher"
    adpa_weight: float = 1.0
    sft_weight: float = 0.0
    teacher_dpo_beta: float = 0.01
    teacher_dpo_lr: float | None = None

    def __post_init__(self):
        if self.advantage_mode not in ("signed", "clamped_official"):
            raise BenchError(f"adpa: advantage_mode must be signed or clamped_official, got {self.advantage_mode!r}.")
        if self.reference not in ("teacher", "student"):
            raise BenchError(f"adpa: reference must be teacher or student, got {self.reference!r}.")
        if self.adpa_weight <= 0:
            raise BenchError(f"adpa: adpa_weight must be positive, got {self.adpa_weight}.")
        if self.sft_weight < 0:
            raise BenchError(f"adpa: sft_weight cannot be negative, got {self.sft_weight}.")
        if self.teacher_dpo_beta <= 0:
            raise BenchError(f"adpa: teacher_dpo_beta must be positive, got {self.teacher_dpo_beta}.")
        if self.teacher_dpo_lr is not None and self.teacher_dpo_lr <= 0:
            raise BenchError(f"adpa: teacher_dpo_lr must be positive when set, got {self.teacher_dpo_lr}.")


def signed_advantage(sig: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages of the top-k tokens and of the rest bucket (none: 0)."""
    adv = sig["dpo_logps"] - sig["ref_logps"]
    return adv, torch.zeros(adv.shape[:-1])


def official_advantage(sig: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The official ``get_margin_logp_token`` followed by the ``prob_stabilize`` clamp."""
    p_dpo = sig["dpo_logps"].exp().clamp(min=FLOOR)
    imputed = p_dpo.min(dim=-1, keepdim=True).values.expand_as(p_dpo)
    p_ref = torch.where(sig["ref_in_topk"], sig["ref_logps"].exp(), imputed).clamp(min=FLOOR)
    adv = (p_dpo.log() - p_ref.log()).clamp(CLAMP, 1 - CLAMP)
    return adv, torch.full(adv.shape[:-1], CLAMP)


@register_method("adpa")
class ADPA(Method):
    description = "Maximise the aligned teacher's advantage (log pi_dpo - log pi_ref) along the student's own answers."
    paper = "Gao et al. 2025 (ICLR), arXiv 2502.17927"
    Config = ADPAConfig
    needs = ("adpa_advantage",)
    needs_shared_vocab = True

    def signal_options(self, name):
        lr = self.config.teacher_dpo_lr
        return {"reference": self.config.reference,
                "teacher_dpo": {"beta": self.config.teacher_dpo_beta, "lr": lr if lr is not None else "budget"}}

    def loss(self, model, batch):
        cfg = self.config
        sig = batch.signals["adpa_advantage"]
        seqs = sig["seqs"]
        logits = forward(model, seqs)
        s_topk, s_rest = bucket_logps(logits, sig["ids"])
        adv, adv_rest = (official_advantage if cfg.advantage_mode == "clamped_official" else signed_advantage)(sig)
        adv, adv_rest = adv.to(logits.device), adv_rest.to(logits.device)
        expected = (s_topk.exp() * adv).sum(-1) + s_rest.exp() * adv_rest
        mask = response_mask(seqs)
        terms = [Term("adpa", -cfg.adpa_weight * (expected * mask).sum(), "adpa_advantage_tokens")]
        tokens = seqs.n_tokens
        if cfg.sft_weight > 0:
            logp, _ = token_logps(forward(model, batch.chosen), batch.chosen)
            terms.append(Term("nll", -cfg.sft_weight * logp.sum(), "chosen_tokens"))
            tokens += batch.chosen.n_tokens
        signed = sig["dpo_logps"] - sig["ref_logps"]  # whatever the mode: how often the teacher's DPO raised a token
        slots = max(float(mask.sum()) * adv.shape[-1], 1.0)
        positive = float(((signed.to(mask.device) > 0) & mask.bool().unsqueeze(-1)).sum()) / slots
        return LossOutput(terms, student_tokens=tokens,
                          stats={"advantage_positive_fraction": positive,
                                 "advantage_mean": float((adv * mask.unsqueeze(-1)).sum()) / slots})


@register_method("adpa_plus")
class ADPAPlus(ADPA):
    description = "ADPA started from the DCKD student (the run's own DCKD stage, trained once and shared)."
    starts_from = "dckd"


