"""How fast the harness trains and generates on one machine, measured in one run.

    HF_HUB_OFFLINE=1 python perf/speed.py --data-dir ../shared [--label cpu-2core] [--quick] [--only F,...]

Every figure uses the pair's student, the same training rows and the same micro-batch shape (the smoke budget with
--batch-size, --grad-accum, --seq-len, --prompt-len). Training runs through the harness's own loop
(``harness.trainer.train``) after the pipeline (``harness.pipeline.Run``) has prepared each method's cached signals
in --cache-dir (a temporary folder by default); that preparation is not timed. A step's time is the interval between
the starts of two consecutive optimizer steps (collation, any on-policy sampling, forward, backward, clipping,
optimizer; the last step ends when training returns), averaged over --steps steps after --warmup excluded ones,
each method in a fresh child process (its signals computed into the cache folder first, untimed).
Torch keeps its default thread count for every figure unless --threads sets one (children too). On a shared
machine the figures mean little: the report records the CPU pressure (Linux PSI) at start and end. Figures (--only
picks some):

  methods     step time and student tokens/s of each method relative to sft. Goal: a method fed from the cache
              costs at most 1.15x sft per token (dpo, simpo and dckd forward two responses per pair, so their step
              time is about twice sft's by construction). kd-live is kd with its teacher top-k computed by a live
              teacher forward inside each step instead of read from the cache: the cost the cache saves.
  trl         our dpo against trl.DPOTrainer (precompute_ref_log_probs=True; the precompute is not timed), and kd,
              kd-live and gkd-offpolicy (our gkd with lmbda=0, beta=0) against trl's GKDTrainer with lmbda=0
              (off-policy) and beta=0 (forward KL): the rows the harness tokenised, in the order of our step plan (a
              sequential sampler), fp32 without gradient checkpointing, TRL's other defaults kept (fused AdamW, the
              DPO fused LM head). gkd-offpolicy's loss is GKDTrainer's (full-vocabulary forward KL to the live
              teacher); kd's is the KL over the cached top-k plus a rest bucket. Goal: ours/TRL <= 0.9.
  generation  new tokens/s of harness.generation.generate_ids on the student, greedy, the same --gen-batch prompts
              answered one per call and all in one call. Goal: batched >= 4x.
  memory      peak RSS (and peak CUDA memory on a GPU) of training kd from the cached top-k and kd-live (teacher
              loaded, forwarded every step). Every timing runs in a child process of its own, so each method's row
              also reports the peak RSS of the process that trained it.
  flops       sft's achieved FLOP/s, 6 x matmul parameters x tokens per step / step time, against the peak of an
              fp32 n x n torch.matmul (best of several, 2 n^3 flops each). Goal: >= 70% of the peak. The count
              is nominal: the LM head is counted at every token though the harness runs it on response positions
              only, so the figure is model FLOPs utilisation, not the matmul units' own.

Writes <out-dir>/speed-<label>.md and .json (every figure, per-step times included) and prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.budgets import get_budget
from harness.generation import generate_ids
from harness.method import Runtime
from harness.models import count_parameters
from harness.pairs import get_pair
from harness.pipeline import Run, RunOptions, git_revision
from harness.plan import step_plan
from harness.registry import METHODS
from harness.signals import parse_signal
from harness.trainer import train
from methods.kd import KD

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("methods", "trl", "generation", "memory", "flops")
METHOD_LIST = "sft,kd,dckd,dpo,simpo,rkl,distillm,gkd"
QUICK_METHODS = "sft,kd,dpo"
CACHE_GOAL, TRL_GOAL, GENERATION_GOAL, FLOPS_GOAL = 1.15, 0.9, 4.0, 0.70
CHILD_TAG = "SPEED-CHILD "


class LiveKD(KD):
    """kd's loss with the teacher top-k taken from a live teacher forward inside the step (not registered)."""

    needs = ("teacher_model",)

    def __init__(self, top_k: int, vocab: int):
        super().__init__()
        self.top_k, self.vocab = top_k, vocab

    def loss(self, model, batch):
        t = torch.log_softmax(self.live_teacher_logits(batch.chosen, self.vocab), dim=-1)
        logps, ids = t.topk(self.top_k, dim=-1)
        rest = torch.logsumexp(t.scatter(-1, ids, float("-inf")), dim=-1)
        batch.signals["teacher_topk:chosen"] = {"ids": ids, "logps": logps, "rest": rest}
        return super().loss(model, batch)


@dataclass
class Timing:
    seconds: list[float]  # per timed step
    tokens: list[int]  # student tokens forwarded per timed step

    @property
    def step_s(self) -> float:
        return statistics.fmean(self.seconds)

    @property
    def tokens_per_s(self) -> float:
        return sum(self.tokens) / sum(self.seconds)

    def to_dict(self) -> dict:
        return {"step_s": self.step_s, "tokens_per_step": statistics.fmean(self.tokens),
                "tokens_per_s": self.tokens_per_s, "step_seconds": self.seconds, "step_tokens": self.tokens}


def intervals(starts: list[float], end: float, warmup: int) -> list[float]:
    """Step times from the start times of consecutive steps and the end of the last, warm-up steps dropped."""
    bounds = [*starts, end]
    return [b - a for a, b in zip(bounds, bounds[1:])][warmup:]


class StepClock:
    """Start time and student tokens of each optimizer step of ``train``, read through the method's hooks: the
    trainer calls prepare_batch first thing in a step (after collation) and loss once per micro-batch."""

    def __init__(self, method):
        self.starts: list[float] = []
        self.tokens: list[int] = []
        prepare, loss = method.prepare_batch, method.loss

        def timed_prepare(model, batch, rng):
            if len(self.starts) < method.step:
                self.starts.append(time.perf_counter())
                self.tokens.append(0)
            return prepare(model, batch, rng)

        def counted_loss(model, batch):
            out = loss(model, batch)
            self.tokens[-1] += out.student_tokens
            return out

        method.prepare_batch, method.loss = timed_prepare, counted_loss

    def timing(self, end: float, warmup: int) -> Timing:
        return Timing(intervals(self.starts, end, warmup), self.tokens[warmup:])


def say(message: str) -> None:
    print(f"[speed] {message}", file=sys.stderr, flush=True)


def make_budget(args, steps: int):
    return get_budget(args.budget).with_overrides(
        batch_size=args.batch_size, grad_accum=args.grad_accum, max_seq_len=args.seq_len,
        max_prompt_len=args.prompt_len, train_examples=args.train_examples, eval_examples=8, max_steps=steps)


class Bench:
    """One pipeline Run (data, signals, teacher) shared by every figure; each timing is taken once."""

    def __init__(self, args, cache_dir: Path, steps: int):
        self.args = args
        self.budget = make_budget(args, steps)
        opts = RunOptions(methods=[], pair=get_pair(args.pair), budget=self.budget, results_dir=cache_dir / "results",
                          cache_dir=cache_dir, data_dir=args.data_dir)
        self.run = Run(opts)
        self.run.prepare_data()
        self.tok = self.run.tokenizer
        self.timings: dict[str, Timing] = {}
        self.peaks: dict[str, dict] = {}  # label -> peak memory of the child that timed it

    def method(self, label: str):
        if label == "kd-live":
            m = LiveKD(self.budget.teacher_top_k, len(self.tok))
        elif label == "gkd-offpolicy":  # GKDTrainer's lmbda=0, beta=0 loss in our harness
            cls = METHODS.get("gkd")
            m = cls(cls.Config(lmbda=0.0, beta=0.0))
        else:
            m = METHODS.get(label)()
        if m.starts_from:
            raise SystemExit(f"{label} starts from another method's student; time that method instead.")
        m.registered_name = label
        return m

    def prepare(self, method) -> dict:
        """The method's cached signals (computed now, untimed) and its runtime, as the pipeline sets them up."""
        signals = self.cached_signals(method)
        teacher = self.run.teacher() if "teacher_model" in method.needs else None
        b, rows = self.budget, self.run.train_rows
        method.runtime = Runtime(self.tok.pad_token_id, self.tok.eos_token_id, b.gen_max_new_tokens, b.max_seq_len,
                                 teacher, total_steps=b.optimizer_steps,
                                 steps_per_epoch=max(1, len(rows) // b.examples_per_step),
                                 validation=self.run.spare_rows)
        return signals

    def cached_signals(self, method) -> dict:
        return {s: self.run.signal(s, "train", method)[0] for s in method.needs if parse_signal(s).cached}

    def train_steps(self, label: str) -> Timing:
        method = self.method(label)
        signals = self.prepare(method)
        model = self.run.load_student_init()
        clock = StepClock(method)
        train(method, model, self.run.train_rows, signals, self.budget, self.tok.pad_token_id, self.budget.seed,
              desc=f"speed {label}")
        return clock.timing(time.perf_counter(), self.args.warmup)

    def timed(self, label: str) -> Timing:
        """``label``'s step times, taken in a child process of its own (which also reports the peak RSS of
        training it), after this process has computed its cached signals into the shared cache folder."""
        if label not in self.timings:
            self.cached_signals(self.method(label))
            say(f"timing {label} in a child process")
            child = run_child(self.args, label)
            self.timings[label] = Timing(child["seconds"], child["tokens"])
            self.peaks[label] = child["peak"]
        return self.timings[label]

    def plan_tokens(self, per_row) -> list[int]:
        """Tokens per timed step of our step plan, ``per_row(row)`` tokens each row."""
        rows = self.run.train_rows
        plan = step_plan(len(rows), self.budget, self.budget.seed)
        steps = [sum(per_row(rows[i]) for mb in step for i in mb) for step in plan]
        return steps[self.args.warmup:]


# ---------------------------------------------------------------------------------------------------- figures

def fig_methods(bench: Bench, methods: list[str]) -> dict:
    sft = bench.timed("sft")
    out = {}
    for label in [*methods, "kd-live"]:
        t = bench.timed(label)
        live = "teacher_model" in bench.method(label).needs
        per_token = sft.tokens_per_s / t.tokens_per_s
        out[label] = {**t.to_dict(), **bench.peaks[label], "teacher": "live" if live else "cache",
                      "step_ratio": t.step_s / sft.step_s, "token_cost_ratio": per_token,
                      "goal_met": None if live else per_token <= CACHE_GOAL}
    return out


def trl_arguments(config_cls, bench: Bench, out_dir: Path, **extra):
    b = bench.budget
    schedule = "constant_with_warmup" if b.lr_schedule == "constant" else b.lr_schedule
    return config_cls(
        output_dir=str(out_dir), per_device_train_batch_size=b.batch_size, gradient_accumulation_steps=b.grad_accum,
        learning_rate=b.learning_rate, lr_scheduler_type=schedule, warmup_steps=b.warmup_steps,
        weight_decay=b.weight_decay, max_grad_norm=b.max_grad_norm, max_steps=b.optimizer_steps,
        max_length=b.max_seq_len, seed=b.seed, train_sampling_strategy="sequential",
        # TRL's own defaults are bf16 and gradient checkpointing; ours trains in fp32 without checkpointing.
        bf16=False, gradient_checkpointing=False, use_cpu=not torch.cuda.is_available(),
        report_to="none", save_strategy="no", eval_strategy="no", logging_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, **extra)


def trl_timing(trainer_cls, bench: Bench, tokens: list[int], **kwargs) -> Timing:
    from transformers import PrinterCallback, TrainerCallback

    begins: list[float] = []
    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            begins.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            ends.append(time.perf_counter())

    trainer = trainer_cls(model=bench.run.load_student_init(), processing_class=bench.tok, callbacks=[Clock()],
                          **kwargs)
    trainer.remove_callback(PrinterCallback)  # its end-of-training dict would land in the printed report
    trainer.train()
    return Timing(intervals(begins, ends[-1], bench.args.warmup), tokens)


def fig_trl(bench: Bench, work: Path) -> dict:
    # trl is an optional dependency (the `perf` extra): imported only for this figure.
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    class TokenisedDPOTrainer(DPOTrainer):
        """DPOTrainer on rows the harness already tokenised (so both train on identical token ids)."""

        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset

    rows = bench.run.train_rows
    order = [rows[i] for step in step_plan(len(rows), bench.budget, bench.budget.seed) for mb in step for i in mb]
    beta = METHODS.get("dpo").Config().beta
    dpo_rows = Dataset.from_list([{"prompt_ids": r.prompt_ids, "chosen_ids": r.chosen_ids,
                                   "rejected_ids": r.rejected_ids} for r in order])
    say("timing trl DPOTrainer (reference log-probs precomputed first, untimed)")
    trl_dpo = trl_timing(TokenisedDPOTrainer, bench,
                         bench.plan_tokens(lambda r: 2 * len(r.prompt_ids) + len(r.chosen_ids) + len(r.rejected_ids)),
                         args=trl_arguments(DPOConfig, bench, work / "dpo", beta=beta, precompute_ref_log_probs=True),
                         train_dataset=dpo_rows)
    gkd_rows = Dataset.from_list([{"prompt": "", "input_ids": r.prompt_ids + r.chosen_ids,
                                   "attention_mask": [1] * (len(r.prompt_ids) + len(r.chosen_ids)),
                                   "completion_mask": [0] * len(r.prompt_ids) + [1] * len(r.chosen_ids)}
                                  for r in order])
    say("timing trl GKDTrainer (lmbda=0, beta=0)")
    trl_gkd = trl_timing(GKDTrainer, bench, bench.plan_tokens(lambda r: len(r.prompt_ids) + len(r.chosen_ids)),
                         args=trl_arguments(GKDConfig, bench, work / "gkd", lmbda=0.0, beta=0.0),
                         teacher_model=bench.run.teacher(), train_dataset=gkd_rows)
    optimizer = optimizer_step_times(bench.run.load_student_init())
    differs = {
        "dpo": ("DPOTrainer", trl_dpo, "both forward chosen and rejected as one padded batch and log-softmax the "
                "response positions only (DPOTrainer's fused LM head in tiles, ours by running the LM head on those "
                "positions alone)."),
        "kd": ("GKDTrainer", trl_gkd, "not the same loss: our kd reads the teacher's top-k from the cache (no teacher "
               "forward) and takes the KL over k + 1 buckets; GKDTrainer forwards the live teacher and takes the "
               "full-vocabulary KL."),
        "kd-live": ("GKDTrainer", trl_gkd, "both forward the live teacher; ours runs both LM heads on the response "
                    "positions only, then takes the teacher's top-k and the rest bucket's log-sum-exp (two more "
                    "passes over the vocabulary) before the bucket KL; GKDTrainer runs the heads and the KL at every "
                    "position and masks the prompt afterwards."),
        "gkd-offpolicy": ("GKDTrainer", trl_gkd, "the same loss and teacher forward as GKDTrainer (full-vocabulary "
                          "forward KL); ours runs both LM heads and the KL on the response positions only."),
    }
    out = {"optimizer_step": optimizer}
    for label, (name, theirs, note) in differs.items():
        mine = bench.timed(label)
        ratio = mine.step_s / theirs.step_s
        out[label] = {"ours": mine.to_dict(), "trl": theirs.to_dict(), "trl_trainer": name, "ratio": ratio,
                      "goal_met": ratio <= TRL_GOAL, "same_tokens": mine.tokens == theirs.tokens, "differs": note}
    return out


def optimizer_step_times(model, reps: int = 3) -> dict:
    """Best-of-``reps`` time of one AdamW step over the student's parameters: torch's default (foreach)
    implementation against the fused one that TRL defaults to and the harness's trainer uses."""
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    out = {}
    for name, fused in (("foreach_s", None), ("fused_s", True)):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=fused)
        best = float("inf")
        for _ in range(reps + 1):  # the first step allocates the moments
            t0 = time.perf_counter()
            opt.step()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        out[name] = best
    return out


def fig_generation(bench: Bench) -> dict:
    args, run = bench.args, bench.run
    prompts = [r.prompt_ids for r in run.train_rows[: args.gen_batch]]
    model = run.load_student_init()
    ids = {"pad_id": bench.tok.pad_token_id, "eos_id": bench.tok.eos_token_id, "desc": None}
    generate_ids(model, prompts[:1], 2, batch_size=1, **ids)  # first-call allocations and lazy inits
    out = {}
    for label, batch_size in (("one_at_a_time", 1), ("batched", len(prompts))):
        say(f"timing generation, batch size {batch_size}")
        t0 = time.perf_counter()
        outs = generate_ids(model, prompts, args.gen_new_tokens, batch_size=batch_size, **ids)
        seconds = time.perf_counter() - t0
        tokens = sum(len(o) for o in outs)
        out[label] = {"batch_size": batch_size, "seconds": seconds, "new_tokens": tokens,
                      "tokens_per_s": tokens / seconds}
    speedup = out["batched"]["tokens_per_s"] / out["one_at_a_time"]["tokens_per_s"]
    return {**out, "prompts": len(prompts), "max_new_tokens": args.gen_new_tokens, "speedup": speedup,
            "goal_met": speedup >= GENERATION_GOAL}


def peak_rss_kib() -> float:
    """This process's peak RSS. Not ru_maxrss where /proc has VmHWM: on Linux a child's ru_maxrss starts from its
    parent's peak at fork (the copied memory map keeps its high-water mark), so it would report the parent's."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform == "darwin" else 1)


def time_child(args, label: str) -> None:
    """In the child: train ``label`` for --warmup + --steps steps from the cached signals, then print its step
    times, tokens and peak memory."""
    bench = Bench(args, args.cache_dir, args.warmup + args.steps)
    t = bench.train_steps(label)
    peak = {"peak_rss_mib": peak_rss_kib() / 1024}
    if torch.cuda.is_available():
        peak["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(CHILD_TAG + json.dumps({"seconds": t.seconds, "tokens": t.tokens, "peak": peak}), flush=True)


def run_child(args, label: str) -> dict:
    """Time ``label`` in a child process (``time_child``) with this run's shape; its figures."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-time", label, "--cache-dir", str(args.cache_dir),
           "--data-dir", str(args.data_dir), "--pair", args.pair, "--budget", args.budget,
           "--batch-size", str(args.batch_size), "--grad-accum", str(args.grad_accum), "--seq-len", str(args.seq_len),
           "--prompt-len", str(args.prompt_len), "--train-examples", str(args.train_examples),
           "--warmup", str(args.warmup), "--steps", str(args.steps)] + (
               ["--threads", str(args.threads)] if args.threads else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(CHILD_TAG)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"timing child for {label} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(CHILD_TAG):])


def fig_memory(bench: Bench) -> dict:
    out = {}
    for label, teacher in (("kd", "cache"), ("kd-live", "live")):
        bench.timed(label)
        out[label] = {"teacher": teacher, **bench.peaks[label]}
    out["steps"] = bench.args.warmup + bench.args.steps
    out["live_minus_cached_mib"] = out["kd-live"]["peak_rss_mib"] - out["kd"]["peak_rss_mib"]
    return out


def matmul_peak(n: int, reps: int) -> float:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(reps + 1):  # the first is a warm-up, kept only if it happens to be the fastest
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def fig_flops(bench: Bench) -> dict:
    sft = bench.timed("sft")
    params = count_parameters(bench.run.load_student_init())["matmul"]
    achieved = 6 * params * statistics.fmean(sft.tokens) / sft.step_s
    peak = matmul_peak(bench.args.matmul_n, bench.args.matmul_reps)
    return {"matmul_params": params, "tokens_per_step": statistics.fmean(sft.tokens), "step_s": sft.step_s,
            "achieved_flops": achieved, "matmul_n": bench.args.matmul_n, "peak_flops": peak,
            "utilisation": achieved / peak, "goal_met": achieved / peak >= FLOPS_GOAL}


# ---------------------------------------------------------------------------------------------------- report

def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"cpu": cpu, "cores": usable, "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    info["cpu_pressure_at_start"] = cpu_pressure()
    return info


def cpu_pressure() -> float | None:
    """Share of the last minute some runnable task waited for a CPU (Linux PSI, percent); high means the figures
    were taken on a busy machine."""
    psi = Path("/proc/pressure/cpu")
    if not psi.exists():
        return None
    fields = dict(kv.split("=") for kv in psi.read_text().splitlines()[0].split()[1:])
    return float(fields["avg60"])


def versions() -> dict:
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import trl

        out["trl"] = trl.__version__
    except ImportError:
        out["trl"] = None
    return out


def command() -> str:
    env = [f"{k}={shlex.quote(os.environ[k])}" for k in ("HF_HUB_OFFLINE", "BENCH_MODEL_CACHE") if k in os.environ]
    return " ".join([*env, "python", "perf/speed.py", *map(shlex.quote, sys.argv[1:])])


def yes_no(ok) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")


def markdown(r: dict) -> str:
    s = r["settings"]
    lines = [f"# Speed: {r['label']}", "",
             f"- machine: {r['machine']['cpu']}, {r['machine']['cores']} cores, torch threads "
             f"{r['machine']['torch_threads']}" + (" (torch's default)" if s["threads"] is None else " (--threads)")
             + (f", GPU {r['machine']['gpu']}" if r["machine"]["gpu"] else "")
             + f"; CPU pressure (PSI some, avg60 %) at start {r['machine']['cpu_pressure_at_start']}, at end "
             f"{r['cpu_pressure_at_end']}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()),
             f"- git revision: {r['git_revision']}",
             f"- command: `{r['command']}`",
             f"- shape: pair {s['pair']}, budget {s['budget']} with batch {s['batch_size']} x accumulation "
             f"{s['grad_accum']}, sequences <= {s['seq_len']} tokens (prompt <= {s['prompt_len']}); "
             f"{s['warmup']} warm-up + {s['steps']} timed steps; wall-clock {r['wall_clock_s']:.0f} s", ""]
    if "methods" in r:
        lines += ["## Training step per method, relative to sft", "",
                  f"Cached signals prepared before timing. Goal: methods fed from the cache cost <= {CACHE_GOAL}x sft "
                  "per student token.", "",
                  "| method | teacher | step s | tokens/step | tokens/s | peak RSS MiB | step / sft | per-token cost / sft "
                  "| goal |", "|---|---|---|---|---|---|---|---|---|"]
        for name, m in r["methods"].items():
            lines.append(f"| {name} | {m['teacher']} | {m['step_s']:.3f} | {m['tokens_per_step']:.0f} | "
                         f"{m['tokens_per_s']:.0f} | {m.get('peak_rss_mib', float('nan')):.0f} | {m['step_ratio']:.2f} | {m['token_cost_ratio']:.2f} | "
                         f"{yes_no(m['goal_met'])} |")
        lines.append("")
    if "trl" in r:
        rows = {k: v for k, v in r["trl"].items() if k != "optimizer_step"}
        lines += ["## Against TRL (same rows, same order)", "", f"Goal: ours / TRL step time <= {TRL_GOAL}.", "",
                  "| ours | TRL | our step s | TRL step s | ours / TRL | goal |", "|---|---|---|---|---|---|"]
        for name, m in rows.items():
            lines.append(f"| {name} | {m['trl_trainer']} | {m['ours']['step_s']:.3f} | {m['trl']['step_s']:.3f} | "
                         f"{m['ratio']:.2f} | {yes_no(m['goal_met'])} |")
        lines.append("")
        lines += [f"- {name} vs {m['trl_trainer']}" + (" (**why slower**)" if not m["goal_met"] else "")
                  + f": {m['differs']}" for name, m in rows.items()]
        lines += [f"- {name}: token counts per step differ from TRL's (see the JSON)." for name, m in rows.items()
                  if not m["same_tokens"]]
        opt = r["trl"]["optimizer_step"]
        lines.append(f"- every row: TRL and the harness step with fused AdamW; one optimizer step over the student "
                     f"takes {opt['fused_s']:.2f} s fused and {opt.get('foreach_s', opt.get('ours_s', 0)):.2f} s "
                     "with torch's default (foreach) implementation on this machine.")
        lines.append("")
    if "generation" in r:
        g = r["generation"]
        lines += ["## Generation (generate_ids, greedy)", "",
                  f"{g['prompts']} prompts, at most {g['max_new_tokens']} new tokens each. Goal: batched >= "
                  f"{GENERATION_GOAL}x one at a time.", "",
                  "| mode | batch size | seconds | new tokens | new tokens/s |", "|---|---|---|---|---|"]
        for mode in ("one_at_a_time", "batched"):
            m = g[mode]
            lines.append(f"| {mode.replace('_', ' ')} | {m['batch_size']} | {m['seconds']:.2f} | {m['new_tokens']} | "
                         f"{m['tokens_per_s']:.1f} |")
        lines += ["", f"Speed-up: {g['speedup']:.2f}x (goal met: {yes_no(g['goal_met'])}).", ""]
    if "memory" in r:
        m = r["memory"]
        lines += ["## Peak memory of training kd (the timing children)", "",
                  "| run | teacher | peak RSS MiB |" + (" peak CUDA MiB |" if "peak_cuda_mib" in m["kd"] else ""),
                  "|---|---|---|" + ("---|" if "peak_cuda_mib" in m["kd"] else "")]
        for name in ("kd", "kd-live"):
            cuda = f" {m[name]['peak_cuda_mib']:.0f} |" if "peak_cuda_mib" in m[name] else ""
            lines.append(f"| {name} | {m[name]['teacher']} | {m[name]['peak_rss_mib']:.0f} |{cuda}")
        lines += ["", f"{m['steps']} steps each; the live teacher adds {m['live_minus_cached_mib']:.0f} MiB of peak RSS.",
                  ""]
    if "flops" in r:
        f = r["flops"]
        lines += ["## Achieved FLOP/s of sft", "",
                  f"6 x {f['matmul_params']:,} matmul parameters x {f['tokens_per_step']:.0f} tokens / "
                  f"{f['step_s']:.3f} s = {f['achieved_flops'] / 1e9:.2f} GFLOP/s; fp32 {f['matmul_n']}x{f['matmul_n']} "
                  f"matmul peak {f['peak_flops'] / 1e9:.2f} GFLOP/s; utilisation {f['utilisation']:.1%} (goal >= "
                  f"{FLOPS_GOAL:.0%}: {yes_no(f.get('goal_met'))}). The LM head is counted at every token (model "
                  "FLOPs) though it runs on response positions only.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    default_data = os.environ.get("BENCH_DATA_DIR") or str(ROOT.parent / "shared")
    p.add_argument("--data-dir", type=Path, default=Path(default_data))
    p.add_argument("--label", default="cpu-2core")
    p.add_argument("--out-dir", type=Path, default=ROOT / "perf" / "results")
    p.add_argument("--cache-dir", type=Path, default=None, help="signal cache (default: a temporary folder)")
    p.add_argument("--only", default=",".join(FIGURES), help=f"figures among {','.join(FIGURES)}")
    p.add_argument("--methods", default=None, help=f"default {METHOD_LIST} ({QUICK_METHODS} with --quick)")
    p.add_argument("--pair", default="smollm2-135m")
    p.add_argument("--budget", default="smoke", help="base budget; the options below override its shape")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=48)
    p.add_argument("--train-examples", type=int, default=48)
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 4, 2 with --quick)")
    p.add_argument("--gen-batch", type=int, default=None, help="prompts generated (default 16, 4 with --quick)")
    p.add_argument("--gen-new-tokens", type=int, default=None, help="max new tokens (default 32, 8 with --quick)")
    p.add_argument("--matmul-n", type=int, default=2048)
    p.add_argument("--matmul-reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--quick", action="store_true", help="development: fewer, shorter measurements")
    p.add_argument("--child-time", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    defaults = {"warmup": (1, 1), "steps": (4, 2), "gen_batch": (16, 4), "gen_new_tokens": (32, 8),
                "methods": (METHOD_LIST, QUICK_METHODS)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.only = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = set(args.only) - set(FIGURES)
    if unknown:
        p.error(f"unknown figure(s) {', '.join(sorted(unknown))}; choose among {', '.join(FIGURES)}")
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be at least 1 and --warmup at least 0")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child_time:
        time_child(args, args.child_time)
        return
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-speed-") as tmp:
        args.cache_dir = args.cache_dir or Path(tmp) / "cache"
        report = {"label": args.label, "machine": machine(), "versions": versions(), "git_revision": git_revision(),
                  "command": command(),
                  "settings": {k: getattr(args, k) for k in ("pair", "budget", "batch_size", "grad_accum", "seq_len",
                                                             "prompt_len", "train_examples", "warmup", "steps",
                                                             "threads")}}
        bench = Bench(args, args.cache_dir, args.warmup + args.steps)
        report["settings"]["methods"] = args.methods.split(",")
        if "methods" in args.only:
            report["methods"] = fig_methods(bench, report["settings"]["methods"])
        if "trl" in args.only:
            report["trl"] = fig_trl(bench, Path(tmp) / "trl")
        if "generation" in args.only:
            report["generation"] = fig_generation(bench)
        if "memory" in args.only:
            report["memory"] = fig_memory(bench)
        if "flops" in args.only:
            report["flops"] = fig_flops(bench)
    report["wall_clock_s"] = time.perf_counter() - t0
    report["cpu_pressure_at_end"] = cpu_pressure()
    text = markdown(report)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"speed-{args.label}"
    stem.with_suffix(".md").write_text(text + "\n")
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(text)
    say(f"wrote {stem}.md and .json in {report['wall_clock_s']:.0f} s")


if __name__ == "__main__":
    main()
