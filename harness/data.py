"""Preference data: loading (hub ids, local JSONL/JSON/Parquet), normalising rows, and encoding with chat templates
(harness/encoding.py).

Every row becomes a ``PreferenceExample``: the prompt as chat messages, and the chosen and rejected assistant
replies as text. Encoding applies the tokenizer's chat template and keeps the response tokens apart from the
prompt tokens, so that losses see response tokens only. Truncation is explicit and counted.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

# Encoding has its own module; callers have always imported it from here.
from harness.encoding import (  # noqa: F401
    FALLBACK_TEMPLATE,
    Encoded,
    EncodeStats,
    encode,
    ensure_chat_template,
    prompt_ids,
    response_ids,
)
from harness.errors import BenchError

# Hub ids we know, their split names, and where a local copy of each lives under a data directory.
KNOWN_DATASETS = {
    "trl-lib/ultrafeedback_binarized": {
        "splits": {"train": "train", "test": "test"},
        "local": ["data/ultrafeedback_binarized_1k", "ultrafeedback_binarized_1k", "ultrafeedback_binarized"],
    },
    "HuggingFaceH4/ultrafeedback_binarized": {
        "splits": {"train": "train_prefs", "test": "test_prefs"},
        "local": ["data/HuggingFaceH4_ultrafeedback_binarized", "HuggingFaceH4_ultrafeedback_binarized"],
    },
    "argilla/dpo-mix-7k": {
        "splits": {"train": "train", "test": "test"},
        "local": ["data/dpo-mix-7k", "dpo-mix-7k"],
    },
}
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class PreferenceExample:
    prompt: tuple  # chat messages, each a (role, content) pair; the last one is the user's
    chosen: str
    rejected: str
    source: str  # "file:line" or "hub-id[split]#row", for error messages and provenance

    @property
    def messages(self) -> list[dict]:
        return [{"role": r, "content": c} for r, c in self.prompt]

    def uid(self) -> str:
        return hashlib.sha256(json.dumps([self.prompt, self.chosen, self.rejected]).encode()).hexdigest()[:16]


def data_dir_from_env(data_dir: str | None) -> Path | None:
    value = data_dir or os.environ.get("BENCH_DATA_DIR")
    return Path(value).expanduser() if value else None


# ---------------------------------------------------------------- row normalisation


def normalise_row(row: dict, where: str) -> PreferenceExample:
    """Accept the three common layouts: plain strings, explicit prompt + message lists, or full conversations."""
    for key in ("chosen", "rejected"):
        if key not in row:
            raise BenchError(f"{where}: field {key!r} is missing. A preference row needs 'chosen' and 'rejected' "
                             f"(and a 'prompt' unless both are full conversations). Fields present: {sorted(row)}.")
    prompt = row.get("prompt")
    chosen, rejected = row["chosen"], row["rejected"]
    if isinstance(chosen, list) and isinstance(rejected, list) and (prompt is None or _same_prefix(prompt, chosen)):
        # Conversations with an implicit prompt: everything but the final assistant turn.
        prompt_msgs = _messages(chosen[:-1], where, "chosen")
        if _messages(rejected[:-1], where, "rejected") != prompt_msgs:
            raise BenchError(f"{where}: field 'rejected': its conversation before the last turn differs from "
                             "'chosen'; both must answer the same prompt.")
        chosen_text = _final_assistant(chosen, where, "chosen")
        rejected_text = _final_assistant(rejected, where, "rejected")
    else:
        if prompt is None:
            raise BenchError(f"{where}: field 'prompt' is missing and 'chosen'/'rejected' are not both conversations. "
                             "Add a 'prompt', or make 'chosen' and 'rejected' both lists of {'role': ..., 'content': "
                             "...} messages that end with the assistant's reply.")
        prompt_msgs = [("user", prompt)] if isinstance(prompt, str) else _messages(prompt, where, "prompt")
        chosen_text = _text(chosen, where, "chosen")
        rejected_text = _text(rejected, where, "rejected")
    if not prompt_msgs or prompt_msgs[-1][0] != "user":
        raise BenchError(f"{where}: field 'prompt': the prompt must end with a user message.")
    # An empty chosen/rejected reply is well-formed (UltraFeedback has some); load_splits drops and counts them.
    if not prompt_msgs[-1][1].strip():
        raise BenchError(f"{where}: field 'prompt' is empty.")
    return PreferenceExample(tuple(prompt_msgs), chosen_text, rejected_text, where)


def _same_prefix(prompt, conversation: list) -> bool:
    if isinstance(prompt, str):
        return bool(conversation) and isinstance(conversation[0], dict) and conversation[0].get("content") == prompt
    return isinstance(prompt, list) and conversation[: len(prompt)] == prompt


def _messages(value, where: str, key: str) -> list[tuple[str, str]]:
    if not isinstance(value, list):
        raise BenchError(f"{where}: field {key!r} must be a list of chat messages, got {type(value).__name__}.")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise BenchError(f"{where}: field {key!r}, message {i}: expected {{'role': ..., 'content': ...}}, got {m!r:.80}.")
        if m["role"] not in ("system", "user", "assistant"):
            raise BenchError(f"{where}: field {key!r}, message {i}: unknown role {m['role']!r} "
                             "(expected system, user or assistant).")
        if not isinstance(m["content"], str):
            raise BenchError(f"{where}: field {key!r}, message {i}: content must be text.")
        out.append((m["role"], m["content"]))
    return out


def _final_assistant(conversation: list, where: str, key: str) -> str:
    msgs = _messages(conversation, where, key)
    if not msgs or msgs[-1][0] != "assistant":
        raise BenchError(f"{where}: field {key!r}: the conversation must end with an assistant message.")
    return msgs[-1][1]


def _text(value, where: str, key: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return _final_assistant(value, where, key)
    raise BenchError(f"{where}: field {key!r} must be text or a list of chat messages, got {type(value).__name__}.")


# ---------------------------------------------------------------- loading


def read_local_file(path: Path) -> list[PreferenceExample]:
    rows: list[tuple[str, object]] = []
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append((f"{path}:{lineno}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise BenchError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}). Each line of "
                                     "a .jsonl file must be one complete JSON object; fix or delete that line.") from None
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise BenchError(f"{path}:{e.lineno}: not valid JSON ({e.msg}).") from None
        if not isinstance(data, list):
            raise BenchError(f"{path}: a .json data file must hold a list of rows.")
        rows = [(f"{path}[{i}]", r) for i, r in enumerate(data)]
    elif path.suffix == ".parquet":
        import pandas as pd

        frame = pd.read_parquet(path)
        rows = [(f"{path}[row {i}]", _plain(r)) for i, r in enumerate(frame.to_dict("records"))]
    else:
        raise BenchError(f"{path}: unsupported data file type; use .jsonl, .json or .parquet.")
    out = []
    for where, row in rows:
        if not isinstance(row, dict):
            raise BenchError(f"{where}: each row must be a JSON object, got {type(row).__name__}.")
        out.append(normalise_row(row, where))
    if not out:
        raise BenchError(f"{path}: the file holds no rows. Put preference rows in it (one JSON object with "
                         "'prompt', 'chosen' and 'rejected' per line), or point --dataset at another file.")
    return out


def _plain(value):
    """Parquet gives numpy arrays for list columns; make them lists again."""
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _split_file(folder: Path, split: str) -> Path | None:
    for suffix in LOCAL_SUFFIXES:
        for name in (split, f"{split}_prefs"):
            if (folder / f"{name}{suffix}").exists():
                return folder / f"{name}{suffix}"
    return None


@dataclass
class DataSource:
    """Where a data set's rows come from, resolved once; its fingerprint enters cache keys."""

    name: str
    kind: str  # "local-dir", "local-file" or "hub"
    location: str
    fingerprint: str
    files: dict = field(default_factory=dict)


def resolve_source(name: str, data_dir: Path | None) -> DataSource:
    path = Path(name).expanduser()
    if path.is_dir():
        return _local_dir_source(name, path)
    if path.is_file():
        return DataSource(name, "local-file", str(path), _fingerprint([path]), {"all": str(path)})
    known = KNOWN_DATASETS.get(name)
    if data_dir is not None:
        candidates = [data_dir / rel for rel in (known["local"] if known else [])]
        candidates += [data_dir / name, data_dir / "data" / name.split("/")[-1]]
        for folder in candidates:
            if folder.is_dir() and _split_file(folder, "train"):
                return _local_dir_source(name, folder)
        tried = "\n  ".join(str(c) for c in dict.fromkeys(candidates))
        raise BenchError(
            f"Data set {name!r} has no local copy under the data directory {data_dir}. Looked for a folder "
            f"holding train.jsonl/.json/.parquet (and test.*) at:\n  {tried}\nPut a copy there, point --data-dir "
            "(or BENCH_DATA_DIR) at the folder that holds it (this project's tests use ../shared), or unset both "
            "on a machine with network to download it from the Hugging Face hub."
        )
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise BenchError(
            f"Data set {name!r} would be downloaded from the Hugging Face hub, but offline mode is set "
            "(HF_HUB_OFFLINE/HF_DATASETS_OFFLINE). Point --data-dir or BENCH_DATA_DIR at a local copy, e.g. ../shared."
        )
    return DataSource(name, "hub", name, name)


def portable_location(source: DataSource, data_dir: Path | None) -> str:
    """Where the rows came from, as a record may store it: the hub id, a path relative to the data folder (written
    ``<data-dir>/...``), or else relative to the working folder; never a machine's absolute path."""
    if source.kind == "hub":
        return source.location
    path = Path(source.location).resolve()
    for base, prefix in ((data_dir, "<data-dir>/"), (Path.cwd(), "")):
        if base is not None and path.is_relative_to(Path(base).resolve()):
            return prefix + path.relative_to(Path(base).resolve()).as_posix()
    return path.name


def _local_dir_source(name: str, folder: Path) -> DataSource:
    files = {s: _split_file(folder, s) for s in ("train", "test")}
    if files["train"] is None:
        raise BenchError(f"Data folder {folder} holds no train.jsonl, train.json or train.parquet.")
    present = [p for p in files.values() if p is not None]
    return DataSource(name, "local-dir", str(folder), _fingerprint(present),
                      {k: str(v) for k, v in files.items() if v is not None})


def _fingerprint(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def load_split(source: DataSource, split: str) -> list[PreferenceExample]:
    if source.kind == "local-dir":
        if "test" in source.files:
            return read_local_file(Path(source.files[split]))
        # No test file: hold out a deterministic slice of train, by content hash so it is stable; the train
        # split is the rest (not the whole file, which would hand the held-out rows to training too).
        return _hash_split(read_local_file(Path(source.files["train"])), split)
    if source.kind == "local-file":
        return _hash_split(read_local_file(Path(source.location)), split)
    return _load_hub(source.name, split)


def _hash_split(rows: list[PreferenceExample], split: str, test_fraction: float = 0.1) -> list[PreferenceExample]:
    def is_test(ex):
        return int(ex.uid(), 16) % 1000 < test_fraction * 1000

    return [ex for ex in rows if is_test(ex) == (split == "test")]


def _load_hub(name: str, split: str) -> list[PreferenceExample]:
    try:
        import datasets
    except ImportError:
        raise BenchError("Loading data from the hub needs the `datasets` package: pip install datasets.") from None
    hub_split = KNOWN_DATASETS.get(name, {}).get("splits", {}).get(split, split)
    try:
        ds = datasets.load_dataset(name, split=hub_split)
    except Exception as e:  # noqa: BLE001 - network, auth, and missing-split errors all end here
        raise BenchError(
            f"Could not load data set {name!r} (split {hub_split!r}) from the Hugging Face hub: "
            f"{str(e).splitlines()[0]} Without network, point --data-dir or BENCH_DATA_DIR at a local copy."
        ) from None
    return [normalise_row(dict(r), f"{name}[{hub_split}]#{i}") for i, r in enumerate(ds)]


@dataclass
class Splits:
    train: list[PreferenceExample]
    test: list[PreferenceExample]
    dropped_for_leakage: int
    dropped_empty: int = 0
    # Train-split rows not drawn for training (seeded order, at most SPARE_ROWS): a validation set for methods
    # that steer themselves by a validation loss (DistiLLM), never the test rows the metrics are computed on.
    spare: list[PreferenceExample] = field(default_factory=list)


SPARE_ROWS = 32


EVAL_SEED = 1


def load_splits(source: DataSource, n_train: int, n_eval: int, seed: int) -> Splits:
    """Seeded subsets of train and test; train rows whose prompt also appears in test are dropped first."""
    train, test = load_split(source, "train"), load_split(source, "test")
    n_before = len(train) + len(test)
    train, test = [ex for ex in train if _usable(ex)], [ex for ex in test if _usable(ex)]
    empty = n_before - len(train) - len(test)
    if not test:
        raise BenchError(f"Data set {source.name!r} has no usable held-out (test) rows.")
    test_prompts = {ex.prompt for ex in test}
    clean = [ex for ex in train if ex.prompt not in test_prompts]
    dropped = len(train) - len(clean)
    if len(clean) < n_train:
        raise BenchError(
            f"The budget asks for {n_train} training rows but {source.name!r} has {len(clean)} usable ones "
            f"({dropped} dropped because their prompt is in the test split, {empty} for an empty reply). "
            "Use a smaller budget or more data."
        )
    rng = random.Random(seed)
    train_idx = sorted(rng.sample(range(len(clean)), n_train))
    # Held-out rows depend on the data alone, never on the training seed, so every seed of a budget is evaluated on
    # the same rows and the seed spread measures training noise only. (EVAL_SEED = 1 keeps the rows seed 0 drew.)
    test_idx = sorted(random.Random(EVAL_SEED).sample(range(len(test)), min(n_eval, len(test))))
    taken = set(train_idx)
    spare = [i for i in range(len(clean)) if i not in taken]
    random.Random(seed + 2).shuffle(spare)
    return Splits([clean[i] for i in train_idx], [test[i] for i in test_idx], dropped, empty,
                  [clean[i] for i in spare[:SPARE_ROWS]])


def _usable(ex: PreferenceExample) -> bool:
    return bool(ex.chosen.strip()) and bool(ex.rejected.strip())
