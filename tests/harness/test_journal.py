"""harness/journal.py's saved batches: a forward pass's per-batch results saved under ``resumable`` and replayed
bit-identically by a later run, keyed by the pass and its inputs; and the teacher passes that use them (reference
log-probs, teacher scores of samples, PAD's MCQ queries, ADPA's teacher log-probs) resumed after a kill without
calling the model for the batches already saved. The generation journal's own tests are in test_generation.py."""

from __future__ import annotations

import random

import pytest
import torch

from harness.data import Encoded
from harness.journal import resumable, saved_batch, unjournalled
from harness.signals import SIGNAL_BATCH, compute_sequence_logps
from methods.adpa.signal import compute_advantage
from tests.methods.helpers import LLAMA_EOS, single_thread, tiny_llama


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


class Counting(torch.nn.Module):
    """A real model that counts its forward calls, or refuses them (``refuse``): a replayed batch calls neither."""

    def __init__(self, inner, refuse=False):
        super().__init__()
        self.inner, self.refuse, self.calls = inner, refuse, 0

    def forward(self, **kwargs):
        if self.refuse:
            raise AssertionError("the model was called for a batch that was saved")
        self.calls += 1
        return self.inner(**kwargs)

    def generate(self, *args, **kwargs):
        if self.refuse:
            raise AssertionError("the model generated for a batch that was journalled")
        return self.inner.generate(*args, **kwargs)


def batch_files(folder):
    return sorted((folder / "batches").glob("*.safetensors"))


def test_without_a_journal_every_call_computes(tmp_path):
    calls = []
    for _ in range(2):
        assert saved_batch("k", [1, 2], lambda: calls.append(1) or 7) == 7
    assert len(calls) == 2
    assert not tmp_path.joinpath("batches").exists()


def test_a_saved_batch_is_replayed_bit_identically(tmp_path):
    value = (torch.randn(3, 4, dtype=torch.float32), torch.tensor([1, 2], dtype=torch.int32), [0.1, 1 / 3])
    with resumable(tmp_path):
        first = saved_batch("pass", {"ids": [[1, 2]]}, lambda: value)
    with resumable(tmp_path) as journal:
        again = saved_batch("pass", {"ids": [[1, 2]]}, lambda: pytest.fail("recomputed a saved batch"))
    assert journal.reused == 1
    assert torch.equal(again[0], value[0]) and again[1].dtype == torch.int32 and torch.equal(again[1], value[1])
    assert again[2] == first[2] == [0.1, 1 / 3]  # floats round-trip exactly


def test_nested_results_keep_their_shape_and_types(tmp_path):
    value = {"rows": [torch.arange(3, dtype=torch.int32), torch.ones(0, 5)], "pair": (0.5, -2, None, True, "x"),
             "views": list(torch.arange(6.0).view(2, 3))}  # two views of one storage
    with resumable(tmp_path):
        saved_batch("a", [1], lambda: value)
    with resumable(tmp_path):
        again = saved_batch("a", [1], lambda: pytest.fail("recomputed"))
    assert again.keys() == value.keys() and again["pair"] == (0.5, -2, None, True, "x")
    assert [t.dtype for t in again["rows"]] == [torch.int32, torch.float32] and again["rows"][1].shape == (0, 5)
    assert all(torch.equal(a, b) for a, b in zip(again["rows"] + again["views"], value["rows"] + value["views"]))
    with resumable(tmp_path), pytest.raises(TypeError, match="cannot store a set"):
        saved_batch("b", [1], lambda: {1, 2})


def test_the_key_names_the_pass_and_its_inputs(tmp_path):
    calls = []

    def make():
        calls.append(1)
        return len(calls)

    with resumable(tmp_path):
        saved_batch("a", [[1, 2]], make)
        assert saved_batch("a", [[1, 2]], make) == 1 and len(calls) == 1
        for kind, inputs in (("b", [[1, 2]]), ("a", [[1, 3]]), ("a", [[1, 2], [4]])):
            before = len(calls)
            saved_batch(kind, inputs, make)
            assert len(calls) == before + 1, (kind, inputs)
    assert len(batch_files(tmp_path)) == 4


def test_a_damaged_batch_file_is_recomputed(tmp_path):
    with resumable(tmp_path):
        saved_batch("a", [1], lambda: torch.ones(2))
    (path,) = batch_files(tmp_path)
    path.write_bytes(path.read_bytes()[:10])
    with resumable(tmp_path):
        assert torch.equal(saved_batch("a", [1], lambda: torch.zeros(2)), torch.zeros(2))
    with resumable(tmp_path):  # and saved again, whole
        assert torch.equal(saved_batch("a", [1], lambda: pytest.fail("recomputed")), torch.zeros(2))


def test_nothing_is_saved_in_an_unjournalled_block(tmp_path):
    with resumable(tmp_path), unjournalled():
        saved_batch("a", [1], lambda: 1)
    assert not tmp_path.joinpath("batches").exists()


def rows(n=20, seed=0):
    rng = random.Random(seed)

    def ids(k):
        return [rng.randrange(1, 60) for _ in range(k)]

    return [Encoded(ids(rng.randint(2, 6)), ids(rng.randint(1, 6)), ids(rng.randint(1, 6))) for _ in range(n)]


def test_a_killed_reference_pass_recomputes_only_the_missing_batches(tiny_model, tmp_path):
    data = rows()
    plain, tokens = compute_sequence_logps(tiny_model, data, 0, "t")
    with resumable(tmp_path):
        full, _ = compute_sequence_logps(tiny_model, data, 0, "t")
    saved = batch_files(tmp_path)
    assert len(saved) == 3 == -(-len(data) // SIGNAL_BATCH)
    for path in saved[1:]:  # two of three batches lost, as when killed early (files are named by key, not order)
        path.unlink()
    model = Counting(tiny_model)
    with resumable(tmp_path) as journal:
        resumed, resumed_tokens = compute_sequence_logps(model, data, 0, "t")
    assert journal.reused == 1 and model.calls == 2 * 2  # two batches, chosen and rejected each
    assert torch.equal(resumed["logps"], plain["logps"]) and torch.equal(full["logps"], plain["logps"])
    assert resumed_tokens == tokens  # the work is counted whether computed or replayed


def test_adpa_teacher_log_probs_resume_without_any_model(tiny_model, tmp_path):
    dpo, ref, data = tiny_llama(seed=1), tiny_llama(seed=2), rows(12)
    args = dict(k=3, vocab_limit=60, pad_id=0, eos_id=LLAMA_EOS, max_new_tokens=4, max_seq_len=64, desc="t")
    plain, counts = compute_advantage(tiny_model, dpo, ref, data, **args)
    with resumable(tmp_path):
        compute_advantage(tiny_model, dpo, ref, data, **args)
    assert len(batch_files(tmp_path)) == 2
    refusing = [Counting(m, refuse=True) for m in (tiny_model, dpo, ref)]
    with resumable(tmp_path):
        again, again_counts = compute_advantage(*refusing, data, **args)
    assert set(again) == set(plain) and again_counts == counts
    for name in plain:
        assert plain[name].dtype == again[name].dtype and torch.equal(plain[name], again[name]), name
