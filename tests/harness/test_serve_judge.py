"""End to end: a real OpenAI-compatible server on loopback judges MT-Bench and Arena-Hard through `bench eval`.

The server is `transformers serve` (transformers 5.x, the `[serving]` extra) running the project's embedded
SmolLM2-135M-Instruct, de-quantised once into the model cache by ``harness.models.materialise``. It is started
as a subprocess, pinned to that folder (FORCE_MODEL, so requests must name exactly that path as their
``model``), on CPU in float32, offline. Nothing on the judge path is mocked: ``OpenAIJudge`` talks HTTP to it.

What `transformers serve` 5.23 does, as found while writing this:

- Readiness: ``GET /health``. ``GET /v1/models`` answers 500 when no Hugging Face hub cache folder exists
  (``scan_cache_dir`` raises CacheNotFound), and never lists a FORCE_MODEL folder, so it is no readiness probe.
- A request naming another model than the pinned one gets HTTP 400.
- Log-probs: ``logprobs`` / ``top_logprobs`` are in the chat handler's UNUSED_CHAT_COMPLETION_FIELDS; the server
  logs "Ignoring unsupported fields in the request: {'top_logprobs', 'logprobs'}" and answers without a
  ``logprobs`` field. So it cannot serve AlpacaEval's weighted (log-prob) annotator:
  ``OpenAIJudge.judge(..., Decoding(top_logprobs=5))`` returns the text with ``top_logprobs=None``.
  ``test_serve_ignores_logprobs`` pins that; when it fails, the server has learned log-probs and a real
  first-token top-log-probs test belongs here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cli import main

ROOT = Path(__file__).resolve().parents[2]
PAIR, RUN = "smollm2-135m", "serve-seed0"
# A dummy key, unique per session: it must reach the client and never any file the evaluation writes.
DUMMY_KEY = f"sk-bench-serve-test-{uuid.uuid4().hex}"
STARTUP_TIMEOUT_S = 180.0
LIMIT, ANSWER_TOKENS, JUDGE_TOKENS = 2, 16, 16

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """`transformers serve <folder>` on a free loopback port; ``stop`` and ``ensure_running`` are idempotent."""

    def __init__(self, model_dir: str, log_dir: Path):
        self.model = model_dir
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.startup_s = None
        self._log = None
        self._starts = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        exe = Path(sys.executable).parent / "transformers"
        if not exe.exists():
            pytest.skip(f"no `transformers` console script next to {sys.executable}")
        return [str(exe), "serve", self.model, "--host", "127.0.0.1", "--port", str(self.port),
                "--device", "cpu", "--dtype", "float32", "--no-continuous-batching", "--no-compile"]

    def log_tail(self, n: int = 4000) -> str:
        path = self.log_dir / f"serve-{self._starts}.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"

    def start(self) -> None:
        self._starts += 1
        self.port = free_port()
        # One intra-op thread: the server's inference thread runs one request at a time, and on a small shared CPU
        # an over-subscribed OpenMP pool made a 135M model's decode ten times slower (0.7 s/token against 0.07).
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
               "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1"}
        env.pop("OPENAI_API_KEY", None)  # the server needs no key; only the client sends one
        # A file, not a pipe: a chatty server must never block on a full pipe nobody reads.
        self._log = open(self.log_dir / f"serve-{self._starts}.log", "wb")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     stdin=subprocess.DEVNULL)
        deadline = t0 + STARTUP_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop()
                pytest.fail(f"`transformers serve` exited with code {code} before answering; its log:\n"
                            f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200 and json.loads(r.read()).get("status") == "ok":
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.perf_counter() > deadline:
                self.stop()
                pytest.fail(f"`transformers serve` did not answer GET /health within {STARTUP_TIMEOUT_S:.0f}s; "
                            f"its log:\n{self.log_tail()}")
            time.sleep(0.25)
        self.startup_s = time.perf_counter() - t0
        print(f"transformers serve answered after {self.startup_s:.1f}s: {' '.join(self.command())}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ensure_running(self) -> ServeProcess:
        if not self.running():
            self.start()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # uvicorn shuts down cleanly on SIGTERM
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


@pytest.fixture(scope="module")
def served_model() -> str:
    """The teacher as a safetensors folder (`transformers serve` takes a folder; the GGUF is de-quantised once)."""
    pytest.importorskip("fastapi", reason="transformers serve needs the [serving] extra")
    pytest.importorskip("uvicorn", reason="transformers serve needs the [serving] extra")
    from harness.models import materialise
    from harness.registry import PAIRS

    folder = materialise(PAIRS.get(PAIR).teacher)
    assert (Path(folder) / "config.json").exists() and list(Path(folder).glob("*.safetensors"))
    return folder


@pytest.fixture(scope="module")
def serve_process(served_model, tmp_path_factory):
    server = ServeProcess(served_model, tmp_path_factory.mktemp("serve-logs"))
    yield server
    server.stop()


@pytest.fixture()
def one_thread():
    """The answers are generated in-process while the server idles: one torch thread there too, restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def judge_server(serve_process) -> ServeProcess:
    """The module's server, (re)started if a test stopped it."""
    return serve_process.ensure_running()


def client(server: ServeProcess):
    from openai import OpenAI

    return OpenAI(api_key=DUMMY_KEY, base_url=server.base_url, timeout=60, max_retries=0)


def test_serve_ignores_logprobs(judge_server, monkeypatch):
    """transformers serve 5.23 drops logprobs/top_logprobs (see the module docstring): the raw response has no
    log-probs, and OpenAIJudge reports that as an error (never cached, so AlpacaEval counts the row as missing
    and a re-run against a server that does give log-probs tries again)."""
    from harness.judges import Decoding, OpenAIJudge

    messages = [{"role": "user", "content": "Is the sky blue? Answer yes or no."}]
    raw = client(judge_server).chat.completions.create(model=judge_server.model, messages=messages,
                                                       temperature=1.0, max_tokens=1, logprobs=True,
                                                       top_logprobs=5)
    assert raw.choices[0].logprobs is None
    assert raw.choices[0].message.content  # one real token came back
    monkeypatch.setenv("OPENAI_API_KEY", DUMMY_KEY)
    judge = OpenAIJudge(judge_server.model, base_url=judge_server.base_url)
    out = judge.judge(messages, Decoding(max_tokens=1, temperature=1.0, top_logprobs=5))
    assert out.top_logprobs is None and "returned no logprobs" in out.error
    # A model name the server is not pinned to: an HTTP error recorded on the judgment, no exception.
    other = OpenAIJudge("not-the-served-model", base_url=judge_server.base_url, max_retries=0)
    bad = other.judge(messages, Decoding(max_tokens=1))
    assert bad.text == "" and bad.error.startswith("HTTP 400")


def test_bench_eval_judged_by_transformers_serve(judge_server, shared_dir, tmp_path, monkeypatch, one_thread):
    """`bench eval` on MT-Bench and Arena-Hard (2 questions each, the teacher row) with the served model as an
    openai:<model> judge; then the same command with the server stopped, answered wholly from the caches."""
    from harness.benchmarks import mt_bench
    from harness.judges import Decoding, JudgmentCache, OpenAIJudge

    monkeypatch.setenv("OPENAI_API_KEY", DUMMY_KEY)
    results, cache, boards = tmp_path / "results", tmp_path / "cache", tmp_path / "leaderboards"
    record = ROOT / "results" / PAIR / "smoke-seed0" / "teacher" / "record.json"
    (results / PAIR / RUN / "teacher").mkdir(parents=True)
    shutil.copy(record, results / PAIR / RUN / "teacher" / "record.json")
    base_url, model = judge_server.base_url, judge_server.model
    args = ["eval", "--benchmarks", "mt_bench,arena_hard", "--judge", f"openai:{model}", "--judge-base-url",
            base_url, "--pair", PAIR, "--run", RUN, "--rows", "teacher", "--limit", str(LIMIT),
            "--max-new-tokens", str(ANSWER_TOKENS), "--judge-max-tokens", str(JUDGE_TOKENS),
            "--data-dir", str(shared_dir), "--results-dir", str(results), "--cache-dir", str(cache),
            "--leaderboard-dir", str(boards)]  # bench eval regenerates leaderboards: never the repository's

    t0 = time.perf_counter()
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output + repr(first.exception)
    print(f"first bench eval: {time.perf_counter() - t0:.1f}s\n{first.output}")
    folder = results / PAIR / RUN / "teacher" / "benchmarks"
    identity = {"kind": "openai", "model": model, "base_url": base_url}

    # MT-Bench: 2 questions x 2 turns, one judge call each; unparsed ratings are failures, not crashes.
    mt = json.loads((folder / "mt_bench.json").read_text())
    assert mt["judge"] == identity and mt["official_judge"] is False and mt["verdict"] == "free"
    assert mt["judge_decoding"] == {"temperature": 0.0, "max_tokens": JUDGE_TOKENS, "top_logprobs": 0}
    assert mt["n_questions"] == LIMIT and mt["limit"] == LIMIT
    assert mt["judge_calls"] == {"called": 2 * LIMIT, "cached": 0, "failed": 0}
    mt_lines = [json.loads(x) for x in (folder / "mt_bench_judgments.jsonl").read_text().splitlines()]
    assert len(mt_lines) == 2 * LIMIT and [x["turn"] for x in mt_lines] == [1, 2] * LIMIT
    assert all(x["error"] is None and isinstance(x["judgment"], str) and x["judgment"].strip() for x in mt_lines)
    m = mt["metrics"]
    assert m["n"] + m["n_failed"] == 2 * LIMIT
    assert m["n_failed"] == sum(x["score"] == mt_bench.FAILED for x in mt_lines)
    assert (m["score"] is None) == (m["n"] == 0)

    # Arena-Hard: 2 questions x 2 games (positions swapped); a game without a verdict gets one follow-up call.
    ah = json.loads((folder / "arena_hard.json").read_text())
    assert ah["judge"] == identity and ah["official_judge"] is False
    assert ah["judge_decoding"]["max_tokens"] == JUDGE_TOKENS
    a = ah["metrics"]
    assert a["n_questions"] == LIMIT and a["n_games"] == 2 * LIMIT
    assert 2 * LIMIT <= ah["judge_calls"] <= 4 * LIMIT
    ah_lines = [json.loads(x) for x in (folder / "arena_hard_judgments.jsonl").read_text().splitlines()]
    games = [g for x in ah_lines for g in x["games"]]
    assert len(ah_lines) == LIMIT and len(games) == 2 * LIMIT
    assert all(g["judgment"].strip() for g in games)
    assert a["n_unparsed_games"] == sum(g["verdict"] is None for g in games)
    assert (a["score"] is None) == (a["n_battles"] == 0)

    # Every successful call is in the judgment cache (failures are not cached): none failed.
    judgment_cache = cache / "judgments" / "judgments.jsonl"
    cached_keys = [json.loads(x)["key"] for x in judgment_cache.read_text().splitlines()]
    assert len(cached_keys) == mt["judge_calls"]["called"] + ah["judge_calls"]

    # The stored judge text is what the server says: rebuild one MT-Bench request exactly as bench eval made it
    # (its key is in the cache), send it straight through the openai client at temperature 0, compare.
    line = mt_lines[0]
    question = next(q for q in mt_bench.load_questions(shared_dir) if q["question_id"] == line["question_id"])
    references, _ = mt_bench.load_reference_answers(mt_bench.reference_path(shared_dir))
    name, messages = mt_bench.judge_messages(question, line["answers"], line["turn"],
                                             mt_bench.load_judge_prompts(shared_dir),
                                             references.get(question["question_id"]))
    assert name == line["prompt"]
    decoding = Decoding(temperature=0.0, max_tokens=JUDGE_TOKENS)
    key = JudgmentCache.key(OpenAIJudge(model, base_url=base_url), messages, decoding)
    assert key in cached_keys
    direct = client(judge_server).chat.completions.create(model=model, messages=messages, temperature=0.0,
                                                          max_tokens=JUDGE_TOKENS)
    assert direct.choices[0].message.content == line["judgment"]

    # The dummy key is what the judge's client sends, and it is in no file the evaluation wrote.
    assert OpenAIJudge(model, base_url=base_url).client().api_key == DUMMY_KEY
    written = [p for root in (results, cache, boards) for p in root.rglob("*") if p.is_file()]
    assert judgment_cache in written and folder / "mt_bench.json" in written
    assert any(p.parent == boards and p.suffix == ".md" for p in written)
    leaked = [str(p) for p in written if DUMMY_KEY.encode() in p.read_bytes()]
    assert not leaked, f"the API key was written to {leaked}"

    # The same command with the server gone: answers and judgments all come from the caches.
    before = {p.name: p.read_text() for p in folder.glob("*_judgments.jsonl")}
    judge_server.stop()
    t0 = time.perf_counter()
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0, second.output + repr(second.exception)
    print(f"second bench eval (server stopped): {time.perf_counter() - t0:.1f}s")
    assert f"(0 judge calls, {2 * LIMIT} cached)" in second.output and "(0 judge calls)" in second.output
    assert "MT-Bench turn" not in second.output and "arena_hard answers" not in second.output
    assert json.loads((folder / "mt_bench.json").read_text())["judge_calls"] == {"called": 0, "cached": 2 * LIMIT,
                                                                                 "failed": 0}
    assert json.loads((folder / "arena_hard.json").read_text())["judge_calls"] == 0
    assert {p.name: p.read_text() for p in folder.glob("*_judgments.jsonl")} == before
    assert len(judgment_cache.read_text().splitlines()) == len(cached_keys)
