"""MT-Bench (FastChat ``fastchat/llm_judge``, single-answer grading): data, judge prompts, rating parse, score.

Pure functions: no network, no model. The protocol is ``shared/reference/benchmarks.md`` section 3:

- Prompt choice and filling follow FastChat's ``gen_judgment.py``/``common.py``: questions in the reference
  categories (math, reasoning, coding) are graded with the ``single-math-v1`` prompts and the reference
  answers; the others with ``single-v1``; turn 2 uses the ``-multi-turn`` variant. Templates are read from
  ``judge_prompts.jsonl`` at run time and filled with ``str.format`` exactly as upstream.
- ``parse_rating`` is upstream's: first ``[[x]]``, else first ``[x]``, else -1; no range check.
- ``aggregate`` is upstream's ``show_result.py --mode single``: drop -1 rows, turn means, and the score as the
  mean over all remaining rows (both turns pooled). Per-category means and the standard error are ours.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from harness.benchmarks import find_file, read_jsonl
from harness.errors import BenchError
from harness.judges import fold_system  # noqa: F401  (judges without a system role)
from harness.stats import standard_error

SUBDIR = "benchmarks/mt_bench"  # where the files sit under a shared data folder (e.g. ../shared)
N_QUESTIONS = 80
REFERENCE_CATEGORIES = ("math", "reasoning", "coding", "arena-hard-200")  # FastChat's NEED_REF_CATS

# Answer generation (FastChat gen_model_answer.py): temperature by category, 0.7 for any other category.
TEMPERATURE_BY_CATEGORY = {
    "writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0, "reasoning": 0.0,
    "stem": 0.1, "humanities": 0.1, "arena-hard-200": 0.0,
}
DEFAULT_TEMPERATURE = 0.7
GREEDY_BELOW = 1e-4  # a temperature below this means greedy decoding
ANSWER_MAX_NEW_TOKENS = 1024

# The judge call (FastChat common.py, OpenAI path).
JUDGE_TEMPERATURE = 0.0
JUDGE_MAX_TOKENS = 2048

FAILED = -1.0  # the rating of a judgment with no parsable score
_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


# ---------------------------------------------------------------- data


def data_file(root, name: str) -> Path:
    return find_file(root, SUBDIR, name, "MT-Bench file")


def load_questions(root, expected: int | None = N_QUESTIONS) -> list[dict]:
    """The questions in file order, each ``{question_id, category, turns[2], ...}``; checked at load time."""
    path = data_file(root, "question.jsonl")
    questions = read_jsonl(path)
    for i, q in enumerate(questions, 1):
        if not {"question_id", "category", "turns"} <= set(q) or len(q["turns"]) != 2:
            raise BenchError(f"{path}:{i}: an MT-Bench question needs question_id, category and two turns.")
    ids = [q["question_id"] for q in questions]
    if len(set(ids)) != len(ids):
        raise BenchError(f"{path}: question ids repeat; the file is damaged.")
    if expected is not None and len(questions) != expected:
        raise BenchError(f"{path}: expected {expected} questions, found {len(questions)}; the file is incomplete.")
    return questions


def load_judge_prompts(root) -> dict[str, dict]:
    """The judge prompts by name (``single-v1``, ``single-math-v1-multi-turn``, ``pair-v2``, ...)."""
    path = data_file(root, "judge_prompts.jsonl")
    return {p["name"]: p for p in read_jsonl(path)}


def reference_path(root, judge: str = "gpt-4") -> Path:
    """Upstream's default reference file, named after the judge: ``reference_answer/<judge>.jsonl``."""
    return data_file(root, f"reference_answer/{judge}.jsonl")


def load_reference_answers(path) -> tuple[dict[int, list[str]], str]:
    """Reference answers ``{question_id: [ref1, ref2]}`` and the file's sha256 (record it with every result).

    The file is configurable because the GPT-4 references have known errors (FastChat #3053, PR #3158).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise BenchError(f"MT-Bench reference answer file {path} does not exist. Give an existing file, e.g. "
                         f"{SUBDIR}/reference_answer/gpt-4.jsonl under the shared data folder.")
    refs = {}
    for i, row in enumerate(read_jsonl(path), 1):
        try:
            refs[row["question_id"]] = list(row["choices"][0]["turns"])
        except (KeyError, IndexError, TypeError):
            raise BenchError(f"{path}: row {i} lacks question_id or choices[0].turns; it is not an MT-Bench "
                             "answer file.") from None
    return refs, hashlib.sha256(path.read_bytes()).hexdigest()


def temperature_for(category: str) -> float:
    return TEMPERATURE_BY_CATEGORY.get(category, DEFAULT_TEMPERATURE)


# ---------------------------------------------------------------- judging


def judge_messages(question: dict, answers: list[str], turn: int, prompts: dict[str, dict],
                   reference: list[str] | None = None) -> tuple[str, list[dict]]:
    """The prompt name and the [system, user] messages grading ``answers`` (the model's turns) at ``turn``."""
    if turn not in (1, 2):
        raise BenchError(f"MT-Bench has turns 1 and 2, not {turn}.")
    needs_ref = question["category"] in REFERENCE_CATEGORIES
    name = ("single-math-v1" if needs_ref else "single-v1") + ("-multi-turn" if turn == 2 else "")
    if name not in prompts:
        raise BenchError(f"The judge prompts lack {name!r}; use the MT-Bench judge_prompts.jsonl.")
    fields = {}
    if needs_ref:
        if reference is None:
            raise BenchError(f"MT-Bench question {question['question_id']} ({question['category']}) is graded "
                             "against a reference answer, and the reference file has none for it.")
        fields.update(ref_answer_1=reference[0], ref_answer_2=reference[1])  # upstream passes both, always
    if turn == 1:
        fields.update(question=question["turns"][0], answer=answers[0])
    else:
        fields.update(question_1=question["turns"][0], question_2=question["turns"][1],
                      answer_1=answers[0], answer_2=answers[1])
    prompt = prompts[name]
    user = prompt["prompt_template"].format(**fields)
    return name, [{"role": "system", "content": prompt["system_prompt"]}, {"role": "user", "content": user}]


def parse_rating(text: str) -> float:
    """Upstream's parse: the first ``[[x]]``, else the first ``[x]``, else -1. No range check (``[[11]]`` is 11).

    Upstream evaluates the match with ``ast.literal_eval``; ``float`` gives the same value for every string the
    pattern can match (and also reads ``[[08]]``, where upstream raises).
    """
    match = _RATING.search(text) or _RATING_BACKUP.search(text)
    return float(match.group(1)) if match else FAILED


# ---------------------------------------------------------------- score


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def aggregate(judgments: list[dict], questions: list[dict] | None = None) -> dict:
    """MT-Bench numbers from judgment rows ``{question_id, turn, score}`` (FastChat's ``gpt-4_single.jsonl``).

    Rows scoring -1 (or None: no judgment) are dropped and counted in ``n_failed``. ``score`` is the mean of all
    remaining rows, both turns pooled (upstream); it equals the mean of ``turn_1`` and ``turn_2`` only when no
    row was dropped. ``se`` (ours; upstream prints none) is the standard error of that pooled mean,
    sample standard deviation / sqrt(n), treating rows as independent. Rows are taken as given: like upstream,
    duplicates are not removed.

    Upstream judgments carry no ``category``: a row's category is its own field where it has one, else the
    category of its question in ``questions`` (as ``load_questions`` returns them); rows with neither count in
    the score and in ``n_uncategorised``, not in the per-category means.
    """
    valid = [j for j in judgments if j["score"] is not None and j["score"] != FAILED]
    scores = [float(j["score"]) for j in valid]
    n = len(scores)
    mean = _mean(scores)
    se = standard_error(scores)
    by_turn = {t: [float(j["score"]) for j in valid if j["turn"] == t] for t in (1, 2)}
    of_question = {q["question_id"]: q.get("category") for q in questions or ()}
    categories: dict[str, list[float]] = {}
    uncategorised = 0
    for j in valid:
        category = j.get("category") or of_question.get(j["question_id"])
        if category is None:
            uncategorised += 1
            continue
        categories.setdefault(category, []).append(float(j["score"]))
    return {
        "score": mean, "se": se, "n": n, "n_failed": len(judgments) - n,
        "turn_1": _mean(by_turn[1]), "turn_2": _mean(by_turn[2]),
        "n_turn_1": len(by_turn[1]), "n_turn_2": len(by_turn[2]),
        "categories": {c: _mean(v) for c, v in sorted(categories.items())},
        "category_counts": {c: len(v) for c, v in sorted(categories.items())},
        "n_uncategorised": uncategorised,
    }
