"""Work in progress that survives a kill: under ``resumable(folder)`` every generation batch's outputs are
journalled to ``folder/generation.jsonl`` (``journalled``) and every scoring batch's outputs (a teacher's
log-probs, top-k, MCQ scores) saved to ``folder/batches/<key>.safetensors`` (``saved_batch``) as soon as they exist, so a
signal or evaluation killed after hours resumes from the batch it was on. Keys name a batch's inputs and
settings, not the model: give each stage (one model's work) its own folder, e.g. ``StageCache.partial``."""

from __future__ import annotations

import contextvars
import json
import os
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from harness.cache import stable_hash


class Journal:
    """Batches' outputs by key, appended one JSON line per batch, each line flushed and fsynced."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.entries: dict[str, list[list[int]]] = {}
        self.reused = 0
        self._file = None
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # cannot happen through append(); a line damaged on disk is regenerated
            if isinstance(row, dict) and isinstance(row.get("key"), str) and isinstance(row.get("outputs"), list):
                self.entries[row["key"]] = row["outputs"]
        if end < len(data):
            # A kill mid-write leaves half a line; the next line appended after it would be unreadable too.
            with open(self.path, "r+b") as f:
                f.truncate(end)

    def lookup(self, key: str) -> list[list[int]] | None:
        outputs = self.entries.get(key)
        if outputs is None:
            return None
        self.reused += 1
        return [list(o) for o in outputs]  # a copy: callers may edit their answers

    def append(self, key: str, outputs: list[list[int]]) -> None:
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(json.dumps({"key": key, "outputs": outputs}, separators=(",", ":")) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.entries[key] = outputs

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# A context variable, not a parameter: sampling happens deep inside signal and benchmark code, and only the
# pipeline, which owns the stage's folder, knows where the journal belongs.
_JOURNAL: contextvars.ContextVar[Journal | None] = contextvars.ContextVar("generation_journal", default=None)


@contextmanager
def resumable(folder: Path):
    """Journal every generation batch run inside this block to ``folder/generation.jsonl`` and reuse the batches
    already there. The journal's keys name prompts and decoding settings, not the model: give each stage (one
    model's generations) its own folder, e.g. ``StageCache.partial(stage, key)``."""
    journal = Journal(Path(folder) / "generation.jsonl")
    token = _JOURNAL.set(journal)
    try:
        yield journal
    finally:
        _JOURNAL.reset(token)
        journal.close()


@contextmanager
def unjournalled():
    """Nothing inside this block is journalled (on-policy samples depend on weights the keys do not name)."""
    token = _JOURNAL.set(None)
    try:
        yield
    finally:
        _JOURNAL.reset(token)


def journalled(engine: str, prompts: list[list[int]], settings: dict,
               make: Callable[[], list[list[int]]]) -> list[list[int]]:
    """``make()``'s outputs for this batch, from the active journal when it has them (and recorded there when
    not); without a journal, just ``make()``."""
    journal = _JOURNAL.get()
    if journal is None:
        return make()
    key = stable_hash({"engine": engine, "prompts": prompts, **settings}, 32)
    outputs = journal.lookup(key)
    if outputs is None:
        outputs = make()
        journal.append(key, outputs)
    return outputs


def saved_batch(kind: str, inputs, make: Callable[[], object]):
    """``make()``'s result for one batch of a forward pass, loaded from the active journal's folder when an
    earlier (killed) run saved it there, else computed and saved; without a journal, just ``make()``.
    ``kind`` names the pass and the model's role in it (e.g. "mean logps: <desc>"), ``inputs`` everything the
    result depends on besides the model (token ids, settings). A result is tensors, numbers and strings in lists,
    tuples and dicts; it is stored as safetensors (never a pickle) with its shape as JSON in the metadata, so a
    replayed batch is bit-identical to the computed one."""
    journal = _JOURNAL.get()
    if journal is None:
        return make()
    path = journal.path.parent / "batches" / f"{stable_hash({'kind': kind, 'inputs': inputs}, 32)}.safetensors"
    if path.exists():
        try:
            result = _load(path)
            journal.reused += 1
            return result
        except Exception:  # noqa: BLE001 - a file damaged on disk is recomputed (saves are atomic; cannot happen)
            pass
    result = make()
    tensors: dict[str, torch.Tensor] = {}
    layout = json.dumps(_flatten(result, tensors))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    save_file(tensors, tmp, metadata={"layout": layout})
    os.replace(tmp, path)
    return result


def _flatten(obj, tensors: dict):
    """``obj`` as JSON with each tensor replaced by its name in ``tensors``."""
    if isinstance(obj, torch.Tensor):
        name = str(len(tensors))
        tensors[name] = obj.detach().cpu().contiguous().clone()  # safetensors refuses views of one storage
        return {"tensor": name}
    if isinstance(obj, (list, tuple)):
        return {type(obj).__name__: [_flatten(x, tensors) for x in obj]}
    if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        return {"dict": {k: _flatten(v, tensors) for k, v in obj.items()}}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"value": obj}
    raise TypeError(f"saved_batch cannot store a {type(obj).__name__}")


def _unflatten(layout, tensors: dict):
    (tag, body), = layout.items()
    if tag == "tensor":
        return tensors[body]
    if tag in ("list", "tuple"):
        items = [_unflatten(x, tensors) for x in body]
        return items if tag == "list" else tuple(items)
    if tag == "dict":
        return {k: _unflatten(v, tensors) for k, v in body.items()}
    return body


def _load(path: Path):
    with safe_open(path, framework="pt") as f:
        layout = json.loads(f.metadata()["layout"])
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    return _unflatten(layout, tensors)


def seqs_key(seqs) -> dict:
    """A padded batch (harness/batch.Sequences) as ``saved_batch`` inputs: its token ids and attention mask."""
    return {"ids": seqs.input_ids.tolist(), "mask": seqs.attention_mask.tolist()}
