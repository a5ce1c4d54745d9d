"""The solver contract: a solver is a small class that implements one step; the base class owns the loop.

A solver is a dataclass whose fields are its options (a misspelt option fails when it is built). What it *is* is
read-only metadata, declared as class constants (or, where it follows from the options, as properties):

- ``convergence_order``: order in the step size (weak order for stochastic solvers), ``strong_order`` (pathwise);
- ``stochastic``: whether it draws noise; ``per_sample_noise``: whether all of it comes through the ``noise`` hook;
- ``evaluations_per_step``: score evaluations per step;
- ``requires``: SDE methods the step calls beyond the basic ones (checked by :meth:`Solver.check`);
- ``min_dims``: data dimensions per sample below which the solver is unsafe (:meth:`Solver.check_size` refuses it
  there, and automatic choices never pick it).

``step(score_fn, sde, state, ctx) -> State`` moves the state from ``ctx.now.t`` to ``ctx.next.t``; :meth:`Solver.steps`
yields the states one by one and :meth:`Solver.solve` runs them to the end.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._typing import NoiseFn, ScoreFn
from ..sde import SDE

__all__ = [
    "Solver",
    "GaussianStepSolver",
    "Transition",
    "State",
    "Step",
    "SolverSDEIncompatible",
    "StepCallback",
    "IntegratorSolver",
    "Coefficients",
    "diffusion_at",
    "tvec",
    "eps_and_x0",
    "multistep_order",
    "forward_transition",
    "posterior_coefficients",
]


class SolverSDEIncompatible(ValueError):
    """A solver was paired with an SDE that lacks what the solver needs."""


@dataclass(frozen=True)
class State:
    """What a solver carries from one step to the next.

    Attributes:
        x: the current sample ``(B, *D)``.
        history: solver-specific memory (e.g. earlier model outputs of a multistep method), explicit and immutable.
        denoised: the data prediction ``x̂_0 = E[x_0 | x_t]`` the last step formed at its start time ``(B, *D)``,
            where the solver forms one (``None`` otherwise); callbacks and :meth:`Solver.steps` users read it.
    """

    x: Tensor
    history: tuple[Any, ...] = field(default_factory=tuple)
    denoised: Tensor | None = None


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
    def table(cls, sde: SDE, ts: Tensor) -> list[Coefficients]:
        """Coefficients at every time of ``ts: (N,)``, computed in one vectorised float64 call per quantity."""
        tt = ts.to(dtype=torch.float64, device="cpu")
        cols = [tt, sde.alpha(tt), sde.sigma(tt), sde.log_snr(tt), sde.diffusion(tt)]
        return [cls(*row) for row in zip(*(c.tolist() for c in cols))]

    @classmethod
    def at(cls, sde: SDE, t: float) -> Coefficients:
        return cls.table(sde, torch.tensor([t], dtype=torch.float64))[0]

    @classmethod
    def at_log_snr(cls, sde: SDE, lam: float) -> Coefficients:
        return cls.at(sde, float(sde.t_from_log_snr(torch.tensor([lam], dtype=torch.float64))[0]))


@dataclass(frozen=True)
class Step:
    """Everything one step knows besides the state: the schedule at both ends, where it is in the run, the noise.

    Attributes:
        now: coefficients at the start time ``t`` (the step goes from ``now.t`` down to ``next.t < now.t``).
        next: coefficients at the end time.
        index: this is step ``index`` (0-based) of ``count``.
        count: the number of steps of the run.
        noise: draws standard normal noise shaped like its argument (one stream per sample).
    """

    now: Coefficients
    next: Coefficients
    index: int
    count: int
    noise: NoiseFn

    @property
    def is_last(self) -> bool:
        """Whether this is the final step (samplers return a noise-free mean there)."""
        return self.index == self.count - 1

    @property
    def remaining(self) -> int:
        """Steps left including this one (``count - index``)."""
        return self.count - self.index


StepCallback = Callable[[int, float, State], None]
"""``callback(i, t_next, state)`` after step ``i`` (0-based) has moved the state to time ``t_next``;
``state.denoised`` holds the step's ``x̂_0`` where the solver forms one."""


@dataclass(frozen=True)
class Transition:
    """A step's Gaussian kernel ``p(x_next | x_t) = N(mean, std² I)`` (``std`` per element where it is a tensor).

    Attributes:
        mean: ``(B, *D)``; the step returns it unchanged on the last step (the noise-free mean).
        std: a float shared by every element, or ``(B, *D)``.
        denoised: the data prediction ``x̂_0`` the step formed at ``t``, where it forms one.
    """

    mean: Tensor
    std: float | Tensor
    denoised: Tensor | None = None


def forward_transition(now: Coefficients, next: Coefficients) -> tuple[float, float]:
    """``(a, G²)`` of the forward transition from ``s = next.t`` up to ``t = now.t``, ``x_t = a x_s + G z``:
    ``a = alpha_t / alpha_s`` and ``G² = sigma_t² - a² sigma_s²`` (floored at 0 against rounding)."""
    a = now.alpha / next.alpha
    return a, max(now.sigma**2 - (a * next.sigma) ** 2, 0.0)


def posterior_coefficients(now: Coefficients, next: Coefficients) -> tuple[float, float, float]:
    """``(c_t, c_0, var)`` of the forward process's posterior ``q(x_s | x_t, x_0) = N(c_t x_t + c_0 x_0, var)``
    from ``t = now.t`` to ``s = next.t < t`` (Ho et al., 2020, eq. 7, for any ``x_t = alpha_t x_0 + sigma_t eps``):
    with ``a = alpha_t / alpha_s`` and ``G² = sigma_t² - a² sigma_s²``, ``c_t = a sigma_s² / sigma_t²``,
    ``c_0 = alpha_s G² / sigma_t²`` and ``var = G² sigma_s² / sigma_t²`` (DDPM's ``beta~``)."""
    a, G2 = forward_transition(now, next)
    s2 = now.sigma**2
    return a * next.sigma**2 / s2, next.alpha * G2 / s2, G2 * next.sigma**2 / s2


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


def multistep_order(order: int, known: int, ctx: Step, lower_order_final: bool, short: int | None) -> int:
    """The order of this step: at most the outputs known (warm-up), and with ``lower_order_final`` at most the steps
    left on runs shorter than ``short`` steps (every run when ``short`` is ``None``)."""
    k = min(order, known)
    if lower_order_final and (short is None or ctx.count < short):
        k = min(k, ctx.remaining)
    return k


def grid_steps(sde: SDE, timesteps: Tensor, noise: NoiseFn) -> Iterator[Step]:
    """The :class:`Step` contexts of a decreasing float64 grid ``timesteps: (N + 1,)``."""
    coefs = Coefficients.table(sde, timesteps)
    n = len(coefs) - 1
    for i in range(n):
        yield Step(coefs[i], coefs[i + 1], i, n, noise)


@dataclass
class Solver(abc.ABC):
    """Base class of every sampler. Subclasses are dataclasses whose fields are their options.

    The contract, all of it:

    - implement ``step(score_fn, sde, state, ctx) -> State``: advance ``state.x`` from ``ctx.now.t`` to
      ``ctx.next.t < ctx.now.t``, calling ``score_fn(x, t)`` with ``t: (B,)`` float64 (see :func:`tvec`) and drawing
      noise only as ``ctx.noise(like)``; keep multistep memory in ``State.history`` (never in attributes) and put the
      step's data prediction in ``State.denoised`` where you form one;
    - declare the metadata as class constants: ``convergence_order``, ``stochastic``, ``evaluations_per_step`` (and,
      when they differ from the defaults, ``strong_order``, ``per_sample_noise``, ``requires``); metadata that follow
      from an option are read-only properties; no option may reuse a metadata name;
    - solvers that integrate on their own (adaptive ODE solvers, torchsde) subclass :class:`IntegratorSolver`.
    """

    strong_order: ClassVar[float | None] = None
    """Strong (pathwise) order, for SDE solvers."""
    requires: ClassVar[tuple[str, ...]] = ()
    """SDE methods the step needs beyond the basic ones."""

    @property
    def per_sample_noise(self) -> bool:
        """Whether all randomness comes through the ``noise`` hook (one stream per sample, so samples do not depend
        on the batch they were drawn in)."""
        return True

    @property
    def convergence_order(self) -> float:
        """Convergence order in the step size (weak order for stochastic solvers; NaN where there is none)."""
        raise NotImplementedError(f"{type(self).__name__} declares no convergence_order")

    @property
    def stochastic(self) -> bool:
        """Whether the solver draws noise."""
        raise NotImplementedError(f"{type(self).__name__} declares no stochastic")

    @property
    def evaluations_per_step(self) -> float:
        """Score evaluations per step (NaN for adaptive solvers: the tolerance decides, and NFE is counted)."""
        raise NotImplementedError(f"{type(self).__name__} declares no evaluations_per_step")

    @property
    def min_dims(self) -> int:
        """Data dimensions per sample below which the solver is unsafe (1: safe everywhere)."""
        return 1

    @property
    def name(self) -> str:
        return type(self).__name__

    def check_size(self, dims: int) -> None:
        """Raise ``ValueError`` if data of ``dims`` dimensions per sample are below :attr:`min_dims`."""
        if dims < self.min_dims:
            raise ValueError(
                f"solver {self.name} is unsafe below {self.min_dims} dimensions per sample; these data have {dims}"
            )

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
    def step(self, score_fn: ScoreFn, sde: SDE, state: State, ctx: Step) -> State:
        """Advance ``state`` from time ``ctx.now.t`` to ``ctx.next.t`` (see the class docstring)."""

    def steps(
        self, score_fn: ScoreFn, sde: SDE, x: Tensor, timesteps: Tensor, noise: NoiseFn
    ) -> Iterator[tuple[Step, State]]:
        """Yield ``(ctx, state)`` after every step of the decreasing float64 grid ``timesteps: (N + 1,)``, starting
        from ``x = x_{t_0}``: the iterator form for users who bring their own loop."""
        state = State(x=x)
        for ctx in grid_steps(sde, timesteps, noise):
            state = self.step(score_fn, sde, state, ctx)
            yield ctx, state

    def solve(
        self,
        score_fn: ScoreFn,
        sde: SDE,
        x: Tensor,
        timesteps: Tensor,
        noise: NoiseFn,
        callback: StepCallback | None = None,
    ) -> Tensor:
        """Run :meth:`steps` to the end and return the final ``x``; ``callback(i, t_next, state)`` after each step."""
        for ctx, state in self.steps(score_fn, sde, x, timesteps, noise):
            if callback is not None:
                callback(ctx.index, ctx.next.t, state)
            x = state.x
        return x


class GaussianStepSolver(Solver):
    """A solver whose step draws from a Gaussian kernel: implement :meth:`transition`; the step is ``mean + std z``
    (the mean on the last step). Particle filters (:func:`scoresde.inverse.smc`) weight by the kernel's density."""

    @abc.abstractmethod
    def transition(self, score_fn: ScoreFn, sde: SDE, state: State, ctx: Step) -> Transition:
        """The kernel ``p(x_next | x_t)`` of the step from ``ctx.now.t`` to ``ctx.next.t`` at ``state.x``."""

    def step(self, score_fn: ScoreFn, sde: SDE, state: State, ctx: Step) -> State:
        k = self.transition(score_fn, sde, state, ctx)
        x = k.mean if ctx.is_last else k.mean + k.std * ctx.noise(k.mean)
        return State(x, denoised=k.denoised)


class IntegratorSolver(Solver):
    """A solver that hands the whole interval to a library integrator (torchdiffeq, torchsde) instead of stepping.

    Subclasses implement :meth:`integrate`; :meth:`steps` replays the states at the grid times after the solve.
    """

    def step(self, score_fn: ScoreFn, sde: SDE, state: State, ctx: Step) -> State:
        """One grid interval handed to the integrator (used where a wrapper steps it, as inpainting does)."""
        grid = torch.tensor([ctx.now.t, ctx.next.t], dtype=torch.float64, device=state.x.device)
        return State(self.integrate(score_fn, sde, state.x, grid, ctx.noise, every_step=False)[-1])

    @abc.abstractmethod
    def integrate(
        self, score_fn: ScoreFn, sde: SDE, x: Tensor, timesteps: Tensor, noise: NoiseFn, every_step: bool
    ) -> Tensor:
        """States ``(K, B, *D)`` at every time of ``timesteps`` (``every_step``) or at its two ends (``K = 2``)."""

    def steps(
        self, score_fn: ScoreFn, sde: SDE, x: Tensor, timesteps: Tensor, noise: NoiseFn
    ) -> Iterator[tuple[Step, State]]:
        ys = self.integrate(score_fn, sde, x, timesteps, noise, every_step=True)
        for ctx in grid_steps(sde, timesteps, noise):
            yield ctx, State(ys[ctx.index + 1])

    def solve(
        self,
        score_fn: ScoreFn,
        sde: SDE,
        x: Tensor,
        timesteps: Tensor,
        noise: NoiseFn,
        callback: StepCallback | None = None,
    ) -> Tensor:
        if callback is not None:
            return super().solve(score_fn, sde, x, timesteps, noise, callback)
        return self.integrate(score_fn, sde, x, timesteps, noise, every_step=False)[-1]
