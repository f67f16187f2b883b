"""PAD: Plackett-Luce distributions over all rankings of n samples, the JSD between the student's and the
teacher's, the vanilla ranking loss, and the official code's JSD form; values by hand in plain Python."""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch

from harness.batch import pad_sequences
from harness.errors import BenchError
from methods.pad import PAD, RECIPES, permutations, plackett_luce_logp, ranking_jsd
from methods.pad import PADConfig as _PADConfig
from tests.methods.helpers import ROWS, TokenLM, collated, response_logps, sgd_step
from tests.methods.helpers import STUDENT as TABLE

R_S = [0.2, -0.5, 0.1]
R_T = [-0.3, 0.4, 0.0]

# These tests check the equations, so they start from the paper recipe; the released (default) recipe is
# pinned in tests/harness/test_recipes.py.
PADConfig = functools.partial(_PADConfig, **RECIPES["paper"].values)


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
    # The released code ranks by the teacher's MCQ score for the rd loss: here the MCQ scores are TEACHER_SCORES.
    out = PAD(PADConfig(beta=beta, loss="rd")).loss(TokenLM(TABLE), batch_with(mcq=TEACHER_SCORES))
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
        PAD(PADConfig()).loss(TokenLM(TABLE), batch)


@pytest.mark.parametrize("kwargs", [{"beta": 0.0}, {"loss": "simpo"}, {"jsd_form": "mine"}])
def test_config_validation(kwargs):
    with pytest.raises(BenchError, match="pad"):
        PADConfig(**kwargs)


# --- The teacher's MCQ reward (alpha), the diversity and MCQ filters, the signal options ------------------------

# The teacher's MCQ scores of the samples of make_batch(): log of (win probability sum / (n - 1)), ranked otherwise
# than TEACHER_SCORES in both prompts.
MCQ = [[math.log(0.9), math.log(0.2), math.log(0.4)], [math.log(0.1), math.log(0.7), math.log(0.45)]]


def pd_by_hand(r_s, r_t, beta):
    taus = list(itertools.permutations(range(len(r_s))))
    ps = [pl(r_s, t, beta) for t in taus]
    pt = [pl(r_t, t, beta) for t in taus]
    m = [(a + b) / 2 for a, b in zip(ps, pt)]
    return 0.5 * sum(a * math.log(a / x) for a, x in zip(ps, m)) + 0.5 * sum(b * math.log(b / x) for b, x in zip(pt, m))


def rd_by_hand(r_s, r_t, beta):
    return -math.log(pl(r_s, sorted(range(len(r_t)), key=lambda i: -r_t[i]), beta))


def batch_with(**fields):
    batch = make_batch()
    batch.signals["scored_samples"].update({k: torch.tensor(v) for k, v in fields.items()})
    return batch


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.25])
@pytest.mark.parametrize("loss", ["pd", "rd"])
def test_teacher_reward_mixes_likelihood_and_mcq(alpha, loss):
    beta = 2.0
    by_hand = pd_by_hand if loss == "pd" else rd_by_hand
    expected = 0.0
    for r_s, lik, mcq in zip(student_rewards(), TEACHER_SCORES, MCQ):
        # pd mixes the two rewards by alpha; rd ranks by the MCQ score alone whatever alpha (the released code)
        target = [alpha * a + (1 - alpha) * b for a, b in zip(lik, mcq)] if loss == "pd" else mcq
        expected += by_hand(r_s, target, beta)
    out = PAD(PADConfig(beta=beta, loss=loss, alpha=alpha)).loss(TokenLM(TABLE), batch_with(mcq=MCQ))
    assert [(t.name, t.per) for t in out.terms] == [(loss, "pairs")]
    assert float(out.terms[0].total.detach()) == pytest.approx(expected, abs=1e-5)
    likelihood_only = sum(by_hand(r_s, r_t, beta) for r_s, r_t in zip(student_rewards(), TEACHER_SCORES))
    assert expected != pytest.approx(likelihood_only, abs=1e-3)  # the MCQ score matters here


def test_alpha_zero_is_the_default_loss_on_the_mcq_scores():
    mixed = PAD(PADConfig(beta=2.0, alpha=0.0)).loss(TokenLM(TABLE), batch_with(mcq=MCQ))
    plain_batch = make_batch()
    plain_batch.signals["scored_samples"]["teacher_scores"] = torch.tensor(MCQ)
    plain = PAD(PADConfig(beta=2.0)).loss(TokenLM(TABLE), plain_batch)
    assert float(mixed.terms[0].total.detach()) == pytest.approx(float(plain.terms[0].total.detach()), abs=1e-6)
    # top-1 agreement is with the teacher's mixed reward
    assert mixed.stats == plain.stats


def run_filters(config, **fields):
    method = PAD(config)
    batch = method.prepare_batch(TokenLM(TABLE), batch_with(**fields), None)
    return method.loss(TokenLM(TABLE), batch), batch


def test_no_filter_keeps_every_prompt_and_means_over_pairs():
    out, batch = run_filters(PADConfig(beta=2.0, alpha=0.5), mcq=MCQ)
    assert "keep" not in batch.signals["scored_samples"]
    assert "scored_samples_kept" not in batch.counts()
    assert out.terms[0].per == "pairs"


def test_diverse_filter_leaves_out_prompts_without_distinct_samples():
    beta = 2.0
    out, batch = run_filters(PADConfig(beta=beta, diverse_from=5), distinct=[False, True])
    assert batch.signals["scored_samples"]["keep"].tolist() == [False, True]
    assert batch.counts()["scored_samples_kept"] == 1
    assert out.terms[0].per == "scored_samples_kept"
    expected = pd_by_hand(student_rewards()[1], TEACHER_SCORES[1], beta)  # prompt 0 contributes nothing
    assert float(out.terms[0].total.detach()) == pytest.approx(expected, abs=1e-5)
    counts = batch.counts()  # what training divides by: the kept prompts, not the pairs
    assert float(out.terms[0].total.detach()) / counts[out.terms[0].per] == pytest.approx(expected / 1, abs=1e-5)
    assert counts["pairs"] == 2


def test_diverse_filter_keeping_all_is_the_plain_sum():
    beta = 2.0
    out, batch = run_filters(PADConfig(beta=beta, loss="rd", diverse_from=5), distinct=[True, True],
                             mcq=TEACHER_SCORES)
    assert batch.counts()["scored_samples_kept"] == 2
    expected = sum(rd_by_hand(r_s, r_t, beta) for r_s, r_t in zip(student_rewards(), TEACHER_SCORES))
    assert float(out.terms[0].total.detach()) == pytest.approx(expected, abs=1e-5)


def test_everything_filtered_out_gives_zero():
    method = PAD(PADConfig(beta=2.0, diverse_from=5))
    out, batch = run_filters(method.config, distinct=[False, False])
    assert batch.counts()["scored_samples_kept"] == 0
    assert float(out.terms[0].total.detach()) == 0.0
    # ... so the trainer may skip its forward (harness/trainer.py step_loss); with one prompt kept it may not
    assert method.inert(batch)
    assert not method.inert(run_filters(method.config, distinct=[False, True])[1])
    assert not method.inert(run_filters(PADConfig(beta=2.0), mcq=MCQ)[1])  # no filter: never inert


@pytest.mark.parametrize("probs,keep", [
    ([0.6, 0.4, 0.3], True),  # some above 0.5, some at or below
    ([0.6, 0.7, 0.55], False),  # none at or below 0.5
    ([0.2, 0.3, 0.5], False),  # exactly 0.5 counts as "<= 0.5": none above
    ([0.5, 0.51, 0.1], True),
    ([0.5, 0.5, 0.5], False),
    ([0.9, 0.5, 0.95], True),  # 0.5 is the "<=" side
])
def test_mcq_filter_keeps_prompts_with_samples_on_both_sides_of_one_half(probs, keep):
    signal = {"mcq": torch.tensor([[math.log(p) for p in probs]])}
    assert PAD(PADConfig(mcq_filter=True)).kept(signal).tolist() == [keep]


def test_mcq_filter_in_the_loss_and_combined_with_the_diverse_filter():
    beta = 2.0
    # prompt 0: exp(mcq) 0.9, 0.2, 0.4 -> mixed; prompt 1: 0.7, 0.6, 0.55 -> all above one half, dropped
    mcq = [MCQ[0], [math.log(0.7), math.log(0.6), math.log(0.55)]]
    out, batch = run_filters(PADConfig(beta=beta, mcq_filter=True), mcq=mcq)
    assert batch.signals["scored_samples"]["keep"].tolist() == [True, False]
    assert batch.counts()["scored_samples_kept"] == 1
    assert out.terms[0].per == "scored_samples_kept"
    # alpha = 1: the MCQ score filters but the reward is the likelihood alone
    expected = pd_by_hand(student_rewards()[0], TEACHER_SCORES[0], beta)
    assert float(out.terms[0].total.detach()) == pytest.approx(expected, abs=1e-5)

    _, batch = run_filters(PADConfig(beta=beta, mcq_filter=True, diverse_from=5), mcq=MCQ, distinct=[False, True])
    assert batch.signals["scored_samples"]["keep"].tolist() == [False, True]  # both mixed; prompt 0 not distinct
    _, batch = run_filters(PADConfig(beta=beta, mcq_filter=True, diverse_from=5), mcq=mcq, distinct=[True, True])
    assert batch.signals["scored_samples"]["keep"].tolist() == [True, False]


def test_mcq_present_without_the_filter_keeps_everything():
    method = PAD(PADConfig(alpha=0.0))
    assert method.kept({"mcq": torch.tensor([[math.log(0.9)] * 3])}) is None


def test_training_rows_are_the_prompts_its_filters_keep():
    # prompts: 0 mixed and distinct, 1 all above one half, 2 mixed but not distinct, 3 mixed and distinct
    probs = [[0.9, 0.2, 0.4], [0.7, 0.6, 0.55], [0.8, 0.1, 0.3], [0.5, 0.51, 0.1]]
    signal = {"mcq": torch.tensor(probs).log(), "distinct": torch.tensor([True, True, False, True])}
    official = PAD(_PADConfig())
    assert official.narrows_rows()
    assert official.training_rows({"scored_samples": signal}, 4) == [0, 3]
    mcq_only = {"mcq": signal["mcq"]}  # the signal has "distinct" only when the config drew extra samples
    assert PAD(PADConfig(mcq_filter=True)).training_rows({"scored_samples": mcq_only}, 4) == [0, 2, 3]
    # the paper recipe filters nothing: every row, and a training key as before
    paper = PAD(PADConfig())
    assert not paper.narrows_rows() and paper.training_rows({"scored_samples": signal}, 4) is None


@pytest.mark.parametrize("kwargs,options", [
    ({}, {}),
    ({"alpha": 1.0, "diverse_from": 0, "mcq_filter": False, "beta": 3.0}, {}),
    ({"loss": "rd"}, {"mcq": True}),  # the released rd loss ranks by the MCQ score
    ({"alpha": 0.0}, {"mcq": True}),
    ({"alpha": 0.99}, {"mcq": True}),
    ({"mcq_filter": True}, {"mcq": True}),
    ({"diverse_from": 5}, {"diverse_from": 5}),
    ({"alpha": 0.5, "diverse_from": 5, "mcq_filter": True}, {"mcq": True, "diverse_from": 5}),
])
def test_signal_options(kwargs, options):
    # {} for the defaults: the scored_samples cache key of a default PAD is what it was before these options
    assert PAD(PADConfig(**kwargs)).signal_options("scored_samples") == options


@pytest.mark.parametrize("kwargs,field", [
    ({"alpha": -0.1}, "alpha"), ({"alpha": 1.5}, "alpha"), ({"diverse_from": -1}, "diverse_from"),
])
def test_new_config_fields_are_validated(kwargs, field):
    with pytest.raises(BenchError, match=f"pad: {field}"):
        PADConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [{"alpha": 0.0}, {"alpha": 1.0}, {"diverse_from": 0}, {"diverse_from": 4}])
def test_config_bounds_are_inclusive(kwargs):
    config = PADConfig(**kwargs)
    assert all(getattr(config, k) == v for k, v in kwargs.items())
