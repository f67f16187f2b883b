"""harness/losses.py on hand-built tensors, checked against formulas evaluated with plain ``math``."""

from __future__ import annotations

import math

import pytest
import torch

from harness.batch import IGNORE, pad_sequences
from harness.losses import (
    bucket_forward_kl,
    bucket_logps,
    generalized_jsd,
    sequence_logps,
    teacher_forward_kl,
    token_logps,
)


def log_softmax(row: list[float]) -> list[float]:
    z = math.log(sum(math.exp(x) for x in row))
    return [x - z for x in row]


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


# Two rows of different lengths: row 0 = prompt [1] + response [2, 3]; row 1 = prompt [0, 1, 2] + response [3].
SEQS = pad_sequences([[1], [0, 1, 2]], [[2, 3], [3]], pad_id=0)
# Aligned logits [B=2, T-1=3, V=4]: position t predicts the token at t + 1.
LOGITS = [
    [[1.0, 0.0, 2.0, -1.0], [0.5, 0.5, 0.0, 3.0], [9.0, 9.0, 9.0, 9.0]],
    [[0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0], [-1.0, 0.2, 0.3, 1.5]],
]


def test_padding_layout_is_what_the_tests_assume():
    assert SEQS.input_ids.tolist() == [[1, 2, 3, 0], [0, 1, 2, 3]]
    assert SEQS.labels.tolist() == [[IGNORE, 2, 3, IGNORE], [IGNORE, IGNORE, IGNORE, 3]]


def test_token_logps_matches_log_softmax_of_the_next_token():
    logp, mask = token_logps(torch.tensor(LOGITS), SEQS)
    assert mask.tolist() == [[True, True, False], [False, False, True]]
    expected = [
        [log_softmax(LOGITS[0][0])[2], log_softmax(LOGITS[0][1])[3], 0.0],
        [0.0, 0.0, log_softmax(LOGITS[1][2])[3]],
    ]
    for got_row, exp_row in zip(logp.tolist(), expected):
        assert got_row == pytest.approx(exp_row, abs=1e-6)


def test_sequence_logps_sums_response_tokens_only():
    total, length = sequence_logps(torch.tensor(LOGITS), SEQS)
    expected0 = log_softmax(LOGITS[0][0])[2] + log_softmax(LOGITS[0][1])[3]
    expected1 = log_softmax(LOGITS[1][2])[3]
    assert total.tolist() == pytest.approx([expected0, expected1], abs=1e-6)
    assert length.tolist() == [2, 1]


def test_bucket_logps_picked_and_rest():
    row = [2.0, -1.0, 0.5, 0.0]
    picked, rest = bucket_logps(torch.tensor([row]), torch.tensor([[2, 0]]))
    lp = log_softmax(row)
    assert picked[0].tolist() == pytest.approx([lp[2], lp[0]], abs=1e-6)
    assert float(rest[0]) == pytest.approx(math.log(math.exp(lp[1]) + math.exp(lp[3])), abs=1e-6)


def test_bucket_logps_rest_is_exact_when_top_k_holds_almost_all_mass():
    row = [30.0, 0.0, -30.0]
    logits = torch.tensor([row])
    log_z = math.log(math.exp(30.0) + 1.0 + math.exp(-30.0))

    picked, rest = bucket_logps(logits, torch.tensor([[0]]))
    expected_rest = math.log(1.0 + math.exp(-30.0)) - log_z  # about -30
    assert math.isfinite(float(rest[0]))
    assert float(rest[0]) == pytest.approx(expected_rest, rel=1e-6)
    # The naive 1 - sum(p) rounds to zero in fp32: that is what the log-sum-exp avoids.
    assert float(torch.log1p(-picked.exp()).squeeze()) == float("-inf")

    _, rest2 = bucket_logps(logits, torch.tensor([[0, 1]]))
    assert math.isfinite(float(rest2[0]))
    assert float(rest2[0]) == pytest.approx(-30.0 - log_z, rel=1e-6)  # about -60


def test_bucket_forward_kl_by_hand():
    t_top, t_rest = [0.5, 0.3], 0.2
    s_top, s_rest = [0.4, 0.25], 0.35
    got = bucket_forward_kl(torch.tensor([t_top]).log(), torch.tensor([t_rest]).log(),
                            torch.tensor([s_top]).log(), torch.tensor([s_rest]).log())
    assert float(got[0]) == pytest.approx(kl(t_top + [t_rest], s_top + [s_rest]), abs=1e-6)


def test_bucket_forward_kl_with_empty_teacher_rest_is_finite_and_exact():
    # The teacher has no mass outside its top-k: the rest bucket contributes 0 (not 0 * -inf = nan),
    # and the bucket KL equals the full KL.
    student = [0.5, -0.3, 1.0, 0.2]
    leaf = torch.tensor([student], requires_grad=True)
    s_top, s_rest = bucket_logps(leaf, torch.tensor([[0, 2]]))
    t_top = torch.tensor([[math.log(0.7), math.log(0.3)]])
    got = bucket_forward_kl(t_top, torch.tensor([float("-inf")]), s_top, s_rest)
    q = [math.exp(x) for x in log_softmax(student)]
    assert float(got[0].detach()) == pytest.approx(kl([0.7, 0.0, 0.3, 0.0], q), abs=1e-6)
    got.sum().backward()
    assert torch.isfinite(leaf.grad).all()  # no nan leaks into the gradient either


def test_bucket_forward_kl_is_zero_for_identical_distributions():
    torch.manual_seed(1)
    logits = torch.randn(3, 7) * 2
    ids = logits.topk(3, dim=-1).indices
    top, rest = bucket_logps(logits, ids)
    got = bucket_forward_kl(top, rest, top.clone(), rest.clone())
    assert got.abs().max() < 1e-6


def test_bucket_forward_kl_lower_bounds_the_full_kl():
    torch.manual_seed(2)
    teacher = (torch.randn(6, 10) * 1.5).tolist()
    student = (torch.randn(6, 10) * 1.5).tolist()
    t_logits, s_logits = torch.tensor(teacher), torch.tensor(student)
    ids = t_logits.topk(3, dim=-1).indices
    t_top, t_rest = bucket_logps(t_logits, ids)
    s_top, s_rest = bucket_logps(s_logits, ids)
    got = bucket_forward_kl(t_top, t_rest, s_top, s_rest).tolist()
    for pos in range(6):
        p = [math.exp(x) for x in log_softmax(teacher[pos])]
        q = [math.exp(x) for x in log_softmax(student[pos])]
        full = kl(p, q)
        keep = ids[pos].tolist()
        others = [v for v in range(10) if v not in keep]
        coarse = kl([p[v] for v in keep] + [sum(p[v] for v in others)],
                    [q[v] for v in keep] + [sum(q[v] for v in others)])
        assert got[pos] == pytest.approx(coarse, abs=1e-5)
        assert 0.0 <= got[pos] <= full + 1e-6
    # Strict somewhere: the coarsening loses information on random distributions.
    assert any(g < kl([math.exp(x) for x in log_softmax(teacher[i])],
                      [math.exp(x) for x in log_softmax(student[i])]) - 1e-3 for i, g in enumerate(got))


def test_teacher_forward_kl_per_position_and_mask():
    # Teacher top-2 at the three response positions (row 0: t=0,1; row 1: t=2); padding positions hold junk.
    ids = torch.tensor([[[2, 0], [3, 1], [0, 0]], [[0, 0], [0, 0], [3, 2]]])
    t_probs = {(0, 0): ([0.6, 0.3], 0.1), (0, 1): ([0.5, 0.2], 0.3), (1, 2): ([0.8, 0.15], 0.05)}
    logps = torch.zeros(2, 3, 2)
    rest = torch.zeros(2, 3)
    for (b, t), (top, r) in t_probs.items():
        logps[b, t] = torch.tensor(top).log()
        rest[b, t] = math.log(r)
    got, mask = teacher_forward_kl(torch.tensor(LOGITS), SEQS, {"ids": ids, "logps": logps, "rest": rest})
    assert mask.tolist() == [[True, True, False], [False, False, True]]
    for b in range(2):
        for t in range(3):
            if (b, t) not in t_probs:
                assert float(got[b, t]) == 0.0
                continue
            top, r = t_probs[(b, t)]
            q = [math.exp(x) for x in log_softmax(LOGITS[b][t])]
            keep = ids[b, t].tolist()
            q_b = [q[v] for v in keep] + [sum(q[v] for v in range(4) if v not in keep)]
            assert float(got[b, t]) == pytest.approx(kl(top + [r], q_b), abs=1e-6)


# generalized_jsd: [B=2, T=2, V=4] student logits and a teacher's, checked position by position.
JSD_STUDENT = [[[0.5, -1.0, 2.0, 0.0], [1.5, 0.2, -0.3, 0.7]], [[0.0, 1.0, 0.0, -1.0], [-0.5, 0.3, 1.2, 0.1]]]
JSD_TEACHER = [[[1.0, 0.0, -1.0, 2.5], [0.0, 2.0, 1.0, -0.5]], [[3.0, -1.0, 0.5, 0.2], [0.1, 0.2, 0.3, 2.0]]]


def probs(row):
    return [math.exp(x) for x in log_softmax(row)]


def jsd_by_formula(t_row, s_row, beta):
    p, q = probs(t_row), probs(s_row)
    m = [beta * a + (1 - beta) * b for a, b in zip(p, q)]
    return beta * kl(p, m) + (1 - beta) * kl(q, m)


def each_position(got, fn):
    for b in range(2):
        for t in range(2):
            assert float(got[b, t]) == pytest.approx(fn(JSD_TEACHER[b][t], JSD_STUDENT[b][t]), abs=1e-6), (b, t)


@pytest.mark.parametrize("beta", [0.3, 0.5, 0.9])
def test_generalized_jsd_interior_by_formula(beta):
    got = generalized_jsd(torch.tensor(JSD_STUDENT), torch.tensor(JSD_TEACHER), beta)
    assert got.shape == (2, 2)
    each_position(got, lambda t, s: jsd_by_formula(t, s, beta))


def test_generalized_jsd_is_asymmetric_in_beta():
    # Guards the interior test against the two mixture weights being swapped.
    got = generalized_jsd(torch.tensor(JSD_STUDENT), torch.tensor(JSD_TEACHER), 0.3)
    swapped = jsd_by_formula(JSD_STUDENT[0][0], JSD_TEACHER[0][0], 0.3)  # teacher and student exchanged
    assert abs(float(got[0, 0]) - swapped) > 1e-3


def test_generalized_jsd_at_beta_0_is_forward_kl():
    got = generalized_jsd(torch.tensor(JSD_STUDENT), torch.tensor(JSD_TEACHER), 0.0)
    each_position(got, lambda t, s: kl(probs(t), probs(s)))


def test_generalized_jsd_at_beta_1_is_reverse_kl():
    got = generalized_jsd(torch.tensor(JSD_STUDENT), torch.tensor(JSD_TEACHER), 1.0)
    each_position(got, lambda t, s: kl(probs(s), probs(t)))
    assert abs(kl(probs(JSD_STUDENT[0][0]), probs(JSD_TEACHER[0][0]))
               - kl(probs(JSD_TEACHER[0][0]), probs(JSD_STUDENT[0][0]))) > 1e-2  # the two ends differ


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_generalized_jsd_cuts_a_wider_teacher_to_the_students_vocabulary(beta):
    # Two extra teacher columns with large logits: kept, they would take most of the teacher's mass.
    wide = [[row + [5.0, 4.0] for row in pos] for pos in JSD_TEACHER]
    got = generalized_jsd(torch.tensor(JSD_STUDENT), torch.tensor(wide), beta)
    ref = generalized_jsd(torch.tensor(JSD_STUDENT), torch.tensor(JSD_TEACHER), beta)
    assert torch.allclose(got, ref, atol=1e-6)
    expected = {0.0: lambda t, s: kl(probs(t), probs(s)), 1.0: lambda t, s: kl(probs(s), probs(t))}
    each_position(got, expected.get(beta, lambda t, s: jsd_by_formula(t, s, beta)))


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_generalized_jsd_is_zero_for_identical_distributions_and_takes_bf16_teacher_logits(beta):
    s = torch.tensor(JSD_STUDENT)
    got = generalized_jsd(s, s.to(torch.bfloat16).float().to(torch.bfloat16), beta)
    assert got.dtype == torch.float32
    assert got.abs().max() < 1e-2  # bf16 rounding of the teacher only
    assert generalized_jsd(s, s.clone(), beta).abs().max() < 1e-6


# skewed_kl (DistiLLM): KL(P || alpha P + (1 - alpha) Q) per position, on the same [2, 2, 4] logits as the JSD tests.
from harness.losses import skewed_kl  # noqa: E402


def skew_kl_by_formula(p_row, q_row, alpha):
    """KL(P || alpha P + (1 - alpha) Q) of two logit rows, in plain math."""
    p, q = probs(p_row), probs(q_row)
    return sum(a * math.log(a / (alpha * a + (1 - alpha) * b)) for a, b in zip(p, q) if a > 0)


def skew_reverse_kl_by_formula(s_row, t_row, alpha):
    """DistiLLM's skew reverse KL, KL(Q || (1 - alpha) P + alpha Q), Q the student's and P the teacher's."""
    q, p = probs(s_row), probs(t_row)
    return sum(b * math.log(b / ((1 - alpha) * a + alpha * b)) for a, b in zip(p, q) if b > 0)


@pytest.mark.parametrize("alpha", [0.1, 0.3, 0.9])
def test_skewed_kl_by_formula(alpha):
    got = skewed_kl(torch.tensor(JSD_TEACHER), torch.tensor(JSD_STUDENT), alpha)
    assert got.shape == (2, 2) and got.dtype == torch.float32
    each_position(got, lambda t, s: skew_kl_by_formula(t, s, alpha))


def test_skewed_kl_mixture_weight_is_not_swapped():
    got = skewed_kl(torch.tensor(JSD_TEACHER), torch.tensor(JSD_STUDENT), 0.3)
    assert abs(float(got[0, 0]) - skew_kl_by_formula(JSD_TEACHER[0][0], JSD_STUDENT[0][0], 0.7)) > 1e-3
    # And it is not the plain KL either.
    assert abs(float(got[0, 0]) - kl(probs(JSD_TEACHER[0][0]), probs(JSD_STUDENT[0][0]))) > 1e-2


def test_skewed_kl_at_alpha_0_is_the_plain_kl():
    got = skewed_kl(torch.tensor(JSD_TEACHER), torch.tensor(JSD_STUDENT), 0.0)
    each_position(got, lambda t, s: kl(probs(t), probs(s)))


@pytest.mark.parametrize("alpha", [0.1, 0.4])
def test_skewed_kl_with_the_student_first_is_the_skew_reverse_kl(alpha):
    got = skewed_kl(torch.tensor(JSD_STUDENT), torch.tensor(JSD_TEACHER), alpha)
    each_position(got, lambda t, s: skew_reverse_kl_by_formula(s, t, alpha))
    forward = skewed_kl(torch.tensor(JSD_TEACHER), torch.tensor(JSD_STUDENT), alpha)
    assert (got - forward).abs().max() > 1e-2  # the two directions differ on these rows


def test_skewed_kl_is_zero_for_identical_distributions():
    s = torch.tensor(JSD_STUDENT)
    for alpha in (0.0, 0.1, 0.5):
        assert skewed_kl(s, s.clone(), alpha).abs().max() < 1e-6


@pytest.mark.parametrize("alpha", [0.0, 0.1])
def test_skewed_kl_cuts_a_wider_teacher_to_the_common_vocabulary(alpha):
    # Two extra teacher columns with large logits: kept, they would take most of the teacher's mass.
    wide = [[row + [5.0, 4.0] for row in pos] for pos in JSD_TEACHER]
    forward = skewed_kl(torch.tensor(wide), torch.tensor(JSD_STUDENT), alpha)
    each_position(forward, lambda t, s: skew_kl_by_formula(t, s, alpha))
    reverse = skewed_kl(torch.tensor(JSD_STUDENT), torch.tensor(wide), alpha)
    each_position(reverse, lambda t, s: skew_reverse_kl_by_formula(s, t, alpha))


def test_skewed_kl_is_finite_where_q_has_no_mass():
    p_row = [0.0, 1.0, -0.5]
    q_row = [0.2, -1e4, 0.3]  # Q has no mass (in fp32 and in plain math) on token 1, where P has a third
    q_leaf = torch.tensor([q_row], requires_grad=True)
    got = skewed_kl(torch.tensor([p_row]), q_leaf, 0.1)
    p = probs(p_row)
    q = [math.exp(0.2), 0.0, math.exp(0.3)]
    q = [x / sum(q) for x in q]
    expected = sum(a * math.log(a / (0.1 * a + 0.9 * b)) for a, b in zip(p, q))
    assert math.isfinite(float(got[0].detach()))
    assert float(got[0].detach()) == pytest.approx(expected, abs=1e-5)
    got.sum().backward()
    assert torch.isfinite(q_leaf.grad).all()
    # The plain KL is enormous there (about p[1] * 1e4): what the skew avoids.
    assert float(skewed_kl(torch.tensor([p_row]), torch.tensor([q_row]), 0.0)[0]) > 1000
    # Q with -inf logits (exactly zero mass): still finite for alpha > 0.
    inf_q = torch.tensor([[0.2, float("-inf"), 0.3]])
    assert float(skewed_kl(torch.tensor([p_row]), inf_q, 0.1)[0]) == pytest.approx(expected, abs=1e-5)
