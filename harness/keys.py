"""The stage cache's keys (harness/cache.py), as pure functions of what each stage's output depends on.

A key must change whenever an input that changes the output does, and only then: a cached re-run of a
finished run reuses every stage and writes byte-identical records. tests/harness/test_keys.py pins each key to
fixed values for fixed inputs, so a refactoring that changes one (and would silently retrain everything) fails
there. A signal's key: harness/signal_api.py (``signal_key``, with the parts each signal declares).
"""

from __future__ import annotations

import harness
from harness.cache import stable_hash

BENCH = harness.__version__  # a new bench version recomputes everything


def data_key(fingerprint: str, budget, template: str, tokenizer: dict, bench: str = BENCH) -> str:
    """The encoded train/test rows: the data, how many and how long, and the student's tokenizer and template."""
    return stable_hash({
        "bench": bench, "fingerprint": fingerprint, "seed": budget.seed,
        "n": [budget.train_examples, budget.eval_examples], "lens": [budget.max_seq_len, budget.max_prompt_len],
        "template": stable_hash(template), "tokenizer": tokenizer,
    })


def student_init_key(student: dict, budget, data: str) -> str:
    """The starting student: the pair's student, or its shared SFT warm-start on the run's rows."""
    warm = ({"steps": budget.warmstart_steps, "data": data, "budget": budget.to_dict()}
            if budget.warmstart_steps else None)
    return stable_hash({"student": student, "warmstart": warm})


def teacher_dpo_key(teacher: dict, data: str, budget, options: dict, bench: str = BENCH) -> str:
    return stable_hash({"stage": "teacher_dpo", "teacher": teacher, "data": data, "budget": budget.to_dict(),
                        "options": options, "bench": bench})


def train_key(row: str, config: dict, budget, init: str, data: str, signals: dict, bench: str = BENCH,
              narrowed: bool = False) -> str:
    """One row's training: its config, the budget, the student it starts from and the keys of its signals;
    ``narrowed`` when the method trains on the rows its signals keep (absent otherwise, so other keys stay)."""
    parts = {"method": row, "config": config, "budget": budget.to_dict(), "init": init, "data": data,
             "signals": signals, "bench": bench}
    if narrowed:
        parts["rows"] = "kept by the method"
    return stable_hash(parts)


def eval_key(model: str, data: str, budget, topk: str, bench: str = BENCH) -> str:
    """One model's evaluation on the test rows (``topk``: the key of the teacher's top-k on them)."""
    return stable_hash({"model": model, "data": data, "k": budget.teacher_top_k, "topk": topk,
                        "gen": [budget.gen_eval_examples, budget.gen_max_new_tokens], "bench": bench})


def teacher_key(teacher: dict) -> str:
    """The teacher itself (its evaluation's model key; the live teacher's signal key)."""
    return stable_hash(teacher)
