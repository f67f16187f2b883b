"""Paired comparisons between two rows of one run, from their per-example records alone.

Both rows of a run are evaluated on the same held-out rows, so their per-row difference has far less noise
than the two separate standard errors suggest.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from harness.errors import BenchError


def standard_error(values) -> float | None:
    """Standard error of the mean, sample standard deviation / sqrt(n); None below two values."""
    values = [float(v) for v in values]
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


# Per-row values; token-level metrics become per-row token means (so rows weigh equally here).
ROW_METRICS = {
    "pref_acc": lambda e: float(e["chosen_logp"] / e["chosen_tokens"] > e["rejected_logp"] / e["rejected_tokens"]),
    "pref_margin": lambda e: e["chosen_logp"] / e["chosen_tokens"] - e["rejected_logp"] / e["rejected_tokens"],
    "nll_chosen": lambda e: -e["chosen_logp"] / e["chosen_tokens"],
    "kl_teacher": lambda e: e["kl_sum"] / e["chosen_tokens"],
}


def per_example(run_dir: Path, row: str) -> list[dict]:
    path = run_dir / row / "per_example.jsonl"
    if not path.exists():
        known = sorted(p.name for p in run_dir.iterdir() if (p / "per_example.jsonl").exists()) if run_dir.is_dir() else []
        raise BenchError(f"No per-example record for {row!r} at {path}. Rows in this run: {', '.join(known) or 'none'}.")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def paired_difference(run_dir: Path, a: str, b: str, metric: str) -> dict:
    """Mean over held-out rows of (a - b) for a per-row metric, with its standard error."""
    if metric not in ROW_METRICS:
        raise BenchError(f"Unknown metric {metric!r}; paired comparisons cover {', '.join(ROW_METRICS)}.")
    rows_a, rows_b = per_example(run_dir, a), per_example(run_dir, b)
    if [e["row"] for e in rows_a] != [e["row"] for e in rows_b]:
        raise BenchError(f"{a} and {b} were evaluated on different rows; they cannot be compared pairwise.")
    f = ROW_METRICS[metric]
    diffs = [f(x) - f(y) for x, y in zip(rows_a, rows_b)]
    n = len(diffs)
    mean = sum(diffs) / n
    se = standard_error(diffs)
    se = float("nan") if se is None else se
    return {"metric": metric, "a": a, "b": b, "mean_difference": mean, "se": se, "n": n}


# ---------------------------------------------------------------- bootstrap and seeds

N_BOOT = 2000


def bootstrap_indices(n: int, seed_text: str, n_boot: int = N_BOOT):
    """Resampling indices (n_boot × n), seeded by a text so that every comparison is reproducible and all the
    pairs compared on one column share the same resamples."""
    import numpy as np

    from harness.cache import stable_hash

    rng = np.random.default_rng(int(stable_hash(seed_text)[:12], 16))
    return rng.integers(0, n, size=(n_boot, n))


def paired_bootstrap(a, b, indices) -> dict:
    """Mean of (a - b) over questions, with the 95% percentile interval of that mean over resampled questions.
    ``a`` and ``b`` are aligned per question: their difference cancels what makes a question hard."""
    import numpy as np

    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    means = d[indices].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"difference": float(d.mean()), "ci95_low": float(lo), "ci95_high": float(hi), "n": int(d.size)}


def seed_spread(values: list[float]) -> dict:
    """Mean and sample standard deviation across seeds (the spread a reader should expect from a re-run)."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "sd": sd, "seeds": n}
