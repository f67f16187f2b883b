"""Budgets: the presets, the step arithmetic, and validation."""

from __future__ import annotations

import dataclasses

import pytest

from harness.budgets import Budget, get_budget
from harness.errors import BenchError


def make(**overrides) -> Budget:
    fields = dict(name="t", description="test", train_examples=10, max_seq_len=64, max_prompt_len=32,
                  batch_size=2, grad_accum=2)
    fields.update(overrides)
    return Budget(**fields)


@pytest.mark.parametrize(("name", "steps", "per_step"), [
    ("tiny", 2, 4),  # max_steps=2 wins over ceil(8 / 4) * 1
    ("smoke", 12, 4),  # ceil(48 / (4 * 1)) * 1
    ("paper", 469, 128),  # ceil(60000 / (4 * 32)) * 1 = ceil(468.75)
])
def test_presets(name, steps, per_step):
    budget = get_budget(name)
    assert budget.name == name
    assert budget.optimizer_steps == steps
    assert budget.examples_per_step == per_step
    assert budget.to_dict()["optimizer_steps"] == steps


def test_unknown_preset_suggests():
    with pytest.raises(BenchError, match="Did you mean 'smoke'"):
        get_budget("smok")


@pytest.mark.parametrize(("overrides", "steps"), [
    (dict(train_examples=10), 3),  # ceil(10 / 4)
    (dict(train_examples=12), 3),  # exact multiple: no extra step
    (dict(train_examples=13), 4),
    (dict(train_examples=10, epochs=3), 9),  # epochs multiply whole passes, each rounded up
    (dict(train_examples=10, max_steps=7), 7),
    (dict(train_examples=10, epochs=3, max_steps=2), 2),  # max_steps ignores epochs
])
def test_optimizer_steps(overrides, steps):
    assert make(**overrides).optimizer_steps == steps


def test_warmup_steps_round_down():
    assert make(train_examples=40, warmup_ratio=0.1).warmup_steps == 1  # int(0.1 * 10)
    assert make(train_examples=40, warmup_ratio=0.25).warmup_steps == 2  # int(2.5)
    assert make(train_examples=40, warmup_ratio=0.0).warmup_steps == 0


@pytest.mark.parametrize(("overrides", "needle"), [
    (dict(batch_size=0), "batch_size must be at least 1, got 0"),
    (dict(grad_accum=0), "grad_accum must be at least 1"),
    (dict(train_examples=0), "train_examples must be at least 1"),
    (dict(epochs=0), "epochs must be at least 1"),
    (dict(max_prompt_len=64), "max_prompt_len (64) must be positive and below max_seq_len (64)"),
    (dict(max_prompt_len=100), "max_prompt_len (100)"),
    (dict(max_prompt_len=0), "max_prompt_len (0)"),
    (dict(lr_schedule="exponential"), "lr_schedule must be cosine, linear or constant"),
    (dict(warmup_ratio=1.0), "warmup_ratio must be in [0, 1)"),
    (dict(warmup_ratio=-0.1), "warmup_ratio must be in [0, 1)"),
    (dict(learning_rate=0.0), "learning_rate must be positive"),
    (dict(max_steps=0), "max_steps must be at least 1"),
    (dict(gen_eval_examples=-1), "cannot be negative"),
    (dict(train_examples=3), "3 training examples cannot fill one optimizer step of batch_size 2 x grad_accum 2"),
])
def test_bad_values_are_rejected(overrides, needle):
    with pytest.raises(BenchError) as err:
        make(**overrides)
    assert needle in str(err.value)
    assert str(err.value).startswith("Budget 't':")


def test_too_few_examples_is_fine_with_max_steps():
    assert make(train_examples=3, max_steps=5).optimizer_steps == 5


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_valid_schedules(schedule):
    assert make(lr_schedule=schedule).lr_schedule == schedule


def test_with_overrides():
    smoke = get_budget("smoke")
    longer = smoke.with_overrides(epochs=3, seed=5)
    assert (longer.epochs, longer.seed, longer.optimizer_steps) == (3, 5, 36)
    assert (smoke.epochs, smoke.seed) == (1, 0)  # the preset is untouched


def test_with_overrides_rejects_unknown_fields():
    with pytest.raises(BenchError, match=r"Unknown budget field\(s\): batchsize, epoch\."):
        get_budget("smoke").with_overrides(batchsize=8, epoch=2)


def test_with_overrides_validates_values():
    with pytest.raises(BenchError, match="batch_size must be at least 1"):
        get_budget("smoke").with_overrides(batch_size=0)


def test_budgets_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_budget("smoke").batch_size = 8


def test_a_field_added_later_compares_equal_at_its_default():
    from harness.budgets import comparable, get_budget

    new = get_budget("smoke").to_dict()
    old = {k: v for k, v in new.items() if k != "teacher_topk_dtype"}  # a record written before the field existed
    assert comparable(old) == comparable(new)
    assert comparable({**new, "seed": 3, "description": "reworded"}) == comparable(new)  # seed and prose aside
    assert comparable({**new, "teacher_topk_dtype": "float16"}) != comparable(old)  # a real difference stays one
    assert comparable({**new, "learning_rate": 2e-4}) != comparable(new)
