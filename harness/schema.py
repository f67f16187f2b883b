"""record.json's layout as one typed schema: written by harness/records.py, read by harness/results.py, both
through ``check_record``. No model library is imported here (the leaderboard reads records without torch)."""

# No `from __future__ import annotations`: TypedDict reads NotRequired from evaluated annotations.
from typing import NotRequired, TypedDict

from harness.errors import BenchError

# Version of record.json's layout. 1 (no "schema" field): before recipes; 2: "schema", "recipe", a portable
# data location. Readers compare budgets field by field with defaults filled in (harness/budgets.py), so a field
# added to Budget later does not make older records incomparable.
RECORD_SCHEMA = 2
KINDS = ("method", "reference")


class Metric(TypedDict):
    value: float | None
    se: float | None
    n: int


class Record(TypedDict):
    run: str  # the run folder's name, e.g. smoke-seed0
    row: str  # a method's row name (``adpa@paper``), or ``teacher`` / ``student-init``
    kind: str  # "method" or "reference"
    seed: int
    pair: dict  # the pair's to_dict(): name, teacher, student, dataset, ...
    budget: dict  # the budget's to_dict()
    metrics: dict[str, Metric]  # offline metrics: pref_acc, pref_margin, nll_chosen, kl_teacher, rouge_l
    schema: NotRequired[int]  # absent in layout 1
    data: NotRequired[dict]  # data set, portable location, fingerprint, truncation counts
    environment: NotRequired[dict]  # package versions, device, threads
    evaluation: NotRequired[dict]  # wall clock, generated tokens, stage key
    # methods only
    method: NotRequired[str]
    config: NotRequired[dict]
    needs: NotRequired[list[str]]
    recipe: NotRequired[dict]
    compute: NotRequired[dict]  # steps, tokens, FLOPs, signal stages (harness/records.compute_record)
    train_stage_key: NotRequired[str]
    git_revision: NotRequired[str | None]
    computed_at: NotRequired[str]
    # reference rows only
    model: NotRequired[str]
    warmstart_steps: NotRequired[int]


def check_record(record: dict, where) -> Record:
    """``record`` as a ``Record``, or a BenchError naming ``where`` (its file) and what is wrong with it."""
    problems = [f"no {key!r}" for key in sorted(Record.__required_keys__) if key not in record]
    if not problems:
        if record["kind"] not in KINDS:
            problems.append(f"kind {record['kind']!r} is not one of {', '.join(KINDS)}")
        if not isinstance(record["metrics"], dict):
            problems.append("metrics is not a mapping")
        else:
            problems += [f"metric {name!r} lacks value, se or n" for name, m in sorted(record["metrics"].items())
                         if not isinstance(m, dict) or not {"value", "se", "n"} <= set(m)]
        if record.get("schema", 1) > RECORD_SCHEMA:
            problems.append(f"its layout {record['schema']} is newer than this bench reads ({RECORD_SCHEMA}); "
                            "upgrade bench")
    if problems:
        raise BenchError(f"{where} is not a bench run record: {'; '.join(problems)}. Re-run the command that wrote "
                         "it, or remove the folder.")
    return record  # type: ignore[return-value]
