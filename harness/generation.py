"""One generation interface for sampling methods and for benchmark answers.

A ``GenerationBackend`` continues token-id prompts: ``HFBackend`` runs batched HF ``generate`` on a model in
memory; ``VLLMBackend`` runs vLLM on a model folder (much faster on a GPU, other kernels, so other text: its
``identity()`` enters the cache keys of stages that store generated text). ``select_backend`` picks one from
``$BENCH_GENERATION_BACKEND`` (auto | hf | vllm).

Under ``resumable(folder)`` (harness/journal.py) every batch's outputs are journalled as soon as they exist, so
a run killed in the middle of sampling resumes from the batch it was on.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch
from tqdm.auto import tqdm

from harness.data import prompt_ids
from harness.errors import BenchError
from harness.journal import journalled, unjournalled

BACKEND_ENV = "BENCH_GENERATION_BACKEND"
PREFERENCES = ("auto", "hf", "vllm")
VLLM_INSTALL_HINT = "pip install 'bench[vllm]'"


def cut_at_eos(new: list[int], eos_id: int) -> list[int]:
    return new[: new.index(eos_id) + 1] if eos_id in new else new


# ---------------------------------------------------------------- backends


class GenerationBackend:
    """Continues token-id prompts. ``generate`` returns the new tokens per prompt, in the caller's order, each
    ending with ``eos_id`` when the answer finished before ``max_new_tokens``."""

    name = "base"

    def identity(self) -> dict:
        """What enters cache keys: the same model and settings give other text on another engine."""
        raise NotImplementedError

    def generate(self, prompts: list[list[int]], *, max_new_tokens: int, pad_id: int, eos_id: int,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                 desc: str | None = None) -> list[list[int]]:
        raise NotImplementedError


class HFBackend(GenerationBackend):
    """Batched HF ``generate`` on a model in memory: length-sorted batches, left padding, each batch seeded with
    ``seed + <its first position in the sorted order>`` without touching the global random state."""

    name = "hf"

    def __init__(self, model, batch_size: int = 8):
        self.model = model
        self.batch_size = batch_size

    def identity(self) -> dict:
        return {"engine": "hf"}

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], *, max_new_tokens: int, pad_id: int, eos_id: int,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                 desc: str | None = None) -> list[list[int]]:
        model = self.model
        was_training = model.training
        model.eval()
        # Sorting by length keeps padding (wasted compute) low; results go back in the caller's order.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[list[int]] = [[] for _ in prompts]
        starts = range(0, len(order), self.batch_size)
        try:
            for start in tqdm(starts, desc=desc, unit="batch", leave=False) if desc else starts:
                idx = order[start:start + self.batch_size]
                batch = [list(prompts[i]) for i in idx]
                settings = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "temperature": temperature,
                            "top_p": top_p, "seed": seed + start, "eos_id": eos_id, "pad_id": pad_id}
                outs = journalled(self.name, batch, settings, functools.partial(self._batch, batch, **settings))
                for i, new in zip(idx, outs):
                    results[i] = new
        finally:
            model.train(was_training)
        return results

    def _batch(self, batch: list[list[int]], *, max_new_tokens: int, do_sample: bool, temperature: float,
               top_p: float, seed: int, eos_id: int, pad_id: int) -> list[list[int]]:
        model = self.model
        device = next(model.parameters()).device
        length = max(len(p) for p in batch)
        ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(batch):  # left padding: every prompt ends where generation starts
            ids[row, length - len(p):] = torch.tensor(p)
            mask[row, length - len(p):] = 1
        kwargs = {"do_sample": do_sample}
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        # Seed sampling without disturbing the global random state that training relies on.
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=eos_id, **kwargs)
        return [cut_at_eos(out[row, length:].tolist(), eos_id) for row in range(len(batch))]


def vllm_sampling_kwargs(*, max_new_tokens: int, eos_id: int, do_sample: bool, temperature: float, top_p: float,
                         seed: int) -> dict:
    """Our decoding settings as ``vllm.SamplingParams`` keyword arguments (kept a plain dict so it is testable
    without vLLM). Greedy is temperature 0 in vLLM; top-k stays vLLM's default (off), as ``top_k=0`` in HF."""
    kwargs = {"max_tokens": max_new_tokens, "stop_token_ids": [eos_id],
              "detokenize": False}  # we read token ids only; the engine has no tokenizer (skip_tokenizer_init)
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p, seed=seed)
    else:
        kwargs.update(temperature=0.0)
    return kwargs


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def _require_vllm() -> None:
    if not vllm_installed():
        raise BenchError(f"{BACKEND_ENV}=vllm asks for vLLM, which is not installed. Install it on a CUDA machine "
                         f"with `{VLLM_INSTALL_HINT}`, or set {BACKEND_ENV}=auto (or hf) to generate with "
                         "Hugging Face transformers.")


def vllm_identity(dtype: str = "auto") -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("vllm")
    except PackageNotFoundError:
        release = None
    return {"engine": "vllm", "version": release, "dtype": dtype}


class VLLMBackend(GenerationBackend):
    """vLLM on a model folder (or hub id). The engine starts on the first ``generate`` (it takes most of the GPU's
    memory), so building this object to read its identity is free. Prompts go in as token ids and the engine
    loads no tokenizer: a trained checkpoint folder holds weights only."""

    name = "vllm"
    CHUNK = 512  # prompts per engine call: vLLM batches inside a call; the journal resumes between calls

    def __init__(self, model_path, tensor_parallel_size: int | None = None, dtype: str = "auto",
                 gpu_memory_utilization: float = 0.85, revision: str | None = None):
        _require_vllm()
        self.model_path = str(model_path)
        self.tensor_parallel_size = tensor_parallel_size or max(torch.cuda.device_count(), 1)
        self.dtype = dtype
        self.gpu_memory_utilization = gpu_memory_utilization
        self.revision = revision
        self._llm = None

    def identity(self) -> dict:
        # Not the tensor-parallel size: keys stay shared between machines with different GPU counts.
        return vllm_identity(self.dtype)

    def engine(self):
        if self._llm is None:
            import vllm

            self._llm = vllm.LLM(model=self.model_path, tensor_parallel_size=self.tensor_parallel_size,
                                 dtype=self.dtype, gpu_memory_utilization=self.gpu_memory_utilization, seed=0,
                                 revision=self.revision, skip_tokenizer_init=True)
        return self._llm

    def generate(self, prompts: list[list[int]], *, max_new_tokens: int, pad_id: int, eos_id: int,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                 desc: str | None = None) -> list[list[int]]:
        from vllm import SamplingParams

        results: list[list[int]] = []
        for start in range(0, len(prompts), self.CHUNK):
            chunk = [list(p) for p in prompts[start:start + self.CHUNK]]
            settings = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "temperature": temperature,
                        "top_p": top_p, "seed": seed + start, "eos_id": eos_id}

            def make(chunk=chunk, first=start):
                # One seed per prompt (vLLM seeds each request's own generator): prompts that share a seed
                # would draw the same random numbers.
                params = [SamplingParams(**vllm_sampling_kwargs(
                    max_new_tokens=max_new_tokens, eos_id=eos_id, do_sample=do_sample, temperature=temperature,
                    top_p=top_p, seed=seed + first + j)) for j in range(len(chunk))]
                outs = self.engine().generate([{"prompt_token_ids": p} for p in chunk], params,
                                              use_tqdm=bool(desc))
                return [cut_at_eos(list(o.outputs[0].token_ids), eos_id) for o in outs]

            results += journalled(self.name, chunk, settings, make)
        return results


# ---------------------------------------------------------------- choosing a backend


def backend_preference(value: str | None = None) -> str:
    """``value``, or ``$BENCH_GENERATION_BACKEND`` when None (default auto), checked."""
    raw = os.environ.get(BACKEND_ENV, "auto") if value is None else value
    preference = raw.strip().lower()
    if preference not in PREFERENCES:
        raise BenchError(f"{BACKEND_ENV}={raw!r} is not a generation backend; use auto (vLLM when a GPU and vLLM "
                         "are there, Hugging Face otherwise), hf or vllm.")
    return preference


def decide_engine(preference: str, *, cuda: bool, vllm_present: bool, has_model_path: bool) -> str:
    """"hf" or "vllm" for a checked preference and the facts of this machine and call."""
    if preference == "hf":
        return "hf"
    if preference == "vllm":
        if not vllm_present:
            _require_vllm()
        if not has_model_path:
            raise BenchError(f"{BACKEND_ENV}=vllm, but this generation has only a model in memory and vLLM loads "
                             "models from a folder; set it to auto (or hf) to generate with Hugging Face here.")
        return "vllm"
    return "vllm" if cuda and vllm_present and has_model_path else "hf"


def choose_engine(preference: str | None = None, *, has_model_path: bool) -> str:
    """The engine ``select_backend`` would use, known before any model is loaded (stage keys need it)."""
    return decide_engine(backend_preference(preference), cuda=torch.cuda.is_available(),
                         vllm_present=vllm_installed(), has_model_path=has_model_path)


def backend_key(engine: str | GenerationBackend) -> dict:
    """What an engine adds to the key of a stage that stores generated text: nothing for HF, so every key made
    before there was a choice stays valid; the engine's identity otherwise."""
    if isinstance(engine, GenerationBackend):
        return {} if engine.name == "hf" else {"backend": engine.identity()}
    return {} if engine == "hf" else {"backend": vllm_identity()}


def select_backend(preference: str | None = None, *, model=None, model_path=None,
                   batch_size: int = 8) -> GenerationBackend:
    """The backend for a fixed model: vLLM on ``model_path`` or HF on ``model``. ``preference`` defaults to
    ``$BENCH_GENERATION_BACKEND``; ``model`` may be a function that loads the model, called only when HF is
    chosen, so a vLLM run never holds a second copy of the weights on the GPU. The student being trained is
    never given here: on-policy sampling (``resample``) stays on HF."""
    engine = choose_engine(preference, has_model_path=model_path is not None)
    if engine == "vllm":
        return VLLMBackend(model_path)
    if model is None:
        raise ValueError("select_backend chose Hugging Face generation but was given no model")
    return HFBackend(model() if callable(model) and not isinstance(model, torch.nn.Module) else model, batch_size)


# ---------------------------------------------------------------- what the rest of the code calls


def generate_ids(model, prompts: list[list[int]], max_new_tokens: int, *, pad_id: int, eos_id: int,
                 batch_size: int = 8, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                 seed: int = 0, desc: str | None = "generate") -> list[list[int]]:
    """Continue each token-id prompt; returns the new tokens per prompt (ending with eos when finished), in order.
    ``model``: a model in memory (generated with HF, ``batch_size`` prompts at a time) or a GenerationBackend."""
    backend = model if isinstance(model, GenerationBackend) else HFBackend(model, batch_size)
    return backend.generate(prompts, max_new_tokens=max_new_tokens, pad_id=pad_id, eos_id=eos_id,
                            do_sample=do_sample, temperature=temperature, top_p=top_p, seed=seed, desc=desc)


def generate(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, *, batch_size: int = 8,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
             max_prompt_len: int | None = None, desc: str = "generate") -> list[dict]:
    """Answer each chat prompt; returns ``{"text", "n_tokens", "finished"}`` per prompt, in order. ``model``: a
    model in memory or a GenerationBackend."""
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
    # Always HF on the live student: vLLM would hold its own copy of the weights, stale after every optimizer
    # step unless synced into the engine each time. Not journalled either: the answers depend on weights that
    # change from step to step, which the journal's keys do not name.
    with unjournalled():
        outs = HFBackend(model, batch_size=len(prompts)).generate(
            prompts, max_new_tokens=runtime.max_new_tokens, pad_id=runtime.pad_id, eos_id=runtime.eos_id,
            do_sample=True, temperature=temperature, seed=seed)
    generated = sum(len(o) for o in outs)
    outs = [o[: runtime.max_seq_len - len(p)] or [runtime.eos_id] for o, p in zip(outs, prompts)]
    return with_responses(seqs, outs, runtime.pad_id), generated
