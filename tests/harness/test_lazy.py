"""The lazy stand-ins import their module on first use only, and the decorator really turns gradients off."""

from __future__ import annotations

import subprocess
import sys

import torch

from harness.lazy import F, LazyModule, no_grad


def test_module_is_imported_on_first_attribute_read_only():
    code = """
import sys
from harness.lazy import LazyModule
lazy = LazyModule("colorsys")
before = "colorsys" in sys.modules
value = lazy.rgb_to_hsv(1.0, 0.0, 0.0)
print(before, "colorsys" in sys.modules, value)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True", "(0.0,", "1.0,", "1.0)"]


def test_stand_ins_are_the_real_functions():
    assert F.log_softmax is torch.nn.functional.log_softmax
    assert LazyModule("math").sqrt(9.0) == 3.0


def test_no_grad_decorator_turns_gradients_off_only_inside():
    x = torch.ones(2, requires_grad=True)

    @no_grad
    def double(t):
        return t * 2

    assert not double(x).requires_grad
    assert (x * 2).requires_grad
    assert double.__name__ == "double"
