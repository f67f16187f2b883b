"""SeqKD's loss: the NLL of the teacher's answers (``batch.signals["teacher_samples"]``, the same prompts with the
teacher's responses), a token mean over those responses' tokens; the count key it is normalised by, and how the
trainer sums that key over an optimizer step."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from harness.batch import collate, with_responses
from harness.signals import collate_signals
from harness.trainer import step_loss
from methods.seqkd import SeqKD
from tests.methods.helpers import ROWS, TokenLM, collated, normalised, response_logps, sgd_step
from tests.methods.helpers import STUDENT as TABLE

# The teacher's answers to the two prompts of ROWS: lengths differ from the chosen responses (3 and 1).
ANSWERS = [[2, 3, 1, 4], [0, 2]]


def make_batch(answers=ANSWERS):
    batch = collated()
    batch.signals["teacher_samples"] = with_responses(batch.chosen, answers, pad_id=0)
    return batch


def nll(rows=ROWS, answers=ANSWERS):
    return -sum(lp for r, a in zip(rows, answers) for lp in response_logps(r.prompt_ids, a, TABLE))


def test_seqkd_loss_is_the_nll_of_the_teacher_answers():
    batch = make_batch()
    out = SeqKD().loss(TokenLM(TABLE), batch)
    assert [(t.name, t.per) for t in out.terms] == [("nll", "teacher_samples_tokens")]
    assert float(out.terms[0].total.detach()) == pytest.approx(nll(), abs=1e-5)
    assert out.student_tokens == (2 + 4) + (1 + 2)  # the teacher-answer sequences, not the chosen ones


def test_counts_hold_the_teacher_samples_tokens():
    batch = make_batch()
    counts = batch.counts()
    assert counts["teacher_samples_tokens"] == 4 + 2
    assert counts["chosen_tokens"] == 3 + 1  # the data set's responses still counted separately
    out = SeqKD().loss(TokenLM(TABLE), batch)
    assert float(normalised(out, batch).detach()) == pytest.approx(nll() / 6, abs=1e-5)


def test_seqkd_ignores_the_data_set_responses():
    batch = make_batch()
    other = collate([r.__class__(r.prompt_ids, [4, 4, 4, 4, 4], [1]) for r in ROWS], [0, 1], pad_id=0)
    other.signals = batch.signals
    a = float(SeqKD().loss(TokenLM(TABLE), batch).terms[0].total.detach())
    b = float(SeqKD().loss(TokenLM(TABLE), other).terms[0].total.detach())
    assert a == b


def test_seqkd_sgd_step_lowers_the_loss():
    model = TokenLM(TABLE)
    batch = make_batch()
    before = normalised(SeqKD().loss(model, batch), batch)
    before.backward()
    sgd_step(model)
    after = normalised(SeqKD().loss(model, batch), batch)
    assert float(after.detach()) < float(before.detach()) - 1e-3


def test_step_loss_normalises_by_the_teacher_tokens_of_the_whole_step():
    # Stored flat, as the pipeline keeps it; two micro-batches of one row whose answers differ in length, so a
    # mean of micro-batch means would differ from the global token mean.
    signal = {"teacher_samples": {"ids": torch.tensor(ANSWERS[0] + ANSWERS[1]), "offsets": torch.tensor([0, 4, 6])}}
    micro = []
    for i in range(2):
        mb = collate([ROWS[i]], [i], pad_id=0)
        mb.signals = collate_signals(signal, mb, pad_id=0)
        micro.append(mb)
    assert [mb.counts()["teacher_samples_tokens"] for mb in micro] == [4, 2]
    model = TokenLM(TABLE)
    loss, terms, tokens = step_loss(SeqKD(), model, micro, Accelerator(cpu=True))
    assert loss == pytest.approx(nll() / 6, abs=1e-5)
    assert terms["nll"] == pytest.approx(nll() / 6, abs=1e-5)
    per_mb = [nll([r], [a]) / len(a) for r, a in zip(ROWS, ANSWERS)]
    assert abs(loss - sum(per_mb) / 2) > 1e-2  # the two conventions are distinguishable here
    assert tokens == (2 + 4) + (1 + 2)
