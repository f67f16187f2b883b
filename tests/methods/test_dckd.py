"""DCKD's loss on a hand-built batch: weighted bucket KL(teacher || student) on the chosen and the rejected
response (+ optional NLL), the official code's clamps, and config validation."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from harness.errors import BenchError
from harness.losses import bucket_forward_kl
from methods.dckd import DCKD, RECIPES, official_bucket_kl
from methods.dckd import DCKDConfig as _DCKDConfig
from tests.methods.helpers import (
    ROWS,
    STUDENT,
    TokenLM,
    bucket_kl,
    clamp,
    normalised,
    sgd_step,
    softmax,
    topk_batch,
    transitions,
)

# After token 3 the teacher's favourite is token 3; this student gives it about e^-20 (below both clamps).
STUDENT_BINDING = [row[:] for row in STUDENT]
STUDENT_BINDING[3] = [8.0, 0.0, 0.0, -12.0, 0.0]

# These tests check the equations, so they start from the paper recipe; the released (default) recipe is
# pinned in tests/harness/test_recipes.py.
DCKDConfig = functools.partial(_DCKDConfig, **RECIPES["paper"].values)


def side_kl(side, student=STUDENT, official=False):
    return sum(bucket_kl(prev, student, official) for prev, _ in transitions(ROWS, side))


def make_batch(rows=ROWS):
    return topk_batch(rows, sides=("chosen", "rejected"))


def terms_of(out):
    return {t.name: (float(t.total.detach()), t.per) for t in out.terms}


def test_dckd_default_is_kl_on_both_sides():
    out = DCKD(DCKDConfig()).loss(TokenLM(STUDENT), make_batch())
    terms = terms_of(out)
    assert set(terms) == {"kl_chosen", "kl_rejected"}
    assert terms["kl_chosen"][0] == pytest.approx(side_kl("chosen_ids"), abs=1e-5)
    assert terms["kl_chosen"][1] == "chosen_tokens"
    assert terms["kl_rejected"][0] == pytest.approx(side_kl("rejected_ids"), abs=1e-5)
    assert terms["kl_rejected"][1] == "rejected_tokens"
    assert out.student_tokens == (5 + 2) + (4 + 5)


def test_dckd_weights_and_sft_term():
    cfg = DCKDConfig(chosen_weight=0.7, rejected_weight=0.2, sft_weight=0.5)
    out = DCKD(cfg).loss(TokenLM(STUDENT), make_batch())
    terms = terms_of(out)
    nll = -sum(math.log(softmax(STUDENT[prev])[nxt]) for prev, nxt in transitions(ROWS, "chosen_ids"))
    assert terms["kl_chosen"][0] == pytest.approx(0.7 * side_kl("chosen_ids"), abs=1e-5)
    assert terms["kl_rejected"][0] == pytest.approx(0.2 * side_kl("rejected_ids"), abs=1e-5)
    assert terms["nll"] == (pytest.approx(0.5 * nll, abs=1e-5), "chosen_tokens")


def test_dckd_rejected_weight_zero_drops_the_rejected_term():
    batch = make_batch()
    del batch.signals["teacher_topk:rejected"]  # not even looked at
    out = DCKD(DCKDConfig(rejected_weight=0.0)).loss(TokenLM(STUDENT), batch)
    terms = terms_of(out)
    assert set(terms) == {"kl_chosen"}
    assert terms["kl_chosen"][0] == pytest.approx(side_kl("chosen_ids"), abs=1e-5)
    assert out.student_tokens == 5 + 2  # the rejected side is not forwarded


def test_dckd_chosen_weight_zero_keeps_only_the_requested_terms():
    batch = make_batch()
    out = DCKD(DCKDConfig(chosen_weight=0.0, sft_weight=1.0)).loss(TokenLM(STUDENT), batch)
    assert set(terms_of(out)) == {"nll", "kl_rejected"}


def test_official_clamp_equals_default_where_no_clamp_binds():
    batch = make_batch()
    default = terms_of(DCKD(DCKDConfig()).loss(TokenLM(STUDENT), batch))
    official = terms_of(DCKD(DCKDConfig(official_clamp=True)).loss(TokenLM(STUDENT), batch))
    for name in ("kl_chosen", "kl_rejected"):
        assert official[name][0] == pytest.approx(default[name][0], rel=1e-5, abs=1e-6)


def test_official_clamp_differs_where_the_student_floor_binds():
    batch = make_batch()
    default = terms_of(DCKD(DCKDConfig()).loss(TokenLM(STUDENT_BINDING), batch))
    official = terms_of(DCKD(DCKDConfig(official_clamp=True)).loss(TokenLM(STUDENT_BINDING), batch))
    for name, side in (("kl_chosen", "chosen_ids"), ("kl_rejected", "rejected_ids")):
        assert default[name][0] == pytest.approx(side_kl(side, STUDENT_BINDING), rel=1e-5)
        assert official[name][0] == pytest.approx(side_kl(side, STUDENT_BINDING, official=True), rel=1e-5)
        assert default[name][0] - official[name][0] > 1.0  # log(1e-7) vs about -20 at a teacher-heavy bucket


# (teacher buckets, student buckets): top-2 + rest, as probabilities; float64 so tiny differences show.
CASES = [
    ([0.5, 0.3, 0.2], [0.4, 0.25, 0.35]),  # nothing binds
    ([0.9, 0.09, 0.01], [0.2, 0.3, 0.5]),  # nothing binds
    ([0.6, 0.4 - 1e-12, 1e-12], [0.5, 0.3, 0.2]),  # teacher bucket below 1e-8
    ([0.5, 0.3, 0.2], [0.5, 0.5 - 5e-8, 5e-8]),  # student bucket in (1e-8, 1e-7): the 1e-7 floor
    ([0.5, 0.3, 0.2], [0.7, 0.3 - 1e-10, 1e-10]),  # student bucket below 1e-8
]


def test_official_bucket_kl_per_position():
    t = torch.tensor([c[0] for c in CASES], dtype=torch.float64).log()
    s = torch.tensor([c[1] for c in CASES], dtype=torch.float64).log()
    default = bucket_forward_kl(t[:, :2], t[:, 2], s[:, :2], s[:, 2]).tolist()
    official = official_bucket_kl(t[:, :2], t[:, 2], s[:, :2], s[:, 2]).tolist()
    for i, (p, q) in enumerate(CASES):
        exact = sum(a * math.log(a / b) for a, b in zip(p, q))
        pc = [clamp(a, 1e-8, 1 - 1e-8) for a in p]
        qc = [max(clamp(b, 1e-8, 1 - 1e-8), 1e-7) for b in q]
        clamped = sum(a * math.log(a / b) for a, b in zip(pc, qc))
        assert default[i] == pytest.approx(exact, rel=1e-9, abs=1e-12)
        assert official[i] == pytest.approx(clamped, rel=1e-9, abs=1e-12)
        binds = min(p) < 1e-8 or min(q) < 1e-7
        if binds:
            assert abs(official[i] - default[i]) > 1e-8
        else:
            assert official[i] == pytest.approx(default[i], rel=1e-12, abs=1e-15)


def test_dckd_sgd_step_lowers_the_loss():
    model = TokenLM(STUDENT)
    batch = make_batch()
    method = DCKD(DCKDConfig(chosen_weight=1.0, rejected_weight=0.5, sft_weight=0.2))
    before = normalised(method.loss(model, batch), batch)
    before.backward()
    sgd_step(model)
    after = normalised(method.loss(model, batch), batch)
    assert float(after.detach()) < float(before.detach()) - 1e-3


@pytest.mark.parametrize("field", ["chosen_weight", "rejected_weight", "sft_weight"])
def test_dckd_rejects_negative_weights(field):
    with pytest.raises(BenchError, match=field):
        DCKDConfig(**{field: -0.1})


def test_dckd_rejects_both_kl_weights_zero():
    with pytest.raises(BenchError, match="both 0"):
        DCKDConfig(chosen_weight=0.0, rejected_weight=0.0, sft_weight=1.0)


def test_dckd_accepts_one_kl_weight_zero():
    assert DCKDConfig(chosen_weight=0.0).rejected_weight == 1.0
