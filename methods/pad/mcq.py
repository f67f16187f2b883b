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
from harness.signals import SIGNAL_BATCH

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
def _next_token_top(model, ids, mask, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The MCQ_TOP most likely next tokens after each left-padded query, with their log-probs."""
    # Only the next token after each query is read, so the LM head runs on the last position alone: on these
    # long queries the head over every position was a fifth of the teacher's work and a [B, T, vocab] tensor.
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False,
                   logits_to_keep=1).logits[:, -1]
    top = torch.log_softmax(logits.float(), dim=-1).topk(MCQ_TOP, dim=-1)
    return top.values.cpu(), top.indices.cpu()


def teacher_mcq(model, tokenizer, instructions: list[str], answers: list[list[str]], max_prompt_len: int,
                desc: str, template: McqTemplate | None = None) -> tuple[list[list[float]], int]:
    """The teacher's multiple-choice preference score of every answer against the other answers to its prompt."""
    template = template or McqTemplate("ours")
    device = next(model.parameters()).device
    queries = []  # (example, i, j, token ids)
    for e, (instruction, texts) in enumerate(zip(instructions, answers)):
        for i, j in itertools.combinations(range(len(texts)), 2):
            ids = query_ids(tokenizer, template, instruction, texts[i], texts[j])
            queries.append((e, i, j, ids[-(max_prompt_len * 8):]))
    vocab_text = {}
    pairwise: list[dict] = [{} for _ in instructions]
    tokens = 0
    for start in tqdm(range(0, len(queries), SIGNAL_BATCH), desc=desc, unit="batch", leave=False):
        chunk = queries[start:start + SIGNAL_BATCH]
        length = max(len(q[3]) for q in chunk)
        ids = torch.full((len(chunk), length), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, q in enumerate(chunk):  # left padding: the next token follows every prompt's last position
            ids[row, length - len(q[3]):] = torch.tensor(q[3])
            mask[row, length - len(q[3]):] = 1
        top_values, top_ids = saved_batch(f"mcq: {desc}", [q[3] for q in chunk],
                                          lambda ids=ids, mask=mask: _next_token_top(model, ids, mask, device))
        tokens += int(mask.sum())
        for row, (e, i, j, _) in enumerate(chunk):
            t_ids = top_ids[row].tolist()
            for t in t_ids:
                if t not in vocab_text:
                    vocab_text[t] = tokenizer.decode([t])
            texts = [vocab_text[t] for t in t_ids]
            lps = top_values[row].tolist()
            pairwise[e][(i, j)] = (letter_prob(lps, texts, "A"), letter_prob(lps, texts, "B"))
    return [mcq_scores(pw, len(a)) for pw, a in zip(pairwise, answers)], tokens


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
