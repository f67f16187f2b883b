"""Offline metrics on held-out preference rows: no judge, no network.

- pref_acc / pref_margin: does the model give the chosen response a higher length-normalised log-prob than the
  rejected one, and by how much (nats/token);
- nll_chosen: token-mean NLL of the chosen responses (nats/token);
- kl_teacher: token-mean KL(teacher || model) on the chosen responses, between the (k + 1)-bucket coarsenings
  of the cached teacher signal (a lower bound on the full-vocabulary KL; 0 for the teacher itself);
- rouge_l: ROUGE-L F1 (x100) of greedy answers against the chosen responses, with the MiniLLM/DistiLLM
  tokenisation (rouge-score, Porter stemmer).

Every metric keeps its per-example values, so intervals and paired comparisons can be computed later from
results alone. Intervals here are one standard error.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from harness.batch import collate
from harness.data import Encoded, PreferenceExample
from harness.generation import generate
from harness.losses import forward, teacher_forward_kl, token_logps
from harness.signals import collate_topk
from harness.stats import ROW_METRICS

EVAL_BATCH = 8


def mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return m, float("nan")
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return m, math.sqrt(var / n)


def ratio_se(num: list[float], den: list[float]) -> tuple[float, float]:
    """A token-weighted mean sum(num)/sum(den) and its standard error over examples (delta method)."""
    n = len(num)
    r = sum(num) / sum(den)
    if n < 2:
        return r, float("nan")
    dbar = sum(den) / n
    var = sum((x - r * d) ** 2 for x, d in zip(num, den)) / (n - 1)
    return r, math.sqrt(var / n) / dbar


@torch.no_grad()
def likelihood_metrics(model, rows: list[Encoded], teacher_topk: dict, pad_id: int, desc: str) -> list[dict]:
    device = next(model.parameters()).device
    per_example = []
    for start in tqdm(range(0, len(rows), EVAL_BATCH), desc=desc, unit="batch", leave=False):
        idx = list(range(start, min(start + EVAL_BATCH, len(rows))))
        batch = collate([rows[i] for i in idx], idx, pad_id)
        topk = collate_topk(teacher_topk, idx, batch.chosen)
        chosen = batch.chosen.to(device)
        logits_c = forward(model, chosen)
        logp_c, mask_c = token_logps(logits_c, chosen)
        kl, _ = teacher_forward_kl(logits_c, chosen, {k: v.to(device) for k, v in topk.items()})
        rejected = batch.rejected.to(device)
        logp_r, mask_r = token_logps(forward(model, rejected), rejected)
        for b in range(len(idx)):
            n_c, n_r = int(mask_c[b].sum()), int(mask_r[b].sum())
            per_example.append({
                "row": idx[b], "chosen_logp": float(logp_c[b].sum()), "chosen_tokens": n_c,
                "rejected_logp": float(logp_r[b].sum()), "rejected_tokens": n_r, "kl_sum": float(kl[b].sum()),
            })
    return per_example


def rouge_l(predictions: list[str], references: list[str]) -> list[float]:
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):  # rouge_metric.py upstream silently truncates; we refuse
        raise ValueError("predictions and references differ in length")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [100 * scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]


def summarise(per_example: list[dict], answers: list[dict]) -> dict:
    margins = [ROW_METRICS["pref_margin"](e) for e in per_example]
    metrics = {}
    for name, (value, se) in {
        "pref_acc": mean_se([float(m > 0) for m in margins]),
        "pref_margin": mean_se(margins),
        "nll_chosen": ratio_se([-e["chosen_logp"] for e in per_example], [e["chosen_tokens"] for e in per_example]),
        "kl_teacher": ratio_se([e["kl_sum"] for e in per_example], [e["chosen_tokens"] for e in per_example]),
    }.items():
        metrics[name] = {"value": value, "se": se, "n": len(per_example)}
    if answers:
        value, se = mean_se([a["rouge_l"] for a in answers])
        metrics["rouge_l"] = {"value": value, "se": se, "n": len(answers)}
    return metrics


def evaluate(model, tokenizer, test_rows: list[Encoded], test_examples: list[PreferenceExample],
             teacher_topk: dict, n_generate: int, max_new_tokens: int, max_prompt_len: int,
             desc: str) -> tuple[dict, list[dict], list[dict]]:
    per_example = likelihood_metrics(model, test_rows, teacher_topk, tokenizer.pad_token_id, f"{desc}: likelihoods")
    answers = []
    if n_generate:
        subset = test_examples[:n_generate]
        outs = generate(model, tokenizer, [ex.messages for ex in subset], max_new_tokens,
                        max_prompt_len=max_prompt_len, desc=f"{desc}: answers")
        scores = rouge_l([o["text"] for o in outs], [ex.chosen for ex in subset])
        answers = [{"row": i, "prompt": ex.prompt[-1][1], "answer": o["text"], "n_tokens": o["n_tokens"],
                    "finished": o["finished"], "rouge_l": s}
                   for i, (ex, o, s) in enumerate(zip(subset, outs, scores))]
    return summarise(per_example, answers), per_example, answers
