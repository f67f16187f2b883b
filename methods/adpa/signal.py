"""ADPA's signal, ``adpa_advantage``: the starting student's greedy answer to each prompt, with the aligned (DPO)
teacher's top-k log-probs at every answer position and the reference model's log-probs of those same tokens;
and the teacher-DPO stage that makes the aligned teacher when the recipe asks for one."""

from __future__ import annotations

import json
import time

import torch
from tqdm.auto import tqdm

from harness.batch import IGNORE, pad_sequences, with_responses
from harness.files import write_json_atomic
from harness.journal import saved_batch, seqs_key
from harness.keys import teacher_dpo_key
from harness.log import log
from harness.models import count_parameters, load_model, load_model_from
from harness.signal_api import Signal, register_signal, save_signal
from harness.signals import SIGNAL_BATCH, compute_sequence_logps, model_drift, pack, place_rows, unpack
from harness.trainer import train


@torch.no_grad()
def _teacher_logps(dpo, ref, seqs, k: int, vocab_limit: int) -> dict[str, list[torch.Tensor]]:
    """One batch's per-row ADPA fields: the DPO teacher's top-k ids and log-probs at each answer position, the
    reference's log-probs of those ids, and whether each is in the reference's own top-k."""
    mask = seqs.labels[:, 1:] != IGNORE
    logps = []
    for model in (dpo, ref):
        logits = model(input_ids=seqs.input_ids, attention_mask=seqs.attention_mask, use_cache=False).logits
        logps.append(torch.log_softmax(logits[:, :-1].float(), dim=-1))
    fields = {"topk_ids": [], "dpo_logps": [], "ref_logps": [], "ref_in_topk": []}
    for b in range(seqs.input_ids.shape[0]):
        d, r = (lp[b][mask[b]][:, :vocab_limit] for lp in logps)
        top_v, top_i = d.topk(min(k, vocab_limit), dim=-1)
        ref_top = r.topk(min(k, vocab_limit), dim=-1).indices
        fields["topk_ids"].append(top_i.to(torch.int32).cpu())
        fields["dpo_logps"].append(top_v.cpu())
        fields["ref_logps"].append(r.gather(-1, top_i).cpu())
        fields["ref_in_topk"].append((top_i.unsqueeze(-1) == ref_top.unsqueeze(-2)).any(-1).to(torch.uint8).cpu())
    return fields


@torch.no_grad()
def compute_advantage(student, dpo, ref, rows, k: int, vocab_limit: int, pad_id: int, eos_id: int,
                      max_new_tokens: int, max_seq_len: int, desc: str, *, backend=None) -> tuple[dict, dict]:
    """ADPA's inputs: the student's greedy answers (as the official code, temperature 0), and at every answer
    position the DPO teacher's top-k (over ids < vocab_limit) with its log-probs, the reference model's exact
    log-probs of those k tokens, and whether each is also in the reference's own top-k (the official code only
    knew the reference's top-k and imputed the rest; ``clamped_official`` mode needs the flag to do the same).
    ``backend``: a GenerationBackend to generate the answers with instead of HF on ``student``."""
    from harness.generation import generate_ids

    device = next(dpo.parameters()).device  # the student may be generating in another engine
    prompts = [r.prompt_ids for r in rows]
    outs = generate_ids(backend or student, prompts, max_new_tokens, pad_id=pad_id, eos_id=eos_id,
                        desc=f"{desc}: greedy answers")
    responses = [o[: max_seq_len - len(p)] or [eos_id] for o, p in zip(outs, prompts)]
    fields = {"topk_ids": [], "dpo_logps": [], "ref_logps": [], "ref_in_topk": []}
    forwarded = 0
    for start in tqdm(range(0, len(rows), SIGNAL_BATCH), desc=f"{desc}: teacher log-probs", unit="batch", leave=False):
        chunk = slice(start, start + SIGNAL_BATCH)
        seqs = pad_sequences(prompts[chunk], responses[chunk], pad_id)
        inputs = {**seqs_key(seqs), "k": k, "vocab_limit": vocab_limit}
        per_row = saved_batch(f"adpa teacher log-probs: {desc}", inputs,
                              lambda seqs=seqs: _teacher_logps(dpo, ref, seqs.to(device), k, vocab_limit))
        forwarded += seqs.n_tokens
        for name, parts in fields.items():
            parts += per_row[name]
    data = {**pack(responses), **{name: torch.cat(parts) for name, parts in fields.items()}}
    return data, {"generated_tokens": sum(len(o) for o in outs), "forward_tokens_per_model": forwarded}


def collate_advantage(data: dict, index: list[int], batch_chosen, pad_id: int) -> dict:
    seqs = with_responses(batch_chosen, [unpack(data, i) for i in index], pad_id)
    out = place_rows(data, ("topk_ids", "dpo_logps", "ref_logps", "ref_in_topk"), index, seqs)
    return {"seqs": seqs, "ids": out["topk_ids"].long(), "dpo_logps": out["dpo_logps"],
            "ref_logps": out["ref_logps"], "ref_in_topk": out["ref_in_topk"].bool()}


@register_signal("adpa_advantage")
class AdpaAdvantage(Signal):
    description = ("The starting student's greedy answers, with the aligned teacher's top-k log-probs and the "
                   "reference's log-probs of those tokens at every answer position (ADPA).")
    counts_as = None  # several models: the info states its teacher tokens

    def key_parts(self, run, method):
        reference = run.pair.reference_teacher.identity() if run.pair.reference_teacher else None
        # The teacher-DPO stage it may train depends on the whole budget.
        return {"producer": [run.student_key(method), run.pair.teacher.identity(), reference],
                "k": run.budget.teacher_top_k, "gen": run.budget.gen_max_new_tokens, "seed": run.budget.seed,
                "budget": run.budget.to_dict()}

    def compute(self, run, split, method, out):
        options = method.signal_options(self.name)
        dpo, ref_teacher, extra = aligned_teachers(run, options)
        student = run.load_start(method)
        ref = student if options["reference"] == "student" else ref_teacher
        b = run.budget
        data, counts = compute_advantage(student, dpo, ref, run.rows(split), b.teacher_top_k, len(run.tokenizer),
                                         run.tokenizer.pad_token_id, run.tokenizer.eos_token_id,
                                         b.gen_max_new_tokens, b.max_seq_len, self.desc(split))
        save_signal(data, out)
        t_params, s_params = count_parameters(dpo)["matmul"], count_parameters(student)["matmul"]
        r_params = count_parameters(ref)["matmul"]
        forwarded = counts["forward_tokens_per_model"]
        dpo_stage = extra["teacher_dpo"]
        flops = (2 * s_params * counts["generated_tokens"] + 2 * (t_params + r_params) * forwarded
                 + (dpo_stage["flops"] if dpo_stage else 0))
        teacher_tokens = forwarded * (1 if options["reference"] == "student" else 2)
        if dpo_stage:
            teacher_tokens += dpo_stage["trained_tokens"] + dpo_stage["reference_tokens"]
        return {"kind": "advantage", "forward_tokens": forwarded, "model_params": t_params, **extra,
                "generated_tokens": counts["generated_tokens"], "flops": flops, "teacher_tokens": teacher_tokens,
                "reference": options["reference"]}

    def collate(self, data, batch, pad_id):
        return collate_advantage(data, batch.index, batch.chosen, pad_id)


def aligned_teachers(run, options: dict):
    """ADPA's (aligned pi_dpo, pre-DPO teacher or None, stage info): the pair's teacher and the reference teacher
    the pair names; or, with ``teacher_dpo`` options, a DPO-trained copy of the teacher (a cached stage) and the
    teacher itself."""
    dpo_options = options["teacher_dpo"]
    if dpo_options is not None:
        model, info = teacher_dpo(run, dpo_options)
        return model, run.teacher(), {"teacher_dpo": info}
    ref = None
    if options["reference"] == "teacher":  # the pair names it (ADPA.check_pair made sure before any work)
        log.info(f"loading reference teacher {run.pair.reference_teacher.describe()}")
        ref = load_model(run.pair.reference_teacher).to(run.device)
    return run.teacher(), ref, {"teacher_dpo": None}


def teacher_dpo(run, options: dict):
    """DPO of the teacher on the run's preference rows (the paper's "DPO teacher"), the teacher as its own
    reference; same rows, order and steps as the students' budget, at the recipe's own beta and learning rate
    (never the students': a teacher is not trained at a student's rate). Its drift from the original teacher,
    the token-mean KL(teacher || DPO teacher) on the held-out chosen responses, is logged and recorded."""
    from methods.dpo import DPO, DPOConfig

    key = teacher_dpo_key(run.pair.teacher.identity(), run.data_key, run.budget, options)
    if not run.cache.has("teacher_dpo", key):
        t0 = time.perf_counter()
        teacher = run.teacher()
        pad_id = run.tokenizer.pad_token_id
        ref, ref_tokens = compute_sequence_logps(teacher, run.train_rows, pad_id, "teacher DPO: reference log-probs")
        log.info(f"teacher DPO: {run.budget.optimizer_steps} steps, beta {options['beta']}, lr {options['lr']}")
        model = load_model(run.pair.teacher).to(run.device)
        dpo = DPO(DPOConfig(beta=options["beta"]))
        dpo.registered_name = "teacher-dpo"
        budget = run.budget.with_overrides(learning_rate=options["lr"])
        result = train(dpo, model, run.train_rows, {"reference_logps": ref}, budget, pad_id, run.budget.seed,
                       desc="teacher DPO", checkpoints=run.checkpointing("teacher_dpo", key))
        drift, drift_tokens = model_drift(teacher, model, run.test_rows, pad_id)
        params = count_parameters(model)["matmul"]
        info = {"optimizer_steps": result.optimizer_steps, "trained_tokens": result.student_tokens,
                "reference_tokens": ref_tokens + drift_tokens, "params": params, "options": options,
                "flops": 6 * params * result.student_tokens + 2 * params * (ref_tokens + 2 * drift_tokens),
                "final_loss": result.loss_curve[-1]["loss"], "drift_kl_heldout": drift,
                "wall_clock_s": time.perf_counter() - t0}
        with run.cache.build("teacher_dpo", key) as out:
            model.save_pretrained(out / "checkpoint", safe_serialization=True)
            write_json_atomic(out / "info.json", info)
        log.info(f"teacher DPO: final loss {info['final_loss']:.4f}, drift KL(teacher || DPO teacher) on held-out "
                 f"rows {drift:.4f} nats/token, in {info['wall_clock_s']:.0f}s")
    folder = run.cache.path("teacher_dpo", key)
    info = {**json.loads((folder / "info.json").read_text()), "stage_key": key}
    return load_model_from(folder / "checkpoint").to(run.device), info
