"""MT-Bench: data checks on the shared files, prompt choice, the upstream rating parse, and the score by hand."""

from __future__ import annotations

import hashlib
import json
import math
import re

import pytest

from harness.benchmarks import mt_bench
from harness.errors import BenchError


@pytest.fixture(scope="module")
def mt_dir(shared_dir):
    return shared_dir / "benchmarks" / "mt_bench"


@pytest.fixture(scope="module")
def questions(mt_dir):
    return {q["question_id"]: q for q in mt_bench.load_questions(mt_dir)}


@pytest.fixture(scope="module")
def prompts(mt_dir):
    return mt_bench.load_judge_prompts(mt_dir)


@pytest.fixture(scope="module")
def references(mt_dir):
    return mt_bench.load_reference_answers(mt_dir / "reference_answer" / "gpt-4.jsonl")


# ---------------------------------------------------------------- rating parse (FastChat's cases)


@pytest.mark.parametrize("text, expected", [
    ("Rating: [[8]]", 8.0),
    ("Rating: [[8.5]]", 8.5),
    ("The answer is fine. [8]", 8.0),  # fallback to single brackets
    ("Rating: [7] and later [[3]]", 3.0),  # double brackets are searched first, anywhere in the text
    ("Rating: [[5]] ... on reflection [[7]]", 5.0),  # first match wins
    ("[[3]] ... [[9]]", 3.0),
    ("[[11]]", 11.0),  # no range check
    ("[[0]]", 0.0),
    ("[[8.]]", 8.0),
    ("no rating here", -1.0),
    ("Rating: [[eight]]", -1.0),
    ("$ERROR$", -1.0),  # upstream's failed-call text
])
def test_parse_rating(text, expected):
    assert mt_bench.parse_rating(text) == expected


# ---------------------------------------------------------------- aggregation, by hand


def test_aggregate_matches_hand_computation(tmp_path):
    rows = [
        {"question_id": 81, "category": "writing", "turn": 1, "score": 8},
        {"question_id": 81, "category": "writing", "turn": 2, "score": 6},
        {"question_id": 82, "category": "writing", "turn": 1, "score": 9},
        {"question_id": 82, "category": "writing", "turn": 2, "score": 5},
        {"question_id": 101, "category": "reasoning", "turn": 1, "score": 4},
        {"question_id": 101, "category": "reasoning", "turn": 2, "score": -1},  # no rating: dropped
        {"question_id": 111, "category": "math", "turn": 1, "score": 10},
        {"question_id": 111, "category": "math", "turn": 2, "score": 7},
    ]
    path = tmp_path / "gpt-4_single.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = mt_bench.aggregate([json.loads(line) for line in path.read_text().splitlines()])
    # valid: 8 6 9 5 4 10 7 -> 49 / 7 = 7.0; turn 1: 8 9 4 10 -> 7.75; turn 2: 6 5 7 -> 6.0
    assert result["score"] == pytest.approx(7.0)
    assert result["turn_1"] == pytest.approx(7.75) and result["turn_2"] == pytest.approx(6.0)
    assert (result["turn_1"] + result["turn_2"]) / 2 == pytest.approx(6.875)  # not the score: a row was dropped
    assert result["n"] == 7 and result["n_failed"] == 1
    assert result["n_turn_1"] == 4 and result["n_turn_2"] == 3
    assert result["categories"] == pytest.approx({"math": 8.5, "reasoning": 4.0, "writing": 7.0})
    assert result["category_counts"] == {"math": 2, "reasoning": 1, "writing": 4}
    # deviations from 7: 1 -1 2 -2 -3 3 0 -> sum of squares 28; var 28/6; se sqrt(28/6/7) = sqrt(2/3)
    assert result["se"] == pytest.approx(math.sqrt(2 / 3))


def test_aggregate_reads_upstream_judgments_without_a_category_field(shared_dir):
    """FastChat's gpt-4_single.jsonl rows carry question_id, model, judge, user_prompt, judgment, score, turn and
    tstamp, no category: categories come from the question file."""
    rows = [{"question_id": q, "model": "m", "judge": ["gpt-4", "single-v1"], "user_prompt": "", "judgment": "",
             "score": s, "turn": t, "tstamp": 0.0}
            for q, t, s in [(81, 1, 8), (81, 2, 6), (111, 1, 10), (111, 2, 7), (999, 1, 3)]]
    result = mt_bench.aggregate(rows, mt_bench.load_questions(shared_dir))
    assert result["score"] == pytest.approx(34 / 5)  # every valid row counts in the score
    assert result["categories"] == pytest.approx({"math": 8.5, "writing": 7.0})
    assert result["category_counts"] == {"math": 2, "writing": 2} and result["n_uncategorised"] == 1
    assert mt_bench.aggregate(rows)["n_uncategorised"] == 5  # no question file: no categories, still a score


def test_aggregate_without_failures_equals_mean_of_turn_means():
    rows = [{"question_id": q, "category": "stem", "turn": t, "score": s}
            for q, t, s in [(141, 1, 2), (141, 2, 4), (142, 1, 6), (142, 2, 9)]]
    result = mt_bench.aggregate(rows)
    assert result["score"] == pytest.approx(21 / 4) == pytest.approx((4 + 6.5) / 2)
    assert result["n_failed"] == 0


def test_aggregate_all_failed_gives_no_score():
    result = mt_bench.aggregate([{"question_id": 81, "category": "writing", "turn": 1, "score": -1},
                                 {"question_id": 81, "category": "writing", "turn": 2, "score": None}])
    assert result["score"] is None and result["se"] is None and result["n"] == 0 and result["n_failed"] == 2


# ---------------------------------------------------------------- data files


def test_questions_file(questions):
    assert sorted(questions) == list(range(81, 161))
    assert all(len(q["turns"]) == 2 for q in questions.values())
    blocks = {"writing": 81, "roleplay": 91, "reasoning": 101, "math": 111, "coding": 121, "extraction": 131,
              "stem": 141, "humanities": 151}
    for category, first in blocks.items():
        ids = sorted(i for i, q in questions.items() if q["category"] == category)
        assert ids == list(range(first, first + 10)), category


def test_questions_found_from_the_shared_root(shared_dir):
    assert len(mt_bench.load_questions(shared_dir)) == 80


def test_judge_prompts_file(prompts):
    assert len(prompts) == 8
    assert set(prompts) == {"pair-v2", "pair-v2-multi-turn", "pair-math-v1", "pair-math-v1-multi-turn", "single-v1",
                            "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"}
    assert all(prompts[n]["output_format"] == "[[rating]]" for n in prompts if n.startswith("single"))


def test_reference_file_and_hash(mt_dir, references, tmp_path):
    refs, digest = references
    assert sorted(refs) == list(range(101, 131))
    assert all(len(r) == 2 and all(isinstance(t, str) and t for t in r) for r in refs.values())
    path = mt_dir / "reference_answer" / "gpt-4.jsonl"
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert mt_bench.reference_path(mt_dir) == path
    edited = tmp_path / "fixed.jsonl"
    edited.write_bytes(path.read_bytes().replace(b"second place", b"first place", 1))
    assert mt_bench.load_reference_answers(edited)[1] != digest  # a corrected file is told apart


def test_missing_files_raise_bench_error(tmp_path):
    with pytest.raises(BenchError, match="question.jsonl"):
        mt_bench.load_questions(tmp_path)
    with pytest.raises(BenchError, match="--data-dir"):
        mt_bench.load_judge_prompts(tmp_path)
    with pytest.raises(BenchError, match="nope.jsonl"):
        mt_bench.load_reference_answers(tmp_path / "nope.jsonl")
    (tmp_path / "question.jsonl").write_text('{"question_id": 1, "category": "writing", "turns": ["a", "b"]}\n')
    with pytest.raises(BenchError, match="expected 80"):
        mt_bench.load_questions(tmp_path)
    assert len(mt_bench.load_questions(tmp_path, expected=None)) == 1


# ---------------------------------------------------------------- temperatures


@pytest.mark.parametrize("category, t", [("writing", 0.7), ("roleplay", 0.7), ("reasoning", 0.0), ("math", 0.0),
                                         ("coding", 0.0), ("extraction", 0.0), ("stem", 0.1), ("humanities", 0.1),
                                         ("poetry", 0.7)])
def test_temperature_for(category, t):
    assert mt_bench.temperature_for(category) == t
    assert (mt_bench.temperature_for(category) < mt_bench.GREEDY_BELOW) == (t == 0.0)


# ---------------------------------------------------------------- judge prompts


def _fill(template: str, **fields) -> str:
    """Independent of str.format: plain replacement (the templates hold no escaped braces)."""
    assert "{{" not in template
    assert set(re.findall(r"\{(\w+)\}", template)) <= set(fields)  # every placeholder gets a value
    for key, value in fields.items():
        template = template.replace("{" + key + "}", value)
    return template


def test_reasoning_turn_1_uses_math_prompt_with_reference(questions, prompts, references):
    refs, _ = references
    q = questions[101]
    name, messages = mt_bench.judge_messages(q, ["ANSWER-ONE", "ANSWER-TWO"], 1, prompts, refs[101])
    assert name == "single-math-v1"
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == prompts["single-math-v1"]["system_prompt"] == "You are a helpful assistant."
    expected = _fill(prompts["single-math-v1"]["prompt_template"], question=q["turns"][0], ref_answer_1=refs[101][0],
                     answer="ANSWER-ONE")
    assert messages[1]["content"] == expected
    assert refs[101][0] in messages[1]["content"] and "ANSWER-TWO" not in messages[1]["content"]


def test_math_turn_2_uses_multi_turn_math_prompt(questions, prompts, references):
    refs, _ = references
    q = questions[111]
    name, messages = mt_bench.judge_messages(q, ["A-1", "A-2"], 2, prompts, refs[111])
    assert name == "single-math-v1-multi-turn"
    assert messages[0]["content"] == prompts[name]["system_prompt"]
    expected = _fill(prompts[name]["prompt_template"], question_1=q["turns"][0], question_2=q["turns"][1],
                     ref_answer_1=refs[111][0], ref_answer_2=refs[111][1], answer_1="A-1", answer_2="A-2")
    assert messages[1]["content"] == expected


def test_writing_uses_general_prompts(questions, prompts):
    q = questions[81]
    name, messages = mt_bench.judge_messages(q, ["A-1", "A-2"], 1, prompts, None)
    assert name == "single-v1"
    assert messages[1]["content"] == _fill(prompts[name]["prompt_template"], question=q["turns"][0], answer="A-1")
    name, messages = mt_bench.judge_messages(q, ["A-1", "A-2"], 2, prompts, None)
    assert name == "single-v1-multi-turn"
    assert messages[0]["content"] == prompts[name]["system_prompt"]
    assert messages[1]["content"] == _fill(prompts[name]["prompt_template"], question_1=q["turns"][0],
                                           question_2=q["turns"][1], answer_1="A-1", answer_2="A-2")


@pytest.mark.parametrize("turn", [1, 2])
def test_prompt_choice_for_every_question(questions, prompts, references, turn):
    refs, _ = references
    for qid, q in questions.items():
        with_ref = q["category"] in {"math", "reasoning", "coding"}
        name, _ = mt_bench.judge_messages(q, ["a", "b"], turn, prompts, refs.get(qid))
        expected = ("single-math-v1" if with_ref else "single-v1") + ("-multi-turn" if turn == 2 else "")
        assert name == expected, qid
        assert (qid in refs) == with_ref  # the GPT-4 references cover exactly the reference categories


def test_extraction_ignores_the_human_reference_field(questions, prompts):
    q = next(q for q in questions.values() if q["category"] == "extraction" and "reference" in q)
    name, messages = mt_bench.judge_messages(q, ["a", "b"], 1, prompts, None)
    assert name == "single-v1" and q["reference"][0] not in messages[1]["content"]


def test_reference_category_without_reference_raises(questions, prompts):
    with pytest.raises(BenchError, match="reference"):
        mt_bench.judge_messages(questions[121], ["a", "b"], 1, prompts, None)
    with pytest.raises(BenchError):
        mt_bench.judge_messages(questions[81], ["a", "b"], 3, prompts, None)


def test_fold_system_into_user_turn():
    messages = [{"role": "system", "content": "SYS"}, {"role": "user", "content": "USER"}]
    assert mt_bench.fold_system(messages) == [{"role": "user", "content": "SYS\n\nUSER"}]
    assert messages[1]["content"] == "USER"  # the input is left alone
    assert mt_bench.fold_system(messages[1:]) == messages[1:]


def test_decoding_constants():
    assert (mt_bench.JUDGE_TEMPERATURE, mt_bench.JUDGE_MAX_TOKENS, mt_bench.ANSWER_MAX_NEW_TOKENS) == (0.0, 2048, 1024)
