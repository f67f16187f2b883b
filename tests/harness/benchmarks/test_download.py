"""Benchmark downloads against a real HTTP server on 127.0.0.1 serving the shared files at their upstream paths."""

from __future__ import annotations

import functools
import hashlib
import http.server
import re
import shutil
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from harness.benchmarks import alpaca_eval, arena_hard, download, mt_bench
from harness.errors import BenchError

ALL = [(name, r) for name, remotes in download.FILES.items() for r in remotes]


def url_path(remote_url: str) -> str:
    return urlsplit(remote_url).path


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; ``behaviour[path]`` makes a path answer 404, cut the body short, or serve other bytes."""

    requests: list[str]
    behaviour: dict[str, str]

    def do_GET(self):
        self.requests.append(self.path)
        mode = self.behaviour.get(self.path)
        if mode == "404":
            self.send_error(404, "Not Found")
        elif mode == "drop":  # promise the whole file, send a part, hang up
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 1000)
            self.wfile.flush()
            self.close_connection = True
        elif mode == "garbled":
            body = b"<html>not the file</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture()
def server(tmp_path, shared_dir, monkeypatch):
    """The shared benchmark files copied to their upstream URL paths, served on a free loopback port."""
    tree = tmp_path / "upstream"
    for _, remote in ALL:
        target = tree / url_path(remote.url).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_dir / remote.path, target)
    handler = type("H", (Handler,), {"requests": [], "behaviour": {}})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(handler, directory=str(tree)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.setenv(download.DATA_MIRROR_ENV, base)
    monkeypatch.setattr(download, "RETRY_PAUSE_S", 0.0)
    handler.base, handler.tree = base, tree
    yield handler
    httpd.shutdown()
    httpd.server_close()


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".part")]


# ---------------------------------------------------------------- the table


def test_table_covers_the_shared_layout_with_pinned_https_urls(shared_dir):
    shared = {str(p.relative_to(shared_dir)) for p in (shared_dir / "benchmarks").rglob("*")
              if p.is_file() and "conformance" not in p.parts}
    assert {r.path for _, r in ALL} == shared
    for _, remote in ALL:
        assert remote.url.startswith("https://")
        assert re.search(r"/[0-9a-f]{40}/", remote.url), f"{remote.url} is not pinned to a commit"
    # Where a digest is recorded it is that of the shared copy, so a download gives exactly what tests read.
    for _, remote in ALL:
        if remote.sha256:
            assert hashlib.sha256((shared_dir / remote.path).read_bytes()).hexdigest() == remote.sha256
    assert [r.path for _, r in ALL if r.optional] == ["benchmarks/arena_hard_v0.1/model_answer/gpt-4-0613.jsonl",
                                                      "benchmarks/arena_hard_v0.1/model_answer/gpt-3.5-turbo-0125.jsonl"]


def test_mirror_replaces_scheme_and_host_only(monkeypatch):
    url = "https://raw.githubusercontent.com/o/r/0123/a/b.json"
    monkeypatch.delenv("X_MIRROR", raising=False)
    assert download.mirrored(url, "X_MIRROR") == url
    monkeypatch.setenv("X_MIRROR", "http://127.0.0.1:9/")
    assert download.mirrored(url, "X_MIRROR") == "http://127.0.0.1:9/o/r/0123/a/b.json"


# ---------------------------------------------------------------- downloads


def test_downloads_every_benchmark_byte_identical_then_reads_nothing_again(server, shared_dir, tmp_path):
    cache = tmp_path / "cache"
    for benchmark in download.FILES:
        assert download.ensure_benchmark_files(benchmark, None, cache) == cache / "data"
    root = cache / "data"
    for _, remote in ALL:
        assert (root / remote.path).read_bytes() == (shared_dir / remote.path).read_bytes(), remote.path
    assert sorted(server.requests) == sorted(url_path(r.url) for _, r in ALL)
    assert leftovers(root) == []
    # The benchmarks' own loaders read the downloaded root.
    assert len(mt_bench.load_questions(root)) == 80 and len(arena_hard.load_questions(root)) == 500
    assert len(alpaca_eval.load_eval_set(root)) == 805 and arena_hard.load_judge_config(root)["judge_model"]
    server.requests.clear()
    for benchmark in download.FILES:
        download.ensure_benchmark_files(benchmark, None, cache)
    assert server.requests == []


def test_only_missing_files_are_fetched(server, shared_dir, tmp_path):
    root = tmp_path / "cache" / "data"
    have = root / "benchmarks/mt_bench/question.jsonl"
    have.parent.mkdir(parents=True)
    shutil.copyfile(shared_dir / "benchmarks/mt_bench/question.jsonl", have)
    download.ensure_benchmark_files("mt_bench", None, tmp_path / "cache")
    assert sorted(server.requests) == sorted(url_path(r.url) for r in download.FILES["mt_bench"][1:])


def test_data_dir_is_returned_as_is_without_a_request(server, shared_dir, tmp_path):
    for given in (shared_dir, tmp_path / "empty"):
        assert download.ensure_benchmark_files("arena_hard", given, tmp_path / "cache") is given
    assert server.requests == [] and not (tmp_path / "cache").exists() and not (tmp_path / "empty").exists()


@pytest.mark.parametrize("mode", ["404", "drop", "garbled"])
def test_a_failed_file_names_file_url_and_fix_and_leaves_no_part(server, tmp_path, mode):
    first, second, third = download.FILES["mt_bench"]
    server.behaviour[url_path(second.url)] = mode
    root = tmp_path / "cache" / "data"
    t0 = time.perf_counter()
    with pytest.raises(BenchError) as e:
        download.ensure_benchmark_files("mt_bench", None, tmp_path / "cache")
    message = str(e.value)
    assert second.path in message and server.base + url_path(second.url) in message
    assert "--data-dir" in message and "../shared" in message
    assert {"404": "HTTP 404", "drop": "connection closed after", "garbled": "sha256"}[mode] in message
    assert (root / first.path).is_file()  # downloaded before the failure: kept
    assert not (root / second.path).exists() and not (root / third.path).exists()
    assert leftovers(root) == []
    tries = server.requests.count(url_path(second.url))
    assert tries == (download.ATTEMPTS if mode == "drop" else 1)  # a 404 or a wrong digest is not retried
    assert time.perf_counter() - t0 < 10
    # The server is fixed: the next call fetches only what is missing.
    server.behaviour.clear()
    server.requests.clear()
    download.ensure_benchmark_files("mt_bench", None, tmp_path / "cache")
    assert server.requests == [url_path(second.url), url_path(third.url)]


def test_optional_answers_may_fail(server, tmp_path):
    optional = [r for r in download.FILES["arena_hard"] if r.optional]
    for remote in optional:
        server.behaviour[url_path(remote.url)] = "404"
    root = download.ensure_benchmark_files("arena_hard", None, tmp_path / "cache")
    assert all(not (root / r.path).exists() for r in optional)
    assert len(arena_hard.load_answers(root, "gpt-4-0314")) == 500


def test_unreachable_host_and_unknown_benchmark(tmp_path, monkeypatch):
    monkeypatch.setenv(download.DATA_MIRROR_ENV, "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setattr(download, "RETRY_PAUSE_S", 0.0)
    with pytest.raises(BenchError, match="after 3 attempts.*--data-dir"):
        download.ensure_benchmark_files("alpaca_eval", None, tmp_path)
    assert list(tmp_path.rglob("*.json")) == [] and leftovers(tmp_path) == []
    with pytest.raises(BenchError, match="known: mt_bench, arena_hard, alpaca_eval"):
        download.ensure_benchmark_files("mt-bench", None, tmp_path)


# ---------------------------------------------------------------- the official AlpacaEval LC's hub files


def test_lc_files_unreachable_give_none_quickly(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "RETRY_PAUSE_S", 0.0)
    monkeypatch.setenv(download.HF_MIRROR_ENV, "http://127.0.0.1:9")
    t0 = time.perf_counter()
    assert download.fetch_alpaca_eval_lc_files(tmp_path / "cache") is None
    assert time.perf_counter() - t0 < 5
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    # Offline by the hub's own switch: no attempt at all.
    monkeypatch.delenv(download.HF_MIRROR_ENV)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(download, "download", lambda *a, **k: pytest.fail("no download expected"))
    assert download.fetch_alpaca_eval_lc_files(tmp_path / "cache") is None


@pytest.fixture()
def lc_server(server, monkeypatch):
    """The loopback server also serving made-up LC files (upstream's columns) at their hub paths; their digests
    replace the real ones, which made-up files cannot match."""
    folder = server.tree / url_path(download._ALPACA_HUB).lstrip("/")
    folder.mkdir(parents=True, exist_ok=True)
    texts = {"df_gamed.csv": "model,index,preference,std_delta_len,instruction_difficulty,not_gamed_baseline\n"
                             "gpt4_1106_preview_verbose,0,0.7,-0.5,0.1,False\n",
             "instruction_difficulty.csv": "index,instruction_difficulty\n0,0.1\n"}
    for name, text in texts.items():
        (folder / name).write_text(text)
        monkeypatch.setitem(download.LC_FILES, name, hashlib.sha256(text.encode()).hexdigest())
    monkeypatch.setenv(download.HF_MIRROR_ENV, server.base)
    return server


def test_lc_files_download_through_the_mirror_once(lc_server, tmp_path):
    paths = download.fetch_alpaca_eval_lc_files(tmp_path / "cache")
    assert set(paths) == {"df_gamed.csv", "instruction_difficulty.csv"}
    assert all(p.parent == tmp_path / "cache" / "data" / download.LC_SUBDIR for p in paths.values())
    assert paths["df_gamed.csv"].read_text().startswith("model,index,preference")
    assert sorted(lc_server.requests) == sorted(url_path(download._ALPACA_HUB) + n for n in paths)
    lc_server.requests.clear()
    assert download.fetch_alpaca_eval_lc_files(tmp_path / "cache") == paths
    assert lc_server.requests == []


def test_lc_files_in_the_data_dir_are_used_without_a_request(lc_server, tmp_path):
    folder = tmp_path / "mine" / download.LC_SUBDIR
    folder.mkdir(parents=True)
    for name in download.LC_FILES:
        (folder / name).write_text("a user's copy\n")
    paths = download.fetch_alpaca_eval_lc_files(tmp_path / "cache", data_dir=tmp_path / "mine")
    assert paths == {name: folder / name for name in download.LC_FILES} and lc_server.requests == []


def test_lc_file_with_a_wrong_digest_is_refused(lc_server, tmp_path, monkeypatch):
    monkeypatch.setitem(download.LC_FILES, "instruction_difficulty.csv", "0" * 64)
    assert download.fetch_alpaca_eval_lc_files(tmp_path / "cache") is None
    folder = tmp_path / "cache" / "data" / download.LC_SUBDIR
    assert not (folder / "instruction_difficulty.csv").exists() and leftovers(tmp_path) == []
