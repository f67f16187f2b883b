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
from methods.pad.mcq import (
    MCQ_EPS,
    MCQ_TOP,
    letter_prob,
    mcq_scores,
    most_different,
    next_token_top,
    teacher_mcq,
)
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


class PrefixCache:
    """What the fake teacher keeps of a shared prefix: its tokens (HF keeps keys and values)."""

    def __init__(self, ids):
        self.ids = ids

    def batch_repeat_interleave(self, n):
        self.ids = self.ids.repeat_interleave(n, dim=0)


class LetterTeacher(torch.nn.Module):
    """A fake causal LM: the logits at every position are the same vector, built from the two marker tokens the
    row (its cached prefix, then its own tokens) contains; records what it saw."""

    def __init__(self, tokenizer):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.vocab = len(tokenizer)
        self.marker_ids = {single_id(tokenizer, m): m for m in MARKERS}
        self.letter = {"A": single_id(tokenizer, "A"), "B": single_id(tokenizer, "B")}
        self.fixed = {single_id(tokenizer, t): v for t, v in FIXED.items()}
        self.fixed.update({single_id(tokenizer, t): 7.0 for t in FILLER})
        self.fixed[single_id(tokenizer, OUTSIDE[0])] = OUTSIDE[1]
        self.prefixes = []  # per prefix forward: its token ids
        self.calls = []  # per query forward: (cached prefix ids or None, input_ids, attention_mask, position_ids)
        self.pairs = []  # per query row: (marker first shown, marker second shown)
        self.kept = []  # per query forward: logits_to_keep

    def forward(self, input_ids, attention_mask=None, use_cache=False, logits_to_keep=0, cache=None,
                position_ids=None):
        if use_cache and cache is None:  # a shared prefix: only its cache is read
            self.prefixes.append(input_ids.clone())
            return {"logits": torch.zeros(1, 1, self.vocab), "cache": PrefixCache(input_ids.clone())}
        self.calls.append((None if cache is None else cache.ids.clone(), input_ids.clone(), attention_mask.clone(),
                           position_ids.clone()))
        self.kept.append(logits_to_keep)
        full = input_ids if cache is None else torch.cat([cache.ids, input_ids], dim=1)
        rows = []
        for ids, mask in zip(full.tolist(), attention_mask.tolist()):
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
        t = len(logits_to_keep) if torch.is_tensor(logits_to_keep) else logits_to_keep or input_ids.shape[1]
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
    assert [c[1].shape[0] for c in model.calls] == [6, 3, 1]  # one forward per prompt, its pairs together
    assert [p.shape[0] for p in model.prefixes] == [1, 1, 1]  # after one forward of their shared prefix


def by_prompt(tokenizer):
    return [[hand_query_ids(tokenizer, ins, per[i], per[j]) for i, j in itertools.combinations(range(len(per)), 2)]
            for ins, per in zip(INSTRUCTIONS, ANSWERS)]


def hand_shared(queries):
    """The longest common prefix, worked out character by character on the token lists, less one token when
    it would swallow a whole query."""
    k = 0
    while all(len(q) > k + 1 for q in queries) and len({q[k] for q in queries}) == 1:
        k += 1
    return k


def test_teacher_mcq_forwards_each_shared_prefix_once(mcq_run, smollm2_tokenizer):
    model, _, tokens = mcq_run
    prompts = by_prompt(smollm2_tokenizer)
    shared = [hand_shared(qs) for qs in prompts]
    assert all(k > 20 for k in shared)  # the chat header, the template's head and the instruction
    assert shared[2] == len(prompts[2][0]) - 1  # a single query: all but its last token is "shared"
    assert [p[0].tolist() for p in model.prefixes] == [qs[0][:k] for qs, k in zip(prompts, shared)]
    by_hand = sum(k + sum(len(q) - k for q in qs) for qs, k in zip(prompts, shared))
    assert tokens == by_hand
    assert tokens == sum(int(c[2].sum()) - int(c[2][:, :len(c[0][0])].sum()) + len(c[0][0]) for c in model.calls)
    assert tokens < sum(len(q) for qs in prompts for q in qs)  # fewer than the queries one by one


def test_teacher_mcq_continues_every_query_after_its_prefix(mcq_run, smollm2_tokenizer):
    model, _, _ = mcq_run
    pad = smollm2_tokenizer.pad_token_id
    padded_rows = 0
    for (prefix, ids, mask, positions), queries, kept in zip(model.calls, by_prompt(smollm2_tokenizer), model.kept):
        k = prefix.shape[1]
        lasts = set()
        for row, query in enumerate(queries):
            own = query[k:]
            width = ids.shape[1]
            assert prefix[row].tolist() + ids[row, :len(own)].tolist() == query  # the query, token for token
            assert ids[row].tolist() == own + [pad] * (width - len(own))  # right padding after its own tokens
            assert mask[row].tolist() == [1] * (k + len(own)) + [0] * (width - len(own))
            assert positions[row].tolist() == list(range(k, k + width))  # where the query left off
            lasts.add(len(own) - 1)
            padded_rows += width > len(own)
        assert kept.tolist() == sorted(lasts)  # the LM head ran on each query's last position alone
    assert padded_rows > 0


@pytest.mark.parametrize("queries", [
    [[5, 6, 7, 8, 9, 10], [5, 6, 7, 11], [5, 6, 7, 8, 12, 13, 14, 15], [5, 6, 7, 8, 9, 10, 16]],  # a shared head
    [[5, 6, 7, 8], [9, 10, 11]],  # nothing shared: no prefix pass
    [[5, 6, 7, 8, 9]],  # one query (two samples): all but its last token run as the prefix
], ids=["shared", "disjoint", "single"])
def test_next_token_top_equals_each_query_run_alone(tiny_model, queries):
    # A real Llama: the prefix's keys and values, repeated per query, then the right-padded suffixes at the
    # positions where the prefix ended, give each query's next-token distribution as a plain forward does.
    values, ids, forwarded = next_token_top(tiny_model, queries, pad_id=0, device="cpu")
    for row, q in enumerate(queries):
        with torch.no_grad():
            logits = tiny_model(input_ids=torch.tensor([q])).logits[0, -1]
        top = torch.log_softmax(logits, -1).topk(MCQ_TOP)
        assert ids[row].tolist() == top.indices.tolist()
        torch.testing.assert_close(values[row], top.values, atol=1e-5, rtol=0)
    shared = hand_shared(queries) if len(queries) > 1 or len(queries[0]) > 1 else 0
    assert forwarded == shared + sum(len(q) - shared for q in queries)


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
    assert len(saved) == 3  # one per prompt
    saved[1].unlink()  # one batch lost, as when killed before it was saved (files are named by key, not order)
    model = LetterTeacher(smollm2_tokenizer)
    with resumable(tmp_path) as journal:
        again, again_tokens = teacher_mcq(model, smollm2_tokenizer, INSTRUCTIONS, ANSWERS, 64, "test")
    assert journal.reused == 2 and len(model.calls) == 1 and len(model.prefixes) == 1  # only the missing one
    assert again == scores and again_tokens == tokens  # the same floats, not approximately
