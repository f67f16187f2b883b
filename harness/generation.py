"""One generation interface for sampling methods and for benchmark answers: batched HF ``generate``."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from harness.data import prompt_ids


@torch.no_grad()
def generate_ids(model, prompts: list[list[int]], max_new_tokens: int, *, pad_id: int, eos_id: int,
                 batch_size: int = 8, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                 seed: int = 0, desc: str | None = "generate") -> list[list[int]]:
    """Continue each token-id prompt; returns the new tokens per prompt (ending with eos when finished), in order."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    # Sorting by length keeps padding (wasted compute) low; results go back in the caller's order.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[list[int]] = [[] for _ in prompts]
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", leave=False) if desc else starts:
        idx = order[start:start + batch_size]
        length = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), length), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(idx):  # left padding: every prompt ends where generation starts
            ids[row, length - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[row, length - len(prompts[i]):] = 1
        kwargs = {"do_sample": do_sample}
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        # Seed sampling without disturbing the global random state that training relies on.
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed + start)
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=eos_id, **kwargs)
        for row, i in enumerate(idx):
            new = out[row, length:].tolist()
            results[i] = new[: new.index(eos_id) + 1] if eos_id in new else new
    model.train(was_training)
    return results


def generate(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, *, batch_size: int = 8,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
             max_prompt_len: int | None = None, desc: str = "generate") -> list[dict]:
    """Answer each chat prompt; returns ``{"text", "n_tokens", "finished"}`` per prompt, in order."""
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    if max_prompt_len:
        encoded = [ids[-max_prompt_len:] for ids in encoded]
    eos = tokenizer.eos_token_id
    outs = generate_ids(model, encoded, max_new_tokens, pad_id=tokenizer.pad_token_id, eos_id=eos,
                        batch_size=batch_size, do_sample=do_sample, temperature=temperature, top_p=top_p, seed=seed,
                        desc=desc)
    return [{"text": tokenizer.decode(new, skip_special_tokens=True).strip(), "n_tokens": len(new),
             "finished": eos in new} for new in outs]


def resample(model, seqs, runtime, *, temperature: float, seed: int):
    """The same prompts answered by ``model`` now (on-policy), sampled; returns the new Sequences and the
    number of generated tokens."""
    from harness.batch import prompts_of, with_responses

    prompts = prompts_of(seqs)
    outs = generate_ids(model, prompts, runtime.max_new_tokens, pad_id=runtime.pad_id, eos_id=runtime.eos_id,
                        batch_size=len(prompts), do_sample=True, temperature=temperature, seed=seed, desc=None)
    generated = sum(len(o) for o in outs)
    outs = [o[: runtime.max_seq_len - len(p)] or [runtime.eos_id] for o, p in zip(outs, prompts)]
    return with_responses(seqs, outs, runtime.pad_id), generated
