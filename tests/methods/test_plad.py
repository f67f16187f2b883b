"""PLaD: the teacher's answer (y+) ranked above the student's own sample (y-) by a calibration loss on the
student's sequence likelihood; values by hand with the token-conditioned fake LM."""

from __future__ import annotations

import math

import pytest

from harness.batch import with_responses
from harness.errors import BenchError
from methods.plad import PLaD, PLaDConfig
from tests.methods.helpers import ROWS, TokenLM, collated, response_logps, sgd_step
from tests.methods.helpers import STUDENT as TABLE

GOOD = [[2, 3, 1, 4], [0, 2]]  # teacher answers to the two prompts of ROWS
BAD = [[4, 4], [1, 3, 0]]  # student samples


def make_batch():
    batch = collated()
    batch.signals["teacher_samples"] = with_responses(batch.chosen, GOOD, pad_id=0)
    batch.signals["student_samples"] = with_responses(batch.chosen, BAD, pad_id=0)
    return batch


def scores(mean=False):
    out = []
    for row, good, bad in zip(ROWS, GOOD, BAD):
        g = response_logps(row.prompt_ids, good, TABLE)
        b = response_logps(row.prompt_ids, bad, TABLE)
        out.append((sum(g) / len(g), sum(b) / len(b)) if mean else (sum(g), sum(b)))
    return out


@pytest.mark.parametrize("config,per_pair", [
    (PLaDConfig(), lambda g, b: max(0.0, 1.0 - g + b)),
    (PLaDConfig(delta=5.0), lambda g, b: max(0.0, 5.0 - g + b)),
    (PLaDConfig(loss="sigmoid", beta=0.3), lambda g, b: math.log1p(math.exp(-0.3 * (g - b)))),
])
def test_loss_by_hand(config, per_pair):
    out = PLaD(config).loss(TokenLM(TABLE), make_batch())
    expected = sum(per_pair(g, b) for g, b in scores())
    assert [(t.name, t.per) for t in out.terms] == [("rank", "pairs")]
    assert float(out.terms[0].total.detach()) == pytest.approx(expected, abs=1e-4)


def test_mean_score_and_sft_regulariser():
    out = PLaD(PLaDConfig(score="mean", delta=3.0, sft_weight=0.5)).loss(TokenLM(TABLE), make_batch())
    rank = sum(max(0.0, 3.0 - g + b) for g, b in scores(mean=True))
    nll = -sum(sum(response_logps(r.prompt_ids, g, TABLE)) for r, g in zip(ROWS, GOOD))
    terms = {t.name: (float(t.total.detach()), t.per) for t in out.terms}
    assert terms["rank"][0] == pytest.approx(rank, abs=1e-4)
    assert terms["nll"] == (pytest.approx(0.5 * nll, abs=1e-4), "teacher_samples_tokens")


def test_a_step_ranks_the_teacher_answer_higher():
    model = TokenLM(TABLE)
    batch = make_batch()
    config = PLaDConfig(loss="sigmoid", beta=1.0)
    before = PLaD(config).loss(model, batch)
    before.terms[0].total.backward()
    sgd_step(model, lr=0.1)
    after = PLaD(config).loss(model, batch)
    assert float(after.terms[0].total.detach()) < float(before.terms[0].total.detach())
    margin = [g - b for g, b in scores()]
    new_table = model.table.detach().tolist()
    new_margin = [sum(response_logps(r.prompt_ids, g, new_table)) - sum(response_logps(r.prompt_ids, b, new_table))
                  for r, g, b in zip(ROWS, GOOD, BAD)]
    assert sum(new_margin) > sum(margin)


def test_hinge_is_zero_once_the_margin_is_met():
    out = PLaD(PLaDConfig(delta=0.0)).loss(TokenLM(TABLE), make_batch())
    expected = sum(max(0.0, b - g) for g, b in scores())
    assert float(out.terms[0].total.detach()) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("kwargs", [{"loss": "dpo"}, {"score": "max"}, {"delta": -1.0}, {"beta": 0.0},
                                    {"sft_weight": -0.1}])
def test_config_validation(kwargs):
    with pytest.raises(BenchError, match="plad"):
        PLaDConfig(**kwargs)
