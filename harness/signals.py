"""The built-in signals shared by many methods, and the helpers that compute and collate signals.

- ``teacher_topk:<side>`` — the teacher's top-k log-probs and the log-mass of the rest, at every response
  position of the chosen or rejected response (teacher-forced on the data set's text);
- ``reference_logps`` — the frozen starting student's summed log-probs of the chosen and rejected responses;
- ``teacher_samples`` — the teacher's greedy response to each prompt (SeqKD's training targets);
- ``student_samples`` — one response per prompt sampled (temperature 1, seeded) from the starting student;
- ``teacher_model`` — not cached: the live teacher, handed to the method (``method.runtime.teacher``).

A method's own signal lives with the method: ``adpa_advantage`` in methods/adpa/, ``scored_samples`` in
methods/pad/. How a signal is declared: harness/signal_api.py.

"Student" signals come from the student a method starts from: the initial student, or for a method that starts
from another method's result (ADPA+ from DCKD) that result.

Signals are stored flat (one row per response token, with per-example offsets) as safetensors, except the
top-k signal: a sharded, memory-mapped store in compact dtypes (harness/topk_store.py), since at k = 50 it is
by far the largest.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from harness.batch import IGNORE, Sequences, collate, pad_sequences, with_responses
from harness.data import Encoded
from harness.errors import BenchError
from harness.generation import backend_key, choose_engine, select_backend
from harness.journal import saved_batch, seqs_key
from harness.keys import teacher_key
from harness.losses import sequence_logps
from harness.models import count_parameters, folder_parameters
from harness.signal_api import (
    Signal,
    collate_signals,
    load_signal,
    parse_signal,
    register_signal,
    save_signal,
)
from harness.topk_store import DEFAULT_EXAMPLES_PER_SHARD, TopkReader, TopkWriter
from harness.topk_store import VERSION as TOPK_STORE_VERSION

__all__ = ["collate_signals", "load_signal", "parse_signal", "save_signal"]  # where callers have always found them

SIGNAL_BATCH = 8


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


def _summed_logps(model, seqs: Sequences) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's summed response log-prob under ``model`` and its response length."""
    logits = model(input_ids=seqs.input_ids, attention_mask=seqs.attention_mask, use_cache=False).logits
    return sequence_logps(logits[:, :-1].float(), seqs)


def _mean_logps(model, seqs: Sequences) -> list[float]:
    total, count = _summed_logps(model, seqs)
    return (total / count.clamp(min=1)).tolist()


@torch.no_grad()
def compute_sequence_logps(model, rows: list[Encoded], pad_id: int, desc: str) -> tuple[dict, int]:
    out, tokens = [], 0
    device = next(model.parameters()).device
    for batch in tqdm(list(_batches(rows, pad_id)), desc=desc, unit="batch", leave=False):
        sides = (batch.chosen, batch.rejected)
        out.append(saved_batch(f"sequence logps: {desc}", [seqs_key(s) for s in sides], lambda sides=sides: torch.stack(
            [_summed_logps(model, s.to(device))[0].cpu() for s in sides], dim=-1)))
        tokens += sum(s.n_tokens for s in sides)
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
        seqs = pad_sequences([p for p, _ in chunk], [r for _, r in chunk], tokenizer.pad_token_id)
        scores += saved_batch(f"mean logps: {desc}", chunk, lambda seqs=seqs: _mean_logps(model, seqs.to(device)))
        tokens += seqs.n_tokens
    return scores, tokens


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




@register_signal("teacher_topk")
class TeacherTopk(Signal):
    description = "The teacher's top-k log-probs and rest mass at every position of the chosen or rejected response."
    arguments = ("chosen", "rejected")
    counts_as = "teacher"

    def key_parts(self, run, method):
        return {"producer": run.pair.teacher.identity(), "k": run.budget.teacher_top_k, "store": TOPK_STORE_VERSION,
                "value_dtype": run.budget.teacher_topk_dtype}

    def compute(self, run, split, method, out):
        # Streamed into a memory-mapped store inside the build folder, read back lazily.
        model = run.teacher()
        reader, tokens = compute_topk(model, run.rows(split), self.argument, run.budget.teacher_top_k,
                                      run.tokenizer.pad_token_id, len(run.tokenizer), self.desc(split), out=out,
                                      value_dtype=run.budget.teacher_topk_dtype)
        params = count_parameters(model)["matmul"]
        return {"kind": "topk", "forward_tokens": tokens, "model_params": params, "flops": 2 * params * tokens,
                "generated_tokens": 0, "bytes_per_position": reader.bytes_per_position()}

    def load(self, folder):
        return load_topk(folder)

    def collate(self, data, batch, pad_id):
        return collate_topk(data, batch.index, getattr(batch, self.argument))


@register_signal("reference_logps")
class ReferenceLogps(Signal):
    description = "The starting student's summed log-probs of the chosen and rejected responses."
    counts_as = "reference"

    def key_parts(self, run, method):
        return {"producer": run.student_key(method)}

    def compute(self, run, split, method, out):
        model = run.student_for(method)
        data, tokens = compute_sequence_logps(model, run.rows(split), run.tokenizer.pad_token_id, self.desc(split))
        params = count_parameters(model)["matmul"]
        save_signal(data, out)
        return {"kind": "sequence_logps", "forward_tokens": tokens, "model_params": params,
                "flops": 2 * params * tokens, "generated_tokens": 0}

    def collate(self, data, batch, pad_id):
        return data["logps"][batch.index]


class _Samples(Signal):
    from_teacher = False

    def key_parts(self, run, method):
        producer = run.pair.teacher.identity() if self.from_teacher else run.student_key(method)
        # Generated by a fixed model from its folder, by vLLM where chosen: its text differs from HF's (the key
        # gains nothing on HF).
        return {"producer": producer, "gen": run.budget.gen_max_new_tokens, "seed": run.budget.seed,
                **backend_key(choose_engine(has_model_path=True))}

    def compute(self, run, split, method, out):
        # Teacher answers are greedy (SeqKD); the student's are sampled at temperature 1, seeded.
        loader = run.teacher if self.from_teacher else (lambda: run.student_for(method))
        folder = run.model_folder(method, self.from_teacher)
        backend = select_backend(model=loader, model_path=folder)
        b = run.budget
        data, tokens = compute_samples(
            None, run.teacher_tokenizer if self.from_teacher else run.tokenizer, run.tokenizer, run.examples(split),
            run.rows(split), b.max_prompt_len, b.gen_max_new_tokens, b.max_seq_len, self.desc(split),
            do_sample=not self.from_teacher, seed=b.seed, backend=backend)
        del backend
        params = folder_parameters(folder)
        save_signal(data, out)
        return {"kind": "samples", "forward_tokens": tokens, "model_params": params, "flops": 2 * params * tokens,
                "generated_tokens": tokens}

    def collate(self, data, batch, pad_id):
        return with_responses(batch.chosen, [unpack(data, i) for i in batch.index], pad_id)


@register_signal("teacher_samples")
class TeacherSamples(_Samples):
    description = "The teacher's greedy answer to each prompt."
    counts_as = "teacher"
    from_teacher = True


@register_signal("student_samples")
class StudentSamples(_Samples):
    description = "One answer per prompt sampled from the starting student (temperature 1, seeded)."


@register_signal("teacher_model")
class TeacherModel(Signal):
    description = "The live teacher, handed to the method as method.runtime.teacher (nothing is cached)."
    cached = False

    def stage_key(self, run, split, method):
        return teacher_key(run.pair.teacher.identity())
