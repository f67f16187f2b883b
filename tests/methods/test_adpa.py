"""ADPA and ADPA+: the advantage signal (built by hand in its stored form, and by compute_advantage on fake and
real models), the signed (paper) and clamped official losses against plain-math formulas, where the two modes
differ, gradient direction, the SFT term, config validation, signal options and registration."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from harness.batch import prompts_of
from harness.cache import stable_hash
from harness.data import Encoded
from harness.errors import BenchError
from harness.signals import collate_signals, pack
from methods.adpa import ADPA, RECIPES, ADPAPlus, official_advantage, signed_advantage
from methods.adpa import ADPAConfig as _ADPAConfig
from methods.adpa.signal import compute_advantage
from tests.methods.helpers import (
    LLAMA_EOS,
    LLAMA_ROWS,
    ROWS,
    STUDENT,
    TEACHER,
    K,
    TokenLM,
    clamp,
    collated,
    log_softmax,
    normalised,
    sgd_step,
    single_thread,
    softmax,
    tiny_llama,
)

# pi_dpo is TEACHER; pi_ref is REF (logits after token c in row c). After 2, REF is near uniform with top-2 {0, 2}:
# the advantage of 0 is above 1, that of 2 negative. After 0 its top-2 is {3, 1}, so the DPO teacher's 0 is imputed;
# after 4 it is {1, 2}, so the DPO teacher's favourite 4 is imputed (with the DPO probability of 1).
REF = [
    [-2.0, 1.0, 0.0, 1.5, 0.5],
    [0.0, 1.5, 1.2, 0.0, 0.0],
    [0.1, 0.0, 0.05, 0.0, 0.0],
    [0.0, 0.0, 0.0, 1.0, 0.0],
    [0.0, 1.0, 0.5, 0.0, -1.0],
]
ANSWERS = [[0, 3], [2, 1, 4]]  # the student's answers to ROWS' prompts [1, 2] and [4]: 5 answer tokens

# These tests check the equations, so they start from the paper recipe; the released (default) recipe is
# pinned in tests/harness/test_recipes.py.
ADPAConfig = functools.partial(_ADPAConfig, **RECIPES["paper"].values)


def top(row, k=K):
    return sorted(range(len(row)), key=lambda v: -row[v])[:k]


# A reference close to the DPO teacher: each row's top-2 lowered by 0.1 (same top-2, advantages in (0, 0.1)).
REF_CLOSE = [[x - 0.1 if v in top(row) else x for v, x in enumerate(row)] for row in TEACHER]


def prevs(answers=ANSWERS, rows=ROWS):
    """The token before each answer token, in storage order."""
    out = []
    for r, a in zip(rows, answers):
        seq = r.prompt_ids + a
        out += [seq[i - 1] for i in range(len(r.prompt_ids), len(seq))]
    return out


def position(prev, ref=REF):
    """After `prev`: the DPO teacher's top-k ids, log p_dpo and log p_ref of them, and which are in ref's top-k."""
    ids = top(TEACHER[prev])
    d, r = log_softmax(TEACHER[prev]), log_softmax(ref[prev])
    return ids, [d[v] for v in ids], [r[v] for v in ids], [v in top(ref[prev]) for v in ids]


def stored(ref=REF, answers=ANSWERS, rows=ROWS):
    """The adpa_advantage signal in the flat form compute_advantage returns."""
    ids, d, r, inref = zip(*[position(p, ref) for p in prevs(answers, rows)])
    return {**pack(answers), "topk_ids": torch.tensor(ids, dtype=torch.int32), "dpo_logps": torch.tensor(d),
            "ref_logps": torch.tensor(r), "ref_in_topk": torch.tensor(inref, dtype=torch.uint8)}


def adpa_batch(ref=REF):
    batch = collated()
    batch.signals = collate_signals({"adpa_advantage": stored(ref)}, batch, pad_id=0)
    return batch


def signed_adv(prev, ref=REF):
    ids, d, r, _ = position(prev, ref)
    return ids, [a - b for a, b in zip(d, r)], 0.0


def official_adv(prev, ref=REF):
    ids, d, r, inref = position(prev, ref)
    pd = [max(math.exp(x), 1e-7) for x in d]
    pr = [max(math.exp(y) if inside else min(pd), 1e-7) for y, inside in zip(r, inref)]
    return ids, [clamp(math.log(a / b), 1e-8, 1 - 1e-8) for a, b in zip(pd, pr)], 1e-8


def hand_loss(adv_fn, student=STUDENT, ref=REF):
    """-sum_t [sum_{a in top-k} q(a) A(a) + q(rest) A_rest], q the student's next-token distribution."""
    total = 0.0
    for prev in prevs():
        ids, adv, rest = adv_fn(prev, ref)
        q = softmax(student[prev])
        total += sum(q[v] * a for v, a in zip(ids, adv)) + (1 - sum(q[v] for v in ids)) * rest
    return -total


def total(out, name="adpa"):
    return float(next(t.total for t in out.terms if t.name == name).detach())


def test_the_hand_built_signal_lands_on_the_answer_positions():
    sig = adpa_batch().signals["adpa_advantage"]
    seqs = sig["seqs"]
    assert prompts_of(seqs) == [r.prompt_ids for r in ROWS]
    assert [seqs.labels[b][seqs.labels[b] != -100].tolist() for b in range(2)] == ANSWERS
    assert sig["ids"].dtype == torch.long and sig["ref_in_topk"].dtype == torch.bool
    placed = []
    for b in range(2):
        for t in range(seqs.input_ids.shape[1] - 1):
            if seqs.labels[b, t + 1] == -100:
                assert sig["ids"][b, t].tolist() == [0, 0] and sig["dpo_logps"][b, t].tolist() == [0, 0]
                continue
            ids, d, r, inref = position(int(seqs.input_ids[b, t]))
            assert sig["ids"][b, t].tolist() == ids and sig["ref_in_topk"][b, t].tolist() == inref
            assert sig["dpo_logps"][b, t].tolist() == pytest.approx(d, abs=1e-6)
            assert sig["ref_logps"][b, t].tolist() == pytest.approx(r, abs=1e-6)
            placed.append(int(seqs.input_ids[b, t]))
    assert placed == prevs() == [2, 0, 4, 2, 1]


def test_compute_advantage_with_fake_models_gives_the_hand_built_signal(monkeypatch):
    calls = []

    def fake_generate(model, prompts, max_new_tokens, **kwargs):
        calls.append(kwargs)
        return [[0, 3, 1, 1], [2, 1, 4, 4], [3, 3]]  # cut to fit max_seq_len 4; the third to nothing: [eos]

    monkeypatch.setattr("harness.generation.generate_ids", fake_generate)
    rows = ROWS + [Encoded([1, 1, 1, 1], [2], [3])]
    data, counts = compute_advantage(TokenLM(STUDENT), TokenLM(TEACHER), TokenLM(REF), rows, K, 5, pad_id=0,
                                     eos_id=4, max_new_tokens=8, max_seq_len=4, desc="t")
    assert not calls[0].get("do_sample", False)  # greedy
    want = stored(answers=ANSWERS + [[4]], rows=rows)
    assert set(data) == set(want)
    for name in ("ids", "offsets", "topk_ids", "ref_in_topk"):
        assert data[name].dtype == want[name].dtype and torch.equal(data[name], want[name]), name
    for name in ("dpo_logps", "ref_logps"):
        assert torch.allclose(data[name], want[name], atol=1e-6), name
    assert data["offsets"].tolist() == [0, 2, 5, 6]
    assert counts["generated_tokens"] == 4 + 4 + 2


def greedy(model, prompt, max_new, eos):
    ids = list(prompt)
    with torch.no_grad():
        while len(ids) - len(prompt) < max_new and (len(ids) == len(prompt) or ids[-1] != eos):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def test_compute_advantage_with_real_models(tiny_model):
    dpo, ref, k, limit = tiny_llama(seed=1), tiny_llama(seed=2), 3, 60
    with single_thread():
        data, counts = compute_advantage(tiny_model, dpo, ref, LLAMA_ROWS, k, limit, pad_id=0, eos_id=LLAMA_EOS,
                                         max_new_tokens=5, max_seq_len=64, desc="t")
        answers = [greedy(tiny_model, r.prompt_ids, 5, LLAMA_EOS) for r in LLAMA_ROWS]
        assert data["offsets"].tolist() == [0, *torch.tensor([len(a) for a in answers]).cumsum(0).tolist()]
        assert data["ids"].tolist() == [t for a in answers for t in a]
        assert counts["generated_tokens"] == sum(len(a) for a in answers)
        n = len(data["ids"])
        assert [data[f].shape for f in ("topk_ids", "dpo_logps", "ref_logps", "ref_in_topk")] == [(n, k)] * 4
        row = 0
        for r, a in zip(LLAMA_ROWS, answers):
            seq = torch.tensor([r.prompt_ids + a])
            d, f = (torch.log_softmax(m(input_ids=seq).logits[0].double(), -1)[:, :limit].tolist() for m in (dpo, ref))
            for pos in range(len(r.prompt_ids) - 1, len(r.prompt_ids) + len(a) - 1):
                ids = top(d[pos], k)
                assert data["topk_ids"][row].tolist() == ids
                assert data["dpo_logps"][row].tolist() == pytest.approx([d[pos][v] for v in ids], abs=1e-5)
                assert data["ref_logps"][row].tolist() == pytest.approx([f[pos][v] for v in ids], abs=1e-5)
                assert data["ref_in_topk"][row].tolist() == [int(v in top(f[pos], k)) for v in ids]
                row += 1
        assert row == n


def test_signed_loss_is_the_hand_formula():
    batch = adpa_batch()
    out = ADPA(ADPAConfig()).loss(TokenLM(STUDENT), batch)
    assert [(t.name, t.per) for t in out.terms] == [("adpa", "adpa_advantage_tokens")]
    assert batch.counts()["adpa_advantage_tokens"] == 5
    assert total(out) == pytest.approx(hand_loss(signed_adv), abs=1e-5)
    assert float(normalised(out, batch).detach()) == pytest.approx(hand_loss(signed_adv) / 5, abs=1e-5)
    assert out.student_tokens == (2 + 2) + (1 + 3)
    advs = [a for p in prevs() for a in signed_adv(p)[1]]
    assert out.stats["advantage_positive_fraction"] == pytest.approx(sum(a > 0 for a in advs) / 10)
    assert out.stats["advantage_mean"] == pytest.approx(sum(advs) / 10, abs=1e-5)


def test_official_loss_is_the_hand_formula():
    assert signed_adv(2)[1][0] > 1 and signed_adv(2)[1][1] < 0  # REF does what its comment says
    assert position(0)[3] == [True, False] and position(4)[3] == [False, True]
    out = ADPA(ADPAConfig(advantage_mode="clamped_official")).loss(TokenLM(STUDENT), adpa_batch())
    assert total(out) == pytest.approx(hand_loss(official_adv), abs=1e-5)
    assert abs(hand_loss(official_adv) - hand_loss(signed_adv)) > 0.05


def test_official_advantages_differ_from_signed_only_where_the_notes_say():
    sig = adpa_batch().signals["adpa_advantage"]
    mask = sig["seqs"].labels[:, 1:] != -100
    signed, s_rest = signed_advantage(sig)
    official, o_rest = official_advantage(sig)
    assert torch.equal(s_rest, torch.zeros(mask.shape)) and torch.equal(o_rest, torch.full(mask.shape, 1e-8))
    seen = set()
    for s, o, inside in zip(signed[mask].flatten().tolist(), official[mask].flatten().tolist(),
                            sig["ref_in_topk"][mask].flatten().tolist()):
        if not inside:
            seen.add("imputed")
            assert abs(o - s) > 0.1
        elif s < 0:
            seen.add("negative")
            assert o == pytest.approx(1e-8, rel=1e-6)
        elif s > 1:
            seen.add("above one")
            assert o == pytest.approx(1.0, abs=1e-6)
        else:
            seen.add("kept")
            assert o == pytest.approx(s, abs=1e-6)
    assert seen == {"imputed", "negative", "above one", "kept"}


def test_modes_agree_but_for_the_rest_term_when_no_clamp_binds():
    for prev in set(prevs()):
        assert all(position(prev, REF_CLOSE)[3]) and all(1e-8 < a < 1 for a in signed_adv(prev, REF_CLOSE)[1])
    batch = adpa_batch(REF_CLOSE)
    sig = dict(batch.signals["adpa_advantage"])
    mask = sig["seqs"].labels[:, 1:] != -100
    sig.update(dpo_logps=sig["dpo_logps"].double(), ref_logps=sig["ref_logps"].double())
    assert torch.allclose(official_advantage(sig)[0][mask], signed_advantage(sig)[0][mask], rtol=0, atol=1e-12)
    # A student with ~e^-12 on the top-2 everywhere: the 1e-8 rest term is a visible share of the float32 loss.
    student = [[-12.0 if v in top(row) else 0.0 for v in range(5)] for row in TEACHER]
    signed = ADPA(ADPAConfig()).loss(TokenLM(student), batch)
    official = ADPA(ADPAConfig(advantage_mode="clamped_official")).loss(TokenLM(student), batch)
    rest_mass = sum(1 - sum(softmax(student[p])[v] for v in top(TEACHER[p])) for p in prevs())
    hand = hand_loss(official_adv, student, REF_CLOSE)
    assert hand - hand_loss(signed_adv, student, REF_CLOSE) == pytest.approx(-1e-8 * rest_mass, rel=1e-6)
    assert total(official) == pytest.approx(hand, rel=1e-4)
    assert total(official) - total(signed) == pytest.approx(-1e-8 * rest_mass, rel=1e-2)


@pytest.mark.parametrize("dpo,ref,inside,want", [
    ([0.9, 1e-9], [0.5, 1e-10], [1, 1], [math.log(1.8), 1e-8]),  # both floored at 1e-7: log 1 -> 1e-8, not log 10
    ([0.6, 0.3], [0.2, 0.25], [0, 1], [math.log(2.0), math.log(1.2)]),  # 0 imputed with min(0.6, 0.3)
    ([0.6, 1e-9], [0.01, 0.5], [0, 1], [1 - 1e-8, 1e-8]),  # imputed with the floor 1e-7: log 6e6 capped
])
def test_official_advantage_floors_imputes_and_clamps(dpo, ref, inside, want):
    sig = {"dpo_logps": torch.tensor([dpo], dtype=torch.float64).log(),
           "ref_logps": torch.tensor([ref], dtype=torch.float64).log(), "ref_in_topk": torch.tensor([inside]).bool()}
    adv, rest = official_advantage(sig)
    assert adv[0].tolist() == pytest.approx(want, rel=1e-9, abs=1e-15)
    assert rest.tolist() == pytest.approx([1e-8])


def test_sgd_step_moves_the_student_towards_positive_advantage():
    ids, adv, _ = signed_adv(2)
    assert ids == [0, 2] and adv[0] > 1 and adv[1] < 0
    model, batch, method = TokenLM(STUDENT), adpa_batch(), ADPA(ADPAConfig())
    before = normalised(method.loss(model, batch), batch)
    before.backward()
    sgd_step(model)
    after = normalised(method.loss(model, batch), batch)
    assert float(after.detach()) < float(before.detach()) - 1e-3
    q0, q1 = softmax(STUDENT[2]), softmax(model.table[2].tolist())
    assert q1[0] > q0[0] + 1e-3 and q1[2] < q0[2] - 1e-3


def test_sft_term_and_adpa_weight():
    batch = adpa_batch()
    out = ADPA(ADPAConfig(adpa_weight=0.3, sft_weight=0.5)).loss(TokenLM(STUDENT), batch)
    nll = 0.0
    for r in ROWS:
        seq = r.prompt_ids + r.chosen_ids
        nll -= sum(log_softmax(STUDENT[seq[i - 1]])[seq[i]] for i in range(len(r.prompt_ids), len(seq)))
    assert [(t.name, t.per) for t in out.terms] == [("adpa", "adpa_advantage_tokens"), ("nll", "chosen_tokens")]
    assert total(out) == pytest.approx(0.3 * hand_loss(signed_adv), abs=1e-5)
    assert total(out, "nll") == pytest.approx(0.5 * nll, abs=1e-5)
    assert out.student_tokens == 8 + (2 + 3) + (1 + 1)  # the answers, then the chosen sequences
    counts = batch.counts()
    assert float(normalised(out, batch).detach()) == pytest.approx(
        0.3 * hand_loss(signed_adv) / 5 + 0.5 * nll / counts["chosen_tokens"], abs=1e-5)


@pytest.mark.parametrize("field,bad", [("advantage_mode", "clamped"), ("reference", "dpo"), ("adpa_weight", 0.0),
                                       ("adpa_weight", -1.0), ("sft_weight", -0.1), ("teacher_dpo_beta", 0.0),
                                       ("teacher_dpo_beta", -0.01), ("teacher_dpo_lr", 0.0), ("teacher_dpo_lr", -1e-6)])
def test_config_rejects_bad_values(field, bad):
    with pytest.raises(BenchError, match=field):
        ADPAConfig(**{field: bad})
    ok = ADPAConfig(advantage_mode="clamped_official", reference="student", sft_weight=0.0, teacher_dpo_lr=1e-6)
    assert (ok.advantage_mode, ok.reference, ok.sft_weight, ok.teacher_dpo_lr) == ("clamped_official", "student", 0, 1e-6)


def test_signal_options_name_what_changes_the_signal():
    def options(**cfg):
        return ADPA(ADPAConfig(**cfg)).signal_options("adpa_advantage")

    # The paper recipe (this file's ADPAConfig) makes a DPO teacher at the released teacher-DPO recipe's beta and lr.
    assert options() == {"reference": "teacher", "teacher_dpo": {"beta": 0.01, "lr": 5e-7}}
    variants = [options(), options(reference="student"), options(teacher_dpo_beta=0.1), options(teacher_dpo_lr=1e-6),
                options(teacher_dpo=False)]
    assert variants[3]["teacher_dpo"]["lr"] == 1e-6
    assert variants[4] == {"reference": "teacher", "teacher_dpo": None}
    assert len({stable_hash(v) for v in variants}) == 5
    # Loss-side settings share one cached signal; without a teacher-DPO stage its settings do not matter.
    assert options(advantage_mode="clamped_official", adpa_weight=2.0, sft_weight=1.0) == options()
    assert options(teacher_dpo=False, teacher_dpo_lr=1e-3) == options(teacher_dpo=False)


def test_declarations_and_registration():
    import methods  # noqa: F401
    from harness.registry import METHODS

    assert METHODS.get("adpa") is ADPA and METHODS.get("adpa_plus") is ADPAPlus
    assert ADPA.starts_from is None and ADPAPlus.starts_from == "dckd"
    for cls in (ADPA, ADPAPlus):
        assert cls.needs == ("adpa_advantage",) and cls.needs_shared_vocab and cls.Config is _ADPAConfig
