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

**SMC-Diff** (Trippe et al., 2022, Algorithm 1) makes replacement exact as the number of particles grows. The
observation is diffused along one forward trajectory ``y_{t_0}, …, y_{t_N}`` (the chain is drawn backwards, each
``y_s`` from the forward posterior ``q(y_s | y_t, y)``); ``K`` particles per observation carry ``y_t`` in their
observed part. Each step evaluates the solver's Gaussian kernel ``p(x_s | x_t) = N(m(x_t), std²)`` once per particle,
weights the particle by the kernel's density of the observed part at the noised observation,
``w ∝ N(P y_s; P m(x_t), std² P)``, resamples (systematically) when the effective sample size ``1 / Σ w²`` falls
below ``ess_threshold · K``, and then draws the unobserved part from the kernel. With ``K = 1`` no weight acts and
it is replacement (with the observation noised along one trajectory instead of afresh at every step).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ._typing import NoiseFn, ScoreFn
from .noise import PerSampleNoise, child_seeds
from .sampling import CountingScore, SampleResult, bind_learned_variance, prepare_sampling, resolve_seeds, sample
from .sde import SDE
from .solvers import GaussianStepSolver, Solver, SolverSpec, State, Step, get_solver
from .solvers.base import forward_transition, grid_steps, posterior_coefficients

__all__ = [
    "Observation",
    "MaskObservation",
    "GrayObservation",
    "Replacement",
    "SMCResult",
    "smc",
    "observed_log_density",
    "systematic_resample",
    "steps_per_step",
    "check_smc_options",
    "inpaint",
    "colorize",
]

METHODS = ("replacement", "repaint", "smc")


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
                a, G2 = forward_transition(ct, cn)
                # A jumped state lies on no earlier trajectory: a multistep solver's memory would extrapolate from
                # another path (its differences, divided by small log-SNR gaps, blow up), so it restarts.
                state = State(a * state.x + math.sqrt(G2) * ctx.noise(self.y))
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
    """Solver steps per time step of an inpainting ``method``: 1 for ``"replacement"`` and ``"smc"``, ``resample``
    (default 10) for ``"repaint"``; a bad pairing fails with what to pass instead."""
    if method not in METHODS:
        raise ValueError(f"unknown inpainting method {method!r}; use 'replacement', 'repaint' or 'smc'")
    if method != "repaint" and resample not in (None, 1):
        raise ValueError(f"{method} makes one step per time step; use method='repaint' for resample > 1")
    return 10 if method == "repaint" and resample is None else (resample or 1)


def check_smc_options(method: str, particles: int | None, ess_threshold: float = 0.5) -> None:
    """Refuse SMC options that are out of range or given to another method, saying what to pass instead."""
    if particles is not None and method != "smc":
        raise ValueError(f"particles apply to method 'smc', not {method!r}")
    if particles is not None and (int(particles) != particles or particles < 1):
        raise ValueError(f"particles must be an integer >= 1, got {particles}")
    if not 0.0 <= ess_threshold <= 1.0:
        raise ValueError(f"ess_threshold must lie in [0, 1], got {ess_threshold}")


def observed_log_density(observation: Observation, value: Tensor, mean: Tensor, std: float | Tensor) -> Tensor:
    """``log N(P value; P mean, std² P)`` of ``(B, *D)`` tensors, up to a constant shared by every row: ``(B,)``
    float64. A per-element ``std: (B, *D)`` (a learned variance) needs a :class:`MaskObservation`."""
    r = observation.project(value - mean).double().flatten(1)
    if not isinstance(std, Tensor):
        if not std > 0:
            raise ValueError(f"the kernel's std must be positive to weight particles, got {std}")
        return -0.5 * r.pow(2).sum(1) / std**2
    if not isinstance(observation, MaskObservation):
        raise ValueError("a per-element kernel std (a learned variance) needs a MaskObservation to weight particles")
    known = observation.project(torch.ones_like(value)).double().flatten(1)
    s = std.double().flatten(1)
    return -0.5 * (r / s).pow(2).sum(1) - (known * s.log()).sum(1)


def systematic_resample(log_weights: Tensor, u: Tensor) -> Tensor:
    """Systematic resampling (Kitagawa, 1996) of each row of ``log_weights: (B, K)`` with one uniform ``u: (B,)``
    in ``[0, 1)`` per row: the ancestors ``(B, K)``, particle ``k`` taking the one whose cumulative weight first
    reaches ``(u + k) / K``. Each ancestor is copied ``⌊K w⌋`` or ``⌈K w⌉`` times."""
    K = log_weights.shape[1]
    cum = torch.softmax(log_weights.double(), 1).cumsum(1)
    positions = (u.double()[:, None] + torch.arange(K, dtype=torch.float64, device=u.device)) / K
    return torch.searchsorted(cum, positions).clamp_max(K - 1)


@dataclass
class SMCResult(SampleResult):
    """What :func:`smc` returns: :class:`~scoresde.SampleResult` (``x``: one completion per observation, drawn from
    the final weighted particles) and the particle system.

    Attributes:
        particles: the final particles ``(B, K, *D)``.
        log_weights: their normalised log-weights ``(B, K)`` (float64).
        resampled: how many steps resampled each observation's particles ``(B,)``.
    """

    particles: Tensor = dataclasses.field(default_factory=lambda: torch.empty(0))
    log_weights: Tensor = dataclasses.field(default_factory=lambda: torch.empty(0))
    resampled: Tensor = dataclasses.field(default_factory=lambda: torch.empty(0))


def smc(
    score_fn: ScoreFn,
    sde: SDE,
    y: Tensor,
    observation: Observation | Tensor,
    *,
    particles: int = 16,
    ess_threshold: float = 0.5,
    solver: SolverSpec = "euler_maruyama",
    steps: int = 1000,
    solver_options: dict[str, Any] | None = None,
    generator: torch.Generator | None = None,
    seeds: Tensor | None = None,
    t_end: float | None = None,
    grid: str | Path | Tensor | None = None,
    progress: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> SMCResult:
    """SMC-Diff (Trippe et al., 2022): ``particles`` per observation of ``y: (B, *D)``, weighted by the density of the
    observed part under the solver's Gaussian step and resampled on the effective sample size (module docstring).

    Args:
        score_fn, sde: the unconditional score and its SDE.
        y: the data in model space; only the observed part is used.
        observation: an :class:`Observation`, or a mask (1: known).
        particles: ``K``, particles per observation (``K = 1``: replacement).
        ess_threshold: resample an observation's particles when their effective sample size falls below
            ``ess_threshold · K`` (1: at every step; 0: never).
        solver: a solver with a Gaussian step (:class:`~scoresde.solvers.GaussianStepSolver`: ``euler_maruyama``,
            ``reverse_diffusion``, ``ancestral``); ``steps``, ``solver_options``, ``t_end``, ``grid`` as for
            :func:`scoresde.sample`.
        generator, seeds: one seed per observation (as :func:`scoresde.sample` draws them); observation ``b``'s
            particles and resampling draw from streams derived from its seed alone (:func:`scoresde.noise.child_seeds`),
            so its completion does not depend on the batch.
        progress, device, dtype: as for :func:`scoresde.sample`.

    Returns:
        :class:`SMCResult`; its ``nfe`` counts score calls, each on ``B · K`` rows.
    """
    check_smc_options("smc", particles, ess_threshold)
    K = int(particles)
    obs = observation if isinstance(observation, Observation) else MaskObservation(observation)
    B, data_shape = y.shape[0], tuple(y.shape[1:])
    obs_seeds, device = resolve_seeds(B, generator, seeds, device)
    streams = child_seeds(obs_seeds, K + 1)  # stream 0: the observation's chain and resampling; 1..K: the particles
    built, ts, noise, x, _, device = prepare_sampling(
        sde,
        (B * K, *data_shape),
        solver=solver,
        steps=steps,
        generator=None,
        seeds=streams[:, 1:].flatten(),
        x_init=None,
        t_end=t_end,
        grid=grid,
        device=device,
        dtype=dtype,
        solver_options=solver_options or {},
    )
    built = bind_learned_variance(built, score_fn)
    if not isinstance(built, GaussianStepSolver):
        raise ValueError(
            f"smc weights particles by the density of the solver's Gaussian step, which {built.name} has not; use "
            "euler_maruyama, reverse_diffusion or ancestral"
        )
    own = PerSampleNoise(streams[:, 0])
    y = y.to(device=device, dtype=dtype)
    counted = CountingScore(score_fn)
    keep = torch.arange(K, device=device).expand(B, K)
    first = torch.arange(B, device=device)[:, None] * K

    def each(v: Tensor) -> Tensor:  # (B, *D) -> (B K, *D), the particles of one observation side by side
        return v.repeat_interleave(K, 0)

    ctxs = list(grid_steps(sde, ts, noise))
    y_t = ctxs[0].now.alpha * y + ctxs[0].now.sigma * own(y)  # y diffused to T
    x = obs.replace(x, each(y_t))
    log_w = torch.zeros(B, K, dtype=torch.float64, device=device)
    resampled = torch.zeros(B, dtype=torch.long, device=device)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(ctxs), desc=f"smc ({K} particles, {built.name})", unit="step")
    with torch.no_grad():
        for ctx in ctxs:
            kernel = built.transition(counted, sde, State(x), ctx)
            c_t, c_0, var = posterior_coefficients(ctx.now, ctx.next)
            y_next = c_t * y_t + c_0 * y + math.sqrt(var) * own(y)  # the forward chain, drawn backwards
            log_w = log_w + observed_log_density(obs, each(y_next), kernel.mean, kernel.std).view(B, K)
            ess = 1.0 / torch.softmax(log_w, 1).pow(2).sum(1)
            again = ess < ess_threshold * K
            ancestors = torch.where(again[:, None], systematic_resample(log_w, own.uniform(device)), keep)
            rows = (ancestors + first).flatten()
            log_w = log_w.masked_fill(again[:, None], 0.0)
            resampled += again
            mean = kernel.mean[rows]
            if ctx.is_last:
                x = obs.replace(mean, each(y))
            else:
                std = kernel.std[rows] if isinstance(kernel.std, Tensor) else kernel.std
                x = obs.replace(mean + std * noise(mean), each(y_next))
            y_t = y_next
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    log_w = torch.log_softmax(log_w, 1)
    cum = log_w.exp().cumsum(1)
    pick = torch.searchsorted(cum, own.uniform(device)[:, None]).clamp_max(K - 1)[:, 0]  # one draw by weight
    x = x.view(B, K, *data_shape)
    return SMCResult(
        x=x[torch.arange(B, device=device), pick], nfe=counted.nfe, particles=x, log_weights=log_w, resampled=resampled
    )


def inpaint(
    score_fn: ScoreFn,
    sde: SDE,
    y: Tensor,
    observation: Observation | Tensor,
    *,
    method: str = "replacement",
    resample: int | None = None,
    particles: int | None = None,
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
        method: ``"replacement"``, ``"repaint"`` or ``"smc"`` (:func:`smc`).
        resample: RePaint's jumps per step (default 10 for ``"repaint"``; must be 1 or ``None`` otherwise).
        particles: SMC's particles per observation (default 16; ``"smc"`` only).
        solver, steps, solver_options: the sampler that makes the steps.
        **sample_options: passed to :func:`scoresde.sample` (``seeds``, ``generator``, ``progress``, ``device``, ...)
            or :func:`smc` (also ``ess_threshold``).

    Returns:
        :class:`~scoresde.SampleResult` whose ``x`` agrees with ``y`` on the observed part. A RePaint step costs
        ``resample`` solver steps, and the counted ``nfe`` says so.
    """
    r = steps_per_step(method, resample)
    check_smc_options(method, particles, sample_options.get("ess_threshold", 0.5))
    obs = observation if isinstance(observation, Observation) else MaskObservation(observation)
    if method == "smc":
        return smc(
            score_fn,
            sde,
            y,
            obs,
            particles=16 if particles is None else particles,
            solver=solver,
            steps=steps,
            solver_options=solver_options,
            **sample_options,
        )
    inner = get_solver(solver, **(solver_options or {}))
    wrapped = Replacement(inner, obs, y, resample=r)
    return sample(score_fn, sde, tuple(y.shape), solver=wrapped, steps=steps, **sample_options)


def colorize(score_fn: ScoreFn, sde: SDE, y: Tensor, **options: Any) -> SampleResult:
    """Colour images from the grey values of ``y: (B, C, H, W)`` (any colour image with those greys; a grey image
    repeated over ``C`` channels will do): :func:`inpaint` with a :class:`GrayObservation`."""
    return inpaint(score_fn, sde, y, GrayObservation(), **options)
