"""PAD's signal, ``scored_samples``: several answers per prompt sampled from the starting student (temperature 1,
top-p 0.95, seeded), each scored by the teacher as text (so no shared tokenizer is needed): its length-normalised
log-likelihood under its own template always, its multiple-choice preference score (methods/pad/mcq.py) when
the method asks; with ``diverse_from`` m > n, m samples are drawn and the n most mutually different kept."""

from __future__ import annotations

import functools

import torch

from harness.batch import pad_sequences, prompts_of
from harness.errors import BenchError
from harness.log import log
from harness.models import count_parameters
from harness.signal_api import Signal, register_signal, save_signal
from harness.signals import mean_logps, pack, sample_many, unpack
from methods.pad.mcq import load_template, most_different, teacher_mcq


def instruction_text(example) -> str:
    """The prompt as the MCQ judge sees it: the user's text, or the turns labelled by role when there are several."""
    if len(example.prompt) == 1:
        return example.prompt[0][1]
    return "\n\n".join(f"{role}: {content}" for role, content in example.prompt)


@functools.cache
def mcq_template(data_dir, cache_dir):
    """The MCQ prompt: the released template from the data folder or upstream, else ours (read once per run)."""
    return load_template(data_dir, cache_dir)


@register_signal("scored_samples")
class ScoredSamples(Signal):
    description = "Several samples per prompt from the starting student, each scored by the teacher (PAD)."
    counts_as = "teacher"  # the teacher's scoring; the student's sampling is in the info's flops

    def key_parts(self, run, method):
        b = run.budget
        parts = {"producer": [run.student_key(method), run.pair.teacher.identity()], "gen": b.gen_max_new_tokens,
                 "seed": b.seed, "n": b.samples_per_prompt}
        options = method.signal_options(self.name) if method is not None else {}
        if options.get("mcq"):
            parts["mcq_template"] = mcq_template(run.opts.data_dir, run.opts.cache_dir).digest
        return parts

    def compute(self, run, split, method, out):
        b, tokenizer, desc = run.budget, run.tokenizer, self.desc(split)
        options = method.signal_options(self.name) if method is not None else {}
        n, m = b.samples_per_prompt, max(options.get("diverse_from", 0), b.samples_per_prompt)
        if options.get("mcq") and n < 2:  # before any sampling, so nothing is computed in vain
            raise BenchError("The teacher's MCQ score compares samples in pairs and needs samples_per_prompt >= 2; "
                             "use --set samples_per_prompt=4 (the paper's n).")
        examples, rows = run.examples(split), run.rows(split)
        student = run.student_for(method)
        drawn, generated = sample_many(student, tokenizer, examples, rows, m, b.max_prompt_len,
                                       b.gen_max_new_tokens, b.max_seq_len, b.seed, desc)
        student_params = count_parameters(student)["matmul"]
        del student
        samples, distinct = drawn, [True] * len(drawn)
        if m > n:
            decoded = [[tokenizer.decode(s, skip_special_tokens=True).strip() for s in per] for per in drawn]
            picks = [most_different(texts, n) for texts in decoded]
            samples = [[per[k] for k in kept] for per, (kept, _) in zip(drawn, picks)]
            distinct = [ok for _, ok in picks]
        texts = [[tokenizer.decode(s, skip_special_tokens=True).strip() for s in per] for per in samples]
        teacher = run.teacher()
        eos = tokenizer.eos_token_id
        scores, teacher_tokens = mean_logps(teacher, run.teacher_tokenizer,
                                            [(ex.messages, t) for ex, per in zip(examples, texts) for t in per],
                                            b.max_prompt_len, b.max_seq_len, f"{desc}: teacher scores",
                                            finished=[s[-1] == eos for per in samples for s in per])
        data = {**pack([s for per in samples for s in per]),
                "scores": torch.tensor(scores, dtype=torch.float32).view(len(rows), n)}
        extra = {"generated_tokens": generated, "samples_drawn_per_prompt": m}
        if m > n:
            data["distinct"] = torch.tensor(distinct, dtype=torch.bool)
            extra["prompts_without_distinct_samples"] = distinct.count(False)
        if options.get("mcq"):
            template = mcq_template(run.opts.data_dir, run.opts.cache_dir)
            if template.name != "official":
                log.info(f"PAD's MCQ score: {template.origin}")
            mcq, mcq_tokens = teacher_mcq(teacher, run.teacher_tokenizer, [instruction_text(ex) for ex in examples],
                                          texts, b.max_prompt_len, f"{desc}: teacher MCQ", template)
            data["mcq"] = torch.tensor(mcq, dtype=torch.float32)
            teacher_tokens += mcq_tokens
            extra["mcq_forward_tokens"] = mcq_tokens
            extra["mcq_template"] = {"name": template.name, "origin": template.origin, "sha": template.digest}
        save_signal(data, out)
        params = count_parameters(teacher)["matmul"]
        return {"kind": "scored_samples", "forward_tokens": teacher_tokens, "model_params": params, **extra,
                "flops": 2 * params * teacher_tokens + 2 * student_params * generated}

    def collate(self, data, batch, pad_id):
        n = data["scores"].shape[1]
        prompts = prompts_of(batch.chosen)
        responses = [unpack(data, i * n + j) for i in batch.index for j in range(n)]
        out = {"seqs": pad_sequences([p for p in prompts for _ in range(n)], responses, pad_id),
               "teacher_scores": data["scores"][batch.index]}
        for field in ("mcq", "distinct"):  # present when the method asked for them (PAD's options)
            if field in data:
                out[field] = data[field][batch.index]
        return out
