"""Security: API keys stay in the environment, a model folder's own code never runs unless asked, and weights load
from safetensors (or GGUF) only -- never from a pickle, which can run any code while it is read.

The key test makes one real `tiny` run of sft on the SmolLM2 pair, scored on one MT-Bench question by a real
OpenAI-compatible judge (a stdlib HTTP server on loopback); everything else builds tiny random models in tmp.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness.errors import BenchError
from tests.fixtures.loopback_judge import JudgeServer, chat_completion

ROOT = Path(__file__).resolve().parent.parent
PAIR = "smollm2-135m"


# ---------------------------------------------------------------- API keys


@pytest.fixture(scope="module")
def judged_run(tmp_path_factory, shared_dir):
    """`bench run` of sft on the tiny budget with MT-Bench scoring (one question, a few tokens) by the loopback
    judge, the key only in the environment; its stdout and stderr are kept as the run's log."""
    from harness.cache import model_cache_dir

    root = tmp_path_factory.mktemp("keys")
    secret = f"sk-bench-SECRET-{uuid.uuid4().hex}"
    judge = JudgeServer(chat_completion("The answer is fine. Rating: [[5]]"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OPENAI_API_KEY": secret}
    started = time.time()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "harness.cli", "run", "--methods", "sft", "--pair", PAIR, "--budget", "tiny",
             "--data-dir", str(shared_dir), "--results-dir", str(root / "results"), "--cache-dir", str(root / "cache"),
             "--leaderboard-dir", str(root / "leaderboards"), "--benchmarks", "mt_bench",
             "--judge", "openai:judge-model", "--judge-base-url", judge.url, "--limit", "1",
             "--max-new-tokens", "4", "--judge-max-tokens", "8"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    finally:
        judge.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    (root / "logs").mkdir()
    (root / "logs" / "stdout.log").write_text(proc.stdout)
    (root / "logs" / "stderr.log").write_text(proc.stderr)
    # Converted models are shared between sessions; whatever this run added or rewrote there is scanned too.
    converted = [p for p in model_cache_dir().rglob("*") if p.is_file() and p.stat().st_mtime >= started]
    return {"root": root, "secret": secret, "auth": [r["_auth"] for r in judge.requests], "extra_files": converted}


@pytest.mark.slow
def test_api_key_is_sent_to_the_judge_and_written_nowhere(judged_run):
    root, secret = judged_run["root"], judged_run["secret"]
    # It was sent: three rows (teacher, student-init, sft) x two MT-Bench turns, each with the key.
    assert judged_run["auth"] == [f"Bearer {secret}"] * 6
    files = [p for p in root.rglob("*") if p.is_file()] + judged_run["extra_files"]
    names = {p.name for p in files}
    # The scan covers what the run wrote: records, judgments, answers, leaderboards and the log.
    assert {"record.json", "mt_bench.json", "mt_bench_judgments.jsonl", "judgments.jsonl", "answers.json",
            "smollm2-135m.md", "stderr.log"} <= names
    assert "[bench] MT-Bench sft: score 5.0" in (root / "logs" / "stderr.log").read_text()
    leaked = [str(p) for p in files if secret.encode() in p.read_bytes()]
    assert not leaked, f"the API key was written to {leaked}"
    # Nor any recognisable part of it (a truncated or re-encoded key is a leak too).
    tail = secret.rsplit("-", 1)[1].encode()
    assert not [str(p) for p in files if tail in p.read_bytes()]


# ---------------------------------------------------------------- trust_remote_code

MARKER_CODE = '''"""Custom model code: importing it leaves a marker, so a test can tell whether it ran."""
from pathlib import Path

Path({marker!r}).write_text("the folder's own code ran")

from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification


class MarkerConfig(LlamaConfig):
    model_type = "markerllama"


class MarkerForCausalLM(LlamaForCausalLM):
    config_class = MarkerConfig


class MarkerForSequenceClassification(LlamaForSequenceClassification):
    config_class = MarkerConfig
'''


def tiny_llama(folder: Path, layers: int = 1, *, tokenizer: bool = True):
    """A random Llama in a folder, with a word-level tokenizer that has a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = ["<unk>", "<pad>", "</s>", "hello", "world", "user", "assistant"]
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=1, pad_token_id=1)
    model = LlamaForCausalLM(config)
    if tokenizer:
        tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")
        fast.chat_template = "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} </s>{% endfor %}"
        fast.save_pretrained(folder)
    return model, config


def remote_code_folder(folder: Path, model_type: str) -> Path:
    """A safetensors folder whose config.json maps the Auto classes to marker_model.py in the folder."""
    model, _ = tiny_llama(folder)
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {"AutoConfig": "marker_model.MarkerConfig",
                          "AutoModelForCausalLM": "marker_model.MarkerForCausalLM",
                          "AutoModelForSequenceClassification": "marker_model.MarkerForSequenceClassification"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "marker_model.py").write_text(MARKER_CODE.format(marker=str(folder.parent / f"{folder.name}.RAN")))
    return folder


LOADER = """
import json, sys
from harness.errors import BenchError
kind, folder, trust = sys.argv[1], sys.argv[2], sys.argv[3] == "trust"
try:
    if kind == "causal_lm":
        from harness.models import ModelSpec, load_model
        model = load_model(ModelSpec(folder), trust_remote_code=trust)
    else:
        from harness.benchmarks.rm_winrate import RewardModel
        rm = RewardModel(folder, trust_remote_code=trust)
        rm([([{"role": "user", "content": "hello"}], "world")])
        model = rm._model
    print(json.dumps({"class": type(model).__name__}))
except BenchError as e:
    print(json.dumps({"error": str(e)}))
"""


@pytest.fixture(scope="module")
def remote_code_loads(tmp_path_factory):
    """Each loader x folder x flag in a fresh interpreter, so an imported module cannot linger between cases and
    transformers copies custom code into a module cache under tmp (HF_MODULES_CACHE), not into ~/.cache."""
    root = tmp_path_factory.mktemp("remote-code")
    folders = {"custom": remote_code_folder(root / "custom", "markerllama"),  # a type transformers does not know
               "known": remote_code_folder(root / "known", "llama")}  # a known type that still asks for its code
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(root / "modules")}
    cases = [(kind, name, trust) for kind in ("causal_lm", "reward_model") for name in folders
             for trust in ("no-flag", "trust")]

    def load(case):
        kind, name, trust = case
        marker = root / f"{name}.RAN"
        marker.unlink(missing_ok=True)  # the cases share a folder's marker path, so one runs at a time per folder
        proc = subprocess.run([sys.executable, "-c", LOADER, kind, str(folders[name]), trust], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr[-3000:]
        return {**json.loads(proc.stdout.strip().splitlines()[-1]), "ran": marker.exists()}

    by_folder = {name: [c for c in cases if c[1] == name] for name in folders}
    with ThreadPoolExecutor(max_workers=len(folders)) as pool:  # one worker per folder: markers do not mix
        done = pool.map(lambda name: [(c, load(c)) for c in by_folder[name]], folders)
        return {case: outcome for batch in done for case, outcome in batch}


@pytest.mark.slow  # loads models in subprocesses
@pytest.mark.parametrize("kind", ["causal_lm", "reward_model"])
def test_a_folders_own_code_never_runs_without_the_flag(remote_code_loads, kind):
    custom = remote_code_loads[(kind, "custom", "no-flag")]
    assert not custom["ran"], "the folder's code ran although trust_remote_code was off"
    assert "error" in custom, custom
    if kind == "causal_lm":
        assert "ships its own Python code" in custom["error"] and "auto_map" in custom["error"]
    else:
        assert "custom code" in custom["error"] and "Could not load reward model" in custom["error"]
    # A type transformers knows loads with its built-in class; the folder's code is not imported.
    known = remote_code_loads[(kind, "known", "no-flag")]
    assert not known["ran"]
    assert known.get("class") == {"causal_lm": "LlamaForCausalLM",
                                  "reward_model": "LlamaForSequenceClassification"}[kind], known


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["causal_lm", "reward_model"])
def test_the_flag_does_run_the_folders_code(remote_code_loads, kind):
    # The positive control: with the flag the marker appears, so the tests above would see code that ran.
    for name in ("custom", "known"):
        outcome = remote_code_loads[(kind, name, "trust")]
        assert outcome["ran"], outcome
        if kind == "causal_lm":
            assert outcome.get("class", "").startswith("Marker"), outcome
        # (The reward model loader reads the tokenizer first, and transformers 5 finds no tokenizer class for the
        # folder's own MarkerConfig, so that load then fails; the folder's code ran all the same, which is what
        # this control is for.)


@pytest.mark.slow
def test_bench_eval_rm_winrate_keeps_remote_code_off_by_default(tmp_path, shared_dir):
    """The CLI path: `bench eval --benchmarks rm_winrate --reward-model <folder>` without --trust-remote-code."""
    from tests.fixtures.results_tree import build_results

    folder = remote_code_folder(tmp_path / "rm", "markerllama")
    results = build_results(tmp_path)
    run = results / PAIR / "tiny-seed0"
    for row in ("teacher", "sft"):  # rm_winrate reads only the answers `bench run` wrote, and the records
        (run / row).mkdir(parents=True)
        (run / row / "record.json").write_text(json.dumps({
            "run": "tiny-seed0", "row": row, "kind": "reference" if row == "teacher" else "method", "seed": 0,
            "pair": {"name": PAIR}, "budget": {"name": "tiny"}, "metrics": {}}))
        (run / row / "answers.jsonl").write_text(json.dumps({"prompt": "hello", "answer": f"{row} world"}) + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "eval", "--benchmarks", "rm_winrate",
                           "--reward-model", str(folder), "--run", "tiny-seed0", "--results-dir", str(results),
                           "--cache-dir", str(tmp_path / "cache"), "--leaderboard-dir", str(tmp_path / "lb")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "error: Could not load reward model" in proc.stderr
    assert "custom code" in proc.stderr
    assert not (tmp_path / "rm.RAN").exists()


# ---------------------------------------------------------------- safetensors only


@pytest.fixture()
def pickled_folder(tmp_path) -> Path:
    """A real pickled checkpoint: config.json, a tokenizer, and pytorch_model.bin written by torch.save. (In
    transformers 5 ``save_pretrained(safe_serialization=False)`` writes safetensors anyway, so it cannot make one.)"""
    import torch

    folder = tmp_path / "pickled"
    model, config = tiny_llama(folder, layers=2)
    config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


def test_pickled_weights_are_refused_with_a_way_out(pickled_folder, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from harness.models import ModelSpec, load_model

    # transformers itself would read this pickle: the refusal below is bench's, not a broken file.
    assert type(AutoModelForCausalLM.from_pretrained(pickled_folder)).__name__ == "LlamaForCausalLM"
    with pytest.raises(BenchError) as err:
        load_model(ModelSpec(str(pickled_folder)))
    message = str(err.value)
    assert "pytorch_model.bin" in message and "safetensors" in message
    assert "unpickling a file can run any code" in message and "save_pretrained(folder)" in message
    # A pruned student of it goes through materialise / _load_raw, which must refuse it too (and cache nothing).
    monkeypatch.setenv("BENCH_MODEL_CACHE", str(tmp_path / "models"))
    with pytest.raises(BenchError, match="holds its weights only as pickles"):
        load_model(ModelSpec(str(pickled_folder), drop_layers=(0, 1)))
    assert not list((tmp_path / "models").glob("*/config.json"))


def test_the_same_folder_with_safetensors_loads_on_every_path(pickled_folder, tmp_path, monkeypatch):
    """The control: converted as the message says, the folder loads, pruned included."""
    from transformers import AutoModelForCausalLM

    from harness.models import ModelSpec, load_model

    AutoModelForCausalLM.from_pretrained(pickled_folder).save_pretrained(pickled_folder)
    assert (pickled_folder / "model.safetensors").exists()
    monkeypatch.setenv("BENCH_MODEL_CACHE", str(tmp_path / "models"))
    assert load_model(ModelSpec(str(pickled_folder))).config.num_hidden_layers == 2
    assert load_model(ModelSpec(str(pickled_folder), drop_layers=(0, 1))).config.num_hidden_layers == 1


def test_no_code_loads_pickles():
    """Nothing in the harness or the methods reads a pickle: torch.load, pickle, joblib, or numpy with
    allow_pickle=True. (Weights load with use_safetensors=True; signals and top-k shards are safetensors/npy.)"""
    import ast
    import re

    pattern = re.compile(r"torch\.load\(|\bimport pickle\b|\bpickle\.loads?\(|\bjoblib\b|allow_pickle\s*=\s*True|"
                         r"\bdill\b|\bcloudpickle\b")
    sources = [p for folder in ("harness", "methods") for p in (ROOT / folder).rglob("*.py")]
    assert len(sources) > 20
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in sources
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, hits
    # Every from_pretrained of model weights asks for safetensors (tokenizers carry no weights); _load_raw passes
    # it inside ``**weights`` because a GGUF file is the other format it reads.
    calls = []
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "from_pretrained" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id.startswith("AutoModel")):
                safe = any(k.arg == "use_safetensors" and isinstance(k.value, ast.Constant) and k.value.value is True
                           or k.arg is None and isinstance(k.value, ast.Name) and k.value.id == "weights"
                           for k in node.keywords)
                calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", safe))
    assert len(calls) >= 3, calls
    assert all(safe for _, safe in calls), calls
