"""Bad input, through the real `bench` command in a fresh interpreter: each case must end with one clear paragraph
on stderr that says what is wrong and how to fix it, no Python traceback, a non-zero exit code, and every file
that was already computed (a finished results tree, stage outputs in the cache, a leaderboard) byte-identical.

Most cases fail before any model is loaded. The judge cases load the 135M teacher once per test to answer one
MT-Bench question with a few tokens; the judge itself is a real HTTP server on loopback (or a closed port).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.loopback_judge import JudgeServer, chat_completion
from tests.fixtures.results_tree import build_results

ROOT = Path(__file__).resolve().parent.parent
PAIR, RUN = "smollm2-135m", "smoke-seed0"
GOOD_ROW = {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."}


# ---------------------------------------------------------------- the workspace and how a case is judged


@dataclass
class Workspace:
    root: Path
    results: Path
    cache: Path
    boards: Path
    before: dict  # path -> bytes of every file that existed before the command

    def folders(self) -> list[str]:
        return ["--results-dir", str(self.results), "--cache-dir", str(self.cache),
                "--leaderboard-dir", str(self.boards)]

    def lost(self, appended_ok: tuple[Path, ...] = ()) -> list[str]:
        """Pre-existing files that are gone or changed (``appended_ok``: append-only files may only grow)."""
        out = []
        for path, data in self.before.items():
            if not path.is_file():
                out.append(f"{path} is gone")
            elif path in appended_ok:
                if not path.read_bytes().startswith(data):
                    out.append(f"{path} lost its earlier lines")
            elif path.read_bytes() != data:
                out.append(f"{path} changed")
        return out


def snapshot(*roots: Path) -> dict:
    return {p: p.read_bytes() for root in roots for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture()
def ws(tmp_path) -> Workspace:
    return make_workspace(tmp_path)


def make_workspace(tmp_path: Path) -> Workspace:
    """A finished state to lose: the hand-made results tree, a real teacher record of the default pair (so that
    `bench eval` has a run to score), finished stages in the cache, and a leaderboard."""
    results = build_results(tmp_path)
    teacher = results / PAIR / RUN / "teacher"
    teacher.mkdir(parents=True)
    shutil.copy(ROOT / "results" / PAIR / RUN / "teacher" / "record.json", teacher / "record.json")
    cache = tmp_path / "cache"
    for stage, key, name, text in [("train", "0123abcd", "train.json", '{"loss_curve": []}'),
                                   ("answers", "4567cdef", "answers.json", '["an answer made earlier"]')]:
        (cache / stage / key).mkdir(parents=True)
        (cache / stage / key / name).write_text(text)
        (cache / stage / key / "DONE").write_text("")
    (cache / "judgments").mkdir()
    (cache / "judgments" / "judgments.jsonl").write_text(
        json.dumps({"key": "k" * 32, "judgment": {"text": "Rating: [[7]]", "top_logprobs": None, "error": None}})
        + "\n")
    boards = tmp_path / "leaderboards"
    boards.mkdir()
    (boards / "notes.md").write_text("kept by hand: regenerating the leaderboards never touches it\n")
    return Workspace(tmp_path, results, cache, boards, snapshot(results, cache, boards))


def bench(*args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """The real command line in a fresh interpreter, offline; ``env`` values of None unset a variable."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def error_paragraph(proc: subprocess.CompletedProcess) -> str:
    """The one `error:` paragraph on stderr (progress lines may come before it, nothing after it)."""
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = proc.stderr.rstrip("\n").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert len(starts) == 1, f"expected one 'error:' paragraph on stderr, got:\n{proc.stderr}"
    return "\n".join(lines[starts[0]:])


def assert_clean_failure(proc, ws: Workspace, needles: list[str], code: int = 2) -> str:
    message = error_paragraph(proc)
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}:\n{proc.stderr}"
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    assert not ws.lost(), ws.lost()
    return message


def run_cmd(ws: Workspace, shared: Path, *extra: str) -> list[str]:
    return ["run", "--budget", "tiny", "--data-dir", str(shared), *ws.folders(), *extra]


def _rows(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def data_folder(ws: Workspace, train_text: str) -> Path:
    folder = ws.root / "mydata"
    folder.mkdir()
    (folder / "train.jsonl").write_text(train_text)
    (folder / "test.jsonl").write_text(_rows(GOOD_ROW))
    return folder


def tiny_model(folder: Path, words: list[str]) -> Path:
    """A real (tiny, random) Llama with its own word-level tokenizer, saved as safetensors."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = ["<unk>", "<pad>", "</s>", *words]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                            eos_token="</s>").save_pretrained(folder)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- the table
# name -> (command, words the error paragraph must hold). A command is either the extra arguments of a
# `bench run` on the tiny budget, or a function of (workspace, shared data folder) that prepares what the case
# needs and returns (arguments, environment changes, more words to find).

CONVERSATION = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]


def _bad_data(train_text: str):
    def setup(ws, shared):
        folder = data_folder(ws, train_text)
        return run_cmd(ws, shared, "--methods", "sft", "--dataset", str(folder)), None, [str(folder / "train.jsonl")]
    return setup


def _different_vocabularies(ws, shared):
    teacher = tiny_model(ws.root / "teacher", ["hello", "world", "yes", "no", "maybe"])
    student = tiny_model(ws.root / "student", ["bonjour", "monde", "oui", "non"])
    return run_cmd(ws, shared, "--methods", "sft,kd", "--teacher", str(teacher), "--student", str(student)), None, []


def _no_data_dir_offline(ws, shared):
    # No --data-dir and no BENCH_DATA_DIR: the data set would come from the hub, which offline mode forbids.
    return (["run", "--methods", "sft", "--budget", "tiny", *ws.folders()],
            {"BENCH_DATA_DIR": None, "HF_DATASETS_OFFLINE": None}, [])


def _eval(*extra):
    return lambda ws, shared: (["eval", "--data-dir", str(shared), *ws.folders(), *extra], None, [])


def _leaderboard_of_empty_folder(ws, shared):
    empty = ws.root / "empty-results"
    empty.mkdir()
    return (["leaderboard", "--results-dir", str(empty), "--leaderboard-dir", str(ws.boards)], None,
            [f"{empty} holds no run records"])


CASES = {
    # ---- names
    "unknown method": (["--methods", "sft,dckdd"], ["Unknown method 'dckdd'", "Did you mean 'dckd'", "bench methods"]),
    "unknown pair": (["--methods", "sft", "--pair", "llama-8b"], ["Unknown pair 'llama-8b'", "smollm2-135m",
                                                                  "bench pairs"]),
    "unknown budget": (["--methods", "sft", "--budget", "huge"], ["Unknown budget 'huge'", "smoke, tiny",
                                                                  "bench budgets"]),
    "--teacher without --student": (["--methods", "sft", "--teacher", "some/model"],
                                    ["--teacher and --student go together", "give both"]),
    # ---- budget overrides
    "--set without =": (["--methods", "sft", "--set", "max_steps"], ["--set 'max_steps'", "form name=value"]),
    "--set unknown field": (["--methods", "sft", "--set", "max_step=3"],
                            ["Unknown budget field 'max_step'", "max_steps", "train_examples"]),
    # Before the fix: a TypeError traceback from Budget.__post_init__ comparing "abc" with 1.
    "--set wrong type": (["--methods", "sft", "--set", "max_steps=abc"],
                         ["max_steps takes an integer", "--set max_steps=1"]),
    # Before the fix: `--set seed=true` was taken as seed 1 and trained a whole run named tiny-seedTrue.
    "--set bool for an integer": (["--methods", "sft", "--set", "seed=true"], ["seed takes an integer, not bool"]),
    "prompt as long as the sequence": (["--methods", "sft", "--set", "max_prompt_len=64"],
                                       ["max_prompt_len (64)", "below max_seq_len (64)"]),
    "too few examples for one step": (["--methods", "sft", "--budget", "smoke", "--set", "train_examples=2"],
                                      ["2 training examples cannot fill one optimizer step", "batch_size 4"]),
    "more examples than the data has": (["--methods", "sft", "--set", "train_examples=5000"],
                                        ["asks for 5000 training rows", "smaller budget or more data"]),
    # ---- method options
    "unknown --option field": (["--methods", "sft", "--option", "sft.bogus=1"],
                               ["sft: bad option", "bogus", "bench methods"]),
    "--option without a method": (["--methods", "dpo", "--option", "beta=0.1"],
                                  ["must name METHOD.FIELD", "dpo.beta=0.05"]),
    # Before the fix: "bad option ('<=' not supported between instances of 'str' and 'int')".
    "--option wrong type": (["--methods", "dpo", "--option", "dpo.beta=abc"],
                            ["beta takes a number, not str", "--option dpo.beta=0.1"]),
    # ---- data
    "data: broken JSON line": (_bad_data(_rows(GOOD_ROW, GOOD_ROW, '{"prompt": "Say hi.", "chosen": ', GOOD_ROW)),
                               ["train.jsonl:3: not valid JSON", "fix or delete that line"]),
    "data: empty file": (_bad_data(""), ["holds no rows", "'prompt', 'chosen' and 'rejected'", "--dataset"]),
    "data: messages not role/content": (
        _bad_data(_rows({"prompt": [{"from": "human", "value": "hi"}], "chosen": "a", "rejected": "b"})),
        ["train.jsonl:1: field 'prompt', message 0", "expected {'role': ..., 'content': ...}"]),
    # chosen is a conversation, rejected plain text, no prompt: which prompt did they answer?
    "data: string where a conversation is expected": (
        _bad_data(_rows({"chosen": CONVERSATION, "rejected": "No."})),
        ["train.jsonl:1: field 'prompt' is missing", "Add a 'prompt'", "both lists of {'role'"]),
    "data: reply neither text nor messages": (
        _bad_data(_rows({"prompt": "hi", "chosen": {"text": "a"}, "rejected": "b"})),
        ["train.jsonl:1: field 'chosen' must be text or a list of chat messages"]),
    "data: unknown role": (
        _bad_data(_rows({"prompt": [{"role": "human", "content": "hi"}], "chosen": "a", "rejected": "b"})),
        ["train.jsonl:1: field 'prompt', message 0: unknown role 'human'", "system, user or assistant"]),
    "data: missing offline": (_no_data_dir_offline,
                              ["trl-lib/ultrafeedback_binarized", "offline", "--data-dir", "BENCH_DATA_DIR"]),
    # ---- models
    "logit method, different vocabularies": (_different_vocabularies,
                                             ["different vocabularies", "kd (which read the teacher's token",
                                              "Methods that can: ", "sft"]),
    # ---- bench eval and bench leaderboard
    "eval: unknown benchmark": (_eval("--benchmarks", "mt_bnch", "--run", RUN),
                                ["Unknown benchmark(s) mt_bnch", "mt_bench", "lm_eval:<task>"]),
    "eval: no such run": (_eval("--benchmarks", "mt_bench", "--judge", "local:teacher", "--run", "nope"),
                          ["No results under", f"{PAIR}/nope", "bench run", "--run"]),
    "leaderboard: empty folder": (_leaderboard_of_empty_folder, ["record.json"]),
}


@pytest.fixture(scope="module")
def launched(tmp_path_factory, shared_dir) -> dict:
    """Every case of the table, each in its own workspace, four commands at a time: a `bench` process spends
    seconds importing torch and transformers before it can fail, and one after another they took minutes."""
    jobs = {}
    for name, (command, needles) in CASES.items():
        ws = make_workspace(tmp_path_factory.mktemp("case"))
        args, env, more = command(ws, shared_dir) if callable(command) else (run_cmd(ws, shared_dir, *command),
                                                                              None, [])
        jobs[name] = (ws, args, env, needles + more)
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(bench, *args, env=env) for name, (ws, args, env, _) in jobs.items()}
    return {name: (jobs[name][0], futures[name].result(), jobs[name][3]) for name in jobs}


@pytest.mark.slow  # launches a bench process per case
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, launched):
    ws, proc, needles = launched[case]
    assert_clean_failure(proc, ws, needles)
    assert "[bench] train" not in proc.stderr  # every case fails before any training


def _chmod_stops_writes(folder: Path) -> bool:
    probe = folder / ".probe"
    try:
        probe.write_text("")
    except PermissionError:
        return True
    probe.unlink()
    return False


def test_results_folder_that_cannot_be_written(ws, shared_dir):
    """A full or read-only disk, simulated by a read-only results folder. As root (CI containers), chmod does not
    stop writes, so there the results folder is a path under a regular file (mkdir fails with ENOTDIR even for
    root) -- that file being one of the finished records, which must survive."""
    os.chmod(ws.results, 0o555)
    try:
        if _chmod_stops_writes(ws.results):
            target, reason = ws.results, "Permission denied"
        else:
            target, reason = ws.results / "toy-a" / "tiny-seed0" / "sft" / "record.json" / "results", "Not a directory"
        proc = bench(*run_cmd(ws, shared_dir, "--methods", "sft"), "--results-dir", str(target))
    finally:
        os.chmod(ws.results, 0o755)
    # Before the fix: a NotADirectoryError / PermissionError traceback from taking the results lock.
    assert_clean_failure(proc, ws, [f"Cannot write to {target}: {reason}", "--results-dir", "permissions"])


def test_results_folder_locked_by_another_process(ws):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom harness.lock import results_lock\n"
         "with results_lock(sys.argv[1], 'bench run --methods sft (held by the test)'):\n"
         "    print('locked', flush=True)\n    time.sleep(120)\n", str(ws.results)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = bench("leaderboard", "--results-dir", str(ws.results), "--leaderboard-dir", str(ws.boards))
    finally:
        holder.kill()
        holder.wait()
    assert_clean_failure(proc, ws, ["in use by another bench process", f"pid {holder.pid}",
                                    "bench run --methods sft (held by the test)", "another --results-dir"], code=75)


# ---------------------------------------------------------------- judges that cannot be used

JUDGE_ARGS = ["--benchmarks", "mt_bench", "--run", RUN, "--rows", "teacher", "--limit", "1", "--max-new-tokens",
              "4", "--judge-max-tokens", "8"]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: connections are refused


def judge_env() -> dict:
    return {"OPENAI_API_KEY": "sk-dummy-bad-input", "OMP_NUM_THREADS": "1"}


def answer_stages(ws: Workspace) -> dict:
    return {p: p.read_bytes() for p in (ws.cache / "answers").glob("*/answers.json")
            if p.parent.name != "4567cdef"}


@pytest.mark.slow  # loads the 135M teacher to answer one question
def test_unreachable_judge_fails_clearly_and_keeps_the_answers(ws, shared_dir):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    proc = bench("eval", *JUDGE_ARGS, "--judge", "openai:gpt-4o", "--judge-base-url", url,
                 "--data-dir", str(shared_dir), *ws.folders(), env=judge_env())
    # Before the fix: exit 0 after every call failed, an MT-Bench result with score None written as if judged.
    assert_clean_failure(proc, ws, [f"The judge 'gpt-4o' at {url} cannot be used", "connection",
                                    "Check that a server is running there", "run the same command again",
                                    "cached"], code=69)
    assert not (ws.results / PAIR / RUN / "teacher" / "benchmarks").exists()  # no result as if judged
    assert "MT-Bench turn" in proc.stderr  # the answers were generated before the judge was called
    answers = answer_stages(ws)
    assert len(answers) == 1, "the teacher's answers were generated and kept as a finished stage"
    assert (next(iter(answers)).parent / "DONE").exists()

    # The next run finds those answers: no generation, straight to the judge (here one that talks nonsense,
    # which is a judge's right: its verdicts are counted as unparsed and reported, and the command succeeds).
    server = JudgeServer(chat_completion("I like turtles."))
    try:
        again = bench("eval", *JUDGE_ARGS, "--judge", "openai:gpt-4o", "--judge-base-url", server.url,
                      "--data-dir", str(shared_dir), *ws.folders(), env=judge_env())
    finally:
        server.close()
    assert again.returncode == 0, again.stderr
    assert "MT-Bench turn" not in again.stderr
    assert answer_stages(ws) == answers
    assert "0 judgments, 2 unparsed (2 judge calls, 0 cached)" in again.stderr
    result = json.loads((ws.results / PAIR / RUN / "teacher" / "benchmarks" / "mt_bench.json").read_text())
    assert result["metrics"]["n_failed"] == 2 and result["metrics"]["score"] is None
    assert len(server.requests) == 2
    assert not ws.lost(appended_ok=(ws.cache / "judgments" / "judgments.jsonl",))


@pytest.mark.slow  # loads the 135M teacher to answer one question
@pytest.mark.parametrize(("reply", "content_type", "needle"), [
    ("<html><body>Welcome to the proxy</body></html>", "text/html", "Welcome to the proxy"),
    (json.dumps({"object": "list", "data": []}), "application/json", "malformed response"),
])
def test_judge_that_answers_garbage_is_an_error(ws, shared_dir, reply, content_type, needle):
    server = JudgeServer(reply, content_type)
    try:
        proc = bench("eval", *JUDGE_ARGS, "--judge", "openai:gpt-4o", "--judge-base-url", server.url,
                     "--data-dir", str(shared_dir), *ws.folders(), env=judge_env())
    finally:
        server.close()
    # Before the fix: exit 0 with every judgment recorded as failed. A 200 that is no chat completion means
    # the URL is not an OpenAI-compatible endpoint; the client does not retry a 200, and neither do we.
    assert_clean_failure(proc, ws, ["cannot be used: malformed response", needle, "chat-completions API",
                                    "ends in /v1"], code=69)
    assert 1 <= len(server.requests) <= 2  # the call(s) in flight, then no more
    assert len(answer_stages(ws)) == 1
