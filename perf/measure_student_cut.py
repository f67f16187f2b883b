"""Measure how much removing a block of SmolLM2-135M-Instruct's decoder layers hurts it, to pick the student.

    python perf/measure_student_cut.py --data-dir ../shared [--prompts 14] [--cuts none,12-16,10-16]

Prints, per cut, the decoder layers kept, the parameter count and the token-mean NLL of the chosen responses of
the first N UltraFeedback test rows under the chat template (responses cut at 1024 tokens). The README's
table of cuts comes from this script with its defaults.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from harness.data import prompt_ids, response_ids
from harness.models import ModelSpec, count_parameters, load_model, load_tokenizer
from harness.pairs import SMOLLM2_GGUF


@torch.no_grad()
def chosen_nll(model, tokenizer, rows: list[dict], max_tokens: int = 1024) -> float:
    total, count = 0.0, 0
    for row in rows:
        messages = [{"role": "user", "content": row["prompt"]}]
        p = prompt_ids(tokenizer, messages)
        ids = (p + response_ids(tokenizer, messages, row["chosen"]))[:max_tokens]
        x = torch.tensor([ids])
        logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), -1)
        token_logp = logp.gather(-1, x[0, 1:, None])[:, 0][len(p) - 1:]
        total -= float(token_logp.sum())
        count += token_logp.numel()
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared")
    parser.add_argument("--prompts", type=int, default=14)
    parser.add_argument("--cuts", default="none,12-16,11-16,10-16,8-16", help="start-end (end exclusive)")
    args = parser.parse_args()
    test = Path(args.data_dir) / "data" / "ultrafeedback_binarized_1k" / "test.jsonl"
    rows = [json.loads(line) for line in test.read_text().splitlines()[: args.prompts]]
    tokenizer = load_tokenizer(ModelSpec(SMOLLM2_GGUF))
    print(f"{'removed':>10} {'layers':>6} {'parameters':>12} {'NLL':>7}")
    for cut in args.cuts.split(","):
        drop = None if cut == "none" else tuple(int(v) for v in cut.split("-"))
        model = load_model(ModelSpec(SMOLLM2_GGUF, drop_layers=drop))
        params = count_parameters(model)
        label = "none" if drop is None else f"{drop[0]}-{drop[1] - 1}"
        print(f"{label:>10} {params['layers']:>6} {params['total']:>12,} {chosen_nll(model, tokenizer, rows):>7.3f}",
              flush=True)


if __name__ == "__main__":
    main()
