"""The solver interface: a solver is a small class that implements one step; the base class owns the loop.

Class attributes declare what a solver is (``order``, ``stochastic``, ``nfe_per_step``) and what it needs from the SDE
(``requires``: names of SDE methods). Options are dataclass fields, so a misspelt option fails when the solver is built.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._typing import NoiseFn, ScoreFn
from ..sde import SDE

__all__ = ["Solver", "State", "SolverSDEIncompatible", "StepCallback", "IntegratorSolver", "Coefficients", "diffusion_at", "tvec", "eps_and_x0"]


class SolverSDEIncompatible(ValueError):
    """A solver was paired with an SDE that lacks what the solver needs."""


@dataclass
class State:
    """What a solver carries from one step to the next.

    Attributes:
        x: the current sample ``(B, *D)``.
        history: solver-specific memory (e.g. earlier model outputs of a multistep method), explicit and immutable.
    """

    x: Tensor
    history: tuple[Any, ...] = field(default_factory=tuple)


StepCallback = Callable[[int, float, State], None]
"""``callback(i, t_next, state)`` after step ``i`` (0-based) has moved the state to time ``t_next``."""


@dataclass(frozen=True)
class Coefficients:
    """Schedule values at one time, as Python floats computed in float64: ``x_t = alpha x_0 + sigma eps``,
    ``lam = log(alpha / sigma)``, ``g`` the diffusion coefficient."""

    t: float
    alpha: float
    sigma: float
    lam: float
    g: float

    @classmethod
    def table(cls, sde: SDE, ts: Tensor) -> list["Coefficients"]:
        """Coefficients at every time of ``ts: (N,)``, computed in one vectorised float64 call per quantity."""
        tt = ts.to(dtype=torch.float64, device="cpu")
        cols = [tt, sde.alpha(tt), sde.sigma(tt), sde.log_snr(tt), sde.diffusion(tt)]
        return [cls(*row) for row in zip(*(c.tolist() for c in cols))]

    @classmethod
    def at(cls, sde: SDE, t: float) -> "Coefficients":
        return cls.table(sde, torch.tensor([t], dtype=torch.float64))[0]

    @classmethod
    def at_log_snr(cls, sde: SDE, lam: float) -> "Coefficients":
        return cls.at(sde, float(sde.t_from_log_snr(torch.tensor([lam], dtype=torch.float64))[0]))


def diffusion_at(sde: SDE, t: float) -> float:
    """``g(t)`` as a Python float (computed in float64 on the CPU)."""
    return float(sde.diffusion(torch.tensor([t], dtype=torch.float64))[0])


def tvec(x: Tensor, t: float) -> Tensor:
    """The time ``t`` once per sample: ``(B,)`` float64 on ``x``'s device."""
    return torch.full((x.shape[0],), t, dtype=torch.float64, device=x.device)


def eps_and_x0(score_fn: ScoreFn, x: Tensor, c: Coefficients) -> tuple[Tensor, Tensor]:
    """Noise and data predictions from one score evaluation: ``eps = -sigma s``, ``x0 = (x - sigma eps) / alpha``."""
    eps = -c.sigma * score_fn(x, tvec(x, c.t))
    return eps, (x - c.sigma * eps) / c.alpha


@dataclass
class Solver(abc.ABC):
    """Base class of every sampler. Subclasses are dataclasses whose fields are their options.

    Implement :meth:`step`; set ``order``, ``stochastic`` and ``nfe_per_step``; list in ``requires`` the SDE methods
    the step calls beyond the basic ones, so an incompatible pairing fails up front with :class:`SolverSDEIncompatible`.
    Solvers that integrate on their own (adaptive ODE solvers, torchsde) override :meth:`solve` instead.
    """

    order: ClassVar[float]
    """Convergence order in the step size (weak order for stochastic solvers)."""
    strong_order: ClassVar[float | None] = None
    """Strong (pathwise) order, for SDE solvers."""
    stochastic: ClassVar[bool]
    nfe_per_step: ClassVar[float]
    requires: ClassVar[tuple[str, ...]] = ()
    per_sample_noise: ClassVar[bool] = True
    """Whether all randomness comes through the ``noise`` hook (one stream per sample, so samples do not depend on
    the batch they were drawn in)."""

    @property
    def name(self) -> str:
        return type(self).__name__

    def check(self, sde: SDE) -> None:
        """Raise :class:`SolverSDEIncompatible` if ``sde`` lacks anything this solver needs."""
        missing = [m for m in self.requires if not callable(getattr(sde, m, None))]
        if missing:
            raise SolverSDEIncompatible(
                f"solver {self.name} needs the SDE to provide {', '.join(missing)}, which {type(sde).__name__} does not"
            )

    def options(self) -> dict[str, Any]:
        """The solver's options (its dataclass fields) as a dict."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @abc.abstractmethod
    def step(
        self, score_fn: ScoreFn, sde: SDE, state: State, ct: Coefficients, cn: Coefficients, noise: NoiseFn, i: int, n: int
    ) -> State:
        """Advance ``state`` from time ``ct.t`` to ``cn.t < ct.t``.

        Args:
            score_fn: the score, called as ``score_fn(x, t)`` with ``t: (B,)`` (see :func:`tvec`).
            sde: the forward SDE.
            state: the current state.
            ct, cn: schedule values at the step's start and end (precomputed for the whole grid).
            noise: draws standard normal noise shaped like its argument.
            i, n: this is step ``i`` (0-based) of ``n``; ``i == n - 1`` is the last.
        """

    def solve(
        self,
        score_fn: ScoreFn,
        sde: SDE,
        x: Tensor,
        timesteps: Tensor,
        noise: NoiseFn,
        callback: StepCallback | None = None,
    ) -> Tensor:
        """Run :meth:`step` over the decreasing float64 grid ``timesteps: (N + 1,)`` starting from ``x = x_{t_0}``."""
        coefs = Coefficients.table(sde, timesteps)
        state = State(x=x)
        n = len(coefs) - 1
        for i in range(n):
            state = self.step(score_fn, sde, state, coefs[i], coefs[i + 1], noise, i, n)
            if callback is not None:
                callback(i, coefs[i + 1].t, state)
        return state.x


class IntegratorSolver(Solver):
    """A solver that hands the whole interval to a library integrator (torchdiffeq, torchsde) instead of stepping.

    Subclasses implement :meth:`integrate`; callbacks are replayed afterwards from the states at the grid times.
    """

    def step(self, *args: Any, **kwargs: Any) -> State:
        raise NotImplementedError(f"{self.name} integrates the whole interval at once; call solve()")

    @abc.abstractmethod
    def integrate(
        self, score_fn: ScoreFn, sde: SDE, x: Tensor, timesteps: Tensor, noise: NoiseFn, every_step: bool
    ) -> Tensor:
        """States ``(K, B, *D)`` at every time of ``timesteps`` (``every_step``) or at its two ends (``K = 2``)."""

    def solve(
        self,
        score_fn: ScoreFn,
        sde: SDE,
        x: Tensor,
        timesteps: Tensor,
        noise: NoiseFn,
        callback: StepCallback | None = None,
    ) -> Tensor:
        ys = self.integrate(score_fn, sde, x, timesteps, noise, every_step=callback is not None)
        if callback is not None:
            for i, t_next in enumerate(timesteps.tolist()[1:]):
                callback(i, t_next, State(ys[i + 1]))
        return ys[-1]
