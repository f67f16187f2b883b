"""PAD's teacher signals: the MCQ letter probabilities (the official top-token rule), the per-sample MCQ score, the
teacher's pairwise queries (a fake teacher whose letter logits depend on which answer is shown first), the greedy
most-different selection by Levenshtein distance, and the per-example collation of the optional fields. Expected
values are worked out by hand in plain Python."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch

from harness.batch import Batch, collate, pad_sequences
from harness.data import Encoded
from harness.journal import resumable
from harness.signals import collate_signals, pack
from methods.pad.mcq import MCQ_EPS, MCQ_TOP, letter_prob, mcq_scores, most_different, teacher_mcq
from methods.pad.mcq import OWN_TEMPLATE as MCQ_TEMPLATE


def test_constants_are_the_official_rule():
    assert MCQ_EPS == 1e-8
    assert MCQ_TOP == 20
    for field in ("{instruction}", "{a}", "{b}"):
        assert field in MCQ_TEMPLATE


# ------------------------------------------------------------------------------------------------ letter_prob


def test_letter_prob_counts_short_tokens_containing_the_letter():
    texts = ["A", " A", "A.", "Apple", "AB ", "B", "AB", "a"]
    logps = [-0.5, -1.0, -2.0, -0.1, -0.3, -0.7, -3.0, -0.2]
    # "A", " A", "A." and "AB" (2 chars) contain "A" and are shorter than 3; "Apple", "AB " (3 chars) are too long;
    # "B" and "a" lack the (case-sensitive) letter.
    expected_a = 1e-8 + math.exp(-0.5) + math.exp(-1.0) + math.exp(-2.0) + math.exp(-3.0)
    # "B" and "AB" count for B; "AB " is 3 characters.
    expected_b = 1e-8 + math.exp(-0.7) + math.exp(-3.0)
    assert letter_prob(logps, texts, "A") == pytest.approx(expected_a, rel=1e-12)
    assert letter_prob(logps, texts, "B") == pytest.approx(expected_b, rel=1e-12)


def test_letter_prob_is_eps_when_no_token_counts():
    assert letter_prob([-0.1, -0.2], ["Apple", "AB "], "A") == 1e-8
    assert letter_prob([], [], "A") == 1e-8


# ------------------------------------------------------------------------------------------------ mcq_scores


def test_mcq_scores_by_hand_n3():
    pairwise = {(0, 1): (0.7, 0.2), (0, 2): (0.1, 0.85), (1, 2): (0.4, 0.5)}
    # wins: 0 as A in (0,1), (0,2); 1 as B in (0,1) and A in (1,2); 2 as B in (0,2), (1,2)
    expected = [math.log((1e-8 + 0.7 + 0.1) / 2), math.log((1e-8 + 0.2 + 0.4) / 2),
                math.log((1e-8 + 0.85 + 0.5) / 2)]
    assert mcq_scores(pairwise, 3) == pytest.approx(expected, rel=1e-12)


def test_mcq_scores_are_not_renormalised_and_floor_at_eps():
    # P(A) + P(B) need not be 1: the raw values are summed; a sample that never wins scores log(eps / (n - 1)).
    got = mcq_scores({(0, 1): (0.0, 0.3)}, 2)
    assert got == pytest.approx([math.log(1e-8), math.log(1e-8 + 0.3)], rel=1e-12)


# ------------------------------------------------------------------------------------------------ teacher_mcq

# Each answer carries one marker word (a single token of the real tokenizer); the fake teacher's logit for "A"
# follows the marker shown first, for "B" the one shown second.
MARKERS = {"Paris": 1.0, "London": -0.5, "Rome": 0.3, "Moon": -1.2}
INSTRUCTIONS = ["Name a city.", "Pick one.", "Say something."]
ANSWERS = [["Paris", "London is nice", "Rome is nice and warm", "Moon"],
           ["Rome is big", "Paris", "London"],
           ["Moon and stars", "Paris is far"]]
MARKER_OF = [[a.split()[0] for a in per] for per in ANSWERS]
# Fixed top-token logits by token text; letter tokens "A"/"B" get 10 + the marker's value.
FIXED = {" A": 9.0, " B": 8.5, "AB": 8.0, "BA": 7.5,  # counted: " A" for A, " B" for B, "AB"/"BA" for both
         "Apple": 9.5, " AB": 8.8, "ABC": 8.2}  # not counted: 3 characters or more
FILLER = [str(d) for d in range(10)] + ["C"]  # 11 tokens at 7.0: with A, B and FIXED, 20 tokens above the rest
OUTSIDE = ("AA", 6.0)  # would count for A but is the 21st most likely token: outside the top 20


def single_id(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) == 1, (text, ids)
    return ids[0]


class LetterTeacher(torch.nn.Module):
    """A fake causal LM: the logits at every position are the same vector, built from the two marker tokens the
    row contains; records what it saw."""

    def __init__(self, tokenizer):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.vocab = len(tokenizer)
        self.marker_ids = {single_id(tokenizer, m): m for m in MARKERS}
        self.letter = {"A": single_id(tokenizer, "A"), "B": single_id(tokenizer, "B")}
        self.fixed = {single_id(tokenizer, t): v for t, v in FIXED.items()}
        self.fixed.update({single_id(tokenizer, t): 7.0 for t in FILLER})
        self.fixed[single_id(tokenizer, OUTSIDE[0])] = OUTSIDE[1]
        self.calls = []  # per forward: (input_ids, attention_mask, use_cache)
        self.pairs = []  # per row: (marker first shown, marker second shown)
        self.kept = []  # per forward: logits_to_keep

    def forward(self, input_ids, attention_mask, use_cache, logits_to_keep=0):
        self.calls.append((input_ids.clone(), attention_mask.clone(), use_cache))
        self.kept.append(logits_to_keep)
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            seen = [self.marker_ids[t] for t, m in zip(ids, mask) if m and t in self.marker_ids]
            first, second = dict.fromkeys(seen)  # exactly two distinct markers, in order of appearance
            self.pairs.append((first, second))
            logits = torch.zeros(self.vocab)
            for t, v in self.fixed.items():
                logits[t] = v
            logits[self.letter["A"]] = 10.0 + MARKERS[first]
            logits[self.letter["B"]] = 10.0 + MARKERS[second]
            rows.append(logits)
        last = torch.stack(rows)  # [B, V]
        t = logits_to_keep or input_ids.shape[1]  # HF's meaning: 0 keeps every position
        return SimpleNamespace(logits=last.unsqueeze(1).expand(-1, t, -1))  # [B, t, V] without the memory


def hand_letter_probs(vocab, first, second):
    """P(A), P(B) by the official rule, from a softmax over the whole vocabulary, in plain math."""
    top = [10.0 + MARKERS[first], 10.0 + MARKERS[second], *FIXED.values(), *[7.0] * len(FILLER)]
    assert len(top) == 20
    z = sum(math.exp(v) for v in top) + math.exp(OUTSIDE[1]) + (vocab - 21) * math.exp(0.0)
    p = {t: math.exp(v) / z for t, v in FIXED.items()}
    p_a = 1e-8 + math.exp(10.0 + MARKERS[first]) / z + p[" A"] + p["AB"] + p["BA"]
    p_b = 1e-8 + math.exp(10.0 + MARKERS[second]) / z + p[" B"] + p["AB"] + p["BA"]
    return p_a, p_b


def hand_query_ids(tokenizer, instruction, a, b):
    text = ("Which of the two responses below answers the instruction better?\n\n"
            f"[Instruction]\n{instruction}\n\n[Response A]\n{a}\n\n[Response B]\n{b}\n\n"
            "Reply with a single letter: A or B.")
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return tokenizer(rendered, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def mcq_run(smollm2_tokenizer):
    model = LetterTeacher(smollm2_tokenizer)
    scores, tokens = teacher_mcq(model, smollm2_tokenizer, INSTRUCTIONS, ANSWERS, max_prompt_len=64, desc="test")
    return model, scores, tokens


def test_teacher_mcq_scores_by_hand(mcq_run, smollm2_tokenizer):
    model, scores, _ = mcq_run
    vocab = len(smollm2_tokenizer)
    expected = []
    for markers in MARKER_OF:
        n = len(markers)
        wins = [0.0] * n
        for i in range(n):
            for j in range(i + 1, n):  # answer i shown as A, j as B
                p_a, p_b = hand_letter_probs(vocab, markers[i], markers[j])
                wins[i] += p_a
                wins[j] += p_b
        expected.append([math.log((1e-8 + w) / (n - 1)) for w in wins])
    assert [len(s) for s in scores] == [4, 3, 2]
    for got, want in zip(scores, expected):
        # float32 log-softmax over ~49k tokens: about 1e-4 relative; a missing or extra counted token moves P
        # by 0.5% or more
        assert got == pytest.approx(want, rel=5e-4)


def test_teacher_mcq_asks_every_pair_once_in_fixed_order(mcq_run):
    model, _, _ = mcq_run
    expected = [(m[i], m[j]) for m in MARKER_OF for i, j in itertools.combinations(range(len(m)), 2)]
    assert len(expected) == 6 + 3 + 1  # n(n-1)/2 per prompt
    assert model.pairs == expected
    assert [c[0].shape[0] for c in model.calls] == [8, 2]  # SIGNAL_BATCH rows per forward
    assert all(c[2] is False for c in model.calls)


def test_teacher_mcq_counts_the_unpadded_tokens(mcq_run, smollm2_tokenizer):
    model, _, tokens = mcq_run
    by_hand = sum(len(hand_query_ids(smollm2_tokenizer, ins, per[i], per[j]))
                  for ins, per in zip(INSTRUCTIONS, ANSWERS) for i, j in itertools.combinations(range(len(per)), 2))
    assert tokens == by_hand
    assert tokens == sum(int(c[1].sum()) for c in model.calls)
    assert tokens < sum(c[1].numel() for c in model.calls)  # there was padding, and it is not counted


def test_teacher_mcq_pads_on_the_left(mcq_run, smollm2_tokenizer):
    model, _, _ = mcq_run
    pad = smollm2_tokenizer.pad_token_id
    queries = [hand_query_ids(smollm2_tokenizer, ins, per[i], per[j])
               for ins, per in zip(INSTRUCTIONS, ANSWERS) for i, j in itertools.combinations(range(len(per)), 2)]
    rows = [(ids, mask) for c in model.calls for ids, mask in zip(c[0].tolist(), c[1].tolist())]
    assert len(rows) == len(queries)
    assert model.kept == [1] * len(model.calls)  # the LM head asked for the last position only
    padded_rows = 0
    for (ids, mask), query in zip(rows, queries):
        k = len(ids) - len(query)
        assert mask == [0] * k + [1] * len(query)  # padding first, the prompt flush against the last position
        assert ids == [pad] * k + query
        padded_rows += k > 0
    assert padded_rows > 0


# ------------------------------------------------------------------------------------------------ most_different


def levenshtein(a, b):
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def test_levenshtein_helper():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("aaaa", "aazz") == 2
    assert levenshtein("", "abc") == 3


def test_most_different_by_hand():
    # From "aaaa": aaab 1, zzzz 4, aazz 2, aaaa 0 -> zzzz (2). Then the smallest distance to {aaaa, zzzz}:
    # aaab min(1, 4) = 1, aazz min(2, 2) = 2, aaaa min(0, 4) = 0 -> aazz (3).
    assert most_different(["aaaa", "aaab", "zzzz", "aazz", "aaaa"], 3) == ([0, 2, 3], True)


def test_most_different_breaks_ties_by_the_lowest_index():
    # From "aaaa": bbbb 4, aabb 2, bbaa 2 -> 1. Then aabb min(2, 2) = 2 and bbaa min(2, 2) = 2: a tie -> 2.
    assert most_different(["aaaa", "bbbb", "aabb", "bbaa"], 3) == ([0, 1, 2], True)
    # A tie at the first pick: both at distance 2 from "aa".
    assert most_different(["aa", "bb", "cc"], 2) == ([0, 1], True)
    # The later index is taken only when strictly farther.
    assert most_different(["aa", "ab", "bb"], 2) == ([0, 2], True)


def test_most_different_flags_duplicates_kept():
    assert most_different(["same", "same", "same"], 2) == ([0, 1], False)
    # From "abc": abc 0, abd 1 -> 2; then only 1 is left, a copy of 0.
    assert most_different(["abc", "abc", "abd"], 3) == ([0, 2, 1], False)
    # Duplicates drawn but not kept: distinct.
    assert most_different(["abc", "abc", "xyz"], 2) == ([0, 2], True)
    assert most_different(["only"], 1) == ([0], True)


@pytest.mark.parametrize("texts,n", [
    (["the cat", "the hat", "a dog ran", "the cat!", "zebra"], 4),
    (["", "x", "xy", "xyz", "yx"], 3),
    (["hello world", "hello", "world", "hello world", "help"], 3),
])
def test_most_different_matches_plain_greedy_max_min(texts, n):
    kept = [0]
    while len(kept) < n:
        best, best_d = None, -1
        for c in range(len(texts)):  # ascending: a later index wins only when strictly farther
            if c in kept:
                continue
            d = min(levenshtein(texts[c], texts[k]) for k in kept)
            if d > best_d:
                best, best_d = c, d
        kept.append(best)
    distinct = len({texts[k] for k in kept}) == n
    assert most_different(texts, n) == (kept, distinct)


# ------------------------------------------------------------------------------------------------ collation, counts

ROWS3 = [Encoded([1, 2], [3], [4]), Encoded([5], [6, 7], [8]), Encoded([9, 10, 11], [12], [13])]
N = 2
RESPONSES = [[20, 21], [22], [23, 24, 25], [26], [27], [28, 29]]  # example i, sample j at i * N + j


def scored_data(**extra):
    data = {**pack(RESPONSES), "scores": torch.tensor([[-1.0, -2.0], [-0.5, -0.7], [-3.0, -0.1]])}
    data.update(extra)
    return data


def test_collate_scored_samples_copies_mcq_and_distinct_per_example():
    mcq = torch.tensor([[-0.1, -0.9], [-0.3, -0.4], [-2.0, -0.05]])
    distinct = torch.tensor([True, False, True])
    batch = collate([ROWS3[2], ROWS3[0]], [2, 0], pad_id=0)
    out = collate_signals({"scored_samples": scored_data(mcq=mcq, distinct=distinct)}, batch, 0)["scored_samples"]
    assert torch.equal(out["mcq"], torch.tensor([[-2.0, -0.05], [-0.1, -0.9]]))
    assert out["distinct"].tolist() == [True, True]
    assert torch.equal(out["teacher_scores"], torch.tensor([[-3.0, -0.1], [-1.0, -2.0]]))
    want = pad_sequences([[9, 10, 11]] * 2 + [[1, 2]] * 2, [[27], [28, 29], [20, 21], [22]], 0)
    assert out["seqs"].input_ids.tolist() == want.input_ids.tolist()
    assert out["seqs"].labels.tolist() == want.labels.tolist()

    batch = collate([ROWS3[1]], [1], pad_id=0)
    out = collate_signals({"scored_samples": scored_data(distinct=distinct)}, batch, 0)["scored_samples"]
    assert out["distinct"].tolist() == [False]
    assert "mcq" not in out


def test_collate_scored_samples_without_options_has_no_extra_fields():
    batch = collate(ROWS3, [0, 1, 2], pad_id=0)
    out = collate_signals({"scored_samples": scored_data()}, batch, 0)["scored_samples"]
    assert set(out) == {"seqs", "teacher_scores"}


def test_counts_report_the_kept_examples_of_a_filtered_signal():
    batch: Batch = collate(ROWS3, [0, 1, 2], pad_id=0)
    batch.signals["scored_samples"] = collate_signals({"scored_samples": scored_data()}, batch, 0)["scored_samples"]
    counts = batch.counts()
    assert "scored_samples_kept" not in counts
    assert counts["scored_samples_tokens"] == sum(len(r) for r in RESPONSES)
    batch.signals["scored_samples"]["keep"] = torch.tensor([True, False, True])
    counts = batch.counts()
    assert counts["scored_samples_kept"] == 2
    assert counts["pairs"] == 3
    assert counts["scored_samples_tokens"] == sum(len(r) for r in RESPONSES)  # still read from "seqs"
    batch.signals["scored_samples"]["keep"] = torch.tensor([False, False, False])
    assert batch.counts()["scored_samples_kept"] == 0


# ------------------------------------------------------------------------------------------------ the MCQ template


def test_the_released_template_is_read_from_the_data_folder_and_filled_as_the_code_does(tmp_path, smollm2_tokenizer):
    import json

    from methods.pad.mcq import McqTemplate, load_template, query_ids

    assert load_template(tmp_path, tmp_path).name == "ours"  # no copy in the data folder: our wording, said so
    folder = tmp_path / "reference" / "pad"
    folder.mkdir(parents=True)
    # A stand-in with the released file's fields and placeholders (the released text is not copied here).
    (folder / "mcq-template.json").write_text(json.dumps({
        "system": "Pick the best of $identifier_list_str.",
        "user": "Q: $instruction\n$candidate_response_list_str\nBest:"}))
    template = load_template(tmp_path, tmp_path)
    assert template.name == "official" and str(folder / "mcq-template.json") in template.origin
    messages = template.messages("Name a city.", "Paris", "Rome")
    assert messages == [{"role": "system", "content": "Pick the best of (A, or B)."},
                        {"role": "user", "content": 'Q: Name a city.\nA) """\nParis\n"""\nB) """\nRome\n"""\nBest:'}]
    ids = query_ids(smollm2_tokenizer, template, "Name a city.", "Paris", "Rome")
    text = smollm2_tokenizer.decode(ids)
    assert "Pick the best of (A, or B)." in text and text.index("Pick the best") < text.index("Q: Name a city.")
    assert template.digest != McqTemplate("ours").digest  # the template enters the signal's cache key


def test_teacher_mcq_replays_saved_batches_after_a_kill(mcq_run, smollm2_tokenizer, tmp_path):
    _, scores, tokens = mcq_run
    with resumable(tmp_path):
        teacher_mcq(LetterTeacher(smollm2_tokenizer), smollm2_tokenizer, INSTRUCTIONS, ANSWERS, 64, "test")
    saved = sorted((tmp_path / "batches").glob("*.safetensors"))
    assert len(saved) == 2
    saved[1].unlink()  # one batch lost, as when killed before it was saved (files are named by key, not order)
    model = LetterTeacher(smollm2_tokenizer)
    with resumable(tmp_path) as journal:
        again, again_tokens = teacher_mcq(model, smollm2_tokenizer, INSTRUCTIONS, ANSWERS, 64, "test")
    assert journal.reused == 1 and len(model.calls) == 1  # only the missing batch
    assert again == scores and again_tokens == tokens  # the same floats, not approximately
