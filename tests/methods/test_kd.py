"""KD's loss on a hand-built batch: a fake student whose logits depend on the current token, and a teacher
top-k signal built by hand (flat stored form, placed by collate_topk), checked against math formulas."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from harness.batch import collate
from harness.data import Encoded
from harness.errors import BenchError
from harness.losses import teacher_forward_kl
from harness.signals import collate_topk
from methods.kd import KD, KDConfig

V, K = 5, 2
# Student: logits(next | current token c) = STUDENT[c]; the teacher likewise with TEACHER.
STUDENT = [
    [0.5, -1.0, 2.0, 0.0, 1.0],
    [1.5, 0.2, -0.3, 0.7, -2.0],
    [0.0, 1.0, 0.0, -1.0, 0.5],
    [-0.5, 0.3, 1.2, 0.1, 0.0],
    [2.0, -0.7, 0.4, 0.9, -1.1],
]
TEACHER = [
    [1.0, 0.0, -1.0, 2.5, 0.3],
    [0.0, 2.0, 1.0, -0.5, 0.4],
    [3.0, -1.0, 0.5, 0.2, 0.0],
    [0.1, 0.2, 0.3, 2.0, -2.0],
    [-1.0, 1.5, 0.0, 0.0, 2.2],
]
ROWS = [Encoded([1, 2], [3, 4, 0], [2, 2]), Encoded([4], [1], [0, 3, 3, 1])]


class TokenLM(torch.nn.Module):
    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(table, dtype=torch.float32))

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        return SimpleNamespace(logits=self.table[input_ids])


def softmax(row):
    z = sum(math.exp(x) for x in row)
    return [math.exp(x) / z for x in row]


def teacher_topk(prev):
    p = softmax(TEACHER[prev])
    ids = sorted(range(V), key=lambda v: -p[v])[:K]
    return ids, [p[v] for v in ids], 1.0 - sum(p[v] for v in ids)


def transitions(rows, side="chosen_ids"):
    """(previous token, next token) for every response token, in storage order."""
    out = []
    for r in rows:
        seq = r.prompt_ids + getattr(r, side)
        out += [(seq[i - 1], seq[i]) for i in range(len(r.prompt_ids), len(seq))]
    return out


def stored_signal(rows, side="chosen_ids"):
    ids, logps, rest, offsets = [], [], [], [0]
    for r in rows:
        seq = r.prompt_ids + getattr(r, side)
        for i in range(len(r.prompt_ids), len(seq)):
            top, p, pr = teacher_topk(seq[i - 1])
            ids.append(top)
            logps.append([math.log(x) for x in p])
            rest.append(math.log(pr))
        offsets.append(len(ids))
    return {"ids": torch.tensor(ids, dtype=torch.int32), "logps": torch.tensor(logps),
            "rest": torch.tensor(rest), "offsets": torch.tensor(offsets, dtype=torch.int64)}


def bucket_kl(prev, student=STUDENT):
    ids, p_top, p_rest = teacher_topk(prev)
    q = softmax(student[prev])
    q_top = [q[v] for v in ids]
    q_rest = 1.0 - sum(q_top)
    return sum(a * math.log(a / b) for a, b in zip(p_top + [p_rest], q_top + [q_rest]))


def make_batch(rows=ROWS):
    batch = collate(rows, list(range(len(rows))), pad_id=0)
    batch.signals["teacher_topk:chosen"] = collate_topk(stored_signal(rows), batch.index, batch.chosen)
    return batch


def normalised(out, batch):
    counts = batch.counts()
    return sum(t.total / counts[t.per] for t in out.terms)


def test_pure_kd_is_the_summed_bucket_kl():
    batch = make_batch()
    out = KD().loss(TokenLM(STUDENT), batch)
    expected = sum(bucket_kl(prev) for prev, _ in transitions(ROWS))
    assert [(t.name, t.per) for t in out.terms] == [("kl", "chosen_tokens")]
    assert float(out.terms[0].total.detach()) == pytest.approx(expected, abs=1e-5)
    assert out.student_tokens == 5 + 2


def test_kd_with_ce_weight_mixes_kl_and_nll():
    batch = make_batch()
    out = KD(KDConfig(ce_weight=0.3)).loss(TokenLM(STUDENT), batch)
    kl_sum = sum(bucket_kl(prev) for prev, _ in transitions(ROWS))
    nll_sum = -sum(math.log(softmax(STUDENT[prev])[nxt]) for prev, nxt in transitions(ROWS))
    terms = {t.name: t for t in out.terms}
    assert set(terms) == {"kl", "nll"}
    assert float(terms["kl"].total.detach()) == pytest.approx(0.7 * kl_sum, abs=1e-5)
    assert float(terms["nll"].total.detach()) == pytest.approx(0.3 * nll_sum, abs=1e-5)
    assert terms["nll"].per == "chosen_tokens"


def test_kd_is_zero_when_the_student_is_the_teacher():
    batch = make_batch()
    out = KD().loss(TokenLM(TEACHER), batch)
    assert abs(float(out.terms[0].total.detach())) < 1e-5


def test_kd_sgd_step_lowers_the_bucket_kl():
    model = TokenLM(STUDENT)
    batch = make_batch()
    before = normalised(KD().loss(model, batch), batch)
    before.backward()
    with torch.no_grad():
        model.table -= 0.5 * model.table.grad
        kl, mask = teacher_forward_kl(model(batch.chosen.input_ids).logits[:, :-1], batch.chosen,
                                      batch.signals["teacher_topk:chosen"])
    after = kl.sum() / mask.sum()
    assert float(after.detach()) < float(before.detach()) - 1e-3


def test_kd_with_ce_sgd_step_lowers_the_loss():
    model = TokenLM(STUDENT)
    batch = make_batch()
    method = KD(KDConfig(ce_weight=0.5))
    before = normalised(method.loss(model, batch), batch)
    before.backward()
    with torch.no_grad():
        model.table -= 0.5 * model.table.grad
    after = normalised(method.loss(model, batch), batch)
    assert float(after.detach()) < float(before.detach()) - 1e-3


@pytest.mark.parametrize("bad", [-0.1, 1.1])
def test_kd_rejects_ce_weight_outside_unit_interval(bad):
    with pytest.raises(BenchError, match="ce_weight"):
        KDConfig(ce_weight=bad)


@pytest.mark.parametrize("ok", [0.0, 1.0])
def test_kd_accepts_ce_weight_at_the_ends(ok):
    assert KDConfig(ce_weight=ok).ce_weight == ok
