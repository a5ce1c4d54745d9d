"""Inverse problems with an unconditional score: inpainting and colorization by replacement, and RePaint resampling.

An observation keeps part of the data: ``P x`` for an orthogonal projection ``P`` (a pixel mask, or the grey value of
each colour pixel). Sampling runs the reverse process of any registered solver and, before every step from ``t`` to
``t_next``, replaces the observed part of the state by the observation diffused to ``t`` (Song et al., 2021, appendix
I.2, the predictor–corrector inpainter and colorizer):

    x ← x - P x + P (alpha_t y + sigma_t z)

**RePaint** (Lugmayr et al., 2022) repeats each step ``r`` times: after stepping to ``t_next`` it jumps back to ``t`` by
the forward transition ``x_t = (alpha_t / alpha_next) x_next + sqrt(sigma_t² - (alpha_t / alpha_next)² sigma_next²) z``
and steps again, so the unobserved part has time to agree with the observed one. ``r = 1`` is plain replacement.
The last state gets the observation itself in its observed part.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._typing import NoiseFn, ScoreFn
from .sampling import SampleResult, sample
from .sde import SDE
from .solvers import Solver, SolverSpec, State, Step, get_solver

__all__ = ["Observation", "MaskObservation", "GrayObservation", "Replacement", "steps_per_step", "inpaint", "colorize"]


class Observation:
    """What is known of ``x``: an orthogonal projection ``P`` (``P = P² = Pᵀ``) applied by :meth:`project`."""

    def project(self, x: Tensor) -> Tensor:
        """``P x``: the observed part of ``x: (B, *D)``, as ``(B, *D)``."""
        raise NotImplementedError

    def replace(self, x: Tensor, known: Tensor) -> Tensor:
        """``x - P x + P known``: ``x`` with its observed part taken from ``known``."""
        return x + self.project(known - x)


class MaskObservation(Observation):
    """Inpainting: the entries where ``mask`` is 1 are known.

    Args:
        mask: 0/1 (or boolean) of shape ``(*D)``, ``(B, *D)`` or anything that broadcasts against ``(B, *D)``
            (e.g. ``(1, 1, H, W)`` for all channels of a pixel).
    """

    def __init__(self, mask: Tensor) -> None:
        mask = torch.as_tensor(mask)
        if mask.is_floating_point() and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("a mask holds 0 (unknown) and 1 (known) only")
        self.mask = mask.float()

    def project(self, x: Tensor) -> Tensor:
        return x * self.mask.to(device=x.device, dtype=x.dtype)

    def replace(self, x: Tensor, known: Tensor) -> Tensor:
        return torch.where(self.mask.to(device=x.device) > 0, known, x)  # exact: known entries are copied, not summed


class GrayObservation(Observation):
    """Colorization: the grey value (the mean over the channels, dim 1 of ``(B, C, H, W)``) of every pixel is known.

    ``P x`` replaces each pixel's channels by their mean: the projection onto ``(1, …, 1) / √C`` (Song et al., 2021,
    appendix I.2, use the same direction, rotated to a decoupled basis).
    """

    def __init__(self, channel_dim: int = 1) -> None:
        self.channel_dim = channel_dim

    def project(self, x: Tensor) -> Tensor:
        if x.ndim <= self.channel_dim or x.shape[self.channel_dim] < 2:
            raise ValueError(
                f"colorization needs several channels in dim {self.channel_dim}, got shape {tuple(x.shape)}"
            )
        return x.mean(self.channel_dim, keepdim=True).expand_as(x)


@dataclass
class Replacement(Solver):
    """Any solver with the observed part replaced before every step (and RePaint resampling when ``resample > 1``).

    Args:
        solver: the solver that makes each step (an instance; any registered one).
        observation: what is known (:class:`MaskObservation`, :class:`GrayObservation`).
        y: the data the observation comes from, ``(B, *D)`` in model space (only ``P y`` is used).
        resample: RePaint's ``r``: steps per time step, with a forward jump back between them (1: replacement).
    """

    solver: Solver
    observation: Observation
    y: Tensor
    resample: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.solver, Solver):
            raise TypeError(f"Replacement wraps a Solver instance, got {type(self.solver).__name__}")
        if isinstance(self.solver, Replacement):
            raise ValueError("Replacement cannot wrap another Replacement")
        if int(self.resample) != self.resample or self.resample < 1:
            raise ValueError(f"resample must be an integer >= 1, got {self.resample}")

    # what the wrapped solver is
    stochastic = True

    @property
    def convergence_order(self) -> float:
        return self.solver.convergence_order

    @property
    def evaluations_per_step(self) -> float:
        return self.solver.evaluations_per_step * self.resample

    @property
    def per_sample_noise(self) -> bool:
        return self.solver.per_sample_noise

    @property
    def name(self) -> str:
        kind = "replacement" if self.resample == 1 else f"repaint(r={self.resample})"
        return f"{kind}({self.solver.name})"

    def check(self, sde: SDE) -> None:
        self.solver.check(sde)

    def step(self, score_fn: ScoreFn, sde: SDE, state: State, ctx: Step) -> State:
        """Replace the observed part, step from ``t`` to ``t_next``, and (RePaint) jump back and step again, ``r``
        times in all. ``self.y`` is already on the samples' device and dtype (see :meth:`steps`)."""
        ct, cn = ctx.now, ctx.next
        for r in range(self.resample):
            x_known = ct.alpha * self.y + ct.sigma * ctx.noise(self.y)  # the observation diffused to t
            state = self.solver.step(
                score_fn, sde, State(self.observation.replace(state.x, x_known), state.history), ctx
            )
            if r < self.resample - 1:  # RePaint: jump back from t_next to t by the forward transition
                a = ct.alpha / cn.alpha
                # A jumped state lies on no earlier trajectory: a multistep solver's memory would extrapolate from
                # another path (its differences, divided by small log-SNR gaps, blow up), so it restarts.
                state = State(a * state.x + math.sqrt(max(ct.sigma**2 - (a * cn.sigma) ** 2, 0.0)) * ctx.noise(self.y))
        return state

    def steps(
        self, score_fn: ScoreFn, sde: SDE, x: Tensor, timesteps: Tensor, noise: NoiseFn
    ) -> Iterator[tuple[Step, State]]:
        """:meth:`Solver.steps` over :meth:`step`, with ``y`` moved to the samples once; the last state gets the
        observation itself in its observed part."""
        y = self.y.to(device=x.device, dtype=x.dtype)
        if y.shape != x.shape:
            raise ValueError(f"the observed data y have shape {tuple(y.shape)} but the samples {tuple(x.shape)}")
        on_device = dataclasses.replace(self, y=y)
        for ctx, state in Solver.steps(on_device, score_fn, sde, x, timesteps, noise):
            yield ctx, (dataclasses.replace(state, x=self.observation.replace(state.x, y)) if ctx.is_last else state)


def steps_per_step(method: str, resample: int | None = None) -> int:
    """Solver steps per time step of an inpainting ``method``: 1 for ``"replacement"``, ``resample`` (default 10) for
    ``"repaint"``; a bad pairing fails with what to pass instead."""
    if method not in ("replacement", "repaint"):
        raise ValueError(f"unknown inpainting method {method!r}; use 'replacement' or 'repaint'")
    if method == "replacement" and resample not in (None, 1):
        raise ValueError("replacement makes one step per time step; use method='repaint' for resample > 1")
    return 1 if method == "replacement" else (10 if resample is None else resample)


def inpaint(
    score_fn: ScoreFn,
    sde: SDE,
    y: Tensor,
    observation: Observation | Tensor,
    *,
    method: str = "replacement",
    resample: int | None = None,
    solver: SolverSpec = "euler_maruyama",
    steps: int = 1000,
    solver_options: dict[str, Any] | None = None,
    **sample_options: Any,
) -> SampleResult:
    """Fill in what ``observation`` leaves unknown of ``y: (B, *D)`` (model space) with any solver.

    Args:
        score_fn: the unconditional score (guidance transforms compose too).
        sde: its SDE.
        y: the data; only the observed part (``P y``) is used.
        observation: an :class:`Observation`, or a mask (1: known) for :class:`MaskObservation`.
        method: ``"replacement"`` or ``"repaint"``.
        resample: RePaint's jumps per step (default 10 for ``"repaint"``; must be 1 or ``None`` for replacement).
        solver, steps, solver_options: the sampler that makes the steps.
        **sample_options: passed to :func:`scoresde.sample` (``seeds``, ``generator``, ``progress``, ``device``, ...).

    Returns:
        :class:`~scoresde.SampleResult` whose ``x`` agrees with ``y`` on the observed part. A RePaint step costs
        ``resample`` solver steps, and the counted ``nfe`` says so.
    """
    r = steps_per_step(method, resample)
    obs = observation if isinstance(observation, Observation) else MaskObservation(observation)
    inner = get_solver(solver, **(solver_options or {}))
    wrapped = Replacement(inner, obs, y, resample=r)
    return sample(score_fn, sde, tuple(y.shape), solver=wrapped, steps=steps, **sample_options)


def colorize(score_fn: ScoreFn, sde: SDE, y: Tensor, **options: Any) -> SampleResult:
    """Colour images from the grey values of ``y: (B, C, H, W)`` (any colour image with those greys; a grey image
    repeated over ``C`` channels will do): :func:`inpaint` with a :class:`GrayObservation`."""
    return inpaint(score_fn, sde, y, GrayObservation(), **options)
