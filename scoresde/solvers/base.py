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

from torch import Tensor

from .._typing import NoiseFn, ScoreFn
from ..sde import SDE

__all__ = ["Solver", "State", "SolverSDEIncompatible", "StepCallback"]


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


@dataclass
class Solver(abc.ABC):
    """Base class of every sampler. Subclasses are dataclasses whose fields are their options.

    Implement :meth:`step`; set ``order``, ``stochastic`` and ``nfe_per_step``; list in ``requires`` the SDE methods
    the step calls beyond the basic ones, so an incompatible pairing fails up front with :class:`SolverSDEIncompatible`.
    """

    order: ClassVar[float]
    """Convergence order in the step size (weak order for stochastic solvers)."""
    strong_order: ClassVar[float | None] = None
    """Strong (pathwise) order, for SDE solvers."""
    stochastic: ClassVar[bool]
    nfe_per_step: ClassVar[int]
    requires: ClassVar[tuple[str, ...]] = ()

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
    def step(self, score_fn: ScoreFn, sde: SDE, state: State, t: Tensor, t_next: Tensor, noise: NoiseFn, last: bool) -> State:
        """Advance ``state`` from time ``t`` to ``t_next < t``.

        Args:
            score_fn: the score, called as ``score_fn(x, t)`` with ``t: (B,)``.
            sde: the forward SDE.
            state: the current state.
            t, t_next: ``(B,)`` float64 times on the sample's device.
            noise: draws standard normal noise shaped like its argument.
            last: whether this is the final step of the solve.
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
        state = State(x=x)
        ts = timesteps.to(device=x.device)
        B = x.shape[0]
        n = len(ts) - 1
        for i in range(n):
            t, t_next = ts[i].expand(B), ts[i + 1].expand(B)
            state = self.step(score_fn, sde, state, t, t_next, noise, i == n - 1)
            if callback is not None:
                callback(i, float(ts[i + 1]), state)
        return state.x
