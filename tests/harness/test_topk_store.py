"""The compact top-k store (harness/topk_store.py): exact round trips in float32 and the stated rounding of the
16-bit value dtypes, shard boundaries, id dtypes, the byte formula against the files on disk, memory mapping,
damaged stores, a real teacher forward checked against torch.topk, and kd trained from a cached store with no
live teacher."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from harness.batch import collate
from harness.data import Encoded
from harness.errors import BenchError
from harness.signals import collate_topk, compute_topk, load_topk
from harness.topk_store import (
    INDEX,
    NPY_HEADER_BYTES,
    VALUE_TOLERANCE,
    TopkReader,
    TopkWriter,
    bytes_per_token,
    id_dtype,
    shard_overhead_bytes,
)

LENGTHS = [3, 1, 4, 2, 5, 2, 3]  # response positions of each hand-made example
K = 4


def hand_made(vocab=49152, lengths=LENGTHS, k=K, seed=0):
    """Per example: ids [R, k] spread over the whole vocabulary (its last id included), log-probs [R, k] from
    about -30 to 0 and rest [R]."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for r in lengths:
        ids = torch.randint(0, vocab, (r, k), generator=g)
        if r:
            ids[0, 0] = vocab - 1
        logps = -torch.rand(r, k, generator=g) * 30
        rest = -torch.rand(r, generator=g) * 5
        out.append((ids, logps, rest))
    return out


def write(folder, examples, vocab=49152, k=K, value_dtype="float32", per_shard=3) -> TopkReader:
    with TopkWriter(folder, k, vocab, value_dtype, per_shard) as w:
        for ex in examples:
            w.add(*ex)
    return TopkReader(folder)


# ------------------------------------------------------------------------------------------------ round trips


def test_float32_round_trip_is_exact_across_shards(tmp_path):
    examples = hand_made()
    reader = write(tmp_path / "s", examples, per_shard=3)
    assert len(reader) == 7 and reader.positions == sum(LENGTHS)
    # 7 examples, 3 per shard: [0, 3), [3, 6), [6, 7); no example split between two shards
    assert [s["examples"] for s in reader.shards] == [[0, 3], [3, 6], [6, 7]]
    assert [s["positions"] for s in reader.shards] == [3 + 1 + 4, 2 + 5 + 2, 3]
    for i, (ids, logps, rest) in enumerate(examples):
        got = reader[i]
        assert got["ids"].dtype == torch.int64 and got["logps"].dtype == torch.float32
        assert torch.equal(got["ids"], ids)
        assert torch.equal(got["logps"], logps)
        assert torch.equal(got["rest"], rest)


@pytest.mark.parametrize("value_dtype", ["float16", "bfloat16"])
def test_16_bit_values_round_within_the_stated_tolerance_and_rest_stays_exact(tmp_path, value_dtype):
    examples = hand_made()
    reader = write(tmp_path / "s", examples, value_dtype=value_dtype)
    tol = VALUE_TOLERANCE[value_dtype]
    worst = 0.0
    for i, (ids, logps, rest) in enumerate(examples):
        got = reader[i]
        assert torch.equal(got["ids"], ids)
        assert torch.equal(got["rest"], rest)
        err = ((got["logps"] - logps).abs() / logps.abs()).max().item()
        worst = max(worst, err)
        # round to nearest even, as torch's own cast
        assert torch.equal(got["logps"], logps.to(getattr(torch, value_dtype)).float())
    assert 0 < worst <= tol  # rounded, and no further than the unit roundoff


def test_zero_length_example_and_one_example_per_shard(tmp_path):
    examples = hand_made(lengths=[2, 0, 1])
    reader = write(tmp_path / "s", examples, per_shard=1)
    assert [s["examples"] for s in reader.shards] == [[0, 1], [1, 2], [2, 3]]
    assert reader[1]["ids"].shape == (0, K)
    assert torch.equal(reader[2]["logps"], examples[2][1])


# ------------------------------------------------------------------------------------------------ dtypes and sizes


def test_id_dtype_is_the_smallest_that_holds_the_vocabulary(tmp_path):
    assert id_dtype(49152) == np.uint16
    assert id_dtype(65536) == np.uint16  # ids 0..65535
    assert id_dtype(65537) == np.uint32
    assert id_dtype(70000) == np.uint32
    examples = hand_made(vocab=70000)
    reader = write(tmp_path / "wide", examples, vocab=70000)
    on_disk = np.load(tmp_path / "wide" / "shard-00000" / "ids.npy")
    assert on_disk.dtype == np.uint32
    assert torch.equal(reader[0]["ids"], examples[0][0]) and int(reader[0]["ids"].max()) >= 65536
    narrow = write(tmp_path / "narrow", hand_made(), vocab=49152)
    assert np.load(tmp_path / "narrow" / "shard-00000" / "ids.npy").dtype == np.uint16
    assert int(narrow[0]["ids"][0, 0]) == 49151


def test_ids_outside_the_vocabulary_are_refused(tmp_path):
    with pytest.raises(BenchError, match=r"\[0, 100\)"):
        with TopkWriter(tmp_path / "s", 2, 100) as w:
            w.add(torch.tensor([[3, 100]]), torch.zeros(1, 2), torch.zeros(1))


def test_bytes_per_token_by_hand():
    assert bytes_per_token(20, 49152, "float16") == 2 * 20 + 2 * 20 + 4 == 84
    assert bytes_per_token(20, 49152, "bfloat16") == 84
    assert bytes_per_token(20, 49152, "float32") == 2 * 20 + 4 * 20 + 4 == 124
    assert bytes_per_token(50, 49152, "float32") == 2 * 50 + 4 * 50 + 4 == 304
    assert bytes_per_token(50, 49152, "float16") == 2 * 50 + 2 * 50 + 4 == 204
    assert bytes_per_token(20, 70000, "float32") == 4 * 20 + 4 * 20 + 4 == 164
    with pytest.raises(BenchError, match="float32, float16, bfloat16"):
        bytes_per_token(20, 49152, "int8")


@pytest.mark.parametrize(("k", "value_dtype"), [(20, "float32"), (20, "float16"), (50, "bfloat16")])
def test_disk_bytes_are_the_formula_plus_the_stated_shard_overhead(tmp_path, k, value_dtype):
    examples = hand_made(k=k)
    reader = write(tmp_path / "s", examples, k=k, value_dtype=value_dtype, per_shard=3)
    on_disk = sum(p.stat().st_size for p in (tmp_path / "s").rglob("*.npy"))
    assert reader.disk_bytes() == on_disk
    # per shard: four npy headers of NPY_HEADER_BYTES and int64 offsets, one per example + 1
    assert shard_overhead_bytes(3) == 4 * 128 + 8 * 4
    overhead = shard_overhead_bytes(3) + shard_overhead_bytes(3) + shard_overhead_bytes(1)
    assert on_disk == sum(LENGTHS) * bytes_per_token(k, 49152, value_dtype) + overhead
    assert reader.bytes_per_position() == pytest.approx(on_disk / sum(LENGTHS))
    assert NPY_HEADER_BYTES == 128


# ------------------------------------------------------------------------------------------------ memory mapping


def test_reader_maps_the_shards_instead_of_reading_them(tmp_path):
    reader = write(tmp_path / "s", hand_made())
    ids, logps, rest = reader.raw(4)
    for arr in (ids, logps, rest):
        assert isinstance(arr, np.memmap)
        assert not arr.flags.writeable
    shard = reader.shard(1)
    assert isinstance(shard.ids, np.memmap) and isinstance(shard.logps, np.memmap)
    # a copy, not a view of the map: the collated tensor may be written to
    assert reader[4]["ids"].numpy().base is not ids


def test_reader_keeps_at_most_max_open_shards_mapped(tmp_path):
    write(tmp_path / "s", hand_made(), per_shard=1)
    reader = TopkReader(tmp_path / "s", max_open_shards=2)
    expected = hand_made()
    for i in range(7):
        assert torch.equal(reader[i]["rest"], expected[i][2])
        assert len(reader._open) <= 2
    assert list(reader._open) == [5, 6]


# ------------------------------------------------------------------------------------------------ damage


def test_a_missing_shard_file_is_named_at_open(tmp_path):
    write(tmp_path / "s", hand_made())
    (tmp_path / "s" / "shard-00001" / "logps.npy").unlink()
    with pytest.raises(BenchError, match=r"shard-00001/logps.npy is missing.*Delete"):
        TopkReader(tmp_path / "s")


def test_a_truncated_shard_file_is_named_at_open(tmp_path):
    write(tmp_path / "s", hand_made())
    path = tmp_path / "s" / "shard-00002" / "ids.npy"
    os.truncate(path, path.stat().st_size - 8)
    with pytest.raises(BenchError, match=r"shard-00002/ids.npy has \d+ bytes, the index says \d+.*damaged"):
        TopkReader(tmp_path / "s")


def test_a_garbled_header_is_named_on_first_use(tmp_path):
    write(tmp_path / "s", hand_made())
    path = tmp_path / "s" / "shard-00000" / "rest.npy"
    data = bytearray(path.read_bytes())
    data[:6] = b"NOTNPY"
    path.write_bytes(bytes(data))
    reader = TopkReader(tmp_path / "s")  # same size: only reading it tells
    assert torch.equal(reader[4]["rest"], hand_made()[4][2])  # other shards still read
    with pytest.raises(BenchError, match=r"shard-00000/rest.npy cannot be read"):
        reader[0]


def test_a_store_without_its_index_is_incomplete(tmp_path):
    write(tmp_path / "s", hand_made())
    (tmp_path / "s" / INDEX).unlink()
    with pytest.raises(BenchError, match="no complete top-k store"):
        TopkReader(tmp_path / "s")


def test_an_index_of_another_format_version_is_refused(tmp_path):
    write(tmp_path / "s", hand_made())
    index = json.loads((tmp_path / "s" / INDEX).read_text())
    (tmp_path / "s" / INDEX).write_text(json.dumps({**index, "version": 99}))
    with pytest.raises(BenchError, match="not a version-1 top-k store"):
        TopkReader(tmp_path / "s")


def test_an_example_outside_the_store_is_refused(tmp_path):
    reader = write(tmp_path / "s", hand_made())
    with pytest.raises(BenchError, match="outside the cached top-k signal's 7 examples"):
        reader[7]


def test_a_failed_writer_leaves_no_index(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with TopkWriter(tmp_path / "s", K, 100, "float32", 2) as w:
            w.add(torch.zeros(1, K, dtype=torch.long), torch.zeros(1, K), torch.zeros(1))
            raise RuntimeError("boom")
    assert not (tmp_path / "s" / INDEX).exists()


# ------------------------------------------------------------------------------------------------ real forward

# Prompts and responses of different lengths, so the batch is padded; ids clear of the pad id 0.
ROWS = [Encoded([5, 6, 7, 8], [9, 10, 11], [12, 13]), Encoded([14, 15], [16, 17, 18, 19, 20], [21]),
        Encoded([22, 23, 24], [25], [26, 27, 28]), Encoded([29], [30, 31], [32, 33, 34, 35])]


def direct_topk(model, row: Encoded, side: str, k: int, vocab_limit: int):
    """The top-k computed on one unpadded sequence, straight from the model's log-softmax."""
    response = getattr(row, f"{side}_ids")
    seq = torch.tensor([row.prompt_ids + response])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=seq).logits[0].float(), dim=-1)
    at = logp[len(row.prompt_ids) - 1: len(row.prompt_ids) - 1 + len(response)]  # the positions predicting it
    values, ids = torch.topk(at[:, :vocab_limit], k, dim=-1)
    outside = at.clone()
    outside.scatter_(-1, ids, float("-inf"))
    return ids, values, torch.logsumexp(outside, dim=-1)


@pytest.mark.parametrize(("side", "vocab_limit"), [("chosen", 64), ("rejected", 60)])
def test_compute_stores_the_models_own_topk(tmp_path, tiny_model, side, vocab_limit):
    reader, tokens = compute_topk(tiny_model, ROWS, side, 5, 0, vocab_limit, "t", out=tmp_path / "s",
                                  examples_per_shard=3)
    assert isinstance(reader, TopkReader) and len(reader) == 4 and len(reader.shards) == 2
    assert tokens == sum(len(r.prompt_ids) + len(getattr(r, f"{side}_ids")) for r in ROWS)
    for i, row in enumerate(ROWS):
        ids, values, rest = direct_topk(tiny_model, row, side, 5, vocab_limit)
        got = reader[i]
        assert torch.equal(got["ids"], ids)
        assert int(got["ids"].max()) < vocab_limit
        torch.testing.assert_close(got["logps"], values, atol=1e-5, rtol=0)
        torch.testing.assert_close(got["rest"], rest, atol=1e-5, rtol=0)
        # the top-k and the rest bucket make up the whole distribution
        total = torch.logsumexp(torch.cat([got["logps"], got["rest"].unsqueeze(-1)], -1), -1)
        torch.testing.assert_close(total, torch.zeros_like(total), atol=1e-5, rtol=0)


def test_store_collates_exactly_as_the_in_memory_signal(tmp_path, tiny_model):
    flat, _ = compute_topk(tiny_model, ROWS, "chosen", 5, 0, 64, "t")
    reader, _ = compute_topk(tiny_model, ROWS, "chosen", 5, 0, 64, "t", out=tmp_path / "s", examples_per_shard=2)
    index = [3, 0, 2]  # shards visited out of order
    batch = collate([ROWS[i] for i in index], index, pad_id=0)
    a, b = collate_topk(flat, index, batch.chosen), collate_topk(load_topk(tmp_path / "s"), index, batch.chosen)
    assert set(a) == set(b) == {"ids", "logps", "rest"}
    for f in a:
        assert a[f].dtype == b[f].dtype and torch.equal(a[f], b[f]), f
    assert b["ids"].dtype == torch.int64 and b["ids"].shape == (3, batch.chosen.input_ids.shape[1] - 1, 5)


def test_store_refuses_a_batch_tokenised_differently(tmp_path, tiny_model):
    reader, _ = compute_topk(tiny_model, ROWS, "chosen", 5, 0, 64, "t", out=tmp_path / "s")
    other = [Encoded(r.prompt_ids, r.chosen_ids + [40], r.rejected_ids) for r in ROWS]
    batch = collate(other[:2], [0, 1], pad_id=0)
    with pytest.raises(BenchError, match="example 0 covers 3 tokens but the batch has 4"):
        collate_topk(reader, [0, 1], batch.chosen)


def test_compute_in_float16_stores_the_rounded_float32_values(tmp_path, tiny_model):
    exact, _ = compute_topk(tiny_model, ROWS, "chosen", 5, 0, 64, "t", out=tmp_path / "a")
    half, _ = compute_topk(tiny_model, ROWS, "chosen", 5, 0, 64, "t", out=tmp_path / "b", value_dtype="float16")
    for i in range(len(ROWS)):
        assert torch.equal(half[i]["ids"], exact[i]["ids"])
        assert torch.equal(half[i]["rest"], exact[i]["rest"])
        assert torch.equal(half[i]["logps"], exact[i]["logps"].half().float())
    assert half.bytes_per_position() < exact.bytes_per_position()


def test_in_memory_compute_refuses_a_16_bit_dtype(tiny_model):
    with pytest.raises(BenchError, match="pass out="):
        compute_topk(tiny_model, ROWS, "chosen", 5, 0, 64, "t", value_dtype="float16")


# ------------------------------------------------------------------------------------------------ budget


def test_budget_validates_the_topk_dtype():
    from harness.budgets import get_budget

    tiny = get_budget("tiny")
    assert tiny.teacher_topk_dtype == "float32"
    assert tiny.with_overrides(teacher_topk_dtype="bfloat16").to_dict()["teacher_topk_dtype"] == "bfloat16"
    with pytest.raises(BenchError, match="teacher_topk_dtype must be float32, float16 or bfloat16, got 'fp8'"):
        tiny.with_overrides(teacher_topk_dtype="fp8")


# ------------------------------------------------------------------------------------------------ pipeline


def tiny_pair(folder, tokenizer):
    """A teacher and a student: random 1-layer Llamas with the SmolLM2 tokenizer (a 49152-token vocabulary)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from harness.models import ModelSpec
    from harness.pairs import Pair

    specs = {}
    for name, seed in (("teacher", 1), ("student", 2)):
        torch.manual_seed(seed)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                             tie_word_embeddings=True)
        LlamaForCausalLM(config).save_pretrained(folder / name, safe_serialization=True)
        tokenizer.save_pretrained(folder / name)
        specs[name] = ModelSpec(str(folder / name))
    return Pair(name="tiny-random", description="test", teacher=specs["teacher"], student=specs["student"],
                shared_vocab=True)


def test_kd_trains_from_the_cached_store_without_a_live_teacher(tmp_path, shared_dir, smollm2_tokenizer):
    from harness.budgets import get_budget
    from harness.pipeline import Run, RunOptions
    from methods.kd import KD

    pair = tiny_pair(tmp_path / "models", smollm2_tokenizer)
    identity = pair.teacher.identity()
    budget = get_budget("tiny").with_overrides(teacher_topk_dtype="float16")
    opts = RunOptions(methods=["kd"], pair=pair, budget=budget, results_dir=tmp_path / "results",
                      cache_dir=tmp_path / "cache", data_dir=shared_dir)
    first = Run(opts)
    first.prepare_data()
    reader, info = first.signal("teacher_topk:chosen", "train", KD())
    assert first._teacher is not None  # computing it needed the teacher
    assert info["bytes_per_position"] == reader.disk_bytes() / reader.positions
    per_shard = sum(shard_overhead_bytes(s["examples"][1] - s["examples"][0]) for s in reader.shards)
    assert reader.disk_bytes() == reader.positions * bytes_per_token(20, 49152, "float16") + per_shard
    assert len(reader) == 8 and reader.value_dtype == "float16"
    # the 16-bit store is its own stage: float32 would be computed afresh
    exact = Run(RunOptions(methods=["kd"], pair=pair, budget=get_budget("tiny"), results_dir=opts.results_dir,
                           cache_dir=opts.cache_dir, data_dir=shared_dir))
    exact.prepare_data()
    assert exact.data_key == first.data_key
    assert exact.signal_key("teacher_topk:chosen", "train", KD()) != info["stage_key"]

    # Wreck the teacher's weights, keeping their size and time (its identity, so the signal's key, stays the
    # same): from here on loading the teacher fails.
    weights = tmp_path / "models" / "teacher" / "model.safetensors"
    stat = weights.stat()
    weights.write_bytes(b"\0" * stat.st_size)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert pair.teacher.identity() == identity
    with pytest.raises(Exception, match="header"):  # safetensors' own error: not one bench words itself
        Run(opts).teacher()
    second = Run(opts)
    second.prepare_data()
    stage = second.train_stage("kd", KD())
    assert second._teacher is None
    train_info = json.loads((stage["folder"] / "train.json").read_text())
    curve = train_info["loss_curve"]
    assert [row["step"] for row in curve] == [1, 2]
    assert all(np.isfinite(row["loss"]) and row["loss"] > 0 for row in curve)
    assert train_info["signals"]["teacher_topk:chosen"]["stage_key"] == info["stage_key"]
    assert train_info["signals"]["teacher_topk:chosen"]["bytes_per_position"] == info["bytes_per_position"]
