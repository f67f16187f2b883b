"""Paired per-row differences between two rows of a run."""

from __future__ import annotations

import json
import math

import pytest

from harness.errors import BenchError
from harness.stats import paired_difference


def write_rows(folder, rows):
    folder.mkdir(parents=True)
    (folder / "per_example.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def row(i, chosen_logp, chosen_tokens, rejected_logp, rejected_tokens, kl_sum):
    return {"row": i, "chosen_logp": chosen_logp, "chosen_tokens": chosen_tokens, "rejected_logp": rejected_logp,
            "rejected_tokens": rejected_tokens, "kl_sum": kl_sum}


@pytest.fixture()
def run_dir(tmp_path):
    write_rows(tmp_path / "a", [row(0, -10, 10, -30, 10, 5), row(1, -8, 4, -2, 2, 2), row(2, -6, 3, -9, 3, 3)])
    write_rows(tmp_path / "b", [row(0, -20, 10, -10, 10, 10), row(1, -8, 4, -4, 2, 4), row(2, -3, 3, -9, 3, 0)])
    return tmp_path


def test_kl_difference_and_standard_error_by_hand(run_dir):
    # per-row KL token means: a = 0.5, 0.5, 1.0; b = 1.0, 1.0, 0.0 -> differences -0.5, -0.5, +1.0
    d = paired_difference(run_dir, "a", "b", "kl_teacher")
    diffs = [-0.5, -0.5, 1.0]
    mean = sum(diffs) / 3
    se = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 2 / 3)
    assert d["mean_difference"] == pytest.approx(mean) and d["se"] == pytest.approx(se) and d["n"] == 3


def test_preference_accuracy_difference(run_dir):
    # a prefers chosen in rows 0 and 2 (-1 > -3; -2 > -3), not row 1 (-2 < -1); b only in row 2 (-1 > -3).
    d = paired_difference(run_dir, "a", "b", "pref_acc")
    assert d["mean_difference"] == pytest.approx((1 - 0 + 0 - 0 + 1 - 1) / 3)


def test_mismatched_rows_and_bad_names(run_dir):
    write_rows(run_dir / "c", [row(5, -1, 1, -1, 1, 0)] * 3)
    with pytest.raises(BenchError, match="different rows"):
        paired_difference(run_dir, "a", "c", "kl_teacher")
    with pytest.raises(BenchError, match="Unknown metric 'bleu'"):
        paired_difference(run_dir, "a", "b", "bleu")
    with pytest.raises(BenchError, match="No per-example record for 'zz'.*Rows in this run: a, b, c"):
        paired_difference(run_dir, "zz", "a", "nll_chosen")


# ---------------------------------------------------------------- bootstrap and seeds


def test_paired_bootstrap_of_two_questions_enumerates_by_hand():
    from harness.stats import bootstrap_indices, paired_bootstrap

    # differences (1, 3): a resample of two draws has mean 1 (p 1/4), 2 (p 1/2) or 3 (p 1/4), so the 2.5% and
    # 97.5% percentiles are 1 and 3, and the point estimate is the plain mean 2
    out = paired_bootstrap([2.0, 5.0], [1.0, 2.0], bootstrap_indices(2, "hand"))
    assert out == {"difference": 2.0, "ci95_low": 1.0, "ci95_high": 3.0, "n": 2}


def test_paired_bootstrap_cancels_what_both_rows_share():
    from harness.stats import bootstrap_indices, paired_bootstrap

    # very different questions, the same gap on each: the interval collapses onto the gap
    a = [90.0, 10.0, 55.0, 30.0]
    out = paired_bootstrap(a, [x - 5 for x in a], bootstrap_indices(4, "gap"))
    assert out["difference"] == pytest.approx(5.0) and out["ci95_low"] == pytest.approx(5.0)
    assert out["ci95_high"] == pytest.approx(5.0)


def test_bootstrap_indices_are_seeded_by_their_text():
    from harness.stats import bootstrap_indices

    assert (bootstrap_indices(5, "x") == bootstrap_indices(5, "x")).all()
    assert not (bootstrap_indices(5, "x") == bootstrap_indices(5, "y")).all()
    assert bootstrap_indices(5, "x").shape == (2000, 5)


def test_seed_spread_by_hand():
    from harness.stats import seed_spread

    assert seed_spread([0.75, 0.5]) == {"mean": 0.625, "sd": pytest.approx(0.25 / math.sqrt(2)), "seeds": 2}
    assert seed_spread([3.0]) == {"mean": 3.0, "sd": None, "seeds": 1}
