"""``bench eval``: score the checkpoints of a finished run on a judge benchmark.

Each row of a run (its methods, the teacher, the untrained student) answers the benchmark's questions; the
judge grades the answers through the judgment cache; the scores go to
``results/<pair>/<run>/<row>/benchmarks/<benchmark>.json`` with the judge's identity, the subset and every
setting that makes the number what it is. Answers are cached stages too, so a second call makes no model or
judge call. Benchmarks: MT-Bench (single-answer grading), Arena-Hard v0.1, AlpacaEval 2.

Verdicts are ``free`` (the judge writes text, parsed as upstream parses it: the protocol) or ``constrained``
(local judges only: the judge's most likely verdict string among the benchmark's own, e.g. `` [[1]]`` ...
`` [[10]]`` after ``Rating:``), for small judges that seldom write a parseable verdict. Constrained results are
labelled so and never share a leaderboard column with free ones.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import harness
from harness.cache import StageCache, file_fingerprint, stable_hash
from harness.errors import BenchError
from harness.files import write_json_atomic, write_text_atomic
from harness.judges import Decoding, Judge, JudgmentCache, OpenAIJudge, TransformersJudge, judge_all
from harness.log import log
from harness.registry import PAIRS

OFFICIAL_JUDGES = {"mt_bench": ("gpt-4", "gpt-4-0613")}  # the alias and the snapshot the maintainers used
VERDICTS = ("free", "constrained")
# What a constrained judge chooses from, per benchmark: (prefix, choices); the parsers read prefix + choice.
MT_BENCH_CHOICES = ("Rating:", tuple(f" [[{k}]]" for k in range(1, 11)))
ARENA_HARD_CHOICES = ("My final verdict is:", tuple(f" [[{v}]]" for v in ("A>>B", "A>B", "A=B", "B>A", "B>>A")))
ALPACA_EVAL_CHOICES = ("", ("m", "M"))  # the weighted annotator's two verdict tokens


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

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise BenchError(f"--verdict must be one of {', '.join(VERDICTS)}, not {self.verdict!r}.")
        if self.judge_concurrency < 1:
            raise BenchError(f"--judge-concurrency must be at least 1, not {self.judge_concurrency}.")
        if self.limit is not None and self.limit < 1:
            raise BenchError(f"--limit must be a positive number of questions, not {self.limit}.")


JUDGED = ("mt_bench", "arena_hard", "alpaca_eval")


def parse_benchmarks(text: str) -> list[str]:
    names = [b.strip() for b in text.split(",") if b.strip()]
    unknown = [b for b in names if b not in BENCHMARKS and not (b.startswith("lm_eval:") and len(b) > 8)]
    if unknown or not names:
        raise BenchError(f"Unknown benchmark(s) {', '.join(unknown) or '(none given)'}; available: "
                         f"{', '.join(BENCHMARKS)}, and lm_eval:<task> for any lm-eval task (e.g. lm_eval:gsm8k).")
    return list(dict.fromkeys(names))


def check_benchmarks(opts: EvalOptions, names: list[str]) -> None:
    """Everything that can be checked before any model is loaded."""
    if any(n in JUDGED for n in names):
        make_judge(opts, PAIRS.get(opts.pair))
    if "rm_winrate" in names and not opts.reward_model:
        raise BenchError("rm_winrate needs --reward-model: a sequence-classification reward model (hub id or local "
                         "folder), e.g. Skywork/Skywork-Reward-V2-Llama-3.1-8B.")


def run_benchmarks(opts: EvalOptions, names: list[str]) -> list[tuple[str, Path]]:
    check_benchmarks(opts, names)
    lm_tasks = [n.partition(":")[2] for n in names if n.startswith("lm_eval:")]
    written = []
    for name in names:
        if name in BENCHMARKS:
            written += [(name, path) for path in BENCHMARKS[name](opts)]
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
    records = {p.parent.name: json.loads(p.read_text()) for p in sorted(run_dir.glob("*/record.json"))}
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

    from harness.generation import backend_key, choose_engine, resumable
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


# ---------------------------------------------------------------- MT-Bench


def mt_bench_answers(model, tokenizer, questions: list[dict], max_new_tokens: int, seed: int) -> list[list[str]]:
    """Two turns per question with FastChat's per-category temperature, turn 2 seeing the model's own turn 1."""
    from harness.benchmarks import mt_bench
    from harness.generation import generate

    answers: list[list[str]] = [[] for _ in questions]
    for turn in (0, 1):
        by_temperature: dict[float, list[int]] = {}
        for i, q in enumerate(questions):
            by_temperature.setdefault(mt_bench.temperature_for(q["category"]), []).append(i)
        for temperature, idx in sorted(by_temperature.items()):
            chats = []
            for i in idx:
                chat = []
                for t in range(turn + 1):
                    chat.append({"role": "user", "content": questions[i]["turns"][t]})
                    if t < turn:
                        chat.append({"role": "assistant", "content": answers[i][t]})
                chats.append(chat)
            greedy = temperature < mt_bench.GREEDY_BELOW
            outs = generate(model, tokenizer, chats, max_new_tokens, do_sample=not greedy,
                            temperature=temperature if not greedy else 1.0, seed=seed + turn,
                            desc=f"MT-Bench turn {turn + 1} (T={temperature})")
            for i, out in zip(idx, outs):
                answers[i].append(out["text"])
    return answers


def eval_mt_bench(opts: EvalOptions) -> list[Path]:
    from harness.benchmarks import mt_bench

    root = data_root(opts, "mt_bench")
    opts = dataclasses.replace(opts, max_new_tokens=opts.max_new_tokens or mt_bench.ANSWER_MAX_NEW_TOKENS,
                               judge_max_tokens=opts.judge_max_tokens or mt_bench.JUDGE_MAX_TOKENS)
    questions = stratified_subset(mt_bench.load_questions(root), "category", opts.limit, opts.seed)
    prompts = mt_bench.load_judge_prompts(root)
    references, ref_hash = mt_bench.load_reference_answers(opts.mt_bench_reference or mt_bench.reference_path(root))
    pair, records = run_rows(opts)
    judge = make_judge(opts, pair)
    decoding = judge_decoding(opts, mt_bench.JUDGE_TEMPERATURE, opts.judge_max_tokens, MT_BENCH_CHOICES)
    judgments = judgment_cache(opts)
    written = []
    for row, record in records.items():
        t0 = time.perf_counter()
        ids = [q["question_id"] for q in questions]
        answers, key = row_answers(opts, pair, row, record, "mt_bench", ids, {"max_new_tokens": opts.max_new_tokens},
                                   lambda m, tok: mt_bench_answers(m, tok, questions, opts.max_new_tokens, opts.seed),
                                   any_backend=True)
        requests, meta = [], []
        for q, ans in zip(questions, answers):
            for turn in (1, 2):
                name, messages = mt_bench.judge_messages(q, ans, turn, prompts, references.get(q["question_id"]))
                requests.append(messages)
                meta.append({"question_id": q["question_id"], "category": q["category"], "turn": turn,
                             "prompt": name, "question": q["turns"][turn - 1]})
        results, counts = judge_all(judge, requests, decoding, judgments, desc=f"judge MT-Bench {row}")
        rows = [{**m, "score": mt_bench.parse_rating(r.text) if r.error is None else mt_bench.FAILED,
                 "judgment": r.text, "error": r.error} for m, r in zip(meta, results)]
        metrics = mt_bench.aggregate(rows)
        if decoding.choices:
            metrics.update(expected_rating(rows, results))
        result = {
            **result_header(opts, "mt_bench", row, judge, decoding, OFFICIAL_JUDGES["mt_bench"], ids, key, t0),
            "metrics": metrics, "n_questions": len(questions), "reference_answers_sha256": ref_hash,
            "judge_prompts_sha256": file_fingerprint(mt_bench.data_file(root, "judge_prompts.jsonl")),
            "judge_calls": counts,
        }
        path = write_result(opts, row, "mt_bench", result,
                            [{**r, "answers": a} for r, a in zip(rows, [ans for ans in answers for _ in (1, 2)])])
        score = metrics.get("score")
        log.info(f"MT-Bench {row}: score {score if score is None else round(score, 3)} on {metrics['n']} judgments, "
            f"{metrics['n_failed']} unparsed ({counts['called']} judge calls, {counts['cached']} cached)")
        written.append(path)
    return written


def expected_rating(rows: list[dict], results: list) -> dict:
    """With constrained verdicts: each judgment's probability-weighted rating over the ten choices (renormalised),
    read from the log-probs the judge already returned. A small judge's most likely rating barely moves (the
    argmax is often the same number for every answer); this graded reading of the same judgments still does.
    Reported beside the protocol's score, never instead of it."""
    values = []
    for row, r in zip(rows, results):
        if r.error is not None or not r.top_logprobs:
            row["expected_score"] = None
            continue
        top = max(v for _, v in r.top_logprobs)
        weights = [math.exp(v - top) for _, v in r.top_logprobs]
        row["expected_score"] = sum(w * (k + 1) for k, w in enumerate(weights)) / sum(weights)
        values.append(row["expected_score"])
    n = len(values)
    mean = sum(values) / n if n else None
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n >= 2 else None
    return {"expected_score": mean, "expected_score_se": se, "expected_score_n": n}


# ---------------------------------------------------------------- Arena-Hard v0.1


def eval_arena_hard(opts: EvalOptions) -> list[Path]:
    """Greedy answers, two games per question against gpt-4-0314 (positions swapped), the v0.1 judge config
    and verdict weights, the Bradley-Terry score with a seeded bootstrap 95% interval."""
    import re
    from concurrent.futures import ThreadPoolExecutor

    from harness.benchmarks import arena_hard
    from harness.judges import cached_judge

    root = data_root(opts, "arena_hard")
    opts = dataclasses.replace(opts, max_new_tokens=opts.max_new_tokens or arena_hard.ANSWER_MAX_TOKENS)
    config = arena_hard.load_judge_config(root)
    questions = stratified_subset(arena_hard.load_questions(root), "cluster", opts.limit, opts.seed)
    baseline = arena_hard.load_answers(root, config["baseline_model"])
    pattern = re.compile(config["regex_pattern"])
    pair, records = run_rows(opts)
    judge = make_judge(opts, pair)
    max_tokens = opts.judge_max_tokens or int(config["max_tokens"])
    decoding = judge_decoding(opts, float(config["temperature"]), max_tokens, ARENA_HARD_CHOICES)
    cache = judgment_cache(opts)
    written = []
    for row, record in records.items():
        t0 = time.perf_counter()
        ids = [q["uid"] for q in questions]
        answers, key = greedy_answers(opts, pair, row, record, "arena_hard", ids, [q["prompt"] for q in questions])
        calls = {"n": 0}
        lock = threading.Lock()

        def play(i_game, answers=answers, calls=calls, lock=lock):
            i, g = i_game
            a, b = arena_hard.games(questions[i], baseline[questions[i]["uid"]], answers[i])[g]

            def generate_one(messages):
                result, called = cached_judge(judge, cache, messages, decoding)
                with lock:
                    calls["n"] += called
                return result.text

            return arena_hard.run_game(generate_one, arena_hard.judge_messages(config, questions[i], a, b), pattern)

        with ThreadPoolExecutor(max_workers=max(1, getattr(judge, "concurrency", 1))) as pool:
            games = list(pool.map(play, [(i, g) for i in range(len(questions)) for g in (0, 1)]))
        rows, battles = [], []
        for i, q in enumerate(questions):
            g1, g2 = games[2 * i], games[2 * i + 1]
            battles += arena_hard.battles(g1["verdict"], g2["verdict"])
            rows.append({"uid": q["uid"], "cluster": q["cluster"], "question": q["prompt"], "answer": answers[i],
                         "games": [{"verdict": g["verdict"], "judgment": g["judgment"]} for g in (g1, g2)]})
        unparsed = sum(g["verdict"] is None for g in games)
        metrics = {"n_questions": len(questions), "n_games": len(games), "n_unparsed_games": unparsed,
                   "n_battles": len(battles), "score": None, "ci95": None}
        if battles:
            metrics["score"] = arena_hard.score(battles)
            metrics["ci95"] = list(arena_hard.bootstrap_interval(battles))
        result = {**result_header(opts, "arena_hard_v0.1", row, judge, decoding, (config["judge_model"],), ids, key,
                                  t0),
                  "metrics": metrics, "baseline": config["baseline_model"], "judge_calls": calls["n"],
                  "judge_config_sha256": file_fingerprint(arena_hard.data_file(root, "judge_config.yaml"))}
        written.append(write_result(opts, row, "arena_hard", result, rows))
        log.info(f"Arena-Hard {row}: score {metrics['score']} on {len(battles)} battles, {unparsed} of {len(games)} "
            f"games without a verdict ({calls['n']} judge calls)")
    return written


# ---------------------------------------------------------------- AlpacaEval 2


def eval_alpaca_eval(opts: EvalOptions) -> list[Path]:
    """Greedy answers to the instructions, the weighted GPT-4 Turbo annotator's prompt and position switch, the
    preference from the judge's first-token log-probs of ``m`` and ``M``, upstream's win rate and standard error,
    and the ``length_controlled_minimal`` GLM (never presented as the official LC, which needs hub files)."""
    from harness.benchmarks import alpaca_eval
    from harness.benchmarks.download import fetch_alpaca_eval_lc_files

    opts = dataclasses.replace(opts, max_new_tokens=opts.max_new_tokens or alpaca_eval.ANSWER_MAX_NEW_TOKENS)
    root = data_root(opts, "alpaca_eval")
    eval_set = [{**r, "index": i} for i, r in enumerate(alpaca_eval.load_eval_set(root))]
    subset = stratified_subset(eval_set, "dataset", opts.limit, opts.seed)
    pair, records = run_rows(opts)
    judge = make_judge(opts, pair)
    official = alpaca_eval.JUDGE_DECODING
    decoding = judge_decoding(opts, official["temperature"], official["max_tokens"], ALPACA_EVAL_CHOICES,
                              top_logprobs=official["top_logprobs"])
    cache = judgment_cache(opts)
    lc_files = fetch_alpaca_eval_lc_files(opts.cache_dir, opts.data_dir)
    written = []
    for row, record in records.items():
        t0 = time.perf_counter()
        ids = [r["index"] for r in subset]
        answers, key = greedy_answers(opts, pair, row, record, "alpaca_eval", ids,
                                      [r["instruction"] for r in subset])
        outputs = [{"instruction": r["instruction"], "output": a, "generator": row} for r, a in zip(subset, answers)]
        plan = [{**p, "index": r["index"]} for p, r in zip(alpaca_eval.judge_plan(subset, outputs), subset)]
        to_judge = [p["messages"] for p in plan if p["messages"] is not None]
        judged, counts = judge_all(judge, to_judge, decoding, cache, desc=f"judge AlpacaEval {row}")
        judged = iter(judged)
        annotations = []
        for p in plan:
            messages = p.pop("messages")
            j = next(judged) if messages is not None else None
            if j is None:
                preference = alpaca_eval.DRAW
            elif j.error is not None:
                preference = None  # a failed call: missing, counted, tried again by a re-run
            else:
                preference = alpaca_eval.preference_from_top_logprobs(j.top_logprobs, p["switched"])
            annotations.append({**p, "preference": preference, "error": None if j is None else j.error,
                                "top_logprobs": None if j is None or j.top_logprobs is None
                                else [list(t) for t in j.top_logprobs]})
        metrics = alpaca_eval.summarize([a["preference"] for a in annotations], outputs)
        scored = [a for a in annotations if a["preference"] is not None and not math.isnan(a["preference"])]
        if lc_files and scored:  # the official LC, when its two hub files could be had
            metrics.update(alpaca_eval.length_controlled_official(scored, lc_files))
        if len(scored) >= alpaca_eval.LC_MIN_ROWS:
            metrics.update(alpaca_eval.length_controlled_minimal(scored))
        else:
            metrics["lc_win_rate_minimal"] = None
            metrics["lc_variant"] = (f"length_controlled_minimal needs at least {alpaca_eval.LC_MIN_ROWS} judged "
                                     f"rows; {len(scored)} here")
        result = {**result_header(opts, "alpaca_eval_2", row, judge, decoding, (official["model"],), ids, key, t0),
                  "metrics": metrics, "annotator": alpaca_eval.ANNOTATOR,
                  "judge_prompt_sha256": stable_hash(alpaca_eval.annotator_config()[1], 16),
                  "reference_generator": alpaca_eval.REFERENCE_GENERATOR, "judge_calls": counts,
                  "eval_set_sha256": file_fingerprint(alpaca_eval.eval_set_path(root))}
        written.append(write_result(opts, row, "alpaca_eval", result, annotations))
        log.info(f"AlpacaEval 2 {row}: win rate {metrics['win_rate']:.2f} ± {metrics['standard_error']:.2f} on "
            f"{metrics['n_total']} rows, {metrics['n_missing']} missing ({counts['called']} judge calls, "
            f"{counts['cached']} cached)")
    return written


# ---------------------------------------------------------------- reward-model win rate


def cached_scorer(scorer, identity: dict, cache: JudgmentCache):
    """A scorer whose rewards go through the judgment cache (a reward is a judgment: kept as its repr)."""
    from harness.judges import Judgment

    def score(pairs):
        keys = [stable_hash({"reward_model": identity, "messages": m, "response": r}, 32) for m, r in pairs]
        todo = [i for i, k in enumerate(keys) if cache.get(k) is None]
        if todo:
            for i, reward in zip(todo, scorer([pairs[i] for i in todo])):
                cache.put(keys[i], Judgment(repr(float(reward))))
        score.calls += len(todo)
        return [float(cache.get(k).text) for k in keys]

    score.calls = 0
    return score


def eval_rm_winrate(opts: EvalOptions, scorer=None) -> list[Path]:
    """Each row's greedy answers to the run's held-out prompts (written by `bench run`) against the reference
    row's answers to the same prompts, scored by a reward model; hard and soft win rates with intervals.
    ``scorer`` replaces the reward model (tests, or a user's own)."""
    from harness.benchmarks import rm_winrate

    pair, records = run_rows(dataclasses.replace(opts, rows=None))
    if opts.rm_reference not in records:
        raise BenchError(f"--rm-reference {opts.rm_reference!r} is not a row of the run; it has "
                         f"{', '.join(records)}.")
    run_dir = opts.results_dir / opts.pair / opts.run

    def answers_of(row):
        path = run_dir / row / "answers.jsonl"
        if not path.exists():
            raise BenchError(f"{path} is missing: rm_winrate compares the answers `bench run` writes; re-run the "
                             "row with a budget that generates answers (gen_eval_examples > 0).")
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    reference = answers_of(opts.rm_reference)
    picked = stratified_subset([{**a, "index": i, "stratum": ""} for i, a in enumerate(reference)], "stratum",
                               opts.limit, opts.seed)
    ids = [a["index"] for a in picked]
    if scorer is None:
        model = rm_winrate.RewardModel(opts.reward_model, trust_remote_code=opts.trust_remote_code)
        identity, scorer = model.identity(), model
    else:
        identity = {"kind": "scorer", "model": getattr(scorer, "name", type(scorer).__name__)}
    score = cached_scorer(scorer, identity, judgment_cache(opts, "rewards"))
    written = []
    for row in (opts.rows or list(records)):
        if row == opts.rm_reference:
            continue
        t0 = time.perf_counter()
        answers = answers_of(row)
        if [a["prompt"] for a in answers] != [a["prompt"] for a in reference]:
            raise BenchError(f"Rows {row!r} and {opts.rm_reference!r} answered different prompts; both must come "
                             "from the same run.")
        prompts = [[{"role": "user", "content": reference[i]["prompt"]}] for i in ids]
        calls = score.calls
        summary, per_row = rm_winrate.score_against_reference(
            prompts, [answers[i]["answer"] for i in ids], [reference[i]["answer"] for i in ids], score, opts.seed)
        result = {"benchmark": "rm_winrate", "row": row, "reference": opts.rm_reference, "reward_model": identity,
                  "metrics": summary, "limit": opts.limit, "question_ids": ids, "seed": opts.seed,
                  "reward_calls": score.calls - calls, "wall_clock_s": round(time.perf_counter() - t0, 2),
                  "bench_version": harness.__version__}
        written.append(write_result(opts, row, "rm_winrate", result, per_row))
        log.info(f"RM win rate {row} vs {opts.rm_reference}: {summary['win_rate']:.1f} ± "
            f"{summary['win_rate_se'] or 0:.1f} (soft {summary['soft_win_rate']:.1f}) on {summary['n']} prompts")
    return written


BENCHMARKS = {"mt_bench": eval_mt_bench, "arena_hard": eval_arena_hard, "alpaca_eval": eval_alpaca_eval,
              "rm_winrate": eval_rm_winrate}


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
