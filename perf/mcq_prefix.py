"""Time PAD's MCQ queries with and without sharing each prompt's common prefix (methods/pad/mcq.py).

    python perf/mcq_prefix.py --data-dir ../shared [--prompts 16] [--threads 2]

Each of the first N UltraFeedback training prompts gets four answers shaped like the cpu budget's samples (the
chosen and the rejected reply, each cut to 48 and to 24 teacher tokens), so six MCQ queries, through the released
pair order and our template. "one by one" is how the queries ran before: every query whole, left-padded in
batches of 8 (SIGNAL_BATCH), the LM head on the last position. "shared prefix" is ``next_token_top``: the
prompt's common prefix once, then the six suffixes against its keys and values. Prints the tokens each forwards,
seconds, the ratio, and the largest difference in the top-20 log-probs (the two must agree to float noise).
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import torch

from harness.data import read_local_file
from harness.models import ModelSpec, load_model, load_tokenizer
from harness.pairs import SMOLLM2_GGUF
from harness.signals import SIGNAL_BATCH
from methods.pad.mcq import MCQ_TOP, McqTemplate, next_token_top, query_ids
from methods.pad.signal import instruction_text


def answers(tokenizer, row, lengths=(48, 24)) -> list[str]:
    out = []
    for n in lengths:
        for text in (row.chosen, row.rejected):
            out.append(tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"][:n]))
    return out


@torch.no_grad()
def one_by_one(model, queries: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    values, ids, tokens = [], [], 0
    for start in range(0, len(queries), SIGNAL_BATCH):
        chunk = queries[start:start + SIGNAL_BATCH]
        width = max(map(len, chunk))
        x = torch.tensor([[pad_id] * (width - len(q)) + q for q in chunk])
        mask = torch.tensor([[0] * (width - len(q)) + [1] * len(q) for q in chunk])
        logits = model(input_ids=x, attention_mask=mask, use_cache=False, logits_to_keep=1).logits[:, -1]
        top = torch.log_softmax(logits.float(), -1).topk(MCQ_TOP, dim=-1)
        values.append(top.values)
        ids.append(top.indices)
        tokens += len(chunk) * width  # padding is forwarded too
    return torch.cat(values), torch.cat(ids), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = read_local_file(Path(args.data_dir) / "data" / "ultrafeedback_binarized_1k" / "train.jsonl")
    rows = rows[: args.prompts]
    spec = ModelSpec(SMOLLM2_GGUF)
    model, tokenizer = load_model(spec).eval(), load_tokenizer(spec)
    per_prompt = []
    for row in rows:
        texts = answers(tokenizer, row)
        per_prompt.append([query_ids(tokenizer, McqTemplate("ours"), instruction_text(row), texts[i], texts[j])[-512:]
                           for i, j in itertools.combinations(range(len(texts)), 2)])
    flat = [q for qs in per_prompt for q in qs]
    print(f"{len(rows)} prompts, {len(flat)} queries, {sum(map(len, flat)):,} query tokens "
          f"({sum(map(len, flat)) / len(flat):.0f} a query), {args.threads} threads")

    start = time.perf_counter()
    old_values, old_ids, old_tokens = one_by_one(model, flat, tokenizer.pad_token_id)
    old_s = time.perf_counter() - start

    start = time.perf_counter()
    results = [next_token_top(model, qs, tokenizer.pad_token_id, "cpu") for qs in per_prompt]
    new_s = time.perf_counter() - start
    new_values, new_ids = torch.cat([r[0] for r in results]), torch.cat([r[1] for r in results])
    new_tokens = sum(r[2] for r in results)

    same_ids = (old_ids == new_ids).all(dim=1).float().mean().item()
    print(f"{'':>14} {'tokens':>9} {'seconds':>8}")
    print(f"{'one by one':>14} {old_tokens:>9,} {old_s:>8.1f}")
    print(f"{'shared prefix':>14} {new_tokens:>9,} {new_s:>8.1f}")
    print(f"speed-up {old_s / new_s:.2f}x; tokens {old_tokens / new_tokens:.2f}x fewer; "
          f"top-20 ids identical in {same_ids:.0%} of queries; "
          f"largest log-prob difference {(old_values - new_values).abs().max().item():.1e}")


if __name__ == "__main__":
    main()
