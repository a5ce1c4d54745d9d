"""The budget-aware default: given a number of score evaluations, the solver and grid that ``benchmarks/solvers.py``
measured best at that budget for the SDE's family, so that ``sample(..., nfe=K)`` and ``scoresde sample --nfe K``
need nothing else.

"Best" is the smallest transport error (the distance to the exact probability-flow transport of the same ``x_T``,
which measures the solver free of sampling noise), as the geometric mean over the 2-D ring and the 64-D anisotropic
mixture, each normalised by the best run at that budget; the table and its numbers are in docs/solvers.md. Only fixed
grids enter: a grid searched for the model (``scoresde grid``) is better still and is passed as ``grid=FILE``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..sde import SDE
from .fast import dpm_solver_fast

__all__ = ["BudgetChoice", "BUDGET_TABLE", "sde_family", "choose_for_budget"]

BUDGET_TABLE: dict[str, tuple[tuple[int, str, dict[str, Any], str], ...]] = {
    # family: (budget, solver, options, grid), by increasing budget; a budget between two rows takes the lower row
    "vp": (
        (1, "ddim", {}, "log_snr"),
        (3, "dpm_solver_fast", {}, "log_snr"),
        (4, "ipndm", {}, "log_snr"),
        (5, "unipc", {"order": 3}, "karras"),
        (8, "ipndm", {}, "log_snr"),
        (10, "deis", {"order": 3}, "log_snr"),
        (15, "ipndm", {}, "log_snr"),
        (20, "unipc", {"order": 3}, "karras"),
        (50, "unipc", {"order": 3}, "log_snr"),
    ),
    "ve": (
        (1, "ddim", {}, "log_snr"),
        (3, "unipc", {}, "karras"),
        (4, "deis", {"order": 3}, "log_snr"),
        (5, "deis", {"order": 3}, "karras"),
        (10, "unipc", {}, "karras"),
        (50, "unipc", {"order": 3}, "karras"),
    ),
}
"""The budget-aware defaults by SDE family (``"vp"``: ``alpha_T`` near 0; ``"ve"``: ``alpha = 1``)."""


@dataclass(frozen=True)
class BudgetChoice:
    """What :func:`choose_for_budget` picked.

    Attributes:
        solver: a registered solver name.
        options: its options.
        grid: the time grid's name.
        steps: the grid's number of steps.
        nfe: the budget asked for.
        family: the SDE family the table row belongs to.
    """

    solver: str
    options: dict[str, Any] = field(default_factory=dict)
    grid: str = "log_snr"
    steps: int = 1
    nfe: int = 1
    family: str = "vp"

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items() if k != "orders")
        return (
            f"{self.solver}{f' ({opts})' if opts else ''} on the {self.grid} grid, {self.steps} steps: the benchmark's "
            f"best at {self.nfe} evaluations for {self.family.upper()}-type SDEs (docs/solvers.md)"
        )


def sde_family(sde: SDE) -> str:
    """``"ve"`` where the signal is never scaled down (``alpha_T > ½``, e.g. VE), else ``"vp"``."""
    alpha_T = float(sde.alpha(torch.tensor([sde.T], dtype=torch.float64))[0])
    return "ve" if alpha_T > 0.5 else "vp"


def choose_for_budget(nfe: int, sde: SDE) -> BudgetChoice:
    """The solver, options, grid and steps of :data:`BUDGET_TABLE` for ``nfe`` score evaluations under ``sde``."""
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe must be a positive integer, got {nfe!r}")
    family = sde_family(sde)
    row = [r for r in BUDGET_TABLE[family] if r[0] <= nfe][-1]
    _, solver, options, grid = row
    if solver == "dpm_solver_fast":
        orders = dpm_solver_fast(nfe).orders or ()
        return BudgetChoice("dpm_solver", {"orders": orders}, grid, len(orders), nfe, family)
    return BudgetChoice(solver, dict(options), grid, nfe, nfe, family)
