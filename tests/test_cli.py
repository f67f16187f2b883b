"""Bad input at the command line: one clear paragraph, no traceback, a non-zero exit, nothing lost."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from harness.cli import main


def bench(*args: str, env: dict | None = None):
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.output


def run_args(tmp_path, *extra: str) -> list[str]:
    return ["run", "--budget", "tiny", "--results-dir", str(tmp_path / "results"), "--leaderboard-dir",
            str(tmp_path / "lb"), "--cache-dir", str(tmp_path / "cache"), *extra]


def assert_clean_error(code: int, output: str, *needles: str):
    assert code == 2, output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output  # one paragraph, after any progress lines
    assert "Traceback" not in output
    for needle in needles:
        assert needle in output, f"{needle!r} not in {output!r}"


def test_unknown_method_lists_choices(tmp_path, shared_dir):
    code, out = bench(*run_args(tmp_path, "--methods", "sft,dckdd", "--data-dir", str(shared_dir)))
    assert_clean_error(code, out, "Unknown method 'dckdd'", "Did you mean 'dckd'", "sft", "dpo", "kd")


def test_unknown_pair_lists_choices(tmp_path, shared_dir):
    code, out = bench(*run_args(tmp_path, "--methods", "sft", "--pair", "llama-8b", "--data-dir", str(shared_dir)))
    assert_clean_error(code, out, "Unknown pair 'llama-8b'", "llama-1b", "smollm2-135m")


def test_unknown_budget_lists_choices(tmp_path, shared_dir):
    code, out = bench("run", "--methods", "sft", "--budget", "huge", "--data-dir", str(shared_dir))
    assert_clean_error(code, out, "Unknown budget 'huge'", "smoke", "tiny", "paper")


def test_impossible_budget_override(tmp_path, shared_dir):
    code, out = bench(*run_args(tmp_path, "--methods", "sft", "--set", "max_prompt_len=500",
                                "--data-dir", str(shared_dir)))
    assert_clean_error(code, out, "max_prompt_len (500)", "max_seq_len")
    code, out = bench(*run_args(tmp_path, "--methods", "sft", "--set", "bogus=1", "--data-dir", str(shared_dir)))
    assert_clean_error(code, out, "Unknown budget field", "bogus")


def test_bad_method_option(tmp_path, shared_dir):
    code, out = bench(*run_args(tmp_path, "--methods", "dpo", "--option", "dpo.beta=-1", "--data-dir", str(shared_dir)))
    assert_clean_error(code, out, "dpo: beta must be positive")
    code, out = bench(*run_args(tmp_path, "--methods", "dpo", "--option", "dpo.gamma=1", "--data-dir", str(shared_dir)))
    assert_clean_error(code, out, "dpo: bad option", "gamma")


def test_data_missing_offline_says_which_file_and_how(tmp_path):
    empty = tmp_path / "nodata"
    empty.mkdir()
    code, out = bench(*run_args(tmp_path, "--methods", "sft", "--data-dir", str(empty)))
    assert_clean_error(code, out, "trl-lib/ultrafeedback_binarized", str(empty / "data" / "ultrafeedback_binarized_1k"),
                       "--data-dir", "BENCH_DATA_DIR")


def test_data_missing_without_data_dir_in_offline_mode(tmp_path, monkeypatch):
    monkeypatch.delenv("BENCH_DATA_DIR", raising=False)
    code, out = bench(*run_args(tmp_path, "--methods", "sft"), env={"HF_HUB_OFFLINE": "1", "BENCH_DATA_DIR": None})
    assert_clean_error(code, out, "offline", "--data-dir")


def test_malformed_data_names_file_line_and_field(tmp_path):
    folder = tmp_path / "mydata"
    folder.mkdir()
    good = {"prompt": "hi", "chosen": "hello", "rejected": "go away"}
    lines = [json.dumps(good)] * 3 + [json.dumps({"prompt": "hi", "chosen": "hello"})]
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "test.jsonl").write_text(json.dumps(good) + "\n")
    code, out = bench(*run_args(tmp_path, "--methods", "sft", "--dataset", str(folder)))
    assert_clean_error(code, out, f"{folder / 'train.jsonl'}:4", "'rejected'")


def test_unwritable_results_dir(tmp_path, shared_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = run_args(tmp_path, "--methods", "sft", "--data-dir", str(shared_dir))
    args[args.index("--results-dir") + 1] = str(blocker / "results")
    code, out = bench(*args)
    assert_clean_error(code, out, "Cannot write to", str(blocker / "results"))


def test_teacher_without_student(tmp_path):
    code, out = bench(*run_args(tmp_path, "--methods", "sft", "--teacher", "some/model"))
    assert_clean_error(code, out, "--teacher and --student go together")


def test_leaderboard_without_results(tmp_path):
    code, out = bench("leaderboard", "--results-dir", str(tmp_path / "none"), "--leaderboard-dir", str(tmp_path))
    assert_clean_error(code, out, "No results folder")


@pytest.mark.parametrize("command,needles", [
    ("methods", ["sft", "kd", "dpo", "dckd", "simpo", "seqkd", "gkd", "rkl", "plad", "pad", "dpkd", "adpa ", "adpa_plus",
                 "distillm", "arXiv 2502.17927", "arXiv 2402.03898", "shared tokenizer",
                 "needs: adpa_advantage; starts from the dckd student"]),
    ("pairs", ["smollm2-135m", "llama-1b", "gemma-2b", "qwen-0.5b", "meta-llama/Llama-3.2-1B",
               "methods: adpa, adpa_plus, dckd, distillm, dpkd, dpo, gkd, kd, pad, plad, rkl, seqkd, sft, simpo"]),
    ("budgets", ["tiny", "smoke", "paper", "12 steps"]),
])
def test_listings(command, needles):
    code, out = bench(command)
    assert code == 0, out
    for needle in needles:
        assert needle in out


def _tiny_model_with_own_tokenizer(folder):
    """A real (tiny, random) Llama checkpoint whose word-level tokenizer shares nothing with SmolLM2's."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>", "<pad>", "</s>", "hello", "world", "yes", "no"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")
    fast.save_pretrained(folder)
    config = LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)


def test_pair_without_shared_vocabulary_refuses_token_level_methods(tmp_path, shared_dir):
    from harness.pairs import SMOLLM2_GGUF

    student = tmp_path / "other-student"
    _tiny_model_with_own_tokenizer(student)
    code, out = bench(*run_args(tmp_path, "--methods", "sft,kd,dckd", "--teacher", SMOLLM2_GGUF,
                                "--student", str(student), "--data-dir", str(shared_dir)))
    assert_clean_error(code, out, "different vocabularies", "kd, dckd", "Methods that can: ")
    can_run = set(out.split("Methods that can: ")[1].strip().rstrip(".").split(", "))
    assert can_run == {"sft", "dpo", "simpo", "seqkd", "plad", "pad"}


def test_pad_mcq_with_one_sample_per_prompt_fails_before_sampling(tmp_path, shared_dir):
    code, out = bench(*run_args(tmp_path, "--methods", "pad", "--option", "pad.alpha=0", "--set",
                                "samples_per_prompt=1", "--data-dir", str(shared_dir)))
    assert_clean_error(code, out, "samples_per_prompt >= 2", "--set samples_per_prompt=4")
    assert not list((tmp_path / "cache").glob("signals/*/DONE"))  # nothing half-computed was kept


@pytest.mark.parametrize(("extra", "needles"), [
    (["--benchmarks", "mt_bnch"], ["Unknown benchmark(s) mt_bnch", "alpaca_eval", "lm_eval:<task>"]),
    (["--benchmarks", "mt_bench"], ["need --judge", "local:teacher"]),
    (["--benchmarks", "alpaca_eval", "--judge", "openai:gpt-4-1106-preview", "--verdict", "constrained"],
     ["--verdict constrained needs a local judge"]),
    (["--benchmarks", "rm_winrate"], ["rm_winrate needs --reward-model"]),
    (["--benchmarks", "mt_bench", "--judge", "local:teacher", "--limit", "0"], ["--limit must be a positive"]),
])
def test_benchmark_mistakes_in_bench_run_fail_before_any_training(tmp_path, shared_dir, extra, needles):
    code, out = bench(*run_args(tmp_path, "--methods", "sft", "--data-dir", str(shared_dir), *extra))
    assert_clean_error(code, out, *needles)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "results").exists()


def test_bench_eval_needs_a_finished_run(tmp_path, shared_dir):
    code, out = bench("eval", "--benchmarks", "alpaca_eval", "--judge", "local:teacher", "--data-dir",
                      str(shared_dir), "--results-dir", str(tmp_path / "results"), "--cache-dir", str(tmp_path / "c"))
    assert_clean_error(code, out, "No results under", "bench run")


def test_leaderboard_regenerates_every_page_and_screenshots_the_reports(tmp_path):
    import os

    from harness.browser import browser_missing
    from tests.fixtures.results_tree import build_results

    if browser_missing():
        if os.environ.get("CI"):
            pytest.fail(f"CI installs Chromium (make browser): {browser_missing()}")
        pytest.skip(browser_missing())
    results = build_results(tmp_path)
    code, out = bench("leaderboard", "--results-dir", str(results), "--leaderboard-dir", str(tmp_path / "lb"),
                      "--screenshot", str(tmp_path / "shots"))
    assert code == 0, out
    lines = out.splitlines()
    assert f"leaderboard: {tmp_path / 'lb' / 'toy-a.html'}" in lines and f"leaderboard: {tmp_path / 'lb' / 'index.html'}" in lines
    # 2 runs of toy-a with 7 plots each, 1 of toy-b with 3, in PNG and SVG: counted, not listed
    assert f"plots: 34 files under {tmp_path / 'lb' / 'plots'}" in lines
    assert not any(line.endswith((".png", ".svg")) and line.startswith("leaderboard:") for line in lines)
    for pair in ("toy-a", "toy-b"):
        png = (tmp_path / "shots" / f"{pair}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 1400  # the IHDR width
        assert f"screenshot: {tmp_path / 'shots' / f'{pair}.png'}" in lines
