"""Arena-Hard-Auto v0.1 (``lmarena/arena-hard-auto``, v0.1-era code): data, judge messages, verdicts, score.

Pure functions: no network, no model (a judge enters ``run_game`` as a callable). The protocol is
``shared/reference/benchmarks.md`` section 5:

- Two games per question (``gen_judgment.py``): game 1 has A = baseline, B = model; game 2 swaps them. The
  system prompt and user template come from ``judge_config.yaml`` at run time, filled with ``str.format``.
- Verdicts (``get_score``): ``findall`` of the config's regex; one distinct label is the verdict, several are
  ``None``; none asks for one more turn, up to ``number_of_judgment_attempts`` calls, texts concatenated.
- Battles (``show_result.py``): from the model's side, ``>>`` counts ``WEIGHT`` = 3 times; unknown labels drop.
- Score: every battle involves the baseline, so upstream's Bradley-Terry fit (``compute_mle_elo``) reduces to
  the closed form 100 * (wins + ties / 2) / battles; ``bootstrap_interval`` follows upstream's seeded bootstrap.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from harness.benchmarks import find_file, read_jsonl
from harness.errors import BenchError

SUBDIR = "benchmarks/arena_hard_v0.1"  # where the files sit under a shared data folder (e.g. ../shared)
N_QUESTIONS = 500
WEIGHT = 3  # a decisive verdict (>>) counts as this many battles
ANSWER_TEMPERATURE = 0.0  # answer generation (gen_answer.py)
ANSWER_MAX_TOKENS = 4096
# The one follow-up turn when a judgment has no verdict label (short instruction, as upstream words it).
RETRY_INSTRUCTION = "continue your judgment and finish by outputting a final verdict label"
CONFIG_KEYS = ("baseline_model", "system_prompt", "prompt_template", "regex_pattern", "temperature",
               "max_tokens", "number_of_judgment_attempts")
# Outcome of each verdict label for the model, when the model is B (game 1) and when it is A (game 2).
_AS_B = {"A>>B": ("loss", WEIGHT), "A>B": ("loss", 1), "A=B": ("tie", 1), "B>A": ("win", 1), "B>>A": ("win", WEIGHT)}
_AS_A = {"A>>B": ("win", WEIGHT), "A>B": ("win", 1), "A=B": ("tie", 1), "B>A": ("loss", 1), "B>>A": ("loss", WEIGHT)}
_VALUE = {"win": 1.0, "tie": 0.5, "loss": 0.0}


# ---------------------------------------------------------------- data


def data_file(root, name: str) -> Path:
    return find_file(root, SUBDIR, name, "Arena-Hard file")


def load_questions(root, expected: int | None = N_QUESTIONS) -> list[dict]:
    """The questions in file order, each ``{uid, category, cluster, prompt}`` (the newer schema)."""
    path = data_file(root, "question.jsonl")
    questions = read_jsonl(path)
    for i, q in enumerate(questions, 1):
        if "uid" not in q or not isinstance(q.get("prompt"), str):
            raise BenchError(f"{path}:{i}: an Arena-Hard question needs 'uid' and 'prompt' (the newer schema).")
    if len({q["uid"] for q in questions}) != len(questions):
        raise BenchError(f"{path}: question uids repeat; the file is damaged.")
    if expected is not None and len(questions) != expected:
        raise BenchError(f"{path}: expected {expected} questions, found {len(questions)}; the file is incomplete.")
    return questions


def load_answers(root, model: str) -> dict[str, str]:
    """``{uid: answer text}`` from ``model_answer/<model>.jsonl``; the answer is the last message's ``answer``."""
    try:
        path = data_file(root, f"model_answer/{model}.jsonl")
    except BenchError as e:
        folder = next((p for p in (Path(root), Path(root) / SUBDIR) if (p / "model_answer").is_dir()), None)
        have = sorted(p.stem for p in folder.glob("model_answer/*.jsonl")) if folder else []
        raise BenchError(f"{e} Answers present: {', '.join(have) or 'none'}.") from None
    answers = {}
    for i, row in enumerate(read_jsonl(path), 1):
        try:
            last = row["messages"][-1]
            assert last["role"] == "assistant"
            answers[row["uid"]] = last["content"]["answer"]
        except (KeyError, IndexError, TypeError, AssertionError):
            raise BenchError(f"{path}:{i}: expected {{uid, messages: [..., {{role: assistant, content: "
                             "{answer}}}]}} (the newer answer schema).") from None
    return answers


def load_judge_config(root) -> dict:
    """``judge_config.yaml``: judge, baseline, decoding, verdict regex, system prompt and user template(s)."""
    import yaml

    path = data_file(root, "judge_config.yaml")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise BenchError(f"{path}: not valid YAML ({str(e).splitlines()[0]}).") from None
    missing = [k for k in CONFIG_KEYS if not isinstance(config, dict) or k not in config]
    if missing:
        raise BenchError(f"{path}: the judge config lacks {', '.join(missing)}.")
    return config


# ---------------------------------------------------------------- judging


def judge_messages(config: dict, question, answer_a: str, answer_b: str) -> list[dict]:
    """[system, user] messages for one game; ``question`` is a question row or its prompt text."""
    prompt = question["prompt"] if isinstance(question, dict) else question
    templates = config["prompt_template"]
    templates = [templates] if isinstance(templates, str) else templates
    messages = [{"role": "system", "content": config["system_prompt"]}]
    for template in templates:  # v0.1 has one; upstream adds a user turn per template
        user = template.format(question_1=prompt, answer_1=answer_a, answer_2=answer_b)
        messages.append({"role": "user", "content": user})
    return messages


def games(question, baseline_answer: str, model_answer: str) -> list[tuple[str, str]]:
    """(answer A, answer B) of the two games: game 1 A = baseline, B = model; game 2 A = model, B = baseline."""
    return [(baseline_answer, model_answer), (model_answer, baseline_answer)]


def parse_verdict(text: str, pattern) -> tuple[str | None, bool]:
    """(verdict, retry): one distinct label -> (label, False); several -> (None, False); none -> (None, True)."""
    labels = [m.strip("\n") for m in re.findall(pattern, text) if m != ""]
    if not labels:
        return None, True
    if len(set(labels)) == 1:
        return labels[0], False
    return None, False


def retry_messages(messages: list[dict], judgment: str) -> list[dict]:
    """The conversation for the follow-up call: the judge's text as an assistant turn, then the instruction."""
    return [*messages, {"role": "assistant", "content": judgment}, {"role": "user", "content": RETRY_INSTRUCTION}]


def run_game(generate, messages: list[dict], pattern, attempts: int = 2) -> dict:
    """One game as upstream plays it: ``generate(messages) -> text`` up to ``attempts`` times while no label is
    found, each reply appended to the judgment text (joined by newlines) and the whole text parsed again."""
    judgment, conversation = "", list(messages)
    verdict = None
    for attempt in range(max(1, attempts)):
        reply = generate(conversation)
        judgment += "\n" + reply
        verdict, retry = parse_verdict(judgment, pattern)
        if not retry or attempt >= attempts - 1:
            break
        conversation = retry_messages(conversation, reply)
    return {"verdict": verdict, "judgment": judgment, "calls": attempt + 1}


# ---------------------------------------------------------------- score


def battles(verdict_game1: str | None, verdict_game2: str | None) -> list[str]:
    """Weighted battles ("win", "tie", "loss" from the model's side), game 1's rows first.

    A ``None`` or unknown label adds nothing (upstream drops it); ``verdict_game2=None`` is --first-game-only.
    """
    rows = []
    for verdict, table in ((verdict_game1, _AS_B), (verdict_game2, _AS_A)):
        outcome, weight = table.get(verdict, (None, 0))
        rows += [outcome] * weight
    return rows


def _values(battle_rows) -> np.ndarray:
    try:
        values = np.array([_VALUE[b] for b in battle_rows], dtype=float)
    except KeyError as e:
        raise ValueError(f"a battle is 'win', 'tie' or 'loss', not {e.args[0]!r}") from None
    if values.size == 0:
        raise BenchError("No Arena-Hard battles to score: every judgment lacked a verdict.")
    return values


def score(battle_rows) -> float:
    """100 * (3Ws + Ww + T/2) / (3Ws + Ww + T + Lw + 3Ls): the Bradley-Terry win rate against the baseline
    (upstream's fit, anchored at the baseline). All wins give 100 and all losses 0, where the MLE diverges."""
    return 100.0 * float(_values(battle_rows).mean())


def _elo(share: float) -> float:
    """Elo above the baseline for a win share (upstream's coefficient * 400); +-inf at 1 and 0."""
    if share <= 0.0:
        return -math.inf
    if share >= 1.0:
        return math.inf
    return 400.0 * math.log10(share / (1.0 - share))


def _percentile(values: list[float], q: float) -> float:
    """numpy's linear percentile, taking the limit when a neighbour is infinite."""
    v = sorted(values)
    pos = q / 100.0 * (len(v) - 1)
    lo = math.floor(pos)
    a, b, t = v[lo], v[min(lo + 1, len(v) - 1)], pos - lo
    if t == 0 or a == b:
        return a
    if math.isinf(a) or math.isinf(b):
        return (a if t < 0.5 else b) if math.isinf(a) and math.isinf(b) else (a if math.isinf(a) else b)
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t


def joint_bootstrap(tables: dict[str, list[str]], rounds: int = 100, seed: int = 42) -> dict[str, tuple]:
    """95% intervals of every model judged against the baseline, bootstrapped together as upstream does.

    ``show_result.py`` concatenates the battles of every judgment file into one table and, per round, resamples
    that whole table (``np.random.seed(42)``, ``battles.sample(frac=1.0, replace=True)``: ``choice(N, N)`` on
    numpy's global state) and refits every model at once. Each model's draw therefore depends on the others'
    table sizes and order: intervals differ from a bootstrap of each model alone. The table here is the models
    in the order of ``tables`` (callers pass a fixed order: rows, then published judgments, sorted by name),
    each model's battles in question order, game 1 first. The fit decouples per model (every battle involves
    the baseline), so a model's round score is the mean of its resampled rows. A model with no row in a round
    has no fitted rating in upstream's table either (NaN); that round is skipped for it.
    """
    names = list(tables)
    values = [_values(tables[m]) for m in names]
    owner = np.concatenate([np.full(v.size, i) for i, v in enumerate(values)])
    flat = np.concatenate(values)
    rng = np.random.RandomState(seed)
    elos: list[list[float]] = [[] for _ in names]
    for _ in range(rounds):
        pick = rng.choice(flat.size, size=flat.size, replace=True)
        sums = np.bincount(owner[pick], weights=flat[pick], minlength=len(names))
        counts = np.bincount(owner[pick], minlength=len(names))
        for i in np.flatnonzero(counts):
            elos[i].append(_elo(float(sums[i] / counts[i])))
    return {m: _interval(e) for m, e in zip(names, elos)}


def _interval(elos: list[float]) -> tuple[float, float]:
    """2.5th and 97.5th percentiles on the Elo scale, mapped back to win rates against the baseline."""
    if not elos:  # no round drew the model (zero rounds)
        return (math.nan, math.nan)
    lower, upper = (_percentile(elos, q) for q in (2.5, 97.5))
    return tuple(100.0 / (1.0 + 10.0 ** (-e / 400.0)) for e in (lower, upper))


def load_published_battles(root, judge_model: str, skip: set[str] = frozenset()) -> dict[str, list[str]]:
    """Battles of upstream judgment files dropped into the data folder (``model_judgment/<judge_model>/*.jsonl``,
    v0.1's ``{question_id|uid, model, games: [{score}, {score}]}``), by model, sorted by name; models in ``skip``
    (the run's own rows) are left out. None there: an empty dict."""
    folder = next((p / "model_judgment" / judge_model for p in (Path(root), Path(root) / SUBDIR)
                   if (p / "model_judgment" / judge_model).is_dir()), None)
    if folder is None:
        return {}
    tables: dict[str, list[str]] = {}
    for path in sorted(folder.glob("*.jsonl")):
        for i, row in enumerate(read_jsonl(path), 1):
            try:
                model, games = row["model"], row["games"]
                verdicts = [g.get("score") for g in games[:2]] + [None] * (2 - len(games[:2]))
            except (KeyError, TypeError, AttributeError):
                raise BenchError(f"{path}:{i}: expected an upstream judgment row {{model, games: [{{score}}, "
                                 "{{score}}]}}.") from None
            if model not in skip:
                tables.setdefault(model, []).extend(battles(*verdicts))
    return {m: tables[m] for m in sorted(tables) if tables[m]}


def bootstrap_interval(battle_rows, rounds: int = 100, seed: int = 42) -> tuple[float, float]:
    """95% interval (2.5th, 97.5th percentile) of the score over ``rounds`` resamples of the battle rows.

    As upstream: ``np.random.seed(42)`` then, per round, ``battles.sample(frac=1.0, replace=True)`` (which draws
    ``choice(n, n, replace=True)`` from numpy's global state) and a refit; the percentiles are taken on the Elo
    scale and mapped back to win rates. Upstream prints them as offsets from the full-data score. Upstream
    resamples the table of all models judged together (``joint_bootstrap``); for one model alone that is this
    table, the labelled per-row option.
    """
    return joint_bootstrap({"model": list(battle_rows)}, rounds, seed)["model"]
