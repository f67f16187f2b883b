"""``bench eval``: score the checkpoints of a finished run on a judge benchmark.

Each row of a run (its methods, the teacher, the untrained student) answers the benchmark's questions; the
judge grades the answers through the judgment cache; the scores go to
``results/<pair>/<run>/<row>/benchmarks/<benchmark>.json`` with the judge's identity, the subset and every
setting that makes the number what it is. Answers are cached stages too, so a second call makes no model or
judge call. Each benchmark is a ``harness.benchmark.Benchmark`` whose runner this loop calls (the judged ones in
harness/judged.py).

Verdicts are ``free`` (the judge writes text, parsed as upstream parses it: the protocol) or ``constrained``
(local judges only: the judge's most likely verdict string among the benchmark's own, e.g. `` [[1]]`` ...
`` [[10]]`` after ``Rating:``), for small judges that seldom write a parseable verdict. Constrained results are
labelled so and never share a leaderboard column with free ones.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import harness
from harness.benchmark import benchmarks, get_benchmark
from harness.cache import StageCache, file_fingerprint, stable_hash
from harness.errors import BenchError
from harness.files import write_json_atomic, write_text_atomic
from harness.judges import Decoding, Judge, JudgmentCache, OpenAIJudge, TransformersJudge
from harness.log import log
from harness.registry import BENCHMARKS, PAIRS
from harness.schema import check_record

VERDICTS = ("free", "constrained")


@dataclass
class EvalOptions:
    results_dir: Path
    cache_dir: Path
    data_dir: Path | None  # None: the benchmark files are downloaded from upstream into the cache
    pair: str
    run: str
    judge: str | None = None  # "local:teacher", "local:<model id, folder or .gguf>", or "openai:<model>"
    judge_base_url: str | None = None
    judge_concurrency: int = 4  # requests in flight to an OpenAI-compatible judge
    limit: int | None = None
    max_new_tokens: int | None = None  # answer length; None: the benchmark's (MT-Bench 1024, Arena-Hard 4096)
    judge_max_tokens: int | None = None  # judge length; None: the benchmark's (MT-Bench 2048, Arena-Hard 4096)
    rows: list[str] | None = None
    seed: int = 0
    verdict: str = "free"  # "free" (the protocol) or "constrained" (local judges; see the module docstring)
    reward_model: str | None = None  # rm_winrate: hub id or local folder of a sequence classifier
    rm_reference: str = "teacher"  # rm_winrate: the row every row's answers are compared with
    lm_eval_include: Path | None = None  # lm_eval:<task>: extra task YAMLs
    mt_bench_reference: Path | None = None  # MT-Bench reference answers; None: upstream's gpt-4.jsonl
    trust_remote_code: bool = False
    arena_interval: str = "joint"  # Arena-Hard: "joint" (every row's battles in one bootstrap, as upstream) or "per-row"

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise BenchError(f"--verdict must be one of {', '.join(VERDICTS)}, not {self.verdict!r}.")
        if self.judge_concurrency < 1:
            raise BenchError(f"--judge-concurrency must be at least 1, not {self.judge_concurrency}.")
        if self.arena_interval not in ("joint", "per-row"):
            raise BenchError(f"--arena-interval must be joint or per-row, not {self.arena_interval!r}.")
        if self.limit is not None and self.limit < 1:
            raise BenchError(f"--limit must be a positive number of questions, not {self.limit}.")


def parse_benchmarks(text: str) -> list[str]:
    """Benchmark ids (old names accepted) and ``lm_eval:<task>`` entries, each once, in the order given."""
    names = [b.strip() for b in text.split(",") if b.strip()]
    unknown = [b for b in names if not (b.startswith("lm_eval:") and len(b) > 8)
               and not (b in BENCHMARKS and get_benchmark(b).runner is not None)]
    if unknown or not names:
        known = ", ".join(b.id for b in benchmarks() if b.runner is not None)
        raise BenchError(f"Unknown benchmark(s) {', '.join(unknown) or '(none given)'}; available: {known}, and "
                         "lm_eval:<task> for any lm-eval task (e.g. lm_eval:gsm8k).")
    return list(dict.fromkeys(b if b.startswith("lm_eval:") else get_benchmark(b).id for b in names))


def check_benchmarks(opts: EvalOptions, names: list[str]) -> None:
    """Everything that can be checked before any model is loaded."""
    if any(get_benchmark(n).judged for n in names if not n.startswith("lm_eval:")):
        make_judge(opts, PAIRS.get(opts.pair))
    if "rm_winrate" in names and not opts.reward_model:
        raise BenchError("rm_winrate needs --reward-model: a sequence-classification reward model (hub id or local "
                         "folder), e.g. Skywork/Skywork-Reward-V2-Llama-3.1-8B.")


def run_benchmarks(opts: EvalOptions, names: list[str]) -> list[tuple[str, Path]]:
    """Each benchmark's runner in turn; the lm-eval tasks together (one model load per row for all of them)."""
    check_benchmarks(opts, names)
    lm_tasks = [n.partition(":")[2] for n in names if n.startswith("lm_eval:")]
    written = []
    for name in names:
        if not name.startswith("lm_eval:"):
            bench = get_benchmark(name)
            written += [(bench.id, path) for path in bench.run(opts)]
    if lm_tasks:
        written += [("lm_eval", path) for path in eval_lm_eval(opts, lm_tasks)]
    return written


def make_judge(opts: EvalOptions, pair) -> Judge:
    if not opts.judge:
        raise BenchError("The judged benchmarks (mt_bench, arena_hard, alpaca_eval) need --judge: local:teacher, "
                         "local:<hub id, folder or .gguf>, or openai:<model> with --judge-base-url for a server.")
    kind, _, name = opts.judge.partition(":")
    if kind == "openai" and name:
        if opts.verdict == "constrained":
            raise BenchError("--verdict constrained needs a local judge (local:...): chat-completion servers do not "
                             "score whole verdict strings. Use --verdict free with an OpenAI-compatible judge.")
        return OpenAIJudge(name, base_url=opts.judge_base_url, concurrency=opts.judge_concurrency)
    if kind == "local" and name:
        from harness.models import ModelSpec

        return TransformersJudge(pair.teacher if name == "teacher" else ModelSpec(name))
    raise BenchError(f"Unknown judge {opts.judge!r}. Use local:teacher (the pair's teacher), local:<hub id, folder "
                     "or .gguf>, or openai:<model> with --judge-base-url for a vLLM / transformers serve / llama.cpp "
                     "server (key from OPENAI_API_KEY).")


def stratified_subset(items: list[dict], key: str, limit: int | None, seed: int) -> list[dict]:
    """A seeded subset that takes the strata (categories) in turn, so a small limit still covers them all."""
    if not limit or limit >= len(items):
        return items
    rng = random.Random(seed)
    strata: dict[str, list[dict]] = {}
    for item in items:
        strata.setdefault(item[key], []).append(item)
    for group in strata.values():
        rng.shuffle(group)
    order = sorted(strata)
    picked = []
    while len(picked) < limit:
        for name in order:
            if strata[name] and len(picked) < limit:
                picked.append(strata[name].pop())
    return sorted(picked, key=_item_id)


def _item_id(item: dict):
    value = item.get("question_id", item.get("uid", item.get("index")))
    return (0, value, "") if isinstance(value, int) else (1, 0, str(value))


def judge_decoding(opts: EvalOptions, temperature: float, max_tokens: int, choices: tuple,
                   top_logprobs: int = 0) -> Decoding:
    """The benchmark's judge decoding; constrained verdicts choose among ``choices`` = (prefix, strings)."""
    if opts.verdict == "constrained":
        return Decoding(temperature=temperature, max_tokens=max_tokens, prefix=choices[0], choices=choices[1])
    return Decoding(temperature=temperature, max_tokens=max_tokens, top_logprobs=top_logprobs)


def judgment_cache(opts: EvalOptions, name: str = "judgments") -> JudgmentCache:
    """One append-only cache per kind for every benchmark and run: a judgment is reused wherever it recurs."""
    return JudgmentCache(opts.cache_dir / "judgments" / f"{name}.jsonl")


def run_rows(opts: EvalOptions) -> tuple[object, dict[str, dict]]:
    """The run's rows with how to load each one's model."""
    run_dir = opts.results_dir / opts.pair / opts.run
    records = {p.parent.name: check_record(json.loads(p.read_text()), p) for p in sorted(run_dir.glob("*/record.json"))}
    if not records:
        raise BenchError(f"No results under {run_dir}. Run `bench run ... --pair {opts.pair}` first, or pass "
                         "--results-dir / --run.")
    pair = PAIRS.get(opts.pair)
    if opts.rows:
        unknown = sorted(set(opts.rows) - set(records))
        if unknown:
            raise BenchError(f"Rows {', '.join(unknown)} are not in {run_dir}; it has {', '.join(records)}.")
        records = {k: v for k, v in records.items() if k in opts.rows}
    return pair, records


def row_checkpoint(opts: EvalOptions, row: str, record: dict) -> Path | None:
    """A row's weights folder in the cache; None for the pair's own models (teacher, student-init)."""
    if row == "teacher":
        return None
    if row == "student-init":
        if record.get("warmstart_steps"):
            raise BenchError("Scoring a warm-started student-init row is not supported yet; drop it with --rows.")
        return None
    folder = opts.cache_dir / "train" / record["train_stage_key"] / "checkpoint"
    if not folder.exists():
        raise BenchError(f"The weights of {row!r} are not in the cache ({folder}): its budget saved no checkpoint, "
                         "or the cache was cleared. Re-run the method with a budget that saves checkpoints.")
    return folder


def load_row_model(opts: EvalOptions, pair, row: str, record: dict):
    import torch

    from harness.models import load_model
    from harness.pipeline import load_model_from

    device = "cuda" if torch.cuda.is_available() else "cpu"
    folder = row_checkpoint(opts, row, record)
    if folder is None:
        return load_model(pair.teacher if row == "teacher" else pair.student).to(device)
    return load_model_from(folder).to(device)


def row_vllm_backend(opts: EvalOptions, pair, row: str, record: dict):
    """vLLM on a row's weights: its checkpoint folder, or the pair's model where ``load_model`` finds it."""
    import os

    from harness.generation import VLLMBackend
    from harness.models import materialise

    folder = row_checkpoint(opts, row, record)
    if folder is not None:
        return VLLMBackend(folder)
    spec = pair.teacher if row == "teacher" else pair.student
    where = materialise(spec)
    return VLLMBackend(where, revision=None if os.path.isdir(where) else spec.revision)


def model_key(pair, row: str, record: dict) -> str:
    if row == "teacher":
        return stable_hash(pair.teacher.identity())
    if row == "student-init":
        return stable_hash(pair.student.identity())
    return record["train_stage_key"]


def row_answers(opts: EvalOptions, pair, row: str, record: dict, benchmark: str, ids: list, settings: dict,
                make, *, any_backend: bool = False) -> tuple[list, str]:
    """A row's answers to a benchmark's questions, from the cache or made now by ``make(model, tokenizer)``.
    ``any_backend``: ``make`` generates only through harness.generation, so ``model`` may be the
    GenerationBackend that $BENCH_GENERATION_BACKEND picks; otherwise it is always the HF model. A killed run
    resumes its generation from the batches journalled so far."""

    from harness.generation import backend_key, choose_engine
    from harness.journal import resumable
    from harness.models import load_tokenizer

    engine = choose_engine(has_model_path=True) if any_backend else "hf"
    cache = StageCache(opts.cache_dir)
    key = stable_hash({"answers": benchmark, "model": model_key(pair, row, record), "questions": ids,
                       **settings, "seed": opts.seed, "bench": harness.__version__, **backend_key(engine)})
    if not cache.has("answers", key):
        with resumable(cache.partial("answers", key)):
            if engine == "vllm":
                model = row_vllm_backend(opts, pair, row, record)
            else:
                model = load_row_model(opts, pair, row, record)
            answers = make(model, load_tokenizer(pair.teacher if row == "teacher" else pair.student))
            del model
        with cache.build("answers", key) as out:
            write_json_atomic(out / "answers.json", answers)
    return json.loads((cache.path("answers", key) / "answers.json").read_text()), key


def greedy_answers(opts: EvalOptions, pair, row: str, record: dict, benchmark: str, ids: list,
                   prompts: list[str]) -> tuple[list[str], str]:
    """A row's greedy single-turn answers (Arena-Hard, AlpacaEval), cached like every answer stage."""
    from harness.generation import generate

    chats = [[{"role": "user", "content": p}] for p in prompts]
    return row_answers(opts, pair, row, record, benchmark, ids, {"max_new_tokens": opts.max_new_tokens},
                       lambda m, tok: [a["text"] for a in generate(m, tok, chats, opts.max_new_tokens,
                                                                   desc=f"{benchmark} answers")],
                       any_backend=True)


def data_root(opts: EvalOptions, benchmark: str) -> Path:
    """The folder to read a benchmark's files from: --data-dir as given, else upstream's files downloaded once
    into the cache."""
    from harness.benchmarks.download import ensure_benchmark_files

    return ensure_benchmark_files(benchmark, opts.data_dir, opts.cache_dir)


def result_header(opts: EvalOptions, benchmark: str, row: str, judge: Judge, decoding: Decoding,
                  official_models: tuple, question_ids: list, answers_key: str, t0: float) -> dict:
    """What every benchmark result records besides its metrics: who judged, how, on which questions."""
    identity = judge.identity()
    return {"benchmark": benchmark, "row": row, "judge": identity,
            "official_judge": identity.get("kind") == "openai" and identity.get("model") in official_models
            and opts.verdict == "free",
            "verdict": opts.verdict, "judge_decoding": decoding.to_dict(), "limit": opts.limit,
            "question_ids": question_ids, "answer_max_new_tokens": opts.max_new_tokens, "seed": opts.seed,
            "answers_stage_key": answers_key, "wall_clock_s": round(time.perf_counter() - t0, 2),
            "bench_version": harness.__version__}


def write_result(opts: EvalOptions, row: str, benchmark: str, result: dict, lines: list[dict] | None) -> Path:
    folder = opts.results_dir / opts.pair / opts.run / row / "benchmarks"
    if lines is not None:  # first, so a score file never points at judgments that are not there yet
        write_text_atomic(folder / f"{benchmark}_judgments.jsonl",
                          "".join(json.dumps(x, sort_keys=True) + "\n" for x in lines))
    write_json_atomic(folder / f"{benchmark}.json", result)
    return folder / f"{benchmark}.json"


# ---------------------------------------------------------------- lm-eval tasks


def eval_lm_eval(opts: EvalOptions, tasks: list[str]) -> list[Path]:
    """Any lm-eval task on each row's checkpoint through lm-eval's Python API (one model load for all tasks);
    one result file per task, ``benchmarks/lm_eval_<task>.json``. ``--limit`` is a seeded subset of each task's
    documents, ``--max-new-tokens`` caps generation tasks."""
    from harness.benchmarks.lm_eval_tasks import run_tasks

    pair, records = run_rows(opts)
    include = str(opts.lm_eval_include) if opts.lm_eval_include else None
    settings = {"max_new_tokens": opts.max_new_tokens, "include": include and file_tree_fingerprint(include)}
    written = []
    for row, record in records.items():
        t0 = time.perf_counter()
        out, key = row_answers(opts, pair, row, record, "lm_eval", tasks, settings,
                               lambda m, tok: run_tasks(m, tok, tasks, limit=opts.limit, seed=opts.seed,
                                                        include_path=include, max_gen_toks=opts.max_new_tokens))
        for task in tasks:
            if task not in out["results"]:
                raise BenchError(f"lm-eval returned no result named {task!r} (it returned "
                                 f"{', '.join(out['results'])}); name the task or group exactly as lm-eval does.")
            config = out["tasks"].get(task, {})
            result = {"benchmark": "lm_eval", "row": row, "task": task, "tasks": {task: out["results"][task]},
                      "lm_eval_version": out["lm_eval_version"], "limit": opts.limit, "seed": opts.seed,
                      "question_ids": config.get("doc_indices"), "num_fewshot": out.get("num_fewshot"),
                      "answer_max_new_tokens": opts.max_new_tokens, "task_config": config,
                      "subtasks": out.get("groups", {}).get(task), "answers_stage_key": key,
                      "wall_clock_s": round(time.perf_counter() - t0, 2), "bench_version": harness.__version__}
            safe = task.replace("/", "_").replace(" ", "_")
            written.append(write_result(opts, row, f"lm_eval_{safe}", result, None))
            scores = ", ".join(f"{k} {v['value']:.3f}" for k, v in out["results"][task].items()
                               if isinstance(v.get("value"), (int, float)))
            log.info(f"lm-eval {task} {row}: {scores}")
    return written


def file_tree_fingerprint(folder: str) -> str:
    """Which task YAMLs a folder held: part of the cache key, so an edited task is run again."""
    paths = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    return stable_hash({str(p.relative_to(folder)): file_fingerprint(p) for p in paths})
