"""Built-in methods, one module each; importing this package registers them."""

from methods import adpa, dckd, distillm, dpkd, dpo, gkd, kd, pad, plad, rkl, seqkd, sft, simpo  # noqa: F401
