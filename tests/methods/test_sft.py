"""SFT's loss on a hand-built batch and a fake model whose next-token logits depend on the current token only."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from harness.batch import collate
from harness.data import Encoded
from methods.sft import SFT

# logits(next | current token c) = TABLE[c]
TABLE = [
    [0.5, -1.0, 2.0, 0.0, 1.0],
    [1.5, 0.2, -0.3, 0.7, -2.0],
    [0.0, 1.0, 0.0, -1.0, 0.5],
    [-0.5, 0.3, 1.2, 0.1, 0.0],
    [2.0, -0.7, 0.4, 0.9, -1.1],
]
ROWS = [Encoded([1, 2], [3, 4, 0], [2, 2]), Encoded([4], [1], [0, 3, 3, 1])]


class TokenLM(torch.nn.Module):
    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(table, dtype=torch.float32))

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        return SimpleNamespace(logits=self.table[input_ids])


def log_softmax(row):
    z = math.log(sum(math.exp(x) for x in row))
    return [x - z for x in row]


def response_logps(prompt, response, table=TABLE):
    seq = prompt + response
    return [log_softmax(table[seq[i - 1]])[seq[i]] for i in range(len(prompt), len(seq))]


def normalised(out, batch):
    counts = batch.counts()
    return sum(t.total / counts[t.per] for t in out.terms)


def test_sft_loss_is_the_summed_chosen_nll():
    batch = collate(ROWS, [0, 1], pad_id=0)
    out = SFT().loss(TokenLM(TABLE), batch)
    expected = -sum(lp for r in ROWS for lp in response_logps(r.prompt_ids, r.chosen_ids))
    assert [(t.name, t.per) for t in out.terms] == [("nll", "chosen_tokens")]
    assert float(out.terms[0].total.detach()) == pytest.approx(expected, abs=1e-5)
    assert batch.counts()["chosen_tokens"] == 4  # a token mean over 3 + 1 response tokens
    assert out.student_tokens == 5 + 2  # prompt + chosen tokens, padding excluded


def test_sft_sgd_step_lowers_the_loss():
    torch.manual_seed(0)
    model = TokenLM(TABLE)
    batch = collate(ROWS, [0, 1], pad_id=0)
    before = normalised(SFT().loss(model, batch), batch)
    before.backward()
    with torch.no_grad():
        model.table -= 0.5 * model.table.grad
    after = normalised(SFT().loss(model, batch), batch)
    assert float(after.detach()) < float(before.detach()) - 1e-3
