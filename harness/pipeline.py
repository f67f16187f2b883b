"""One run, start to finish: data -> student init -> signals -> train each method -> evaluate -> record.

Each stage's output is cached under a key that hashes everything it depends on (harness/cache.py), so running
the same command again skips finished work, and adding a method to a finished run trains only that method.
Models are loaded only when a stage that needs them has to be computed.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from accelerate import PartialState
from tqdm.auto import tqdm

import harness
from harness import recipes
from harness.budgets import Budget
from harness.cache import StageCache, stable_hash
from harness.data import (
    EncodeStats,
    encode,
    ensure_chat_template,
    load_splits,
    portable_location,
    resolve_source,
)
from harness.distributed import Launcher, launch
from harness.errors import BenchError
from harness.evaluate import evaluate
from harness.files import check_writable, write_json_atomic, write_text_atomic
from harness.generation import backend_key, choose_engine, resumable, select_backend
from harness.log import log
from harness.mcq import load_template, most_different, teacher_mcq
from harness.method import Runtime
from harness.models import count_parameters, folder_parameters, load_model, load_tokenizer, materialise
from harness.pairs import Pair
from harness.registry import METHODS
from harness.signals import (
    compute_advantage,
    compute_samples,
    compute_sequence_logps,
    compute_topk,
    load_signal,
    load_topk,
    mean_logps,
    model_drift,
    pack,
    parse_signal,
    sample_many,
    save_signal,
)
from harness.topk_store import VERSION as TOPK_STORE_VERSION
from harness.topk_store import TopkReader
from harness.trainer import Checkpointing, NonFiniteLoss, train

REFERENCE_ROWS = ("teacher", "student-init")
# Version of record.json's layout. 1 (no "schema" field): before recipes; 2: "schema", "recipe", a portable
# data location. Readers compare budgets field by field with defaults filled in (harness/budgets.py), so a field
# added to Budget later does not make older records incomparable.
RECORD_SCHEMA = 2



@dataclass
class RunOptions:
    methods: list[str]
    pair: Pair
    budget: Budget
    results_dir: Path
    cache_dir: Path
    data_dir: Path | None = None
    dataset: str | None = None
    run_name: str | None = None
    method_options: dict[str, dict] = field(default_factory=dict)
    command: str = ""
    recipe: str | None = None  # --recipe: every method that has this recipe runs it (others their default)
    keep_weights: bool = False  # save every method's weights, whatever the budget says (benchmarks follow)
    launcher: Launcher | None = None  # train each method on several processes (harness/distributed.py)
    # Training checkpoints for resuming a killed run: every N optimizer steps, or every `checkpoint_interval_s`.
    checkpoint_every: int | None = None
    checkpoint_interval_s: float = 600.0

    @property
    def seed(self) -> int:
        return self.budget.seed

    @property
    def name(self) -> str:
        return self.run_name or f"{self.budget.name}-seed{self.seed}"



def build_methods(opts: RunOptions) -> dict:
    """The run's rows by name: ``method`` (its default recipe) or ``method@recipe``, each a configured Method.

    Options apply per method (``--option adpa.sft_weight=0``) or per row (``--option adpa@paper.sft_weight=0``);
    ``--option adpa.recipe=paper`` and ``--recipe paper`` choose a recipe as ``adpa@paper`` does."""
    if not opts.methods:
        raise BenchError("No methods given. Pass --methods, e.g. --methods sft,kd,dckd,dpo (see `bench methods`).")
    clash = [m for m in opts.methods if m in REFERENCE_ROWS]
    if clash:
        raise BenchError(f"{', '.join(clash)} names a reference row, not a method.")
    if opts.recipe and not any(opts.recipe in recipes.recipe_names(METHODS.get(recipes.split_row(m)[0]))
                               for m in opts.methods):
        raise BenchError(f"--recipe {opts.recipe}: none of {', '.join(opts.methods)} has that recipe (`bench methods` "
                         "lists each method's recipes; official and paper are the usual ones).")
    out, used = {}, set()
    for spec in dict.fromkeys(opts.methods):
        name, asked = recipes.split_row(spec)
        cls = METHODS.get(name)
        options = {**opts.method_options.get(name, {}), **(opts.method_options.get(spec, {}) if asked else {})}
        used.update(k for k in (name, spec) if k in opts.method_options)
        by_option = options.pop("recipe", None)
        chosen = asked or by_option
        if chosen is None and opts.recipe in recipes.recipe_names(cls):
            chosen = opts.recipe
        recipe = recipes.resolve(cls, name, chosen)
        method = recipes.build(cls, name, recipe, options)
        row = recipes.row_name(cls, name, recipe)
        if row in out:
            raise BenchError(f"Row {row!r} is asked for twice (as {spec!r} and earlier); name each row once.")
        out[row] = method
    unknown = set(opts.method_options) - used
    if unknown:
        raise BenchError(f"Options given for method(s) not in this run: {', '.join(sorted(unknown))}.")
    opts.pair.check_methods(list(dict.fromkeys(m.registered_name for m in out.values())))
    for method in out.values():
        method.check_pair(opts.pair)
    return out


def environment() -> dict:
    import accelerate
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "bench": harness.__version__, "platform": platform.platform(),
            "device": "cuda" if torch.cuda.is_available() else "cpu", "threads": torch.get_num_threads()}


def git_revision() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        # "dirty" only where the code that computes results differs from the revision (not docs or tests).
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "harness", "methods", "pyproject.toml"],
                               cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


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
        self.data_key = stable_hash({
            "bench": harness.__version__, "fingerprint": source.fingerprint, "seed": b.seed,
            "n": [b.train_examples, b.eval_examples], "lens": [b.max_seq_len, b.max_prompt_len],
            "template": stable_hash(template), "tokenizer": self.pair.student.identity(),
        })

    # ------------------------------------------------------------------ models
    def teacher(self):
        if self._teacher is None:
            log.info(f"loading teacher {self.pair.teacher.describe()}")
            self._teacher = load_model(self.pair.teacher).to(self.device)
        return self._teacher

    def student_init_key(self) -> str:
        b = self.budget
        warm = {"steps": b.warmstart_steps, "data": self.data_key, "budget": b.to_dict()} if b.warmstart_steps else None
        return stable_hash({"student": self.pair.student.identity(), "warmstart": warm})

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

    def aligned_teachers(self, options: dict):
        """ADPA's (aligned pi_dpo, pre-DPO teacher or None, stage info): the pair's teacher and the reference teacher
        the pair names; or, with ``teacher_dpo`` options, a DPO-trained copy of the teacher (a cached stage) and
        the teacher itself."""
        dpo_options = options["teacher_dpo"]
        if dpo_options is not None:
            model, info = self.teacher_dpo(dpo_options)
            return model, self.teacher(), {"teacher_dpo": info}
        ref = None
        if options["reference"] == "teacher":  # the pair names it (ADPA.check_pair made sure before any work)
            log.info(f"loading reference teacher {self.pair.reference_teacher.describe()}")
            ref = load_model(self.pair.reference_teacher).to(self.device)
        return self.teacher(), ref, {"teacher_dpo": None}

    def teacher_dpo_key(self, options: dict) -> str:
        return stable_hash({"stage": "teacher_dpo", "teacher": self.pair.teacher.identity(), "data": self.data_key,
                            "budget": self.budget.to_dict(), "options": options, "bench": harness.__version__})

    def teacher_dpo(self, options: dict):
        """DPO of the teacher on the run's preference rows (the paper's "DPO teacher"), the teacher as its own
        reference; same rows, order and steps as the students' budget, at the recipe's own beta and learning rate
        (never the students': a teacher is not trained at a student's rate). Its drift from the original teacher,
        the token-mean KL(teacher || DPO teacher) on the held-out chosen responses, is logged and recorded."""
        from methods.dpo import DPO, DPOConfig

        key = self.teacher_dpo_key(options)
        if not self.cache.has("teacher_dpo", key):
            t0 = time.perf_counter()
            teacher = self.teacher()
            ref, ref_tokens = compute_sequence_logps(teacher, self.train_rows, self.tokenizer.pad_token_id,
                                                     "teacher DPO: reference log-probs")
            log.info(f"teacher DPO: {self.budget.optimizer_steps} steps, beta {options['beta']}, lr {options['lr']}")
            model = load_model(self.pair.teacher).to(self.device)
            dpo = DPO(DPOConfig(beta=options["beta"]))
            dpo.registered_name = "teacher-dpo"
            budget = self.budget.with_overrides(learning_rate=options["lr"])
            result = train(dpo, model, self.train_rows, {"reference_logps": ref}, budget,
                           self.tokenizer.pad_token_id, self.budget.seed, desc="teacher DPO",
                           checkpoints=self.checkpointing("teacher_dpo", key))
            drift, drift_tokens = model_drift(teacher, model, self.test_rows, self.tokenizer.pad_token_id)
            params = count_parameters(model)["matmul"]
            info = {"optimizer_steps": result.optimizer_steps, "trained_tokens": result.student_tokens,
                    "reference_tokens": ref_tokens + drift_tokens, "params": params, "options": options,
                    "flops": 6 * params * result.student_tokens + 2 * params * (ref_tokens + 2 * drift_tokens),
                    "final_loss": result.loss_curve[-1]["loss"], "drift_kl_heldout": drift,
                    "wall_clock_s": time.perf_counter() - t0}
            with self.cache.build("teacher_dpo", key) as out:
                model.save_pretrained(out / "checkpoint", safe_serialization=True)
                write_json_atomic(out / "info.json", info)
            log.info(f"teacher DPO: final loss {info['final_loss']:.4f}, drift KL(teacher || DPO teacher) on held-out "
                f"rows {drift:.4f} nats/token, in {info['wall_clock_s']:.0f}s")
        folder = self.cache.path("teacher_dpo", key)
        info = {**json.loads((folder / "info.json").read_text()), "stage_key": key}
        return load_model_from(folder / "checkpoint").to(self.device), info

    # ------------------------------------------------------------------ signals
    def signal_key(self, name: str, split: str, method=None) -> str:
        spec = parse_signal(name)
        student = self.start_key(method) if method is not None else self.student_init_key()
        producer = self.pair.teacher.identity() if spec.source == "teacher" else student
        if spec.kind == "scored_samples":  # sampled from the student, scored by the teacher
            producer = [student, self.pair.teacher.identity()]
        if spec.kind == "advantage":
            reference = self.pair.reference_teacher.identity() if self.pair.reference_teacher else None
            producer = [student, self.pair.teacher.identity(), reference]
        key = {"signal": name, "split": split, "producer": producer, "data": self.data_key,
               "k": self.budget.teacher_top_k if spec.kind in ("topk", "advantage") else None}
        if spec.kind in ("samples", "scored_samples", "advantage"):
            key.update(gen=self.budget.gen_max_new_tokens, seed=self.budget.seed)
        if spec.kind == "samples":
            # Generated by a fixed model from its folder, by vLLM where chosen: its text differs from HF's (the
            # key gains nothing on HF). PAD's and ADPA's samples stay on HF (they score the model in memory).
            key.update(**backend_key(choose_engine(has_model_path=True)))
        options = method.signal_options(name) if method is not None else {}
        if spec.kind == "scored_samples":
            key.update(n=self.budget.samples_per_prompt)
            if options.get("mcq"):
                key.update(mcq_template=self.mcq_template().digest)
        if spec.kind == "topk":
            key.update(store=TOPK_STORE_VERSION, value_dtype=self.budget.teacher_topk_dtype)
        if options:
            key.update(options=options)
        if spec.kind == "advantage":  # the teacher-DPO stage it may train depends on the whole budget
            key.update(budget=self.budget.to_dict())
        return stable_hash(key)

    def signal(self, name: str, split: str, method=None) -> tuple[dict, dict]:
        key = self.signal_key(name, split, method)
        if parse_signal(name).kind == "topk":
            return self.topk_signal(name, split, key)
        if not self.cache.has("signals", key):
            spec = parse_signal(name)
            rows = self.train_rows if split == "train" else self.test_rows
            t0 = time.perf_counter()
            desc = f"signal {name} ({split})"
            if spec.kind == "samples":
                examples = self.train_examples if split == "train" else self.test_examples
                # Teacher answers are greedy (SeqKD); the student's are sampled at temperature 1, seeded.
                from_teacher = spec.source == "teacher"
                loader = self.teacher if from_teacher else (lambda: self.student_for(method))
                backend = select_backend(model=loader, model_path=self.model_folder(method, from_teacher))
                with resumable(self.cache.partial("signals", key)):
                    data, tokens = compute_samples(
                        None, self.teacher_tokenizer if from_teacher else self.tokenizer, self.tokenizer, examples,
                        rows, self.budget.max_prompt_len, self.budget.gen_max_new_tokens, self.budget.max_seq_len,
                        desc, do_sample=not from_teacher, seed=self.budget.seed, backend=backend)
                params = folder_parameters(self.model_folder(method, from_teacher))
                del backend
            elif spec.kind == "scored_samples":
                with resumable(self.cache.partial("signals", key)):
                    data, tokens, params, extra = self.scored_samples(rows, split, desc, method)
            elif spec.kind == "advantage":
                with resumable(self.cache.partial("signals", key)):
                    data, tokens, params, extra = self.advantage(rows, method, desc)
            else:
                model = self.student_for(method)
                data, tokens = compute_sequence_logps(model, rows, self.tokenizer.pad_token_id, desc)
                params = count_parameters(model)["matmul"]
                del model
            info = {"name": name, "split": split, "kind": spec.kind, "forward_tokens": tokens, "model_params": params,
                    "flops": 2 * params * tokens, "generated_tokens": tokens if spec.kind == "samples" else 0}
            if spec.kind in ("scored_samples", "advantage"):
                info.update(extra)
            info["wall_clock_s"] = time.perf_counter() - t0
            with self.cache.build("signals", key) as out:
                save_signal(data, out)
                write_json_atomic(out / "info.json", info)
            log.info(f"signal {name} ({split}): {tokens} forward tokens in {info['wall_clock_s']:.1f}s")
        folder = self.cache.path("signals", key)
        return load_signal(folder), {**json.loads((folder / "info.json").read_text()), "stage_key": key}

    def topk_signal(self, name: str, split: str, key: str) -> tuple[TopkReader, dict]:
        """The teacher's top-k signal, streamed into a memory-mapped store inside the stage's build folder (so a
        killed run leaves no half-written stage) and read back lazily: the teacher is loaded only to compute it."""
        folder = self.cache.path("signals", key)
        if not self.cache.has("signals", key):
            spec = parse_signal(name)
            rows = self.train_rows if split == "train" else self.test_rows
            desc = f"signal {name} ({split})"
            t0 = time.perf_counter()
            with self.cache.build("signals", key) as out:
                model = self.teacher()
                reader, tokens = compute_topk(model, rows, spec.side, self.budget.teacher_top_k,
                                              self.tokenizer.pad_token_id, len(self.tokenizer), desc, out=out,
                                              value_dtype=self.budget.teacher_topk_dtype)
                params = count_parameters(model)["matmul"]
                info = {"name": name, "split": split, "kind": spec.kind, "forward_tokens": tokens,
                        "model_params": params, "flops": 2 * params * tokens, "generated_tokens": 0,
                        "bytes_per_position": reader.bytes_per_position(),
                        "wall_clock_s": time.perf_counter() - t0}
                write_json_atomic(out / "info.json", info)
            log.info(f"signal {name} ({split}): {tokens} forward tokens in {info['wall_clock_s']:.1f}s, "
                f"{info['bytes_per_position']:.1f} bytes per position")
        return load_topk(folder), {**json.loads((folder / "info.json").read_text()), "stage_key": key}

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

    def mcq_template(self):
        """PAD's MCQ prompt (harness/mcq.py): the released template from the data folder or upstream, else ours."""
        if not hasattr(self, "_mcq_template"):
            self._mcq_template = load_template(self.opts.data_dir, self.opts.cache_dir)
        return self._mcq_template

    def student_for(self, method):
        return self.load_start(method) if method is not None else self.load_student_init()

    def scored_samples(self, rows, split: str, desc: str, method=None) -> tuple[dict, int, int, dict]:
        """Several student samples per prompt, scored by the teacher as text (so no shared tokenizer is needed):
        its length-normalised log-likelihood always, its multiple-choice preference score when asked. With
        ``diverse_from`` m > n, m samples are drawn and the n most mutually different kept (PAD's options)."""
        b = self.budget
        options = method.signal_options("scored_samples") if method is not None else {}
        n, m = b.samples_per_prompt, max(options.get("diverse_from", 0), b.samples_per_prompt)
        if options.get("mcq") and n < 2:  # before any sampling, so nothing is computed in vain
            raise BenchError("The teacher's MCQ score compares samples in pairs and needs samples_per_prompt >= 2; "
                             "use --set samples_per_prompt=4 (the paper's n).")
        examples = self.train_examples if split == "train" else self.test_examples
        student = self.student_for(method)
        drawn, generated = sample_many(student, self.tokenizer, examples, rows, m, b.max_prompt_len,
                                       b.gen_max_new_tokens, b.max_seq_len, b.seed, desc)
        student_params = count_parameters(student)["matmul"]
        del student
        samples, distinct = drawn, [True] * len(drawn)
        if m > n:
            decoded = [[self.tokenizer.decode(s, skip_special_tokens=True).strip() for s in per] for per in drawn]
            picks = [most_different(texts, n) for texts in decoded]
            samples = [[per[k] for k in kept] for per, (kept, _) in zip(drawn, picks)]
            distinct = [ok for _, ok in picks]
        texts = [[self.tokenizer.decode(s, skip_special_tokens=True).strip() for s in per] for per in samples]
        teacher = self.teacher()
        eos = self.tokenizer.eos_token_id
        scores, teacher_tokens = mean_logps(teacher, self.teacher_tokenizer,
                                            [(ex.messages, t) for ex, per in zip(examples, texts) for t in per],
                                            b.max_prompt_len, b.max_seq_len, f"{desc}: teacher scores",
                                            finished=[s[-1] == eos for per in samples for s in per])
        data = {**pack([s for per in samples for s in per]),
                "scores": torch.tensor(scores, dtype=torch.float32).view(len(rows), n)}
        extra = {"generated_tokens": generated, "samples_drawn_per_prompt": m}
        if m > n:
            data["distinct"] = torch.tensor(distinct, dtype=torch.bool)
            extra["prompts_without_distinct_samples"] = distinct.count(False)
        if options.get("mcq"):
            template = self.mcq_template()
            if template.name != "official":
                log.info(f"PAD's MCQ score: {template.origin}")
            mcq, mcq_tokens = teacher_mcq(teacher, self.teacher_tokenizer, [instruction_text(ex) for ex in examples],
                                          texts, b.max_prompt_len, f"{desc}: teacher MCQ", template)
            data["mcq"] = torch.tensor(mcq, dtype=torch.float32)
            teacher_tokens += mcq_tokens
            extra["mcq_forward_tokens"] = mcq_tokens
            extra["mcq_template"] = {"name": template.name, "origin": template.origin, "sha": template.digest}
        params = count_parameters(teacher)["matmul"]
        extra["flops"] = 2 * params * teacher_tokens + 2 * student_params * generated
        return data, teacher_tokens, params, extra

    def advantage(self, rows, method, desc: str) -> tuple[dict, int, int, dict]:
        """ADPA's signal from the method's starting student, its aligned teacher and the chosen reference."""
        options = method.signal_options("adpa_advantage")
        dpo, ref_teacher, extra = self.aligned_teachers(options)
        student = self.load_start(method)
        ref = student if options["reference"] == "student" else ref_teacher
        b = self.budget
        data, counts = compute_advantage(student, dpo, ref, rows, b.teacher_top_k, len(self.tokenizer),
                                         self.tokenizer.pad_token_id, self.tokenizer.eos_token_id,
                                         b.gen_max_new_tokens, b.max_seq_len, desc)
        t_params, s_params = count_parameters(dpo)["matmul"], count_parameters(student)["matmul"]
        r_params = count_parameters(ref)["matmul"]
        forwarded = counts["forward_tokens_per_model"]
        dpo_stage = extra["teacher_dpo"]
        flops = (2 * s_params * counts["generated_tokens"] + 2 * (t_params + r_params) * forwarded
                 + (dpo_stage["flops"] if dpo_stage else 0))
        teacher_tokens = forwarded * (1 if options["reference"] == "student" else 2)
        if dpo_stage:
            teacher_tokens += dpo_stage["trained_tokens"] + dpo_stage["reference_tokens"]
        extra.update(generated_tokens=counts["generated_tokens"], flops=flops, teacher_tokens=teacher_tokens,
                     reference=options["reference"])
        return data, forwarded, t_params, extra

    # ------------------------------------------------------------------ evaluation
    def eval_key(self, model_key: str) -> str:
        b = self.budget
        return stable_hash({"model": model_key, "data": self.data_key, "k": b.teacher_top_k,
                            "topk": self.signal_key("teacher_topk:chosen", "test"),
                            "gen": [b.gen_eval_examples, b.gen_max_new_tokens], "bench": harness.__version__})

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
        return stable_hash({"method": name, "config": method.config.to_dict(), "budget": self.budget.to_dict(),
                            "init": self.start_key(method), "data": self.data_key,
                            "signals": self.method_signal_keys(method), "bench": harness.__version__})

    def method_signal_keys(self, method) -> dict:
        keys = {s: self.signal_key(s, "train", method) for s in method.needs if parse_signal(s).kind != "live"}
        if "teacher_model" in method.needs:
            keys["teacher_model"] = stable_hash(self.pair.teacher.identity())
        return keys

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
            os.replace(tmp, folder / "checkpoint")
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
            if parse_signal(s).kind != "live":
                self.signal(s, "train", method)
        if method.starts_from:
            self.train_stage(*self.dependency(method), checkpoint=True)
        else:
            self.load_student_init()
        key = self.train_key(name, method)
        return launch(launcher, self.opts, name, self.cache.partial("train", key) / "distributed")

    def train_here(self, name: str, method):
        """Train in this process (one of several when launched by harness/distributed.py)."""
        cached = [s for s in method.needs if parse_signal(s).kind != "live"]
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
        log.info(f"train {name}: {b.optimizer_steps} steps of {b.examples_per_step} pairs{start}")
        params = count_parameters(model)["matmul"]
        result = train(method, model, self.train_rows, signals, b, self.tokenizer.pad_token_id, b.seed,
                       desc=f"train {name}", checkpoints=self.checkpointing("train", self.train_key(name, method)))
        info = {"loss_curve": result.loss_curve, "optimizer_steps": result.optimizer_steps,
                "student_tokens": result.student_tokens, "wall_clock_s": result.wall_clock_s,
                "live_teacher_tokens": result.teacher_tokens, "generated_tokens": result.generated_tokens,
                "student_forward_tokens": result.student_forward_tokens,
                "teacher_params": count_parameters(teacher)["matmul"] if teacher is not None else 0,
                "student_params": params, "signals": signal_info, "git_revision": git_revision(),
                "computed_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        if method.starts_from:
            dep_name, dep = self.dependency(method)
            dep_key = self.train_key(dep_name, dep)
            dep_info = json.loads((self.cache.path("train", dep_key) / "train.json").read_text())
            info["starts_from"] = {"method": dep_name, "train_stage_key": dep_key, "compute": compute_record(dep_info)}
        log.info(f"train {name}: final loss {result.loss_curve[-1]['loss']:.4f} in {result.wall_clock_s:.0f}s")
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


def instruction_text(example) -> str:
    """The prompt as the MCQ judge sees it: the user's text, or the turns labelled by role when there are several."""
    if len(example.prompt) == 1:
        return example.prompt[0][1]
    return "\n\n".join(f"{role}: {content}" for role, content in example.prompt)


def load_model_from(folder: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)
    model.eval()
    return model


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def compute_record(train_info: dict) -> dict:
    signals = train_info["signals"].values()
    specs = {s["name"]: parse_signal(s["name"]) for s in signals}

    def tokens(keep) -> int:
        return sum(s["forward_tokens"] for s in signals if keep(specs[s["name"]]))

    live_teacher = train_info.get("live_teacher_tokens", 0)
    # Teacher work: top-k forwards, its generated answers, its scoring of student samples (a signal that
    # involves several models, such as ADPA's, states its teacher tokens itself).
    cached_teacher = sum(s["teacher_tokens"] for s in signals if "teacher_tokens" in s) + tokens(
        lambda spec: spec.kind != "advantage" and (spec.source == "teacher" or spec.kind == "scored_samples"))
    generated = train_info.get("generated_tokens", 0) + sum(s.get("generated_tokens", 0) for s in signals)
    # 6N per trained token (forward + backward), 2N per forward-only or generated token; N = matmul parameters.
    flops = (6 * train_info["student_params"] * train_info["student_tokens"]
             + sum(s["flops"] for s in signals)
             + 2 * train_info.get("teacher_params", 0) * live_teacher
             + 2 * train_info["student_params"] * (train_info.get("generated_tokens", 0)
                                                  + train_info.get("student_forward_tokens", 0)))
    record = {
        "optimizer_steps": train_info["optimizer_steps"],
        "student_tokens_trained": train_info["student_tokens"],
        "teacher_forward_tokens": cached_teacher + live_teacher,
        "reference_forward_tokens": tokens(lambda spec: spec.kind == "sequence_logps"),
        "generated_tokens": generated,
        "wall_clock_s": round(train_info["wall_clock_s"], 2),
        "flops_estimate": flops,
        "signals_shared": sorted(train_info["signals"]),
    }
    stages = {name: {"stage_key": s["stage_key"], "wall_clock_s": round(s["wall_clock_s"], 2)}
              for name, s in train_info["signals"].items() if "stage_key" in s}
    for name, s in train_info["signals"].items():  # ADPA's signal includes the (shared) teacher-DPO stage
        if s.get("teacher_dpo") and name in stages:
            stages[name]["teacher_dpo"] = {"stage_key": s["teacher_dpo"]["stage_key"],
                                           "wall_clock_s": round(s["teacher_dpo"]["wall_clock_s"], 2),
                                           "drift_kl_heldout": s["teacher_dpo"].get("drift_kl_heldout")}
    if stages:
        record["signal_stages"] = stages
    dep = train_info.get("starts_from")
    if dep:  # a method that continues another's student carries that training's cost too (ADPA+ = DCKD + ADPA)
        for field in ("optimizer_steps", "student_tokens_trained", "teacher_forward_tokens",
                      "reference_forward_tokens", "generated_tokens", "wall_clock_s", "flops_estimate"):
            record[field] = round(record[field] + dep["compute"][field], 2)
        record["starts_from"] = dep
    return record


def write_record(run_dir: Path, row: str, record: dict, evaluation: dict, loss_curve: list[dict] | None) -> None:
    folder = run_dir / row
    record = {**record, "metrics": evaluation["metrics"],
              "evaluation": {"wall_clock_s": round(evaluation["wall_clock_s"], 2),
                             "generated_tokens": evaluation["generated_tokens"], "stage_key": evaluation["key"]}}
    write_json_atomic(folder / "record.json", record)
    write_json_atomic(folder / "metrics.json", evaluation["metrics"])
    for name in ("per_example.jsonl", "answers.jsonl"):
        write_text_atomic(folder / name, (evaluation["folder"] / name).read_text())
    if loss_curve:
        keys = sorted({k for row_ in loss_curve for k in row_}, key=lambda k: (k != "step", k))
        lines = [",".join(keys)] + [",".join(_fmt(r.get(k)) for k in keys) for r in loss_curve]
        write_text_atomic(folder / "loss_curve.csv", "\n".join(lines) + "\n")


def _fmt(v) -> str:
    if v is None:
        return ""
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def run(opts: RunOptions) -> Path:
    """Execute a run; returns its results folder."""
    t_start = time.perf_counter()
    methods = build_methods(opts)
    if opts.launcher is not None:
        opts.launcher.check(opts.budget)
    for folder in (opts.results_dir, opts.cache_dir):
        check_writable(folder)
    r = Run(opts)
    r.methods = dict(methods)
    r.dependents = {r.dependency(m)[0] for m in methods.values() if m.starts_from}
    r.prepare_data()
    run_dir = opts.results_dir / opts.pair.name / opts.name
    run_dir.mkdir(parents=True, exist_ok=True)
    common = {"schema": RECORD_SCHEMA, "pair": opts.pair.to_dict(), "budget": opts.budget.to_dict(),
              "seed": opts.seed, "run": opts.name, "data": r.data_info, "environment": environment()}

    failed: dict[str, str] = {}
    for i, (name, method) in enumerate(methods.items(), 1):
        log.info(f"method {i}/{len(methods)}: {name}")
        dep = r.dependency(method)[0] if method.starts_from else None
        if dep in failed:
            failed[name] = f"skipped: it starts from {dep}, which failed"
            log.info(f"{name}: {failed[name]}")
            continue
        try:
            out = r.run_method(name, method)
        except NonFiniteLoss as e:
            # This method stops with what went wrong; the others (and their cached work) are unaffected.
            failed[name] = str(e)
            write_json_atomic(run_dir / name / "failure.json", {**common, "row": name, "method": method.registered_name,
                                                                 "config": method.config.to_dict(), **e.diagnostic()})
            log.info(f"{name} stopped: {e}")
            continue
        (run_dir / name / "failure.json").unlink(missing_ok=True)
        record = {**common, "row": name, "kind": "method", "method": method.registered_name,
                  "config": method.config.to_dict(), "needs": list(method.needs),
                  "recipe": recipes.recipe_record(type(method), method.recipe, opts.budget.learning_rate,
                                                  method.options_set),
                  "compute": compute_record(out["train"]), "train_stage_key": out["train_key"],
                  "git_revision": out["train"]["git_revision"], "computed_at": out["train"]["computed_at"]}
        write_record(run_dir, name, record, out["eval"], out["train"]["loss_curve"])

    log.info("reference rows: teacher and untrained student")
    teacher_eval = r.evaluate(r.teacher, stable_hash(opts.pair.teacher.identity()), "teacher")
    write_record(run_dir, "teacher", {**common, "row": "teacher", "kind": "reference",
                                      "model": opts.pair.teacher.describe()}, teacher_eval, None)
    init = {}

    def student_init():
        if "m" not in init:
            init["m"] = r.load_student_init()
        return init["m"]

    student_eval = r.evaluate(student_init, r.student_init_key(), "student-init")
    write_record(run_dir, "student-init", {**common, "row": "student-init", "kind": "reference",
                                           "model": opts.pair.student.describe(),
                                           "warmstart_steps": opts.budget.warmstart_steps}, student_eval, None)
    log.info(f"run finished in {time.perf_counter() - t_start:.0f}s; results in {run_dir}")
    if failed:
        raise MethodsFailed(run_dir, failed)
    return run_dir


class MethodsFailed(BenchError):
    """Some methods of a run stopped; the others finished and were recorded."""

    exit_code = 3

    def __init__(self, run_dir: Path, failed: dict[str, str]):
        self.run_dir, self.failed = run_dir, failed
        lines = "; ".join(f"{name}: {why}" for name, why in failed.items())
        super().__init__(f"{len(failed)} method(s) did not finish ({lines}). The other rows are in {run_dir}; "
                         "each failure is described in <row>/failure.json.")
