"""harness/generation.py on the conftest's random tiny Llama: generate_ids (left padding, order, seeding, eos),
resample (on-policy answers to the same prompts, cut to max_seq_len, generated tokens counted), the HF backend,
the resumable journal (replay, a killed run resumed), and backend selection with vLLM's sampling parameters (vLLM
itself needs a GPU and is not installed here)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaForCausalLM

from harness.batch import pad_sequences, prompts_of
from harness.cache import StageCache
from harness.errors import BenchError
from harness.generation import (
    BACKEND_ENV,
    HFBackend,
    VLLMBackend,
    backend_key,
    backend_preference,
    choose_engine,
    decide_engine,
    generate_ids,
    resample,
    select_backend,
    vllm_installed,
    vllm_sampling_kwargs,
)
from harness.journal import resumable
from harness.method import Runtime
from tests.methods.helpers import single_thread

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
EOS = 63


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def gen(model, prompts=PROMPTS, n=6, **kw):
    kw.setdefault("eos_id", EOS)
    return generate_ids(model, prompts, n, pad_id=0, desc=None, **kw)


def test_greedy_answers_do_not_depend_on_batching_or_padding(tiny_model):
    together = gen(tiny_model, batch_size=8)
    alone = [gen(tiny_model, [p], batch_size=1)[0] for p in PROMPTS]
    assert together == alone  # left padding and the length sort are invisible to the caller
    assert all(len(a) == 6 for a in together)  # no eos in these: exactly max_new_tokens
    assert len({tuple(a) for a in together}) == 3


def test_sampling_is_seeded(tiny_model):
    a = gen(tiny_model, do_sample=True, seed=3)
    assert a == gen(tiny_model, do_sample=True, seed=3)
    assert a != gen(tiny_model, do_sample=True, seed=4)
    assert a != gen(tiny_model)  # sampled, not greedy


def test_answers_stop_at_eos_and_end_with_it(tiny_model):
    free = gen(tiny_model, eos_id=EOS)
    eos = free[1][2]  # a token the greedy answer to prompt 1 produces third
    cut = gen(tiny_model, eos_id=eos)
    for full, short in zip(free, cut):
        expected = full[: full.index(eos) + 1] if eos in full else full
        assert short == expected
    assert cut[1] == free[1][:3]


def test_generate_ids_restores_training_mode(tiny_model):
    tiny_model.train()
    gen(tiny_model, n=2)
    assert tiny_model.training
    tiny_model.eval()
    gen(tiny_model, n=2)
    assert not tiny_model.training


def test_resample_keeps_the_prompts_and_counts_generated_tokens(tiny_model):
    seqs = pad_sequences(PROMPTS, [[1], [2, 3], [4]], pad_id=0)
    runtime = Runtime(pad_id=0, eos_id=EOS, max_new_tokens=5, max_seq_len=64)
    new, generated = resample(tiny_model, seqs, runtime, temperature=1.0, seed=7)
    assert prompts_of(new) == PROMPTS
    answers = [new.labels[b][new.labels[b] != -100].tolist() for b in range(3)]
    expected = gen(tiny_model, n=5, batch_size=3, do_sample=True, temperature=1.0, seed=7)
    assert answers == expected
    assert generated == sum(len(a) for a in expected) == new.n_response_tokens


def test_resample_cuts_answers_to_max_seq_len(tiny_model):
    seqs = pad_sequences(PROMPTS, [[1], [2], [3]], pad_id=0)
    runtime = Runtime(pad_id=0, eos_id=EOS, max_new_tokens=6, max_seq_len=7)
    new, generated = resample(tiny_model, seqs, runtime, temperature=1.0, seed=7)
    assert prompts_of(new) == PROMPTS
    lengths = new.attention_mask.sum(-1).tolist()
    assert all(n <= 7 for n in lengths)
    # Every prompt leaves room for at least one token; the uncut answers are 6 tokens long.
    full = gen(tiny_model, n=6, batch_size=3, do_sample=True, temperature=1.0, seed=7)
    assert [n - len(p) for n, p in zip(lengths, PROMPTS)] == [min(len(f), 7 - len(p)) for f, p in zip(full, PROMPTS)]
    assert generated == sum(len(f) for f in full)  # generation done, not tokens kept


def test_sampling_leaves_the_global_random_state_alone(tiny_model):
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    generate_ids(tiny_model, [[1, 2, 3]], 4, pad_id=0, eos_id=63, do_sample=True, seed=7, desc=None)
    assert torch.equal(torch.rand(3), expected)


# ---------------------------------------------------------------- the HF backend


def test_hf_backend_batches_give_the_answers_one_prompt_at_a_time_gives(tiny_model):
    prompts = [[5, 6, 7, 8, 9, 10, 11], [10, 11], [12, 13, 14], [1], [30, 31, 32, 33]]
    batched = HFBackend(tiny_model, batch_size=3).generate(prompts, max_new_tokens=5, pad_id=0, eos_id=EOS)
    alone = [HFBackend(tiny_model, batch_size=1).generate([p], max_new_tokens=5, pad_id=0, eos_id=EOS)[0]
             for p in prompts]
    assert batched == alone  # prompts of 1 to 7 tokens share batches: left padding does not show
    assert len({tuple(a) for a in batched}) == len(prompts)
    assert generate_ids(HFBackend(tiny_model, batch_size=3), prompts, 5, pad_id=0, eos_id=EOS, desc=None) == batched
    assert HFBackend(tiny_model).identity() == {"engine": "hf"}


# ---------------------------------------------------------------- the resumable journal


class CountingLlama(LlamaForCausalLM):
    """A real model that counts its generate() calls (one per batch)."""

    def __init__(self, config):
        super().__init__(config)
        self.generate_calls = 0

    def generate(self, *args, **kwargs):
        self.generate_calls += 1
        return super().generate(*args, **kwargs)


@pytest.fixture()
def counting(tiny_model):
    model = CountingLlama(tiny_model.config)
    model.load_state_dict(tiny_model.state_dict())
    model.eval()
    return model


SIX = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14], [20, 21, 22, 23], [40], [50, 51, 52]]
DECODINGS = {"greedy": {"batch_size": 1}, "sampled": {"batch_size": 2, "do_sample": True, "seed": 11}}


def journal_lines(folder):
    return (folder / "generation.jsonl").read_text().splitlines()


@pytest.mark.parametrize("decoding", DECODINGS)
def test_a_journalled_run_is_replayed_without_generating(counting, tmp_path, decoding):
    kw = DECODINGS[decoding]
    plain = gen(counting, SIX, **kw)
    batches = counting.generate_calls
    with resumable(tmp_path) as journal:
        first = gen(counting, SIX, **kw)
    assert first == plain and counting.generate_calls == 2 * batches
    assert len(journal_lines(tmp_path)) == batches
    with resumable(tmp_path) as journal:
        again = gen(counting, SIX, **kw)
    assert again == plain
    assert counting.generate_calls == 2 * batches  # no model call
    assert journal.reused == batches


@pytest.mark.parametrize("decoding", DECODINGS)
def test_a_killed_run_generates_only_the_missing_batches(counting, tmp_path, decoding):
    kw = DECODINGS[decoding]
    folder = StageCache(tmp_path).partial("signals", "k")  # the lead's folder; the journal creates it
    with resumable(folder):
        full = gen(counting, SIX, **kw)
    batches = counting.generate_calls
    assert batches >= 3
    lines = journal_lines(folder)
    # Killed while writing the second batch's line: the first batch and half a line are on disk.
    (folder / "generation.jsonl").write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    counting.generate_calls = 0
    with resumable(folder) as journal:
        resumed = gen(counting, SIX, **kw)
    assert resumed == full  # per-batch seeds (seed + start) make a resumed sample the same sample
    assert counting.generate_calls == batches - 1 and journal.reused == 1
    rows = [json.loads(line) for line in journal_lines(folder)]  # the half line is gone, not glued to the next
    assert len(rows) == batches and sorted(r["key"] for r in rows) == sorted(json.loads(x)["key"] for x in lines)


def test_each_batch_is_seeded_with_seed_plus_its_start(tiny_model):
    # The journal replays batch by batch, so a batch's sample may depend on nothing outside it.
    whole = gen(tiny_model, SIX, batch_size=2, do_sample=True, seed=11)
    order = sorted(range(len(SIX)), key=lambda i: len(SIX[i]))
    for start in (0, 2, 4):
        idx = order[start:start + 2]
        alone = gen(tiny_model, [SIX[i] for i in idx], batch_size=2, do_sample=True, seed=11 + start)
        assert alone == [whole[i] for i in idx]


def test_the_journal_key_names_every_decoding_setting(counting, tmp_path):
    with resumable(tmp_path):
        gen(counting, SIX, batch_size=6, do_sample=True, seed=1)
        counting.generate_calls = 0
        gen(counting, SIX, batch_size=6, do_sample=True, seed=1)
        assert counting.generate_calls == 0
        for change in ({"seed": 2}, {"n": 5}, {"temperature": 0.5}, {"top_p": 0.9}, {"eos_id": 62},
                       {"do_sample": False}, {"batch_size": 3}):
            counting.generate_calls = 0
            gen(counting, SIX, **{"batch_size": 6, "do_sample": True, "seed": 1, **change})
            assert counting.generate_calls > 0, change
        counting.generate_calls = 0
        gen(counting, SIX[:5], batch_size=6, do_sample=True, seed=1)
        assert counting.generate_calls == 1  # other prompts


def test_nothing_is_journalled_outside_resumable(tiny_model, tmp_path):
    with resumable(tmp_path):
        gen(tiny_model, n=3)
    before = journal_lines(tmp_path)
    gen(tiny_model, n=4)
    assert journal_lines(tmp_path) == before
    assert list(tmp_path.iterdir()) == [tmp_path / "generation.jsonl"]


def test_on_policy_resampling_is_never_journalled(tiny_model, tmp_path):
    seqs = pad_sequences(PROMPTS, [[1], [2, 3], [4]], pad_id=0)
    runtime = Runtime(pad_id=0, eos_id=EOS, max_new_tokens=5, max_seq_len=64)
    with resumable(tmp_path):
        resample(tiny_model, seqs, runtime, temperature=1.0, seed=7)
        gen(tiny_model, n=2)  # the journal is still active after it
    assert len(journal_lines(tmp_path)) == 1


# ---------------------------------------------------------------- choosing a backend


def test_hf_is_always_hf(tiny_model, tmp_path):
    backend = select_backend("hf", model=tiny_model, model_path=tmp_path)
    assert isinstance(backend, HFBackend) and backend.model is tiny_model
    assert backend_key(backend) == {} and backend_key("hf") == {}


def test_a_model_loader_is_called_only_for_hf(tiny_model):
    loads = []
    backend = select_backend("hf", model=lambda: loads.append(1) or tiny_model)
    assert backend.model is tiny_model and loads == [1]


@pytest.mark.skipif(vllm_installed(), reason="checks the message given where vLLM is missing")
def test_asking_for_vllm_without_it_says_how_to_install_it(tmp_path, monkeypatch):
    with pytest.raises(BenchError, match=r"pip install 'bench\[vllm\]'"):
        select_backend("vllm", model_path=tmp_path)
    monkeypatch.setenv(BACKEND_ENV, "vllm")
    with pytest.raises(BenchError, match=r"pip install 'bench\[vllm\]'"):
        select_backend(model_path=tmp_path)
    with pytest.raises(BenchError, match=r"pip install 'bench\[vllm\]'"):
        VLLMBackend(tmp_path)


@pytest.mark.skipif(torch.cuda.is_available() and vllm_installed(), reason="auto picks vLLM on a GPU with vLLM")
def test_auto_on_this_machine_is_hf(tiny_model, tmp_path, monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    assert backend_preference() == "auto"
    assert isinstance(select_backend(model=tiny_model, model_path=tmp_path), HFBackend)
    assert isinstance(select_backend("auto", model=tiny_model, model_path=tmp_path), HFBackend)
    assert backend_key(choose_engine(has_model_path=True)) == {}  # so stage keys are what they were


@pytest.mark.parametrize("value", ["vlm", "transformers", ""])
def test_an_unknown_backend_in_the_environment_is_a_clear_error(tiny_model, monkeypatch, value):
    monkeypatch.setenv(BACKEND_ENV, value)
    with pytest.raises(BenchError, match=r"BENCH_GENERATION_BACKEND=.* auto .* hf or vllm"):
        select_backend(model=tiny_model)


def test_the_environment_picks_the_backend(tiny_model, monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, " HF ")
    assert backend_preference() == "hf"
    assert isinstance(select_backend(model=tiny_model), HFBackend)


@pytest.mark.parametrize(("preference", "cuda", "vllm", "path", "engine"), [
    ("auto", True, True, True, "vllm"),
    ("auto", False, True, True, "hf"),   # no GPU
    ("auto", True, False, True, "hf"),   # vLLM not installed
    ("auto", True, True, False, "hf"),   # a model in memory only
    ("hf", True, True, True, "hf"),
    ("vllm", True, True, True, "vllm"),
    ("vllm", False, True, True, "vllm"),  # asked for: vLLM itself says what it lacks
])
def test_which_engine_is_chosen(preference, cuda, vllm, path, engine):
    assert decide_engine(preference, cuda=cuda, vllm_present=vllm, has_model_path=path) == engine


def test_vllm_needs_a_model_folder():
    with pytest.raises(BenchError, match="loads models from a folder"):
        decide_engine("vllm", cuda=True, vllm_present=True, has_model_path=False)


def test_vllm_enters_stage_keys():
    key = backend_key("vllm")
    assert key["backend"]["engine"] == "vllm" and key["backend"]["dtype"] == "auto"


def test_greedy_decoding_as_vllm_sampling_params():
    assert vllm_sampling_kwargs(max_new_tokens=6, eos_id=63, do_sample=False, temperature=0.7, top_p=0.9,
                                seed=5) == {"max_tokens": 6, "temperature": 0.0, "stop_token_ids": [63],
                                            "detokenize": False}


def test_sampling_as_vllm_sampling_params():
    assert vllm_sampling_kwargs(max_new_tokens=128, eos_id=2, do_sample=True, temperature=0.7, top_p=0.95,
                                seed=5) == {"max_tokens": 128, "temperature": 0.7, "top_p": 0.95, "seed": 5,
                                            "stop_token_ids": [2], "detokenize": False}
