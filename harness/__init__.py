"""bench: train preference-distillation methods under one budget and compare them."""

__version__ = "0.1.0"
