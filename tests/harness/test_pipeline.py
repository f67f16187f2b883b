"""PAD signal helpers that need no model."""

from __future__ import annotations

from harness.data import PreferenceExample
from methods.pad.signal import instruction_text


def test_instruction_text_is_the_users_text_for_one_turn():
    ex = PreferenceExample(prompt=(("user", "Name a city."),), chosen="Paris", rejected="x", source="t")
    assert instruction_text(ex) == "Name a city."


def test_instruction_text_labels_the_turns_of_a_conversation():
    ex = PreferenceExample(prompt=(("system", "Be brief."), ("user", "Name a city.")), chosen="Paris",
                           rejected="x", source="t")
    assert instruction_text(ex) == "system: Be brief.\n\nuser: Name a city."
