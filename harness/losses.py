"""Shared loss arithmetic: log-probs of response tokens, teacher top-k buckets, divergences.

Conventions (see shared/reference/methods.md, section 11): logits at position t predict the token at t+1, so
every per-token quantity here is over ``logits[:, :-1]`` and ``labels[:, 1:]``. All of it runs in fp32.
"""

from __future__ import annotations

import math

from harness.batch import IGNORE, Sequences
from harness.lazy import F, torch


def forward(model, seqs: Sequences) -> torch.Tensor:
    """Logits aligned with the next token: [B, T-1, V], fp32."""
    out = model(input_ids=seqs.input_ids, attention_mask=seqs.attention_mask, use_cache=False)
    return out.logits[:, :-1].float()


def response_mask(seqs: Sequences) -> torch.Tensor:
    return seqs.labels[:, 1:] != IGNORE


def token_logps(logits: torch.Tensor, seqs: Sequences) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(response token) at each response position ([B, T-1], 0 elsewhere), and the mask."""
    labels = seqs.labels[:, 1:]
    mask = labels != IGNORE
    safe = labels.clamp(min=0)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return logp * mask, mask


def sequence_logps(logits: torch.Tensor, seqs: Sequences) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-prob per sequence [B] and response length [B]."""
    logp, mask = token_logps(logits, seqs)
    return logp.sum(-1), mask.sum(-1)


def bucket_logps(logits: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the given token ids and of the rest bucket (everything else), exactly.

    The rest bucket's log-mass is a log-sum-exp over the tokens not in ``ids``, which stays finite where
    ``1 - sum(p)`` would round to zero.
    """
    logz = torch.logsumexp(logits, dim=-1, keepdim=True)
    picked = logits.gather(-1, ids) - logz
    rest = torch.logsumexp(logits.scatter(-1, ids, float("-inf")), dim=-1) - logz.squeeze(-1)
    return picked, rest


def bucket_forward_kl(t_topk: torch.Tensor, t_rest: torch.Tensor, s_topk: torch.Tensor,
                      s_rest: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) between the (k + 1)-bucket coarsenings, per position.

    This is a lower bound on the full-vocabulary forward KL (the data-processing inequality), exact when the
    teacher's mass outside its top-k is zero.
    """
    t = torch.cat([t_topk, t_rest.unsqueeze(-1)], dim=-1)
    s = torch.cat([s_topk, s_rest.unsqueeze(-1)], dim=-1)
    p = t.exp()
    return torch.where(p > 0, p * (t - s), torch.zeros_like(p)).sum(-1)


def teacher_forward_kl(logits: torch.Tensor, seqs: Sequences, topk: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position bucket KL of the student's logits from a collated teacher top-k signal; [B, T-1] and mask."""
    mask = response_mask(seqs)
    s_topk, s_rest = bucket_logps(logits, topk["ids"])
    kl = bucket_forward_kl(topk["logps"], topk["rest"], s_topk, s_rest)
    return kl * mask, mask


def log_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return F.logsigmoid(x)


def smoothed_sigmoid_loss(h: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Bradley-Terry loss on a preference logit h, with conservative label smoothing eps:
    -(1 - eps) log sigmoid(h) - eps log sigmoid(-h) (DPO, SimPO, DPKD)."""
    return -(1 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float) -> torch.Tensor:
    """GKD's generalised JSD per position (Agarwal et al. 2023, TRL's convention), over the full vocabulary.

    M = beta * p_T + (1 - beta) * q; JSD_beta = beta * KL(p_T || M) + (1 - beta) * KL(q || M). The interior
    formula vanishes at both ends, so beta = 0 is forward KL(p_T || q) and beta = 1 reverse KL(q || p_T).
    The teacher's logits are cut to the student's vocabulary (padded rows of a larger teacher embedding).
    """
    s = torch.log_softmax(student_logits, dim=-1)
    t = torch.log_softmax(teacher_logits[..., : student_logits.shape[-1]].float(), dim=-1)
    if beta == 0:
        return (t.exp() * (t - s)).sum(-1)
    if beta == 1:
        return (s.exp() * (s - t)).sum(-1)
    m = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log(1 - beta)]), dim=0)
    return beta * (t.exp() * (t - m)).sum(-1) + (1 - beta) * (s.exp() * (s - m)).sum(-1)


def skewed_kl(p_logits: torch.Tensor, q_logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """DistiLLM's skew KL per position: KL(P || alpha P + (1 - alpha) Q), full vocabulary, fp32.

    Skew forward KL is ``skewed_kl(teacher, student, alpha)``; skew reverse KL, KL(Q || (1 - alpha) P + alpha Q),
    is ``skewed_kl(student, teacher, alpha)``. alpha = 0 is the plain KL; the mixture keeps the log finite
    where Q has no mass.
    """
    vocab = min(p_logits.shape[-1], q_logits.shape[-1])
    p = torch.log_softmax(p_logits[..., :vocab].float(), dim=-1)
    q = torch.log_softmax(q_logits[..., :vocab].float(), dim=-1)
    if alpha == 0:
        return (p.exp() * (p - q)).sum(-1)
    m = torch.logsumexp(torch.stack([p + math.log(alpha), q + math.log(1 - alpha)]), dim=0)
    return (p.exp() * (p - m)).sum(-1)
