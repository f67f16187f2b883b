"""DistiLLM (Ko et al. 2024, arXiv 2402.03898): skew KL (or skew reverse KL) to a live teacher, on data-set
responses and, adaptively, on the student's own generations kept in a replay buffer."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from harness.batch import pad_sequences, prompts_of
from harness.errors import BenchError
from harness.lazy import no_grad
from harness.losses import forward, skewed_kl, token_logps
from harness.method import LossOutput, Method, MethodConfig, Term
from harness.recipes import Recipe
from harness.registry import register_method
from methods.gkd import on_policy


@dataclass
class DistiLLMConfig(MethodConfig):
    """Defaults are the released scripts' (``--type adaptive-sfkl``, ``jongwooko/distillm``).

    loss: "skl", KL(p_T || alpha p_T + (1 - alpha) q), or "srkl", KL(q || (1 - alpha) p_T + alpha q); token means,
        fp32, full vocabulary against the live teacher. (The official code drops the teacher-entropy term of
        SKL, a constant; we report the KL itself, so logged values differ by that constant, gradients do not.)
    alpha: the skew.
    kd_ratio: loss = (1 - kd_ratio) * NLL + kd_ratio * skew divergence, on the same responses.
    adaptive: use student generations (the adaptive off-policy scheduler); False trains on data only.
    init_threshold, loss_eps: the threshold (probability that a micro-batch uses student generations) starts at
        init_threshold and rises by 0.1 (to at most 1) whenever the validation loss has risen by at least
        loss_eps since it last rose. The validation loss is the student's token-mean NLL of the chosen responses
        of ``validation_examples`` train-split rows never trained on (the run's spare rows, not the test rows).
    validations: how many times over the run the validation loss is measured. The released scripts validate
        once per epoch for 20 epochs; a budget of one epoch would then never move the threshold, so the
        interval is scaled to total_steps / validations (at least one step).
    capacity: replay-buffer size. A micro-batch draw r ~ U(0, 1): below the sampling threshold (or below the
        threshold while the buffer is not yet full) fresh samples are generated and stored; below the threshold
        otherwise, a micro-batch is replayed from the buffer; else the data set's responses are used.
    replay_ratio: the sampling threshold's schedule within the threshold: "decreasing", threshold * (1 - step /
        total) (the code's default branch), "constant" (threshold / 2) or "increasing" (threshold * step / total).
    temperature: sampling temperature of the student's generations (top-k 0, top-p 1 as the scripts).
    """

    loss: str = "skl"
    alpha: float = 0.1
    kd_ratio: float = 1.0
    adaptive: bool = True
    init_threshold: float = 0.0
    loss_eps: float = 0.1
    validations: int = 20
    validation_examples: int = 16
    capacity: int = 1000
    replay_ratio: str = "decreasing"
    temperature: float = 1.0

    def __post_init__(self):
        if self.loss not in ("skl", "srkl"):
            raise BenchError(f"distillm: loss must be skl or srkl, got {self.loss!r}.")
        if not 0.0 <= self.alpha < 1.0:
            raise BenchError(f"distillm: alpha must be in [0, 1), got {self.alpha}.")
        if not 0.0 <= self.kd_ratio <= 1.0:
            raise BenchError(f"distillm: kd_ratio must be in [0, 1], got {self.kd_ratio}.")
        if not 0.0 <= self.init_threshold <= 1.0:
            raise BenchError(f"distillm: init_threshold must be in [0, 1], got {self.init_threshold}.")
        if self.validations < 1 or self.validation_examples < 1 or self.capacity < 1:
            raise BenchError("distillm: validations, validation_examples and capacity must be at least 1.")
        if self.replay_ratio not in ("decreasing", "constant", "increasing"):
            raise BenchError(f"distillm: replay_ratio must be decreasing, constant or increasing, "
                             f"got {self.replay_ratio!r}.")
        if self.temperature <= 0:
            raise BenchError(f"distillm: temperature must be positive, got {self.temperature}.")


@dataclass
class AdaptiveState:
    threshold: float
    best: float | None = None  # the validation loss the next rise is measured from
    buffer: list = field(default_factory=list)  # (prompt ids, response ids), oldest first
    last_validated: int = 0
    draws: dict = field(default_factory=lambda: {"data": 0, "generated": 0, "replayed": 0})


@no_grad
def validation_nll(model, rows, pad_id: int, batch_size: int = 8) -> tuple[float, int]:
    """Token-mean NLL of the rows' chosen responses under ``model``; returns it and the tokens forwarded."""
    was_training = model.training
    model.eval()
    total, count, tokens = 0.0, 0, 0
    device = next(model.parameters()).device
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        seqs = pad_sequences([r.prompt_ids for r in chunk], [r.chosen_ids for r in chunk], pad_id).to(device)
        logp, _ = token_logps(forward(model, seqs), seqs)
        total -= float(logp.sum())
        count += seqs.n_response_tokens
        tokens += seqs.n_tokens
    model.train(was_training)
    return total / max(count, 1), tokens


DISTILLM = "jongwooko/distillm@d47e77f"
SCRIPT = "scripts/gpt2/distillm/train_0.1B_1.5B.sh"
RECIPES = {
    "official": Recipe(
        "The released adaptive-sfkl script: skew KL alpha 0.1, no NLL, adaptive student generations.",
        {"loss": "skl", "alpha": 0.1, "kd_ratio": 1.0, "adaptive": True, "init_threshold": 0.0, "loss_eps": 0.1,
         "capacity": 1000, "replay_ratio": "decreasing", "temperature": 1.0},
        {"loss": f"{DISTILLM} {SCRIPT}:80 (--type adaptive-sfkl)", "adaptive": f"{DISTILLM} {SCRIPT}:80,87",
         "alpha": f"{DISTILLM} arguments.py:178 (the script passes no --skew-alpha)",
         "kd_ratio": f"{DISTILLM} {SCRIPT}:61", "init_threshold": f"{DISTILLM} {SCRIPT}:90",
         "loss_eps": f"{DISTILLM} {SCRIPT}:91", "capacity": f"{DISTILLM} {SCRIPT}:92",
         "replay_ratio": f"{DISTILLM} arguments.py:192", "temperature": f"{DISTILLM} {SCRIPT}:85"},
        learning_rate=5e-4, source=f"{DISTILLM} {SCRIPT}"),
}


@register_method("distillm")
class DistiLLM(Method):
    description = "Skew KL (or skew reverse KL) to the live teacher, with adaptive off-policy student generations."
    paper = "Ko et al. 2024 (ICML), arXiv 2402.03898"
    Config = DistiLLMConfig
    recipes = RECIPES
    default_recipe = "official"
    needs = ("teacher_model",)
    needs_shared_vocab = True

    def __init__(self, config=None):
        super().__init__(config)
        self.state: AdaptiveState | None = None

    def start_training(self):
        self.state = None

    def state_dict(self) -> dict:
        return {"adaptive": None if self.state is None else dataclasses.asdict(self.state)}

    def load_state_dict(self, state: dict) -> None:
        st = state.get("adaptive")
        self.state = None if st is None else AdaptiveState(
            **{**st, "buffer": [(list(p), list(r)) for p, r in st["buffer"]]})

    def _validate(self, model) -> float:
        rows = self.runtime.validation[: self.config.validation_examples]
        if not rows:
            raise BenchError("distillm: the data set has no spare train rows to validate on; use adaptive=false "
                             "or a budget with fewer train_examples than the train split has rows.")
        loss, tokens = validation_nll(model, rows, self.runtime.pad_id)
        self.usage["student_forward_tokens"] += tokens
        return loss

    def _update_threshold(self, model) -> None:
        cfg, st = self.config, self.state
        interval = max(1, round(self.runtime.total_steps / cfg.validations))
        done = self.step - 1  # optimizer steps completed
        if done > 0 and done % interval == 0 and st.last_validated != done:
            st.last_validated = done
            current = self._validate(model)
            if current >= st.best + cfg.loss_eps:
                st.threshold = round(min(st.threshold + 0.1, 1.0), 10)  # ten rises reach exactly 1
                st.best = current

    def sampling_threshold(self) -> float:
        thr, progress = self.state.threshold, self.step / max(self.runtime.total_steps, 1)
        if self.config.replay_ratio == "constant":
            return thr * 0.5
        if self.config.replay_ratio == "increasing":
            return thr * progress
        return thr * (1 - progress)

    def prepare_batch(self, model, batch, rng):
        cfg = self.config
        if not cfg.adaptive:
            return batch
        if self.state is None:  # the loss before any training is the first reference
            self.state = AdaptiveState(threshold=cfg.init_threshold)
            self.state.best = self._validate(model)
        st = self.state
        self._update_threshold(model)
        r = rng.random()
        # A buffer too small to fill a micro-batch (capacity below the batch size) cannot be replayed from.
        filling = len(st.buffer) < max(cfg.capacity, len(batch.index))
        if r < self.sampling_threshold() or (r < st.threshold and filling):
            batch = on_policy(self, model, batch, rng, cfg.temperature)
            prompts, seqs = prompts_of(batch.chosen), batch.chosen
            for b, p in enumerate(prompts):
                st.buffer.append((p, seqs.input_ids[b, len(p):int(seqs.attention_mask[b].sum())].tolist()))
            del st.buffer[: max(0, len(st.buffer) - cfg.capacity)]
            st.draws["generated"] += 1
        elif r < st.threshold:
            picked = rng.sample(st.buffer, k=len(batch.index))
            batch.chosen = pad_sequences([p for p, _ in picked], [s for _, s in picked], self.runtime.pad_id)
            st.draws["replayed"] += 1
        else:
            st.draws["data"] += 1
        return batch

    def loss(self, model, batch):
        cfg = self.config
        seqs = batch.chosen
        logits = forward(model, seqs)
        t_logits = self.live_teacher_logits(seqs, logits.shape[-1])
        if cfg.loss == "skl":
            div = skewed_kl(t_logits, logits, cfg.alpha)
        else:
            div = skewed_kl(logits, t_logits, cfg.alpha)
        terms = [Term(cfg.loss, cfg.kd_ratio * div.sum(), "chosen_tokens")]
        if cfg.kd_ratio < 1:
            logp, _ = token_logps(logits, seqs)
            terms.append(Term("nll", -(1 - cfg.kd_ratio) * logp.sum(), "chosen_tokens"))
        stats = {"threshold": self.state.threshold} if self.state is not None else {}
        return LossOutput(terms, student_tokens=seqs.n_tokens, stats=stats)
