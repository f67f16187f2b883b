"""Committed results reproduce from a fresh clone: the demo's cheapest row (sft) and the two reference rows of the
committed smoke run, re-run in a scratch folder with the budget their records store, give the committed offline
metrics within 1e-4; and a leaderboard regenerated over the committed tree with those rows replaced keeps every
section of the committed one."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.budgets import get_budget
from harness.cli import main

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "results" / "smollm2-135m" / "smoke-seed0"
ROWS = ("sft", "teacher", "student-init")
TOLERANCE = 1e-4


def budget_args(recorded: dict) -> list[str]:
    """--budget NAME plus a --set for every field the record stores differently from today's registered budget."""
    registered = get_budget(recorded["name"]).to_dict()
    args = ["--budget", recorded["name"]]
    for field, value in sorted(recorded.items()):
        if field not in ("name", "description", "optimizer_steps") and registered.get(field) != value:
            args += ["--set", f"{field}={json.dumps(value)}"]
    return args


def headings(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(r"#{1,3} ", line)]


@pytest.fixture(scope="module")
def rerun(tmp_path_factory, shared_dir):
    committed = {row: json.loads((RUN / row / "record.json").read_text()) for row in ROWS}
    root = tmp_path_factory.mktemp("reproduce")
    shutil.copytree(ROOT / "results", root / "results")
    for row in ROWS:  # the rows are re-made from nothing, not copied
        shutil.rmtree(root / "results" / "smollm2-135m" / "smoke-seed0" / row)
    args = ["run", "--methods", "sft", "--pair", "smollm2-135m", *budget_args(committed["sft"]["budget"]),
            "--data-dir", str(shared_dir), "--results-dir", str(root / "results"),
            "--leaderboard-dir", str(root / "leaderboards"), "--cache-dir", str(root / "cache")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return committed, root


@pytest.mark.parametrize("row", ROWS)
def test_offline_metrics_equal_the_committed_ones(rerun, row):
    committed, root = rerun
    fresh = json.loads((root / "results" / "smollm2-135m" / "smoke-seed0" / row / "record.json").read_text())
    assert fresh["budget"] == committed[row]["budget"]
    assert set(fresh["metrics"]) == set(committed[row]["metrics"])
    for name, metric in committed[row]["metrics"].items():
        assert fresh["metrics"][name]["n"] == metric["n"], name
        assert fresh["metrics"][name]["value"] == pytest.approx(metric["value"], abs=TOLERANCE), name
    assert fresh["data"]["location"] == committed[row]["data"]["location"]  # portable: no machine's own path


def test_the_regenerated_leaderboard_keeps_every_section(rerun):
    _, root = rerun
    committed = (ROOT / "leaderboards" / "smollm2-135m.md").read_text()
    fresh = (root / "leaderboards" / "smollm2-135m.md").read_text()
    assert headings(fresh) == headings(committed)
    assert "| model |\n" not in fresh  # no empty table
