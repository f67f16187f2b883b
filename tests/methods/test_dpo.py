"""DPO's loss on a hand-built batch: -log σ(β((πc − refc) − (πr − refr))), plain and label-smoothed."""

from __future__ import annotations

import math

import pytest
import torch

from harness.errors import BenchError
from harness.losses import forward, sequence_logps
from methods.dpo import DPO, DPOConfig
from tests.methods.helpers import ROWS, TokenLM, collated, response_logps, sgd_step
from tests.methods.helpers import STUDENT as TABLE

REF = [[-5.0, -3.0], [-2.5, -9.0]]  # reference (chosen, rejected) summed log-probs per pair


def seq_logp(prompt, response):
    return sum(response_logps(prompt, response, TABLE))


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def make_batch(rows=ROWS, ref=REF):
    batch = collated(rows)
    batch.signals["reference_logps"] = torch.tensor(ref)
    return batch


def expected_losses(beta, eps, rows=ROWS, ref=REF):
    out = []
    for r, (ref_c, ref_r) in zip(rows, ref):
        h = beta * ((seq_logp(r.prompt_ids, r.chosen_ids) - ref_c) - (seq_logp(r.prompt_ids, r.rejected_ids) - ref_r))
        out.append((h, -(1 - eps) * log_sigmoid(h) - eps * log_sigmoid(-h)))
    return out


@pytest.mark.parametrize("beta,eps", [(0.1, 0.0), (0.5, 0.0), (0.5, 0.2)])
def test_dpo_loss_by_formula(beta, eps):
    batch = make_batch()
    out = DPO(DPOConfig(beta=beta, label_smoothing=eps)).loss(TokenLM(TABLE), batch)
    expected = expected_losses(beta, eps)
    assert [(t.name, t.per) for t in out.terms] == [("dpo", "pairs")]
    assert float(out.terms[0].total.detach()) == pytest.approx(sum(loss for _, loss in expected), abs=1e-5)
    assert batch.counts()["pairs"] == 2
    assert out.student_tokens == (5 + 2) + (4 + 5)
    hs = [h for h, _ in expected]
    assert out.stats["reward_margin"] == pytest.approx(sum(hs) / len(hs) / beta, abs=1e-4)
    assert out.stats["reward_accuracy"] == pytest.approx(sum(h > 0 for h in hs) / len(hs))


def test_label_smoothing_changes_the_loss():
    # Guards the parametrised test above against label_smoothing being ignored.
    plain = expected_losses(0.5, 0.0)
    smoothed = expected_losses(0.5, 0.2)
    assert abs(sum(x for _, x in plain) - sum(x for _, x in smoothed)) > 1e-2


def test_dpo_at_the_reference_is_log_2():
    # When the policy equals the reference, h = 0 and each pair's loss is log 2 whatever beta.
    ref = [[seq_logp(r.prompt_ids, r.chosen_ids), seq_logp(r.prompt_ids, r.rejected_ids)] for r in ROWS]
    out = DPO(DPOConfig(beta=0.3)).loss(TokenLM(TABLE), make_batch(ref=ref))
    assert float(out.terms[0].total.detach()) == pytest.approx(2 * math.log(2), abs=1e-5)


def test_dpo_sgd_step_lowers_the_loss_and_raises_the_margin():
    rows, ref = ROWS[:1], REF[:1]
    model = TokenLM(TABLE)
    batch = make_batch(rows, ref)
    method = DPO(DPOConfig(beta=0.5))

    def margin():
        with torch.no_grad():
            pc, _ = sequence_logps(forward(model, batch.chosen), batch.chosen)
            pr, _ = sequence_logps(forward(model, batch.rejected), batch.rejected)
        return float((pc - pr).sum())

    margin_before = margin()
    before = method.loss(model, batch).terms[0].total
    before.backward()
    sgd_step(model)
    after = method.loss(model, batch).terms[0].total
    assert float(after.detach()) < float(before.detach()) - 1e-3
    assert margin() > margin_before + 1e-3


@pytest.mark.parametrize("beta", [0.0, -0.1])
def test_dpo_rejects_non_positive_beta(beta):
    with pytest.raises(BenchError, match="beta"):
        DPOConfig(beta=beta)


@pytest.mark.parametrize("eps", [-0.1, 0.5])
def test_dpo_rejects_label_smoothing_outside_range(eps):
    with pytest.raises(BenchError, match="label_smoothing"):
        DPOConfig(label_smoothing=eps)
