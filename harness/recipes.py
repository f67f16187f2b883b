"""Named recipes: a method's configuration as its authors' released code ran it ("official") or as its paper
writes the objective ("paper"), every value with where it comes from.

A method's config dataclass defaults *are* its default recipe (tests/harness/test_recipes.py pins both to
the released values), so ``Config()`` and ``--recipe official`` agree. A recipe never changes the budget:
every method of a run trains with the budget's learning rate and schedule, and a recipe whose released
learning rate differs records it (``Recipe.learning_rate``) next to the one that ran.

Rows: a method run with its default recipe is the row ``name``; with another recipe it is ``name@recipe``
(``--methods adpa,adpa@paper`` trains both, side by side on one budget).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from harness.errors import BenchError


@dataclass(frozen=True)
class Recipe:
    """One named configuration of a method."""

    description: str
    values: dict = field(default_factory=dict)  # config field -> value (fields not named keep the dataclass default)
    provenance: dict = field(default_factory=dict)  # config field -> file:line @ commit, or the paper's section
    learning_rate: float | None = None  # the recipe's own learning rate: recorded, never applied (see above)
    source: str = ""  # the release or paper as a whole


def split_row(spec: str) -> tuple[str, str | None]:
    """``"adpa@paper"`` -> ("adpa", "paper"); ``"adpa"`` -> ("adpa", None)."""
    name, at, recipe = spec.partition("@")
    if at and not recipe:
        raise BenchError(f"{spec!r}: name a recipe after '@', e.g. {name}@paper (see `bench methods`).")
    return name, recipe or None


def recipe_names(cls) -> list[str]:
    return list(cls.recipes)


def resolve(cls, name: str, recipe: str | None) -> str | None:
    """The recipe a row of method ``cls`` runs: the one asked for, or the method's default (None when the method
    declares no recipes)."""
    if recipe is None:
        return cls.default_recipe
    if recipe not in cls.recipes:
        known = ", ".join(cls.recipes) or "none (its config defaults are its only form)"
        raise BenchError(f"Method {name!r} has no recipe {recipe!r}. Its recipes: {known}. "
                         "`bench methods` lists each with where its values come from.")
    return recipe


def make_config(cls, name: str, recipe: str | None, options: dict):
    """``cls.Config`` from the recipe's values, then the user's ``--option`` values on top."""
    values = dict(cls.recipes[recipe].values) if recipe is not None else {}
    values.update(options)
    try:
        return cls.Config(**values)
    except TypeError as e:
        raise BenchError(f"{name}: bad option ({e}). Its config fields are documented in `bench methods`.") from None


def row_name(cls, name: str, recipe: str | None) -> str:
    """``name`` for the method's default recipe, ``name@recipe`` otherwise."""
    return name if recipe is None or recipe == cls.default_recipe else f"{name}@{recipe}"


def recipe_record(cls, recipe: str | None, budget_lr: float, options: dict) -> dict | None:
    """What a record says about the recipe a row ran: its name, the fields the user changed from it, and the
    recipe's own learning rate next to the budget's (which is the one used)."""
    if recipe is None:
        return None
    r = cls.recipes[recipe]
    out = {"name": recipe, "source": r.source, "overridden": sorted(options), "learning_rate_used": budget_lr}
    if r.learning_rate is not None:
        out["released_learning_rate"] = r.learning_rate
    return out


def check_defaults(cls) -> list[str]:
    """Fields where the config's dataclass default differs from the default recipe's value (should be none)."""
    default = cls.default_recipe
    if default is None:
        return []
    defaults = {f.name: f.default for f in dataclasses.fields(cls.Config)}
    return [k for k, v in cls.recipes[default].values.items() if defaults.get(k, object()) != v]


def build(cls, name: str, recipe: str | None, options: dict):
    """Method ``cls`` configured from ``recipe`` and then ``options``; it remembers both for its record."""
    method = cls(make_config(cls, name, recipe, options))
    method.recipe = recipe  # set after construction: an outside method's __init__ may take the config alone
    method.options_set = sorted(options)
    return method


def build_row(spec: str):
    """A configured Method for the row ``spec`` (``name`` or ``name@recipe``), with no user options."""
    from harness.registry import METHODS

    name, asked = split_row(spec)
    cls = METHODS.get(name)
    return build(cls, name, resolve(cls, name, asked), {})
