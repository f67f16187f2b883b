"""One record schema for the writer and the readers: every committed record passes it, a damaged one is refused
with its file and what is missing, and nothing malformed is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import BenchError
from harness.records import write_record
from harness.results import frame, load_records
from harness.schema import RECORD_SCHEMA, Record, check_record

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = sorted((ROOT / "results").glob("*/*/*/record.json"))


def minimal() -> dict:
    return {"run": "r-seed0", "row": "sft", "kind": "method", "seed": 0, "pair": {"name": "p"},
            "budget": {"name": "tiny"}, "metrics": {"pref_acc": {"value": 0.5, "se": 0.1, "n": 4}},
            "schema": RECORD_SCHEMA}


def test_every_committed_record_fits_the_schema():
    assert len(COMMITTED) >= 30
    for path in COMMITTED:
        check_record(json.loads(path.read_text()), path)


def test_the_required_keys_are_what_the_tables_read():
    assert Record.__required_keys__ == {"run", "row", "kind", "seed", "pair", "budget", "metrics"}
    df = frame([check_record(minimal(), "x")])  # a record with the required keys only makes a table row
    assert df.loc[0, "pref_acc"] == 0.5 and df.loc[0, "nll_chosen"] is None


@pytest.mark.parametrize(("damage", "needle"), [
    (lambda r: r.pop("metrics"), "no 'metrics'"),
    (lambda r: r.update(kind="student"), "kind 'student' is not one of method, reference"),
    (lambda r: r["metrics"].update(kl_teacher={"value": 1.0}), "metric 'kl_teacher' lacks value, se or n"),
    (lambda r: r.update(schema=RECORD_SCHEMA + 1), "newer than this bench reads"),
])
def test_a_damaged_record_is_refused_with_its_file(tmp_path, damage, needle):
    record = minimal()
    damage(record)
    path = tmp_path / "p" / "r-seed0" / "sft" / "record.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))
    with pytest.raises(BenchError, match=needle) as e:
        load_records(tmp_path)
    assert str(path) in str(e.value)


def test_nothing_malformed_is_written(tmp_path):
    record = minimal()
    del record["budget"]
    evaluation = {"metrics": record["metrics"], "wall_clock_s": 1.0, "generated_tokens": 0, "key": "k",
                  "folder": tmp_path}
    with pytest.raises(BenchError, match="no 'budget'"):
        write_record(tmp_path / "run", "sft", {k: v for k, v in record.items() if k != "metrics"}, evaluation, None)
    assert not (tmp_path / "run" / "sft" / "record.json").exists()
