"""What a signal is: one registered class that says how the signal is keyed, computed, stored and collated.

A method names the signals it consumes in ``needs``; the run computes each named signal once (per split and
starting student) into the stage cache and every method that names it shares it. Adding a signal is one class::

    @register_signal("my_signal")
    class MySignal(Signal):
        counts_as = "teacher"  # what its forward tokens add to in a record's compute (or "reference", or None)

        def key_parts(self, run, method):  # everything the output depends on besides name, split, data, options
            return {"producer": run.pair.teacher.identity()}

        def compute(self, run, split, method, out):  # writes the data under ``out``; returns its cost
            ...
            save_signal({"x": x}, out)
            return {"forward_tokens": n, "model_params": p, "flops": 2 * p * n, "generated_tokens": 0}

        def collate(self, data, batch, pad_id):  # the method finds this in batch.signals["my_signal"]
            return data["x"][batch.index]

``teacher_topk:chosen`` style names select an argument (``arguments`` lists the allowed ones). An outside package
registers a signal through the ``bench.signals`` entry-point group (harness/registry.py).

``run`` is the harness's Run (harness/stages.py); a signal may use its ``budget``, ``pair``, ``tokenizer``,
``teacher_tokenizer``, ``data_key``, ``opts``, ``rows(split)``, ``examples(split)``, ``teacher()``,
``student_for(method)``, ``student_key(method)``, ``model_folder(method, teacher)``, ``cache`` and
``checkpointing(stage, key)``. ``method`` is None for a signal the run needs itself (the evaluation's top-k).

A collated value that is a ``Sequences`` (or a dict whose ``"seqs"`` is one) is counted as ``<name>_tokens`` for
losses to normalise by, and a dict's boolean ``"keep"`` as ``<name>_kept`` (harness/batch.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from safetensors.torch import load_file, save_file

from harness.cache import stable_hash
from harness.errors import BenchError
from harness.registry import SIGNALS, register_signal

__all__ = ["Signal", "collate_signals", "load_signal", "parse_signal", "register_signal", "save_signal",
           "signal_key"]


class Signal:
    description: ClassVar[str] = ""
    arguments: ClassVar[tuple[str, ...]] = ()  # allowed "<name>:<argument>" values; empty: none taken
    # What the signal's forward tokens count as in a record's compute: "teacher", "reference" or None (a signal
    # that involves several models states its teacher tokens itself, as "teacher_tokens" in its info).
    counts_as: ClassVar[str | None] = None
    cached: ClassVar[bool] = True  # False: nothing is computed ahead (the live teacher)
    registered_name: ClassVar[str] = ""

    def __init__(self, name: str, argument: str | None = None):
        self.name = name
        self.argument = argument

    def desc(self, split: str) -> str:
        return f"signal {self.name} ({split})"

    def key_parts(self, run, method) -> dict:
        """Cache-key parts besides name, split, data and the method's signal options; ``producer`` at least."""
        raise NotImplementedError

    def stage_key(self, run, split: str, method) -> str:
        options = method.signal_options(self.name) if method is not None else {}
        return signal_key(self.name, split, run.data_key, self.key_parts(run, method), options)

    def compute(self, run, split: str, method, out: Path) -> dict:
        """Compute the signal into the folder ``out``; return its cost (forward_tokens, model_params, flops,
        generated_tokens and anything else worth recording)."""
        raise NotImplementedError

    def load(self, folder: Path):
        return load_signal(folder)

    def collate(self, data, batch, pad_id: int):
        raise NotImplementedError


def signal_key(name: str, split: str, data_key: str, parts: dict, options: dict) -> str:
    key = {"signal": name, "split": split, "data": data_key, "k": None, **parts}
    if options:
        key["options"] = options
    return stable_hash(key)


def parse_signal(name: str) -> Signal:
    base, _, argument = name.partition(":")
    if base not in SIGNALS:
        raise BenchError(f"Unknown signal {name!r}. Known: {', '.join(known_signals())}.")
    cls = SIGNALS.get(base)
    if argument not in cls.arguments and (argument or cls.arguments):
        raise BenchError(f"Unknown signal {name!r}. Known: {', '.join(known_signals())}.")
    return cls(name, argument or None)


def known_signals() -> list[str]:
    return [f"{n}:{a}" if a else n for n, cls in SIGNALS.items() for a in (cls.arguments or ("",))]


def collate_signals(signals: dict, batch, pad_id: int) -> dict:
    return {name: parse_signal(name).collate(data, batch, pad_id) for name, data in signals.items()}


def save_signal(data: dict, folder: Path) -> None:
    save_file({k: v.contiguous() for k, v in data.items()}, str(folder / "signal.safetensors"))


def load_signal(folder: Path) -> dict:
    return load_file(str(folder / "signal.safetensors"))
