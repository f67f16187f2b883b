"""The packed response logits of harness/losses.py: the LM head on response positions only gives the values and
gradients of the full logits, and chunked full-vocabulary divergences give those of one pass with bounded memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from harness.batch import pad_sequences
from harness.losses import (
    forward,
    forward_pair,
    generalized_jsd,
    packed,
    response_mask,
    sequence_logps,
    skewed_kl,
    teacher_forward_kl,
    token_logps,
    unpack,
)
from tests.harness.test_losses import LOGITS, SEQS


def test_packed_logits_give_the_full_logits_values():
    full = torch.tensor(LOGITS)
    rows = packed(full, SEQS)
    assert rows.shape == (3, 4)  # three response positions: row 0 at t=0,1; row 1 at t=2
    assert torch.equal(rows, torch.tensor([LOGITS[0][0], LOGITS[0][1], LOGITS[1][2]]))
    for fn in (token_logps, sequence_logps):
        assert torch.equal(fn(rows, SEQS)[0], fn(full, SEQS)[0])
    ids = torch.tensor([[[2, 0], [3, 1], [0, 0]], [[0, 0], [0, 0], [3, 2]]])
    topk = {"ids": ids, "logps": torch.full((2, 3, 2), -1.5), "rest": torch.full((2, 3), -1.2)}
    assert torch.equal(teacher_forward_kl(rows, SEQS, topk)[0], teacher_forward_kl(full, SEQS, topk)[0])


def test_unpack_places_values_at_response_positions():
    got = unpack(torch.tensor([1.0, 2.0, 3.0]), SEQS)
    assert got.tolist() == [[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]]
    assert unpack(torch.ones(2, 3), SEQS).tolist() == response_mask(SEQS).float().tolist()


def tiny_batch():
    return pad_sequences([[1, 5, 9], [2, 3, 4, 7, 8]], [[10, 11, 12, 13], [20, 21]], pad_id=0)


def test_forward_runs_the_head_on_response_positions_only(tiny_model):
    seqs = tiny_batch()
    calls = []
    head = tiny_model.get_output_embeddings()
    head.register_forward_hook(lambda m, args, out: calls.append(tuple(out.shape)))
    got = forward(tiny_model, seqs)
    full = tiny_model(input_ids=seqs.input_ids, attention_mask=seqs.attention_mask).logits
    n = int(response_mask(seqs).sum())
    assert calls == [(n, 64), (2, seqs.input_ids.shape[1], 64)]  # packed inside forward, full outside it
    assert torch.allclose(got, full[:, :-1][response_mask(seqs)], atol=1e-6)


def test_packed_head_gradients_equal_the_full_heads(tiny_model):
    seqs = tiny_batch()
    tiny_model.train()

    def grads(logits_fn):
        tiny_model.zero_grad()
        token_logps(logits_fn(), seqs)[0].sum().backward()
        return {n: p.grad.clone() for n, p in tiny_model.named_parameters()}

    full = grads(lambda: tiny_model(input_ids=seqs.input_ids, attention_mask=seqs.attention_mask).logits[:, :-1])
    pack = grads(lambda: forward(tiny_model, seqs))
    for name, g in full.items():
        assert torch.allclose(pack[name], g, atol=1e-6, rtol=1e-5), name


@pytest.mark.parametrize(("fn", "arg"), [(generalized_jsd, 0.5), (generalized_jsd, 0.0), (generalized_jsd, 1.0),
                                         (skewed_kl, 0.1)])
def test_chunked_divergence_equals_one_pass_in_value_and_gradient(fn, arg):
    torch.manual_seed(0)
    student = torch.randn(7, 11, requires_grad=True)
    teacher = torch.randn(7, 13)  # a wider teacher vocabulary is cut to the student's
    results = []
    for elements in (None, 22, 11):  # one pass; chunks of 2 positions; chunks of 1
        student.grad = None
        out = fn(student, teacher, arg, elements=elements)
        (out * torch.arange(1.0, 8.0)).sum().backward()
        results.append((out.detach(), student.grad.clone()))
    for out, grad in results[1:]:
        assert torch.allclose(out, results[0][0], atol=1e-6)
        assert torch.allclose(grad, results[0][1], atol=1e-6)


PEAK = """
import json, sys, torch
from harness.losses import generalized_jsd

def peak_mib():  # VmHWM, not ru_maxrss: a child's ru_maxrss starts from its parent's peak
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024

torch.manual_seed(0)
s = torch.randn(2048, 16384, requires_grad=True)
t = torch.randn(2048, 16384)
before = peak_mib()
generalized_jsd(s, t, 0.5, elements=int(sys.argv[1])).sum().backward()
print(json.dumps(peak_mib() - before))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_chunking_bounds_the_peak_memory_of_a_divergence():
    # 2048 positions x 16,384 tokens: each [positions, vocab] fp32 tensor is 128 MiB.
    def growth(elements: int) -> float:
        # A fixed mmap threshold makes glibc return every large block when it is freed, so the peak RSS follows
        # the live tensors rather than heap blocks kept for reuse (1.5 GiB vs 0.9 GiB chunked without it).
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        out = subprocess.run([sys.executable, "-c", PEAK, str(elements)], capture_output=True, text=True, check=True,
                             env=env)
        return json.loads(out.stdout.strip().splitlines()[-1])

    one_pass, chunked = growth(1 << 40), growth(1 << 22)
    # One pass keeps the log-softmaxes, exps and mixture (several 128 MiB tensors); chunked, the gradient and
    # one 16 MiB chunk's intermediates.
    assert one_pass > 500
    assert chunked < one_pass / 3, (one_pass, chunked)  # measured: 1545 vs 386 MiB


def test_forward_pair_equals_two_forwards(tiny_model):
    chosen = tiny_batch()
    rejected = pad_sequences([[1, 5, 9], [2, 3, 4, 7, 8]], [[30, 31, 32, 33, 34, 35, 36], [40]], pad_id=0)
    tiny_model.train()
    assert chosen.input_ids.shape[1] != rejected.input_ids.shape[1]  # one side is padded to the other
    one = forward_pair(tiny_model, chosen, rejected)
    two = (forward(tiny_model, chosen), forward(tiny_model, rejected))
    for got, expected in zip(one, two):
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-5)
    pair = [sequence_logps(x, s)[0] for x, s in zip(one, (chosen, rejected))]
    single = [sequence_logps(x, s)[0] for x, s in zip(two, (chosen, rejected))]
    tiny_model.zero_grad()
    (pair[0] - 2 * pair[1]).sum().backward()
    g_pair = [p.grad.clone() for p in tiny_model.parameters()]
    tiny_model.zero_grad()
    (single[0] - 2 * single[1]).sum().backward()
    for a, b in zip(g_pair, (p.grad for p in tiny_model.parameters())):
        assert torch.allclose(a, b, atol=1e-5)
