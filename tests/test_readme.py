"""The README's inline tables are the committed leaderboard's own: copied, never edited by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def table_after(lines: list[str], start: int) -> list[str]:
    end = lines.index("", start)
    return lines[start:end]


@pytest.mark.parametrize("header", ["| model | pref. acc. ↑ (n=40)", "| model | MT-Bench (1-10) [1] (n=12)"])
def test_readme_tables_match_the_committed_leaderboard(header):
    readme = (ROOT / "README.md").read_text(encoding="utf-8").split("\n")
    board = (ROOT / "leaderboards" / "smollm2-135m.md").read_text(encoding="utf-8").split("\n")
    run = board.index("## Run `smoke-seed0` (budget `smoke`, seed 0)")
    in_board = next(i for i, line in enumerate(board) if i > run and line.startswith(header))
    in_readme = next(i for i, line in enumerate(readme) if line.startswith(header))
    assert table_after(readme, in_readme) == table_after(board, in_board)


def test_readme_plot_is_a_committed_file():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    path = "leaderboards/plots/smollm2-135m/smoke-seed0/quality_vs_compute.png"
    assert f"]({path})" in readme and (ROOT / path).read_bytes()[:4] == b"\x89PNG"
