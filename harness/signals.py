"""Teacher and reference signals, computed once per run and shared by every method that names them.

A method declares what it consumes (``needs``); here is where each of those comes from. Today:

- ``teacher_topk:<side>`` — the teacher's top-k log-probs and the log-mass of the rest, at every response
  position of the chosen or rejected response (teacher-forced on the data set's text);
- ``reference_logps`` — the frozen initial student's summed log-probs of the chosen and rejected responses;
- ``teacher_samples`` — the teacher's greedy response to each prompt (SeqKD's training targets);
- ``student_samples`` — one response per prompt sampled (temperature 1, seeded) from the initial student;
- ``scored_samples`` — ``samples_per_prompt`` answers per prompt sampled from the initial student (temperature 1,
  top-p 0.95, seeded), each scored by the teacher's length-normalised log-likelihood under its own template (PAD);
- ``adpa_advantage`` — the starting student's greedy answer to each prompt, with the aligned (DPO) teacher's top-k
  log-probs at every answer position and the reference model's log-probs of those same tokens (ADPA);
- ``teacher_model`` — not cached: the live teacher, handed to the method (``method.runtime.teacher``).

"Student" signals come from the student a method starts from: the initial student, or for a method that starts
from another method's result (ADPA+ from DCKD) that result.

Signals are stored flat (one row per response token, with per-example offsets) as safetensors, except the
top-k signal: a sharded, memory-mapped store in compact dtypes (harness/topk_store.py), since at k = 50 it is
by far the largest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from harness.batch import IGNORE, Sequences, collate, pad_sequences, prompts_of, with_responses
from harness.data import Encoded
from harness.errors import BenchError
from harness.losses import sequence_logps
from harness.topk_store import DEFAULT_EXAMPLES_PER_SHARD, TopkReader, TopkWriter

SIGNAL_BATCH = 8


@dataclass(frozen=True)
class SignalSpec:
    name: str
    source: str  # the model that produces it: "teacher" or "student_init"
    kind: str  # "topk" or "sequence_logps"
    side: str | None = None


def parse_signal(name: str) -> SignalSpec:
    if name == "reference_logps":
        return SignalSpec(name, "student_init", "sequence_logps")
    if name == "teacher_samples":
        return SignalSpec(name, "teacher", "samples")
    if name == "student_samples":
        return SignalSpec(name, "student_init", "samples")
    if name == "scored_samples":
        return SignalSpec(name, "student_init", "scored_samples")
    if name == "adpa_advantage":
        return SignalSpec(name, "student_init", "advantage")
    if name == "teacher_model":
        return SignalSpec(name, "teacher", "live")
    kind, _, side = name.partition(":")
    if kind == "teacher_topk" and side in ("chosen", "rejected"):
        return SignalSpec(name, "teacher", "topk", side)
    raise BenchError(f"Unknown signal {name!r}. Known: teacher_topk:chosen, teacher_topk:rejected, reference_logps, "
                     "teacher_samples, student_samples, scored_samples, adpa_advantage, teacher_model.")


def _batches(rows: list[Encoded], pad_id: int, size: int = SIGNAL_BATCH):
    for start in range(0, len(rows), size):
        idx = list(range(start, min(start + size, len(rows))))
        yield collate([rows[i] for i in idx], idx, pad_id)


class _FlatTopk:
    """The in-memory form of a top-k signal (flat rows, per-example offsets), for callers without a folder."""

    def __init__(self):
        self.ids, self.logps, self.rest, self.offsets = [], [], [], [0]

    def add(self, ids, logps, rest) -> None:
        self.ids.append(ids.to(torch.int32).cpu())
        self.logps.append(logps.cpu())
        self.rest.append(rest.cpu())
        self.offsets.append(self.offsets[-1] + ids.shape[0])

    def close(self) -> dict:
        return {"ids": torch.cat(self.ids), "logps": torch.cat(self.logps), "rest": torch.cat(self.rest),
                "offsets": torch.tensor(self.offsets, dtype=torch.int64)}


@torch.no_grad()
def compute_topk(model, rows: list[Encoded], side: str, k: int, pad_id: int, vocab_limit: int,
                 desc: str, *, out: Path | None = None, value_dtype: str = "float32",
                 examples_per_shard: int = DEFAULT_EXAMPLES_PER_SHARD) -> tuple[dict | TopkReader, int]:
    """Teacher top-k over ids < vocab_limit (the student's vocabulary) plus an exact rest bucket.

    With ``out``, each example is streamed into a top-k store there (harness/topk_store.py; values in
    ``value_dtype``) and its reader returned; without, the flat float32 tensors are returned in memory."""
    k = min(k, vocab_limit)
    if out is None and value_dtype != "float32":
        raise BenchError("compute_topk keeps float32 values in memory; pass out= to store another value dtype.")
    sink = TopkWriter(out, k, vocab_limit, value_dtype, examples_per_shard) if out is not None else _FlatTopk()
    tokens = 0
    device = next(model.parameters()).device
    try:
        for batch in tqdm(list(_batches(rows, pad_id)), desc=desc, unit="batch", leave=False):
            seqs: Sequences = getattr(batch, side).to(device)
            logits = model(input_ids=seqs.input_ids, attention_mask=seqs.attention_mask, use_cache=False).logits
            tokens += seqs.n_tokens
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            mask = seqs.labels[:, 1:] != IGNORE
            for b in range(logp.shape[0]):
                lp = logp[b][mask[b]]  # [R, V_teacher]
                selectable = lp[:, :vocab_limit]
                top_v, top_i = selectable.topk(k, dim=-1)
                rest = torch.logsumexp(lp.scatter(-1, top_i, float("-inf")), dim=-1)
                sink.add(top_i.cpu(), top_v.cpu(), rest.cpu())
    except BaseException:
        if isinstance(sink, TopkWriter):  # its files are closed; the caller's build folder is removed whole
            sink.abort()
        raise
    return sink.close(), tokens


@torch.no_grad()
def compute_sequence_logps(model, rows: list[Encoded], pad_id: int, desc: str) -> tuple[dict, int]:
    out, tokens = [], 0
    device = next(model.parameters()).device
    for batch in tqdm(list(_batches(rows, pad_id)), desc=desc, unit="batch", leave=False):
        pair = []
        for seqs in (batch.chosen.to(device), batch.rejected.to(device)):
            logits = model(input_ids=seqs.input_ids, attention_mask=seqs.attention_mask, use_cache=False).logits
            tokens += seqs.n_tokens
            pair.append(sequence_logps(logits[:, :-1].float(), seqs)[0].cpu())
        out.append(torch.stack(pair, dim=-1))
    return {"logps": torch.cat(out)}, tokens


@torch.no_grad()
def model_drift(before, after, rows: list[Encoded], pad_id: int) -> tuple[float, int]:
    """Token-mean KL(before || after) over the chosen responses of ``rows`` (full vocabulary): how far a training
    stage moved a model (the teacher-DPO stage logs it). Returns the KL and the tokens forwarded per model."""
    total, count, tokens = 0.0, 0, 0
    device = next(before.parameters()).device
    for batch in _batches(rows, pad_id):
        seqs = batch.chosen.to(device)
        lp = [torch.log_softmax(m(input_ids=seqs.input_ids, attention_mask=seqs.attention_mask,
                                  use_cache=False).logits[:, :-1].float(), -1) for m in (before, after)]
        mask = seqs.labels[:, 1:] != IGNORE
        kl = (lp[0].exp() * (lp[0] - lp[1])).sum(-1)
        total += float(kl[mask].sum())
        count += int(mask.sum())
        tokens += seqs.n_tokens
    return total / max(count, 1), tokens


def pack(token_lists: list[list[int]]) -> dict:
    """Variable-length token lists stored flat: ``ids`` and per-list ``offsets``."""
    offsets = [0]
    for tokens in token_lists:
        offsets.append(offsets[-1] + len(tokens))
    return {"ids": torch.tensor([t for tokens in token_lists for t in tokens], dtype=torch.int64),
            "offsets": torch.tensor(offsets, dtype=torch.int64)}


def unpack(data: dict, i: int) -> list[int]:
    return data["ids"][int(data["offsets"][i]):int(data["offsets"][i + 1])].tolist()


def compute_samples(model, model_tokenizer, student_tokenizer, examples, rows: list[Encoded], max_prompt_len: int,
                    max_new_tokens: int, max_seq_len: int, desc: str, *, do_sample: bool = False,
                    temperature: float = 1.0, seed: int = 0, backend=None) -> tuple[dict, int]:
    """A model's answers as text, re-encoded with the student's tokenizer (so teacher answers work across
    vocabularies), cut to fit max_seq_len after the student's prompt; stored flat with per-example offsets.
    ``backend``: a GenerationBackend to generate with instead of HF on ``model`` (harness/generation.py)."""
    from harness.data import prompt_ids, response_ids
    from harness.generation import generate_ids

    prompts = [prompt_ids(model_tokenizer, ex.messages)[-max_prompt_len:] for ex in examples]
    eos = model_tokenizer.eos_token_id
    outs = generate_ids(backend or model, prompts, max_new_tokens, pad_id=model_tokenizer.pad_token_id, eos_id=eos,
                        desc=desc, do_sample=do_sample, temperature=temperature, seed=seed)
    answers = []
    for ex, row, new in zip(examples, rows, outs):
        text = model_tokenizer.decode(new, skip_special_tokens=True).strip()
        ids = response_ids(student_tokenizer, ex.messages, text, finished=eos in new)
        answers.append(ids[: max_seq_len - len(row.prompt_ids)])
    return pack(answers), sum(len(new) for new in outs)


def sample_many(model, tokenizer, examples, rows: list[Encoded], n: int, max_prompt_len: int, max_new_tokens: int,
                max_seq_len: int, seed: int, desc: str, *, backend=None) -> tuple[list[list[list[int]]], int]:
    """n sampled answers per prompt (temperature 1, top-p 0.95, one seed per sample index), in the student's
    tokens and cut to fit max_seq_len; returns [example][sample] token lists and the tokens generated.
    ``backend``: a GenerationBackend to generate with instead of HF on ``model``."""
    from harness.generation import generate_ids

    prompts = [r.prompt_ids for r in rows]
    per_seed = [generate_ids(backend or model, prompts, max_new_tokens, pad_id=tokenizer.pad_token_id,
                             eos_id=tokenizer.eos_token_id, do_sample=True, temperature=1.0, top_p=0.95,
                             seed=seed * 1000 + j, desc=f"{desc} {j + 1}/{n}") for j in range(n)]
    generated = sum(len(o) for outs in per_seed for o in outs)
    samples = [[(per_seed[j][i][: max_seq_len - len(r.prompt_ids)] or [tokenizer.eos_token_id]) for j in range(n)]
               for i, r in enumerate(rows)]
    return samples, generated


@torch.no_grad()
def mean_logps(model, tokenizer, pairs: list[tuple[list[dict], str]], max_prompt_len: int, max_seq_len: int,
               desc: str, finished: list[bool] | None = None) -> tuple[list[float], int]:
    """Length-normalised log-likelihood of each (prompt messages, response text) under ``model``, encoded with
    its own tokenizer and chat template; returns the scores and the tokens forwarded. ``finished[i]`` False: the
    response was cut at the generation limit, so its score leaves out the end-of-turn token."""
    from harness.batch import pad_sequences
    from harness.data import prompt_ids, response_ids

    device = next(model.parameters()).device
    encoded = []
    for i, (messages, text) in enumerate(pairs):
        p = prompt_ids(tokenizer, messages)[-max_prompt_len:]
        done = True if finished is None else finished[i]
        encoded.append((p, response_ids(tokenizer, messages, text, done)[: max(max_seq_len - len(p), 1)]))
    scores, tokens = [], 0
    for start in tqdm(range(0, len(encoded), SIGNAL_BATCH), desc=desc, unit="batch", leave=False):
        chunk = encoded[start:start + SIGNAL_BATCH]
        seqs = pad_sequences([p for p, _ in chunk], [r for _, r in chunk], tokenizer.pad_token_id).to(device)
        logits = model(input_ids=seqs.input_ids, attention_mask=seqs.attention_mask, use_cache=False).logits
        tokens += seqs.n_tokens
        total, count = sequence_logps(logits[:, :-1].float(), seqs)
        scores += (total / count.clamp(min=1)).tolist()
    return scores, tokens


@torch.no_grad()
def compute_advantage(student, dpo, ref, rows: list[Encoded], k: int, vocab_limit: int, pad_id: int, eos_id: int,
                      max_new_tokens: int, max_seq_len: int, desc: str, *, backend=None) -> tuple[dict, dict]:
    """ADPA's inputs: the student's greedy answers (as the official code, temperature 0), and at every answer
    position the DPO teacher's top-k (over ids < vocab_limit) with its log-probs, the reference model's exact
    log-probs of those k tokens, and whether each is also in the reference's own top-k (the official code only
    knew the reference's top-k and imputed the rest; ``clamped_official`` mode needs the flag to do the same).
    ``backend``: a GenerationBackend to generate the answers with instead of HF on ``student``."""
    from harness.generation import generate_ids

    device = next(dpo.parameters()).device  # the student may be generating in another engine
    prompts = [r.prompt_ids for r in rows]
    outs = generate_ids(backend or student, prompts, max_new_tokens, pad_id=pad_id, eos_id=eos_id,
                        desc=f"{desc}: greedy answers")
    responses = [o[: max_seq_len - len(p)] or [eos_id] for o, p in zip(outs, prompts)]
    fields = {"topk_ids": [], "dpo_logps": [], "ref_logps": [], "ref_in_topk": []}
    forwarded = 0
    for start in tqdm(range(0, len(rows), SIGNAL_BATCH), desc=f"{desc}: teacher log-probs", unit="batch", leave=False):
        chunk = slice(start, start + SIGNAL_BATCH)
        seqs = pad_sequences(prompts[chunk], responses[chunk], pad_id).to(device)
        mask = seqs.labels[:, 1:] != IGNORE
        logps = []
        for model in (dpo, ref):
            logits = model(input_ids=seqs.input_ids, attention_mask=seqs.attention_mask, use_cache=False).logits
            logps.append(torch.log_softmax(logits[:, :-1].float(), dim=-1))
        forwarded += seqs.n_tokens
        for b in range(seqs.input_ids.shape[0]):
            d, r = (lp[b][mask[b]][:, :vocab_limit] for lp in logps)
            top_v, top_i = d.topk(min(k, vocab_limit), dim=-1)
            ref_top = r.topk(min(k, vocab_limit), dim=-1).indices
            fields["topk_ids"].append(top_i.to(torch.int32).cpu())
            fields["dpo_logps"].append(top_v.cpu())
            fields["ref_logps"].append(r.gather(-1, top_i).cpu())
            fields["ref_in_topk"].append((top_i.unsqueeze(-1) == ref_top.unsqueeze(-2)).any(-1).to(torch.uint8).cpu())
    data = {**pack(responses), **{name: torch.cat(parts) for name, parts in fields.items()}}
    return data, {"generated_tokens": sum(len(o) for o in outs), "forward_tokens_per_model": forwarded}


def save_signal(data: dict, folder: Path) -> None:
    save_file({k: v.contiguous() for k, v in data.items()}, str(folder / "signal.safetensors"))


def load_signal(folder: Path) -> dict:
    return load_file(str(folder / "signal.safetensors"))


def load_topk(folder: Path) -> TopkReader:
    """A cached top-k signal, memory-mapped (written by ``compute_topk(..., out=folder)``)."""
    return TopkReader(folder)


def place_rows(data: dict | TopkReader, fields: tuple[str, ...], index: list[int], seqs: Sequences) -> dict:
    """Place each example's stored per-token rows at its response positions of the padded micro-batch:
    [B, T-1, ...] per field (zeros elsewhere). ``data`` is the flat in-memory form (rows plus ``offsets``) or a
    top-k store's reader (which reads only these examples' rows)."""
    b, t = seqs.input_ids.shape[0], seqs.input_ids.shape[1] - 1
    if isinstance(data, TopkReader):
        specs = data.fields
        examples = (data[i] for i in index)
    else:
        specs = {f: (data[f].dtype, tuple(data[f].shape[1:])) for f in fields}
        bounds = ((int(data["offsets"][i]), int(data["offsets"][i + 1])) for i in index)
        examples = ({f: data[f][lo:hi] for f in fields} for lo, hi in bounds)
    out = {f: torch.zeros((b, t, *specs[f][1]), dtype=specs[f][0]) for f in fields}
    mask = seqs.labels[:, 1:] != IGNORE
    for row, (i, rows) in enumerate(zip(index, examples)):
        pos = mask[row].nonzero().squeeze(-1)
        stored = rows[fields[0]].shape[0]
        if len(pos) != stored:
            raise BenchError(f"Cached teacher signal for example {i} covers {stored} tokens but the batch has "
                             f"{len(pos)}; the cache does not match this tokenisation. Delete the cache folder.")
        for f in fields:
            out[f][row, pos] = rows[f]
    return out


def collate_topk(data: dict | TopkReader, index: list[int], seqs: Sequences) -> dict:
    out = place_rows(data, ("ids", "logps", "rest"), index, seqs)
    out["ids"] = out["ids"].long()
    return out


def collate_advantage(data: dict, index: list[int], batch_chosen: Sequences, pad_id: int) -> dict:
    seqs = with_responses(batch_chosen, [unpack(data, i) for i in index], pad_id)
    out = place_rows(data, ("topk_ids", "dpo_logps", "ref_logps", "ref_in_topk"), index, seqs)
    return {"seqs": seqs, "ids": out["topk_ids"].long(), "dpo_logps": out["dpo_logps"],
            "ref_logps": out["ref_logps"], "ref_in_topk": out["ref_in_topk"].bool()}


def collate_signals(signals: dict[str, dict], batch, pad_id: int) -> dict:
    out = {}
    for name, data in signals.items():
        spec = parse_signal(name)
        if spec.kind == "topk":
            out[name] = collate_topk(data, batch.index, getattr(batch, spec.side))
        elif spec.kind == "samples":
            out[name] = with_responses(batch.chosen, [unpack(data, i) for i in batch.index], pad_id)
        elif spec.kind == "advantage":
            out[name] = collate_advantage(data, batch.index, batch.chosen, pad_id)
        elif spec.kind == "scored_samples":
            n = data["scores"].shape[1]
            prompts = prompts_of(batch.chosen)
            responses = [unpack(data, i * n + j) for i in batch.index for j in range(n)]
            out[name] = {"seqs": pad_sequences([p for p in prompts for _ in range(n)], responses, pad_id),
                         "teacher_scores": data["scores"][batch.index]}
            for field in ("mcq", "distinct"):  # present when the method asked for them (PAD's options)
                if field in data:
                    out[name][field] = data[field][batch.index]
        else:
            out[name] = data["logps"][batch.index]
    return out
