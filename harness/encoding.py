"""Preference rows as token ids: the student's chat template applied, the prompt and the responses cut to fit."""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import BenchError


@dataclass
class Encoded:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


@dataclass
class EncodeStats:
    rows: int = 0
    prompts_truncated: int = 0
    chosen_truncated: int = 0
    rejected_truncated: int = 0


FALLBACK_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant: {% endif %}"
)


def ensure_chat_template(tokenizer, fallback_from=None) -> str:
    """Students that are base models may lack a chat template: borrow the teacher's, else a plain one."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = getattr(fallback_from, "chat_template", None) or FALLBACK_TEMPLATE
    return tokenizer.chat_template


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def response_ids(tokenizer, messages: list[dict], response: str, finished: bool = True) -> list[int]:
    """The tokens the template puts after the generation prompt, up to and including the end-of-turn token.

    ``finished=False`` (a generated answer cut at the token limit) leaves the end-of-turn token out: a training
    target or a teacher score must not read a cut answer as one that stopped there."""
    prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
    if not full.startswith(prompt_text):
        raise BenchError("The chat template renders the prompt differently with and without the reply; "
                         "cannot separate response tokens from prompt tokens.")
    ids = tokenizer(full[len(prompt_text):], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos in ids:
        ids = ids[: len(ids) - ids[::-1].index(eos)]  # drop what the template adds after the end of turn
    elif eos is not None:
        ids = ids + [eos]
    if not finished and len(ids) > 1 and ids[-1] == eos:  # (an answer of no text keeps its end-of-turn)
        ids = ids[:-1]
    return ids


def encode(tokenizer, ex, max_seq_len: int, max_prompt_len: int, stats: EncodeStats) -> Encoded:
    """``ex``: a harness.data.PreferenceExample (not imported: harness/data.py imports this module)."""
    p = prompt_ids(tokenizer, ex.messages)
    stats.rows += 1
    if len(p) > max_prompt_len:
        p = p[-max_prompt_len:]  # the end of a prompt (the question and the generation header) matters most
        stats.prompts_truncated += 1
    room = max_seq_len - len(p)
    c = response_ids(tokenizer, ex.messages, ex.chosen)
    r = response_ids(tokenizer, ex.messages, ex.rejected)
    if len(c) > room:
        c, stats.chosen_truncated = c[:room], stats.chosen_truncated + 1
    if len(r) > room:
        r, stats.rejected_truncated = r[:room], stats.rejected_truncated + 1
    return Encoded(p, c, r)
