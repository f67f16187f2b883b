"""SFT's loss on a hand-built batch and a fake model whose next-token logits depend on the current token only."""

from __future__ import annotations

import pytest
import torch

from methods.sft import SFT
from tests.methods.helpers import ROWS, TokenLM, collated, normalised, response_logps, sgd_step
from tests.methods.helpers import STUDENT as TABLE


def test_sft_loss_is_the_summed_chosen_nll():
    batch = collated()
    out = SFT().loss(TokenLM(TABLE), batch)
    expected = -sum(lp for r in ROWS for lp in response_logps(r.prompt_ids, r.chosen_ids))
    assert [(t.name, t.per) for t in out.terms] == [("nll", "chosen_tokens")]
    assert float(out.terms[0].total.detach()) == pytest.approx(expected, abs=1e-5)
    assert batch.counts()["chosen_tokens"] == 4  # a token mean over 3 + 1 response tokens
    assert out.student_tokens == 5 + 2  # prompt + chosen tokens, padding excluded


def test_sft_sgd_step_lowers_the_loss():
    torch.manual_seed(0)
    model = TokenLM(TABLE)
    batch = collated()
    before = normalised(SFT().loss(model, batch), batch)
    before.backward()
    sgd_step(model)
    after = normalised(SFT().loss(model, batch), batch)
    assert float(after.detach()) < float(before.detach()) - 1e-3
