"""One ``Benchmark`` per benchmark, under the one id its results carry (``results/.../benchmarks/*.json``'s
``benchmark`` field): how its answers are generated, how it is judged and scored, the leaderboard cells it
contributes and the per-question values the report and the paired differences read.

Outside packages add one without touching ours (as methods do) through an entry point::

    [project.entry-points."bench.benchmarks"]
    my_benchmark = "my_package.my_module"

whose module calls ``register_benchmark(Benchmark(...))``. Nothing here imports a model library: the
leaderboard reads these objects, and only ``Benchmark.run`` (``bench eval``) loads models.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import BenchError
from harness.registry import BENCHMARKS


@dataclass(frozen=True)
class Benchmark:
    id: str  # the results' ``benchmark`` field
    name: str  # display name
    # ``run(opts) -> [result paths]`` (an ``EvalOptions``), or "module:function" imported when it runs
    runner: Callable | str | None = None
    cells: Callable[[dict], list[dict]] = lambda result: []  # a result -> {metric, label, value, se, ci, n}
    higher_is_better: bool = True
    questions: int | None = None  # the full set
    order: int = 9  # place among the leaderboard's benchmark columns
    # answer generation: e.g. {"max_new_tokens": 1024}; documentation and defaults for the runner
    settings: dict = field(default_factory=dict)
    judged: bool = False  # needs --judge
    # the old name: accepted by --benchmarks, and the results' file stem and answer-cache key, so that results
    # and cached answers written under it stay valid
    legacy_name: str | None = None
    # per-question values the paired differences resample: (field of questions.judged_items, label, decimals)
    question_columns: tuple[tuple[str, str, int], ...] = ()
    score_note: str = ""  # what a question's score means, in the report's answer viewer
    pairwise: str | None = None  # the result field naming what answers are compared with
    secondary: tuple[str, ...] = ()  # cell labels shown on the boards but not ranked in the summary
    description: str = ""

    @property
    def stem(self) -> str:
        """The results' file name stem (``benchmarks/<stem>.json``)."""
        return self.legacy_name or self.id

    def run(self, opts) -> list[Path]:
        runner = self.runner
        if runner is None:
            raise BenchError(f"Benchmark {self.id!r} has no runner: its results are made outside `bench eval`.")
        if isinstance(runner, str):
            module, _, attr = runner.partition(":")
            runner = getattr(importlib.import_module(module), attr)
        return runner(opts)


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    for name in {benchmark.id, benchmark.legacy_name} - {None}:
        BENCHMARKS.register(name, benchmark)
    return benchmark


def benchmarks() -> list[Benchmark]:
    """Every registered benchmark once, in leaderboard order."""
    unique = {id(b): b for _, b in BENCHMARKS.items()}
    return sorted(unique.values(), key=lambda b: (b.order, b.id))


def get_benchmark(name: str) -> Benchmark:
    """By id or old name; an id no benchmark has gets a benchmark that contributes nothing (results of a
    plugin that is not installed here still load)."""
    return BENCHMARKS.get(name) if name in BENCHMARKS else Benchmark(id=name, name=name)


def benchmark_cells(result: dict) -> list[dict]:
    """A result's leaderboard cells: ``{metric, label, value, se, ci, n}``; the interval is ± se or a 95% interval."""
    return get_benchmark(result["benchmark"]).cells(result)


def judge_label(identity: dict | None) -> str:
    if not identity:
        return "none"
    if identity.get("kind") == "transformers":
        return "local " + Path(str(identity["model"].get("source", "?"))).name
    if identity.get("kind") == "openai":
        url = identity.get("base_url", "")
        return identity["model"] + ("" if "api.openai.com" in url else f" at {url}")
    return str(identity.get("model", identity.get("kind")))


def variant(result: dict) -> tuple[str, str]:
    """A result's column identity (a hash of everything that makes its numbers comparable) and its description.
    Rows judged differently, on other questions or with other settings never share a column."""
    from harness.cache import stable_hash

    keep = ("benchmark", "judge", "verdict", "judge_decoding", "limit", "question_ids", "answer_max_new_tokens",
            "seed", "reference", "reward_model", "lm_eval_version", "num_fewshot", "reference_answers_sha256",
            "baseline")
    key = stable_hash({k: result.get(k) for k in keep})
    parts = []
    if result.get("judge"):
        parts.append(f"judge {judge_label(result['judge'])}"
                     + ("" if result.get("official_judge") else " (not the official judge)"))
    if result.get("verdict") == "constrained":
        parts.append("constrained verdicts (the judge's most likely verdict string; not the protocol)")
    if result.get("reward_model"):
        parts.append(f"reward model {judge_label(result['reward_model'])}, reference row {result.get('reference')}")
    if result.get("limit"):
        total = get_benchmark(result["benchmark"]).questions
        parts.append(f"seeded subset of {len(result.get('question_ids') or [])}{f' of {total}' if total else ''} "
                     f"questions (--limit "
                     f"{result['limit']}, seed {result.get('seed')})")
    if result.get("answer_max_new_tokens"):
        parts.append(f"answers ≤ {result['answer_max_new_tokens']} new tokens")
    if result["benchmark"] == "alpaca_eval_2":
        parts.append("LC-minimal is alpaca-eval's length_controlled_minimal GLM, not the official LC")
    return key, "; ".join(parts)


def benchmark_columns(rows, run: str, records: list[dict]) -> tuple[list[dict], dict]:
    """Columns (one per benchmark metric and variant) and each row's cells ``{(column key, row): cell}``, for one
    run's ``rows``."""
    rows = set(rows)
    columns: dict[tuple, dict] = {}
    cells: dict[tuple, dict] = {}
    for rec in records:
        if rec["run"] != run or rec["row"] not in rows:
            continue
        for result in rec.get("_benchmarks", []):
            key, description = variant(result)
            bench = get_benchmark(result["benchmark"])
            for position, cell in enumerate(bench.cells(result)):
                col = (bench.order, result["benchmark"], position, cell["label"], key)
                columns.setdefault(col, {"label": cell["label"], "description": description, "variant": key,
                                         "benchmark": result["benchmark"], "metric": cell["metric"],
                                         "higher": bench.higher_is_better})
                cells[(col, rec["row"])] = cell
    ordered = [dict(columns[c], key=c) for c in sorted(columns)]
    return ordered, cells
