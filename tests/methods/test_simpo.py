"""SimPO's loss on a hand-built batch: -log σ(β·mean logp(y_w) − β·mean logp(y_l) − γ), γ = gamma_beta_ratio·β,
plain and label-smoothed, its gradient direction, and config validation."""

from __future__ import annotations

import pytest
import torch

from harness.errors import BenchError
from harness.losses import forward, sequence_logps
from methods.simpo import SimPO, SimPOConfig
from tests.methods.helpers import ROWS, TokenLM, collated, log_sigmoid, normalised, response_logps, sgd_step
from tests.methods.helpers import STUDENT as TABLE


def mean_logp(prompt, response):
    lps = response_logps(prompt, response, TABLE)
    return sum(lps) / len(lps)


def expected(beta, ratio, eps, rows=ROWS, mean=mean_logp):
    """(h, loss) per pair, by formula."""
    out = []
    for r in rows:
        h = beta * mean(r.prompt_ids, r.chosen_ids) - beta * mean(r.prompt_ids, r.rejected_ids) - ratio * beta
        out.append((h, -(1 - eps) * log_sigmoid(h) - eps * log_sigmoid(-h)))
    return out


@pytest.mark.parametrize("beta,ratio,eps", [(2.0, 0.5, 0.0), (2.5, 0.0, 0.0), (0.7, 0.3, 0.0), (2.0, 0.5, 0.2)])
def test_simpo_loss_by_formula(beta, ratio, eps):
    batch = collated()
    out = SimPO(SimPOConfig(beta=beta, gamma_beta_ratio=ratio, label_smoothing=eps)).loss(TokenLM(TABLE), batch)
    pairs = expected(beta, ratio, eps)
    assert [(t.name, t.per) for t in out.terms] == [("simpo", "pairs")]
    assert float(out.terms[0].total.detach()) == pytest.approx(sum(loss for _, loss in pairs), abs=1e-5)
    assert batch.counts()["pairs"] == 2
    assert float(normalised(out, batch).detach()) == pytest.approx(sum(loss for _, loss in pairs) / 2, abs=1e-5)
    assert out.student_tokens == (5 + 2) + (4 + 5)
    assert out.stats["reward_accuracy"] == pytest.approx(sum(h > 0 for h, _ in pairs) / 2)


def test_the_formula_cases_are_distinguishable():
    # Guards the parametrised test: length normalisation, the margin and the smoothing each change the value.
    def total(pairs):
        return sum(loss for _, loss in pairs)

    base = total(expected(2.0, 0.5, 0.0))

    def summed(prompt, response):
        return sum(response_logps(prompt, response, TABLE))

    assert abs(base - total(expected(2.0, 0.5, 0.0, mean=summed))) > 1e-2  # mean, not sum, of log-probs
    assert abs(base - total(expected(2.0, 0.0, 0.0))) > 1e-2  # gamma matters
    assert abs(base - total(expected(2.0, 0.5, 0.2))) > 1e-2  # label smoothing matters
    # The rows give each pair responses of different lengths, so the length normalisation is exercised.
    assert {len(r.chosen_ids) for r in ROWS} != {len(r.rejected_ids) for r in ROWS}


def test_simpo_margin_is_a_fraction_of_beta():
    # Identical chosen and rejected: h = -gamma = -ratio * beta exactly, whatever the model.
    rows = [r.__class__(r.prompt_ids, r.chosen_ids, r.chosen_ids) for r in ROWS]
    out = SimPO(SimPOConfig(beta=4.0, gamma_beta_ratio=0.25)).loss(TokenLM(TABLE), collated(rows))
    assert float(out.terms[0].total.detach()) == pytest.approx(2 * -log_sigmoid(-1.0), abs=1e-5)
    assert out.stats["reward_accuracy"] == 0.0


def test_simpo_sgd_step_lowers_the_loss_and_raises_the_normalised_margin():
    model = TokenLM(TABLE)
    batch = collated()
    method = SimPO(SimPOConfig(beta=2.0, gamma_beta_ratio=0.5))

    def margin():
        with torch.no_grad():
            pc, nc = sequence_logps(forward(model, batch.chosen), batch.chosen)
            pr, nr = sequence_logps(forward(model, batch.rejected), batch.rejected)
        return float((pc / nc - pr / nr).sum())

    margin_before = margin()
    assert margin_before == pytest.approx(sum(mean_logp(r.prompt_ids, r.chosen_ids)
                                              - mean_logp(r.prompt_ids, r.rejected_ids) for r in ROWS), abs=1e-5)
    before = normalised(method.loss(model, batch), batch)
    before.backward()
    sgd_step(model)
    after = normalised(method.loss(model, batch), batch)
    assert float(after.detach()) < float(before.detach()) - 1e-3
    assert margin() > margin_before + 1e-3


@pytest.mark.parametrize("beta", [0.0, -1.0])
def test_simpo_rejects_non_positive_beta(beta):
    with pytest.raises(BenchError, match="beta"):
        SimPOConfig(beta=beta)


def test_simpo_rejects_negative_gamma_beta_ratio():
    with pytest.raises(BenchError, match="gamma_beta_ratio"):
        SimPOConfig(gamma_beta_ratio=-0.1)


@pytest.mark.parametrize("eps", [-0.1, 0.5])
def test_simpo_rejects_label_smoothing_outside_range(eps):
    with pytest.raises(BenchError, match="label_smoothing"):
        SimPOConfig(label_smoothing=eps)


def test_simpo_accepts_a_zero_margin():
    assert SimPOConfig(gamma_beta_ratio=0.0).gamma_beta_ratio == 0.0
