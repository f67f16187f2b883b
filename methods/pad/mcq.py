"""PAD's teacher signals beyond likelihood: the multiple-choice (MCQ) preference score and the diversity filter.

The scoring rule, the pair order and the aggregation are the released code's (EganGu/PAD@89f2a91
``data_gen/gen/prob.py``). The prompt is the released ``data_gen/gen/mcq-template.json``: it is not copied into
this project; like the benchmark files it is read from a local copy under the data folder
(``<data-dir>/reference/pad/mcq-template.json`` or ``<data-dir>/pad/mcq-template.json``) or, with no data folder,
downloaded once from its pinned upstream into the cache. Where neither can be had, our own wording
(``OWN_TEMPLATE``) is used and the signal's record says so (``mcq_template``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import string
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
from jinja2.exceptions import TemplateError
from tqdm.auto import tqdm

from harness.journal import saved_batch
from harness.models import cache_of, continue_from

PAD_COMMIT = "89f2a9104ebfdab1b821f2d86240d422b7ec5393"
TEMPLATE_PATH = "data_gen/gen/mcq-template.json"
TEMPLATE_URL = f"https://raw.githubusercontent.com/EganGu/PAD/{PAD_COMMIT}/{TEMPLATE_PATH}"
LOCAL_NAMES = ("reference/pad/mcq-template.json", "pad/mcq-template.json")
RESPONSE_TOKENS = 2500  # the released scorer cuts each candidate to this many teacher tokens (prob.py:38-44)

OWN_TEMPLATE = (
    "Which of the two responses below answers the instruction better?\n\n"
    "[Instruction]\n{instruction}\n\n[Response A]\n{a}\n\n[Response B]\n{b}\n\n"
    "Reply with a single letter: A or B."
)  # our wording, used only when the released template cannot be had
MCQ_EPS = 1e-8
MCQ_TOP = 20  # the official scorer reads the teacher's top-20 next-token log-probs


@dataclass(frozen=True)
class McqTemplate:
    """How a pair of candidates is put to the teacher. ``system``/``user`` set: the released JSON template
    (``string.Template`` fields $identifier_list_str, $instruction, $candidate_response_list_str); unset: ours."""

    name: str  # "official" or "ours"
    system: str | None = None
    user: str | None = None
    origin: str = ""

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps([self.name, self.system, self.user]).encode()).hexdigest()[:16]

    def messages(self, instruction: str, a: str, b: str) -> list[dict]:
        if self.user is None:
            return [{"role": "user", "content": OWN_TEMPLATE.format(instruction=instruction, a=a, b=b)}]
        # The released generate_options: each option as X) """\n<text>\n""", one per line, letters listed as "(A, or B)".
        options = "\n".join(f'{letter}) """\n{text}\n"""' for letter, text in zip("AB", (a, b)))
        fields = {"identifier_list_str": "(A, or B)", "instruction": instruction,
                  "candidate_response_list_str": options}
        system = string.Template(self.system).safe_substitute(fields)
        user = string.Template(self.user).safe_substitute(fields)
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def load_template(data_dir: Path | None, cache_dir: Path | None) -> McqTemplate:
    """The released template from the data folder, else (no data folder) from the pinned upstream; else ours."""
    candidates = [Path(data_dir) / name for name in LOCAL_NAMES] if data_dir is not None else []
    cached = Path(cache_dir) / "downloads" / f"pad-mcq-template-{PAD_COMMIT[:7]}.json" if cache_dir else None
    for path in [*candidates, *([cached] if cached else [])]:
        if path.is_file():
            return _parse(path.read_text(encoding="utf-8"), str(path.name if path == cached else path))
    if data_dir is None:
        try:
            with urllib.request.urlopen(TEMPLATE_URL, timeout=20) as response:
                text = response.read().decode("utf-8")
        except OSError:
            text = None
        if text is not None:
            template = _parse(text, TEMPLATE_URL)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                cached.write_text(text, encoding="utf-8")
            return template
    where = " or ".join(str(c) for c in candidates) or TEMPLATE_URL
    return McqTemplate("ours", origin=f"the released template was not found at {where}; our own wording was used")


def _parse(text: str, origin: str) -> McqTemplate:
    data = json.loads(text)
    return McqTemplate("official", data["system"], data["user"], f"EganGu/PAD@{PAD_COMMIT[:7]} {TEMPLATE_PATH} "
                                                                 f"(read from {origin})")


def letter_prob(top_logps: list[float], top_texts: list[str], letter: str) -> float:
    """The official rule: eps + the probability of every top token whose text contains the letter and is
    shorter than 3 characters (so "A", " A", "A." count; "Apple" does not)."""
    return MCQ_EPS + sum(math.exp(lp) for lp, t in zip(top_logps, top_texts) if letter in t and len(t) < 3)


def mcq_scores(pairwise: dict[tuple[int, int], tuple[float, float]], n: int) -> list[float]:
    """s_mcq(i) = log((eps + sum_{j != i} P(i preferred to j)) / (n - 1)), from P(A), P(B) of each shown pair
    (i as A, j as B, i < j, in fixed order as the official code; not renormalised)."""
    wins = [0.0] * n
    for (i, j), (p_a, p_b) in pairwise.items():
        wins[i] += p_a
        wins[j] += p_b
    return [math.log((MCQ_EPS + w) / (n - 1)) for w in wins]


def query_ids(tokenizer, template: McqTemplate, instruction: str, a: str, b: str) -> list[int]:
    """The teacher's prompt tokens for one shown pair (through its chat template; a template without a system
    role gets the system text and the user text as one user turn, as the released code falls back)."""
    from harness.data import prompt_ids

    if template.user is not None:
        a, b = (_cut(tokenizer, t) for t in (a, b))
    messages = template.messages(instruction, a, b)
    try:
        return prompt_ids(tokenizer, messages)
    except TemplateError:  # the chat template refuses a system turn
        if len(messages) == 1:
            raise
        merged = messages[0]["content"] + "\n\n" + messages[1]["content"]
        return prompt_ids(tokenizer, [{"role": "user", "content": merged}])


def _cut(tokenizer, text: str) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= RESPONSE_TOKENS else tokenizer.decode(ids[:RESPONSE_TOKENS]) + "..."


@torch.no_grad()
def next_token_top(model, queries: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The MCQ_TOP most likely next tokens after each query of one prompt, with their log-probs, and the tokens
    forwarded. The queries share the template's head and the instruction (about two thirds of their tokens on
    UltraFeedback), so that common prefix runs once and its keys and values serve every query; the suffixes are
    right-padded and continue at the prefix's positions, so each query sees exactly its own tokens."""
    shared = _common_prefix(queries)
    cache = None
    if shared:
        prefix = torch.tensor([queries[0][:shared]], device=device)
        cache = cache_of(model(input_ids=prefix, use_cache=True, logits_to_keep=1))
        cache.batch_repeat_interleave(len(queries))
    tails = [q[shared:] for q in queries]
    length = max(len(t) for t in tails)
    ids = torch.full((len(tails), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(tails), shared + length), dtype=torch.long)
    mask[:, :shared] = 1
    for row, t in enumerate(tails):
        ids[row, :len(t)] = torch.tensor(t)
        mask[row, shared:shared + len(t)] = 1
    last = torch.tensor([len(t) - 1 for t in tails])
    # Only the next token after each query is read, so the LM head runs on those positions alone: on these long
    # queries the head over every position was a fifth of the teacher's work and a [B, T, vocab] tensor.
    keep = torch.unique(last)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), **continue_from(model, cache),
                   position_ids=(shared + torch.arange(length)).expand(len(tails), -1).to(device),
                   use_cache=cache is not None, logits_to_keep=keep.to(device)).logits
    logits = logits[torch.arange(len(tails)), torch.searchsorted(keep, last).to(logits.device)]
    top = torch.log_softmax(logits.float(), dim=-1).topk(MCQ_TOP, dim=-1)
    return top.values.cpu(), top.indices.cpu(), shared + sum(len(t) for t in tails)


def _common_prefix(queries: list[list[int]]) -> int:
    """How many leading tokens all queries share, leaving each at least one token of its own."""
    n = min(len(q) for q in queries) - 1
    first = queries[0]
    for k in range(n):
        if any(q[k] != first[k] for q in queries[1:]):
            return k
    return max(n, 0)


def teacher_mcq(model, tokenizer, instructions: list[str], answers: list[list[str]], max_prompt_len: int,
                desc: str, template: McqTemplate | None = None) -> tuple[list[list[float]], int]:
    """The teacher's multiple-choice preference score of every answer against the other answers to its prompt;
    also the tokens the teacher forwarded."""
    template = template or McqTemplate("ours")
    device = next(model.parameters()).device
    vocab_text = {}
    scores, tokens = [], 0
    for instruction, texts in tqdm(list(zip(instructions, answers)), desc=desc, unit="prompt", leave=False):
        shown = list(itertools.combinations(range(len(texts)), 2))  # i as A, j as B, in fixed order
        queries = [query_ids(tokenizer, template, instruction, texts[i], texts[j])[-(max_prompt_len * 8):]
                   for i, j in shown]
        top_values, top_ids, forwarded = saved_batch(
            f"mcq: {desc}", queries, lambda q=queries: next_token_top(model, q, tokenizer.pad_token_id, device))
        tokens += forwarded
        pairwise = {}
        for row, pair in enumerate(shown):
            t_ids = top_ids[row].tolist()
            for t in t_ids:
                if t not in vocab_text:
                    vocab_text[t] = tokenizer.decode([t])
            top_texts = [vocab_text[t] for t in t_ids]
            lps = top_values[row].tolist()
            pairwise[pair] = (letter_prob(lps, top_texts, "A"), letter_prob(lps, top_texts, "B"))
        scores.append(mcq_scores(pairwise, len(texts)))
    return scores, tokens


def most_different(texts: list[str], n: int) -> tuple[list[int], bool]:
    """The official aggregation: greedily keep n samples, starting from sample 0, each time the one whose
    smallest Levenshtein distance to those kept is largest (ties: the lowest index). Also whether the n kept
    texts are all distinct (the official code drops the prompt otherwise)."""
    from rapidfuzz.distance import Levenshtein

    kept = [0]
    while len(kept) < n:
        rest = [c for c in range(len(texts)) if c not in kept]
        kept.append(max(rest, key=lambda c: (min(Levenshtein.distance(texts[c], texts[k]) for k in kept), -c)))
    return kept, len({texts[k] for k in kept}) == n
