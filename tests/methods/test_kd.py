"""KD's loss on a hand-built batch: a fake student whose logits depend on the current token, and a teacher
top-k signal built by hand (flat stored form, placed by collate_topk), checked against math formulas."""

from __future__ import annotations

import math

import pytest
import torch

from harness.errors import BenchError
from harness.losses import teacher_forward_kl
from methods.kd import KD, KDConfig
from tests.methods.helpers import (
    ROWS,
    STUDENT,
    TEACHER,
    TokenLM,
    bucket_kl,
    normalised,
    sgd_step,
    softmax,
    topk_batch,
    transitions,
)


def test_pure_kd_is_the_summed_bucket_kl():
    batch = topk_batch()
    out = KD().loss(TokenLM(STUDENT), batch)
    expected = sum(bucket_kl(prev) for prev, _ in transitions(ROWS))
    assert [(t.name, t.per) for t in out.terms] == [("kl", "chosen_tokens")]
    assert float(out.terms[0].total.detach()) == pytest.approx(expected, abs=1e-5)
    assert out.student_tokens == 5 + 2


def test_kd_with_ce_weight_mixes_kl_and_nll():
    batch = topk_batch()
    out = KD(KDConfig(ce_weight=0.3)).loss(TokenLM(STUDENT), batch)
    kl_sum = sum(bucket_kl(prev) for prev, _ in transitions(ROWS))
    nll_sum = -sum(math.log(softmax(STUDENT[prev])[nxt]) for prev, nxt in transitions(ROWS))
    terms = {t.name: t for t in out.terms}
    assert set(terms) == {"kl", "nll"}
    assert float(terms["kl"].total.detach()) == pytest.approx(0.7 * kl_sum, abs=1e-5)
    assert float(terms["nll"].total.detach()) == pytest.approx(0.3 * nll_sum, abs=1e-5)
    assert terms["nll"].per == "chosen_tokens"


def test_kd_is_zero_when_the_student_is_the_teacher():
    batch = topk_batch()
    out = KD().loss(TokenLM(TEACHER), batch)
    assert abs(float(out.terms[0].total.detach())) < 1e-5


def test_kd_sgd_step_lowers_the_bucket_kl():
    model = TokenLM(STUDENT)
    batch = topk_batch()
    before = normalised(KD().loss(model, batch), batch)
    before.backward()
    sgd_step(model)
    with torch.no_grad():
        kl, mask = teacher_forward_kl(model(batch.chosen.input_ids).logits[:, :-1], batch.chosen,
                                      batch.signals["teacher_topk:chosen"])
    after = kl.sum() / mask.sum()
    assert float(after.detach()) < float(before.detach()) - 1e-3


def test_kd_with_ce_sgd_step_lowers_the_loss():
    model = TokenLM(STUDENT)
    batch = topk_batch()
    method = KD(KDConfig(ce_weight=0.5))
    before = normalised(method.loss(model, batch), batch)
    before.backward()
    sgd_step(model)
    after = normalised(method.loss(model, batch), batch)
    assert float(after.detach()) < float(before.detach()) - 1e-3


@pytest.mark.parametrize("bad", [-0.1, 1.1])
def test_kd_rejects_ce_weight_outside_unit_interval(bad):
    with pytest.raises(BenchError, match="ce_weight"):
        KDConfig(ce_weight=bad)


@pytest.mark.parametrize("ok", [0.0, 1.0])
def test_kd_accepts_ce_weight_at_the_ends(ok):
    assert KDConfig(ce_weight=ok).ce_weight == ok
