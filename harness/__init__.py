"""bench: train preference-distillation methods under one budget and compare them."""

__version__ = "0.2.0"
