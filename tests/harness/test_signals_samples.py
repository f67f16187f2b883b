"""Generated answers as training targets and teacher scores: an answer cut at the generation limit keeps no
end-of-turn token (it did not stop there), a finished one does. A fixed generation backend stands in for a model's
sampling so the cut is exact; the tokenizer and chat template are SmolLM2's."""

from __future__ import annotations

import math

import pytest
import torch

from harness.data import Encoded, PreferenceExample, prompt_ids, response_ids
from harness.generation import GenerationBackend
from harness.journal import resumable
from harness.signals import compute_samples, mean_logps, unpack


class Fixed(GenerationBackend):
    """Answers every prompt i with outputs[i]: token ids, ending with eos when the answer finished."""

    name = "fixed"

    def __init__(self, outputs):
        self.outputs = outputs

    def identity(self):
        return {"engine": "fixed"}

    def generate(self, prompts, **kw):
        return [list(o) for o in self.outputs[: len(prompts)]]


def examples(n):
    return [PreferenceExample(prompt=(("user", f"Question {i}?"),), chosen="Yes.", rejected="No.", source="t")
            for i in range(n)]


def test_teacher_answers_cut_at_the_limit_have_no_end_of_turn(smollm2_tokenizer):
    tok = smollm2_tokenizer
    exs = examples(2)
    text = tok("Once upon a time there was a fox", add_special_tokens=False)["input_ids"]
    outputs = [text + [tok.eos_token_id], text]  # the first finished, the second was cut at max_new_tokens
    rows = [Encoded(prompt_ids(tok, ex.messages), [1], [1]) for ex in exs]
    data, generated = compute_samples(None, tok, tok, exs, rows, 48, len(text), 200, "t", backend=Fixed(outputs))
    assert generated == 2 * len(text) + 1
    finished, cut = unpack(data, 0), unpack(data, 1)
    assert finished[-1] == tok.eos_token_id and finished[:-1] == cut
    assert tok.eos_token_id not in cut
    assert cut == response_ids(tok, exs[1].messages, "Once upon a time there was a fox", finished=False)


class Favours(torch.nn.Module):
    """Every next token has logit 0 except ``favoured``, which has 5: log-probs known in closed form."""

    def __init__(self, vocab, favoured):
        super().__init__()
        self.vocab, self.favoured = vocab, favoured
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        logits = torch.zeros(*input_ids.shape, self.vocab) + self.w
        logits[..., self.favoured] += 5.0
        return type("Out", (), {"logits": logits})()


def test_teacher_scores_leave_the_end_of_turn_out_of_cut_answers(smollm2_tokenizer):
    tok = smollm2_tokenizer
    ex = examples(1)[0]
    pairs = [(ex.messages, "A fox ran")] * 2
    vocab, eos = len(tok), tok.eos_token_id
    scores, tokens = mean_logps(Favours(vocab, eos), tok, pairs, 48, 200, "t", finished=[True, False])
    whole = response_ids(tok, ex.messages, "A fox ran")
    n = len(whole) - 1  # text tokens; the finished answer adds its end-of-turn token
    assert tokens == 2 * len(prompt_ids(tok, ex.messages)) + len(whole) + n
    z = math.log(math.exp(5.0) + vocab - 1)
    assert scores[1] == pytest.approx(-z, abs=1e-4)  # the cut answer: its text tokens only
    assert scores[0] == pytest.approx((n * -z + 5.0 - z) / (n + 1), abs=1e-4)


def test_teacher_scores_are_replayed_from_saved_batches(smollm2_tokenizer, tmp_path):
    tok = smollm2_tokenizer
    pairs = [(ex.messages, f"A fox ran {i} times") for i, ex in enumerate(examples(10))]
    plain = mean_logps(Favours(len(tok), 7), tok, pairs, 48, 200, "t")
    with resumable(tmp_path):
        assert mean_logps(Favours(len(tok), 7), tok, pairs, 48, 200, "t") == plain
    assert len(list((tmp_path / "batches").glob("*.safetensors"))) == 2  # ten pairs, eight per batch

    class Refuses(Favours):
        def forward(self, *args, **kwargs):
            raise AssertionError("the teacher was called for a saved batch")

    with resumable(tmp_path) as journal:
        assert mean_logps(Refuses(len(tok), 7), tok, pairs, 48, 200, "t") == plain
    assert journal.reused == 2
    with resumable(tmp_path), pytest.raises(AssertionError):  # another pass over the same pairs is not a replay
        mean_logps(Refuses(len(tok), 7), tok, pairs, 48, 200, "other pass")
