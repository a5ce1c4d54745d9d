"""The probability-flow ODE ``dx/dt = f - ½ g² s`` (Song et al., 2021, eq. 13) integrated by torchdiffeq."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._typing import NoiseFn, ScoreFn
from ..sde import SDE
from .base import IntegratorSolver

__all__ = ["ProbabilityFlow", "per_sample_rms_norm", "ADAPTIVE_METHODS", "FIXED_METHODS", "check_ode_method"]

ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")  # torchdiffeq's, with rtol/atol
FIXED_METHODS = ("euler", "midpoint", "heun2", "heun3", "rk4")  # torchdiffeq's fixed-step methods used here


def check_ode_method(method: str) -> None:
    """Refuse a name that is not one of the torchdiffeq methods above (torchdiffeq's own answer is an assert)."""
    if method not in (*FIXED_METHODS, *ADAPTIVE_METHODS):
        raise ValueError(
            f"unknown ODE method {method!r}; fixed-step: {', '.join(FIXED_METHODS)}; "
            f"adaptive: {', '.join(ADAPTIVE_METHODS)}"
        )


def per_sample_rms_norm(x: Tensor) -> Tensor:
    """Error norm for a batch: the largest per-sample RMS, so every sample meets the tolerance on its own
    (torchdiffeq's default RMS over the whole batch lets a few samples hide behind many easy ones)."""
    return x.flatten(1).pow(2).mean(1).sqrt().max() if x.ndim > 1 else x.pow(2).mean().sqrt()


@dataclass
class ProbabilityFlow(IntegratorSolver):
    """The probability-flow ODE through ``torchdiffeq.odeint``, with any of its methods.

    Adaptive methods (``dopri5``, ``dopri8``, ``bosh3``, ``fehlberg2``, ``adaptive_heun``) use ``rtol``/``atol`` with a
    per-sample error norm and ignore ``steps`` and the grid (NFE is what the tolerance needs, and is counted).
    Fixed-step methods (``euler``, ``midpoint``, ``heun2``, ``heun3``, ``rk4``) step exactly on the time grid.

    Args:
        method: a torchdiffeq method name.
        rtol, atol: tolerances of adaptive methods.
        method_options: extra torchdiffeq options (e.g. ``{"first_step": 1e-3}``).
        backend: ``"torchdiffeq"`` (one step size for the batch, differentiable) or ``"per_sample"`` (dopri5 only:
            :func:`scoresde.integrate.solve_per_sample`, a step size per sample from each grid time to the next, so
            a sample's trajectory does not depend on its batch; no gradients through the solve).
    """

    method: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    method_options: dict[str, Any] = field(default_factory=dict)
    backend: str = "torchdiffeq"

    stochastic = False
    _FIXED: ClassVar[dict[str, tuple[int, int]]] = {  # method: (order, NFE per step)
        "euler": (1, 1),
        "midpoint": (2, 2),
        "heun2": (2, 2),
        "heun3": (3, 3),
        "rk4": (4, 4),
    }
    _ADAPTIVE: ClassVar[tuple[str, ...]] = ADAPTIVE_METHODS

    def __post_init__(self) -> None:
        check_ode_method(self.method)
        if self.backend not in ("torchdiffeq", "per_sample"):
            raise ValueError(f"unknown backend {self.backend!r}; use 'torchdiffeq' or 'per_sample' (dopri5)")
        if self.backend == "per_sample" and (self.method != "dopri5" or self.method_options):
            raise ValueError("backend='per_sample' is dopri5 with rtol/atol only (no other method, no method_options)")
        if self.adaptive and not (self.rtol > 0 and self.atol > 0):
            raise ValueError(f"rtol and atol must be positive, got rtol={self.rtol}, atol={self.atol}")

    @property
    def adaptive(self) -> bool:
        return self.method in self._ADAPTIVE

    @property
    def convergence_order(self) -> float:
        return float(self._FIXED[self.method][0]) if not self.adaptive else float("nan")

    @property
    def evaluations_per_step(self) -> float:
        return float(self._FIXED[self.method][1]) if not self.adaptive else float("nan")

    @property
    def name(self) -> str:
        return f"ode({self.method}{', per sample' if self.backend == 'per_sample' else ''})"

    def integrate(
        self, score_fn: ScoreFn, sde: SDE, x: Tensor, timesteps: Tensor, noise: NoiseFn, every_step: bool
    ) -> Tensor:
        from torchdiffeq import odeint

        flow = sde.probability_flow(score_fn)
        grid = timesteps.to(device=x.device)
        # The clamp only guards rounding: adaptive steps land exactly on the end time (step_t below), so no
        # evaluation lies beyond it (below it a learned score can blow up: sigma -> 0 as t -> 0).
        lo, hi = float(grid.min()), float(grid.max())

        def velocity(t: Tensor, y: Tensor) -> Tensor:  # t: a scalar (torchdiffeq) or one time per row
            return flow.drift(y, t.to(torch.float64).expand(y.shape[0]).clamp(lo, hi))

        query = grid if every_step else grid[[0, -1]]
        if self.backend == "per_sample":
            return self._per_sample(velocity, x, query)
        options = dict(self.method_options)
        if self.adaptive:
            options.setdefault("norm", per_sample_rms_norm)
            # Step exactly onto the end time instead of past it: an overshooting last step evaluated the flow at
            # clamped times and interpolated back with that biased dense output
            options.setdefault("step_t", grid[-1:])
            return odeint(velocity, x, query, method=self.method, rtol=self.rtol, atol=self.atol, options=options)
        if "step_size" not in options:  # step exactly on the grid, unless a step size was asked for
            options.setdefault("grid_constructor", lambda f, y0, t: grid.to(t.dtype))
        return odeint(velocity, x, query, method=self.method, options=options)

    def _per_sample(self, velocity: Any, x: Tensor, query: Tensor) -> Tensor:
        """The states at every ``query`` time ``(len(query), B, *D)``, each sample with its own steps between them."""
        from ..integrate import solve_per_sample

        shape = x.shape[1:]

        def rhs(t: Tensor, y: Tensor, rows: Tensor) -> Tensor:
            return velocity(t, y.reshape(len(y), *shape)).flatten(1)

        states, y = [x], x.flatten(1)
        with torch.no_grad():
            for a, b in zip(query[:-1].tolist(), query[1:].tolist()):
                y = solve_per_sample(rhs, y, a, b, rtol=self.rtol, atol=self.atol).y
                states.append(y.reshape(x.shape))
        return torch.stack(states)
