"""Stage keys (harness/keys.py and each signal's key parts), without loading a model.

The pinned values were computed by the code before keys had a module of their own: a refactoring that changes
any of them would make every cached stage of a finished run miss (and retrain). A new bench version changes
them on purpose; then re-pin.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import methods  # noqa: F401  (registers the built-in methods)
from harness import keys
from harness.budgets import get_budget
from harness.models import ModelSpec
from harness.pairs import get_pair
from harness.pipeline import Run, RunOptions, build_methods

DATA = "0123456789abcdef"
ROWS = ["sft", "kd", "dpo", "dckd", "adpa", "adpa_plus", "pad", "dpkd", "plad", "simpo", "seqkd", "rkl", "gkd",
        "distillm", "dckd@paper", "adpa@paper", "pad@paper"]
# The smoke run on smollm2-135m with the data key DATA, as computed before the refactoring (HF generation); pad's
# changed on purpose when it began training on the prompts its filters keep only (its steps differ).
TRAIN = {
    "sft": "85fba17ad50f5a85", "kd": "383c41114d72d997", "dpo": "b15032790118ed4a", "dckd": "363319422148594c",
    "adpa": "32b4f622b19bd0f1", "adpa_plus": "e6f57cae4155b723", "pad": "8b9e65b9f7b4feb8",
    "dpkd": "56fe2dcfa1ee636c", "plad": "4501bf236ff64fc3", "simpo": "18a01362273c457e",
    "seqkd": "72cc9463926b987e", "rkl": "239258cd6594a7ed", "gkd": "441dc89ad6b81b26",
    "distillm": "027ed9061991c79f", "dckd@paper": "da9e61114d29cad1", "adpa@paper": "b102d485bc5d86f3",
    "pad@paper": "7d410e988eb7c0fe",
}
SIGNALS = {  # name -> [train, test] for the run's initial student
    "teacher_topk:chosen": ["a385adccfb041dc8", "76a2dd623352249b"],
    "teacher_topk:rejected": ["edcb7c02009b9bb8", "326742e8eed969bb"],
    "reference_logps": ["764d46eb8e0223dd", "e81e41237d1de62d"],
    "teacher_samples": ["e745184bb0365140", "61cb2b38e939bbc7"],
    "student_samples": ["21aa88c81fd98e15", "a1a1839446af9e54"],
}
METHOD_SIGNALS = {"adpa": "b3deea0e7c42b3ef", "adpa_plus": "efed1c437eb1623a", "adpa@paper": "fd211d30137ce902",
                  "pad": "ad225285f4c81b5b", "pad@paper": "f516a51a36c21d0e", "distillm": "a40c49a7eff434f6"}


@pytest.fixture()
def smoke_run(tmp_path, shared_dir, monkeypatch):
    monkeypatch.setattr("harness.signals.choose_engine", lambda **_: "hf")  # vLLM where present adds its identity
    opts = RunOptions(methods=ROWS, pair=get_pair("smollm2-135m"), budget=get_budget("smoke"),
                      results_dir=tmp_path / "results", cache_dir=tmp_path / "cache", data_dir=Path(shared_dir))
    run = Run(opts)
    run.methods = dict(build_methods(opts))
    run.data_key = DATA
    return run


def test_the_smoke_runs_keys_are_unchanged(smoke_run):
    r = smoke_run
    assert r.student_init_key() == "b49ddc1cf4ae0f4a"
    assert r.eval_key(r.student_init_key()) == "2a7aae6e56baf390"
    assert {name: r.train_key(name, m) for name, m in r.methods.items()} == TRAIN
    assert {s: [r.signal_key(s, "train"), r.signal_key(s, "test")] for s in SIGNALS} == SIGNALS
    got = {name: r.method_signal_keys(r.methods[name]) for name in METHOD_SIGNALS}
    assert {name: next(iter(v.values())) for name, v in got.items()} == METHOD_SIGNALS
    options = r.methods["adpa@paper"].signal_options("adpa_advantage")["teacher_dpo"]
    assert keys.teacher_dpo_key(r.pair.teacher.identity(), DATA, r.budget, options) == "cfaad011805fb802"


def test_a_method_signal_follows_the_student_it_starts_from(smoke_run):
    r = smoke_run
    assert r.signal_key("adpa_advantage", "train", r.methods["adpa"]) != \
        r.signal_key("adpa_advantage", "train", r.methods["adpa_plus"])


# The tiny budget as it was when these keys were pinned (its sequences and held-out rows were cut since, to speed
# the suite).
BUDGET = get_budget("tiny").with_overrides(max_seq_len=96, max_prompt_len=48, eval_examples=8)
STUDENT = ModelSpec("org/student").identity()
TEACHER = ModelSpec("org/teacher").identity()


def pure_keys(budget=BUDGET, data=DATA, student=STUDENT, teacher=TEACHER, fingerprint="f" * 16,
              template="{{ messages }}", config=None, signals=None, narrowed=False) -> dict:
    init = keys.student_init_key(student, budget, data)
    return {
        "data": keys.data_key(fingerprint, budget, template, student),
        "init": init,
        "train": keys.train_key("kd", config or {"t": 1.0}, budget, init, data, signals or {"teacher_topk:chosen": "a"},
                                narrowed=narrowed),
        "eval": keys.eval_key(init, data, budget, "topk"),
        "teacher_dpo": keys.teacher_dpo_key(teacher, data, budget, {"beta": 0.01, "lr": 5e-7}),
        "teacher": keys.teacher_key(teacher),
    }


def test_pure_keys_are_pinned():
    assert pure_keys() == PURE


def test_every_input_changes_the_keys_that_depend_on_it():
    base = pure_keys()
    changed = {
        "top_k": pure_keys(budget=BUDGET.with_overrides(teacher_top_k=BUDGET.teacher_top_k + 1)),
        "seq_len": pure_keys(budget=BUDGET.with_overrides(max_seq_len=BUDGET.max_seq_len + 1)),
        "data": pure_keys(data="f" * 16),
        "student": pure_keys(student=ModelSpec("org/other").identity()),
        "teacher": pure_keys(teacher=ModelSpec("org/other").identity()),
        "fingerprint": pure_keys(fingerprint="e" * 16),
        "template": pure_keys(template="other"),
        "config": pure_keys(config={"t": 2.0}),
        "signals": pure_keys(signals={"teacher_topk:chosen": "b"}),
        "narrowed": pure_keys(narrowed=True),
    }
    depends = {  # which keys each input reaches (the starting student's key reaches train and eval)
        "top_k": {"train", "eval", "teacher_dpo"}, "seq_len": {"data", "train", "teacher_dpo"}, "data": {"train", "eval", "teacher_dpo"},
        "student": {"data", "init", "train", "eval"}, "teacher": {"teacher_dpo", "teacher"},
        "fingerprint": {"data"}, "template": {"data"}, "config": {"train"}, "signals": {"train"},
        "narrowed": {"train"},
    }
    for what, other in changed.items():
        assert {k for k in base if base[k] != other[k]} == depends[what], what


def test_a_budget_field_reaches_only_the_keys_that_read_it():
    # Without a warm-start the starting student is the pair's: the budget does not reach its key.
    lr = pure_keys(budget=BUDGET.with_overrides(learning_rate=BUDGET.learning_rate * 2))
    base = pure_keys()
    assert {k for k in base if base[k] != lr[k]} == {"train", "teacher_dpo"}
    warm = BUDGET.with_overrides(warmstart_steps=2)
    assert keys.student_init_key(STUDENT, warm, DATA) != base["init"]
    assert keys.student_init_key(STUDENT, warm, DATA) != keys.student_init_key(STUDENT, warm, "e" * 16)


# The old pipeline's formulas, evaluated on pure_keys()'s inputs.
PURE = {"data": "57aecacbec011314", "init": "ba2901ce2859c3b8", "train": "efdbf8048e5685a2",
        "eval": "184128380fc5dc1d", "teacher_dpo": "bdf3caac27e18b13", "teacher": "4538f8df9eae1ed0"}
