"""Would torch.compile make sft's step faster on this machine? Times the harness's sft step (packed LM head, fused
AdamW) on the SmolLM2 student, eager and under ``torch.compile(dynamic=True)`` (sequence lengths change every batch).

    python perf/compile_sft.py [--steps 4] [--threads N]

Batches of 4 random-token rows shaped like perf/speed.py's (prompts of 30-48 tokens, responses of 60-80, about 420
tokens a step), three padded lengths in turn. Prints the first (compiling) step, then the median of the timed steps
of each mode and their ratio. The README's "Unmet, and why" quotes one run of it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from harness.batch import pad_sequences
from harness.losses import forward, token_logps
from harness.models import load_model
from harness.pairs import get_pair


def batches(vocab: int, n: int):
    g = torch.Generator().manual_seed(0)

    def rnd(k: int) -> list[int]:
        return torch.randint(0, vocab, (k,), generator=g).tolist()

    for i in range(n):
        shift = i % 3  # three padded lengths, so a static-shape graph would not do
        yield pad_sequences([rnd(k + shift) for k in (44, 30, 48, 38)], [rnd(k) for k in (70, 80, 60, 75)], 0)


def time_mode(compiled: bool, steps: int) -> dict:
    torch.manual_seed(0)
    model = load_model(get_pair("smollm2-135m").student)
    model.train()
    if compiled:
        model.model = torch.compile(model.model, dynamic=True)  # the decoder; the packed head stays eager
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    times = []
    for seqs in batches(model.config.vocab_size, steps + 2):
        t0 = time.perf_counter()
        opt.zero_grad()
        (-token_logps(forward(model, seqs), seqs)[0].sum()).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return {"first_s": times[0], "median_s": statistics.median(times[2:])}  # the second step: a new length


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    eager, compiled = time_mode(False, args.steps), time_mode(True, args.steps)
    for name, r in (("eager", eager), ("compiled", compiled)):
        print(f"{name:9s} first step {r['first_s']:7.1f} s, median of {args.steps} steps {r['median_s']:.3f} s")
    saved = eager["median_s"] - compiled["median_s"]
    repaid = (f"the compile costs the time that {(compiled['first_s'] - eager['first_s']) / saved:.0f} steps save"
              if saved > 0 else "the compiled step is not faster")
    print(f"compiled / eager step: {compiled['median_s'] / eager['median_s']:.2f}; {repaid}")


if __name__ == "__main__":
    main()
