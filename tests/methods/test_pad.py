"""PAD: Plackett-Luce distributions over all rankings of n samples, the JSD between the student's and the
teacher's, the vanilla ranking loss, and the official code's JSD form; values by hand in plain Python."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from harness.batch import pad_sequences
from harness.errors import BenchError
from methods.pad import PAD, PADConfig, permutations, plackett_luce_logp, ranking_jsd
from tests.methods.helpers import ROWS, TokenLM, collated, response_logps, sgd_step
from tests.methods.helpers import STUDENT as TABLE

R_S = [0.2, -0.5, 0.1]
R_T = [-0.3, 0.4, 0.0]


def pl(rewards, tau, beta):
    """P(tau) = prod_k exp(beta r_tau_k) / sum_{m >= k} exp(beta r_tau_m)."""
    p = 1.0
    for k in range(len(tau)):
        p *= math.exp(beta * rewards[tau[k]]) / sum(math.exp(beta * rewards[tau[m]]) for m in range(k, len(tau)))
    return p


def dists(beta):
    taus = list(itertools.permutations(range(3)))
    return taus, [pl(R_S, t, beta) for t in taus], [pl(R_T, t, beta) for t in taus]


def test_plackett_luce_by_hand_and_normalised():
    taus, ps, _ = dists(2.0)
    got = plackett_luce_logp(torch.tensor([R_S]), permutations(3), 2.0).exp()[0].tolist()
    assert permutations(3).tolist() == [list(t) for t in taus]
    assert got == pytest.approx(ps, abs=1e-6)
    assert sum(got) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("form", ["textbook", "official"])
def test_ranking_jsd_by_hand(form):
    _, ps, pt = dists(3.0)
    m = [(a + b) / 2 for a, b in zip(ps, pt)]
    if form == "textbook":
        expected = 0.5 * sum(a * math.log(a / x) for a, x in zip(ps, m)) + 0.5 * sum(b * math.log(b / x) for b, x in zip(pt, m))
    else:
        expected = 0.5 * sum(x * math.log(x / a) for a, x in zip(ps, m)) + 0.5 * sum(x * math.log(x / b) for b, x in zip(pt, m))
    perms = permutations(3)
    got = ranking_jsd(plackett_luce_logp(torch.tensor([R_S]), perms, 3.0),
                      plackett_luce_logp(torch.tensor([R_T]), perms, 3.0), form)
    assert float(got[0]) == pytest.approx(expected, abs=1e-6)
    assert float(ranking_jsd(plackett_luce_logp(torch.tensor([R_T]), perms, 3.0),
                             plackett_luce_logp(torch.tensor([R_T]), perms, 3.0), form)[0]) == pytest.approx(0, abs=1e-7)


def test_forms_differ():
    perms = permutations(3)
    a, b = (plackett_luce_logp(torch.tensor([r]), perms, 3.0) for r in (R_S, R_T))
    assert float(ranking_jsd(a, b, "textbook")[0]) != pytest.approx(float(ranking_jsd(a, b, "official")[0]), abs=1e-6)


# Three samples per prompt for the two prompts of ROWS; the teacher's scores are given.
SAMPLES = [[[2, 3], [4], [0, 1, 2]], [[1, 1], [3, 0, 4], [2]]]
TEACHER_SCORES = [[-1.0, -0.2, -3.0], [-0.5, -2.0, -1.5]]


def make_batch():
    batch = collated()
    prompts = [r.prompt_ids for r in ROWS]
    seqs = pad_sequences([p for p in prompts for _ in range(3)], [s for per in SAMPLES for s in per], 0)
    batch.signals["scored_samples"] = {"seqs": seqs, "teacher_scores": torch.tensor(TEACHER_SCORES)}
    return batch


def student_rewards(table=TABLE):
    out = []
    for row, per in zip(ROWS, SAMPLES):
        out.append([sum(response_logps(row.prompt_ids, s, table)) / len(s) for s in per])
    return out


def test_pd_loss_is_the_per_example_jsd_summed():
    beta = 2.0
    taus = list(itertools.permutations(range(3)))
    expected = 0.0
    for r_s, r_t in zip(student_rewards(), TEACHER_SCORES):  # M per example, never pooled across the batch
        ps = [pl(r_s, t, beta) for t in taus]
        pt = [pl(r_t, t, beta) for t in taus]
        m = [(a + b) / 2 for a, b in zip(ps, pt)]
        expected += 0.5 * sum(a * math.log(a / x) for a, x in zip(ps, m)) + 0.5 * sum(b * math.log(b / x) for b, x in zip(pt, m))
    out = PAD(PADConfig(beta=beta)).loss(TokenLM(TABLE), make_batch())
    assert [(t.name, t.per) for t in out.terms] == [("pd", "pairs")]
    assert float(out.terms[0].total.detach()) == pytest.approx(expected, abs=1e-5)


def test_rd_loss_is_minus_log_prob_of_the_teacher_ranking():
    beta = 2.0
    expected = 0.0
    for r_s, r_t in zip(student_rewards(), TEACHER_SCORES):
        tau = sorted(range(3), key=lambda i: -r_t[i])
        expected -= math.log(pl(r_s, tau, beta))
    out = PAD(PADConfig(beta=beta, loss="rd")).loss(TokenLM(TABLE), make_batch())
    assert float(out.terms[0].total.detach()) == pytest.approx(expected, abs=1e-5)


def test_a_step_moves_the_student_ranking_toward_the_teacher():
    model = TokenLM(TABLE)
    batch = make_batch()
    method = PAD(PADConfig(beta=2.0))
    before = method.loss(model, batch)
    before.terms[0].total.backward()
    sgd_step(model, lr=0.5)
    after = method.loss(model, batch)
    assert float(after.terms[0].total.detach()) < float(before.terms[0].total.detach())


def test_one_sample_per_prompt_is_refused():
    batch = make_batch()
    batch.signals["scored_samples"]["teacher_scores"] = torch.zeros(6, 1)
    with pytest.raises(BenchError, match="samples_per_prompt"):
        PAD().loss(TokenLM(TABLE), batch)


@pytest.mark.parametrize("kwargs", [{"beta": 0.0}, {"loss": "simpo"}, {"jsd_form": "mine"}])
def test_config_validation(kwargs):
    with pytest.raises(BenchError, match="pad"):
        PADConfig(**kwargs)
