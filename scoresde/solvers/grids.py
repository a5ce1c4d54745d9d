"""Optimised time grids: a GITS-style dynamic-programming search (Chen et al., 2024, "On the trajectory regularity
of ODE-based diffusion sampling", §4) that picks a grid for a model and a budget from a small calibration batch,
and the grid files that ``sample(grid=FILE)`` and ``scoresde sample --grid FILE`` reuse.

The search: a teacher solve of the probability-flow ODE (adaptive dopri5) from the calibration ``x_T`` records the
states ``x_i`` at the ``M + 1`` times ``t_i`` of a fine grid; one score call at each gives ``eps_i``. Taking one
first-order step (DDIM, ``x̃_j = (alpha_j/alpha_i) x_i - sigma_j (e^{lambda_j - lambda_i} - 1) eps_i``) from fine
point ``i`` to any later ``j`` costs ``C_ij = mean ‖x̃_j - x_j‖² / D``, and the grid of ``K`` steps is the path
``0 = i_0 < ... < i_K = M`` of least total cost, found by dynamic programming in ``O(K M²)``. The search costs the
teacher solve plus ``M`` score calls of the calibration batch; the grid it finds transfers to higher-order solvers
(the paper's observation, measured here in ``benchmarks/solvers.py``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._typing import ScoreFn
from .._utils import atomic_path
from ..noise import PerSampleNoise, derive_seeds
from ..sde import SDE
from .base import Coefficients, Solver, eps_and_x0
from .ode import ProbabilityFlow
from .timesteps import get_timesteps

__all__ = [
    "GridSearch",
    "gits_grid",
    "optimise_grid",
    "calibration_batch",
    "save_grid",
    "load_grid",
    "is_grid_file",
    "check_grid",
    "resolve_grid",
    "GRID_FORMAT",
]

GRID_FORMAT = "scoresde.grid/1"
"""The ``format`` entry of a grid file."""


@dataclass
class GridSearch:
    """The result of :func:`gits_grid`.

    Attributes:
        times: the grid, decreasing float64 ``(K + 1,)`` from ``T`` to ``t_end``.
        cost: its total first-order cost (mean squared error per dimension, summed over the steps).
        nfe: score evaluations the search spent (teacher solve plus the fine grid's calls), per calibration sample.
        info: the search's settings (fine grid, calibration size, tolerances), saved with the grid.
    """

    times: Tensor
    cost: float
    nfe: int
    info: dict[str, Any] = field(default_factory=dict)


class _Counted:
    """``score_fn`` with its calls counted (from ``nfe``) and ``t`` cast to ``x``'s dtype."""

    def __init__(self, score_fn: ScoreFn, nfe: int = 0) -> None:
        self.score_fn, self.nfe = score_fn, nfe

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        return self.score_fn(x, t.to(x.dtype))


def gits_grid(
    score_fn: ScoreFn,
    sde: SDE,
    x_T: Tensor,
    steps: int,
    *,
    t_end: float | None = None,
    fine: int = 100,
    fine_grid: str = "log_snr",
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> GridSearch:
    """GITS's dynamic-programming grid of ``steps`` steps for ``score_fn`` (see the module docstring).

    Args:
        score_fn: the model's score ``(x: (B, *D), t: (B,)) -> (B, *D)``.
        sde: its SDE.
        x_T: the calibration batch at ``T``, ``(B, *D)`` (a few hundred prior draws; :func:`calibration_batch`).
        steps: the grid's number of steps ``K`` (``1 <= K <= fine``).
        t_end: the end time (default ``sde.sampling_eps``).
        fine: the candidate grid's number of steps ``M``.
        fine_grid: the candidate grid's spacing (a name of ``TIME_GRIDS``).
        rtol, atol: the teacher solve's tolerances.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= fine:
        raise ValueError(f"the grid search needs 1 <= steps <= fine = {fine}, got steps={steps!r}")
    t_end = sde.sampling_eps if t_end is None else float(t_end)
    ts = get_timesteps(fine_grid, sde, t_end, fine)
    counted = _Counted(score_fn)
    with torch.no_grad():
        teacher = ProbabilityFlow(rtol=rtol, atol=atol)
        xs = teacher.integrate(counted, sde, x_T, ts, PerSampleNoise(derive_seeds(0, 0, len(x_T))), every_step=True)
        coefs = Coefficients.table(sde, ts)
        eps = [eps_and_x0(counted, xs[i], coefs[i])[0] for i in range(fine)]
        C = np.full((fine + 1, fine + 1), np.inf)
        dims = x_T[0].numel()
        for i in range(fine):
            ci = coefs[i]
            for j in range(i + 1, fine + 1):
                cj = coefs[j]
                pred = (cj.alpha / ci.alpha) * xs[i] - cj.sigma * math.expm1(cj.lam - ci.lam) * eps[i]
                C[i, j] = float(((pred - xs[j]) ** 2).sum() / (len(x_T) * dims))
    path, cost = _shortest_path(C, steps)
    info = {
        "method": "gits",
        "fine": fine,
        "fine_grid": fine_grid,
        "calibration": len(x_T),
        "rtol": rtol,
        "atol": atol,
        "step_cost": "ddim",
    }
    return GridSearch(ts[path].clone(), cost, counted.nfe, info)


def optimise_grid(
    score_fn: ScoreFn,
    sde: SDE,
    x_T: Tensor,
    steps: int,
    solver: Solver,
    *,
    t_end: float | None = None,
    sweeps: int = 8,
    fine: int = 100,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> GridSearch:
    """A grid of ``steps`` steps for ``solver`` that minimises its own endpoint error on the calibration batch.

    Starts from the best of GITS's grid (:func:`gits_grid`) and the fixed log-SNR and Karras grids, then moves each
    interior time in log-SNR coordinate by coordinate (up or down by a step that halves whenever a sweep finds no
    improvement), keeping a move when the mean squared distance per dimension between the solver's samples and the
    teacher's (the exact flow of the same ``x_T``, dopri5) falls. The endpoint error is what sampling sees, so the
    search is solver-aware, unlike GITS's first-order cost, which on the exact targets here does not beat the best
    fixed grid. The search uses half of the batch; the searched grid is kept only if it also beats its starting grid
    on the other half (else the start is returned, ``info["kept"] == "start"``). Each trial costs one
    ``steps``-step solve of half the batch.

    Args:
        score_fn, sde, x_T, steps, t_end, fine, rtol, atol: as in :func:`gits_grid`.
        solver: a deterministic solver instance (a stochastic one has no endpoint to match).
        sweeps: passes over the interior times.
    """
    if solver.stochastic:
        raise ValueError(f"the grid search needs a deterministic solver, got {solver.name} (stochastic)")
    start = gits_grid(score_fn, sde, x_T, steps, t_end=t_end, fine=fine, rtol=rtol, atol=atol)
    t_end = float(start.times[-1])
    counted = _Counted(score_fn, start.nfe)
    noise = PerSampleNoise(derive_seeds(0, 0, len(x_T)))  # unused by deterministic solvers; the contract wants one

    def _times(lam: Tensor) -> Tensor:
        ts = sde.t_from_log_snr(lam)
        ts[0], ts[-1] = start.times[0], t_end
        return ts

    with torch.no_grad():
        teacher = ProbabilityFlow(rtol=rtol * 1e-2, atol=atol * 1e-2)
        target = teacher.integrate(counted, sde, x_T, start.times[[0, -1]], noise, every_step=False)[-1]

        # Search on the even rows; the odd ones are held out, and the searched grid is kept only if it also does
        # better there than the grid the search started from (in 64-D, 128 rows can be fitted past the truth).
        parts = {"search": slice(0, None, 2), "held_out": slice(1, None, 2)}

        def loss(lam: Tensor, part: str = "search") -> float:
            ts = _times(lam)
            if not bool((ts[1:] < ts[:-1]).all()):
                return math.inf
            rows = parts[part] if len(x_T) > 1 else slice(None)
            x = solver.solve(counted, sde, x_T[rows], ts, PerSampleNoise(derive_seeds(0, 0, len(x_T[rows]))))
            err = float(((x - target[rows]) ** 2).mean())
            return err if math.isfinite(err) else math.inf

        candidates = [start.times, *(get_timesteps(g, sde, t_end, steps) for g in ("log_snr", "karras"))]
        lams = [sde.log_snr(ts) for ts in candidates]
        losses = [loss(lam) for lam in lams]
        k = int(np.argmin(losses))
        lam, best = lams[k].clone(), losses[k]
        origin = ["gits", "log_snr", "karras"][k]
        first = lam.clone()
        delta = 0.25 * float((lam[1:] - lam[:-1]).min())
        for _ in range(sweeps):
            improved = False
            for i in range(1, steps):
                for sign in (1.0, -1.0):
                    trial = lam.clone()
                    trial[i] = lam[i] + sign * delta
                    if not float(trial[i - 1]) < float(trial[i]) < float(trial[i + 1]):
                        continue
                    value = loss(trial)
                    if value < best:
                        lam, best, improved = trial, value, True
                        break
            if not improved:
                delta /= 2
        held_out, held_out_start = loss(lam, "held_out"), loss(first, "held_out")
        kept = "searched" if held_out <= held_out_start else "start"
        if kept == "start":
            lam, held_out = first, held_out_start
    times = _times(lam)
    info = {
        **start.info,
        "method": "endpoint",
        "solver": repr(solver),
        "start": origin,
        "kept": kept,
        "sweeps": sweeps,
        "endpoint_mse": best,
        "held_out_mse": held_out,
    }
    return GridSearch(times, held_out, counted.nfe, info)


def _shortest_path(C: np.ndarray, steps: int) -> tuple[list[int], float]:
    """The path ``0 = i_0 < ... < i_K = M`` of ``K = steps`` edges with the least total ``C[i_k, i_{k+1}]``."""
    M = C.shape[0] - 1
    best = np.full((steps + 1, M + 1), np.inf)
    back = np.zeros((steps + 1, M + 1), dtype=np.int64)
    best[0, 0] = 0.0
    for k in range(1, steps + 1):
        total = best[k - 1][:, None] + C  # total[i, j]: k-1 edges to i, then i -> j
        back[k] = total.argmin(0)
        best[k] = total.min(0)
    path = [M]
    for k in range(steps, 0, -1):
        path.append(int(back[k, path[-1]]))
    return path[::-1], float(best[steps, M])


def calibration_batch(
    sde: SDE, shape: tuple[int, ...], seed: int = 12345, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Prior draws ``(B, *D)`` for a grid search, from their own per-sample streams."""
    return sde.prior_sample(shape, noise=PerSampleNoise(derive_seeds(seed, 0, shape[0])), dtype=dtype)


# ---- grid files ----------------------------------------------------------------------------------------------------


def check_grid(times: Tensor, sde: SDE, source: str = "the grid") -> Tensor:
    """``times`` as a float64 CPU grid after checking it: 1-D, at least two points, strictly decreasing, within
    ``(0, T]``."""
    ts = torch.as_tensor(times, dtype=torch.float64).detach().cpu()
    if ts.ndim != 1 or len(ts) < 2:
        raise ValueError(f"{source} must be a 1-D list of at least two times, got shape {tuple(ts.shape)}")
    if not bool(torch.isfinite(ts).all()) or not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError(f"{source} must be finite and strictly decreasing")
    if not (float(ts[-1]) > 0 and float(ts[0]) <= sde.T):
        raise ValueError(f"{source} must lie in (0, T = {sde.T:g}], got [{float(ts[-1]):g}, {float(ts[0]):g}]")
    return ts


def save_grid(path: str | Path, times: Tensor, sde: SDE, **meta: Any) -> Path:
    """Write ``times`` (with the SDE it was made for and ``meta``) to the JSON grid file ``path``, atomically."""
    path = Path(path)
    ts = check_grid(times, sde)
    record = {"format": GRID_FORMAT, "sde": repr(sde), "steps": len(ts) - 1, "times": ts.tolist(), **meta}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(record, indent=1) + "\n")
    return path


def is_grid_file(name: str | Path) -> bool:
    """Whether ``name`` names a grid file (a path ending in ``.json``)."""
    return str(name).endswith(".json")


def load_grid(path: str | Path, sde: SDE) -> Tensor:
    """The grid of a file written by :func:`save_grid`, checked against ``sde`` (the grid's times mean nothing under
    another schedule)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"grid file not found: {path} (write one with `scoresde grid` or scoresde.solvers.save_grid)")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{path} is not a grid file (not JSON)") from None
    if not isinstance(record, dict) or record.get("format") != GRID_FORMAT or "times" not in record:
        raise ValueError(f"{path} is not a grid file (no format {GRID_FORMAT!r} with times)")
    if record.get("sde") != repr(sde):
        raise ValueError(f"{path} was made for {record.get('sde')}, not for this model's {sde!r}")
    return check_grid(torch.tensor(record["times"], dtype=torch.float64), sde, str(path))


def resolve_grid(grid: str | Path | Tensor, sde: SDE, t_end: float | None, steps: int | None) -> Tensor:
    """The grid ``sample`` runs on: a named grid of ``steps`` steps (default 1000) down to ``t_end`` (default
    ``sde.sampling_eps``), or a given one (a tensor or a grid file), whose steps and end are its own (``steps`` and
    ``t_end``, if given, must agree with it)."""
    if not isinstance(grid, Tensor) and not is_grid_file(grid):
        end = sde.sampling_eps if t_end is None else float(t_end)
        return get_timesteps(str(grid), sde, end, 1000 if steps is None else steps)
    ts = check_grid(grid, sde) if isinstance(grid, Tensor) else load_grid(grid, sde)
    source = "the grid" if isinstance(grid, Tensor) else str(grid)
    if steps is not None and steps != len(ts) - 1:
        raise ValueError(f"{source} has {len(ts) - 1} steps, but steps={steps} was asked for (leave steps out)")
    if t_end is not None and not math.isclose(float(t_end), float(ts[-1]), rel_tol=1e-9):
        raise ValueError(f"{source} ends at t = {float(ts[-1]):g}, but t_end={t_end:g} was asked for (leave t_end out)")
    return ts
