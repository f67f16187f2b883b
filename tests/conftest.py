"""Shared fixtures. Tests read real data from ../shared (or $BENCH_SHARED) and never touch the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("BENCH_SHARED", ROOT.parent / "shared")).resolve()

# Converted models (de-quantised teacher, pruned student) are reused across test sessions on one machine.
os.environ.setdefault("BENCH_MODEL_CACHE", str(ROOT / ".cache" / "models"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Under pytest-xdist (`make test` runs two processes) each process takes its share of the cores, and so do the bench
# processes it starts: two processes at two threads each on two cores spin against each other, and the model's
# small matrices use a second thread poorly anyway (a tiny run took 1.4x as long on one thread as on two).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    THREADS = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    torch.set_num_threads(THREADS)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(THREADS)

# The longest files (each a whole bench run or more) start first, so that the processes finish together.
LONGEST_FIRST = ("tests/test_e2e.py", "tests/test_e2e_benchmarks.py", "tests/test_reproduce.py",
                 "tests/test_e2e_resume.py", "tests/test_bad_input.py", "tests/test_security.py")


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "data" / "ultrafeedback_binarized_1k" / "train.jsonl").exists():
        pytest.fail(f"The shared data folder is missing at {SHARED}; set BENCH_SHARED to its location.")
    return SHARED


@pytest.fixture()
def tiny_model():
    """A randomly initialised 2-layer Llama with a 64-token vocabulary: real code paths, milliseconds to run."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = LlamaForCausalLM(config)
    model.eval()
    return model


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The real SmolLM2 tokenizer (from the embedded GGUF, converted once and cached)."""
    from harness.models import ModelSpec, load_tokenizer
    from harness.pairs import SMOLLM2_GGUF

    return load_tokenizer(ModelSpec(SMOLLM2_GGUF))
