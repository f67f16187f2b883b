"""DPKD: the paper's sequence-level preference loss with the teacher as reference, and LMOps' token-level
argmax variant mixed with the NLL; values by hand with token-conditioned fake LMs."""

from __future__ import annotations

import functools
import math

import pytest

from harness.batch import with_responses
from harness.errors import BenchError
from methods.dpkd import DPKD, RECIPES
from methods.dpkd import DPKDConfig as _DPKDConfig
from tests.methods.helpers import (
    ROWS,
    STUDENT,
    TEACHER,
    TokenLM,
    collated,
    log_softmax,
    response_logps,
    sgd_step,
    transitions,
    with_live_teacher,
)

GOOD = [[2, 3, 1, 4], [0, 2]]  # the teacher's answers
BAD = [[4, 4], [1, 3, 0]]  # the student's samples

# These tests check the equations, so they start from the paper recipe; the released (default) recipe is
# pinned in tests/harness/test_recipes.py.
DPKDConfig = functools.partial(_DPKDConfig, **RECIPES["paper"].values)


def make_batch():
    batch = collated()
    batch.signals["teacher_samples"] = with_responses(batch.chosen, GOOD, pad_id=0)
    batch.signals["student_samples"] = with_responses(batch.chosen, BAD, pad_id=0)
    return batch


def seq(prompt, response, table):
    return sum(response_logps(prompt, response, table))


def softplus(x):
    return math.log1p(math.exp(x))


@pytest.mark.parametrize("beta,eps", [(0.1, 0.0), (0.5, 0.2)])
def test_sequence_loss_by_hand(beta, eps):
    expected = 0.0
    for row, good, bad in zip(ROWS, GOOD, BAD):
        p = row.prompt_ids
        h = beta * ((seq(p, good, STUDENT) - seq(p, good, TEACHER)) - (seq(p, bad, STUDENT) - seq(p, bad, TEACHER)))
        expected += (1 - eps) * softplus(-h) + eps * softplus(h)
    method = with_live_teacher(DPKD(DPKDConfig(beta=beta, label_smoothing=eps)))
    batch = make_batch()
    out = method.loss(TokenLM(STUDENT), batch)
    assert [(t.name, t.per) for t in out.terms] == [("dpkd", "pairs")]
    assert float(out.terms[0].total.detach()) == pytest.approx(expected, abs=1e-4)
    seqs = batch.signals["teacher_samples"], batch.signals["student_samples"]
    assert method.usage["teacher_tokens"] == sum(s.n_tokens for s in seqs)


def test_token_argmax_variant_by_hand():
    beta, ratio = 0.5, 0.5
    dpkd_sum, nll_sum = 0.0, 0.0
    for prev, token in transitions(ROWS):
        lq, lp = log_softmax(STUDENT[prev]), log_softmax(TEACHER[prev])
        yt, ys = lp.index(max(lp)), lq.index(max(lq))
        h = (lq[yt] - lq[ys]) - (lp[yt] - lp[ys])
        dpkd_sum += softplus(-beta * h)
        nll_sum -= lq[token]
    out = with_live_teacher(DPKD(DPKDConfig(variant="token_argmax", beta=beta, kd_ratio=ratio))).loss(
        TokenLM(STUDENT), collated())
    terms = {t.name: (float(t.total.detach()), t.per) for t in out.terms}
    assert terms["dpkd"] == (pytest.approx(ratio * dpkd_sum, abs=1e-5), "chosen_tokens")
    assert terms["nll"] == (pytest.approx((1 - ratio) * nll_sum, abs=1e-5), "chosen_tokens")


def test_token_variant_positions_where_argmaxes_agree_give_log2_and_no_gradient():
    model = TokenLM(TEACHER)  # student == teacher: every argmax agrees, h = 0
    out = with_live_teacher(DPKD(DPKDConfig(variant="token_argmax", kd_ratio=1.0))).loss(model, collated())
    n = len(transitions(ROWS))
    assert float(out.terms[0].total.detach()) == pytest.approx(n * math.log(2), abs=1e-5)
    out.terms[0].total.backward()
    assert float(model.table.grad.abs().max()) == pytest.approx(0.0, abs=1e-7)


def test_a_step_raises_the_teacher_answer_over_the_student_sample():
    model = TokenLM(STUDENT)
    method = with_live_teacher(DPKD(DPKDConfig(beta=0.5)))
    batch = make_batch()
    before = method.loss(model, batch)
    before.terms[0].total.backward()
    sgd_step(model, lr=0.1)
    after = method.loss(model, batch)
    assert float(after.terms[0].total.detach()) < float(before.terms[0].total.detach())
    table = model.table.detach().tolist()
    margin = [seq(r.prompt_ids, g, table) - seq(r.prompt_ids, b, table) for r, g, b in zip(ROWS, GOOD, BAD)]
    old = [seq(r.prompt_ids, g, STUDENT) - seq(r.prompt_ids, b, STUDENT) for r, g, b in zip(ROWS, GOOD, BAD)]
    assert sum(margin) > sum(old)


@pytest.mark.parametrize("kwargs", [{"variant": "seq"}, {"beta": 0.0}, {"label_smoothing": 0.5}, {"kd_ratio": 1.5}])
def test_config_validation(kwargs):
    with pytest.raises(BenchError, match="dpkd"):
        DPKDConfig(**kwargs)
