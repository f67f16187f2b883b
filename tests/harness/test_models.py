"""harness/models.materialise: a pruned student (real layer surgery on a saved tiny Llama) is converted once into
the model cache, also when several threads ask for it at once on an empty cache (the first converts, the others
wait for its copy instead of converting again)."""

from __future__ import annotations

import threading
import time

from transformers import AutoModelForCausalLM

import harness.models as models
from harness.models import ModelSpec, materialise


def test_concurrent_callers_convert_once(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_MODEL_CACHE", str(tmp_path / "models"))
    source = tmp_path / "tiny"
    tiny_model.save_pretrained(source)
    from tokenizers import Tokenizer
    from tokenizers import models as tok_models
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(tok_models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")),
                            unk_token="[UNK]").save_pretrained(source)
    spec = ModelSpec(str(source), drop_layers=(1, 2))
    converted, real = [], models._convert

    def slow_convert(spec, target):
        converted.append(target)
        time.sleep(0.5)  # long enough for every other thread to arrive while this one converts
        real(spec, target)

    monkeypatch.setattr(models, "_convert", slow_convert)
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(materialise(spec))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(converted) == 1 and len(set(paths)) == 1 and len(paths) == 3
    pruned = AutoModelForCausalLM.from_pretrained(paths[0])
    assert pruned.config.num_hidden_layers == tiny_model.config.num_hidden_layers - 1
    assert materialise(spec) == paths[0] and len(converted) == 1  # later calls read the cache without the lock
