"""Recipes: each official default pinned to its released value, the config defaults equal to the default recipe,
rows named ``method@recipe``, recipe selection by --methods, --option and --recipe, and the records' recipe field."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import methods  # noqa: F401  (registers the built-in methods)
from harness import recipes
from harness.budgets import get_budget
from harness.errors import BenchError
from harness.pairs import get_pair
from harness.pipeline import RunOptions, build_methods
from harness.registry import METHODS

# The released values, read in the authors' code (file and line in each recipe's provenance). Pinned here by hand
# so that a change to a method's default must also change this table.
RELEASED = {
    "adpa": {"advantage_mode": "clamped_official", "reference": "student", "adpa_weight": 1.6, "sft_weight": 1.0,
             "teacher_dpo": False, "teacher_dpo_beta": 0.01, "teacher_dpo_lr": 5e-7},
    "adpa_plus": {"advantage_mode": "clamped_official", "reference": "student", "adpa_weight": 1.6, "sft_weight": 1.0},
    "dckd": {"chosen_weight": 0.1, "rejected_weight": 0.1, "sft_weight": 1.0, "official_clamp": True},
    "pad": {"beta": 10.0, "alpha": 0.0, "loss": "pd", "jsd_form": "official", "diverse_from": 5, "mcq_filter": True},
    "dpkd": {"variant": "token_argmax", "beta": 0.1, "kd_ratio": 0.5, "label_smoothing": 0.0},
    "distillm": {"loss": "skl", "alpha": 0.1, "kd_ratio": 1.0, "adaptive": True, "init_threshold": 0.0,
                 "loss_eps": 0.1, "capacity": 1000, "replay_ratio": "decreasing"},
    "gkd": {"beta": 0.5, "lmbda": 0.5, "temperature": 0.9},
    "simpo": {"beta": 2.0, "gamma_beta_ratio": 0.5},
}
RELEASED_LR = {"adpa": 5e-7, "dckd": 5e-7, "pad": 8e-7, "dpkd": 5e-4, "distillm": 5e-4, "simpo": 6e-7}


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_official_defaults_are_the_released_values(name):
    cls = METHODS.get(name)
    assert cls.default_recipe == "official"
    config = cls.Config()
    for field, value in RELEASED[name].items():
        assert getattr(config, field) == value, f"{name}.{field}"
    assert cls.recipes["official"].learning_rate == RELEASED_LR.get(name.removesuffix("_plus"))


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_every_official_value_names_where_it_comes_from(name):
    recipe = METHODS.get(name).recipes["official"]
    for field in recipe.values:
        where = recipe.provenance.get(field, "")
        assert "@" in where and ":" in where, f"{name}.{field}: {where!r} names no file:line @ commit"


@pytest.mark.parametrize("name", sorted(METHODS.names()))
def test_config_defaults_equal_the_default_recipe(name):
    cls = METHODS.get(name)
    assert cls.recipes, f"{name} declares no recipe"
    assert cls.default_recipe in cls.recipes
    assert recipes.check_defaults(cls) == []
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    for rname, recipe in cls.recipes.items():
        assert set(recipe.values) <= fields, f"{name}@{rname} sets fields its config lacks"
        cls.Config(**recipe.values)  # every recipe is a valid config


def test_paper_recipes_are_the_equation_forms():
    assert METHODS.get("dckd").recipes["paper"].values == {"chosen_weight": 1.0, "rejected_weight": 1.0,
                                                           "sft_weight": 0.0, "official_clamp": False}
    adpa = METHODS.get("adpa").recipes["paper"].values
    assert adpa["advantage_mode"] == "signed" and adpa["reference"] == "teacher" and adpa["sft_weight"] == 0.0
    assert adpa["teacher_dpo"] is True
    pad = METHODS.get("pad").recipes["paper"].values
    assert pad["alpha"] == 1.0 and pad["jsd_form"] == "textbook" and not pad["mcq_filter"]
    assert METHODS.get("dpkd").recipes["paper"].values["variant"] == "sequence"


def test_split_row():
    assert recipes.split_row("adpa@paper") == ("adpa", "paper")
    assert recipes.split_row("adpa") == ("adpa", None)
    with pytest.raises(BenchError, match="name a recipe after '@'"):
        recipes.split_row("adpa@")


def options(tmp_path: Path, methods_: list[str], pair: str = "smollm2-135m", **kw) -> RunOptions:
    return RunOptions(methods=methods_, pair=get_pair(pair), budget=get_budget("tiny"), results_dir=tmp_path,
                      cache_dir=tmp_path, **kw)


def test_rows_are_named_by_recipe_and_configured_from_it(tmp_path):
    built = build_methods(options(tmp_path, ["adpa", "adpa@paper", "dckd@official", "sft"]))
    assert list(built) == ["adpa", "adpa@paper", "dckd", "sft"]  # the default recipe keeps the plain name
    assert built["adpa"].recipe == "official" and built["adpa"].config.sft_weight == 1.0
    assert built["adpa@paper"].recipe == "paper" and built["adpa@paper"].config.advantage_mode == "signed"
    assert built["adpa@paper"].registered_name == "adpa"


def test_options_apply_per_method_then_per_row(tmp_path):
    opts = options(tmp_path, ["dckd", "dckd@paper"],
                   method_options={"dckd": {"sft_weight": 0.5}, "dckd@paper": {"chosen_weight": 2.0}})
    built = build_methods(opts)
    assert built["dckd"].config.sft_weight == 0.5 and built["dckd"].config.chosen_weight == 0.1
    assert built["dckd@paper"].config.sft_weight == 0.5 and built["dckd@paper"].config.chosen_weight == 2.0
    assert built["dckd"].options_set == ["sft_weight"]


def test_recipe_by_option_and_by_flag(tmp_path):
    built = build_methods(options(tmp_path, ["dckd"], method_options={"dckd": {"recipe": "paper"}}))
    assert list(built) == ["dckd@paper"] and built["dckd@paper"].config.chosen_weight == 1.0
    built = build_methods(options(tmp_path, ["dckd", "sft", "gkd"], recipe="paper"))
    # methods with a paper recipe run it; gkd has only its released one and keeps it
    assert list(built) == ["dckd@paper", "sft", "gkd"]


def test_unknown_recipe_is_named_with_the_known_ones(tmp_path):
    with pytest.raises(BenchError, match=r"no recipe 'papr'.*official, paper"):
        build_methods(options(tmp_path, ["dckd@papr"]))


def test_a_row_asked_twice_is_refused(tmp_path):
    with pytest.raises(BenchError, match="asked for twice"):
        build_methods(options(tmp_path, ["dckd", "dckd@official"]))


def test_adpa_reference_teacher_needs_one(tmp_path):
    # The default pair's teacher is already aligned and names no pre-DPO teacher: reference=teacher without a
    # teacher-DPO stage cannot run, and says how to fix it before any work.
    opts = options(tmp_path, ["adpa"], method_options={"adpa": {"reference": "teacher"}})
    with pytest.raises(BenchError, match="teacher_dpo=true"):
        build_methods(opts)
    built = build_methods(options(tmp_path, ["adpa@paper"]))  # the paper recipe makes its DPO teacher
    assert built["adpa@paper"].config.teacher_dpo


def test_adpa_plus_starts_from_the_dckd_of_its_recipe(tmp_path):
    from harness.pipeline import Run

    opts = options(tmp_path, ["dckd@paper", "adpa_plus", "adpa_plus@paper"])
    run = Run(opts)
    run.methods = build_methods(opts)
    assert run.dependency(run.methods["adpa_plus@paper"])[0] == "dckd@paper"
    name, dep = run.dependency(run.methods["adpa_plus"])  # not in the run: made from the default recipe
    assert name == "dckd" and dep.config.sft_weight == 1.0 and dep.recipe == "official"


def test_recipe_record_keeps_the_released_lr_next_to_the_one_used():
    cls = METHODS.get("adpa")
    record = recipes.recipe_record(cls, "official", 1e-4, ["sft_weight"])
    assert record == {"name": "official", "source": cls.recipes["official"].source, "overridden": ["sft_weight"],
                      "learning_rate_used": 1e-4, "released_learning_rate": 5e-7}
    assert recipes.recipe_record(METHODS.get("sft"), "paper", 1e-4, [])["learning_rate_used"] == 1e-4
