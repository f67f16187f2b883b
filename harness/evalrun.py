"""``bench eval``: score the checkpoints of a finished run on a judge benchmark.

Each row of a run (its methods, the teacher, the untrained student) answers the benchmark's questions; the
judge grades the answers through the judgment cache; the scores go to
``results/<pair>/<run>/<row>/benchmarks/<benchmark>.json`` with the judge's identity, the subset and every
setting that makes the number what it is. Answers are cached stages too, so a second call makes no model or
judge call. Today: MT-Bench (single-answer grading).
"""

from __future__ import annotations

import dataclasses
import json
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import harness
from harness.cache import StageCache, file_fingerprint, stable_hash, write_json_atomic
from harness.errors import BenchError
from harness.judges import Decoding, Judge, JudgmentCache, OpenAIJudge, TransformersJudge, judge_all
from harness.registry import PAIRS

OFFICIAL_JUDGES = {"mt_bench": ("gpt-4", "gpt-4-0613")}  # the alias and the snapshot the maintainers used


@dataclass
class EvalOptions:
    results_dir: Path
    cache_dir: Path
    data_dir: Path
    pair: str
    run: str
    judge: str  # "local:teacher", "local:<model id, folder or .gguf>", or "openai:<model>"
    judge_base_url: str | None = None
    limit: int | None = None
    max_new_tokens: int | None = None  # answer length; None: the benchmark's (MT-Bench 1024, Arena-Hard 4096)
    judge_max_tokens: int | None = None  # judge length; None: the benchmark's (MT-Bench 2048, Arena-Hard 4096)
    rows: list[str] | None = None
    seed: int = 0


def make_judge(opts: EvalOptions, pair) -> Judge:
    kind, _, name = opts.judge.partition(":")
    if kind == "openai" and name:
        return OpenAIJudge(name, base_url=opts.judge_base_url)
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
    return sorted(picked, key=lambda q: str(q.get("question_id", q.get("uid"))))


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


def load_row_model(opts: EvalOptions, pair, row: str, record: dict):
    import torch

    from harness.models import load_model
    from harness.pipeline import load_model_from

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if row == "teacher":
        return load_model(pair.teacher).to(device)
    if row == "student-init":
        if record.get("warmstart_steps"):
            raise BenchError("Scoring a warm-started student-init row is not supported yet; drop it with --rows.")
        return load_model(pair.student).to(device)
    folder = opts.cache_dir / "train" / record["train_stage_key"] / "checkpoint"
    if not folder.exists():
        raise BenchError(f"The weights of {row!r} are not in the cache ({folder}): its budget saved no checkpoint, "
                         "or the cache was cleared. Re-run the method with a budget that saves checkpoints.")
    return load_model_from(folder).to(device)


def model_key(pair, row: str, record: dict) -> str:
    if row == "teacher":
        return stable_hash(pair.teacher.identity())
    if row == "student-init":
        return stable_hash(pair.student.identity())
    return record["train_stage_key"]


def row_answers(opts: EvalOptions, pair, row: str, record: dict, benchmark: str, ids: list, settings: dict,
                make) -> tuple[list, str]:
    """A row's answers to a benchmark's questions, from the cache or made now by ``make(model, tokenizer)``."""
    from harness.models import load_tokenizer

    cache = StageCache(opts.cache_dir)
    key = stable_hash({"answers": benchmark, "model": model_key(pair, row, record), "questions": ids,
                       **settings, "seed": opts.seed, "bench": harness.__version__})
    if not cache.has("answers", key):
        model = load_row_model(opts, pair, row, record)
        answers = make(model, load_tokenizer(pair.teacher if row == "teacher" else pair.student))
        del model
        with cache.build("answers", key) as out:
            write_json_atomic(out / "answers.json", answers)
    return json.loads((cache.path("answers", key) / "answers.json").read_text()), key


def write_result(opts: EvalOptions, row: str, benchmark: str, result: dict, lines: list[dict]) -> Path:
    folder = opts.results_dir / opts.pair / opts.run / row / "benchmarks"
    write_json_atomic(folder / f"{benchmark}.json", result)
    (folder / f"{benchmark}_judgments.jsonl").write_text("".join(json.dumps(x, sort_keys=True) + "\n" for x in lines))
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
    from harness.pipeline import say

    root = opts.data_dir
    opts = dataclasses.replace(opts, max_new_tokens=opts.max_new_tokens or mt_bench.ANSWER_MAX_NEW_TOKENS,
                               judge_max_tokens=opts.judge_max_tokens or mt_bench.JUDGE_MAX_TOKENS)
    questions = stratified_subset(mt_bench.load_questions(root), "category", opts.limit, opts.seed)
    prompts = mt_bench.load_judge_prompts(root)
    references, ref_hash = mt_bench.load_reference_answers(mt_bench.reference_path(root))
    pair, records = run_rows(opts)
    judge = make_judge(opts, pair)
    decoding = Decoding(temperature=mt_bench.JUDGE_TEMPERATURE, max_tokens=opts.judge_max_tokens)
    judgments = JudgmentCache(opts.cache_dir / "judgments" / "judgments.jsonl")
    written = []
    for row, record in records.items():
        t0 = time.perf_counter()
        ids = [q["question_id"] for q in questions]
        answers, key = row_answers(opts, pair, row, record, "mt_bench", ids, {"max_new_tokens": opts.max_new_tokens},
                                   lambda m, tok: mt_bench_answers(m, tok, questions, opts.max_new_tokens, opts.seed))
        requests, meta = [], []
        for q, ans in zip(questions, answers):
            for turn in (1, 2):
                name, messages = mt_bench.judge_messages(q, ans, turn, prompts, references.get(q["question_id"]))
                requests.append(messages)
                meta.append({"question_id": q["question_id"], "category": q["category"], "turn": turn,
                             "prompt": name})
        results, counts = judge_all(judge, requests, decoding, judgments, desc=f"judge MT-Bench {row}")
        rows = [{**m, "score": mt_bench.parse_rating(r.text) if r.error is None else mt_bench.FAILED,
                 "judgment": r.text, "error": r.error} for m, r in zip(meta, results)]
        metrics = mt_bench.aggregate(rows)
        result = {
            "benchmark": "mt_bench", "row": row, "metrics": metrics, "judge": judge.identity(),
            "official_judge": judge.identity().get("kind") == "openai"
            and judge.identity().get("model") in OFFICIAL_JUDGES["mt_bench"],
            "judge_decoding": decoding.to_dict(), "limit": opts.limit, "n_questions": len(questions),
            "question_ids": ids, "answer_max_new_tokens": opts.max_new_tokens, "seed": opts.seed,
            "reference_answers_sha256": ref_hash,
            "judge_prompts_sha256": file_fingerprint(mt_bench.data_file(root, "judge_prompts.jsonl")),
            "judge_calls": counts, "answers_stage_key": key, "wall_clock_s": round(time.perf_counter() - t0, 2),
        }
        path = write_result(opts, row, "mt_bench", result,
                            [{**r, "answers": a} for r, a in zip(rows, [ans for ans in answers for _ in (1, 2)])])
        score = metrics.get("score")
        say(f"MT-Bench {row}: score {score if score is None else round(score, 3)} on {metrics['n']} judgments, "
            f"{metrics['n_failed']} unparsed ({counts['called']} judge calls, {counts['cached']} cached)")
        written.append(path)
    return written


# ---------------------------------------------------------------- Arena-Hard v0.1


def eval_arena_hard(opts: EvalOptions) -> list[Path]:
    """Greedy answers, two games per question against gpt-4-0314 (positions swapped), the v0.1 judge config
    and verdict weights, the Bradley-Terry score with a seeded bootstrap 95% interval."""
    import re
    from concurrent.futures import ThreadPoolExecutor

    from harness.benchmarks import arena_hard
    from harness.generation import generate
    from harness.judges import cached_judge
    from harness.pipeline import say

    root = opts.data_dir
    opts = dataclasses.replace(opts, max_new_tokens=opts.max_new_tokens or arena_hard.ANSWER_MAX_TOKENS)
    config = arena_hard.load_judge_config(root)
    questions = stratified_subset(arena_hard.load_questions(root), "cluster", opts.limit, opts.seed)
    baseline = arena_hard.load_answers(root, config["baseline_model"])
    pattern = re.compile(config["regex_pattern"])
    pair, records = run_rows(opts)
    judge = make_judge(opts, pair)
    max_tokens = opts.judge_max_tokens or int(config["max_tokens"])
    decoding = Decoding(temperature=float(config["temperature"]), max_tokens=max_tokens)
    cache = JudgmentCache(opts.cache_dir / "judgments" / "judgments.jsonl")
    written = []
    for row, record in records.items():
        t0 = time.perf_counter()
        ids = [q["uid"] for q in questions]
        answers, key = row_answers(
            opts, pair, row, record, "arena_hard", ids, {"max_new_tokens": opts.max_new_tokens},
            lambda m, tok: [a["text"] for a in generate(m, tok, [[{"role": "user", "content": q["prompt"]}]
                                                                  for q in questions], opts.max_new_tokens,
                                                        desc="Arena-Hard answers")])
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
            rows.append({"uid": q["uid"], "cluster": q["cluster"], "answer": answers[i],
                         "games": [{"verdict": g["verdict"], "judgment": g["judgment"]} for g in (g1, g2)]})
        unparsed = sum(g["verdict"] is None for g in games)
        metrics = {"n_questions": len(questions), "n_games": len(games), "n_unparsed_games": unparsed,
                   "n_battles": len(battles), "score": None, "ci95": None}
        if battles:
            metrics["score"] = arena_hard.score(battles)
            metrics["ci95"] = list(arena_hard.bootstrap_interval(battles))
        result = {"benchmark": "arena_hard_v0.1", "row": row, "metrics": metrics, "judge": judge.identity(),
                  "official_judge": judge.identity().get("kind") == "openai"
                  and judge.identity().get("model") == config["judge_model"],
                  "judge_decoding": decoding.to_dict(), "baseline": config["baseline_model"], "limit": opts.limit,
                  "question_ids": ids, "answer_max_new_tokens": opts.max_new_tokens, "seed": opts.seed,
                  "judge_calls": calls["n"], "answers_stage_key": key,
                  "wall_clock_s": round(time.perf_counter() - t0, 2)}
        written.append(write_result(opts, row, "arena_hard", result, rows))
        say(f"Arena-Hard {row}: score {metrics['score']} on {len(battles)} battles, {unparsed} of {len(games)} "
            f"games without a verdict ({calls['n']} judge calls)")
    return written


BENCHMARKS = {"mt_bench": eval_mt_bench, "arena_hard": eval_arena_hard}
