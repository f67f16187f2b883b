"""One generation interface for sampling methods and for benchmark answers: batched HF ``generate``."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from harness.data import prompt_ids


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, *, batch_size: int = 8,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
             max_prompt_len: int | None = None, desc: str = "generate") -> list[dict]:
    """Answer each chat prompt; returns ``{"text", "n_tokens", "finished"}`` per prompt, in order."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    if max_prompt_len:
        encoded = [ids[-max_prompt_len:] for ids in encoded]
    # Sorting by length keeps padding (wasted compute) low; results go back in the caller's order.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    results: list[dict | None] = [None] * len(encoded)
    generator_seed = seed
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
        idx = order[start:start + batch_size]
        length = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), length), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(idx):  # left padding: every prompt ends where generation starts
            ids[row, length - len(encoded[i]):] = torch.tensor(encoded[i])
            mask[row, length - len(encoded[i]):] = 1
        kwargs = {"do_sample": do_sample}
        if do_sample:
            torch.manual_seed(generator_seed + start)
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             pad_token_id=pad, eos_token_id=tokenizer.eos_token_id, **kwargs)
        for row, i in enumerate(idx):
            new = out[row, length:].tolist()
            finished = tokenizer.eos_token_id in new
            if finished:
                new = new[: new.index(tokenizer.eos_token_id) + 1]
            results[i] = {"text": tokenizer.decode(new, skip_special_tokens=True).strip(), "n_tokens": len(new),
                          "finished": finished}
    return results
