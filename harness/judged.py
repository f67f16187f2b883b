"""The runners of the judged benchmarks (MT-Bench, Arena-Hard v0.1, AlpacaEval 2) and of the reward-model win
rate: each row answers (cached), the judge grades (cached), the scores go to ``benchmarks/<stem>.json``."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import threading
import time
from pathlib import Path

import harness
from harness.benchmarks.builtin import ALPACA_EVAL, ARENA_HARD
from harness.cache import file_fingerprint, stable_hash
from harness.errors import BenchError
from harness.evalrun import (
    EvalOptions,
    data_root,
    greedy_answers,
    judge_decoding,
    judgment_cache,
    make_judge,
    result_header,
    row_answers,
    run_rows,
    stratified_subset,
    write_result,
)
from harness.judges import JudgmentCache, judge_all
from harness.log import log
from harness.stats import standard_error

OFFICIAL_JUDGES = {"mt_bench": ("gpt-4", "gpt-4-0613")}  # the alias and the snapshot the maintainers used
# What a constrained judge chooses from, per benchmark: (prefix, choices); the parsers read prefix + choice.
MT_BENCH_CHOICES = ("Rating:", tuple(f" [[{k}]]" for k in range(1, 11)))
ARENA_HARD_CHOICES = ("My final verdict is:", tuple(f" [[{v}]]" for v in ("A>>B", "A>B", "A=B", "B>A", "B>>A")))
ALPACA_EVAL_CHOICES = ("", ("m", "M"))  # the weighted annotator's two verdict tokens


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
        metrics = mt_bench.aggregate(rows, questions)
        if decoding.choices:
            metrics.update(expected_rating(rows, results))
        result = {
            **result_header(opts, "mt_bench", row, judge, decoding, OFFICIAL_JUDGES["mt_bench"], ids, key, t0),
            "metrics": metrics, "n_questions": len(questions), "reference_answers_sha256": ref_hash,
            "judge_prompts_sha256": file_fingerprint(mt_bench.data_file(root, "judge_prompts.jsonl")),
            "judge_calls": counts,
            # FastChat formats answer prompts with its own conversation template per model family (fastchat is
            # not a dependency here); ours come from the model's own chat template, and the result says so.
            "answer_prompt": "the model's own chat template (tokenizer.apply_chat_template), not FastChat's "
                             "conversation template",
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
    se = standard_error(values)
    return {"expected_score": mean, "expected_score_se": se, "expected_score_n": n}


# ---------------------------------------------------------------- Arena-Hard v0.1


def eval_arena_hard(opts: EvalOptions) -> list[Path]:
    """Greedy answers, two games per question against gpt-4-0314 (positions swapped), the v0.1 judge config
    and verdict weights, the Bradley-Terry score with upstream's seeded bootstrap 95% interval: by default over
    one battle table of every row scored here and any published judgments of the same judge model in the data
    folder (``--arena-interval joint``, upstream's way), or each row's battles alone (``per-row``)."""
    import re
    from concurrent.futures import ThreadPoolExecutor

    from harness.benchmarks import arena_hard
    from harness.judges import cached_judge

    root = data_root(opts, "arena_hard")
    opts = dataclasses.replace(opts, max_new_tokens=opts.max_new_tokens or arena_hard.ANSWER_MAX_TOKENS)
    config = arena_hard.load_judge_config(root)
    attempts = int(config["number_of_judgment_attempts"])
    questions = stratified_subset(arena_hard.load_questions(root), "cluster", opts.limit, opts.seed)
    baseline = arena_hard.load_answers(root, config["baseline_model"])
    pattern = re.compile(config["regex_pattern"])
    pair, records = run_rows(opts)
    judge = make_judge(opts, pair)
    max_tokens = opts.judge_max_tokens or int(config["max_tokens"])
    decoding = judge_decoding(opts, float(config["temperature"]), max_tokens, ARENA_HARD_CHOICES)
    cache = judgment_cache(opts)
    scored = {}
    for row, record in records.items():
        t0 = time.perf_counter()
        ids = [q["uid"] for q in questions]
        answers, key = greedy_answers(opts, pair, row, record, ARENA_HARD.stem, ids, [q["prompt"] for q in questions])
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

            return arena_hard.run_game(generate_one, arena_hard.judge_messages(config, questions[i], a, b), pattern,
                                       attempts)

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
                   "n_battles": len(battles), "score": arena_hard.score(battles) if battles else None, "ci95": None,
                   **answer_tokens(answers, pair, row)}
        result = {**result_header(opts, ARENA_HARD.id, row, judge, decoding, (config["judge_model"],), ids, key,
                                  t0),
                  "metrics": metrics, "baseline": config["baseline_model"], "judge_calls": calls["n"],
                  "judgment_attempts": attempts,
                  "judge_config_sha256": file_fingerprint(arena_hard.data_file(root, "judge_config.yaml"))}
        scored[row] = (result, rows, battles)
        log.info(f"Arena-Hard {row}: score {metrics['score']} on {len(battles)} battles, {unparsed} of {len(games)} "
                 f"games without a verdict ({calls['n']} judge calls)")
    intervals, interval = arena_intervals(opts, root, judge, {r: b for r, (_, _, b) in scored.items() if b})
    written = []
    for row, (result, rows, _) in scored.items():
        if row in intervals:
            result["metrics"]["ci95"] = list(intervals[row])
        result["interval"] = interval
        written.append(write_result(opts, row, ARENA_HARD.stem, result, rows))
    return written


def arena_intervals(opts: EvalOptions, root, judge, tables: dict[str, list[str]]) -> tuple[dict, dict]:
    """Each row's 95% interval and how it was drawn (recorded with every result)."""
    from harness.benchmarks import arena_hard

    if opts.arena_interval == "per-row":
        return ({row: arena_hard.bootstrap_interval(b) for row, b in tables.items()},
                {"bootstrap": "per-row", "rounds": 100, "seed": 42})
    # Published judgments count only when they come from the model that judges here (upstream pools one
    # judge's folder); the run's rows come first, then those files' models, each group sorted by name.
    published = {}
    model = judge.identity().get("model")
    if model and tables:
        published = arena_hard.load_published_battles(root, str(model), skip=set(tables))
    joint = arena_hard.joint_bootstrap({**dict(sorted(tables.items())), **published}) if tables else {}
    return ({row: joint[row] for row in tables},
            {"bootstrap": "joint", "rounds": 100, "seed": 42, "models": [*sorted(tables), *published]})


def answer_tokens(answers: list[str], pair, row: str) -> dict:
    """Mean answer length in tokens, as upstream's table prints it: tiktoken's gpt-3.5-turbo encoding (v0.1's
    count) where its BPE file can be had, else the row's own tokenizer, and the result names which."""
    encoding = _tiktoken_encoding()
    if encoding is not None:
        counts = [len(encoding.encode(a, disallowed_special=())) for a in answers]
        counter = "tiktoken gpt-3.5-turbo"
    else:
        tokenizer = _tokenizer(pair.teacher if row == "teacher" else pair.student)
        counts = [len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers]
        counter = "the row's own tokenizer (tiktoken's gpt-3.5-turbo file was not available)"
    return {"avg_answer_tokens": sum(counts) / len(counts) if counts else None, "answer_token_counter": counter}


@functools.cache
def _tiktoken_encoding():
    """Looked up once per process: offline, tiktoken tries (and fails) to fetch its BPE file on every call."""
    try:
        import tiktoken

        return tiktoken.encoding_for_model("gpt-3.5-turbo")
    except (ImportError, OSError, ValueError):
        return None


@functools.cache
def _tokenizer(spec):
    from harness.models import load_tokenizer
    return load_tokenizer(spec)


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
        answers, key = greedy_answers(opts, pair, row, record, ALPACA_EVAL.stem, ids,
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
        metrics.update(alpaca_eval.length_controlled(annotations, lc_files))
        result = {**result_header(opts, ALPACA_EVAL.id, row, judge, decoding, (official["model"],), ids, key, t0),
                  "metrics": metrics, "annotator": alpaca_eval.ANNOTATOR,
                  "judge_prompt_sha256": stable_hash(alpaca_eval.annotator_config()[1], 16),
                  "reference_generator": alpaca_eval.REFERENCE_GENERATOR, "judge_calls": counts,
                  "eval_set_sha256": file_fingerprint(alpaca_eval.eval_set_path(root))}
        written.append(write_result(opts, row, ALPACA_EVAL.stem, result, annotations))
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
