"""Time grids for fixed-step solvers: decreasing float64 tensors from ``T`` to ``t_end``."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["uniform", "TIME_GRIDS", "get_timesteps"]


def uniform(T: float, t_end: float, steps: int) -> Tensor:
    """``steps + 1`` times evenly spaced from ``T`` down to ``t_end``; every step has ``dt = (T - t_end) / steps``."""
    return torch.linspace(T, t_end, steps + 1, dtype=torch.float64)


TIME_GRIDS = {"uniform": uniform}


def get_timesteps(name: str, T: float, t_end: float, steps: int) -> Tensor:
    """Build the grid ``name`` (see ``TIME_GRIDS``); checks ``0 < t_end < T`` and ``steps >= 1``."""
    if name not in TIME_GRIDS:
        raise ValueError(f"unknown time grid {name!r}; available: {', '.join(TIME_GRIDS)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not 0 < t_end < T:
        raise ValueError(f"the end time must satisfy 0 < t_end < T = {T:g}, got t_end={t_end!r}")
    return TIME_GRIDS[name](T, t_end, steps)
