"""harness/batch.py: padding, prompts_of / with_responses (sampled responses on the same prompts), and the counts a
loss is normalised by, including the "<signal>_tokens" of sampled-response signals."""

from __future__ import annotations

import torch

from harness.batch import IGNORE, collate, pad_sequences, prompts_of, with_responses
from harness.data import Encoded

ROWS = [Encoded([1, 2], [3, 4, 5], [6]), Encoded([7], [8], [9, 10, 11, 12])]


def test_prompts_of_recovers_each_prompt_without_padding():
    batch = collate(ROWS, [0, 1], pad_id=0)
    assert prompts_of(batch.chosen) == [[1, 2], [7]]
    assert prompts_of(batch.rejected) == [[1, 2], [7]]


def test_with_responses_keeps_the_prompts_and_pads_afresh():
    batch = collate(ROWS, [0, 1], pad_id=0)
    new = with_responses(batch.chosen, [[20], [21, 22, 23, 24, 25]], pad_id=0)
    assert prompts_of(new) == [[1, 2], [7]]
    assert new.prompt_lens == [2, 1]
    assert new.input_ids.tolist() == [[1, 2, 20, 0, 0, 0], [7, 21, 22, 23, 24, 25]]
    assert new.attention_mask.tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]]
    assert new.labels.tolist() == [[IGNORE, IGNORE, 20, IGNORE, IGNORE, IGNORE], [IGNORE, 21, 22, 23, 24, 25]]
    assert new.n_response_tokens == 6
    assert new.n_tokens == 9
    assert batch.chosen.input_ids.shape == (2, 5)  # the original is left as it was


def test_counts_include_sampled_response_signals_only():
    batch = collate(ROWS, [0, 1], pad_id=0)
    assert batch.counts() == {"pairs": 2, "chosen_tokens": 4, "rejected_tokens": 5}
    batch.signals["teacher_samples"] = with_responses(batch.chosen, [[30, 31], [32, 33, 34]], pad_id=0)
    batch.signals["student_samples"] = pad_sequences([[1, 2], [7]], [[40], [41]], pad_id=0)
    batch.signals["reference_logps"] = torch.zeros(2, 2)  # not a sequence: no count
    batch.signals["teacher_topk:chosen"] = {"ids": torch.zeros(2, 4, 3)}
    assert batch.counts() == {"pairs": 2, "chosen_tokens": 4, "rejected_tokens": 5,
                              "teacher_samples_tokens": 5, "student_samples_tokens": 2}


def test_batch_to_moves_sequence_signals():
    batch = collate(ROWS, [0, 1], pad_id=0)
    batch.signals["teacher_samples"] = with_responses(batch.chosen, [[30, 31], [32]], pad_id=0)
    moved = batch.to("cpu")
    assert moved.counts() == batch.counts()
    assert torch.equal(moved.signals["teacher_samples"].input_ids, batch.signals["teacher_samples"].input_ids)
