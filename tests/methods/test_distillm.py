"""DistiLLM: the skew KL / skew reverse KL to a live teacher on a hand-built batch (checked against the formulas in
plain math), the NLL mix, the gradient direction, the validation loss, the adaptive off-policy scheduler in
prepare_batch (threshold updates, sampling-threshold schedules, generation, the replay buffer), config validation,
registration, and train() with a real tiny student and teacher."""

from __future__ import annotations

import math
import random

import pytest
import torch

import harness.generation
from harness.batch import collate, prompts_of
from harness.budgets import Budget
from harness.data import Encoded
from harness.errors import BenchError
from harness.generation import generate_ids
from harness.losses import forward, response_mask, skewed_kl
from harness.trainer import train
from methods.distillm import AdaptiveState, DistiLLM, DistiLLMConfig, validation_nll
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
    response_logps,
    sgd_step,
    single_thread,
    softmax,
    tiny_llama,
    transitions,
    with_live_teacher,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def distillm(teacher=TEACHER, validation=ROWS, total_steps=10, max_new_tokens=8, max_seq_len=32, eos_id=4, **cfg):
    method = with_live_teacher(DistiLLM(DistiLLMConfig(**cfg)), teacher, max_new_tokens, max_seq_len, eos_id)
    method.runtime.validation = list(validation)
    method.runtime.total_steps = total_steps
    return method


def skl(prev, student=STUDENT, alpha=0.1, teacher=TEACHER):
    """KL(p || alpha p + (1 - alpha) q) after token `prev`, p the teacher's and q the student's next-token law."""
    p, q = softmax(teacher[prev]), softmax(student[prev])
    return sum(a * math.log(a / (alpha * a + (1 - alpha) * b)) for a, b in zip(p, q))


def srkl(prev, student=STUDENT, alpha=0.1, teacher=TEACHER):
    """KL(q || (1 - alpha) p + alpha q) after token `prev`."""
    p, q = softmax(teacher[prev]), softmax(student[prev])
    return sum(b * math.log(b / ((1 - alpha) * a + alpha * b)) for a, b in zip(p, q))


def expected_div(kind, alpha=0.1, student=STUDENT, rows=ROWS):
    fn = skl if kind == "skl" else srkl
    return sum(fn(prev, student, alpha) for prev, _ in transitions(rows))


def expected_nll(rows=ROWS, student=STUDENT):
    return -sum(sum(response_logps(r.prompt_ids, r.chosen_ids, student)) for r in rows)


N_RESPONSE = 4  # response tokens of ROWS' chosen side
N_TOKENS = 5 + 2  # tokens of ROWS' chosen side, prompts included


# --- the loss -------------------------------------------------------------------------------------------------


def test_hand_values_are_distinguishable():
    values = [expected_div("skl"), expected_div("srkl"), expected_div("skl", alpha=0.0),
              expected_div("srkl", alpha=0.0), expected_div("skl", alpha=0.9)]
    assert min(abs(a - b) for i, a in enumerate(values) for b in values[i + 1:]) > 1e-2
    # The alpha = 0 forms are the plain forward and reverse KL.
    p, q = softmax(TEACHER[2]), softmax(STUDENT[2])
    assert skl(2, alpha=0.0) == pytest.approx(kl(p, q)) and srkl(2, alpha=0.0) == pytest.approx(kl(q, p))


def test_default_loss_is_the_summed_skew_kl_with_alpha_one_tenth():
    method = distillm()
    batch = collated()
    out = method.loss(TokenLM(STUDENT), batch)
    assert [(t.name, t.per) for t in out.terms] == [("skl", "chosen_tokens")]
    assert float(out.terms[0].total.detach()) == pytest.approx(expected_div("skl", 0.1), abs=1e-5)
    assert float(normalised(out, batch).detach()) == pytest.approx(expected_div("skl", 0.1) / N_RESPONSE, abs=1e-5)
    assert out.student_tokens == N_TOKENS
    assert method.usage["teacher_tokens"] == N_TOKENS
    assert out.stats == {}  # no adaptive state yet


@pytest.mark.parametrize("kind", ["skl", "srkl"])
@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.4])
def test_loss_is_the_summed_skew_divergence_to_the_live_teacher(kind, alpha):
    method = distillm(loss=kind, alpha=alpha)
    out = method.loss(TokenLM(STUDENT), collated())
    assert [(t.name, t.per) for t in out.terms] == [(kind, "chosen_tokens")]
    assert float(out.terms[0].total.detach()) == pytest.approx(expected_div(kind, alpha), abs=1e-5)


def test_loss_cuts_a_wider_teacher_to_the_students_vocabulary():
    for kind in ("skl", "srkl"):
        out = distillm(teacher=TEACHER_WIDE, loss=kind).loss(TokenLM(STUDENT), collated())
        assert float(out.terms[0].total.detach()) == pytest.approx(expected_div(kind), abs=1e-5)


@pytest.mark.parametrize("kind", ["skl", "srkl"])
def test_kd_ratio_mixes_the_divergence_with_the_nll(kind):
    method = distillm(loss=kind, kd_ratio=0.6)
    batch = collated()
    out = method.loss(TokenLM(STUDENT), batch)
    assert [(t.name, t.per) for t in out.terms] == [(kind, "chosen_tokens"), ("nll", "chosen_tokens")]
    div, nll = expected_div(kind), expected_nll()
    assert float(out.terms[0].total.detach()) == pytest.approx(0.6 * div, abs=1e-5)
    assert float(out.terms[1].total.detach()) == pytest.approx(0.4 * nll, abs=1e-5)
    assert float(normalised(out, batch).detach()) == pytest.approx((0.6 * div + 0.4 * nll) / N_RESPONSE, abs=1e-5)
    assert method.usage["teacher_tokens"] == N_TOKENS


def test_kd_ratio_zero_is_the_nll_alone():
    out = distillm(kd_ratio=0.0).loss(TokenLM(STUDENT), collated())
    assert float(out.terms[0].total.detach()) == 0.0
    assert float(out.terms[1].total.detach()) == pytest.approx(expected_nll(), abs=1e-5)


def test_teacher_tokens_accumulate_and_the_teacher_is_not_trained():
    teacher = TokenLM(TEACHER)
    method = distillm(teacher=teacher)
    for _ in range(3):
        out = method.loss(TokenLM(STUDENT), collated())
    out.terms[0].total.backward()
    assert method.usage["teacher_tokens"] == 3 * N_TOKENS
    assert teacher.table.grad is None


def test_loss_is_zero_when_the_student_is_the_teacher():
    for kind in ("skl", "srkl"):
        out = distillm(loss=kind).loss(TokenLM(TEACHER), collated())
        assert abs(float(out.terms[0].total.detach())) < 1e-5


def test_loss_reports_the_threshold_once_adaptive_state_exists():
    method = distillm()
    method.state = AdaptiveState(threshold=0.3)
    assert method.loss(TokenLM(STUDENT), collated()).stats == {"threshold": 0.3}


@pytest.mark.parametrize("kind", ["skl", "srkl"])
def test_sgd_step_lowers_the_skew_divergence(kind):
    model = TokenLM(STUDENT)
    method = distillm(loss=kind)
    batch = collated()
    before = normalised(method.loss(model, batch), batch)
    before.backward()
    sgd_step(model)
    after = expected_div(kind, student=model.table.tolist()) / N_RESPONSE
    assert after < float(before.detach()) - 1e-3
    with torch.no_grad():  # and the method agrees with the hand value after the step
        assert float(normalised(method.loss(model, batch), batch)) == pytest.approx(after, abs=1e-5)


@torch.no_grad()
def test_skewed_kl_argument_orders_give_the_hand_values_on_the_batch():
    # Guards the loss's argument order: skl is skewed_kl(teacher, student), srkl skewed_kl(student, teacher).
    seqs = collated().chosen
    s = forward(TokenLM(STUDENT), seqs)
    t = forward(TokenLM(TEACHER), seqs)
    assert s.shape[0] == int(response_mask(seqs).sum())  # packed: response positions only
    assert float(skewed_kl(t, s, 0.1).sum()) == pytest.approx(expected_div("skl"), abs=1e-5)
    assert float(skewed_kl(s, t, 0.1).sum()) == pytest.approx(expected_div("srkl"), abs=1e-5)


# --- the validation loss --------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 8])
def test_validation_nll_is_the_token_mean_nll_of_the_chosen_responses(batch_size):
    model = TokenLM(STUDENT)
    loss, tokens = validation_nll(model, ROWS, pad_id=0, batch_size=batch_size)
    assert loss == pytest.approx(expected_nll() / N_RESPONSE, abs=1e-5)
    assert tokens == N_TOKENS
    assert model.training  # the mode is restored
    model.eval()
    validation_nll(model, ROWS, pad_id=0)
    assert not model.training


def test_validation_nll_is_a_token_mean_not_a_row_mean():
    row_mean = sum(-sum(response_logps(r.prompt_ids, r.chosen_ids)) / len(r.chosen_ids) for r in ROWS) / 2
    assert abs(row_mean - expected_nll() / N_RESPONSE) > 1e-2  # the two readings differ on these rows
    loss, _ = validation_nll(TokenLM(STUDENT), ROWS, pad_id=0)
    assert loss == pytest.approx(expected_nll() / N_RESPONSE, abs=1e-5)


def test_first_prepare_batch_validates_once_before_any_step():
    method = distillm(validation_examples=16)
    method.start_training()
    method.step = 1
    model = TokenLM(STUDENT)
    method.prepare_batch(model, collated(), random.Random(0))
    method.prepare_batch(model, collated(), random.Random(1))  # a second micro-batch of the same step
    assert method.state.best == pytest.approx(expected_nll() / N_RESPONSE, abs=1e-5)
    assert method.state.threshold == 0.0
    assert method.usage["student_forward_tokens"] == N_TOKENS  # one validation only


def test_validation_uses_only_the_first_validation_examples_rows():
    method = distillm(validation_examples=1)
    method.step = 1
    method.prepare_batch(TokenLM(STUDENT), collated(), random.Random(0))
    assert method.state.best == pytest.approx(expected_nll(ROWS[:1]) / 3, abs=1e-5)
    assert method.usage["student_forward_tokens"] == 5


def test_no_validation_rows_is_a_clear_error():
    method = distillm(validation=[])
    method.step = 1
    with pytest.raises(BenchError, match="no spare train rows.*adaptive=false"):
        method.prepare_batch(TokenLM(STUDENT), collated(), random.Random(0))


# --- the adaptive scheduler -----------------------------------------------------------------------------------


class ScriptedRng:
    """Stands in for the trainer's random.Random: random() returns the scripted draws; sample() and randrange()
    come from a seeded random.Random (and are recorded)."""

    def __init__(self, draws, seed=0):
        self.draws = list(draws)
        self.inner = random.Random(seed)
        self.sampled = []

    def random(self):
        return self.draws.pop(0)

    def sample(self, population, k):
        out = self.inner.sample(population, k)
        self.sampled.append(out)
        return out

    def randrange(self, *args):
        return self.inner.randrange(*args)


def scripted_validation(monkeypatch, losses):
    """Make DistiLLM._validate return the scripted losses in turn; returns the steps it was called at."""
    calls = []

    def fake(self, model):
        calls.append(self.step)
        return losses[len(calls) - 1]

    monkeypatch.setattr(DistiLLM, "_validate", fake)
    return calls


def no_generation(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("generated where the data set's responses were due")

    monkeypatch.setattr(harness.generation, "resample", fail)


def test_adaptive_false_leaves_batches_untouched_and_never_validates(monkeypatch):
    def fail(self, model):
        raise AssertionError("validated with adaptive=False")

    monkeypatch.setattr(DistiLLM, "_validate", fail)
    no_generation(monkeypatch)
    method = distillm(adaptive=False, init_threshold=1.0)  # would always generate if adaptive
    method.start_training()
    for step in range(1, 6):
        method.step = step
        batch = collated()
        chosen, ids = batch.chosen, batch.chosen.input_ids.clone()
        out = method.prepare_batch(TokenLM(STUDENT), batch, random.Random(step))
        assert out is batch and out.chosen is chosen and torch.equal(out.chosen.input_ids, ids)
    assert method.state is None
    assert method.usage == {"teacher_tokens": 0, "generated_tokens": 0, "student_forward_tokens": 0}


def test_threshold_zero_and_no_rise_always_uses_the_data(monkeypatch):
    no_generation(monkeypatch)
    method = distillm(init_threshold=0.0, total_steps=3, validations=3)  # a validation every step
    model = TokenLM(STUDENT)  # never trained: the validation loss stays put
    method.start_training()
    for step in range(1, 4):
        method.step = step
        for m in range(2):
            batch = collated()
            chosen = batch.chosen
            assert method.prepare_batch(model, batch, random.Random(step * 1009 + m)).chosen is chosen
    assert method.state.draws == {"data": 6, "generated": 0, "replayed": 0}
    assert method.state.threshold == 0.0 and method.state.buffer == []
    # Validated before step 1 and after steps 1 and 2 (at steps 2 and 3), 7 tokens each.
    assert method.usage["student_forward_tokens"] == 3 * N_TOKENS


def test_threshold_rises_by_a_tenth_when_the_validation_loss_rises_by_loss_eps(monkeypatch):
    no_generation(monkeypatch)
    calls = scripted_validation(monkeypatch, [2.0, 2.25, 2.4, 2.5, 1.0])
    method = distillm(loss_eps=0.25, total_steps=5, validations=5)  # interval 1
    method.start_training()
    seen = []
    for step in range(1, 6):
        method.step = step
        for _ in range(2):  # two micro-batches per step: one validation per step
            method.prepare_batch(TokenLM(STUDENT), collated(), ScriptedRng([0.999]))
        seen.append((method.state.threshold, method.state.best))
    assert calls == [1, 2, 3, 4, 5]
    expected = [
        (0.0, 2.0),  # the reference before training
        (0.1, 2.25),  # rose by exactly loss_eps: up, and the reference moves
        (0.1, 2.25),  # rose by 0.15 < loss_eps: nothing changes
        (0.2, 2.5),  # rose by 0.25 since the last rise (only 0.1 since the last validation): up
        (0.2, 2.5),  # fell: nothing changes
    ]
    assert [t for t, _ in seen] == pytest.approx([t for t, _ in expected], abs=1e-12)
    assert [b for _, b in seen] == [b for _, b in expected]
    assert method.state.draws == {"data": 10, "generated": 0, "replayed": 0}


def test_threshold_is_capped_at_one(monkeypatch):
    monkeypatch.setattr(harness.generation, "resample", StubResample())
    scripted_validation(monkeypatch, [1.0, 2.0, 3.0])
    method = distillm(init_threshold=0.95, total_steps=3, validations=3)
    method.start_training()
    for step in range(1, 4):
        method.step = step
        method.prepare_batch(TokenLM(STUDENT), collated(), ScriptedRng([0.999]))
    assert method.state.threshold == 1.0
    assert method.state.best == 3.0


@pytest.mark.parametrize("validations,expected", [(5, [1, 3, 5, 7, 9]), (3, [1, 4, 7, 10]), (10, list(range(1, 11))),
                                                  (1, [1])])
def test_validation_interval_is_total_steps_over_validations(monkeypatch, validations, expected):
    no_generation(monkeypatch)
    calls = scripted_validation(monkeypatch, [1.0] * 20)
    method = distillm(total_steps=10, validations=validations)
    method.start_training()
    for step in range(1, 11):
        method.step = step
        method.prepare_batch(TokenLM(STUDENT), collated(), ScriptedRng([0.999]))
    assert calls == expected


@pytest.mark.parametrize("schedule,step,expected", [
    ("decreasing", 1, 0.8 * 0.9), ("decreasing", 3, 0.8 * 0.7), ("decreasing", 10, 0.0),
    ("constant", 1, 0.4), ("constant", 7, 0.4),
    ("increasing", 1, 0.8 * 0.1), ("increasing", 3, 0.8 * 0.3), ("increasing", 10, 0.8),
])
def test_sampling_threshold_schedules(schedule, step, expected):
    method = distillm(replay_ratio=schedule, total_steps=10)
    method.state = AdaptiveState(threshold=0.8)
    method.step = step
    assert method.sampling_threshold() == pytest.approx(expected, abs=1e-12)


BUFFER = [([9], [8, 7]), ([6, 5], [4])]


@pytest.mark.parametrize("r,kind", [(0.1, "generated"), (0.5, "generated"), (0.6, "replayed"), (0.79, "replayed"),
                                    (0.85, "data"), (0.99, "data")])
def test_the_draw_picks_generation_replay_or_data_once_the_buffer_is_full(monkeypatch, r, kind):
    # threshold 0.8, sampling threshold 0.8 * (1 - 3 / 10) = 0.56 at step 3 of 10, a full buffer of 2.
    stub = StubResample()
    monkeypatch.setattr(harness.generation, "resample", stub)
    scripted_validation(monkeypatch, [1.0] * 5)
    method = distillm(capacity=2, total_steps=10)
    method.state = AdaptiveState(threshold=0.8, best=1.0, buffer=list(BUFFER), last_validated=2)
    method.step = 3
    batch = collated()
    chosen = batch.chosen
    rng = ScriptedRng([r])
    out = method.prepare_batch(TokenLM(STUDENT), batch, rng)
    assert method.state.draws == {"data": 0, "generated": 0, "replayed": 0, kind: 1}
    assert len(stub.calls) == (kind == "generated")
    if kind == "data":
        assert out.chosen is chosen and method.state.buffer == BUFFER
    elif kind == "generated":
        # The stub answers [1, 2, 3]: the oldest entries make room for the newest.
        assert method.state.buffer == [([1, 2], [1, 2, 3]), ([4], [1, 2, 3])]
        assert method.usage["generated_tokens"] == 6
    else:
        pairs = list(zip(prompts_of(out.chosen), responses(out.chosen)))
        assert pairs == rng.sampled[0] and sorted(pairs) == sorted(BUFFER)
        assert method.state.buffer == BUFFER and method.usage["generated_tokens"] == 0


def test_below_the_threshold_a_buffer_not_yet_full_generates_and_keeps_the_newest(monkeypatch):
    monkeypatch.setattr(harness.generation, "resample", StubResample())
    scripted_validation(monkeypatch, [1.0])
    method = distillm(init_threshold=1.0, capacity=3, replay_ratio="constant")  # sampling threshold 0.5
    method.step = 1
    method.prepare_batch(TokenLM(STUDENT), collated(), ScriptedRng([0.7]))
    assert method.state.buffer == [([1, 2], [1, 2, 3]), ([4], [1, 2, 3])]
    method.prepare_batch(TokenLM(STUDENT), collated([ROWS[1], ROWS[0]]), ScriptedRng([0.7]))  # 2 < 3: generate
    assert method.state.draws == {"data": 0, "generated": 2, "replayed": 0}
    assert method.state.buffer == [([4], [1, 2, 3]), ([4], [1, 2, 3]), ([1, 2], [1, 2, 3])]


def test_a_buffer_smaller_than_the_micro_batch_generates_instead_of_replaying(monkeypatch):
    """capacity 1 < batch 2: a replay draw cannot be served from the buffer, so the student generates."""
    stub = StubResample()
    monkeypatch.setattr(harness.generation, "resample", stub)
    scripted_validation(monkeypatch, [1.0])
    method = distillm(init_threshold=1.0, capacity=1, replay_ratio="constant")  # sampling threshold 0.5
    method.step = 1
    for _ in range(2):
        method.prepare_batch(TokenLM(STUDENT), collated(), ScriptedRng([0.7]))
    assert method.state.draws == {"data": 0, "generated": 2, "replayed": 0}
    assert len(stub.calls) == 2 and len(method.state.buffer) == 1


def llama_batch(rows=LLAMA_ROWS[:2]):
    return collate(rows, list(range(len(rows))), pad_id=0)


def responses(seqs):
    return [seqs.labels[b][seqs.labels[b] != -100].tolist() for b in range(seqs.labels.shape[0])]


LLAMA_VALIDATION_TOKENS = (4 + 2) + (2 + 5) + (3 + 1)


def test_generation_fills_the_buffer_then_replays_it(tiny_model):
    method = distillm(teacher=None, validation=LLAMA_ROWS, init_threshold=1.0, capacity=2, replay_ratio="constant",
                      max_new_tokens=5, max_seq_len=64, eos_id=LLAMA_EOS)
    method.start_training()
    method.step = 1
    prompts = [r.prompt_ids for r in LLAMA_ROWS[:2]]

    # 1. r = 0.7: above the sampling threshold 0.5 but the buffer is empty: the student's samples are generated.
    rng = ScriptedRng([0.7], seed=5)
    out = method.prepare_batch(tiny_model, llama_batch(), rng)
    sampled = responses(out.chosen)
    assert prompts_of(out.chosen) == prompts
    assert sampled != [r.chosen_ids for r in LLAMA_ROWS[:2]]
    seed = random.Random(5).randrange(2**31)
    assert sampled == generate_ids(tiny_model, prompts, 5, pad_id=0, eos_id=LLAMA_EOS, batch_size=2, do_sample=True,
                                   temperature=1.0, seed=seed, desc=None)
    assert method.usage["generated_tokens"] == sum(len(s) for s in sampled) > 0
    assert method.state.buffer == list(zip(prompts, sampled))
    assert method.usage["student_forward_tokens"] == LLAMA_VALIDATION_TOKENS  # the one validation before step 1

    # 2. r = 0.7 again, the buffer now full: a micro-batch is replayed from it, nothing generated.
    generated = method.usage["generated_tokens"]
    rng = ScriptedRng([0.7], seed=6)
    out = method.prepare_batch(tiny_model, llama_batch(LLAMA_ROWS[1:]), rng)
    pairs = list(zip(prompts_of(out.chosen), responses(out.chosen)))
    assert pairs == rng.sampled[0]
    assert sorted(pairs) == sorted(zip(prompts, sampled))
    assert out.counts()["chosen_tokens"] == sum(len(s) for s in sampled)
    assert method.usage["generated_tokens"] == generated
    assert method.state.draws == {"data": 0, "generated": 1, "replayed": 1}

    # 3. r = 0.2, below the sampling threshold: fresh samples, which replace the oldest in the buffer.
    out = method.prepare_batch(tiny_model, llama_batch(LLAMA_ROWS[1:]), ScriptedRng([0.2], seed=7))
    fresh = list(zip(prompts_of(out.chosen), responses(out.chosen)))
    assert [p for p, _ in fresh] == [r.prompt_ids for r in LLAMA_ROWS[1:]]
    assert method.state.buffer == fresh
    assert method.usage["generated_tokens"] == generated + sum(len(s) for _, s in fresh)
    assert method.state.draws == {"data": 0, "generated": 2, "replayed": 1}


def test_start_training_resets_the_state(monkeypatch):
    monkeypatch.setattr(harness.generation, "resample", StubResample())
    calls = scripted_validation(monkeypatch, [1.0, 5.0, 0.5])
    method = distillm(init_threshold=0.5, total_steps=2, validations=2, replay_ratio="constant")
    method.start_training()
    for step in (1, 2):
        method.step = step
        method.prepare_batch(TokenLM(STUDENT), collated(), ScriptedRng([0.1]))
    assert method.state.threshold == pytest.approx(0.6) and method.state.buffer
    method.start_training()
    assert method.state is None
    method.step = 1
    method.prepare_batch(TokenLM(STUDENT), collated(), ScriptedRng([0.99]))
    assert calls == [1, 2, 1]  # validated afresh before the new run's first step
    assert method.state.threshold == 0.5 and method.state.best == 0.5
    assert method.state.buffer == [] and method.state.draws == {"data": 1, "generated": 0, "replayed": 0}


# --- config and registration ----------------------------------------------------------------------------------


@pytest.mark.parametrize("field,bad", [
    ("loss", "kl"), ("loss", "SKL"), ("alpha", -0.1), ("alpha", 1.0), ("kd_ratio", -0.1), ("kd_ratio", 1.1),
    ("init_threshold", -0.1), ("init_threshold", 1.5), ("validations", 0), ("validation_examples", 0),
    ("capacity", 0), ("replay_ratio", "random"), ("temperature", 0.0), ("temperature", -1.0),
])
def test_config_rejects_bad_values(field, bad):
    with pytest.raises(BenchError, match=field):
        DistiLLMConfig(**{field: bad})


@pytest.mark.parametrize("field,ok", [("alpha", 0.0), ("alpha", 0.99), ("kd_ratio", 0.0), ("kd_ratio", 1.0),
                                      ("init_threshold", 0.0), ("init_threshold", 1.0), ("capacity", 1),
                                      ("loss", "srkl"), ("replay_ratio", "increasing"), ("replay_ratio", "constant")])
def test_config_accepts_the_edges(field, ok):
    assert getattr(DistiLLMConfig(**{field: ok}), field) == ok


def test_config_defaults_are_the_released_scripts():
    cfg = DistiLLMConfig()
    assert (cfg.loss, cfg.alpha, cfg.kd_ratio, cfg.adaptive, cfg.init_threshold, cfg.loss_eps, cfg.replay_ratio) == (
        "skl", 0.1, 1.0, True, 0.0, 0.1, "decreasing")


def test_registered_with_a_live_teacher_and_a_shared_vocabulary():
    import methods  # noqa: F401
    from harness.registry import METHODS

    assert METHODS.get("distillm") is DistiLLM
    assert DistiLLM.needs == ("teacher_model",)
    assert DistiLLM.needs_shared_vocab is True


# --- train() ----------------------------------------------------------------------------------------------------


def train_rows(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)

    def ids(lo, hi):
        length = int(torch.randint(lo, hi + 1, (1,), generator=g))
        return torch.randint(1, 63, (length,), generator=g).tolist()

    return [Encoded(ids(1, 4), ids(1, 4), ids(1, 4)) for _ in range(n)]


BUDGET = Budget(name="t", description="test", train_examples=4, max_seq_len=16, max_prompt_len=6, batch_size=2,
                grad_accum=2, max_steps=2, learning_rate=1e-2, warmup_ratio=0.0, lr_schedule="constant")


@pytest.mark.parametrize("init_threshold", [0.0, 1.0])
def test_train_drives_the_scheduler_and_records_the_validation_tokens(tiny_model, init_threshold):
    method = distillm(teacher=tiny_llama(seed=1), validation=LLAMA_ROWS, total_steps=2, validations=2,
                      init_threshold=init_threshold, max_new_tokens=4, max_seq_len=BUDGET.max_seq_len,
                      eos_id=LLAMA_EOS)
    method.state = AdaptiveState(threshold=0.5, buffer=[([1], [2])])  # stale state: train() must reset it
    result = train(method, tiny_model, train_rows(), {}, BUDGET, 0, seed=0, desc="test")
    assert result.optimizer_steps == 2
    # Validated before step 1 and after step 1 (interval round(2 / 2) = 1).
    assert result.student_forward_tokens == method.usage["student_forward_tokens"] == 2 * LLAMA_VALIDATION_TOKENS
    assert sum(method.state.draws.values()) == 2 * 2
    if init_threshold == 0.0:  # the loss cannot rise by 0.1 on a 2-step run here: data only
        assert method.state.draws["data"] == 4 and result.generated_tokens == 0
    else:  # the buffer (capacity 1000) never fills: every micro-batch generates
        assert method.state.draws["generated"] == 4 and len(method.state.buffer) == 8
        assert 0 < result.generated_tokens == method.usage["generated_tokens"] <= 4 * 2 * 4
    assert result.teacher_tokens == result.student_tokens > 0
    assert all(math.isfinite(e["loss"]) for e in result.loss_curve)
    assert all(e["term/threshold"] == pytest.approx(init_threshold) for e in result.loss_curve)
