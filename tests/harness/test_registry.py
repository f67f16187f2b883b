"""The generic registry: decorators, duplicate names, helpful errors, and entry-point plugins."""

from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from harness.errors import BenchError
from harness.registry import BUDGETS, METHODS, PAIRS, SIGNALS, Registry

GROUP = "bench.test_plugins"


class Thing:
    pass


def test_register_and_get():
    reg = Registry("thing", GROUP + ".none")
    a = reg.register("alpha", Thing())
    assert reg.get("alpha") is a
    assert reg.names() == ["alpha"]
    assert "alpha" in reg and "beta" not in reg
    assert dict(reg.items()) == {"alpha": a}


def test_register_as_decorator_sets_registered_name():
    reg = Registry("thing", GROUP + ".none")

    @reg.register("my-thing")
    class MyThing:
        pass

    assert reg.get("my-thing") is MyThing
    assert MyThing.registered_name == "my-thing"


def test_registering_same_object_twice_is_fine_but_a_different_one_raises():
    reg = Registry("thing", GROUP + ".none")
    a = Thing()
    reg.register("x", a)
    reg.register("x", a)
    with pytest.raises(ValueError, match=r"thing 'x' is registered twice"):
        reg.register("x", Thing())
    assert reg.get("x") is a


def test_unknown_name_lists_known_names_and_suggests():
    reg = Registry("thing", GROUP + ".none")
    for name in ("distill", "dpo", "sft"):
        reg.register(name, Thing())
    with pytest.raises(BenchError) as err:
        reg.get("distil")
    message = str(err.value)
    assert "Unknown thing 'distil'." in message
    assert "Did you mean 'distill'?" in message
    assert "Known things: distill, dpo, sft." in message


def test_unknown_name_without_close_match_has_no_suggestion():
    reg = Registry("thing", GROUP + ".none")
    reg.register("sft", Thing())
    with pytest.raises(BenchError) as err:
        reg.get("completely-different")
    assert "Did you mean" not in str(err.value)
    assert "Known things: sft." in str(err.value)


# ---------------------------------------------------------------- entry points


@pytest.fixture()
def plugin_dir(tmp_path, monkeypatch):
    """A folder on sys.path; modules written there are removed from sys.modules afterwards."""
    names: list[str] = []

    def write_module(stem: str, source: str) -> str:
        name = f"{stem}_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return name

    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path, write_module
    for name in names:
        sys.modules.pop(name, None)


def write_distribution(folder: Path, dist: str, entry_points: dict[str, str]) -> None:
    info = folder / f"{dist}-0.1.dist-info"
    info.mkdir()
    info.joinpath("METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = [f"[{GROUP}]"] + [f"{name} = {target}" for name, target in entry_points.items()]
    info.joinpath("entry_points.txt").write_text("\n".join(lines) + "\n")


def host_module(write_module) -> str:
    """A module holding the fresh registry, so that plugin modules can import it to decorate."""
    return write_module("plugin_host", f"""
        from harness.registry import Registry
        THINGS = Registry("thing", "{GROUP}")
    """)


def test_entry_point_naming_a_module_registers_by_decorator(plugin_dir):
    folder, write_module = plugin_dir
    host = host_module(write_module)
    plugin = write_module("plugin_decorated", f"""
        from {host} import THINGS

        @THINGS.register("decorated-thing")
        class Decorated:
            pass
    """)
    write_distribution(folder, "bench_plugin_a", {"ignored_name": plugin})
    things = __import__(host).THINGS
    assert plugin not in sys.modules  # nothing imported before the registry is asked

    item = things.get("decorated-thing")
    assert item.__name__ == "Decorated"
    assert item.__module__ == plugin
    # a module entry point registers nothing under the entry point's own name
    assert things.names() == ["decorated-thing"]


def test_entry_point_naming_a_class_registers_it_under_the_entry_point_name(plugin_dir):
    folder, write_module = plugin_dir
    host = host_module(write_module)
    plugin = write_module("plugin_class", """
        class Plain:
            description = "registered by its entry point"
    """)
    write_distribution(folder, "bench_plugin_b", {"plain-thing": f"{plugin}:Plain"})
    things = __import__(host).THINGS

    item = things.get("plain-thing")
    assert item.__name__ == "Plain" and item.__module__ == plugin
    assert item.registered_name == "plain-thing"


def test_class_entry_point_that_registers_itself_is_not_registered_twice(plugin_dir):
    folder, write_module = plugin_dir
    host = host_module(write_module)
    plugin = write_module("plugin_self", f"""
        from {host} import THINGS

        @THINGS.register("self-thing")
        class SelfRegistered:
            pass
    """)
    write_distribution(folder, "bench_plugin_c", {"self-thing": f"{plugin}:SelfRegistered"})
    things = __import__(host).THINGS
    assert things.get("self-thing").__name__ == "SelfRegistered"
    assert things.names() == ["self-thing"]


def test_builtin_modules_are_imported_lazily(plugin_dir):
    _, write_module = plugin_dir
    host = host_module(write_module)
    things = __import__(host).THINGS
    builtin = write_module("plugin_builtin", f"""
        from {host} import THINGS
        THINGS.register("builtin-thing", object())
    """)
    reg = Registry("thing", GROUP + ".none", (builtin,))
    # the builtin module registers into `things`; `reg` only imports it
    assert builtin not in sys.modules
    assert reg.names() == []
    assert builtin in sys.modules
    assert "builtin-thing" in things


def test_global_registries_hold_the_builtins():
    assert {"sft", "kd", "dpo", "dckd"} <= set(METHODS.names())
    for name in ("sft", "kd", "dpo", "dckd"):
        assert METHODS.get(name).registered_name == name
    assert {"tiny", "smoke", "paper"} <= set(BUDGETS.names())
    assert "smollm2-135m" in PAIRS
    with pytest.raises(BenchError, match="Did you mean 'dckd'"):
        METHODS.get("dckdd")


def test_global_signal_registry_holds_the_builtins_and_the_methods_own():
    from harness.signal_api import parse_signal

    assert {"teacher_topk", "reference_logps", "teacher_samples", "student_samples", "teacher_model",
            "adpa_advantage", "scored_samples"} <= set(SIGNALS.names())
    assert SIGNALS.get("adpa_advantage").__module__ == "methods.adpa.signal"
    assert SIGNALS.get("scored_samples").__module__ == "methods.pad.signal"
    topk = parse_signal("teacher_topk:rejected")
    assert (topk.name, topk.argument, topk.counts_as, topk.cached) == ("teacher_topk:rejected", "rejected", "teacher",
                                                                        True)
    assert not parse_signal("teacher_model").cached
    for bad in ("teacher_topk", "teacher_topk:prompt", "reference_logps:chosen", "nope"):
        with pytest.raises(BenchError, match="Unknown signal"):
            parse_signal(bad)


def test_every_method_needs_registered_signals():
    from harness.signal_api import parse_signal

    for _, cls in METHODS.items():
        for signal in cls.needs:
            parse_signal(signal)  # raises for a name no signal answers to
