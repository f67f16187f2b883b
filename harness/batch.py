"""Turning encoded preference rows into padded tensors, and the counts that losses are normalised by."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.data import Encoded
from harness.lazy import torch

IGNORE = -100


@dataclass
class Sequences:
    """One side (chosen or rejected) of a micro-batch: prompt + response, right-padded."""

    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    labels: torch.Tensor  # [B, T]; IGNORE on prompt and padding
    prompt_lens: list[int]

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def n_response_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())

    def to(self, device) -> Sequences:
        return Sequences(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device),
                         self.prompt_lens)


@dataclass
class Batch:
    index: list[int]  # rows of the split this micro-batch holds
    chosen: Sequences
    rejected: Sequences
    signals: dict = field(default_factory=dict)  # name -> collated teacher/reference signal

    def counts(self) -> dict[str, int]:
        """The quantities a loss may be normalised by; summed over an optimizer step by the trainer."""
        counts = {"pairs": len(self.index), "chosen_tokens": self.chosen.n_response_tokens,
                  "rejected_tokens": self.rejected.n_response_tokens}
        for name, value in self.signals.items():  # sampled responses: "<signal>_tokens"
            if isinstance(value, dict):
                if "keep" in value:  # examples a filter keeps in the loss: "<signal>_kept"
                    counts[f"{name}_kept"] = int(value["keep"].sum())
                value = value.get("seqs")
            if isinstance(value, Sequences):
                counts[f"{name}_tokens"] = value.n_response_tokens
        return counts

    def to(self, device) -> Batch:
        return Batch(self.index, self.chosen.to(device), self.rejected.to(device),
                     {k: _to(v, device) for k, v in self.signals.items()})


def _to(value, device):
    if isinstance(value, (torch.Tensor, Sequences)):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def pad_sequences(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> Sequences:
    length = max(len(p) + len(r) for p, r in zip(prompts, responses))
    b = len(prompts)
    ids = torch.full((b, length), pad_id, dtype=torch.long)
    mask = torch.zeros((b, length), dtype=torch.long)
    labels = torch.full((b, length), IGNORE, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        n = len(p) + len(r)
        ids[i, :n] = torch.tensor(p + r)
        mask[i, :n] = 1
        labels[i, len(p):n] = torch.tensor(r)
    return Sequences(ids, mask, labels, [len(p) for p in prompts])


def prompts_of(seqs: Sequences) -> list[list[int]]:
    return [seqs.input_ids[b, :n].tolist() for b, n in enumerate(seqs.prompt_lens)]


def with_responses(seqs: Sequences, responses: list[list[int]], pad_id: int) -> Sequences:
    """The same prompts with other responses (sampled ones), padded afresh."""
    return pad_sequences(prompts_of(seqs), responses, pad_id)


def collate(rows: list[Encoded], index: list[int], pad_id: int) -> Batch:
    prompts = [r.prompt_ids for r in rows]
    return Batch(
        index=list(index),
        chosen=pad_sequences(prompts, [r.chosen_ids for r in rows], pad_id),
        rejected=pad_sequences(prompts, [r.rejected_ids for r in rows], pad_id),
    )
