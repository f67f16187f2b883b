"""Shared loss arithmetic: log-probs of response tokens, teacher top-k buckets, divergences.

Conventions (see shared/reference/methods.md, section 11): logits at position t predict the token at t+1, so
every per-token quantity is over ``logits[:, :-1]`` and ``labels[:, 1:]``. All of it runs in fp32.

Only response positions enter any loss, so :func:`forward` runs the LM head on those positions alone and returns
their logits packed, ``[N, V]`` with N the micro-batch's response tokens in row-major order (TRL's DPOTrainer
does the same). On SmolLM2 the head is a quarter of the matmul FLOPs and the log-softmax over 49,152 tokens
dominates the rest, so prompt and padding positions were a large part of every step. Per-position values are the
same as from the full logits; only the order in which the tied embedding's gradient is summed changes.
:func:`unpack` puts packed per-token values back at their ``[B, T-1]`` positions; the helpers below accept packed
logits or full ``[B, T-1, V]`` ones (hand-made in tests, or an outside method's own forward).
"""

from __future__ import annotations

import contextvars
import math

from harness.batch import IGNORE, Sequences
from harness.lazy import F, torch

_ROWS: contextvars.ContextVar = contextvars.ContextVar("bench_response_rows", default=None)


def _head_input(module, args):
    """Forward pre-hook on the output embedding: while a mask is set, keep only the hidden states at it."""
    rows = _ROWS.get()
    if rows is None:
        return None
    return (args[0][:, :-1][rows], *args[1:])


def _hook_head(model) -> None:
    base = getattr(model, "module", model)  # a DDP/FSDP wrapper's model
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if head is not None and not getattr(head, "_bench_response_rows", False):
        head.register_forward_pre_hook(_head_input)
        head._bench_response_rows = True


def response_logits(model, seqs: Sequences) -> torch.Tensor:
    """``model``'s logits at the response positions of ``seqs``, packed: [N, V] (no dtype change)."""
    mask = response_mask(seqs)
    _hook_head(model)
    token = _ROWS.set(mask)
    try:
        logits = model(input_ids=seqs.input_ids, attention_mask=seqs.attention_mask, use_cache=False).logits
    finally:
        _ROWS.reset(token)
    if logits.dim() == 3:  # a model without a hookable output embedding: cut the full logits
        logits = logits[:, :-1][mask]
    return logits


def forward(model, seqs: Sequences) -> torch.Tensor:
    """The student's logits at the response positions, packed and fp32: [N, V]."""
    return response_logits(model, seqs).float()


def forward_pair(model, a: Sequences, b: Sequences) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed fp32 logits of two sides of a micro-batch (chosen and rejected) from one forward of both, right-padded
    to the longer (DPOTrainer's concatenated forward): one pass over the weights instead of two."""
    both = stack_sides(a, b)
    logits = forward(model, both)
    return logits.split([a.n_response_tokens, b.n_response_tokens])


def stack_sides(a: Sequences, b: Sequences) -> Sequences:
    """``a``'s rows then ``b``'s, right-padded to one length (padding: token 0, masked, ignored)."""
    length = max(a.input_ids.shape[1], b.input_ids.shape[1])

    def pad(x: torch.Tensor, value: int) -> torch.Tensor:
        return F.pad(x, (0, length - x.shape[1]), value=value)

    return Sequences(torch.cat([pad(a.input_ids, 0), pad(b.input_ids, 0)]),
                     torch.cat([pad(a.attention_mask, 0), pad(b.attention_mask, 0)]),
                     torch.cat([pad(a.labels, IGNORE), pad(b.labels, IGNORE)]), a.prompt_lens + b.prompt_lens)


def response_mask(seqs: Sequences) -> torch.Tensor:
    return seqs.labels[:, 1:] != IGNORE


def packed(x: torch.Tensor, seqs: Sequences, trailing: int = 1) -> torch.Tensor:
    """Per-position values at the response positions, [N, ...]: ``x`` is full ([B, T-1] plus ``trailing``
    dimensions, e.g. 1 for logits or top-k ids, 0 for a per-token value) or already packed (passed through)."""
    if x.dim() == 2 + trailing:
        return x[response_mask(seqs).to(x.device)]
    return x


def unpack(values: torch.Tensor, seqs: Sequences) -> torch.Tensor:
    """Packed per-token values [N] back at their positions: [B, T-1], 0 elsewhere (full ones are masked)."""
    mask = response_mask(seqs).to(values.device)
    if values.dim() == 2:
        return values * mask
    return torch.zeros(mask.shape, dtype=values.dtype, device=values.device).masked_scatter(mask, values)


def token_logps(logits: torch.Tensor, seqs: Sequences) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(response token) at each response position ([B, T-1], 0 elsewhere), and the mask."""
    mask = response_mask(seqs)
    rows = packed(logits, seqs)
    labels = seqs.labels[:, 1:][mask].to(rows.device)
    logp = torch.log_softmax(rows, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return unpack(logp, seqs), mask


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
    return unpack(packed_teacher_kl(logits, seqs, topk), seqs), response_mask(seqs)


def packed_teacher_kl(logits: torch.Tensor, seqs: Sequences, topk: dict, kl_fn=None) -> torch.Tensor:
    """The bucket KL from a collated teacher top-k signal at the response positions, packed [N]; ``kl_fn``
    replaces :func:`bucket_forward_kl` (same arguments), e.g. a method's clamped variant."""
    s_topk, s_rest = bucket_logps(packed(logits, seqs), packed(topk["ids"], seqs))
    return (kl_fn or bucket_forward_kl)(packed(topk["logps"], seqs), packed(topk["rest"], seqs, 0), s_topk, s_rest)


def log_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return F.logsigmoid(x)


def smoothed_sigmoid_loss(h: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Bradley-Terry loss on a preference logit h, with conservative label smoothing eps:
    -(1 - eps) log sigmoid(h) - eps log sigmoid(-h) (DPO, SimPO, DPKD)."""
    return -(1 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)


# Logit elements (positions x vocabulary) one chunk of a full-vocabulary divergence may hold: 64 MiB in fp32,
# about 340 positions of a 49k vocabulary; a smoke micro-batch fits in one chunk.
CHUNK_ELEMENTS = 1 << 24


def by_row_chunks(fn, a: torch.Tensor, b: torch.Tensor, *args, elements: int | None = None) -> torch.Tensor:
    """``fn(a, b, *args)`` -> one value per position, over chunks of positions, each under activation
    checkpointing. A divergence keeps several [positions, vocab] intermediates for its backward (log-softmaxes,
    their exps, the mixture); chunked, only the inputs and one chunk's intermediates are alive at a time, so that
    memory grows with the chunk, not with sequence x vocabulary, at the cost of recomputing each chunk's
    forward in the backward. Inputs that fit one chunk run as they are (no recomputation)."""
    vocab = a.shape[-1]
    lead = a.shape[:-1]
    a2, b2 = a.reshape(-1, vocab), b.reshape(-1, b.shape[-1])
    rows = max(1, (CHUNK_ELEMENTS if elements is None else elements) // vocab)
    if a2.shape[0] <= rows:
        return fn(a, b, *args)
    from torch.utils.checkpoint import checkpoint

    parts = [checkpoint(fn, x, y, *args, use_reentrant=False) for x, y in zip(a2.split(rows), b2.split(rows))]
    return torch.cat(parts).reshape(lead)


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float,
                    elements: int | None = None) -> torch.Tensor:
    """GKD's generalised JSD per position (Agarwal et al. 2023, TRL's convention), over the full vocabulary.

    M = beta * p_T + (1 - beta) * q; JSD_beta = beta * KL(p_T || M) + (1 - beta) * KL(q || M). The interior
    formula vanishes at both ends, so beta = 0 is forward KL(p_T || q) and beta = 1 reverse KL(q || p_T).
    The teacher's logits are cut to the student's vocabulary (padded rows of a larger teacher embedding).
    Computed over chunks of positions (:func:`by_row_chunks`; ``elements`` overrides the chunk size).
    """
    return by_row_chunks(_jsd, student_logits, teacher_logits, beta, elements=elements)


def _jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float) -> torch.Tensor:
    s = torch.log_softmax(student_logits, dim=-1)
    t = torch.log_softmax(teacher_logits[..., : student_logits.shape[-1]].float(), dim=-1)
    if beta == 0:
        return (t.exp() * (t - s)).sum(-1)
    if beta == 1:
        return (s.exp() * (s - t)).sum(-1)
    m = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log(1 - beta)]), dim=0)
    return beta * (t.exp() * (t - m)).sum(-1) + (1 - beta) * (s.exp() * (s - m)).sum(-1)


def skewed_kl(p_logits: torch.Tensor, q_logits: torch.Tensor, alpha: float,
              elements: int | None = None) -> torch.Tensor:
    """DistiLLM's skew KL per position: KL(P || alpha P + (1 - alpha) Q), full vocabulary, fp32.

    Skew forward KL is ``skewed_kl(teacher, student, alpha)``; skew reverse KL, KL(Q || (1 - alpha) P + alpha Q),
    is ``skewed_kl(student, teacher, alpha)``. alpha = 0 is the plain KL; the mixture keeps the log finite
    where Q has no mass. Computed over chunks of positions (:func:`by_row_chunks`).
    """
    return by_row_chunks(_skewed_kl, p_logits, q_logits, alpha, elements=elements)


def _skewed_kl(p_logits: torch.Tensor, q_logits: torch.Tensor, alpha: float) -> torch.Tensor:
    vocab = min(p_logits.shape[-1], q_logits.shape[-1])
    p = torch.log_softmax(p_logits[..., :vocab].float(), dim=-1)
    q = torch.log_softmax(q_logits[..., :vocab].float(), dim=-1)
    if alpha == 0:
        return (p.exp() * (p - q)).sum(-1)
    m = torch.logsumexp(torch.stack([p + math.log(alpha), q + math.log(1 - alpha)]), dim=0)
    return (p.exp() * (p - m)).sum(-1)
