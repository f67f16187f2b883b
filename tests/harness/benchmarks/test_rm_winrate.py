"""Reward-model win rate: the statistics against hand arithmetic, the runner with a stub scorer, and
``RewardModel`` against a manual forward pass of a real (SmolLM2-based, freshly headed) sequence
classifier."""

from __future__ import annotations

import json
import math
import os
from types import SimpleNamespace

import pytest
import torch

from harness.benchmarks.rm_winrate import RewardModel, _reward_tensor, score_against_reference, win_rates
from harness.errors import BenchError

# ---------------------------------------------------------------- statistics


def test_win_rates_by_hand():
    rewards = [1.0, 2.0, 0.5, 3.0]
    ref = [0.0, 2.0, 1.5, 3.5]  # win, tie, loss, loss
    out = win_rates(rewards, ref)
    w = [1.0, 0.5, 0.0, 0.0]
    mean = sum(w) / 4
    se = 100 * math.sqrt(sum((x - mean) ** 2 for x in w) / 3) / math.sqrt(4)
    sig = [1 / (1 + math.exp(-(a - b))) for a, b in zip(rewards, ref)]
    smean = sum(sig) / 4
    sse = 100 * math.sqrt(sum((x - smean) ** 2 for x in sig) / 3) / math.sqrt(4)
    assert out["win_rate"] == 37.5
    assert out["win_rate_se"] == pytest.approx(se, rel=1e-12)
    assert out["win_rate_se"] == pytest.approx(23.9357, abs=1e-4)
    assert out["soft_win_rate"] == pytest.approx(100 * smean, rel=1e-12)
    assert out["soft_win_rate_se"] == pytest.approx(sse, rel=1e-12)
    assert (out["n"], out["n_wins"], out["n_ties"], out["n_losses"]) == (4, 1, 1, 2)
    assert out["mean_reward"] == pytest.approx(1.625)
    assert out["mean_reward_ref"] == pytest.approx(1.75)


def test_soft_win_rate_does_not_overflow_and_single_pair_has_no_se():
    out = win_rates([1000.0], [-1000.0])
    assert out["win_rate"] == 100.0 and out["soft_win_rate"] == 100.0
    assert out["win_rate_se"] is None and out["soft_win_rate_se"] is None
    assert win_rates([-1000.0], [1000.0])["soft_win_rate"] == 0.0


def test_bootstrap_is_seeded_and_covers_the_estimate():
    rng = torch.Generator().manual_seed(1)
    rewards = torch.randn(60, generator=rng).tolist()
    ref = (torch.randn(60, generator=rng) - 0.3).tolist()
    a, b, c = (win_rates(rewards, ref, seed=s) for s in (7, 7, 8))
    assert a["win_rate_ci95"] == b["win_rate_ci95"] and a["soft_win_rate_ci95"] == b["soft_win_rate_ci95"]
    assert a["win_rate_ci95"] != c["win_rate_ci95"]
    for key in ("win_rate", "soft_win_rate"):
        lo, hi = a[f"{key}_ci95"]
        assert lo < a[key] < hi
        # A 95% interval spans roughly +-2 standard errors.
        assert 2.5 < (hi - lo) / a[f"{key}_se"] < 5.5
    assert win_rates(rewards, ref, n_boot=0)["win_rate_ci95"] is None


@pytest.mark.parametrize("rewards, ref, match", [
    ([1.0, 2.0], [1.0], "2 candidate rewards but 1 reference"),
    ([], [], "at least one prompt"),
    ([1.0, 2.0, float("nan")], [0.0, 0.0, 0.0], "candidate reward at index 2 is nan"),
    ([1.0, 2.0], [0.0, float("-inf")], "reference reward at index 1 is -inf"),
])
def test_win_rates_errors(rewards, ref, match):
    with pytest.raises(BenchError, match=match):
        win_rates(rewards, ref)


# ---------------------------------------------------------------- runner with a stub scorer


def test_score_against_reference_with_stub_scorer():
    calls = []

    def scorer(pairs):
        calls.append(pairs)
        return [float(len(response)) for _, response in pairs]  # a maximally length-biased "RM"

    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(3)]
    candidates, references = ["long answer", "ab", "xyz"], ["short", "ab", "wxyz"]
    summary, rows = score_against_reference(prompts, candidates, references, scorer)
    assert calls == [list(zip(prompts, candidates)), list(zip(prompts, references))]
    assert summary["win_rate"] == 50.0
    assert (summary["n_wins"], summary["n_ties"], summary["n_losses"]) == (1, 1, 1)
    assert summary["mean_length"] == pytest.approx(16 / 3)
    assert summary["mean_length_ref"] == pytest.approx(11 / 3)
    assert rows[0] == {"i": 0, "reward": 11.0, "reward_ref": 5.0, "w": 1.0, "length": 11, "length_ref": 5}
    assert [r["w"] for r in rows] == [1.0, 0.5, 0.0]


def test_score_against_reference_errors():
    prompts = [[{"role": "user", "content": "q"}]]
    with pytest.raises(BenchError, match="1 prompts, 2 candidate"):
        score_against_reference(prompts, ["a", "b"], ["c"], lambda pairs: [0.0] * len(pairs))
    with pytest.raises(BenchError, match="returned 2 rewards for 1"):
        score_against_reference(prompts, ["a"], ["c"], lambda pairs: [0.0, 1.0])


def test_score_attribute_wins_over_logits():
    logits = torch.tensor([[1.0, 9.0], [2.0, 9.0]])
    assert _reward_tensor(SimpleNamespace(logits=logits)).tolist() == [1.0, 2.0]
    armo_like = SimpleNamespace(logits=logits, score=torch.tensor([[5.0], [6.0]]))
    assert _reward_tensor(armo_like).tolist() == [5.0, 6.0]


# ---------------------------------------------------------------- identity and load failures (no real model)


def test_identity_hashes_weight_contents(tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=0)
    model = LlamaForSequenceClassification(config)
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    first = RewardModel(str(tmp_path)).identity()
    assert first["kind"] == "reward_model" and first["model"] == str(tmp_path)
    assert "model.safetensors" in first["files"] and "config.json" in first["files"]

    # Same bytes with another mtime: same identity. One weight changed, same file size: another identity.
    os.utime(weights, (0, 0))
    assert RewardModel(str(tmp_path)).identity() == first
    with torch.no_grad():
        model.score.weight[0, 0] += 1.0
    model.save_pretrained(tmp_path)
    size = weights.stat().st_size
    changed = RewardModel(str(tmp_path)).identity()
    assert weights.stat().st_size == size and changed != first
    assert changed["files"]["config.json"] == first["files"]["config.json"]

    hub_id = "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2"
    assert RewardModel(hub_id).identity() == {"kind": "reward_model", "model": hub_id, "max_length": 4096}


def test_load_failures_name_the_source(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pairs = [([{"role": "user", "content": "q"}], "a")]
    missing = str(tmp_path / "no-such-rm")
    with pytest.raises(BenchError, match="no-such-rm.*local folder"):
        RewardModel(missing)(pairs)
    with pytest.raises(BenchError, match="nobody/no-such-reward-model.*HF_HUB_OFFLINE=1"):
        RewardModel("nobody/no-such-reward-model")(pairs)


# ---------------------------------------------------------------- a real model


@pytest.fixture(scope="module")
def smol_rm(tmp_path_factory):
    """SmolLM2-135M-Instruct with a fresh 1-output score head, saved as a reward model, plus copies that
    differ only in their pad-token settings (weights symlinked, so they cost no disk or time).

    Only its first 2 of 30 decoder layers are kept: the full model takes seconds per batch on a 2-core CPU,
    and the scoring path (template, tokenizer, padding, pooling) is the same.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from harness.models import drop_decoder_layers, materialise
    from harness.registry import PAIRS

    folder = materialise(PAIRS.get("smollm2-135m").teacher)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, dtype=torch.float32)
    model = drop_decoder_layers(model, 2, model.config.num_hidden_layers).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    root = tmp_path_factory.mktemp("smol-rm")
    base = root / "base"
    model.save_pretrained(base, safe_serialization=True)
    tokenizer.save_pretrained(base)

    def variant(name, config_pad, tokenizer_pad):
        path = root / name
        path.mkdir()
        (path / "model.safetensors").symlink_to(base / "model.safetensors")
        config = json.loads((base / "config.json").read_text())
        config["pad_token_id"] = config_pad
        (path / "config.json").write_text(json.dumps(config))
        tok = AutoTokenizer.from_pretrained(base)
        tok.pad_token = tokenizer_pad
        tok.save_pretrained(path)
        return str(path)

    folders = {
        "as saved": str(base),
        # No pad anywhere: RewardModel must fall back to eos and tell the model about it.
        "no pad": variant("nopad", None, None),
        # Config and tokenizer disagree: padding with the tokenizer's id would be read as real tokens.
        "mismatched pad": variant("mismatch", 0, "<|im_end|>"),
    }
    return SimpleNamespace(model=model, tokenizer=tokenizer, folders=folders,
                           expected=manual_rewards(model, tokenizer))


PAIRS_FOR_RM = [
    ([{"role": "user", "content": "What is the capital of France?"}], "Paris."),
    ([{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a prime number."}],
     "Seven is a prime number, because its only divisors are one and itself."),
    ([{"role": "user", "content": "Say hi."}], "Hi! How can I help you today? Happy to answer questions."),
    ([{"role": "user", "content": "2+2?"}], "4"),
    ([{"role": "user", "content": "Write a haiku about rain."}],
     "Soft rain on the roof\nwhispers to the sleeping town\npuddles hold the sky"),
]


def manual_rewards(model, tokenizer):
    """One example at a time, no padding, token ids straight from the chat template."""
    out = []
    with torch.inference_mode():
        for messages, response in PAIRS_FOR_RM:
            enc = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": response}],
                                                tokenize=True, return_dict=True, return_tensors="pt")
            out.append(model(**enc).logits[0, 0].item())
    return out


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["as saved", "no pad", "mismatched pad"])
def test_reward_model_matches_manual_forward_and_ignores_padding(smol_rm, variant):
    expected = smol_rm.expected
    assert len(set(expected)) == len(expected)  # a degenerate head would hide ordering bugs
    one = RewardModel(smol_rm.folders[variant], device="cpu", batch_size=1)(PAIRS_FOR_RM)
    four = RewardModel(smol_rm.folders[variant], device="cpu", batch_size=4)(PAIRS_FOR_RM)
    assert one == pytest.approx(expected, abs=1e-4)
    assert four == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
def test_reward_model_end_to_end_win_rate(smol_rm):
    rm = RewardModel(smol_rm.folders["as saved"], device="cpu", batch_size=2)
    prompts = [messages for messages, _ in PAIRS_FOR_RM]
    candidates = [response for _, response in PAIRS_FOR_RM]
    references = candidates[1:] + candidates[:1]
    summary, rows = score_against_reference(prompts, candidates, references, rm)
    expected = smol_rm.expected
    assert [r["reward"] for r in rows] == pytest.approx(expected, abs=1e-4)
    wins = sum(r["reward"] > r["reward_ref"] for r in rows)
    assert summary["n_wins"] == wins and summary["win_rate"] == pytest.approx(100 * wins / 5)


@pytest.mark.slow
def test_reward_model_without_chat_template(smol_rm, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_rm.folders["as saved"])
    tok.chat_template = None
    tok.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(BenchError, match="has no chat template"):
        RewardModel(str(tmp_path))(PAIRS_FOR_RM)
