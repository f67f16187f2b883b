"""Any lm-eval task (built-in, or a YAML of the user's own) on a model already in memory, through lm-eval's
Python API (``lm-eval>=0.4.9,<0.5``; written against 0.4.13).

``limit`` here means a seeded random subset of each task's eval docs, not lm-eval's "first N": the first N docs
of a task are often sorted by source or difficulty. lm-eval >= 0.4.9 takes the subset itself as
``simple_evaluate(samples={task: [doc indices]})``, so the indices are drawn here and returned with the scores.

Nothing here touches the network on purpose, but lm-eval loads a built-in task's dataset from the Hugging Face
hub. Offline, set ``HF_HUB_OFFLINE=1`` (then a missing dataset fails at once instead of after ~20 s of retries)
and point a YAML task at a local copy; this module does not change the environment for the caller.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import random
from pathlib import Path

from harness.errors import BenchError

YAML_HINT = (
    "A task of your own is a YAML file (task:, dataset_path:, output_type:, doc_to_text:, doc_to_target:, "
    "metric_list:; see lm-eval's docs/new_task_guide.md) in a folder passed as include_path. lm-eval silently skips "
    "YAML files it cannot parse, so a task in that folder that is reported unknown may have a YAML error."
)
OFFLINE_HINT = (
    "Offline, a task needs a local copy of its data: either the dataset already in the Hugging Face datasets "
    "cache (then set HF_DATASETS_OFFLINE=1 and HF_HUB_OFFLINE=1), or a YAML task in include_path with "
    "`dataset_path: json` and `dataset_kwargs: {data_files: {test: /abs/path/test.jsonl}}` (plus `test_split: "
    "test`)."
)


def run_tasks(model, tokenizer, tasks: list[str], limit: int | None = None, seed: int = 0, batch_size: int = 8,
              include_path: str | None = None, max_gen_toks: int | None = None, num_fewshot: int | None = None,
              log_samples: bool = False) -> dict:
    """Evaluate a loaded transformers causal LM on lm-eval ``tasks`` (task, group or tag names, or YAML paths).

    ``limit``: at most this many docs per task, drawn with ``seed`` (independently per task, so a task's subset
    does not depend on which other tasks run with it). ``max_gen_toks`` overrides the generation length of
    generate_until tasks; ``num_fewshot`` overrides the tasks' own (except where a task pins 0).

    Returns a JSON-serialisable dict::

        {"lm_eval_version": "0.4.13", "limit": 5, "seed": 0, "num_fewshot": None, "max_gen_toks": None,
         "results": {"arc_easy": {"acc": {"value": 0.6, "se": 0.24, "n": 5},
                                  "acc_norm": {"value": 0.4, "se": 0.24, "n": 5}},
                     "gsm8k": {"exact_match/strict-match": {...}, "exact_match/flexible-extract": {...}}},
         "tasks": {"arc_easy": {"n_docs": 2376, "doc_indices": [17, 301, ...], "num_fewshot": 0,
                                "version": 1.0, "config_hash": "sha256:...", "config": {...}}},
         "groups": {"mmlu": ["mmlu_stem", ...]},            # only when a group ran
         "samples": {"arc_easy": [{"doc_id": 17, ...}]}}    # only with log_samples=True

    A metric keeps lm-eval's filter name after a slash unless it is "none"; ``se`` is None where lm-eval has
    no standard error; ``doc_indices`` is None when every doc ran. Leaf tasks and groups both appear in
    ``results``; ``tasks`` lists leaf tasks only.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    if not tasks:
        raise BenchError("No lm-eval tasks given.")
    if limit is not None and limit < 1:
        raise BenchError(f"limit must be a positive number of docs per task, got {limit}.")
    manager = _task_manager(include_path)
    _check_names(manager, tasks)
    roots, leaves = _load(manager, tasks)
    indices = {name: _subset(name, task, limit, seed) for name, task in leaves.items()}

    was_training = model.training  # HFLM puts the model in eval mode; a caller mid-training gets it back
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        with _global_rng_kept():
            out = lm_eval.simple_evaluate(
                model=lm, tasks=roots, task_manager=manager, num_fewshot=num_fewshot,
                samples={k: v for k, v in indices.items() if v is not None} or None,
                gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks is not None else None,
                log_samples=log_samples,
            )
    finally:
        model.train(was_training)

    report = {
        "lm_eval_version": lm_eval.__version__, "limit": limit, "seed": seed, "num_fewshot": num_fewshot,
        "max_gen_toks": max_gen_toks,
        "results": {name: _metrics(entry) for name, entry in out["results"].items()},
        "tasks": {name: {"n_docs": out["n-samples"][name]["original"], "doc_indices": indices[name],
                         "num_fewshot": out["n-shot"].get(name), "version": out["versions"].get(name),
                         "config_hash": _hash(out["configs"][name]), "config": out["configs"][name]}
                  for name in leaves},
    }
    if out.get("group_subtasks"):
        report["groups"] = out["group_subtasks"]
    if log_samples:
        report["samples"] = out["samples"]
    return _json_safe(report)


@functools.lru_cache(maxsize=4)
def _cached_manager(include_path: str | None, _fingerprint: tuple):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path)


def _task_manager(include_path: str | None):
    # Indexing lm-eval's ~15k built-in YAMLs takes ~10 s, so managers are reused; the fingerprint of the user's
    # YAML files makes an added or edited task there visible without restarting.
    if include_path is None:
        return _cached_manager(None, ())
    root = Path(include_path).expanduser().resolve()
    if not root.is_dir():
        raise BenchError(f"include_path {include_path} is not a folder of lm-eval task YAML files.")
    files = sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml"))
    return _cached_manager(str(root), tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files))


def _check_names(manager, tasks: list[str]) -> None:
    # lm-eval's own error for a typo is a bare KeyError; a user needs the near misses.
    known = manager.all_tasks
    for name in tasks:
        if name in manager.task_index or (name.endswith((".yaml", ".yml")) and Path(name).is_file()):
            continue
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        close = close or [t for t in known if name.lower() in t.lower()][:5]
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise BenchError(f"Unknown lm-eval task {name!r} (lm-eval {_version()} knows {len(known)} tasks, groups "
                         f"and tags).{hint} {YAML_HINT}")


def _load(manager, tasks: list[str]):
    """The objects to hand to simple_evaluate (groups stay whole, so their aggregate is reported) and the leaf
    tasks by name. Loading here, one name at a time, names the task whose dataset fails and lets the seeded
    subset see each task's doc count before anything runs."""
    roots, leaves = [], {}
    for name in tasks:
        try:
            loaded = manager.load([name])
        except Exception as e:
            offline = isinstance(e, OSError)  # ConnectionError, hub/datasets not-found errors, missing files
            raise BenchError(f"lm-eval could not load task {name!r}: {type(e).__name__}: {e}. "
                             f"{OFFLINE_HINT if offline else ''}".rstrip()) from e
        groups = loaded.get("groups", {})
        children = {child for group in groups.values() for child in group.child_names}
        in_groups = {task.task_name for group in groups.values() for task in group.get_all_tasks()}
        roots += [group for gname, group in groups.items() if gname not in children]
        roots += [task for tname, task in loaded["tasks"].items() if tname not in in_groups]
        leaves.update(loaded["tasks"])
    return roots, leaves


def _subset(name: str, task, limit: int | None, seed: int) -> list[int] | None:
    n = len(task.eval_docs)
    if limit is None or limit >= n:
        return None
    # Sorted because lm-eval 0.4.13 walks the docs in index order and labels the k-th with samples[k]: unsorted
    # indices would be logged against the wrong docs. A string seed is hashed stably (random's version 2).
    return sorted(random.Random(f"{seed}/{name}").sample(range(n), limit))


def _metrics(entry: dict) -> dict:
    """lm-eval's flat {"acc,none": v, "acc_stderr,none": se, "sample_len": n} as {"acc": {value, se, n}}."""
    out = {}
    for key, value in entry.items():
        metric, comma, filter_name = key.partition(",")
        if not comma or metric.endswith("_stderr"):
            continue
        se = entry.get(f"{metric}_stderr,{filter_name}")
        out[metric if filter_name == "none" else f"{metric}/{filter_name}"] = {
            "value": value, "se": None if se in (None, "N/A") else se, "n": entry.get("sample_len")}
    return out


@contextlib.contextmanager
def _global_rng_kept():
    # simple_evaluate seeds Python's, NumPy's and torch's global generators; the caller's streams resume after.
    import numpy as np
    import torch

    state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _json_safe(obj):
    from lm_eval.utils import handle_non_serializable  # numpy scalars to numbers, anything else to str

    return json.loads(json.dumps(obj, default=handle_non_serializable))


def _hash(config: dict) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(_json_safe(config), sort_keys=True).encode()).hexdigest()


def _version() -> str:
    import lm_eval

    return lm_eval.__version__
