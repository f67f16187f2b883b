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
