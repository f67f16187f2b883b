"""PAD (Gu et al. 2025, ACL Findings, arXiv 2502.14272): preference distillation over the distribution of all
rankings of several student samples, matching the student's Plackett-Luce distribution to the teacher's. The
signal (the student's samples, scored by the teacher) is in methods/pad/signal.py, the MCQ score in mcq.py."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from harness.errors import BenchError
from harness.lazy import torch
from harness.losses import forward, sequence_logps
from harness.method import LossOutput, Method, MethodConfig, Term
from harness.recipes import Recipe
from harness.registry import register_method


@dataclass
class PADConfig(MethodConfig):
    """Defaults: the released config (``official``): the teacher's MCQ score alone as its reward (alpha 0), the
    code's JSD form, 4 of 5 samples kept by diversity, the MCQ training filter. ``pad@paper``: likelihood rewards
    on both sides, the textbook JSD, no filters.

    Rewards: the student's r_S(y) is its length-normalised log-likelihood of sample y; the teacher's r_T(y) mixes
    its own length-normalised log-likelihood (it scores with its own tokenizer and template, so the pair need not
    share one) and its MCQ score by alpha (below). The ``samples_per_prompt`` samples come from the initial student at temperature 1,
    top-p 0.95, one seed per sample index, once per run (the budget fixes how many).

    beta: the Plackett-Luce scale, on both rewards (official config: 10).
    loss: "pd" — the Jensen-Shannon divergence between the two distributions over all n! rankings (the paper's
        preference-distribution loss); "rd" — the "vanilla" loss, -log P_PL(tau_T; r_S) of the teacher's ranking.
    jsd_form: "textbook" — 0.5 [KL(P_S||M) + KL(P_T||M)]; "official" — the official code's
        0.5 [KL(M||P_S) + KL(M||P_T)] (also zero iff P_S = P_T).
    The mixture M is formed per example. (The official code pools it across a micro-batch — exact only at
    per-device batch 1 — which is a bug we do not reproduce.) The loss is a mean over prompts.

    alpha: the teacher's reward is alpha * (its length-normalised log-likelihood) + (1 - alpha) * (its
        multiple-choice preference score), as the official code's r_T; the released config's 0 uses the MCQ score
        alone, 1 is the paper's intrinsic likelihood reward. The MCQ score shows the teacher each pair of samples
        as options A and B in fixed order, in the released prompt (methods/pad/mcq.py says where it is read from),
        and reads P(A), P(B) from its top-20 next tokens; s_mcq(i) = log((1e-8 + sum_j P(i over j)) / (n - 1)).
        With loss "rd" the teacher's ranking is by the MCQ score alone whatever alpha, as in the code.
    diverse_from: when above the budget's n = samples_per_prompt, draw this many samples and keep the n most
        mutually different by Levenshtein distance (the official aggregation keeps 4 of 5); a prompt whose n
        kept samples are not all distinct is left out (the official code drops it). 0: off.
    mcq_filter: the official training filter: keep a prompt only if some sample has exp(s_mcq) > 0.5 and some
        has exp(s_mcq) <= 0.5 (needs the MCQ score, computed whenever alpha < 1 or this is set).
    Left-out prompts leave the training set, as the released run_pad.py removes them before training
    (scripts/run_pad.py:99-102,193-194): pad makes the budget's passes over the kept prompts only, so it runs at
    most the budget's optimizer steps, and its learning-rate schedule spans the steps it runs; the record gives
    ``rows_trained``. With no prompt kept, no step runs and the row is its starting student.
    """

    beta: float = 10.0
    loss: str = "pd"
    jsd_form: str = "official"
    alpha: float = 0.0
    diverse_from: int = 5
    mcq_filter: bool = True

    def __post_init__(self):
        if self.beta <= 0:
            raise BenchError(f"pad: beta must be positive, got {self.beta}.")
        if self.loss not in ("pd", "rd"):
            raise BenchError(f"pad: loss must be 'pd' or 'rd', got {self.loss!r}.")
        if self.jsd_form not in ("textbook", "official"):
            raise BenchError(f"pad: jsd_form must be 'textbook' or 'official', got {self.jsd_form!r}.")
        if not 0.0 <= self.alpha <= 1.0:
            raise BenchError(f"pad: alpha must be in [0, 1], got {self.alpha}.")
        if self.diverse_from < 0:
            raise BenchError(f"pad: diverse_from cannot be negative, got {self.diverse_from}.")


def permutations(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.permutations(range(n))), dtype=torch.long)


def plackett_luce_logp(rewards: torch.Tensor, perms: torch.Tensor, beta: float) -> torch.Tensor:
    """log P(tau; r) = sum_k [beta r_tau_k - log sum_{m >= k} exp(beta r_tau_m)] for every ranking tau.

    rewards [B, n], perms [P, n] -> [B, P].
    """
    scaled = beta * rewards[:, perms]  # [B, P, n]
    tail = torch.logcumsumexp(scaled.flip(-1), dim=-1).flip(-1)
    return (scaled - tail).sum(-1)


def ranking_jsd(logp_s: torch.Tensor, logp_t: torch.Tensor, form: str = "textbook") -> torch.Tensor:
    """JSD between two distributions over rankings given as log-probs [B, P], per example [B]."""
    log_m = torch.logsumexp(torch.stack([logp_s, logp_t]), dim=0) - math.log(2)
    if form == "official":
        m = log_m.exp()
        return 0.5 * ((m * (log_m - logp_s)).sum(-1) + (m * (log_m - logp_t)).sum(-1))
    return 0.5 * ((logp_s.exp() * (logp_s - log_m)).sum(-1) + (logp_t.exp() * (logp_t - log_m)).sum(-1))


PAD_CODE = "EganGu/PAD@89f2a91"
CONFIG = "training_configs/gemma-2-2b-it-pd.yaml"
RECIPES = {
    "official": Recipe(
        "The released config: MCQ-score teacher rewards, the code's JSD form, 4 of 5 diverse samples, MCQ filter.",
        {"beta": 10.0, "loss": "pd", "jsd_form": "official", "alpha": 0.0, "diverse_from": 5, "mcq_filter": True},
        {"beta": f"{PAD_CODE} {CONFIG}:18", "alpha": f"{PAD_CODE} {CONFIG}:19", "loss": f"{PAD_CODE} {CONFIG}:23",
         "jsd_form": f"{PAD_CODE} scripts/simpo_trainer.py:876-891",
         "diverse_from": f"{PAD_CODE} data_gen/scripts/sampling.sh:10 (seeds 0-4), data_gen/gen/agg.py:20-57",
         "mcq_filter": f"{PAD_CODE} scripts/run_pad.py:99-102,193-194"},
        learning_rate=8e-7, source=f"{PAD_CODE} {CONFIG}"),
    "paper": Recipe(
        "The paper's intrinsic reward: both models' length-normalised likelihoods, textbook JSD, no filters.",
        {"beta": 10.0, "loss": "pd", "jsd_form": "textbook", "alpha": 1.0, "diverse_from": 0, "mcq_filter": False},
        {"alpha": "arXiv 2502.14272 (likelihood as the intrinsic reward)",
         "jsd_form": "Jensen-Shannon divergence as defined", "beta": f"{PAD_CODE} {CONFIG}:18"},
        source="arXiv 2502.14272"),
}


@register_method("pad")
class PAD(Method):
    description = "Match the student's Plackett-Luce distribution over rankings of its own samples to the teacher's."
    paper = "Gu et al. 2025 (ACL Findings), arXiv 2502.14272"
    Config = PADConfig
    needs = ("scored_samples",)
    recipes = RECIPES
    default_recipe = "official"

    def signal_options(self, name):
        cfg, options = self.config, {}
        if cfg.alpha < 1 or cfg.mcq_filter or cfg.loss == "rd":
            options["mcq"] = True
        if cfg.diverse_from:
            options["diverse_from"] = cfg.diverse_from
        return options

    def kept(self, signal: dict) -> torch.Tensor | None:
        """Prompts the loss keeps under the diversity and MCQ filters; None when no filter is on."""
        keep = None
        if "distinct" in signal:
            keep = signal["distinct"].bool()
        if self.config.mcq_filter:
            p = signal["mcq"].exp()
            mixed = (p > 0.5).any(-1) & (p <= 0.5).any(-1)
            keep = mixed if keep is None else keep & mixed
        return keep

    def narrows_rows(self):
        return self.config.mcq_filter or self.config.diverse_from > 0

    def training_rows(self, signals, n_rows):
        # run_pad.py removes the prompts its filters reject from the training set before the trainer sees it, so
        # its steps (and its schedule) cover the kept prompts only; the per-batch mask below stays as the guard
        # for rows the trainer adds to complete a last step.
        keep = self.kept(signals["scored_samples"]) if self.narrows_rows() else None
        return None if keep is None else keep.nonzero().flatten().tolist()

    def prepare_batch(self, model, batch, rng):
        keep = self.kept(batch.signals["scored_samples"])
        if keep is not None:  # the mean is over kept prompts: Batch.counts reads "keep" as scored_samples_kept
            batch.signals["scored_samples"]["keep"] = keep
        return batch

    def inert(self, batch):
        # Every prompt filtered out: its losses are multiplied by 0, so the step gains nothing from the forward.
        keep = batch.signals["scored_samples"].get("keep")
        return keep is not None and not bool(keep.any())

    def loss(self, model, batch):
        cfg = self.config
        signal = batch.signals["scored_samples"]
        seqs, r_t = signal["seqs"], signal["teacher_scores"]
        b, n = r_t.shape
        if n < 2:
            raise BenchError("pad needs at least 2 samples per prompt to rank; the budget has samples_per_prompt=1. "
                             "Use --set samples_per_prompt=4 (the paper's n).")
        if cfg.loss == "rd":  # the released code ranks by the MCQ score alone here (simpo_trainer.py:1194)
            r_t = signal["mcq"].to(r_t.device)
        elif cfg.alpha < 1:
            r_t = cfg.alpha * r_t + (1 - cfg.alpha) * signal["mcq"].to(r_t.device)
        total, count = sequence_logps(forward(model, seqs), seqs)
        r_s = (total / count.clamp(min=1)).view(b, n)
        perms = permutations(n).to(r_s.device)
        logp_s = plackett_luce_logp(r_s, perms, cfg.beta)
        if cfg.loss == "pd":
            losses = ranking_jsd(logp_s, plackett_luce_logp(r_t, perms, cfg.beta), cfg.jsd_form)
        else:
            teacher_order = torch.argsort(r_t, dim=-1, descending=True)  # [B, n]
            scaled = cfg.beta * torch.gather(r_s, 1, teacher_order)
            losses = -(scaled - torch.logcumsumexp(scaled.flip(-1), -1).flip(-1)).sum(-1)
        agree = (torch.argsort(r_s.detach(), -1, descending=True)[:, 0] == torch.argmax(r_t, -1)).float().mean()
        per = "pairs"
        if "keep" in signal:
            losses, per = losses * signal["keep"].to(losses.dtype), "scored_samples_kept"
        return LossOutput([Term(cfg.loss, losses.sum(), per)], student_tokens=seqs.n_tokens,
                          stats={"top1_agreement": float(agree)})
