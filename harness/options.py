"""What a run is asked to do (the command line, parsed): shared by the run and its distributed workers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.budgets import Budget
from harness.pairs import Pair


@dataclass
class RunOptions:
    methods: list[str]
    pair: Pair
    budget: Budget
    results_dir: Path
    cache_dir: Path
    data_dir: Path | None = None
    dataset: str | None = None
    run_name: str | None = None
    method_options: dict[str, dict] = field(default_factory=dict)
    command: str = ""
    recipe: str | None = None  # --recipe: every method that has this recipe runs it (others their default)
    keep_weights: bool = False  # save every method's weights, whatever the budget says (benchmarks follow)
    # A harness.distributed.Launcher: train each method on several processes. (Not imported: that module
    # rebuilds RunOptions in its workers, so it imports this one.)
    launcher: object | None = None
    # Training checkpoints for resuming a killed run: every N optimizer steps, or every `checkpoint_interval_s`.
    checkpoint_every: int | None = None
    checkpoint_interval_s: float = 600.0

    @property
    def seed(self) -> int:
        return self.budget.seed

    @property
    def name(self) -> str:
        return self.run_name or f"{self.budget.name}-seed{self.seed}"
