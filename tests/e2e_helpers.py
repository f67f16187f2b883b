"""What the end-to-end files share: a `tiny` run on the real SmolLM2 pair and real UltraFeedback rows, its records,
outside packages installed for a subprocess, and killing a `bench` process at a chosen moment."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from click.testing import CliRunner

from harness.cli import main

RUN = "tiny-seed0"


def tiny_args(root: Path, shared_dir: Path, methods: list[str] | str) -> list[str]:
    """`bench run` of these methods on the tiny budget with every folder under root."""
    methods = methods if isinstance(methods, str) else ",".join(methods)
    return ["run", "--methods", methods, "--pair", "smollm2-135m", "--budget", "tiny", "--data-dir", str(shared_dir),
            "--results-dir", str(root / "results"), "--leaderboard-dir", str(root / "leaderboards"),
            "--cache-dir", str(root / "cache")]


def tiny_workspace(root: Path, shared_dir: Path, methods: list[str]) -> dict:
    args = tiny_args(root, shared_dir, methods)
    start = time.perf_counter()
    result = CliRunner().invoke(main, args)
    elapsed = time.perf_counter() - start
    assert result.exit_code == 0, result.output + repr(result.exception)
    return {"root": root, "args": args, "first_run_s": elapsed, "output": result.output}


def with_arg(args: list[str], flag: str, value) -> list[str]:
    """A copy of a command line with one flag's value replaced."""
    out = list(args)
    out[out.index(flag) + 1] = str(value)
    return out


def records(root: Path, run: str = RUN) -> dict[str, dict]:
    run_dir = root / "results" / "smollm2-135m" / run
    return {p.parent.name: json.loads(p.read_text()) for p in run_dir.glob("*/record.json")}


def plugin_env(tmp_path: Path, module: str, entry: str, signal: str | None = None) -> dict:
    """The environment of a subprocess that sees tests/fixtures/<module>.py installed as an outside package whose
    `bench.methods` entry point `entry` names it (and its `bench.signals` entry point `signal`, if given)."""
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    shutil.copy(Path(__file__).parent / "fixtures" / f"{module}.py", plugin / f"{module}.py")
    info = plugin / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n")
    signals = f"\n[bench.signals]\n{signal} = {module}\n" if signal else ""
    (info / "entry_points.txt").write_text(f"[bench.methods]\n{entry} = {module}\n{signals}")
    return {**os.environ, "PYTHONPATH": str(plugin)}


def bench(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """`bench` in a fresh interpreter, its output captured."""
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], env=env, capture_output=True, text=True,
                          timeout=900)


def start(args: list[str]) -> tuple[subprocess.Popen, list[bytes]]:
    """A `bench` process whose stderr is collected as it arrives (progress bars end lines with \\r, not \\n)."""
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    chunks: list[bytes] = []

    def pump():
        for chunk in iter(lambda: proc.stderr.read1(4096), b""):
            chunks.append(chunk)

    threading.Thread(target=pump, daemon=True).start()
    return proc, chunks


def kill_when(proc: subprocess.Popen, chunks: list[bytes], ready, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, b"".join(chunks).decode(errors="replace")[-3000:]
        assert time.monotonic() < deadline, "the moment to kill never came"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
