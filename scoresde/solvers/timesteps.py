"""Time grids for fixed-step solvers: decreasing float64 tensors ``(steps + 1,)`` from ``T`` to ``t_end``.

Every grid is built in float64 on the CPU and mapped back to ``t`` exactly, so solvers see the same times whatever
precision they sample in. Grids that are uniform in another variable (log-SNR, EDM's sigma) go through
``sde.t_from_log_snr``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..sde import SDE, DiscreteVPSDE

__all__ = [
    "uniform",
    "quadratic",
    "log_snr",
    "karras",
    "karras_levels",
    "leading",
    "trailing",
    "linspace",
    "TIME_GRIDS",
    "get_timesteps",
]


def _log_snr_ends(sde: SDE, t_end: float) -> tuple[float, float]:
    """``lambda`` at ``T`` and at ``t_end``, in float64."""
    lam_T, lam_end = sde.log_snr(torch.tensor([sde.T, t_end], dtype=torch.float64)).tolist()
    return lam_T, lam_end


def uniform(sde: SDE, t_end: float, steps: int) -> Tensor:
    """Evenly spaced in ``t``: every step has ``dt = (T - t_end) / steps`` (the score SDE paper's grid)."""
    return torch.linspace(sde.T, t_end, steps + 1, dtype=torch.float64)


def quadratic(sde: SDE, t_end: float, steps: int) -> Tensor:
    """``t_i = t_end + (T - t_end) (1 - i/N)²``: denser near ``t_end`` (DDIM's quadratic schedule)."""
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return t_end + (sde.T - t_end) * u**2


def log_snr(sde: SDE, t_end: float, steps: int) -> Tensor:
    """Evenly spaced in ``lambda = log(alpha/sigma)`` (DPM-Solver's default ``logSNR`` grid)."""
    lam = torch.linspace(*_log_snr_ends(sde, t_end), steps + 1, dtype=torch.float64)
    return _pin_ends(sde.t_from_log_snr(lam), sde.T, t_end)


def karras_levels(s_max: float, s_min: float, steps: int, rho: float = 7.0) -> Tensor:
    """EDM's noise levels (Karras et al., 2022, eq. 5): ``s_i = (s_max^{1/rho} + i/N (s_min^{1/rho} - s_max^{1/rho}))^rho``,
    ``i = 0 … N``, float64 ``(steps + 1,)``."""
    i = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    return (s_max ** (1 / rho) + i * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho


def karras(sde: SDE, t_end: float, steps: int, rho: float = 7.0) -> Tensor:
    """EDM's grid (:func:`karras_levels`, ``rho = 7``) in ``sigma/alpha = e^{-lambda}``; ends at ``t_end`` (not 0)."""
    s_max, s_min = (math.exp(-lam) for lam in _log_snr_ends(sde, t_end))
    s = karras_levels(s_max, s_min, steps, rho)
    return _pin_ends(sde.t_from_log_snr(-torch.log(s)), sde.T, t_end)


# ---- the discrete timesteps of a DDPM table, spaced as diffusers' schedulers space them -------------------------
def _discrete(sde: SDE, steps: int, name: str) -> DiscreteVPSDE:
    """``sde`` as the discrete schedule the spacing ``name`` needs, with at least ``steps`` timesteps."""
    if not isinstance(sde, DiscreteVPSDE):
        raise ValueError(f"time grid {name!r} spaces the timesteps of a discrete schedule (DiscreteVPSDE), not {sde!r}")
    if steps > sde.num_timesteps:
        raise ValueError(f"time grid {name!r}: {steps} steps on a schedule of {sde.num_timesteps} timesteps")
    return sde


def _on_timesteps(sde: DiscreteVPSDE, name: str, n: Tensor, t_end: float) -> Tensor:
    """Times ``(n + 1)/N`` of the decreasing timesteps ``n``, then ``t_end`` (timestep 0 at ``1/N`` by default): the
    step from the last timestep goes where diffusers' goes when ``set_alpha_to_one=False``. When the last timestep is
    0 itself, that step would change nothing (diffusers spends one evaluation on it) and the grid ends there."""
    ts = sde.time_of(n)
    if float(ts[-1]) > t_end:
        ts = torch.cat([ts, torch.tensor([t_end], dtype=torch.float64)])
    elif float(ts[-1]) < t_end:
        raise ValueError(
            f"time grid {name!r} reaches timestep {int(n[-1])} (t = {float(ts[-1]):g}) below t_end={t_end:g}"
        )
    return ts


def leading(sde: SDE, t_end: float, steps: int) -> Tensor:
    """diffusers' ``leading`` spacing: timesteps ``k (N // S)``, ``k = S-1 … 0`` (DDIM's original choice)."""
    table = _discrete(sde, steps, "leading")
    N = table.num_timesteps
    n = torch.arange(steps - 1, -1, -1, dtype=torch.float64) * (N // steps)
    return _on_timesteps(table, "leading", n, t_end)


def trailing(sde: SDE, t_end: float, steps: int) -> Tensor:
    """diffusers' ``trailing`` spacing: ``round(N - k N/S) - 1``, ``k = 0 … S-1``: starts at the last timestep."""
    table = _discrete(sde, steps, "trailing")
    N = table.num_timesteps
    n = torch.round(N - torch.arange(steps, dtype=torch.float64) * (N / steps)) - 1
    return _on_timesteps(table, "trailing", n, t_end)


def linspace(sde: SDE, t_end: float, steps: int) -> Tensor:
    """diffusers' ``linspace`` spacing: ``round(linspace(0, N - 1, S))`` reversed."""
    table = _discrete(sde, steps, "linspace")
    N = table.num_timesteps
    n = torch.round(torch.linspace(0, N - 1, steps, dtype=torch.float64)).flip(0)
    return _on_timesteps(table, "linspace", n, t_end)


def _pin_ends(ts: Tensor, T: float, t_end: float) -> Tensor:
    """Set the ends exactly (the round trip through log-SNR is accurate to ~1e-15, not bit-exact)."""
    ts[0], ts[-1] = T, t_end
    return ts


TIME_GRIDS: dict[str, Callable[[SDE, float, int], Tensor]] = {
    "uniform": uniform,
    "quadratic": quadratic,
    "log_snr": log_snr,
    "karras": karras,
}
"""Time grids by name: ``grid(sde, t_end, steps) -> (steps + 1,)`` float64, decreasing from ``sde.T``."""

DISCRETE_GRIDS: dict[str, Callable[[SDE, float, int], Tensor]] = {
    "leading": leading,
    "trailing": trailing,
    "linspace": linspace,
}
"""diffusers' timestep spacings, for discrete schedules: decreasing float64 grids on the table's timesteps, from the
first timestep (not always ``T``) to ``t_end`` (``steps + 1`` points, or ``steps`` when they end on timestep 0)."""


def get_timesteps(name: str, sde: SDE, t_end: float, steps: int) -> Tensor:
    """Build the grid ``name`` (see :data:`TIME_GRIDS` and :data:`DISCRETE_GRIDS`); checks ``0 < t_end < T`` and
    ``steps >= 1``."""
    grids = {**TIME_GRIDS, **DISCRETE_GRIDS}
    if name not in grids:
        raise ValueError(
            f"unknown time grid {name!r}; available: {', '.join(TIME_GRIDS)}; "
            f"on discrete schedules also: {', '.join(DISCRETE_GRIDS)}"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not 0 < t_end < sde.T:
        raise ValueError(f"the end time must satisfy 0 < t_end < T = {sde.T:g}, got t_end={t_end!r}")
    ts = grids[name](sde, float(t_end), steps)
    if not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError(f"time grid {name!r} is not strictly decreasing for {steps} steps down to t_end={t_end:g}")
    return ts
