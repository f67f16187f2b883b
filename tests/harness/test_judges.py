"""Judges against a real OpenAI-compatible HTTP server on loopback that answers, rate-limits, fails, stalls and
talks garbage on purpose; the judgment cache; folding a system prompt for judges without one."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harness.errors import BenchError
from harness.judges import Decoding, JudgmentCache, OpenAIJudge, fold_system, judge_all

SECRET = "sk-test-do-not-store-3141592653"


class Script:
    """What the server does for each request, in order; "ok" once the script runs out."""

    def __init__(self, steps=()):
        self.steps = list(steps)
        self.seen: list[dict] = []
        self.always_fail: set[str] = set()  # message contents answered with 500 every time
        self.lock = threading.Lock()

    def next(self, request: dict) -> str:
        with self.lock:
            self.seen.append(request)
            if request["messages"][-1]["content"] in self.always_fail:
                return "500"
            return self.steps.pop(0) if self.steps else "ok"


def completion(request: dict) -> dict:
    """A chat completion whose text echoes the last message and whose first token's top log-probs are m, M."""
    body = {"id": "x", "object": "chat.completion", "created": 0, "model": request["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "verdict: " + request["messages"][-1]["content"]}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    if request.get("logprobs"):
        top = [{"token": "m", "logprob": -0.25, "bytes": None}, {"token": "M", "logprob": -1.5, "bytes": None}]
        body["choices"][0]["logprobs"] = {"content": [{"token": "m", "logprob": -0.25, "bytes": None,
                                                       "top_logprobs": top[: request["top_logprobs"]]}]}
    return body


@pytest.fixture
def server():
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            request["_auth"] = self.headers.get("Authorization")
            action = script.next(request)
            if action == "slow":
                time.sleep(1.5)
                action = "ok"
            if action == "ok":
                payload, status = json.dumps(completion(request)).encode(), 200
            elif action == "garbage":
                payload, status = json.dumps({"choices": []}).encode(), 200
            elif action == "no-logprobs":  # what transformers serve does: the field is ignored
                payload, status = json.dumps(completion({**request, "logprobs": False})).encode(), 200
            else:
                payload, status = json.dumps({"error": {"message": action}}).encode(), int(action)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if status == 429:
                self.send_header("retry-after-ms", "10")
            self.end_headers()
            self.wfile.write(payload)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield script, f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


MESSAGES = [{"role": "system", "content": "Be a judge."}, {"role": "user", "content": "Rate this."}]


def make_judge(url, monkeypatch, **kw):
    monkeypatch.setenv("BENCH_TEST_KEY", SECRET)
    return OpenAIJudge("judge-model", base_url=url, api_key_env="BENCH_TEST_KEY", **{"max_retries": 2, **kw})


def test_text_and_first_token_logprobs(server, monkeypatch):
    script, url = server
    judge = make_judge(url, monkeypatch)
    out = judge.judge(MESSAGES, Decoding(temperature=1.0, max_tokens=1, top_logprobs=5))
    assert out.error is None and out.text == "verdict: Rate this."
    assert out.top_logprobs == [("m", -0.25), ("M", -1.5)]
    sent = script.seen[0]
    assert sent["messages"] == MESSAGES and sent["temperature"] == 1.0 and sent["max_tokens"] == 1
    assert sent["logprobs"] is True and sent["top_logprobs"] == 5
    assert sent["_auth"] == f"Bearer {SECRET}"  # the key reaches the server ...


def test_rate_limit_is_retried(server, monkeypatch):
    script, url = server
    script.steps = ["429", "429"]
    out = make_judge(url, monkeypatch).judge(MESSAGES, Decoding())
    assert out.error is None and len(script.seen) == 3


def test_server_errors_are_retried_then_reported(server, monkeypatch):
    script, url = server
    script.steps = ["500", "503"]
    assert make_judge(url, monkeypatch).judge(MESSAGES, Decoding()).error is None
    script.steps, script.seen = ["500", "500", "500"], []
    out = make_judge(url, monkeypatch).judge(MESSAGES, Decoding())
    assert out.error.startswith("HTTP 500") and len(script.seen) == 3  # 1 call + max_retries 2


def test_timeout_is_retried_then_reported(server, monkeypatch):
    script, url = server
    script.steps = ["slow"]
    assert make_judge(url, monkeypatch, timeout=0.5).judge(MESSAGES, Decoding()).error is None
    script.steps, script.seen = ["slow"] * 3, []
    out = make_judge(url, monkeypatch, timeout=0.5, max_retries=1).judge(MESSAGES, Decoding())
    assert out.error.startswith("connection") and len(script.seen) == 2


def test_logprobs_asked_for_and_not_returned_is_an_error_so_it_is_never_cached(server, monkeypatch, tmp_path):
    script, url = server
    script.steps = ["no-logprobs", "ok"]
    judge = make_judge(url, monkeypatch)
    cache = JudgmentCache(tmp_path / "j.jsonl")
    decoding = Decoding(temperature=1.0, max_tokens=1, top_logprobs=5)
    results, counts = judge_all(judge, [MESSAGES], decoding, cache)
    assert "returned no logprobs" in results[0].error and counts["failed"] == 1 and len(cache) == 0
    results, counts = judge_all(judge, [MESSAGES], decoding, cache)  # tried again, and this time it works
    assert results[0].top_logprobs == [("m", -0.25), ("M", -1.5)] and counts == {"cached": 0, "called": 1,
                                                                                 "failed": 0}


def test_a_malformed_reply_is_an_error_not_a_crash(server, monkeypatch):
    script, url = server
    script.steps = ["garbage"]
    out = make_judge(url, monkeypatch).judge(MESSAGES, Decoding())
    assert out.error.startswith("malformed")


def test_missing_key_for_the_public_api_is_a_clear_error(monkeypatch):
    from harness.errors import BenchError

    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(BenchError, match="NO_SUCH_KEY"):
        OpenAIJudge("gpt-4-1106-preview", api_key_env="NO_SUCH_KEY").client()


def test_judge_all_caches_resumes_and_never_stores_the_key(server, monkeypatch, tmp_path):
    script, url = server
    judge = make_judge(url, monkeypatch, concurrency=3)
    requests = [[{"role": "user", "content": f"q{i}"}] for i in range(5)]
    cache = JudgmentCache(tmp_path / "judgments.jsonl")
    script.always_fail = {"q3"}  # fails through all its retries
    first, counts = judge_all(judge, requests, Decoding(), cache)
    assert counts["called"] == 5 and counts["failed"] == 1 and first[3].error.startswith("HTTP 500")
    assert sum(j.error is None for j in first) == 4 and len(cache) == 4  # failures are not cached
    # A new process (new cache object) resumes: only the failed request is made again.
    script.always_fail = set()
    calls_before = len(script.seen)
    again, counts = judge_all(judge, requests, Decoding(), JudgmentCache(tmp_path / "judgments.jsonl"))
    assert counts == {"cached": 4, "called": 1, "failed": 0}
    assert len(script.seen) == calls_before + 1
    assert [j.text for j in again] == [f"verdict: q{i}" for i in range(5)]
    # Nothing the judge wrote contains the key ... and a different decoding is a different judgment.
    assert SECRET not in (tmp_path / "judgments.jsonl").read_text()
    assert SECRET not in json.dumps(judge.identity())
    _, counts = judge_all(judge, requests[:1], Decoding(temperature=0.7), JudgmentCache(tmp_path / "judgments.jsonl"))
    assert counts["called"] == 1


def test_a_line_cut_short_by_a_kill_is_ignored(tmp_path, server, monkeypatch):
    _, url = server
    judge = make_judge(url, monkeypatch)
    path = tmp_path / "j.jsonl"
    cache = JudgmentCache(path)
    judge_all(judge, [[{"role": "user", "content": "a"}]], Decoding(), cache)
    with open(path, "a") as f:
        f.write('{"key": "abc", "judgment": {"te')  # a write interrupted mid-line
    assert len(JudgmentCache(path)) == 1


def test_cache_key_depends_on_judge_messages_and_decoding(monkeypatch):
    a = OpenAIJudge("m1", base_url="http://x/v1")
    b = OpenAIJudge("m2", base_url="http://x/v1")
    keys = {JudgmentCache.key(a, MESSAGES, Decoding()), JudgmentCache.key(b, MESSAGES, Decoding()),
            JudgmentCache.key(a, MESSAGES[1:], Decoding()), JudgmentCache.key(a, MESSAGES, Decoding(max_tokens=1))}
    assert len(keys) == 4
    monkeypatch.setenv("OPENAI_API_KEY", "one")
    k1 = JudgmentCache.key(OpenAIJudge("m1", base_url="http://x/v1"), MESSAGES, Decoding())
    monkeypatch.setenv("OPENAI_API_KEY", "two")
    assert JudgmentCache.key(OpenAIJudge("m1", base_url="http://x/v1"), MESSAGES, Decoding()) == k1


def test_fold_system():
    assert fold_system(MESSAGES) == [{"role": "user", "content": "Be a judge.\n\nRate this."}]
    assert fold_system(MESSAGES[1:]) == MESSAGES[1:]
    assert fold_system(MESSAGES[:1]) == [{"role": "user", "content": "Be a judge."}]


@pytest.fixture(scope="module")
def smollm2_judge():
    from harness.judges import TransformersJudge
    from harness.models import ModelSpec
    from harness.pairs import SMOLLM2_GGUF

    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return TransformersJudge(ModelSpec(SMOLLM2_GGUF), device="cpu")


def test_local_judge_logprobs_and_text_are_the_models_own(smollm2_judge):
    """The real SmolLM2 as judge: the first token's top log-probs equal an independent forward pass, and the text
    is the model's greedy continuation."""
    import torch

    messages = [{"role": "system", "content": "Answer with one letter."},
                {"role": "user", "content": "Which is larger, A: 3 or B: 7?"}]
    out = smollm2_judge.judge(messages, Decoding(temperature=0.0, max_tokens=4, top_logprobs=5))
    model, tok = smollm2_judge.load()
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, -1].double(), -1)
        greedy = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4,
                                do_sample=False, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:]
    values, indices = logp.topk(5)
    assert [t for t, _ in out.top_logprobs] == [tok.decode([int(i)]) for i in indices]
    assert [v for _, v in out.top_logprobs] == pytest.approx(values.tolist(), abs=1e-4)
    assert out.text == tok.decode(greedy, skip_special_tokens=True).strip()
    assert out.error is None and smollm2_judge.identity()["kind"] == "transformers"


def test_constrained_verdict_scores_each_choice_like_a_full_forward(smollm2_judge):
    """Each choice's log-probability (prompt run once, its cache shared) equals a separate forward of the prompt,
    the prefix and that choice; the reply is the prefix plus the best choice, which upstream parsers read."""
    import torch

    messages = [{"role": "system", "content": "Rate the answer."},
                {"role": "user", "content": "Q: 2+2? A: 4. Give a rating from 1 to 10."}]
    choices = tuple(f" [[{k}]]" for k in range(1, 11))
    out = smollm2_judge.judge(messages, Decoding(prefix="Rating:", choices=choices))
    model, tok = smollm2_judge.load()
    context = tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + "Rating:",
                  add_special_tokens=False)["input_ids"]
    expected = []
    for c in choices:
        option = tok(c, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([context + option])).logits[0].double(), -1)
        expected.append(sum(float(logp[len(context) - 1 + j, t]) for j, t in enumerate(option)))
    assert [c for c, _ in out.top_logprobs] == list(choices)
    assert [v for _, v in out.top_logprobs] == pytest.approx(expected, abs=2e-3)
    best = max(range(10), key=expected.__getitem__)
    assert out.text == "Rating:" + choices[best]
    from harness.benchmarks.mt_bench import parse_rating

    assert parse_rating(out.text) == best + 1


def test_constrained_decoding_keys_differ_and_free_keys_are_unchanged():
    judge = OpenAIJudge("m", base_url="http://127.0.0.1:9/v1")
    free = Decoding(temperature=0.0, max_tokens=8)
    assert free.to_dict() == {"temperature": 0.0, "max_tokens": 8, "top_logprobs": 0}
    constrained = Decoding(temperature=0.0, max_tokens=8, prefix="R:", choices=("1", "2"))
    assert JudgmentCache.key(judge, MESSAGES, free) != JudgmentCache.key(judge, MESSAGES, constrained)
    with pytest.raises(BenchError, match="local judge"):
        judge.judge(MESSAGES, constrained)
