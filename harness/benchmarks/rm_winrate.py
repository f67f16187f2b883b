"""Reward-model win rate: a cheap local proxy for judge-based win rates, not a published benchmark.
Protocol: ``shared/reference/benchmarks.md`` section 6.

Each prompt's candidate and reference responses are scored by the same reward model, each formatted with the
RM's own chat template, and the candidate wins a prompt when its reward is higher (a tie counts half). RMs are
length-biased, so the mean lengths of both sides are reported next to the win rate.

Scoring goes through a ``Scorer`` so tests and users can inject their own; ``RewardModel`` is the real one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from harness.cache import file_fingerprint
from harness.errors import BenchError
from harness.stats import standard_error

log = logging.getLogger(__name__)

# (prompt chat messages, response text) pairs -> one reward each, in order.
Scorer = Callable[[list[tuple[list[dict], str]]], list[float]]

# Besides the weights, these shape the rewards: the template and tokenizer decide what is scored, the config
# decides the pad id (which token is read), and *.py is the custom code of trust_remote_code models.
_IDENTITY_FILES = ("*.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "chat_template.jinja", "*.py")


def win_rates(rewards: list[float], ref_rewards: list[float], seed: int = 0, n_boot: int = 1000) -> dict:
    """Win rate of ``rewards`` over ``ref_rewards`` (paired by index), in percent, with SEs and bootstrap
    95% CIs (``n_boot=0`` skips them)."""
    if len(rewards) != len(ref_rewards):
        raise BenchError(f"Got {len(rewards)} candidate rewards but {len(ref_rewards)} reference rewards; "
                         "the win rate needs one pair per prompt.")
    if not rewards:
        raise BenchError("No rewards to compare: the win rate needs at least one prompt.")
    if n_boot < 0:
        raise BenchError(f"n_boot must be >= 0 (0 skips the bootstrap), got {n_boot}.")
    r = np.asarray(rewards, dtype=np.float64)
    ref = np.asarray(ref_rewards, dtype=np.float64)
    for side, values in (("candidate", r), ("reference", ref)):
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise BenchError(f"The {side} reward at index {bad[0]} is {values[bad[0]]}; a reward model "
                             "that returns NaN or infinity cannot be compared (check its dtype and inputs).")
    n = len(r)
    w = (r > ref) + 0.5 * (r == ref)
    # 0.5 * (1 + tanh(d / 2)) is the logistic sigmoid without overflow for large |d|.
    soft = 0.5 * (1.0 + np.tanh((r - ref) / 2.0))
    out = {
        "n": n,
        "n_wins": int((r > ref).sum()),
        "n_ties": int((r == ref).sum()),
        "n_losses": int((r < ref).sum()),
        "win_rate": 100.0 * float(w.mean()),
        "win_rate_se": _percent(standard_error(w)),
        "soft_win_rate": 100.0 * float(soft.mean()),
        "soft_win_rate_se": _percent(standard_error(soft)),
        "mean_reward": float(r.mean()),
        "mean_reward_ref": float(ref.mean()),
        "win_rate_ci95": None,
        "soft_win_rate_ci95": None,
    }
    if n_boot:
        # Resample prompts, not sides; both forms share the resampled indices, so their CIs are comparable.
        rng = np.random.default_rng(seed)
        boot = np.empty((n_boot, 2))
        for b in range(n_boot):
            idx = rng.integers(0, n, size=n)
            boot[b] = w[idx].mean(), soft[idx].mean()
        lo, hi = 100.0 * np.percentile(boot, [2.5, 97.5], axis=0)
        out["win_rate_ci95"] = [float(lo[0]), float(hi[0])]
        out["soft_win_rate_ci95"] = [float(lo[1]), float(hi[1])]
    return out


def _percent(se: float | None) -> float | None:
    return None if se is None else 100.0 * se


def score_against_reference(prompts: list[list[dict]], candidates: list[str], references: list[str],
                            scorer: Scorer, seed: int = 0) -> tuple[dict, list[dict]]:
    """Score candidate and reference responses to the same prompts; return the summary and per-prompt rows."""
    if not len(prompts) == len(candidates) == len(references):
        raise BenchError(f"Got {len(prompts)} prompts, {len(candidates)} candidate responses and "
                         f"{len(references)} reference responses; each prompt needs exactly one of each.")
    # One call per side, so a batching scorer sees every pair of that side at once.
    rewards = _score(scorer, list(zip(prompts, candidates, strict=True)))
    ref_rewards = _score(scorer, list(zip(prompts, references, strict=True)))
    summary = win_rates(rewards, ref_rewards, seed=seed)
    lengths = [len(c) for c in candidates]
    ref_lengths = [len(c) for c in references]
    summary["mean_length"] = float(np.mean(lengths)) if lengths else None
    summary["mean_length_ref"] = float(np.mean(ref_lengths)) if ref_lengths else None
    rows = [{"i": i, "reward": rewards[i], "reward_ref": ref_rewards[i],
             "w": 1.0 if rewards[i] > ref_rewards[i] else 0.5 if rewards[i] == ref_rewards[i] else 0.0,
             "length": lengths[i], "length_ref": ref_lengths[i]}
            for i in range(len(prompts))]
    return summary, rows


def _score(scorer: Scorer, pairs: list[tuple[list[dict], str]]) -> list[float]:
    rewards = [float(x) for x in scorer(pairs)]
    if len(rewards) != len(pairs):
        raise BenchError(f"The scorer returned {len(rewards)} rewards for {len(pairs)} (prompt, response) "
                         "pairs; it must return exactly one reward per pair, in order.")
    return rewards


class RewardModel:
    """A sequence-classification reward model (Skywork-Reward; ArmoRM with trust_remote_code) as a Scorer.

    Loads on first use, so building one (and asking for its identity) costs nothing.
    """

    def __init__(self, source: str, trust_remote_code: bool = False, device: str | None = None,
                 batch_size: int = 8, max_length: int = 4096):
        if batch_size < 1 or max_length < 1:
            raise BenchError(f"batch_size and max_length must be >= 1, got {batch_size} and {max_length}.")
        self.source = source
        self.trust_remote_code = trust_remote_code
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self._model = None
        self._tokenizer = None
        self._identity: dict | None = None

    def identity(self) -> dict:
        """What makes these rewards these rewards, for cache keys; local files are hashed by content."""
        if self._identity is None:
            # max_length is here because truncation changes what gets scored.
            ident: dict = {"kind": "reward_model", "model": self.source, "max_length": self.max_length}
            folder = Path(self.source).expanduser()
            if folder.is_dir():
                files = sorted({p for pat in _IDENTITY_FILES for p in folder.glob(pat) if p.is_file()})
                if not any(p.suffix == ".safetensors" for p in files):
                    raise BenchError(f"Reward model folder {self.source!r} has no *.safetensors weights; "
                                     "save it with save_pretrained(..., safe_serialization=True).")
                ident["files"] = {p.name: file_fingerprint(p) for p in files}
            self._identity = ident
        return self._identity

    def _load(self):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.source, trust_remote_code=self.trust_remote_code)
            # Checked before the (large) model load: without the RM's own template the rewards mean nothing.
            if not tokenizer.chat_template:
                raise BenchError(
                    f"The tokenizer of reward model {self.source!r} has no chat template. The protocol "
                    "formats each (prompt, response) with the RM's own template; use an RM that ships one "
                    "(in chat_template.jinja or tokenizer_config.json)."
                )
            model = AutoModelForSequenceClassification.from_pretrained(
                self.source, use_safetensors=True, trust_remote_code=self.trust_remote_code, dtype=dtype,
            )
        except (OSError, ValueError) as e:
            raise BenchError(_load_failure_message(self.source, e)) from None
        config = model.config.get_text_config()
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token is None:
                raise BenchError(f"The tokenizer of reward model {self.source!r} has neither a pad nor an "
                                 "eos token, so batches cannot be padded.")
            tokenizer.pad_token = tokenizer.eos_token
        # Sequence classification reads the reward at the last token that is not config.pad_token_id, so the
        # padding must use exactly that id or padded rows would be read at a pad position.
        if config.pad_token_id is None:
            config.pad_token_id = tokenizer.pad_token_id
        elif tokenizer.pad_token_id != config.pad_token_id:
            token = tokenizer.convert_ids_to_tokens(config.pad_token_id)
            if token is None:
                raise BenchError(f"Reward model {self.source!r} pads with token id {config.pad_token_id}, "
                                 "which its tokenizer does not have; fix pad_token_id in its config.json.")
            tokenizer.pad_token = token
        model.to(device).eval()
        self._model, self._tokenizer = model, tokenizer

    def __call__(self, pairs: list[tuple[list[dict], str]]) -> list[float]:
        import torch
        from tqdm.auto import tqdm

        if self._model is None:
            self._load()
        tok, model = self._tokenizer, self._model
        chats = [[*messages, {"role": "assistant", "content": response}] for messages, response in pairs]
        texts = [tok.apply_chat_template(chat, tokenize=False) for chat in chats]
        # The template already wrote the special tokens (BOS and all); adding them again would change rewards.
        encoded = tok(texts, add_special_tokens=False, truncation=True, max_length=self.max_length)
        encoded = encoded["input_ids"]
        n_cut = sum(len(ids) >= self.max_length for ids in encoded)
        if n_cut:
            log.warning("%d of %d texts reach max_length=%d tokens and may be truncated; their rewards are "
                        "read before the end of the response.", n_cut, len(encoded), self.max_length)
        # Longest first, so each batch holds similar lengths and wastes little compute on padding.
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        rewards = [0.0] * len(encoded)
        starts = range(0, len(order), self.batch_size)
        with torch.inference_mode():
            for start in tqdm(starts, desc="reward model", unit="batch", leave=False):
                idx = order[start:start + self.batch_size]
                batch = tok.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt")
                scores = _reward_tensor(model(**batch.to(model.device)))
                for i, value in zip(idx, scores.float().cpu().tolist(), strict=True):
                    rewards[i] = value
        return rewards


def _reward_tensor(outputs):
    """ArmoRM's custom head puts its preference score in ``score``; plain classifiers put it in logit 0."""
    score = getattr(outputs, "score", None)
    if score is not None:
        return score.reshape(-1)
    return outputs.logits[:, 0]


def _load_failure_message(source: str, error: Exception) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    return (
        f"Could not load reward model {source!r}: {(str(error) or type(error).__name__).splitlines()[0]} "
        + ("HF_HUB_OFFLINE=1 is set, so nothing is downloaded. " if offline else "")
        + "Give a local folder in Hugging Face format with safetensors weights instead of a hub id, or run "
        "on a machine that can reach the Hugging Face hub (and has accepted the model's licence, for gated "
        "models)."
    )
