"""A small generic registry, filled by decorators and by entry points of outside packages.

An outside package adds a method without touching ours by declaring, in its pyproject.toml::

    [project.entry-points."bench.methods"]
    my_method = "my_package.my_module"

Loading the entry point imports the module, whose ``@register_method`` decorator does the rest.
Signals (harness/signal_api.py) come the same way, through the ``bench.signals`` group and ``@register_signal``; a
package whose method needs its own signal names its module in both groups.
An entry point may also point at the class itself (``"my_package.my_module:MyMethod"``); then
it is registered under the entry point's name unless it registered itself already.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from harness.errors import BenchError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, entry_point_group: str, builtin_modules: tuple[str, ...] = ()):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._builtin_modules = builtin_modules
        self._items: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str, obj: T | None = None):
        """Register ``obj`` under ``name``; used bare or as a decorator."""

        def add(item: T) -> T:
            existing = self._items.get(name)
            if existing is not None and existing is not item:
                raise ValueError(f"{self.kind} {name!r} is registered twice ({existing!r} and {item!r})")
            self._items[name] = item
            if hasattr(item, "__dict__") and not isinstance(item, dict):
                try:
                    item.registered_name = name
                except (AttributeError, TypeError):
                    pass
            return item

        return add(obj) if obj is not None else add

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        import importlib

        for module in self._builtin_modules:
            importlib.import_module(module)
        for ep in entry_points(group=self.entry_point_group):
            loaded = ep.load()
            if ep.name not in self._items and not isinstance(loaded, type(importlib)):
                self.register(ep.name, loaded)

    def get(self, name: str) -> T:
        self._load()
        if name not in self._items:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise BenchError(
                f"Unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(sorted(self._items))}. "
                f"Run `bench {self.kind}s` to list them with descriptions."
            )
        return self._items[name]

    def names(self) -> list[str]:
        self._load()
        return list(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        self._load()
        return iter(list(self._items.items()))

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._items


METHODS: Registry = Registry("method", "bench.methods", ("methods",))
# Built-in signals live in harness/signals.py and, for one method's own signal, in that method's package; they are
# imported when a signal is first looked up, so listing methods (`bench methods`) loads no model library.
SIGNALS: Registry = Registry("signal", "bench.signals", ("harness.signals", "methods.adpa.signal",
                                                         "methods.pad.signal"))
PAIRS: Registry = Registry("pair", "bench.pairs", ("harness.pairs",))
BUDGETS: Registry = Registry("budget", "bench.budgets", ("harness.budgets",))
# harness.benchmark.register_benchmark fills it (one entry per id and old name)
BENCHMARKS: Registry = Registry("benchmark", "bench.benchmarks", ("harness.benchmarks.builtin",))


def register_method(name: str) -> Callable[[T], T]:
    return METHODS.register(name)


def register_signal(name: str) -> Callable[[T], T]:
    return SIGNALS.register(name)


def register_pair(name: str, pair=None):
    return PAIRS.register(name, pair)


def register_budget(name: str, budget=None):
    return BUDGETS.register(name, budget)
