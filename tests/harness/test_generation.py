"""harness/generation.py on the conftest's random tiny Llama: generate_ids (left padding, order, seeding, eos) and
resample (on-policy answers to the same prompts, cut to max_seq_len, generated tokens counted)."""

from __future__ import annotations

import pytest

from harness.batch import pad_sequences, prompts_of
from harness.generation import generate_ids, resample
from harness.method import Runtime
from tests.methods.helpers import single_thread

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
EOS = 63


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def gen(model, prompts=PROMPTS, n=6, **kw):
    kw.setdefault("eos_id", EOS)
    return generate_ids(model, prompts, n, pad_id=0, desc=None, **kw)


def test_greedy_answers_do_not_depend_on_batching_or_padding(tiny_model):
    together = gen(tiny_model, batch_size=8)
    alone = [gen(tiny_model, [p], batch_size=1)[0] for p in PROMPTS]
    assert together == alone  # left padding and the length sort are invisible to the caller
    assert all(len(a) == 6 for a in together)  # no eos in these: exactly max_new_tokens
    assert len({tuple(a) for a in together}) == 3


def test_sampling_is_seeded(tiny_model):
    a = gen(tiny_model, do_sample=True, seed=3)
    assert a == gen(tiny_model, do_sample=True, seed=3)
    assert a != gen(tiny_model, do_sample=True, seed=4)
    assert a != gen(tiny_model)  # sampled, not greedy


def test_answers_stop_at_eos_and_end_with_it(tiny_model):
    free = gen(tiny_model, eos_id=EOS)
    eos = free[1][2]  # a token the greedy answer to prompt 1 produces third
    cut = gen(tiny_model, eos_id=eos)
    for full, short in zip(free, cut):
        expected = full[: full.index(eos) + 1] if eos in full else full
        assert short == expected
    assert cut[1] == free[1][:3]


def test_generate_ids_restores_training_mode(tiny_model):
    tiny_model.train()
    gen(tiny_model, n=2)
    assert tiny_model.training
    tiny_model.eval()
    gen(tiny_model, n=2)
    assert not tiny_model.training


def test_resample_keeps_the_prompts_and_counts_generated_tokens(tiny_model):
    seqs = pad_sequences(PROMPTS, [[1], [2, 3], [4]], pad_id=0)
    runtime = Runtime(pad_id=0, eos_id=EOS, max_new_tokens=5, max_seq_len=64)
    new, generated = resample(tiny_model, seqs, runtime, temperature=1.0, seed=7)
    assert prompts_of(new) == PROMPTS
    answers = [new.labels[b][new.labels[b] != -100].tolist() for b in range(3)]
    expected = gen(tiny_model, n=5, batch_size=3, do_sample=True, temperature=1.0, seed=7)
    assert answers == expected
    assert generated == sum(len(a) for a in expected) == new.n_response_tokens


def test_resample_cuts_answers_to_max_seq_len(tiny_model):
    seqs = pad_sequences(PROMPTS, [[1], [2], [3]], pad_id=0)
    runtime = Runtime(pad_id=0, eos_id=EOS, max_new_tokens=6, max_seq_len=7)
    new, generated = resample(tiny_model, seqs, runtime, temperature=1.0, seed=7)
    assert prompts_of(new) == PROMPTS
    lengths = new.attention_mask.sum(-1).tolist()
    assert all(n <= 7 for n in lengths)
    # Every prompt leaves room for at least one token; the uncut answers are 6 tokens long.
    full = gen(tiny_model, n=6, batch_size=3, do_sample=True, temperature=1.0, seed=7)
    assert [n - len(p) for n, p in zip(lengths, PROMPTS)] == [min(len(f), 7 - len(p)) for f, p in zip(full, PROMPTS)]
    assert generated == sum(len(f) for f in full)  # generation done, not tokens kept


def test_sampling_leaves_the_global_random_state_alone(tiny_model):
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    generate_ids(tiny_model, [[1, 2, 3]], 4, pad_id=0, eos_id=63, do_sample=True, seed=7, desc=None)
    assert torch.equal(torch.rand(3), expected)
