"""The stages of one run and what they share: data, the starting student, signals, training, evaluation.

Each stage's output is cached under a key that hashes everything it depends on (harness/keys.py), so running
the same command again skips finished work, and adding a method to a finished run trains only that method.
Models are loaded only when a stage that needs them has to be computed. The run's order: harness/pipeline.py.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime, timezone

import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from harness import keys, recipes
from harness.cache import StageCache
from harness.data import (
    EncodeStats,
    encode,
    ensure_chat_template,
    load_splits,
    portable_location,
    resolve_source,
)
from harness.distributed import launch
from harness.evaluate import evaluate
from harness.files import publish_dir, write_json_atomic
from harness.journal import resumable
from harness.log import log
from harness.method import Runtime
from harness.models import count_parameters, load_model, load_model_from, load_tokenizer, materialise
from harness.options import RunOptions
from harness.records import compute_record, git_revision
from harness.registry import METHODS
from harness.signal_api import parse_signal
from harness.trainer import Checkpointing, train


class Run:
    """Holds what the stages share; loads models lazily."""

    def __init__(self, opts: RunOptions):
        self.opts = opts
        self.budget = opts.budget
        self.pair = opts.pair
        self.cache = StageCache(opts.cache_dir)
        # Under several processes each one uses its own GPU (accelerate knows which from the launcher).
        self.device = PartialState(cpu=not torch.cuda.is_available()).device
        self._teacher = None
        self.stage_times: dict[str, float] = {}
        self.methods: dict = {}  # this run's methods by name (set by run(); dependencies added on demand)
        self.dependents: set[str] = set()  # methods that another method of the run starts from

    # ------------------------------------------------------------------ data
    def prepare_data(self) -> None:
        b = self.budget
        dataset = self.opts.dataset or self.pair.dataset
        source = resolve_source(dataset, self.opts.data_dir)
        log.info(f"data: {dataset} from {source.location}")  # the full path on screen; records keep a portable one
        splits = load_splits(source, b.train_examples, b.eval_examples, b.seed)
        self.tokenizer = load_tokenizer(self.pair.student)
        self.teacher_tokenizer = load_tokenizer(self.pair.teacher)
        template = ensure_chat_template(self.tokenizer, fallback_from=self.teacher_tokenizer)
        self.train_examples, self.test_examples = splits.train, splits.test
        self.train_stats, self.test_stats = EncodeStats(), EncodeStats()
        self.train_rows = [encode(self.tokenizer, ex, b.max_seq_len, b.max_prompt_len, self.train_stats)
                           for ex in tqdm(splits.train, desc="encode train", leave=False)]
        self.test_rows = [encode(self.tokenizer, ex, b.max_seq_len, b.max_prompt_len, self.test_stats)
                          for ex in tqdm(splits.test, desc="encode test", leave=False)]
        self.spare_rows = [encode(self.tokenizer, ex, b.max_seq_len, b.max_prompt_len, EncodeStats())
                           for ex in splits.spare]
        self.data_info = {
            "dataset": dataset, "source": source.kind, "location": portable_location(source, self.opts.data_dir),
            "fingerprint": source.fingerprint,
            "train_rows": len(self.train_rows), "test_rows": len(self.test_rows),
            "train_dropped_for_leakage": splits.dropped_for_leakage, "dropped_empty_reply": splits.dropped_empty,
            "truncation": {"train": vars(self.train_stats), "test": vars(self.test_stats)},
        }
        self.data_key = keys.data_key(source.fingerprint, b, template, self.pair.student.identity())

    # ------------------------------------------------------------------ models
    def teacher(self):
        if self._teacher is None:
            log.info(f"loading teacher {self.pair.teacher.describe()}")
            self._teacher = load_model(self.pair.teacher).to(self.device)
        return self._teacher

    def student_init_key(self) -> str:
        return keys.student_init_key(self.pair.student.identity(), self.budget, self.data_key)

    def load_student_init(self):
        """A fresh copy of the starting student: the pair's student, or its shared SFT warm-start."""
        if not self.budget.warmstart_steps:
            return load_model(self.pair.student).to(self.device)
        key = self.student_init_key()
        if not self.cache.has("warmstart", key):
            from methods.sft import SFT

            log.info(f"warm-start: SFT of the student for {self.budget.warmstart_steps} steps (shared by all methods)")
            warm_budget = self.budget.with_overrides(max_steps=self.budget.warmstart_steps)
            model = load_model(self.pair.student).to(self.device)
            sft = SFT()
            sft.registered_name = "warmstart"
            result = train(sft, model, self.train_rows, {}, warm_budget, self.tokenizer.pad_token_id,
                           self.budget.seed + 7919, desc="warm-start", checkpoints=self.checkpointing("warmstart", key))
            with self.cache.build("warmstart", key) as out:
                model.save_pretrained(out / "checkpoint", safe_serialization=True)
                write_json_atomic(out / "train.json", vars(result))
        model = load_model_from(self.cache.path("warmstart", key) / "checkpoint")
        return model.to(self.device)

    def start_key(self, method) -> str:
        """The student a method starts from: the run's initial student, or another method's trained student."""
        if method.starts_from is None:
            return self.student_init_key()
        return self.train_key(*self.dependency(method))

    def dependency(self, method) -> tuple[str, object]:
        """The row another starts from, configured as in this run when the run has it (ADPA+ continues the
        run's own DCKD; ``adpa_plus@paper`` the run's ``dckd@paper``), otherwise with that recipe's values."""
        base = method.starts_from
        cls = METHODS.get(base)
        recipe = recipes.resolve(cls, base, method.recipe if method.recipe in recipes.recipe_names(cls) else None)
        name = recipes.row_name(cls, base, recipe)
        if name not in self.methods:
            self.methods[name] = recipes.build_row(name)
        return name, self.methods[name]

    def load_start(self, method):
        if method.starts_from is None:
            return self.load_student_init()
        name, dep = self.dependency(method)
        return load_model_from(self.train_stage(name, dep, checkpoint=True)["folder"] / "checkpoint").to(self.device)

    # ------------------------------------------------------------------ signals (harness/signal_api.py)
    def rows(self, split: str):
        return self.train_rows if split == "train" else self.test_rows

    def examples(self, split: str):
        return self.train_examples if split == "train" else self.test_examples

    def student_key(self, method) -> str:
        """The key of the student ``method`` starts from (None: the run's initial student)."""
        return self.start_key(method) if method is not None else self.student_init_key()

    def signal_key(self, name: str, split: str, method=None) -> str:
        return parse_signal(name).stage_key(self, split, method)

    def signal(self, name: str, split: str, method=None) -> tuple[object, dict]:
        """The signal's data and its info (cost, stage key), computed into the stage cache unless cached there."""
        signal = parse_signal(name)
        key = signal.stage_key(self, split, method)
        folder = self.cache.path("signals", key)
        if not self.cache.has("signals", key):
            t0 = time.perf_counter()
            # Built in place (a killed run leaves no half-written stage); generation is journalled to resume.
            with self.cache.build("signals", key) as out, resumable(self.cache.partial("signals", key)):
                info = {"name": name, "split": split, **signal.compute(self, split, method, out)}
                info["wall_clock_s"] = time.perf_counter() - t0
                write_json_atomic(out / "info.json", info)
            size = (f", {info['bytes_per_position']:.1f} bytes per position" if "bytes_per_position" in info
                    else "")
            log.info(f"signal {name} ({split}): {info['forward_tokens']} forward tokens in "
                     f"{info['wall_clock_s']:.1f}s{size}")
        return signal.load(folder), {**json.loads((folder / "info.json").read_text()), "stage_key": key}

    def model_folder(self, method, teacher: bool) -> str:
        """Where the weights of the teacher, or of the student ``method`` starts from, live (for vLLM)."""
        if teacher:
            return materialise(self.pair.teacher)
        if method is not None and method.starts_from:
            return str(self.train_stage(*self.dependency(method), checkpoint=True)["folder"] / "checkpoint")
        if self.budget.warmstart_steps:
            self.load_student_init()  # makes the warm-start stage when it is missing
            return str(self.cache.path("warmstart", self.student_init_key()) / "checkpoint")
        return materialise(self.pair.student)

    def student_for(self, method):
        return self.load_start(method) if method is not None else self.load_student_init()

    # ------------------------------------------------------------------ evaluation
    def eval_key(self, model_key: str) -> str:
        return keys.eval_key(model_key, self.data_key, self.budget, self.signal_key("teacher_topk:chosen", "test"))

    def evaluate(self, model, model_key: str, label: str) -> dict:
        key = self.eval_key(model_key)
        if not self.cache.has("eval", key):
            topk, _ = self.signal("teacher_topk:chosen", "test")
            t0 = time.perf_counter()
            with resumable(self.cache.partial("eval", key)):  # a killed evaluation keeps its finished answers
                metrics, per_example, answers = evaluate(
                    model(), self.tokenizer, self.test_rows, self.test_examples, topk, self.budget.gen_eval_examples,
                    self.budget.gen_max_new_tokens, self.budget.max_prompt_len, desc=f"eval {label}")
            info = {"metrics": metrics, "wall_clock_s": time.perf_counter() - t0,
                    "generated_tokens": sum(a["n_tokens"] for a in answers)}
            with self.cache.build("eval", key) as out:
                write_json_atomic(out / "eval.json", info)
                _write_jsonl(out / "per_example.jsonl", per_example)
                _write_jsonl(out / "answers.jsonl", answers)
            log.info(f"eval {label}: " + ", ".join(f"{k} {v['value']:.4f}" for k, v in metrics.items()))
        return {"folder": self.cache.path("eval", key), "key": key,
                **json.loads((self.cache.path("eval", key) / "eval.json").read_text())}

    # ------------------------------------------------------------------ one method
    def train_key(self, name: str, method) -> str:
        return keys.train_key(name, method.config.to_dict(), self.budget, self.start_key(method), self.data_key,
                              self.method_signal_keys(method), narrowed=method.narrows_rows())

    def method_signal_keys(self, method) -> dict:
        return {s: self.signal_key(s, "train", method) for s in method.needs}

    def train_stage(self, name: str, method, *, checkpoint: bool = False, need_model: bool = False) -> dict:
        """Train ``name`` unless its stage is cached. ``checkpoint``: its weights must be on disk (another method
        starts from them); ``need_model``: the caller needs the trained model (to evaluate it)."""
        key = self.train_key(name, method)
        folder = self.cache.path("train", key)
        have = self.cache.has("train", key)
        if have and ((folder / "checkpoint").exists() or not (checkpoint or need_model)):
            return {"key": key, "folder": folder, "model": None}
        model, info = self._train(name, method)
        if not have:
            with self.cache.build("train", key) as out:
                if self.budget.save_checkpoints or checkpoint:
                    model.save_pretrained(out / "checkpoint", safe_serialization=True)
                write_json_atomic(out / "train.json", info)
        elif checkpoint:  # cached by a budget that saves no weights, and now another method starts from them
            tmp = folder / f".checkpoint-{os.getpid()}"
            model.save_pretrained(tmp, safe_serialization=True)
            publish_dir(tmp, folder / "checkpoint")
            shutil.rmtree(self.cache.partial("train", key), ignore_errors=True)  # its resume checkpoints
        return {"key": key, "folder": folder, "model": model}

    def checkpointing(self, stage: str, key: str) -> Checkpointing:
        return Checkpointing(self.cache.partial(stage, key) / "checkpoints", self.opts.checkpoint_every,
                             self.opts.checkpoint_interval_s)

    def _train(self, name: str, method):
        launcher = self.opts.launcher
        if launcher is None or not launcher.distributed:
            return self.train_here(name, method)
        # Everything the workers read is made here first, once: signals, the starting student, its dependency.
        for s in method.needs:
            if parse_signal(s).cached:
                self.signal(s, "train", method)
        if method.starts_from:
            self.train_stage(*self.dependency(method), checkpoint=True)
        else:
            self.load_student_init()
        key = self.train_key(name, method)
        return launch(launcher, self.opts, name, self.cache.partial("train", key) / "distributed")

    def train_here(self, name: str, method):
        """Train in this process (one of several when launched by harness/distributed.py)."""
        cached = [s for s in method.needs if parse_signal(s).cached]
        signals, signal_info = {}, {}
        for s in cached:
            signals[s], signal_info[s] = self.signal(s, "train", method)
        teacher = self.teacher() if "teacher_model" in method.needs else None
        b = self.budget
        method.runtime = Runtime(self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, b.gen_max_new_tokens,
                                 b.max_seq_len, teacher, total_steps=b.optimizer_steps,
                                 steps_per_epoch=max(1, len(self.train_rows) // b.examples_per_step),
                                 validation=self.spare_rows)
        model = self.load_start(method)
        start = f", starting from the {method.starts_from} student" if method.starts_from else ""
        upto = "at most " if method.narrows_rows() else ""  # it trains on the rows its signals keep
        log.info(f"train {name}: {upto}{b.optimizer_steps} steps of {b.examples_per_step} pairs{start}")
        params = count_parameters(model)["matmul"]
        result = train(method, model, self.train_rows, signals, b, self.tokenizer.pad_token_id, b.seed,
                       desc=f"train {name}", checkpoints=self.checkpointing("train", self.train_key(name, method)))
        info = {"loss_curve": result.loss_curve, "optimizer_steps": result.optimizer_steps,
                "student_tokens": result.student_tokens, "wall_clock_s": result.wall_clock_s,
                "live_teacher_tokens": result.teacher_tokens, "generated_tokens": result.generated_tokens,
                "student_forward_tokens": result.student_forward_tokens,
                "teacher_params": count_parameters(teacher)["matmul"] if teacher is not None else 0,
                "student_params": params, "signals": signal_info, "git_revision": git_revision(),
                **({"rows_trained": result.rows_trained} if result.rows_trained is not None else {}),
                "computed_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        if method.starts_from:
            dep_name, dep = self.dependency(method)
            dep_key = self.train_key(dep_name, dep)
            dep_info = json.loads((self.cache.path("train", dep_key) / "train.json").read_text())
            info["starts_from"] = {"method": dep_name, "train_stage_key": dep_key, "compute": compute_record(dep_info)}
        if result.loss_curve:
            log.info(f"train {name}: final loss {result.loss_curve[-1]['loss']:.4f} in {result.wall_clock_s:.0f}s")
        else:
            log.warning(f"train {name}: no optimizer step ran (the method kept no training row); its student is "
                        "the one it started from")
        return model, info

    def run_method(self, name: str, method) -> dict:
        key = self.train_key(name, method)
        stage = self.train_stage(name, method, checkpoint=name in self.dependents or self.opts.keep_weights,
                                 need_model=not self.cache.has("eval", self.eval_key(key)))
        trained = {"model": stage["model"]} if stage["model"] is not None else {}

        def model_fn():
            if "model" not in trained:
                trained["model"] = load_model_from(stage["folder"] / "checkpoint").to(self.device)
            return trained["model"]

        evaluation = self.evaluate(model_fn, key, name)
        info = json.loads((stage["folder"] / "train.json").read_text())
        for signal, signal_info in info["signals"].items():  # stages trained before keys were recorded
            signal_info.setdefault("stage_key", self.signal_key(signal, "train", method))
        return {"train_key": key, "train": info, "eval": evaluation}


def _write_jsonl(path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
