"""Shared pieces of the method tests: a fake LM whose next-token logits depend on the current token only, its
logit tables, a small batch of rows, the same quantities in plain math, and a teacher top-k signal built by hand
(flat stored form, placed by collate_topk)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from harness.batch import collate
from harness.data import Encoded
from harness.signals import collate_topk

K = 2  # the teacher's top-k
# The model under training: logits(next | current token c) = STUDENT[c]; the teacher likewise with TEACHER.
STUDENT = [
    [0.5, -1.0, 2.0, 0.0, 1.0],
    [1.5, 0.2, -0.3, 0.7, -2.0],
    [0.0, 1.0, 0.0, -1.0, 0.5],
    [-0.5, 0.3, 1.2, 0.1, 0.0],
    [2.0, -0.7, 0.4, 0.9, -1.1],
]
TEACHER = [
    [1.0, 0.0, -1.0, 2.5, 0.3],
    [0.0, 2.0, 1.0, -0.5, 0.4],
    [3.0, -1.0, 0.5, 0.2, 0.0],
    [0.1, 0.2, 0.3, 2.0, -2.0],
    [-1.0, 1.5, 0.0, 0.0, 2.2],
]
ROWS = [Encoded([1, 2], [3, 4, 0], [2, 2]), Encoded([4], [1], [0, 3, 3, 1])]


class TokenLM(torch.nn.Module):
    """A fake causal LM: the logits after token c are table[c], one trainable parameter."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(table, dtype=torch.float32))

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        return SimpleNamespace(logits=self.table[input_ids])


def sgd_step(model, lr=0.5):
    """One plain SGD step on a TokenLM whose loss has been backpropagated."""
    with torch.no_grad():
        model.table -= lr * model.table.grad


def softmax(row):
    z = sum(math.exp(x) for x in row)
    return [math.exp(x) / z for x in row]


def log_softmax(row):
    z = math.log(sum(math.exp(x) for x in row))
    return [x - z for x in row]


def response_logps(prompt, response, table=STUDENT):
    """The log-prob of each response token under the table's model."""
    seq = prompt + response
    return [log_softmax(table[seq[i - 1]])[seq[i]] for i in range(len(prompt), len(seq))]


def transitions(rows, side="chosen_ids"):
    """(previous token, next token) for every response token, in storage order."""
    out = []
    for r in rows:
        seq = r.prompt_ids + getattr(r, side)
        out += [(seq[i - 1], seq[i]) for i in range(len(r.prompt_ids), len(seq))]
    return out


def teacher_topk(prev, teacher=TEACHER, k=K):
    """The teacher's k most likely next tokens after `prev`, their probabilities, and the rest's mass."""
    p = softmax(teacher[prev])
    ids = sorted(range(len(p)), key=lambda v: -p[v])[:k]
    return ids, [p[v] for v in ids], 1.0 - sum(p[v] for v in ids)


def stored_signal(rows, side="chosen_ids", teacher=TEACHER, k=K):
    """The teacher's top-k signal for one response side, in its flat stored form."""
    ids, logps, rest, offsets = [], [], [], [0]
    for r in rows:
        for prev, _ in transitions([r], side):
            top, p, pr = teacher_topk(prev, teacher, k)
            ids.append(top)
            logps.append([math.log(x) for x in p])
            rest.append(math.log(pr))
        offsets.append(len(ids))
    return {"ids": torch.tensor(ids, dtype=torch.int32), "logps": torch.tensor(logps),
            "rest": torch.tensor(rest), "offsets": torch.tensor(offsets, dtype=torch.int64)}


def clamp(x, lo, hi):
    return min(max(x, lo), hi)


def bucket_kl(prev, student=STUDENT, official=False, teacher=TEACHER, k=K):
    """KL(teacher || student) over the teacher's top-k buckets + the rest, after token `prev`; `official` applies
    the official DCKD code's clamps."""
    ids, p_top, p_rest = teacher_topk(prev, teacher, k)
    q = softmax(student[prev])
    q_top = [q[v] for v in ids]
    p_b, q_b = p_top + [p_rest], q_top + [1.0 - sum(q_top)]
    if official:
        p_b = [clamp(x, 1e-8, 1 - 1e-8) for x in p_b]
        q_b = [max(clamp(x, 1e-8, 1 - 1e-8), 1e-7) for x in q_b]
    return sum(a * math.log(a / b) for a, b in zip(p_b, q_b))


def collated(rows=ROWS):
    """All the rows collated in order."""
    return collate(rows, list(range(len(rows))), pad_id=0)


def topk_batch(rows=ROWS, sides=("chosen",)):
    """All the rows collated, with the teacher's top-k signal for each of the given sides."""
    batch = collated(rows)
    for side in sides:
        batch.signals[f"teacher_topk:{side}"] = collate_topk(stored_signal(rows, f"{side}_ids"), batch.index,
                                                             getattr(batch, side))
    return batch


def normalised(out, batch):
    """The loss as training sums it: each term's total over its count."""
    counts = batch.counts()
    return sum(t.total / counts[t.per] for t in out.terms)


# --- Live-teacher and on-policy methods (gkd, rkl, seqkd, simpo) -------------------------------------------------

# The teacher with two extra vocabulary columns (padded embedding rows of a larger teacher): large logits, so a
# loss that forgot to cut them to the student's vocabulary would come out clearly different (or fail on shape).
TEACHER_WIDE = [row + [4.0, 3.0] for row in TEACHER]


def kl(p, q):
    """KL(p || q) of two probability lists."""
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def jsd(teacher_row, student_row, beta):
    """GKD's generalised JSD between softmax(teacher_row) and softmax(student_row), by the paper's formula:
    beta * KL(p || M) + (1 - beta) * KL(q || M), M = beta * p + (1 - beta) * q; forward KL(p || q) at beta = 0 and
    reverse KL(q || p) at beta = 1."""
    p, q = softmax(teacher_row), softmax(student_row)
    if beta == 0:
        return kl(p, q)
    if beta == 1:
        return kl(q, p)
    m = [beta * a + (1 - beta) * b for a, b in zip(p, q)]
    return beta * kl(p, m) + (1 - beta) * kl(q, m)


def log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def tiny_llama(seed, vocab=64, layers=1):
    """A random tiny Llama (a teacher for the conftest's `tiny_model`, which has the same 64-token vocabulary)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(config).eval()


# Rows for the real tiny Llama (vocab 64): prompts of different lengths, ids clear of the pad id 0.
LLAMA_ROWS = [Encoded([5, 6, 7, 8], [9, 10], [11, 12, 13]), Encoded([14, 15], [16, 17, 18, 19, 20], [21]),
              Encoded([22, 23, 24], [25], [26, 27])]
LLAMA_EOS = 63


class single_thread:
    """A context manager: torch on one thread (these models are tiny; one thread is far faster on shared cores)."""

    def __enter__(self):
        self.before = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)
        return False


class StubResample:
    """Stands in for harness.generation.resample where no generation is needed: records each call and answers
    every prompt with the fixed response [1, 2, 3]."""

    def __init__(self):
        self.calls = []

    def __call__(self, model, seqs, runtime, *, temperature, seed):
        from harness.batch import prompts_of, with_responses

        self.calls.append({"temperature": temperature, "seed": seed})
        prompts = prompts_of(seqs)
        return with_responses(seqs, [[1, 2, 3]] * len(prompts), runtime.pad_id), 3 * len(prompts)


def with_live_teacher(method, teacher=TEACHER, max_new_tokens=8, max_seq_len=32, eos_id=4):
    """Hand a method the runtime the pipeline would: token ids, generation limits and a live teacher (a logits
    table becomes a TokenLM; a model is used as is)."""
    from harness.method import Runtime

    method.runtime = Runtime(0, eos_id, max_new_tokens, max_seq_len,
                             teacher=TokenLM(teacher) if isinstance(teacher, list) else teacher)
    return method
