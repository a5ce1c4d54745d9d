"""Type aliases shared by the whole package."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from torch import Tensor

__all__ = ["Tensor", "ScoreFn", "DenoiserFn", "NoiseFn"]

ScoreFn = Callable[[Tensor, Tensor], Tensor]
"""``score_fn(x, t) -> ∇_x log p_t(x)`` with ``x: (B, *D)``, ``t: (B,)``; returns ``(B, *D)``."""

DenoiserFn = Callable[[Tensor, Tensor], Tensor]
"""``denoiser(x, t) -> E[x_0 | x_t = x]`` with the shapes of :data:`ScoreFn`."""


class NoiseFn(Protocol):
    """Draws standard normal noise shaped like ``x`` (where a solver's randomness comes from)."""

    def __call__(self, x: Tensor) -> Tensor: ...
