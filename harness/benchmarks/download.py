"""Benchmark data files: the upstream URL of each, and downloading the missing ones into the cache.

The project ships none of these files. Given ``--data-dir`` it reads that folder (tests and CI use ../shared) and
never writes to it. Without it, ``ensure_benchmark_files`` downloads what a benchmark needs into
``<cache>/data``, laid out like ../shared (``benchmarks/mt_bench/question.jsonl``, ...), and the benchmark reads
that folder. Every URL is pinned to a commit or a hub revision, so a download gives the bytes the harness was
checked against rather than whatever a branch holds later; a known sha256 is checked before a file is kept.

Environment: ``BENCH_DATA_MIRROR`` replaces the scheme and host of every URL in ``FILES`` (a mirror, or a
loopback server in tests); ``BENCH_HF_MIRROR`` (else ``HF_ENDPOINT``) does the same for the hub files of the
official AlpacaEval LC, which are skipped under ``HF_HUB_OFFLINE=1`` unless ``BENCH_HF_MIRROR`` is set.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from harness.errors import BenchError

DATA_MIRROR_ENV = "BENCH_DATA_MIRROR"
HF_MIRROR_ENV = "BENCH_HF_MIRROR"
TIMEOUT_S = 60  # per connection attempt and per read
ATTEMPTS = 3  # one try and two retries; a 4xx answer other than 429 is final
RETRY_PAUSE_S = 2.0  # times the attempt number
PROGRESS_FROM_BYTES = 1 << 20  # a progress bar for files of 1 MiB and more
FIX = "pass --data-dir <folder holding benchmarks/>, e.g. a copy of ../shared"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Remote:
    path: str  # under the data root, as in ../shared
    url: str
    sha256: str | None = None  # checked before the file is kept; None where no upstream digest was found
    optional: bool = False  # a failure is logged and skipped


# MT-Bench. A public MT-Bench runner pins FastChat 587d5cf and checks these three files by sha256; its digests
# equal those of the ../shared copies (question 119565ad..., prompts fd283293..., references f957a5bc...).
_FASTCHAT = ("https://raw.githubusercontent.com/lm-sys/FastChat/587d5cfa1609a43d192cedb8441cac3c17db105d/"
             "fastchat/llm_judge/data/")
# Arena-Hard v0.1 data: 196f6b8 is the v2.0 HEAD read for shared/reference/benchmarks.md. The shared copies use
# the newer schema ({uid, prompt}; answers as messages) that v2.0's data/arena-hard-v0.1/ has (public code reads
# question.jsonl and model_answer/gpt-4-0314.jsonl from main in that schema); v0.1-era commits hold the older
# {question_id, turns} files. The hub dataset lmarena-ai/arena-hard-auto carries the same paths. Not fetched from
# here and no upstream digest found: presence of the two optional answers and byte identity are unverified.
_ARENA = ("https://raw.githubusercontent.com/lmarena/arena-hard-auto/196f6b826783b3da7310e361a805fa36f0be83f3/"
          "data/arena-hard-v0.1/")
# The v0.1 judge config left the repository with v2.0 (config/arena-hard-v0.1.yaml replaced it, in another
# format). 4ce0f00 is a v0.1-era commit whose gen_judgment.py reads number_of_judgment_attempts, which the shared
# copy has and the earliest judge_config.yaml lacks. Byte identity unverified.
_ARENA_CONFIG = ("https://raw.githubusercontent.com/lmarena/arena-hard-auto/4ce0f0087776158a4461162cbef1d9bb5464bb57/"
                 "config/judge_config.yaml")
# AlpacaEval: the hub dataset upstream's own code loads (config alpaca_eval_gpt4_baseline) at a revision for which
# a public runner records the digests of this file, df_gamed.csv and instruction_difficulty.csv; the eval-set
# digest equals that of the ../shared copy, which the shared README traces to the same rows on GitHub
# (results/gpt4_1106_preview/model_outputs.json, for which no digest was found).
_ALPACA_HUB = ("https://huggingface.co/datasets/tatsu-lab/alpaca_eval/resolve/"
               "2edc6fad8be6b14ea7230aabfd08188da6b8b814/")

FILES: dict[str, tuple[Remote, ...]] = {
    "mt_bench": (
        Remote("benchmarks/mt_bench/question.jsonl", _FASTCHAT + "mt_bench/question.jsonl",
               "119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7"),
        Remote("benchmarks/mt_bench/judge_prompts.jsonl", _FASTCHAT + "judge_prompts.jsonl",
               "fd283293406d024f44c174b094ef48031d0687a4682fd3a56b29b138f80281b6"),
        Remote("benchmarks/mt_bench/reference_answer/gpt-4.jsonl", _FASTCHAT + "mt_bench/reference_answer/gpt-4.jsonl",
               "f957a5bc977badb66885ec970e6cd08527845780313f0995764260e5777b9b3f"),
    ),
    "arena_hard": (
        Remote("benchmarks/arena_hard_v0.1/question.jsonl", _ARENA + "question.jsonl"),
        Remote("benchmarks/arena_hard_v0.1/model_answer/gpt-4-0314.jsonl", _ARENA + "model_answer/gpt-4-0314.jsonl"),
        Remote("benchmarks/arena_hard_v0.1/judge_config.yaml", _ARENA_CONFIG),
        Remote("benchmarks/arena_hard_v0.1/model_answer/gpt-4-0613.jsonl", _ARENA + "model_answer/gpt-4-0613.jsonl",
               optional=True),
        Remote("benchmarks/arena_hard_v0.1/model_answer/gpt-3.5-turbo-0125.jsonl",
               _ARENA + "model_answer/gpt-3.5-turbo-0125.jsonl", optional=True),
    ),
    "alpaca_eval": (
        Remote("benchmarks/alpaca_eval/gpt4_1106_preview_model_outputs.json",
               _ALPACA_HUB + "alpaca_eval_gpt4_baseline.json",
               "83db546b872ddebee8965fd05fa48461ee3c32bc695c62fb57f2d214ff741ec4"),
    ),
}

# The official AlpacaEval LC's hub files (same revision and source of digests as the eval set above).
LC_SUBDIR = "benchmarks/alpaca_eval"
LC_FILES = {
    "df_gamed.csv": "97aeec3f1c7de6dee6fd31fe66f1702623f4614c3efe1c6fc5f4927cd5fd674d",
    "instruction_difficulty.csv": "e28d875bb334f75e17acd1e4ed659b261860e3db379cf5de29060301bed0a18b",
}


class _Failed(Exception):
    """A download that did not give the file; the message says why."""


def mirrored(url: str, env: str, fallback_env: str | None = None) -> str:
    """``url`` with its scheme and host replaced by ``$env`` (else ``$fallback_env``) when set."""
    base = os.environ.get(env) or (os.environ.get(fallback_env) if fallback_env else None)
    if not base:
        return url
    parts = urlsplit(url)
    return base.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")


def _fetch_once(url: str, dest: Path, sha256: str | None) -> None:
    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        digest, got = hashlib.sha256(), 0
        request = urllib.request.Request(url, headers={"User-Agent": "bench-harness"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=dest.name, leave=False,
                      disable=(size or 0) < PROGRESS_FROM_BYTES) as bar:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    digest.update(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
        if size is not None and got != size:
            raise ConnectionError(f"connection closed after {got} of {size} bytes")
        if sha256 is not None and digest.hexdigest() != sha256:
            raise _Failed(f"its sha256 is {digest.hexdigest()}, not the expected {sha256}")
        os.replace(tmp, dest)  # atomic: the file is whole or absent, never half written
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def download(url: str, dest: Path, sha256: str | None = None) -> None:
    """Fetch ``url`` into ``dest`` (temp file, then rename), retrying network errors and 5xx answers."""
    reason = "no attempt"
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(RETRY_PAUSE_S * attempt)
        try:
            return _fetch_once(url, dest, sha256)
        except urllib.error.HTTPError as e:
            reason = f"HTTP {e.code} {e.reason}"
            if e.code < 500 and e.code != 429:
                raise _Failed(reason) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = str(getattr(e, "reason", None) or e) or type(e).__name__
    raise _Failed(f"{reason} (after {ATTEMPTS} attempts)")


def ensure_benchmark_files(benchmark: str, data_dir: Path | None, cache_dir: Path) -> Path:
    """The data root to read ``benchmark``'s files from.

    ``data_dir`` when given, returned unchanged (nothing is downloaded into a user's folder). Otherwise
    ``cache_dir / "data"``, after downloading the files of ``benchmark`` it lacks; files already there (or
    downloaded before a failure) are kept. A failed required file raises ``BenchError`` naming file, URL and fix.
    """
    if data_dir is not None:
        return data_dir
    if benchmark not in FILES:
        raise BenchError(f"No download list for benchmark {benchmark!r}; known: {', '.join(FILES)}.")
    root = Path(cache_dir).expanduser() / "data"
    for remote in FILES[benchmark]:
        dest = root / remote.path
        if dest.is_file():
            continue
        url = mirrored(remote.url, DATA_MIRROR_ENV)
        log.info("Downloading %s from %s", remote.path, url)
        try:
            download(url, dest, remote.sha256)
        except _Failed as e:
            if remote.optional:
                log.warning("Skipped optional %s: could not download %s (%s).", remote.path, url, e)
                continue
            raise BenchError(
                f"Could not download {remote.path} ({benchmark}) from {url}: {e}. Files already downloaded stay in "
                f"{root}. Without network (or to use your own copy), {FIX}; or set {DATA_MIRROR_ENV} to a mirror "
                "of the upstream hosts.") from None
    return root


def fetch_alpaca_eval_lc_files(cache_dir: Path, data_dir: Path | None = None) -> dict[str, Path] | None:
    """``{name: path}`` of ``df_gamed.csv`` and ``instruction_difficulty.csv`` (HF dataset tatsu-lab/alpaca_eval),
    which the official length-controlled win rate needs; None, with a warning, when they cannot be had.

    Looks in ``<data_dir>/benchmarks/alpaca_eval/`` first (copies a user put there are used as they are), then in
    the cache, and downloads the missing ones into the cache, digest-checked. Never raises for network trouble.
    """
    cache = Path(cache_dir).expanduser() / "data" / LC_SUBDIR
    for folder in ([Path(data_dir) / LC_SUBDIR] if data_dir is not None else []) + [cache]:
        paths = {name: folder / name for name in LC_FILES}
        if all(p.is_file() for p in paths.values()):
            return paths
    if not os.environ.get(HF_MIRROR_ENV) and os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        log.warning("HF_HUB_OFFLINE is set: the official AlpacaEval LC files are not downloaded.")
        return None
    paths = {name: cache / name for name in LC_FILES}
    for name, sha256 in LC_FILES.items():
        if paths[name].is_file():
            continue
        url = mirrored(_ALPACA_HUB + name, HF_MIRROR_ENV, "HF_ENDPOINT")
        try:
            download(url, paths[name], sha256)
        except _Failed as e:
            log.warning("Could not download %s from %s (%s): no official AlpacaEval LC. Put the file in %s to "
                        "compute it offline.", name, url, e, cache)
            return None
    return paths
