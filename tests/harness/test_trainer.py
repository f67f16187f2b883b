"""The training loop: loss normalisation across gradient accumulation, the step plan, and train() itself."""

from __future__ import annotations

import math

import pytest
import torch
from accelerate import Accelerator

import methods  # noqa: F401  (registers the built-in methods)
from harness.batch import collate, prompts_of, with_responses
from harness.budgets import Budget
from harness.data import Encoded
from harness.errors import BenchError
from harness.method import LossOutput, Method, Term
from harness.plan import step_plan
from harness.signals import collate_signals, compute_topk
from harness.trainer import step_loss, train
from methods.dckd import DCKD
from methods.dpo import DPO, DPOConfig
from methods.sft import SFT

PAD = 0


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one thread is plenty, and far faster when other work shares the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_rows(n: int, seed: int) -> list[Encoded]:
    """Rows of different prompt and response lengths, token ids in [1, 64)."""
    g = torch.Generator().manual_seed(seed)

    def ids(lo, hi):
        length = int(torch.randint(lo, hi + 1, (1,), generator=g))
        return torch.randint(1, 64, (length,), generator=g).tolist()

    return [Encoded(ids(1, 5), ids(1, 8), ids(1, 8)) for _ in range(n)]


# Four rows whose lengths all differ, so batching them pads differently from one row per micro-batch.
ROWS = [
    Encoded([5, 6, 7], [8, 9], [10, 11, 12, 13, 14, 15]),
    Encoded([16], [17, 18, 19, 20, 21, 22, 23], [24]),
    Encoded([25, 26, 27, 28, 29], [30, 31, 32, 33], [34, 35, 36]),
    Encoded([37, 38], [39], [40, 41, 42, 43, 44]),
]


def grads_for(method, model, micro, accelerator):
    model.zero_grad(set_to_none=True)
    loss, terms, tokens = step_loss(method, model, micro, accelerator)
    return loss, terms, tokens, {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def one_vs_four(method, model, signals):
    accelerator = Accelerator(cpu=True)
    whole = collate(ROWS, [0, 1, 2, 3], PAD)
    whole.signals = collate_signals(signals, whole, PAD)
    split = []
    for i in range(4):
        mb = collate([ROWS[i]], [i], PAD)
        mb.signals = collate_signals(signals, mb, PAD)
        split.append(mb)
    return grads_for(method, model, [whole], accelerator), grads_for(method, model, split, accelerator)


def assert_same_grads(a, b):
    assert a.keys() == b.keys()
    assert any(g.abs().max() > 1e-4 for g in a.values())  # a real gradient, not all zeros
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=1e-4), name


def test_sft_gradient_is_the_same_for_4x1_and_1x4(tiny_model):
    (loss_a, _, tok_a, ga), (loss_b, _, tok_b, gb) = one_vs_four(SFT(), tiny_model, {})
    assert loss_a == pytest.approx(loss_b, abs=1e-5)
    assert tok_a == tok_b == sum(len(r.prompt_ids) + len(r.chosen_ids) for r in ROWS)
    assert_same_grads(ga, gb)


def test_sft_step_loss_is_a_global_token_mean_not_a_mean_of_micro_batch_means(tiny_model):
    (_, _, _, _), (loss_b, _, _, _) = one_vs_four(SFT(), tiny_model, {})
    with torch.no_grad():
        per_row = [float(SFT().loss(tiny_model, collate([r], [0], PAD)).terms[0].total) for r in ROWS]
    n_tokens = [len(r.chosen_ids) for r in ROWS]
    assert loss_b == pytest.approx(sum(per_row) / sum(n_tokens), abs=1e-5)
    mean_of_means = sum(s / n for s, n in zip(per_row, n_tokens)) / len(ROWS)
    assert abs(loss_b - mean_of_means) > 1e-3  # the two conventions are distinguishable on these rows


def test_dpo_gradient_is_the_same_for_4x1_and_1x4(tiny_model):
    ref = torch.tensor([[-40.0, -60.0], [-70.0, -10.0], [-45.0, -35.0], [-8.0, -50.0]])
    method = DPO(DPOConfig(beta=0.1))
    (loss_a, terms_a, _, ga), (loss_b, terms_b, _, gb) = one_vs_four(
        method, tiny_model, {"reference_logps": {"logps": ref}})
    assert loss_a == pytest.approx(loss_b, abs=1e-5)
    assert terms_a["dpo"] == pytest.approx(terms_b["dpo"], abs=1e-5)
    assert_same_grads(ga, gb)


def test_dckd_gradient_is_the_same_for_4x1_and_1x4(tiny_model):
    # Two sides normalised by two different token counts.
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    teacher = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2))
    signals = {f"teacher_topk:{side}": compute_topk(teacher, ROWS, side, 5, PAD, 64, side)[0]
               for side in ("chosen", "rejected")}
    (loss_a, _, _, ga), (loss_b, _, _, gb) = one_vs_four(DCKD(), tiny_model, signals)
    assert loss_a == pytest.approx(loss_b, abs=1e-5)
    assert_same_grads(ga, gb)


def budget(**kw) -> Budget:
    base = dict(name="t", description="test", train_examples=8, max_seq_len=32, max_prompt_len=8, batch_size=2,
                grad_accum=2, max_steps=6, learning_rate=1e-2, warmup_ratio=0.0, lr_schedule="constant")
    base.update(kw)
    return Budget(**base)


def test_step_plan_is_seeded_and_shaped():
    b = budget(max_steps=6)
    plan = step_plan(8, b, seed=3)
    assert plan == step_plan(8, b, seed=3)
    assert plan != step_plan(8, b, seed=4)
    assert len(plan) == 6
    assert all(len(step) == b.grad_accum and all(len(mb) == b.batch_size for mb in step) for step in plan)
    flat = [i for step in plan for mb in step for i in mb]
    assert len(flat) == 6 * b.examples_per_step
    # 24 rows = 3 epochs of 8: each epoch is a permutation of every row.
    for e in range(3):
        assert sorted(flat[e * 8:(e + 1) * 8]) == list(range(8))
    assert flat[:8] != flat[8:16]  # a fresh shuffle per epoch


def test_step_plan_drops_an_epochs_ragged_tail():
    b = budget(max_steps=5)  # 4 examples per step
    flat = [i for step in step_plan(10, b, seed=0) for mb in step for i in mb]
    assert len(flat) == 20
    for e in range(2):  # 8 of 10 rows per epoch, none twice
        epoch = flat[e * 8:(e + 1) * 8]
        assert len(set(epoch)) == 8


def test_step_plan_rejects_too_few_rows():
    with pytest.raises(BenchError):
        step_plan(3, budget(), seed=0)


def test_a_narrowed_plan_passes_over_the_kept_rows_and_completes_its_last_step_with_left_out_rows():
    b = budget(max_steps=None, epochs=1, train_examples=16)  # 4 steps of 2 x 2 over 16 rows
    keep = [1, 4, 6, 9, 11, 12, 15]
    plan = step_plan(16, b, seed=2, keep=keep)
    assert plan == step_plan(16, b, seed=2, keep=list(reversed(keep)))  # the set decides, not its order
    assert len(plan) == 2  # ceil(7 / 4) of the budget's 4
    assert all(len(step) == b.grad_accum and all(len(mb) == b.batch_size for mb in step) for step in plan)
    flat = [i for step in plan for mb in step for i in mb]
    assert sorted(flat[:7]) == keep  # one pass, each kept row once
    assert flat[7] not in keep  # the filler, a left-out row
    # Every row kept: the budget's own plan, row for row.
    assert step_plan(16, b, seed=2, keep=list(range(16))) == step_plan(16, b, seed=2)
    # Two passes when the budget makes two; still never more steps than the budget's.
    b2 = budget(max_steps=None, epochs=2, train_examples=16)
    flat2 = [i for step in step_plan(16, b2, seed=2, keep=keep) for mb in step for i in mb]
    assert len(flat2) == 16 and sorted(flat2[:14]) == sorted(keep * 2) and set(flat2[14:]).isdisjoint(keep)
    assert len(step_plan(16, b2, seed=2, keep=list(range(16)))) == b2.optimizer_steps == 8
    # Nothing kept: no step. Too few rows left out to fill the last step: its kept rows are dropped.
    assert step_plan(16, b, seed=2, keep=[]) == []
    b10 = budget(max_steps=None, epochs=1, train_examples=10)  # 3 steps
    short = [i for step in step_plan(10, b10, seed=2, keep=list(range(9))) for mb in step for i in mb]
    assert len(short) == 8 and set(short) < set(range(9))  # 9 kept, 1 left out: the ninth's step is dropped
    # With max_steps, the fraction of a pass the budget's steps make: here 3 x 4 of 16 rows, 3/4 of a pass.
    flat3 = [i for step in step_plan(16, budget(max_steps=3), seed=2, keep=keep) for mb in step for i in mb]
    assert len(flat3) == 8 and len(set(flat3[:6])) == 6 and set(flat3[:6]) < set(keep)  # ceil(0.75 x 7) = 6
    with pytest.raises(BenchError, match="outside"):
        step_plan(16, b, seed=2, keep=[3, 16])


def test_train_lowers_the_sft_loss(tiny_model):
    rows = random_rows(8, seed=0)
    b = budget()
    result = train(SFT(), tiny_model, rows, {}, b, PAD, seed=0, desc="test")
    assert result.optimizer_steps == len(result.loss_curve) == 6
    losses = [entry["loss"] for entry in result.loss_curve]
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.5
    # Every step forwards exactly the rows of the seeded plan.
    expected_tokens = sum(len(rows[i].prompt_ids) + len(rows[i].chosen_ids)
                          for step in step_plan(8, b, seed=0) for mb in step for i in mb)
    assert result.student_tokens == expected_tokens
    assert not tiny_model.training  # handed back in eval mode


class NaNLater(Method):
    """SFT until its fifth micro-batch (optimizer step 3 at accumulation 2), then a NaN loss."""

    registered_name = "nan-later"

    def __init__(self):
        super().__init__()
        self.calls = 0

    def loss(self, model, batch):
        self.calls += 1
        out = SFT().loss(model, batch)
        if self.calls >= 5:
            return LossOutput([Term("nll", out.terms[0].total * float("nan"), "chosen_tokens")], out.student_tokens)
        return out


def test_train_raises_on_a_nan_loss_naming_the_step(tiny_model):
    with pytest.raises(BenchError, match=r"nan-later: the loss became nan at optimizer step 3"):
        train(NaNLater(), tiny_model, random_rows(8, seed=0), {}, budget(), PAD, seed=0, desc="test")


class Lengthen(Method):
    """prepare_batch appends two tokens to every chosen response (as an on-policy method swaps responses) and
    records the first draw of the rng it is given; the loss is SFT plus a term equal to the chosen response tokens
    it sees, normalised by "chosen_tokens", so that term is exactly 1 per step only if the step's counts were taken
    after prepare_batch."""

    registered_name = "lengthen"

    def __init__(self):
        super().__init__()
        self.draws = []

    def prepare_batch(self, model, batch, rng):
        self.draws.append(rng.random())
        old = [batch.chosen.labels[b][batch.chosen.labels[b] != -100].tolist() for b in range(len(batch.index))]
        batch.chosen = with_responses(batch.chosen, [r + [1, 2] for r in old], PAD)
        self.usage["generated_tokens"] += 2 * len(old)
        return batch

    def loss(self, model, batch):
        out = SFT().loss(model, batch)
        count = out.terms[0].total * 0 + float(batch.chosen.n_response_tokens)
        return LossOutput(out.terms + [Term("count", count, "chosen_tokens")], out.student_tokens)


def test_train_calls_prepare_batch_per_micro_batch_before_taking_counts(tiny_model):
    rows = random_rows(8, seed=0)
    b = budget(max_steps=3)
    method = Lengthen()
    result = train(method, tiny_model, rows, {}, b, PAD, seed=5, desc="test")
    assert len(method.draws) == 3 * b.grad_accum
    assert len(set(method.draws)) == len(method.draws)  # a differently seeded rng per micro-batch
    assert [e["term/count"] for e in result.loss_curve] == pytest.approx([1.0] * 3, abs=1e-6)
    plan = step_plan(8, b, seed=5)
    # The student forwarded the prepared (longer) sequences; the usage the method recorded is reported.
    assert result.student_tokens == sum(len(rows[i].prompt_ids) + len(rows[i].chosen_ids) + 2
                                        for step in plan for mb in step for i in mb)
    assert result.generated_tokens == 2 * 3 * b.examples_per_step
    assert result.teacher_tokens == 0


def test_train_seeds_prepare_batch_from_the_run_seed(tiny_model):
    import copy

    draws = []
    for seed in (5, 5, 6):
        method = Lengthen()
        train(method, copy.deepcopy(tiny_model), random_rows(8, seed=0), {}, budget(max_steps=2), PAD, seed=seed,
              desc="test")
        draws.append(method.draws)
    assert draws[0] == draws[1]
    assert draws[0] != draws[2]


def test_train_resets_method_usage(tiny_model):
    method = Lengthen()
    method.usage["generated_tokens"] = 1000
    method.usage["teacher_tokens"] = 7
    result = train(method, tiny_model, random_rows(8, seed=0), {}, budget(max_steps=1), PAD, seed=0, desc="test")
    assert result.generated_tokens == method.usage["generated_tokens"] == 2 * 4
    assert result.teacher_tokens == 0


def test_prepared_batches_keep_their_prompts(tiny_model):
    seen = []

    class Spy(Lengthen):
        def loss(self, model, batch):
            seen.append((batch.index, prompts_of(batch.chosen)))
            return super().loss(model, batch)

    rows = random_rows(8, seed=0)
    train(Spy(), tiny_model, rows, {}, budget(max_steps=1), PAD, seed=0, desc="test")
    assert seen and all(prompts == [rows[i].prompt_ids for i in index] for index, prompts in seen)


class Interrupted(Exception):
    pass


class StatefulSFT(SFT):
    """SFT with state kept across steps (the optimizer steps it has seen), like DistiLLM's adaptive buffer;
    raises at ``stop_at`` to stand in for a killed process."""

    registered_name = "stateful-sft"

    def __init__(self, stop_at: int | None = None):
        super().__init__()
        self.stop_at, self.seen = stop_at, []

    def start_training(self):
        self.seen = []

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = list(state["seen"])

    def prepare_batch(self, model, batch, rng):
        if self.step == self.stop_at:
            raise Interrupted
        if not self.seen or self.seen[-1] != self.step:
            self.seen.append(self.step)
        return batch


def test_training_resumed_from_a_checkpoint_ends_exactly_where_an_uninterrupted_one_does(tiny_model, tmp_path):
    from harness.trainer import Checkpointing

    rows = random_rows(8, seed=0)
    b = budget(max_steps=7, lr_schedule="cosine", warmup_ratio=0.2)  # the schedule's position must be restored
    start = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    straight_method = StatefulSFT()
    straight = train(straight_method, tiny_model, rows, {}, b, PAD, seed=0)
    final = {k: v.clone() for k, v in tiny_model.state_dict().items()}

    ck = Checkpointing(tmp_path / "ck", every_steps=2)
    tiny_model.load_state_dict(start)
    with pytest.raises(Interrupted):
        train(StatefulSFT(stop_at=6), tiny_model, rows, {}, b, PAD, seed=0, checkpoints=ck)
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["step-0000004"]  # only the newest is kept
    tiny_model.load_state_dict(start)  # a new process starts from the initial weights again
    resumed_method = StatefulSFT()
    resumed = train(resumed_method, tiny_model, rows, {}, b, PAD, seed=0, checkpoints=ck)

    assert resumed.loss_curve == straight.loss_curve  # bit for bit: weights, Adam moments, lr, RNG restored
    assert resumed.student_tokens == straight.student_tokens and resumed.optimizer_steps == 7
    assert resumed_method.seen == straight_method.seen == list(range(1, 8))
    for name, w in tiny_model.state_dict().items():
        assert torch.equal(w, final[name]), name
    assert not torch.equal(final["lm_head.weight"], start["lm_head.weight"])


def test_a_checkpoint_from_another_process_count_is_refused(tiny_model, tmp_path):
    from harness.trainer import Checkpointing

    rows = random_rows(8, seed=0)
    ck = Checkpointing(tmp_path / "ck", every_steps=1)
    with pytest.raises(Interrupted):
        train(StatefulSFT(stop_at=3), tiny_model, rows, {}, budget(), PAD, seed=0, checkpoints=ck)
    state = ck.latest() / "state.json"
    import json

    data = json.loads(state.read_text())
    data["per_rank"] = []
    state.write_text(json.dumps(data))
    with pytest.raises(BenchError, match="written by 0 process"):
        train(StatefulSFT(), tiny_model, rows, {}, budget(), PAD, seed=0, checkpoints=ck)


def test_distillm_state_survives_a_checkpoint():
    from methods.distillm import AdaptiveState, DistiLLM

    m = DistiLLM()
    m.state = AdaptiveState(threshold=0.3, best=2.5, buffer=[([1, 2], [3, 4, 5])], last_validated=4,
                            draws={"data": 2, "generated": 1, "replayed": 1})
    import json

    back = DistiLLM()
    back.load_state_dict(json.loads(json.dumps(m.state_dict())))
    assert back.state == m.state
    assert DistiLLM().state_dict() == {"adaptive": None}


def test_no_optimizer_step_runs_at_learning_rate_zero():
    from harness.budgets import get_budget
    from harness.trainer import lr_factor

    for name in ("tiny", "smoke", "paper"):
        b = get_budget(name)
        factors = [lr_factor(s, warmup=b.warmup_steps, total=b.optimizer_steps, schedule=b.lr_schedule)
                   for s in range(b.optimizer_steps)]
        assert min(factors) > 0, name
    # smoke: 12 steps, 1 warm-up step at half the rate, then transformers' cosine over the other 11, unchanged
    smoke = [lr_factor(s, warmup=1, total=12, schedule="cosine") for s in range(12)]
    assert smoke[0] == 0.5 and smoke[1] == 1.0
    assert smoke[6] == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 11)))
    assert [lr_factor(s, warmup=3, total=10, schedule="linear") for s in (0, 1, 2, 3, 9)] == \
        pytest.approx([0.25, 0.5, 0.75, 1.0, 1 - 6 / 7])
    assert lr_factor(5, warmup=2, total=8, schedule="constant") == 1.0


def test_the_first_logged_step_trains_at_a_positive_rate(tiny_model):
    rows = [Encoded([1, 2, 3], [4, 5, 6], [7, 8]) for _ in range(4)]
    b = Budget(name="t", description="t", train_examples=4, max_seq_len=16, max_prompt_len=4, batch_size=2,
               grad_accum=1, max_steps=4, learning_rate=1e-3, warmup_ratio=0.5, save_checkpoints=False)
    result = train(SFT(), tiny_model, rows, {}, b, pad_id=0, seed=0)
    assert [r["lr"] for r in result.loss_curve] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, 5e-4])


class KeepFirstRows(Method):
    """A filtering loss like PAD's: each row's summed NLL times a keep flag (row index < ``keep_below``), averaged
    over kept rows. ``skips``: declare micro-batches without a kept row inert, as PAD does."""

    registered_name = "keep-first-rows"

    def __init__(self, keep_below: int, skips: bool):
        super().__init__()
        self.keep_below, self.skips, self.forwards = keep_below, skips, 0

    def prepare_batch(self, model, batch, rng):
        batch.signals["filter"] = {"keep": torch.tensor([i < self.keep_below for i in batch.index])}
        return batch

    def inert(self, batch):
        return self.skips and not bool(batch.signals["filter"]["keep"].any())

    def loss(self, model, batch):
        from harness.losses import forward, sequence_logps

        self.forwards += 1
        total, _ = sequence_logps(forward(model, batch.chosen), batch.chosen)
        keep = batch.signals["filter"]["keep"].to(total.dtype)
        return LossOutput([Term("nll", -(total * keep).sum(), "filter_kept")], batch.chosen.n_tokens)


def test_skipping_inert_micro_batches_trains_the_same_weights_bit_for_bit(tiny_model):
    import copy

    rows = random_rows(8, seed=0)
    # Weight decay and Adam moments from the kept rows' steps: a skipped step must still apply both, as the
    # zero gradients of a real backward would.
    b = budget(max_steps=6, weight_decay=0.1)
    plan = step_plan(8, b, seed=0)
    kept_below = 2
    inert_mbs = [[all(i >= kept_below for i in mb) for mb in step] for step in plan]
    assert any(all(s) for s in inert_mbs) and any(not all(s) for s in inert_mbs)  # whole steps of each kind
    results, weights, methods_ = [], [], []
    for skips in (False, True):
        model = copy.deepcopy(tiny_model)
        method = KeepFirstRows(kept_below, skips)
        results.append(train(method, model, rows, {}, b, PAD, seed=0, desc="test"))
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
        methods_.append(method)
    full, skipped = results
    for name, w in weights[0].items():
        assert torch.equal(w, weights[1][name]), name
    assert not torch.equal(weights[0]["lm_head.weight"], tiny_model.state_dict()["lm_head.weight"])
    assert [e["loss"] for e in skipped.loss_curve] == [e["loss"] for e in full.loss_curve]
    # Only the inert micro-batches went unforwarded, and the tokens say so.
    n_inert = sum(map(sum, inert_mbs))
    assert methods_[0].forwards - methods_[1].forwards == n_inert > 0
    unforwarded = sum(len(rows[i].prompt_ids) + len(rows[i].chosen_ids)
                      for step, flags in zip(plan, inert_mbs) for mb, f in zip(step, flags) if f for i in mb)
    assert full.student_tokens - skipped.student_tokens == unforwarded


class TrainsOnFirstRows(KeepFirstRows):
    """KeepFirstRows that also narrows its training rows to the kept ones, as PAD does with its filters."""

    def training_rows(self, signals, n_rows):
        return [i for i in range(n_rows) if i < self.keep_below]


def test_a_method_that_narrows_its_rows_trains_one_pass_over_them_on_a_schedule_of_its_own_steps(tiny_model):
    import copy

    from harness.losses import forward, sequence_logps

    rows = random_rows(8, seed=0)
    b = budget(max_steps=None, epochs=1, train_examples=8, lr_schedule="cosine", warmup_ratio=0.0)  # 2 steps
    model = copy.deepcopy(tiny_model)
    result = train(TrainsOnFirstRows(3, skips=True), model, rows, {}, b, PAD, seed=0, desc="test")
    assert result.optimizer_steps == 1 and result.rows_trained == 3
    # The one step's loss is the mean NLL of the three kept rows: the row completing the step adds nothing.
    with torch.no_grad():
        chosen = [collate([rows[i]], [i], PAD).chosen for i in range(3)]
        sums = [float(sequence_logps(forward(tiny_model, seqs), seqs)[0].sum()) for seqs in chosen]
    assert result.loss_curve[0]["loss"] == pytest.approx(-sum(sums) / 3, rel=1e-5)
    # Its schedule spans its own step (cosine over one step starts at the peak), not the budget's two.
    assert result.loss_curve[0]["lr"] == b.learning_rate
    # With no row kept nothing runs, and the student is the one it started from.
    model = copy.deepcopy(tiny_model)
    result = train(TrainsOnFirstRows(0, skips=True), model, rows, {}, b, PAD, seed=0, desc="test")
    assert result.optimizer_steps == 0 and result.loss_curve == [] and result.rows_trained == 0
    for name, w in model.state_dict().items():
        assert torch.equal(w, tiny_model.state_dict()[name]), name
