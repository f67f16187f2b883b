"""Per-question views of a benchmark result, read back from the judgments file written beside it.

The answer viewer shows them, the win/tie/loss plot counts their outcomes, and paired bootstrap
differences resample their scores: a question's score is on the benchmark's own scale, so the mean of the
scores over a row's questions is the row's headline number (MT-Bench: the mean rating; AlpacaEval: the win rate;
Arena-Hard: the share of weighted battles won, not the Bradley-Terry score; RM: the hard win rate).
"""

from __future__ import annotations

import math
from pathlib import Path

from harness.files import read_jsonl

PAIRWISE = {"alpaca_eval_2": "reference_generator", "arena_hard_v0.1": "baseline", "rm_winrate": "reference"}
_ARENA_VALUE = {"win": 1.0, "tie": 0.5, "loss": 0.0}


def judgments_path(result: dict, row_dir: Path) -> Path:
    return Path(row_dir) / "benchmarks" / f"{Path(result['_file']).stem}_judgments.jsonl"


def read_judgments(result: dict, row_dir: Path) -> list[dict]:
    return read_jsonl(judgments_path(result, row_dir), missing_ok=True)



def _item(id_, question=None, category=None, answer=None, reference_answer=None, rationale=None, score=None,
          outcomes=()) -> dict:
    if score is not None and not math.isfinite(score):
        score = None
    return {"id": str(id_), "question": question, "category": category, "answer": answer,
            "reference_answer": reference_answer, "rationale": rationale, "score": score, "outcomes": list(outcomes)}


def _mt_bench(lines: list[dict]) -> list[dict]:
    by_question: dict = {}
    for line in lines:
        by_question.setdefault(line["question_id"], []).append(line)
    items = []
    for qid, turns in by_question.items():
        turns.sort(key=lambda t: t["turn"])
        scores = [t["score"] for t in turns if t.get("score") is not None and t["score"] >= 0]  # -1: unparsed
        answers = turns[0].get("answers") or []
        questions = [t.get("question") for t in turns]
        items.append(_item(
            qid, category=turns[0].get("category"),
            question="\n\n".join(f"[turn {t['turn']}] {q}" for t, q in zip(turns, questions) if q) or None,
            answer="\n\n".join(f"[turn {i}] {a}" for i, a in enumerate(answers, 1)) or None,
            rationale="\n\n".join(f"[turn {t['turn']}] {t.get('judgment') or t.get('error') or ''}" for t in turns),
            score=sum(scores) / len(scores) if scores else None))
        expected = [t["expected_score"] for t in turns if t.get("expected_score") is not None]
        items[-1]["expected_score"] = sum(expected) / len(expected) if expected else None  # constrained verdicts
    return items


def _alpaca(lines: list[dict]) -> list[dict]:
    items = []
    for line in lines:
        p = line.get("preference")
        p = None if p is None or (isinstance(p, float) and math.isnan(p)) else float(p)
        outcome = [] if p is None else ["win" if p > 1.5 else "tie" if p == 1.5 else "loss"]
        top = line.get("top_logprobs")
        rationale = line.get("error") or (
            f"judge's first-token log-probs (judged order{', switched' if line.get('switched') else ''}): "
            + ", ".join(f"{tok!r} {lp:.3f}" for tok, lp in top) if top else None)
        items.append(_item(line["index"], question=line.get("instruction"), category=line.get("dataset"),
                           answer=line.get("output_2"), reference_answer=line.get("output_1"), rationale=rationale,
                           score=None if p is None else (p - 1) * 100, outcomes=outcome))
    return items


def _arena(lines: list[dict]) -> list[dict]:
    from harness.benchmarks.arena_hard import battles

    items = []
    for line in lines:
        games = line.get("games") or []
        verdicts = [g.get("verdict") for g in games] + [None, None]
        won = battles(verdicts[0], verdicts[1])
        rationale = "\n\n".join(f"[game {i} ({'A = baseline, B = model' if i == 1 else 'A = model, B = baseline'})]"
                                f" {g.get('judgment') or ''}" for i, g in enumerate(games, 1))
        items.append(_item(line["uid"], question=line.get("question"), category=line.get("cluster"),
                           answer=line.get("answer"), rationale=rationale or None,
                           score=100 * sum(_ARENA_VALUE[b] for b in won) / len(won) if won else None, outcomes=won))
    return items


def _rm(result: dict, lines: list[dict]) -> list[dict]:
    ids = result.get("question_ids") or []
    items = []
    for line in lines:
        w = line.get("w")
        outcome = [] if w is None else ["win" if w == 1 else "tie" if w == 0.5 else "loss"]
        items.append(_item(ids[line["i"]] if line["i"] < len(ids) else line["i"],
                           rationale=f"reward {line['reward']:.4f} vs {result.get('reference')} "
                                     f"{line['reward_ref']:.4f}",
                           score=None if w is None else 100 * w, outcomes=outcome))
    return items


def judged_items(result: dict, row_dir: Path) -> list[dict]:
    """One item per question of the result: ``{id, question, category, answer, reference_answer, rationale,
    score, outcomes}``; ``outcomes`` are "win"/"tie"/"loss" against the benchmark's reference (Arena-Hard: its
    weighted battles). Empty when the result has no judgments file (lm-eval)."""
    lines = read_judgments(result, row_dir)
    name = result["benchmark"]
    if name == "mt_bench":
        return _mt_bench(lines)
    if name == "alpaca_eval_2":
        return _alpaca(lines)
    if name == "arena_hard_v0.1":
        return _arena(lines)
    if name == "rm_winrate":
        return _rm(result, lines)
    return []


def outcome_counts(result: dict, row_dir: Path) -> dict | None:
    """Wins, ties and losses against the reference, for the pairwise benchmarks; None for the others."""
    if result["benchmark"] not in PAIRWISE:
        return None
    counts = {"win": 0, "tie": 0, "loss": 0}
    for item in judged_items(result, row_dir):
        for outcome in item["outcomes"]:
            counts[outcome] += 1
    return {**counts, "reference": str(result.get(PAIRWISE[result["benchmark"]]) or "reference")}


def question_scores(result: dict, row_dir: Path, key: str = "score") -> dict[str, float]:
    """Question id -> score (or MT-Bench's ``expected_score``), for the questions that have one: what paired
    comparisons between rows resample."""
    return {item["id"]: item[key] for item in judged_items(result, row_dir) if item.get(key) is not None}
