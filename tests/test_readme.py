"""The README's inline tables are the committed leaderboard's own: copied, never edited by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def table_after(lines: list[str], start: int) -> list[str]:
    end = lines.index("", start)
    return lines[start:end]


@pytest.mark.parametrize("header", ["| model | pref. acc. ↑ (n=40)"])
def test_readme_tables_match_the_committed_leaderboard(header):
    readme = (ROOT / "README.md").read_text(encoding="utf-8").split("\n")
    board = (ROOT / "leaderboards" / "smollm2-135m.md").read_text(encoding="utf-8").split("\n")
    run = board.index("## Run `smoke-seed0` (budget `smoke`, seed 0)")
    in_board = next(i for i, line in enumerate(board) if i > run and line.startswith(header))
    section = next(i for i, line in enumerate(readme) if line.startswith("## Leaderboard (default pair"))
    in_readme = next(i for i, line in enumerate(readme) if i > section and line.startswith(header))
    assert not any(line.startswith(header) for line in readme[:section])  # the table sits in its section only
    assert table_after(readme, in_readme) == table_after(board, in_board)


def test_readme_plot_is_a_committed_file():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    path = "leaderboards/plots/smollm2-135m/smoke-seed0/quality_vs_compute.png"
    assert f"]({path})" in readme and (ROOT / path).read_bytes()[:4] == b"\x89PNG"


def test_readme_speed_figures_are_the_committed_benchmark_output():
    """Every speed figure the README quotes is the committed perf/results JSON's, rounded as printed."""
    import json

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("**Speed**"):readme.index("**Faults.**")]
    report = json.loads((ROOT / "perf" / "results" / "speed-cpu-2core.json").read_text())
    cost = {m: f"{v['token_cost_ratio']:.2f}" for m, v in report["methods"].items()}
    trl = {m: f"{v['ratio']:.2f}" for m, v in report["trl"].items() if "ratio" in v}
    gen, mem, flops = report["generation"], report["memory"], report["flops"]
    expected = [
        " / ".join(cost[m] for m in ("kd", "dckd", "dpo", "simpo")),
        " / ".join(cost[m] for m in ("rkl", "distillm", "gkd", "kd-live")),
        " / ".join(f"{report['methods'][m]['tokens_per_s']:.0f}" for m in ("sft", "kd", "dckd", "dpo", "simpo")),
        " / ".join(f"{report['methods'][m]['peak_rss_mib']:,.0f}" for m in ("sft", "dckd", "dpo", "gkd")) + " MiB",
        *(f"| {trl[m]} |" for m in ("dpo", "kd", "kd-live", "gkd-offpolicy")),
        f"{gen['batched']['tokens_per_s']:.1f} vs {gen['one_at_a_time']['tokens_per_s']:.1f} new tokens/s = "
        f"{gen['speedup']:.2f}×",
        f"{mem['kd']['peak_rss_mib']:,.0f} vs {mem['kd-live']['peak_rss_mib']:,.0f} MiB",
        f"{flops['achieved_flops'] / 1e9:.1f} / {flops['peak_flops'] / 1e9:.1f} GFLOP/s = {flops['utilisation']:.1%}",
        f"{report['trl']['optimizer_step']['fused_s']:.2f} s fused and "
        f"{report['trl']['optimizer_step']['foreach_s']:.2f} s",
    ]
    missing = [figure for figure in expected if figure not in section]
    assert not missing, f"README speed figures differ from the committed benchmark output: {missing}"
