"""The benchmark runner's pieces that need no model."""

from __future__ import annotations

import pytest

from harness.errors import BenchError
from harness.evalrun import EvalOptions, make_judge, stratified_subset
from harness.registry import PAIRS

ITEMS = [{"question_id": i, "category": c} for i, c in enumerate("aaaaabbbcc")]


def test_a_stratified_subset_covers_every_category_first():
    picked = stratified_subset(ITEMS, "category", 3, seed=0)
    assert sorted(p["category"] for p in picked) == ["a", "b", "c"]
    five = stratified_subset(ITEMS, "category", 5, seed=0)
    assert sorted(p["category"] for p in five) == ["a", "a", "b", "b", "c"]
    assert len({p["question_id"] for p in five}) == 5


def test_a_stratified_subset_is_seeded_and_sorted():
    assert stratified_subset(ITEMS, "category", 4, seed=1) == stratified_subset(ITEMS, "category", 4, seed=1)
    ids = [p["question_id"] for p in stratified_subset(ITEMS, "category", 4, seed=1)]
    assert ids == sorted(ids)
    assert len({tuple(p["question_id"] for p in stratified_subset(ITEMS, "category", 4, seed=s)) for s in range(8)}) > 1


def test_no_limit_or_a_large_one_keeps_everything():
    assert stratified_subset(ITEMS, "category", None, 0) == ITEMS
    assert stratified_subset(ITEMS, "category", 99, 0) == ITEMS


@pytest.mark.parametrize("spec", ["teacher", "local:", "gpt4", "anthropic:claude"])
def test_an_unknown_judge_is_a_clear_error(spec, tmp_path):
    opts = EvalOptions(tmp_path, tmp_path, tmp_path, "smollm2-135m", "r", judge=spec)
    with pytest.raises(BenchError, match="local:teacher"):
        make_judge(opts, PAIRS.get("smollm2-135m"))


def test_judges_by_name(tmp_path):
    pair = PAIRS.get("smollm2-135m")
    local = make_judge(EvalOptions(tmp_path, tmp_path, tmp_path, "p", "r", judge="local:teacher"), pair)
    assert local.identity() == {"kind": "transformers", "model": pair.teacher.identity()}
    remote = make_judge(EvalOptions(tmp_path, tmp_path, tmp_path, "p", "r", judge="openai:gpt-4-0613",
                                    judge_base_url="http://127.0.0.1:9/v1"), pair)
    assert remote.identity() == {"kind": "openai", "model": "gpt-4-0613", "base_url": "http://127.0.0.1:9/v1"}


def test_judge_concurrency_reaches_the_client_and_is_validated(tmp_path):
    opts = EvalOptions(tmp_path, tmp_path, tmp_path, "p", "r", judge="openai:m", judge_base_url="http://127.0.0.1:9/v1",
                       judge_concurrency=7)
    assert make_judge(opts, PAIRS.get("smollm2-135m")).concurrency == 7
    with pytest.raises(BenchError, match="--judge-concurrency must be at least 1"):
        EvalOptions(tmp_path, tmp_path, tmp_path, "p", "r", judge="openai:m", judge_concurrency=0)


@pytest.mark.parametrize(("text", "names"), [
    ("mt_bench, alpaca_eval,mt_bench,alpaca_eval_2", ["mt_bench", "alpaca_eval_2"]),
    ("arena_hard", ["arena_hard_v0.1"]),
    ("lm_eval:gsm8k,lm_eval:ifeval", ["lm_eval:gsm8k", "lm_eval:ifeval"]),
])
def test_benchmark_lists_are_parsed_once_each(text, names):
    from harness.evalrun import parse_benchmarks

    assert parse_benchmarks(text) == names


@pytest.mark.parametrize("text", ["", "lm_eval:", "mtbench"])
def test_bad_benchmark_lists(text):
    from harness.evalrun import parse_benchmarks

    with pytest.raises(BenchError, match="Unknown benchmark"):
        parse_benchmarks(text)
