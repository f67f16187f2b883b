"""One run, start to finish: data -> student init -> signals -> train each method -> evaluate -> record.

The stages and their cache: harness/stages.py (keys: harness/keys.py); what is written per row:
harness/records.py; signals: harness/signal_api.py.
"""

from __future__ import annotations

import time
from pathlib import Path

from harness import recipes
from harness.errors import BenchError
from harness.files import check_writable, write_json_atomic
from harness.keys import teacher_key
from harness.log import log
from harness.models import load_model_from
from harness.options import RunOptions
from harness.records import compute_record, environment, git_revision, write_record
from harness.registry import METHODS
from harness.schema import RECORD_SCHEMA
from harness.stages import Run
from harness.trainer import NonFiniteLoss

# Importers have always found these here.
__all__ = ["RECORD_SCHEMA", "MethodsFailed", "Run", "RunOptions", "build_methods", "compute_record", "environment",
           "git_revision", "load_model_from", "run", "write_record"]

REFERENCE_ROWS = ("teacher", "student-init")


def build_methods(opts: RunOptions) -> dict:
    """The run's rows by name: ``method`` (its default recipe) or ``method@recipe``, each a configured Method.

    Options apply per method (``--option adpa.sft_weight=0``) or per row (``--option adpa@paper.sft_weight=0``);
    ``--option adpa.recipe=paper`` and ``--recipe paper`` choose a recipe as ``adpa@paper`` does."""
    if not opts.methods:
        raise BenchError("No methods given. Pass --methods, e.g. --methods sft,kd,dckd,dpo (see `bench methods`).")
    clash = [m for m in opts.methods if m in REFERENCE_ROWS]
    if clash:
        raise BenchError(f"{', '.join(clash)} names a reference row, not a method.")
    if opts.recipe and not any(opts.recipe in recipes.recipe_names(METHODS.get(recipes.split_row(m)[0]))
                               for m in opts.methods):
        raise BenchError(f"--recipe {opts.recipe}: none of {', '.join(opts.methods)} has that recipe (`bench methods` "
                         "lists each method's recipes; official and paper are the usual ones).")
    out, used = {}, set()
    for spec in dict.fromkeys(opts.methods):
        name, asked = recipes.split_row(spec)
        cls = METHODS.get(name)
        options = {**opts.method_options.get(name, {}), **(opts.method_options.get(spec, {}) if asked else {})}
        used.update(k for k in (name, spec) if k in opts.method_options)
        by_option = options.pop("recipe", None)
        chosen = asked or by_option
        if chosen is None and opts.recipe in recipes.recipe_names(cls):
            chosen = opts.recipe
        recipe = recipes.resolve(cls, name, chosen)
        method = recipes.build(cls, name, recipe, options)
        row = recipes.row_name(cls, name, recipe)
        if row in out:
            raise BenchError(f"Row {row!r} is asked for twice (as {spec!r} and earlier); name each row once.")
        out[row] = method
    unknown = set(opts.method_options) - used
    if unknown:
        raise BenchError(f"Options given for method(s) not in this run: {', '.join(sorted(unknown))}.")
    opts.pair.check_methods(list(dict.fromkeys(m.registered_name for m in out.values())))
    for method in out.values():
        method.check_pair(opts.pair)
    return out


def run(opts: RunOptions) -> Path:
    """Execute a run; returns its results folder."""
    t_start = time.perf_counter()
    methods = build_methods(opts)
    if opts.launcher is not None:
        opts.launcher.check(opts.budget)
    for folder in (opts.results_dir, opts.cache_dir):
        check_writable(folder)
    r = Run(opts)
    r.methods = dict(methods)
    r.dependents = {r.dependency(m)[0] for m in methods.values() if m.starts_from}
    r.prepare_data()
    run_dir = opts.results_dir / opts.pair.name / opts.name
    run_dir.mkdir(parents=True, exist_ok=True)
    common = {"schema": RECORD_SCHEMA, "pair": opts.pair.to_dict(), "budget": opts.budget.to_dict(),
              "seed": opts.seed, "run": opts.name, "data": r.data_info, "environment": environment()}

    failed: dict[str, str] = {}
    for i, (name, method) in enumerate(methods.items(), 1):
        log.info(f"method {i}/{len(methods)}: {name}")
        dep = r.dependency(method)[0] if method.starts_from else None
        if dep in failed:
            failed[name] = f"skipped: it starts from {dep}, which failed"
            log.info(f"{name}: {failed[name]}")
            continue
        try:
            out = r.run_method(name, method)
        except NonFiniteLoss as e:
            # This method stops with what went wrong; the others (and their cached work) are unaffected.
            failed[name] = str(e)
            write_json_atomic(run_dir / name / "failure.json", {**common, "row": name, "method": method.registered_name,
                                                                 "config": method.config.to_dict(), **e.diagnostic()})
            log.info(f"{name} stopped: {e}")
            continue
        (run_dir / name / "failure.json").unlink(missing_ok=True)
        record = {**common, "row": name, "kind": "method", "method": method.registered_name,
                  "config": method.config.to_dict(), "needs": list(method.needs),
                  "recipe": recipes.recipe_record(type(method), method.recipe, opts.budget.learning_rate,
                                                  method.options_set),
                  "compute": compute_record(out["train"]), "train_stage_key": out["train_key"],
                  "git_revision": out["train"]["git_revision"], "computed_at": out["train"]["computed_at"]}
        write_record(run_dir, name, record, out["eval"], out["train"]["loss_curve"])

    log.info("reference rows: teacher and untrained student")
    teacher_eval = r.evaluate(r.teacher, teacher_key(opts.pair.teacher.identity()), "teacher")
    write_record(run_dir, "teacher", {**common, "row": "teacher", "kind": "reference",
                                      "model": opts.pair.teacher.describe()}, teacher_eval, None)
    init = {}

    def student_init():
        if "m" not in init:
            init["m"] = r.load_student_init()
        return init["m"]

    student_eval = r.evaluate(student_init, r.student_init_key(), "student-init")
    write_record(run_dir, "student-init", {**common, "row": "student-init", "kind": "reference",
                                           "model": opts.pair.student.describe(),
                                           "warmstart_steps": opts.budget.warmstart_steps}, student_eval, None)
    log.info(f"run finished in {time.perf_counter() - t_start:.0f}s; results in {run_dir}")
    if failed:
        raise MethodsFailed(run_dir, failed)
    return run_dir


class MethodsFailed(BenchError):
    """Some methods of a run stopped; the others finished and were recorded."""

    exit_code = 3

    def __init__(self, run_dir: Path, failed: dict[str, str]):
        self.run_dir, self.failed = run_dir, failed
        lines = "; ".join(f"{name}: {why}" for name, why in failed.items())
        super().__init__(f"{len(failed)} method(s) did not finish ({lines}). The other rows are in {run_dir}; "
                         "each failure is described in <row>/failure.json.")
