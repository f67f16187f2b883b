"""The `bench` command."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path

import click

from harness.cache_admin import cache as cache_group
from harness.errors import BenchError
from harness.lock import cache_users, results_lock


def _command() -> str:
    return "bench " + shlex.join(sys.argv[1:])


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parse_assignments(items: tuple[str, ...], what: str) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BenchError(f"{what} {item!r} is not of the form name=value.")
        out[key.strip()] = _parse_value(value)
    return out


def _check_types(cls, values: dict, flag: str, prefix: str = "", what: str | None = None) -> None:
    """A value of the wrong type (``--set max_steps=abc``) is named here, before a dataclass compares it with a
    number and fails with a TypeError. Fields whose type is not a plain scalar are left to the class; unknown
    fields too, unless ``what`` names the class for a message that lists its fields."""
    import types
    import typing

    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        hint = hints.get(key)
        if hint is None and what:
            raise BenchError(f"Unknown {what} field {key!r} in {flag} {prefix}{key}={json.dumps(value)}. Its fields: "
                             f"{', '.join(hints)}.")
        allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        if not allowed or not all(t in (int, float, bool, str, type(None)) for t in allowed):
            continue  # unknown field (the class names it) or a type this check does not know
        ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
        ok = ok or (float in allowed and type(value) is int)  # 1 is a fine learning rate
        if not ok:
            names = " or ".join({int: "an integer", float: "a number", bool: "true/false", str: "text",
                                 type(None): "null"}[t] for t in allowed)
            example = getattr(cls, key, None)  # the class default, when it has one
            raise BenchError(f"{flag} {prefix}{key}={json.dumps(value)}: {key} takes {names}, not "
                             f"{type(value).__name__}. Write the value as JSON, e.g. {flag} {prefix}{key}="
                             f"{json.dumps(1 if example is None else example)}.")


class BenchGroup(click.Group):
    """Prints BenchError as one paragraph (no traceback) and exits non-zero."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BenchError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: finished stages are cached; the same command resumes from them.", err=True)
            sys.exit(130)


def _eval_options(command):
    """The options that say how benchmarks score a run's rows: shared by `bench eval` and `bench run`."""
    options = [
        click.option("--judge", default=None,
                     help="Judge for mt_bench, arena_hard, alpaca_eval: local:teacher, local:<hub id|folder|.gguf>, "
                          "or openai:<model> (key from OPENAI_API_KEY)."),
        click.option("--judge-base-url", default=None,
                     help="OpenAI-compatible server URL (vLLM, transformers serve, llama.cpp); default api.openai.com."),
        click.option("--judge-concurrency", type=int, default=4, show_default=True,
                     help="Requests in flight to an OpenAI-compatible judge (retries back off on 429)."),
        click.option("--verdict", type=click.Choice(["free", "constrained"]), default="free", show_default=True,
                     help="free: the judge writes its verdict (the protocol). constrained (local judges): its most "
                          "likely verdict among the benchmark's own; labelled so on the leaderboard."),
        click.option("--limit", type=int, default=None, help="A seeded subset of N questions, every category covered."),
        click.option("--max-new-tokens", type=int, default=None,
                     help="Answer length (default: the benchmark's: MT-Bench 1024, Arena-Hard 4096, AlpacaEval 2048)."),
        click.option("--judge-max-tokens", type=int, default=None,
                     help="Judge length (default: the benchmark's: MT-Bench 2048, Arena-Hard 4096)."),
        click.option("--arena-interval", type=click.Choice(["joint", "per-row"]), default="joint", show_default=True,
                     help="Arena-Hard's 95% interval: joint (all rows and published judgments of the same judge in one "
                          "bootstrap, as upstream) or per-row (each row's battles alone)."),
        click.option("--mt-bench-reference", default=None, type=click.Path(path_type=Path),
                     help="MT-Bench reference answers (JSONL), e.g. a corrected set; default upstream's gpt-4.jsonl."),
        click.option("--reward-model", default=None,
                     help="rm_winrate: a sequence-classification reward model (hub id or local folder)."),
        click.option("--rm-reference", default="teacher", show_default=True,
                     help="rm_winrate: the row whose answers each row is compared with (e.g. teacher, sft)."),
        click.option("--lm-eval-include", default=None, type=click.Path(path_type=Path),
                     help="lm_eval:<task>: a folder of extra lm-eval task YAMLs."),
        click.option("--trust-remote-code", is_flag=True, default=False,
                     help="Let a reward model run its own code from the hub (ArmoRM needs it). Off by default."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _echo_leaderboards(written: list[Path]) -> None:
    """The tables and pages by name; the plots by count (there are a dozen per run)."""
    plots = [p for p in written if p.suffix in (".png", ".svg")]
    for path in written:
        if path not in plots:
            click.echo(f"leaderboard: {path}")
    if plots:
        click.echo(f"plots: {len(plots)} files under {Path(os.path.commonpath(plots))}")


def _leaderboards_beside(results_dir, leaderboard_dir) -> Path:
    """Leaderboards sit beside the results they are built from, so a scratch --results-dir never overwrites the
    project's leaderboards/."""
    return Path(leaderboard_dir) if leaderboard_dir else Path(results_dir).parent / "leaderboards"


def _eval_opts(results_dir, cache_dir, data_dir, pair, run_name, rows, seed, kw) -> object:
    from harness.cache import cache_root
    from harness.evalrun import EvalOptions

    return EvalOptions(results_dir=Path(results_dir), cache_dir=cache_root(cache_dir),
                       data_dir=Path(data_dir) if data_dir else None, pair=pair, run=run_name, rows=rows, seed=seed, **kw)


@click.group(cls=BenchGroup)
def main():
    """Distil an aligned teacher's preferences into a small student with many methods under one budget,
    evaluate every checkpoint, and render leaderboards."""


@main.command()
@click.option("--methods", required=True, help="Comma-separated method names, e.g. sft,kd,dckd,dpo.")
@click.option("--pair", default=None, help="A registered pair (see `bench pairs`); default smollm2-135m.")
@click.option("--teacher", default=None, help="Ad-hoc pair: teacher hub id, folder or .gguf (with --student).")
@click.option("--student", default=None, help="Ad-hoc pair: student hub id, folder or .gguf (with --teacher).")
@click.option("--budget", "budget_name", default="smoke", show_default=True, help="A budget (see `bench budgets`).")
@click.option("--set", "budget_set", multiple=True, metavar="FIELD=VALUE",
              help="Override a budget field for this run, e.g. --set max_steps=4 (recorded with the results).")
@click.option("--option", "method_set", multiple=True, metavar="METHOD.FIELD=VALUE",
              help="Set a method config field, e.g. --option dpo.beta=0.05.")
@click.option("--recipe", default=None,
              help="Run every method that has this recipe with it (official: the released code's; paper: the "
                   "equation's); the others keep their default. Per method: --methods adpa@paper.")
@click.option("--seed", type=int, default=None, help="Seed (default: the budget's).")
@click.option("--data-dir", envvar="BENCH_DATA_DIR", default=None,
              help="Folder holding local copies of data sets (env BENCH_DATA_DIR); unset = download from the hub.")
@click.option("--dataset", default=None, help="Data set hub id or local file/folder (default: the pair's).")
@click.option("--run-name", default=None, help="Results sub-folder (default: <budget>-seed<seed>).")
@click.option("--results-dir", default="results", show_default=True, type=click.Path(path_type=Path))
@click.option("--leaderboard-dir", default=None, type=click.Path(path_type=Path),
              help="Where leaderboards go (default: leaderboards/ beside the results folder).")
@click.option("--cache-dir", envvar="BENCH_CACHE_DIR", default=None, type=click.Path(path_type=Path),
              help="Stage cache (env BENCH_CACHE_DIR; default ~/.cache/bench).")
@click.option("--benchmarks", default=None,
              help="Also score every row on these benchmarks after training (as `bench eval`), e.g. "
                   "mt_bench,alpaca_eval,arena_hard with --judge.")
@click.option("--processes", type=int, default=1, show_default=True,
              help="Train each method on N processes (CPU: torchrun with gloo; GPU: one per GPU). The budget is "
                   "global, so N processes train on the same rows as one; grad_accum must be a multiple of N.")
@click.option("--accelerate-config", default=None,
              help="GPU training preset (ddp, fsdp, deepspeed-zero3; see harness/accelerate_configs/) or an "
                   "accelerate config file; launches through `accelerate launch`.")
@click.option("--checkpoint-every", type=int, default=None,
              help="Save a resumable training checkpoint every N optimizer steps (default: every 10 minutes). "
                   "A killed run resumes from it when the same command is run again.")
@_eval_options
def run(methods, pair, teacher, student, budget_name, budget_set, method_set, recipe, seed, data_dir, dataset, run_name,
        results_dir, leaderboard_dir, cache_dir, benchmarks, processes, accelerate_config, checkpoint_every,
        **eval_kw):
    """Train the given methods on a pair under one budget, evaluate, record, and regenerate the leaderboard."""
    leaderboard_dir = _leaderboards_beside(results_dir, leaderboard_dir)
    from harness.budgets import Budget, get_budget
    from harness.cache import cache_root
    from harness.data import data_dir_from_env
    from harness.distributed import Launcher
    from harness.files import check_writable
    from harness.leaderboard import regenerate
    from harness.pairs import adhoc_pair, get_pair
    from harness.pipeline import MethodsFailed, RunOptions
    from harness.pipeline import run as run_pipeline

    if (teacher is None) != (student is None):
        raise BenchError("--teacher and --student go together: give both for an ad-hoc pair, or neither.")
    if teacher and pair:
        raise BenchError("Give either --pair or --teacher/--student, not both.")
    the_pair = adhoc_pair(teacher, student) if teacher else get_pair(pair or "smollm2-135m")
    overrides = _parse_assignments(budget_set, "--set")
    _check_types(Budget, overrides, "--set", what="budget")
    if seed is not None:
        overrides["seed"] = seed
    budget = get_budget(budget_name).with_overrides(**overrides) if overrides else get_budget(budget_name)
    method_options: dict[str, dict] = {}
    for key, value in _parse_assignments(method_set, "--option").items():
        method, dot, field = key.partition(".")
        if not dot:
            raise BenchError(f"--option {key!r} must name METHOD.FIELD, e.g. dpo.beta=0.05.")
        method_options.setdefault(method, {})[field] = value
    for method, values in method_options.items():
        from harness.recipes import split_row
        from harness.registry import METHODS

        _check_types(METHODS.get(split_row(method)[0]).Config, values, "--option", f"{method}.")
    check_writable(leaderboard_dir)
    opts = RunOptions(
        methods=[m.strip() for m in methods.split(",") if m.strip()], pair=the_pair, budget=budget,
        results_dir=results_dir, cache_dir=cache_root(cache_dir), data_dir=data_dir_from_env(data_dir),
        dataset=dataset, run_name=run_name, method_options=method_options, recipe=recipe,
        command=_command(), keep_weights=bool(benchmarks),
        launcher=Launcher(processes, accelerate_config), checkpoint_every=checkpoint_every,
    )
    bench_names, eval_opts = [], None
    if benchmarks:  # checked before any training, so a typo costs nothing
        from harness.evalrun import check_benchmarks, parse_benchmarks, run_benchmarks

        if teacher:
            raise BenchError("--benchmarks scores a registered pair's run; for an ad-hoc pair run `bench eval` later.")
        bench_names = parse_benchmarks(benchmarks)
        # The rows this command trained, and the reference rows; other rows of the run may have no weights.
        eval_opts = _eval_opts(results_dir, cache_dir, opts.data_dir, the_pair.name, opts.name,
                               ["teacher", "student-init", *opts.methods], opts.seed, eval_kw)
        check_benchmarks(eval_opts, bench_names)
    failure = None
    check_writable(results_dir)  # before the lock, which creates its file there
    with results_lock(results_dir, opts.command), cache_users(opts.cache_dir):
        try:
            run_dir = run_pipeline(opts)
        except MethodsFailed as e:  # the methods that finished still get scored and onto the leaderboard
            run_dir, failure = e.run_dir, e
        for name, path in run_benchmarks(eval_opts, bench_names) if bench_names else ():
            click.echo(f"{name}: {path}")
        written = regenerate(results_dir, leaderboard_dir)
    click.echo(f"results: {run_dir}")
    _echo_leaderboards(written)
    if failure is not None:
        raise failure


@main.command()
def methods():
    """List registered methods."""
    from harness.registry import METHODS

    for name, cls in sorted(METHODS.items()):
        vocab = "shared tokenizer" if cls.needs_shared_vocab else "any tokenizer"
        needs = ", ".join(cls.needs) or "nothing from the teacher"
        if cls.starts_from:
            needs += f"; starts from the {cls.starts_from} student"
        click.echo(f"{name:10s} {cls.description}")
        click.echo(f"{'':10s} paper: {cls.paper}; needs: {needs}; {vocab}")
        fields = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls.Config))
        if fields:
            click.echo(f"{'':10s} config: {fields}")
        for rname, recipe in (cls.recipes or {}).items():
            default = " (default)" if rname == cls.default_recipe else ""
            row = name if default else f"{name}@{rname}"
            click.echo(f"{'':10s} recipe {rname}{default} [--methods {row}]: {recipe.description}")
            lr = f"; released lr {recipe.learning_rate:g} (recorded, not applied)" if recipe.learning_rate else ""
            click.echo(f"{'':12s} from {recipe.source}{lr}")
            for field, value in recipe.values.items():
                where = recipe.provenance.get(field, "")
                click.echo(f"{'':12s} {field}={value!r}" + (f"  <- {where}" if where else ""))


@main.command()
def pairs():
    """List registered teacher/student pairs and the methods each can run."""
    from harness.registry import PAIRS

    for name, pair in sorted(PAIRS.items()):
        click.echo(f"{name:14s} {pair.description}")
        click.echo(f"{'':14s} teacher: {pair.teacher.describe()}")
        click.echo(f"{'':14s} student: {pair.student.describe()}")
        click.echo(f"{'':14s} shared vocabulary: {'yes' if pair.shared_vocab else 'no'}; "
                   f"methods: {', '.join(sorted(pair.runnable_methods()))}")


@main.command()
def budgets():
    """List budget presets."""
    from harness.registry import BUDGETS

    for name, b in sorted(BUDGETS.items()):
        click.echo(f"{name:8s} {b.description}")
        click.echo(f"{'':8s} {b.train_examples} pairs, seq {b.max_seq_len} (prompt {b.max_prompt_len}), "
                   f"batch {b.batch_size} x accum {b.grad_accum}, {b.optimizer_steps} steps, lr {b.learning_rate:g} "
                   f"{b.lr_schedule} (warm-up {b.warmup_ratio:g}), seed {b.seed}, {b.samples_per_prompt} sample(s)/prompt, "
                   f"gen {b.gen_max_new_tokens} tokens, eval {b.eval_examples} rows / {b.gen_eval_examples} answers, "
                   f"teacher top-{b.teacher_top_k}")


@main.command()
@click.option("--results-dir", default="results", show_default=True, type=click.Path(path_type=Path))
@click.option("--leaderboard-dir", default=None, type=click.Path(path_type=Path),
              help="Where leaderboards go (default: leaderboards/ beside the results folder).")
@click.option("--screenshot", "screenshot_dir", default=None, type=click.Path(path_type=Path),
              help="Also save a PNG of each pair's HTML report into this folder, taken in headless Chromium "
                   "(Debian's chromium and chromium-driver). Screenshots are not part of the byte-identical output.")
def leaderboard(results_dir, leaderboard_dir, screenshot_dir):
    """Regenerate leaderboards/ from results/ alone (no training, generation or judging)."""
    leaderboard_dir = _leaderboards_beside(results_dir, leaderboard_dir)
    from harness.files import check_writable
    from harness.leaderboard import regenerate

    if not Path(results_dir).is_dir():
        raise BenchError(f"No results folder at {results_dir}. Run `bench run` first or pass --results-dir.")
    check_writable(leaderboard_dir)
    check_writable(results_dir)  # the lock creates its file there
    with results_lock(results_dir, _command()):
        written = regenerate(results_dir, leaderboard_dir)
    if not written:
        raise BenchError(f"{results_dir} holds no run records (results/<pair>/<run>/<row>/record.json).")
    _echo_leaderboards(written)
    if screenshot_dir:
        from harness.browser import screenshot

        for page in written:
            if page.suffix == ".html" and page.name != "index.html":
                click.echo(f"screenshot: {screenshot(page, Path(screenshot_dir) / f'{page.stem}.png')}")


@main.command()
@click.argument("row_a")
@click.argument("row_b")
@click.option("--pair", default="smollm2-135m", show_default=True)
@click.option("--run", "run_name", default="smoke-seed0", show_default=True)
@click.option("--results-dir", default="results", show_default=True, type=click.Path(path_type=Path))
def compare(row_a, row_b, pair, run_name, results_dir):
    """Paired per-row differences ROW_A - ROW_B on every offline metric of one run (from results/ alone)."""
    from harness.stats import ROW_METRICS, paired_difference

    run_dir = Path(results_dir) / pair / run_name
    click.echo(f"{row_a} - {row_b} on {pair}/{run_name} (mean over held-out rows of per-row differences ± 1 s.e.)")
    for metric in ROW_METRICS:
        d = paired_difference(run_dir, row_a, row_b, metric)
        click.echo(f"  {metric:12s} {d['mean_difference']:+.3f} ± {d['se']:.3f}  (n={d['n']})")


@main.command("eval")
@click.option("--benchmarks", required=True,
              help="Comma-separated benchmark ids: mt_bench, arena_hard_v0.1, alpaca_eval_2, rm_winrate, any installed "
                   "through `bench.benchmarks`, and lm_eval:<task> (any lm-eval task); arena_hard and alpaca_eval are "
                   "accepted too.")
@_eval_options
@click.option("--pair", default="smollm2-135m", show_default=True)
@click.option("--run", "run_name", default="smoke-seed0", show_default=True)
@click.option("--rows", default=None, help="Comma-separated rows to score (default: every row of the run).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--data-dir", envvar="BENCH_DATA_DIR", default=None,
              help="Folder holding benchmarks/ (e.g. ../shared); also BENCH_DATA_DIR. Unset: the benchmark files "
                   "are downloaded from upstream into the cache.")
@click.option("--results-dir", default="results", show_default=True, type=click.Path(path_type=Path))
@click.option("--leaderboard-dir", default=None, type=click.Path(path_type=Path),
              help="Where leaderboards go (default: leaderboards/ beside the results folder).")
@click.option("--cache-dir", envvar="BENCH_CACHE_DIR", default=None, type=click.Path(path_type=Path))
def eval_command(benchmarks, pair, run_name, rows, seed, data_dir, results_dir, leaderboard_dir, cache_dir, **kw):
    """Score the rows of a finished run on benchmarks; answers and judgments are cached."""
    leaderboard_dir = _leaderboards_beside(results_dir, leaderboard_dir)
    from harness.evalrun import parse_benchmarks, run_benchmarks
    from harness.leaderboard import regenerate

    names = parse_benchmarks(benchmarks)
    opts = _eval_opts(results_dir, cache_dir, data_dir, pair, run_name,
                      [r.strip() for r in rows.split(",")] if rows else None, seed, kw)
    from harness.files import check_writable

    for folder in (leaderboard_dir, results_dir):  # before any answer is generated; the lock writes a file too
        check_writable(folder)
    with results_lock(results_dir, _command()), cache_users(opts.cache_dir):
        for name, path in run_benchmarks(opts, names):
            click.echo(f"{name}: {path}")
        written = regenerate(results_dir, leaderboard_dir)
    _echo_leaderboards(written)


main.add_command(cache_group)

if __name__ == "__main__":
    main()
