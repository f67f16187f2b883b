"""torch, imported when first used rather than when a module is imported.

The method modules hold both what `bench methods` prints (configs, recipes, descriptions) and the losses that
need torch. Importing torch takes seconds, so the loss modules name it through these stand-ins: the first
attribute read (``torch.stack``, ``F.log_softmax``) imports the real module, and every later read is a plain
attribute lookup on it. A decorator at module level would read torch at import time, hence ``no_grad`` below.
"""

from __future__ import annotations

import functools
import importlib


class LazyModule:
    def __init__(self, name: str):
        self._name = name
        self._module = None

    def __getattr__(self, attr: str):
        module = self.__dict__["_module"]
        if module is None:
            module = self.__dict__["_module"] = importlib.import_module(self.__dict__["_name"])
        return getattr(module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


torch = LazyModule("torch")
F = LazyModule("torch.nn.functional")


def no_grad(fn):
    """``torch.no_grad()`` as a decorator that imports torch when the function runs, not when it is defined."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper
