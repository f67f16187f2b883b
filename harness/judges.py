"""Judges: who grades the benchmarks' answers, and the cache that makes every judgment happen once.

A judge takes chat messages and returns its text and, when asked, the top log-probs of its first token
(AlpacaEval's weighted annotator reads only those). Two kinds:

- ``OpenAIJudge`` — any OpenAI-compatible endpoint (OpenAI, a vLLM server, ``transformers serve``, llama.cpp
  server) through the ``openai`` client, whose retries back off on timeouts, 429 and 5xx. The key is read from
  an environment variable at call time and never stored, logged or hashed.
- ``TransformersJudge`` — a local model: greedy or sampled text, and log-probs from the next-token distribution.

Every judgment goes through ``JudgmentCache``: an append-only JSONL file keyed by a hash of the judge's identity,
the exact messages and the decoding settings. An interrupted evaluation resumes without repeating a call, and a
leaderboard is rebuilt from results without any.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from harness.cache import stable_hash
from harness.errors import BenchError


@dataclass(frozen=True)
class Decoding:
    temperature: float = 0.0
    max_tokens: int = 2048
    top_logprobs: int = 0  # > 0: return the first token's top log-probs (the judge must support it)
    # Constrained verdicts (local judges only): instead of free text, the judge's reply is ``prefix`` followed by
    # the most likely of ``choices`` (each scored by its summed log-probability after the chat prompt and prefix).
    # A small local judge rarely writes a parseable verdict on its own; this keeps its judgment on the benchmark's
    # own scale, and the result says it was done this way.
    prefix: str = ""
    choices: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        out = {"temperature": self.temperature, "max_tokens": self.max_tokens, "top_logprobs": self.top_logprobs}
        if self.choices:  # only then, so that the cache keys of free judgments stay what they were
            out.update(prefix=self.prefix, choices=list(self.choices))
        return out


@dataclass
class Judgment:
    text: str
    top_logprobs: list[tuple[str, float]] | None = None  # the first generated token's alternatives
    error: str | None = None  # set when the judge could not answer; the benchmark decides what that counts as

    def to_dict(self) -> dict:
        return {"text": self.text, "top_logprobs": self.top_logprobs, "error": self.error}

    @classmethod
    def from_dict(cls, d: dict) -> Judgment:
        top = [tuple(t) for t in d["top_logprobs"]] if d.get("top_logprobs") is not None else None
        return cls(d["text"], top, d.get("error"))


class Judge:
    def identity(self) -> dict:
        """What makes this judge's verdicts comparable: part of every cache key and every result."""
        raise NotImplementedError

    def judge(self, messages: list[dict], decoding: Decoding) -> Judgment:
        raise NotImplementedError

    def describe(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.identity().items())


# ---------------------------------------------------------------- OpenAI-compatible endpoint


class JudgeUnavailable(BenchError):
    """The judge cannot be used at all: stop, rather than record every remaining judgment as failed."""

    exit_code = 69  # EX_UNAVAILABLE


class OpenAIJudge(Judge):
    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 120.0, max_retries: int = 6, concurrency: int = 4):
        self.model, self.base_url, self.api_key_env = model, base_url, api_key_env
        self.timeout, self.max_retries, self.concurrency = timeout, max_retries, concurrency
        self._client = None
        self._lock = threading.Lock()
        # Set once the endpoint is unreachable after the client's retries, or answers with something that is not a
        # chat completion: later calls fail at once, and judge_all / cached_judge stop the benchmark with it.
        self.unavailable: str | None = None

    def identity(self) -> dict:
        # The endpoint's address says which server answered; the key never enters an identity.
        return {"kind": "openai", "model": self.model, "base_url": self.base_url or "https://api.openai.com/v1"}

    def client(self):
        with self._lock:
            if self._client is None:
                from openai import OpenAI

                key = os.environ.get(self.api_key_env)
                if not key and self.base_url is None:
                    raise BenchError(f"The judge {self.model!r} on api.openai.com needs an API key in the environment "
                                     f"variable {self.api_key_env}. Export it, or pass --judge-base-url for a local "
                                     "server.")
                self._client = OpenAI(api_key=key or "not-needed", base_url=self.base_url, timeout=self.timeout,
                                      max_retries=self.max_retries)
            return self._client

    def judge(self, messages, decoding):
        import openai

        if decoding.choices:
            raise BenchError("Constrained verdicts need the judge's log-probabilities of whole answer strings, which "
                             "chat-completion servers do not give; use a local judge (local:...) or free verdicts.")
        if self.unavailable:
            return Judgment("", None, self.unavailable)
        kwargs = {"model": self.model, "messages": messages, "temperature": decoding.temperature,
                  "max_tokens": decoding.max_tokens}
        if decoding.top_logprobs:
            kwargs.update(logprobs=True, top_logprobs=decoding.top_logprobs)
        try:
            response = self.client().chat.completions.create(**kwargs)
        except openai.APIConnectionError as e:  # includes timeouts, after the client's retries
            cause = f" ({e.__cause__})" if e.__cause__ else ""
            self.unavailable = f"connection: {e}{cause} after {self.max_retries} retries"
            return Judgment("", None, self.unavailable)
        except openai.APIStatusError as e:  # a status the client does not retry, or retries ran out
            return Judgment("", None, f"HTTP {e.status_code}: {str(e)[:200]}")
        try:
            choice = response.choices[0]
            text = choice.message.content or ""
            top = None
            if decoding.top_logprobs:
                content = choice.logprobs.content if choice.logprobs is not None else None
                if not content:  # e.g. transformers serve ignores the field: an error, so it is not cached
                    return Judgment("", None, "the server returned no logprobs (it may not support them); use a "
                                              "server that does (vLLM, OpenAI) or a local judge")
                top = [(t.token, float(t.logprob)) for t in content[0].top_logprobs]
        except (AttributeError, IndexError, TypeError) as e:
            # A 200 whose body is no chat completion (an HTML page, a proxy's reply, {"choices": []}): the URL is
            # not an OpenAI-compatible endpoint, and asking again would get the same.
            self.unavailable = f"malformed response: {e} (the reply began {str(response)[:120]!r})"
            return Judgment("", None, self.unavailable)
        return Judgment(text, top)


# ---------------------------------------------------------------- local transformers model


class TransformersJudge(Judge):
    """A local chat model as judge. Without a system role in its template, the system text is folded into the
    user turn (FastChat does the same for judges that lack one)."""

    def __init__(self, spec, device: str | None = None):
        self.spec = spec
        self.device = device
        self._model = self._tokenizer = None
        self._lock = threading.Lock()
        self.concurrency = 1

    def identity(self) -> dict:
        return {"kind": "transformers", "model": self.spec.identity()}

    def describe(self) -> str:
        return f"local {self.spec.describe()}"

    def load(self):
        if self._model is None:
            import torch

            from harness.models import load_model, load_tokenizer

            self._tokenizer = load_tokenizer(self.spec)
            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            self._model = load_model(self.spec).to(device)
        return self._model, self._tokenizer

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        _, tok = self.load()
        try:
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # a template that refuses a system turn
            text = tok.apply_chat_template(fold_system(messages), tokenize=False, add_generation_prompt=True)
        return tok(text, add_special_tokens=False)["input_ids"]

    def judge(self, messages, decoding):
        import torch

        if decoding.choices:
            return self.choose(messages, decoding.prefix, decoding.choices)
        with self._lock:  # one model, one forward at a time
            model, tok = self.load()
            ids = torch.tensor([self.prompt_ids(messages)], device=next(model.parameters()).device)
            top = None
            with torch.no_grad():
                if decoding.top_logprobs:
                    logits = model(input_ids=ids, use_cache=False).logits[0, -1].float()
                    values, indices = torch.log_softmax(logits, -1).topk(decoding.top_logprobs)
                    top = [(tok.decode([int(i)]), float(v)) for v, i in zip(values, indices)]
                from harness.generation import generate_ids

                new = generate_ids(model, ids.tolist(), decoding.max_tokens, pad_id=tok.pad_token_id or 0,
                                   eos_id=tok.eos_token_id, do_sample=decoding.temperature > 1e-4,
                                   temperature=max(decoding.temperature, 1e-4), desc=None)[0]
            return Judgment(tok.decode(new, skip_special_tokens=True).strip(), top)

    def choose(self, messages: list[dict], prefix: str, choices: tuple[str, ...]) -> Judgment:
        """The most likely of ``choices`` after the prompt and ``prefix``; ``top_logprobs`` holds every choice's
        summed log-probability, in the order given. The prompt is run once and its cache shared by the choices."""
        import torch

        from harness.models import cache_of, continue_from

        with self._lock:
            model, tok = self.load()
            device = next(model.parameters()).device
            context = self.prompt_ids(messages) + (tok(prefix, add_special_tokens=False)["input_ids"] if prefix else [])
            options = [tok(c, add_special_tokens=False)["input_ids"] for c in choices]
            if not all(options):
                raise BenchError(f"Every verdict choice must be non-empty text; got {list(choices)!r}.")
            width = max(map(len, options))
            # Right padding: a choice's real tokens never attend to the padding after them.
            batch = torch.tensor([o + [o[-1]] * (width - len(o)) for o in options], device=device)
            with torch.no_grad():
                out = model(input_ids=torch.tensor([context], device=device), use_cache=True)
                first = torch.log_softmax(out.logits[0, -1].float(), -1)
                cache = cache_of(out)
                cache.batch_repeat_interleave(len(options))
                rest = torch.log_softmax(model(input_ids=batch, **continue_from(model, cache)).logits.float(), -1)
            scores = []
            for i, o in enumerate(options):
                total = float(first[o[0]])
                total += sum(float(rest[i, j - 1, o[j]]) for j in range(1, len(o)))
                scores.append(total)
            best = max(range(len(choices)), key=scores.__getitem__)
            return Judgment(prefix + choices[best], [(c, v) for c, v in zip(choices, scores)])


def fold_system(messages: list[dict]) -> list[dict]:
    """[system, user, ...] -> [user with the system text prepended, ...]."""
    if not messages or messages[0]["role"] != "system":
        return messages
    system, rest = messages[0]["content"], messages[1:]
    if not rest or rest[0]["role"] != "user":
        return [{"role": "user", "content": system}, *rest]
    return [{"role": "user", "content": f"{system}\n\n{rest[0]['content']}"}, *rest[1:]]


# ---------------------------------------------------------------- cache and batch judging


@dataclass
class JudgmentCache:
    """Append-only JSONL of judgments; a line is written (and flushed to disk) as soon as a judgment returns,
    so a killed evaluation loses at most the calls in flight."""

    path: Path
    _entries: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        self.path = Path(self.path)
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                    self._entries[row["key"]] = Judgment.from_dict(row["judgment"])
                except (json.JSONDecodeError, KeyError):
                    continue  # a line cut short by a kill: that call is simply made again

    @staticmethod
    def key(judge: Judge, messages: list[dict], decoding: Decoding) -> str:
        return stable_hash({"judge": judge.identity(), "messages": messages, "decoding": decoding.to_dict()}, 32)

    def get(self, key: str) -> Judgment | None:
        return self._entries.get(key)

    def put(self, key: str, judgment: Judgment, meta: dict | None = None) -> None:
        line = json.dumps({"key": key, "judgment": judgment.to_dict(), **(meta or {})}, sort_keys=True) + "\n"
        with self._lock:
            self._entries[key] = judgment
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())

    def __len__(self) -> int:
        return len(self._entries)


def stop_if_unavailable(judge: Judge) -> None:
    """Raise JudgeUnavailable when the judge cannot be used at all (see OpenAIJudge.unavailable)."""
    problem = getattr(judge, "unavailable", None)
    if problem:
        where = judge.identity().get("base_url", "")
        raise JudgeUnavailable(
            f"The judge {judge.identity().get('model')!r} at {where} cannot be used: {problem}. Check that a server "
            "is running there and speaks the OpenAI chat-completions API (--judge-base-url usually ends in /v1), "
            "then run the same command again: the answers and every judgment made so far are cached, so it "
            "resumes where it stopped.")


def cached_judge(judge: Judge, cache: JudgmentCache, messages: list[dict], decoding: Decoding) -> tuple[Judgment, bool]:
    """One judgment through the cache; returns it and whether a call was made. Failures are not cached; a judge
    that cannot be used at all raises JudgeUnavailable."""
    key = JudgmentCache.key(judge, messages, decoding)
    hit = cache.get(key)
    if hit is not None:
        return hit, False
    result = judge.judge(messages, decoding)
    if result.error is None:
        cache.put(key, result)
    stop_if_unavailable(judge)
    return result, True


def judge_all(judge: Judge, requests: list[list[dict]], decoding: Decoding, cache: JudgmentCache,
              desc: str = "judge") -> tuple[list[Judgment], dict]:
    """Judge every message list, cached ones from the cache; returns judgments in order and call counts.
    Failed calls (``error`` set) are not cached, so a re-run tries them again; a judge that cannot be used at all
    raises JudgeUnavailable once the calls in flight are back (the successful ones are cached)."""
    keys = [JudgmentCache.key(judge, m, decoding) for m in requests]
    out: list[Judgment | None] = [cache.get(k) for k in keys]
    todo = [i for i, j in enumerate(out) if j is None]
    counts = {"cached": len(requests) - len(todo), "called": len(todo), "failed": 0}
    if not todo:
        return out, counts
    bar = tqdm(total=len(todo), desc=desc, unit="call", leave=False)

    def one(i: int) -> None:
        result = judge.judge(requests[i], decoding)
        if result.error is None:
            cache.put(keys[i], result)
        out[i] = result
        bar.update(1)

    with ThreadPoolExecutor(max_workers=max(1, getattr(judge, "concurrency", 1))) as pool:
        list(pool.map(one, todo))
    bar.close()
    stop_if_unavailable(judge)
    counts["failed"] = sum(1 for i in todo if out[i].error is not None)
    return out, counts
