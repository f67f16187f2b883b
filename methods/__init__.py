"""Built-in methods, one module each; importing this package registers them."""

from methods import dckd, dpo, kd, sft  # noqa: F401
