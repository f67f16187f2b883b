"""ADPA and ADPA+ (Gao et al., arXiv 2502.17927): the student maximises, along its own answers, the expected
advantage of its next-token distribution, the advantage being the aligned teacher's log-ratio to its reference:

    A(s_t, a) = log pi_dpo(a | s_t) - log pi_ref(a | s_t)
    L_ADPA    = - sum_t sum_a pi_theta(a | s_t) * A(s_t, a)

over the DPO teacher's top-k tokens a at every position t of the starting student's greedy answer. ADPA+ is
the same loss started from the DCKD student (a stage dependency: the run's own DCKD, trained once). The signal
(the student's answers with both teachers' log-probs) is in methods/adpa/signal.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import BenchError
from harness.lazy import torch
from harness.losses import bucket_logps, forward, forward_pair, packed, response_mask, token_logps
from harness.method import LossOutput, Method, MethodConfig, Term
from harness.recipes import Recipe
from harness.registry import register_method

FLOOR = 1e-7  # the official code's probability floor before logs
CLAMP = 1e-8  # the official code's advantage clamp [1e-8, 1 - 1e-8] (prob_stabilize)


ADPA_CODE = "gaoshiping/ADPA@a95c32f"  # the first author's release of the paper's code and recipes
RECIPE = "recipes/llama3.2-1b-deita-dpomix/student_adpa.yaml"


@dataclass
class ADPAConfig(MethodConfig):
    """Defaults: the released code's recipe (``official``, see RECIPES below for file and line of each value).

    advantage_mode: "clamped_official" (the released code: probabilities floored at 1e-7, a reference token
        outside the reference's own top-k imputed with the DPO teacher's smallest top-k probability, A clamped to
        [1e-8, 1 - 1e-8] by the loader's default ``prob_stabilize=True`` so negative advantages vanish, and the
        rest bucket given 1e-8) or "signed" (the paper's A = log pi_dpo - log pi_ref; tokens outside the teacher's
        top-k get no advantage).
    reference: the model pi_ref of the advantage. "student" (the released commands: the reference log-probs are
        computed with the starting student's checkpoint) or "teacher" (the paper: the teacher before DPO).
    adpa_weight: scale of the ADPA term (the code's ``adpa_weight``; the paper states no beta).
    sft_weight: token-mean NLL on the data set's chosen response (the code's ``sft_on_chosen``).
    teacher_dpo: where pi_dpo comes from. False: the pair's teacher is the aligned teacher (the same one DCKD
        distils), and with reference "teacher" the pair must name its pre-DPO teacher (``Pair.reference_teacher``).
        True: a cached teacher-DPO stage trains the pair's teacher with DPO on the run's preference rows (same
        rows, order and steps as the budget) at ``teacher_dpo_lr`` and ``teacher_dpo_beta``; it becomes pi_dpo
        and the untouched teacher pi_ref. The stage logs its drift, KL(teacher || DPO teacher) on held-out rows.
    teacher_dpo_beta, teacher_dpo_lr: the released teacher-DPO recipe's beta 0.01 and lr 5e-7.

    The student's answers are greedy (temperature 0) as in the released code, one per prompt, at most the
    budget's ``gen_max_new_tokens``; an answer cut there has no end-of-turn token. The loss is a token mean over
    the answers' tokens in the optimizer step (the code: per micro-batch of one sequence).
    Not reproduced: the code's ``adpa_importance_sampling`` (off in the released recipe).
    """

    advantage_mode: str = "clamped_official"
    reference: str = "student"
    adpa_weight: float = 1.6
    sft_weight: float = 1.0
    teacher_dpo: bool = False
    teacher_dpo_beta: float = 0.01
    teacher_dpo_lr: float = 5e-7

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
        if self.teacher_dpo_lr <= 0:
            raise BenchError(f"adpa: teacher_dpo_lr must be positive, got {self.teacher_dpo_lr}.")


RECIPES = {
    "official": Recipe(
        "The released code and recipe: clamped advantage, the starting student as reference, NLL + 1.6 ADPA.",
        {"advantage_mode": "clamped_official", "reference": "student", "adpa_weight": 1.6, "sft_weight": 1.0,
         "teacher_dpo": False},
        {"advantage_mode": f"{ADPA_CODE} utils/compress_logits.py:259 (prob_stabilize=True), :435-437 (clamp); "
                           "utils/merge_logits_adpa_dataset.py:11-17 (floors, imputation)",
         "reference": f"{ADPA_CODE} README.md:305,323 (the refteacher log-probs are computed with the student "
                      "checkpoint the run starts from)",
         "adpa_weight": f"{ADPA_CODE} {RECIPE}:46", "sft_weight": f"{ADPA_CODE} {RECIPE}:41",
         "teacher_dpo": f"{ADPA_CODE} README.md:269,287 (pi_dpo is the aligned teacher; the pair's teacher here, "
                        "as DCKD's)"},
        learning_rate=5e-7, source=f"{ADPA_CODE} {RECIPE}"),
    "paper": Recipe(
        "The paper's equation: signed advantage of the DPO teacher over its pre-DPO self, no NLL term.",
        {"advantage_mode": "signed", "reference": "teacher", "adpa_weight": 1.0, "sft_weight": 0.0,
         "teacher_dpo": True},
        {"advantage_mode": "arXiv 2502.17927, the ADPA objective (A = log pi_dpo - log pi_ref)",
         "reference": "arXiv 2502.17927: pi_ref is the reference (SFT) teacher before DPO",
         "adpa_weight": "arXiv 2502.17927: no scale on the advantage term",
         "sft_weight": "arXiv 2502.17927: the ADPA loss alone",
         "teacher_dpo": f"arXiv 2502.17927 pipeline (teacher SFT -> DPO); {ADPA_CODE} "
                        "recipes/llama3.2-1b-deita-dpomix/teacher_dpo.yaml:21,38 (lr 5e-7, beta 0.01)"},
        learning_rate=5e-7, source="arXiv 2502.17927"),
}


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
    recipes = RECIPES
    default_recipe = "official"

    def check_pair(self, pair):
        if self.config.reference == "teacher" and not self.config.teacher_dpo and pair.reference_teacher is None:
            raise BenchError(
                f"{self.name}: reference=teacher needs the teacher before DPO, and pair {pair.name!r} names none "
                f"(its teacher is already the aligned one). Add --option {self.name}.teacher_dpo=true to make a "
                f"DPO teacher from it (the paper recipe, {self.name}@paper, does), or use reference=student (the "
                "released recipe).")

    def signal_options(self, name):
        cfg = self.config
        dpo = {"beta": cfg.teacher_dpo_beta, "lr": cfg.teacher_dpo_lr} if cfg.teacher_dpo else None
        return {"reference": cfg.reference, "teacher_dpo": dpo}

    def loss(self, model, batch):
        cfg = self.config
        sig = batch.signals["adpa_advantage"]
        seqs = sig["seqs"]
        both = forward_pair(model, seqs, batch.chosen) if cfg.sft_weight > 0 else None
        logits = both[0] if both else forward(model, seqs)
        s_topk, s_rest = bucket_logps(logits, packed(sig["ids"], seqs))
        adv, adv_rest = (official_advantage if cfg.advantage_mode == "clamped_official" else signed_advantage)(sig)
        adv, adv_rest = adv.to(logits.device), adv_rest.to(logits.device)
        expected = (s_topk.exp() * packed(adv, seqs)).sum(-1) + s_rest.exp() * packed(adv_rest, seqs, 0)
        mask = response_mask(seqs)
        terms = [Term("adpa", -cfg.adpa_weight * expected.sum(), "adpa_advantage_tokens")]
        tokens = seqs.n_tokens
        if cfg.sft_weight > 0:
            logp, _ = token_logps(both[1], batch.chosen)
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


