"""Per-question views read back from judgment files: scores on each benchmark's own scale, outcomes, text."""

from __future__ import annotations

import json

import pytest

from harness.errors import BenchError
from harness.questions import judged_items, outcome_counts, question_scores
from tests.fixtures.results_tree import PLANTED, build_results


def write(folder, name, result, lines):
    (folder / "benchmarks").mkdir(parents=True, exist_ok=True)
    result = {**result, "_file": f"{name}.json"}
    (folder / "benchmarks" / f"{name}_judgments.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return result


def test_mt_bench_question_score_is_the_mean_of_its_turns_and_unparsed_turns_drop_out(tmp_path):
    lines = [{"question_id": 81, "category": "writing", "turn": 2, "score": 6.0, "judgment": "Rating: [[6]]",
              "question": "q2", "answers": ["a1", "a2"], "expected_score": 5.5},
             {"question_id": 81, "category": "writing", "turn": 1, "score": 4.0, "judgment": "Rating: [[4]]",
              "question": "q1", "answers": ["a1", "a2"], "expected_score": 4.5},
             {"question_id": 82, "category": "math", "turn": 1, "score": -1.0, "judgment": "no rating",
              "question": "m1", "answers": ["b1", "b2"]},
             {"question_id": 82, "category": "math", "turn": 2, "score": 3.0, "judgment": "Rating: [[3]]",
              "question": "m2", "answers": ["b1", "b2"]}]
    result = write(tmp_path, "mt_bench", {"benchmark": "mt_bench"}, lines)
    items = {i["id"]: i for i in judged_items(result, tmp_path)}
    assert items["81"]["score"] == 5.0 and items["81"]["expected_score"] == 5.0
    assert items["82"]["score"] == 3.0 and items["82"]["expected_score"] is None  # -1 is "unparsed", not a rating
    assert items["81"]["question"] == "[turn 1] q1\n\n[turn 2] q2"
    assert items["81"]["answer"] == "[turn 1] a1\n\n[turn 2] a2"
    assert items["81"]["rationale"].startswith("[turn 1] Rating: [[4]]") and items["81"]["outcomes"] == []
    assert question_scores(result, tmp_path) == {"81": 5.0, "82": 3.0}
    assert question_scores(result, tmp_path, "expected_score") == {"81": 5.0}
    assert outcome_counts(result, tmp_path) is None


def test_alpaca_preference_becomes_a_win_share_and_an_outcome(tmp_path):
    lines = [{"index": i, "instruction": f"i{i}", "output_1": "ref", "output_2": f"out{i}", "preference": p,
              "switched": False, "top_logprobs": [["m", -1.0], ["M", -0.25]], "error": None}
             for i, p in ((1, 2.0), (2, 1.5), (3, 1.25), (4, float("nan")))]
    result = write(tmp_path, "alpaca_eval", {"benchmark": "alpaca_eval_2", "reference_generator": "gpt4"}, lines)
    items = judged_items(result, tmp_path)
    assert [i["score"] for i in items] == [100.0, 50.0, 25.0, None]
    assert [i["outcomes"] for i in items] == [["win"], ["tie"], ["loss"], []]
    assert items[0]["reference_answer"] == "ref" and "'M' -0.250" in items[0]["rationale"]
    assert outcome_counts(result, tmp_path) == {"win": 1, "tie": 1, "loss": 1, "reference": "gpt4"}


def test_arena_hard_counts_weighted_battles_from_the_models_side(tmp_path):
    # game 1 has the model as B, game 2 as A: B>>A then A>B is 3 wins and 1 win; A=B twice is two ties
    lines = [{"uid": "u1", "cluster": "c", "question": "q", "answer": "x",
              "games": [{"verdict": "B>>A", "judgment": "j1"}, {"verdict": "A>B", "judgment": "j2"}]},
             {"uid": "u2", "cluster": "c", "answer": "y",
              "games": [{"verdict": "A=B", "judgment": "j3"}, {"verdict": None, "judgment": "??"}]}]
    result = write(tmp_path, "arena_hard", {"benchmark": "arena_hard_v0.1", "baseline": "gpt-4-0314"}, lines)
    items = judged_items(result, tmp_path)
    assert items[0]["outcomes"] == ["win"] * 4 and items[0]["score"] == 100.0
    assert items[1]["outcomes"] == ["tie"] and items[1]["score"] == 50.0  # the unparsed game adds nothing
    assert items[1]["question"] is None and "[game 2 (A = model, B = baseline)] ??" in items[1]["rationale"]
    assert outcome_counts(result, tmp_path) == {"win": 4, "tie": 1, "loss": 0, "reference": "gpt-4-0314"}


def test_rm_winrate_items_use_the_question_ids_of_the_result(tmp_path):
    lines = [{"i": 0, "reward": 1.0, "reward_ref": 0.5, "w": 1.0}, {"i": 1, "reward": 0.5, "reward_ref": 0.5, "w": 0.5},
             {"i": 2, "reward": 0.0, "reward_ref": 0.5, "w": 0.0}]
    result = write(tmp_path, "rm_winrate", {"benchmark": "rm_winrate", "reference": "teacher",
                                            "question_ids": [7, 3, 9]}, lines)
    assert question_scores(result, tmp_path) == {"7": 100.0, "3": 50.0, "9": 0.0}
    assert outcome_counts(result, tmp_path) == {"win": 1, "tie": 1, "loss": 1, "reference": "teacher"}


def test_the_planted_answer_comes_back_verbatim(tmp_path):
    results = build_results(tmp_path)
    row_dir = results / "toy-a" / "tiny-seed0" / "dpo"
    result = {**json.loads((row_dir / "benchmarks" / "alpaca_eval.json").read_text()), "_file": "alpaca_eval.json"}
    items = {i["id"]: i for i in judged_items(result, row_dir)}
    assert items["7"]["answer"] == PLANTED and items["7"]["score"] == 100.0


def test_a_broken_judgments_file_names_its_line(tmp_path):
    result = write(tmp_path, "mt_bench", {"benchmark": "mt_bench"}, [])
    (tmp_path / "benchmarks" / "mt_bench_judgments.jsonl").write_text('{"question_id": 1}\n{"oops\n')
    with pytest.raises(BenchError, match=r"mt_bench_judgments.jsonl:2: not valid JSON"):
        judged_items(result, tmp_path)


def test_no_judgments_file_means_no_items(tmp_path):
    assert judged_items({"benchmark": "lm_eval", "_file": "lm_eval_x.json"}, tmp_path) == []
