"""GKD: the generalised JSD to a live teacher on a hand-built batch (checked against the formula in plain math), the
teacher-token accounting, the on-policy draw in prepare_batch (seeded, a fraction lmbda of micro-batches), the
samples it puts in place of the chosen responses, its gradient direction, config validation, and train() with a
real tiny student and teacher (compute records, determinism)."""

from __future__ import annotations

import copy
import random

import pytest
import torch

import harness.generation
from harness.batch import collate, prompts_of
from harness.budgets import Budget
from harness.errors import BenchError
from harness.generation import generate_ids
from harness.losses import forward, generalized_jsd
from harness.trainer import train
from methods.gkd import GKD, GKDConfig
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
    jsd,
    normalised,
    sgd_step,
    single_thread,
    tiny_llama,
    transitions,
    with_live_teacher,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def gkd(teacher=TEACHER, max_new_tokens=8, max_seq_len=32, eos_id=4, **cfg):
    return with_live_teacher(GKD(GKDConfig(**cfg)), teacher, max_new_tokens, max_seq_len, eos_id)


def expected_jsd(beta, student=STUDENT, rows=ROWS):
    return sum(jsd(TEACHER[prev], student[prev], beta) for prev, _ in transitions(rows))


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
def test_gkd_loss_is_the_summed_jsd_to_the_live_teacher(beta):
    method = gkd(beta=beta)
    batch = collated()
    out = method.loss(TokenLM(STUDENT), batch)
    assert [(t.name, t.per) for t in out.terms] == [("jsd", "chosen_tokens")]
    assert float(out.terms[0].total.detach()) == pytest.approx(expected_jsd(beta), abs=1e-5)
    assert out.student_tokens == 5 + 2
    assert method.usage == {"teacher_tokens": 5 + 2, "generated_tokens": 0, "student_forward_tokens": 0}
    assert float(normalised(out, batch).detach()) == pytest.approx(expected_jsd(beta) / 4, abs=1e-5)


def test_the_formula_cases_are_distinguishable():
    values = [expected_jsd(beta) for beta in (0.0, 0.3, 0.5, 1.0)]
    assert min(abs(a - b) for i, a in enumerate(values) for b in values[i + 1:]) > 1e-2


def test_gkd_teacher_tokens_accumulate_over_calls():
    method = gkd()
    for _ in range(3):
        method.loss(TokenLM(STUDENT), collated())
    assert method.usage["teacher_tokens"] == 3 * (5 + 2)


def test_gkd_cuts_a_wider_teacher_to_the_students_vocabulary():
    out = gkd(teacher=TEACHER_WIDE, beta=0.3).loss(TokenLM(STUDENT), collated())
    assert float(out.terms[0].total.detach()) == pytest.approx(expected_jsd(0.3), abs=1e-5)


def test_gkd_is_zero_when_the_student_is_the_teacher():
    out = gkd(beta=0.5).loss(TokenLM(TEACHER), collated())
    assert abs(float(out.terms[0].total.detach())) < 1e-5


def test_gkd_does_not_train_the_teacher():
    teacher = TokenLM(TEACHER)
    out = gkd(teacher=teacher).loss(TokenLM(STUDENT), collated())
    out.terms[0].total.backward()
    assert teacher.table.grad is None


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_gkd_sgd_step_lowers_the_divergence_to_the_teacher(beta):
    model = TokenLM(STUDENT)
    method = gkd(beta=beta)
    batch = collated()
    before = normalised(method.loss(model, batch), batch)
    before.backward()
    sgd_step(model)
    with torch.no_grad():
        div = generalized_jsd(forward(model, batch.chosen), forward(TokenLM(TEACHER), batch.chosen), beta)
        after = div.sum() / batch.counts()["chosen_tokens"]  # packed: response positions only
    assert float(after) < float(before.detach()) - 1e-3
    assert float(after) == pytest.approx(expected_jsd(beta, model.table.tolist()) / 4, abs=1e-5)


# --- prepare_batch: the on-policy draw --------------------------------------------------------------------------


def test_lmbda_zero_leaves_the_batch_untouched(monkeypatch):
    stub = StubResample()
    monkeypatch.setattr(harness.generation, "resample", stub)
    method = gkd(lmbda=0.0)
    batch = collated()
    chosen, rejected = batch.chosen, batch.rejected
    ids = chosen.input_ids.clone()
    for seed in range(20):
        out = method.prepare_batch(TokenLM(STUDENT), batch, random.Random(seed))
        assert out is batch and out.chosen is chosen and out.rejected is rejected
    assert torch.equal(batch.chosen.input_ids, ids)
    assert stub.calls == []
    assert method.usage == {"teacher_tokens": 0, "generated_tokens": 0, "student_forward_tokens": 0}


@pytest.mark.parametrize("lmbda", [0.25, 0.5, 0.8])
def test_the_on_policy_draw_follows_rng_random_below_lmbda(monkeypatch, lmbda):
    stub = StubResample()
    monkeypatch.setattr(harness.generation, "resample", stub)
    method = gkd(lmbda=lmbda, temperature=0.7)
    on = []
    for seed in range(200):
        before = len(stub.calls)
        batch = method.prepare_batch(TokenLM(STUDENT), collated(), random.Random(seed))
        replaced = len(stub.calls) > before
        assert replaced == (random.Random(seed).random() < lmbda)
        assert (batch.chosen.labels[batch.chosen.labels != -100].tolist() == [1, 2, 3] * 2) == replaced
        on.append(replaced)
    assert abs(sum(on) / len(on) - lmbda) < 0.1
    assert all(call["temperature"] == 0.7 for call in stub.calls)  # the sampling temperature is the config's
    assert len({call["seed"] for call in stub.calls}) == len(stub.calls)  # a fresh sampling seed per micro-batch
    assert method.usage["generated_tokens"] == 6 * sum(on)


def test_lmbda_one_always_samples(monkeypatch):
    stub = StubResample()
    monkeypatch.setattr(harness.generation, "resample", stub)
    method = gkd(lmbda=1.0)
    for seed in range(50):
        method.prepare_batch(TokenLM(STUDENT), collated(), random.Random(seed))
    assert len(stub.calls) == 50


def llama_batch(rows=LLAMA_ROWS):
    return collate(rows, list(range(len(rows))), pad_id=0)


def responses(seqs):
    return [seqs.labels[b][seqs.labels[b] != -100].tolist() for b in range(seqs.labels.shape[0])]


def test_lmbda_one_replaces_chosen_with_the_models_samples(tiny_model):
    method = gkd(teacher=None, lmbda=1.0, temperature=0.9, max_new_tokens=5, max_seq_len=64, eos_id=LLAMA_EOS)
    batch = llama_batch()
    prompts = prompts_of(batch.chosen)
    rejected = batch.rejected
    out = method.prepare_batch(tiny_model, batch, random.Random(11))
    assert prompts_of(out.chosen) == prompts == [r.prompt_ids for r in LLAMA_ROWS]
    assert out.rejected is rejected
    sampled = responses(out.chosen)
    assert sampled != [r.chosen_ids for r in LLAMA_ROWS]
    assert all(1 <= len(s) <= 5 for s in sampled)
    assert all(s[-1] == LLAMA_EOS or len(s) == 5 for s in sampled)
    assert method.usage["generated_tokens"] == sum(len(s) for s in sampled) > 0
    assert out.counts()["chosen_tokens"] == sum(len(s) for s in sampled)
    # They are the model's own samples, at the config's temperature: the same draw reproduced by hand.
    rng = random.Random(11)
    rng.random()
    seed = rng.randrange(2**31)
    assert sampled == generate_ids(tiny_model, prompts, 5, pad_id=0, eos_id=LLAMA_EOS, batch_size=len(prompts),
                                   do_sample=True, temperature=0.9, seed=seed, desc=None)


def test_on_policy_samples_respect_max_seq_len(tiny_model):
    method = gkd(teacher=None, lmbda=1.0, max_new_tokens=8, max_seq_len=6, eos_id=LLAMA_EOS)
    out = method.prepare_batch(tiny_model, llama_batch(), random.Random(0))
    lengths = out.chosen.attention_mask.sum(-1).tolist()
    assert all(n <= 6 for n in lengths)
    assert all(len(s) >= 1 for s in responses(out.chosen))
    assert out.chosen.input_ids.shape[1] <= 6


def test_on_policy_samples_are_seeded(tiny_model):
    def sample(seed):
        method = gkd(teacher=None, lmbda=1.0, max_new_tokens=6, eos_id=LLAMA_EOS)
        return responses(method.prepare_batch(tiny_model, llama_batch(), random.Random(seed)).chosen)

    a = sample(3)
    assert a == sample(3)
    assert a != sample(4)


def test_on_policy_loss_is_the_jsd_on_the_samples(tiny_model):
    teacher = tiny_llama(seed=1)
    method = gkd(teacher=teacher, lmbda=1.0, beta=0.3, max_new_tokens=4, eos_id=LLAMA_EOS)
    batch = method.prepare_batch(tiny_model, llama_batch(), random.Random(2))
    out = method.loss(tiny_model, batch)
    seqs = batch.chosen
    with torch.no_grad():
        t = teacher(input_ids=seqs.input_ids, attention_mask=seqs.attention_mask).logits[:, :-1]
        s = tiny_model(input_ids=seqs.input_ids, attention_mask=seqs.attention_mask).logits[:, :-1]
    expected = 0.0
    for b in range(seqs.input_ids.shape[0]):
        for pos in range(seqs.input_ids.shape[1] - 1):
            if seqs.labels[b, pos + 1] != -100:
                expected += jsd(t[b, pos].tolist(), s[b, pos].tolist(), 0.3)
    assert float(out.terms[0].total.detach()) == pytest.approx(expected, rel=1e-4)
    assert method.usage["teacher_tokens"] == seqs.n_tokens == out.student_tokens


# --- config ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field,bad", [("beta", -0.1), ("beta", 1.1), ("lmbda", -0.1), ("lmbda", 1.5),
                                       ("temperature", 0.0), ("temperature", -1.0)])
def test_gkd_rejects_bad_values(field, bad):
    with pytest.raises(BenchError, match=field):
        GKDConfig(**{field: bad})


@pytest.mark.parametrize("field,ok", [("beta", 0.0), ("beta", 1.0), ("lmbda", 0.0), ("lmbda", 1.0)])
def test_gkd_accepts_the_ends_of_the_unit_interval(field, ok):
    assert getattr(GKDConfig(**{field: ok}), field) == ok


def test_gkd_declares_a_live_teacher_and_a_shared_vocabulary():
    assert "teacher_model" in GKD.needs and GKD.needs_shared_vocab


# --- train() ----------------------------------------------------------------------------------------------------


def train_rows(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)

    def ids(lo, hi):
        length = int(torch.randint(lo, hi + 1, (1,), generator=g))
        return torch.randint(1, 63, (length,), generator=g).tolist()

    from harness.data import Encoded

    return [Encoded(ids(1, 4), ids(1, 4), ids(1, 4)) for _ in range(n)]


BUDGET = Budget(name="t", description="test", train_examples=4, max_seq_len=16, max_prompt_len=6, batch_size=2,
                grad_accum=1, max_steps=2, learning_rate=1e-2, warmup_ratio=0.0, lr_schedule="constant")


def run_train(student, teacher, seed=0, lmbda=1.0):
    method = gkd(teacher=teacher, lmbda=lmbda, max_new_tokens=4, max_seq_len=BUDGET.max_seq_len, eos_id=LLAMA_EOS)
    result = train(method, student, train_rows(), {}, BUDGET, 0, seed=seed, desc="test")
    return method, result


def test_train_records_generated_and_teacher_tokens(tiny_model):
    teacher = tiny_llama(seed=1)
    method, result = run_train(tiny_model, teacher)
    assert result.optimizer_steps == 2
    assert 0 < result.generated_tokens == method.usage["generated_tokens"] <= 2 * 2 * 4
    assert 0 < result.teacher_tokens == method.usage["teacher_tokens"]
    # The teacher forwards exactly what the student does: the on-policy sequences.
    assert result.teacher_tokens == result.student_tokens
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in result.loss_curve)


def test_train_with_on_policy_samples_is_deterministic(tiny_model):
    teacher = tiny_llama(seed=1)
    first = copy.deepcopy(tiny_model)
    second = copy.deepcopy(tiny_model)
    third = copy.deepcopy(tiny_model)
    _, a = run_train(first, teacher, seed=0)
    _, b = run_train(second, teacher, seed=0)
    _, c = run_train(third, teacher, seed=1)
    assert [e["loss"] for e in a.loss_curve] == [e["loss"] for e in b.loss_curve]
    assert (a.generated_tokens, a.teacher_tokens) == (b.generated_tokens, b.teacher_tokens)
    assert all(torch.equal(p, q) for p, q in zip(first.parameters(), second.parameters()))
    assert [e["loss"] for e in a.loss_curve] != [e["loss"] for e in c.loss_curve]
