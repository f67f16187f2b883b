"""lm-eval tasks on an in-memory model: the real SmolLM2-135M on YAML tasks built from the shared UltraFeedback
data, cross-checked against plain forward passes and greedy generation done here; seeded subsets; errors."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import yaml

from harness.benchmarks.lm_eval_tasks import run_tasks
from harness.errors import BenchError

# Even the tests without a model build lm-eval's index of its ~15k built-in YAML tasks (10 s or more).
pytestmark = pytest.mark.slow

MC, GEN, SUBSET = "bench_test_pref_mc", "bench_test_greedy_gen", "bench_test_pref_subset"


def mc_rows(source: list[dict], n: int, chars: int) -> list[dict]:
    """Chosen vs rejected as a two-way choice; the chosen one moves between positions so the label varies.
    Pairs whose openings agree are skipped: a near tie would make the argmax comparison meaningless."""
    rows = []
    for r in source:
        if r["chosen"][:20] == r["rejected"][:20]:
            continue
        chosen, rejected = r["chosen"][:chars], r["rejected"][:chars]
        label = len(rows) % 2
        rows.append({"prompt": r["prompt"][:chars], "label": label,
                     "choices": [rejected, chosen] if label else [chosen, rejected]})
        if len(rows) == n:
            break
    return rows


def mc_task(name: str, data: str) -> dict:
    return {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": data}},
            "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{prompt}}\nAnswer:",
            "doc_to_choice": "choices", "doc_to_target": "label",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory, shared_dir):
    """One include_path for the whole module: lm-eval indexes its ~15k built-in YAMLs once per include_path."""
    root = tmp_path_factory.mktemp("lm_eval_tasks")
    source = [json.loads(line) for line in
              (shared_dir / "data/ultrafeedback_binarized_1k/test.jsonl").read_text(encoding="utf-8").splitlines()]
    write_jsonl(root / "mc.jsonl", mc_rows(source, 12, 120))
    write_jsonl(root / "subset.jsonl", mc_rows(source, 40, 30))
    configs = {
        MC: mc_task(MC, str(root / "mc.jsonl")),
        SUBSET: mc_task(SUBSET, str(root / "subset.jsonl")),
        # gen.jsonl is written by the generation test, once it knows the model's greedy outputs
        GEN: {"task": GEN, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(root / "gen.jsonl")}},
              "test_split": "test", "output_type": "generate_until", "doc_to_text": "{{prompt}}",
              "doc_to_target": "target", "generation_kwargs": {"until": ["\n"], "do_sample": False, "max_gen_toks": 64},
              "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}]},
        "bench_test_hub_only": {**mc_task("bench_test_hub_only", ""), "dataset_path": "bench-test/never-downloaded",
                                "dataset_kwargs": None},
        "bench_test_missing_file": mc_task("bench_test_missing_file", str(root / "no-such-file.jsonl")),
    }
    for name, config in configs.items():
        (root / f"{name}.yaml").write_text(yaml.safe_dump({k: v for k, v in config.items() if v is not None}))
    return root


@pytest.fixture(scope="module")
def smollm2():
    import torch

    from harness.models import load_model, load_tokenizer
    from harness.registry import PAIRS

    spec = PAIRS.get("smollm2-135m").teacher
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on two shared cores stall each other several-fold when tests run side by side
    yield load_model(spec), load_tokenizer(spec)
    torch.set_num_threads(threads)


def loglikelihood(model, tok, context: str, continuation: str) -> float:
    """lm-eval's split: encode context+continuation and the context alone; the continuation's tokens are what the
    whole has beyond the context's, scored given everything before them."""
    import torch

    whole = tok(context + continuation)["input_ids"]
    n_ctx = len(tok(context)["input_ids"])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].float(), -1)
    return sum(float(logp[i - 1, whole[i]]) for i in range(n_ctx, len(whole)))


def test_multiple_choice_acc_equals_forward_passes(smollm2, tasks_dir):
    model, tok = smollm2
    rows = [json.loads(line) for line in (tasks_dir / "mc.jsonl").read_text().splitlines()]
    out = run_tasks(model, tok, [MC], include_path=str(tasks_dir), log_samples=True)

    json.dumps(out)  # the whole report is plain JSON
    samples = sorted(out["samples"][MC], key=lambda s: s["doc_id"])
    assert [s["doc_id"] for s in samples] == list(range(len(rows)))
    correct = []
    for row, sample in zip(rows, samples):
        context = row["prompt"] + "\nAnswer:"
        ours = [loglikelihood(model, tok, context, " " + choice) for choice in row["choices"]]
        assert [arg[0] for arg in sample["arguments"]] == [context, context]
        assert [arg[1] for arg in sample["arguments"]] == [" " + c for c in row["choices"]]
        assert [resp[0] for resp in sample["filtered_resps"]] == pytest.approx(ours, abs=2e-3)
        assert abs(ours[0] - ours[1]) > 1e-2  # no near ties: the argmax below is well defined
        correct.append(float(max(range(2), key=lambda i: ours[i]) == row["label"]))

    acc = out["results"][MC]["acc"]
    assert acc == {"value": statistics.mean(correct), "se": pytest.approx(statistics.stdev(correct) / math.sqrt(12)),
                   "n": 12}
    task = out["tasks"][MC]
    assert task["n_docs"] == 12 and task["doc_indices"] is None and task["num_fewshot"] == 0
    assert task["config"]["dataset_kwargs"]["data_files"]["test"] == str(tasks_dir / "mc.jsonl")
    assert task["config_hash"].startswith("sha256:") and len(task["config_hash"]) == 71
    assert out["limit"] is None and out["seed"] == 0 and out["lm_eval_version"] == "0.4.13"
    assert model.training is False


def test_generation_outputs_are_greedy_and_exact_match_follows_them(smollm2, tasks_dir):
    import torch

    model, tok = smollm2
    source = (tasks_dir / "mc.jsonl").read_text().splitlines()[:4]
    prompts = [json.loads(line)["prompt"][:120] for line in source]
    greedy = []
    for prompt in prompts:
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            new = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                                 do_sample=False, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:]
        greedy.append(tok.decode(new, skip_special_tokens=True).split("\n")[0])
    # Even docs' targets are the model's own greedy text, odd ones are not: exact_match must come out 1,0,1,0.
    write_jsonl(tasks_dir / "gen.jsonl", [{"prompt": p, "target": g if i % 2 == 0 else g + " (not this)"}
                                          for i, (p, g) in enumerate(zip(prompts, greedy))])

    out = run_tasks(model, tok, [GEN], include_path=str(tasks_dir), max_gen_toks=6, batch_size=4,
                    log_samples=True)

    samples = sorted(out["samples"][GEN], key=lambda s: s["doc_id"])
    assert [s["arguments"][0][0] for s in samples] == prompts
    assert all(s["arguments"][0][1]["max_gen_toks"] == 6 for s in samples)  # the override reached the requests
    assert [s["filtered_resps"][0] for s in samples] == greedy
    assert [s["exact_match"] for s in samples] == [1.0, 0.0, 1.0, 0.0]
    assert out["results"][GEN]["exact_match"]["value"] == 0.5 and out["results"][GEN]["exact_match"]["n"] == 4
    assert out["max_gen_toks"] == 6


def test_limit_is_a_seeded_subset(smollm2, tasks_dir):
    model, tok = smollm2
    rows = [json.loads(line) for line in (tasks_dir / "subset.jsonl").read_text().splitlines()]
    runs = [run_tasks(model, tok, [SUBSET], limit=5, seed=seed, include_path=str(tasks_dir), log_samples=True)
            for seed in (0, 0, 1)]

    chosen = [run["tasks"][SUBSET]["doc_indices"] for run in runs]
    assert chosen[0] == chosen[1] != chosen[2]
    assert chosen[0] != list(range(5))  # not lm-eval's "first N"
    for run, indices in zip(runs, chosen):
        assert len(indices) == 5 == len(set(indices)) and all(0 <= i < 40 for i in indices)
        assert run["results"][SUBSET]["acc"]["n"] == 5 and run["tasks"][SUBSET]["n_docs"] == 40
        # the docs that ran are the recorded ones, logged under their own ids
        logged = {s["doc_id"]: s["doc"]["prompt"] for s in run["samples"][SUBSET]}
        assert logged == {i: rows[i]["prompt"] for i in indices}
    assert runs[0]["results"] == runs[1]["results"]
    assert runs[2]["seed"] == 1 and runs[2]["limit"] == 5


def test_unknown_task_names_close_matches(tasks_dir):
    with pytest.raises(BenchError) as e:
        run_tasks(None, None, [MC + "q"], include_path=str(tasks_dir))
    assert f"Unknown lm-eval task '{MC}q'" in str(e.value) and MC in str(e.value)
    assert "include_path" in str(e.value)
    with pytest.raises(BenchError, match="Close matches: hellaswag"):
        run_tasks(None, None, ["hellaswg"], include_path=str(tasks_dir))


@pytest.mark.parametrize("name, expect", [
    ("bench_test_hub_only", "bench-test/never-downloaded"),
    ("bench_test_missing_file", "no-such-file.jsonl"),
])
def test_task_whose_data_cannot_load_offline(tasks_dir, name, expect):
    with pytest.raises(BenchError) as e:
        run_tasks(None, None, [name], include_path=str(tasks_dir))
    message = str(e.value)
    assert f"could not load task '{name}'" in message and expect in message
    assert "dataset_path: json" in message and "HF_DATASETS_OFFLINE" in message
    assert e.value.__cause__ is not None  # the original error stays attached
