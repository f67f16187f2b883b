"""Reverse KL (MiniLLM's objective without PPO): KL(student || live teacher) summed over response tokens, checked
against the formula in plain math; every micro-batch resampled from the student; gradient direction; config."""

from __future__ import annotations

import random

import pytest
import torch

import harness.generation
from harness.batch import collate, prompts_of
from harness.errors import BenchError
from harness.losses import forward
from methods.rkl import RKL, RKLConfig
from tests.methods.helpers import (
    LLAMA_EOS,
    LLAMA_ROWS,
    ROWS,
    STUDENT,
    TEACHER,
    TEACHER_WIDE,
    StubResample,
    TokenLM,
    collated,
    kl,
    normalised,
    sgd_step,
    single_thread,
    softmax,
    transitions,
    with_live_teacher,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def rkl(teacher=TEACHER, max_new_tokens=8, max_seq_len=32, eos_id=4, **cfg):
    return with_live_teacher(RKL(RKLConfig(**cfg)), teacher, max_new_tokens, max_seq_len, eos_id)


def expected_rkl(student=STUDENT, rows=ROWS):
    return sum(kl(softmax(student[prev]), softmax(TEACHER[prev])) for prev, _ in transitions(rows))


def test_rkl_loss_is_the_summed_reverse_kl_to_the_live_teacher():
    method = rkl()
    batch = collated()
    out = method.loss(TokenLM(STUDENT), batch)
    assert [(t.name, t.per) for t in out.terms] == [("rkl", "chosen_tokens")]
    assert float(out.terms[0].total.detach()) == pytest.approx(expected_rkl(), abs=1e-5)
    assert out.student_tokens == 5 + 2
    assert method.usage == {"teacher_tokens": 5 + 2, "generated_tokens": 0, "student_forward_tokens": 0}
    assert float(normalised(out, batch).detach()) == pytest.approx(expected_rkl() / 4, abs=1e-5)


def test_the_reverse_direction_is_distinguishable_from_the_forward_one():
    forward_kl = sum(kl(softmax(TEACHER[prev]), softmax(STUDENT[prev])) for prev, _ in transitions(ROWS))
    assert abs(forward_kl - expected_rkl()) > 1e-2


def test_rkl_cuts_a_wider_teacher_to_the_students_vocabulary():
    out = rkl(teacher=TEACHER_WIDE).loss(TokenLM(STUDENT), collated())
    assert float(out.terms[0].total.detach()) == pytest.approx(expected_rkl(), abs=1e-5)


def test_rkl_sgd_step_lowers_the_reverse_kl_to_the_teacher():
    model = TokenLM(STUDENT)
    method = rkl()
    batch = collated()
    before = normalised(method.loss(model, batch), batch)
    before.backward()
    sgd_step(model)
    with torch.no_grad():
        q = torch.log_softmax(forward(model, batch.chosen), -1)
        p = torch.log_softmax(forward(TokenLM(TEACHER), batch.chosen), -1)
        after = (q.exp() * (q - p)).sum(-1).sum() / 4  # packed: response positions only
    assert float(after) < float(before.detach()) - 1e-3
    assert float(after) == pytest.approx(expected_rkl(model.table.tolist()) / 4, abs=1e-5)


def test_rkl_always_resamples(monkeypatch):
    stub = StubResample()
    monkeypatch.setattr(harness.generation, "resample", stub)
    method = rkl(temperature=0.6)
    for seed in range(50):
        batch = method.prepare_batch(TokenLM(STUDENT), collated(), random.Random(seed))
        assert batch.chosen.labels[batch.chosen.labels != -100].tolist() == [1, 2, 3] * 2
    assert len(stub.calls) == 50
    assert all(call["temperature"] == 0.6 for call in stub.calls)
    assert method.usage["generated_tokens"] == 50 * 6


def test_rkl_prepare_batch_samples_from_the_model(tiny_model):
    method = rkl(teacher=None, max_new_tokens=5, max_seq_len=64, eos_id=LLAMA_EOS)
    batch = collate(LLAMA_ROWS, [0, 1, 2], pad_id=0)
    out = method.prepare_batch(tiny_model, batch, random.Random(0))
    assert prompts_of(out.chosen) == [r.prompt_ids for r in LLAMA_ROWS]
    sampled = [out.chosen.labels[b][out.chosen.labels[b] != -100].tolist() for b in range(3)]
    assert sampled != [r.chosen_ids for r in LLAMA_ROWS]
    assert all(1 <= len(s) <= 5 for s in sampled)
    assert method.usage["generated_tokens"] == sum(len(s) for s in sampled)
    again = rkl(teacher=None, max_new_tokens=5, max_seq_len=64, eos_id=LLAMA_EOS)
    out2 = again.prepare_batch(tiny_model, collate(LLAMA_ROWS, [0, 1, 2], pad_id=0), random.Random(0))
    assert torch.equal(out2.chosen.input_ids, out.chosen.input_ids)


@pytest.mark.parametrize("temperature", [0.0, -0.5])
def test_rkl_rejects_non_positive_temperature(temperature):
    with pytest.raises(BenchError, match="temperature"):
        RKLConfig(temperature=temperature)


def test_rkl_declares_a_live_teacher_and_a_shared_vocabulary():
    assert "teacher_model" in RKL.needs and RKL.needs_shared_vocab
