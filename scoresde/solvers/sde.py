"""Solvers of the reverse-time SDE ``dx = [f - g² s] dt + g dw̄`` (Song et al., 2021, eq. 6)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .._typing import NoiseFn, ScoreFn
from .._utils import append_dims
from ..sde import SDE
from .base import Solver, State

__all__ = ["EulerMaruyama"]


@dataclass
class EulerMaruyama(Solver):
    """Euler–Maruyama on the reverse SDE: ``x ← x + [f - g² s] Δt + g sqrt(|Δt|) z`` with ``Δt = t_next - t < 0``.

    As in the reference implementation, the last step returns the noise-free mean. Weak order 1, strong order ½
    (additive noise would give strong order 1 for a state-independent score; the learned score is not).
    """

    order = 1.0
    strong_order = 0.5
    stochastic = True
    nfe_per_step = 1

    def step(self, score_fn: ScoreFn, sde: SDE, state: State, t: Tensor, t_next: Tensor, noise: NoiseFn, last: bool) -> State:
        x = state.x
        dt = append_dims(t_next - t, x.ndim).to(x.dtype)
        g = append_dims(sde.diffusion(t), x.ndim).to(x.dtype)
        x_mean = x + (sde.drift(x, t) - g**2 * score_fn(x, t)) * dt
        if last:
            return State(x_mean)
        return State(x_mean + g * (-dt).sqrt() * noise(x))
