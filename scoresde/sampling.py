"""Generation's one front door, with one input check and a counted number of score evaluations: :func:`sample` runs
a solver to the end; :func:`sample_steps` yields every step for users who bring their own loop."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ._typing import ScoreFn
from ._utils import append_dims
from .noise import PerSampleNoise
from .parametrization import ScoreModel
from .sde import SDE
from .solvers import Solver, SolverSpec, State, StepCallback, get_solver
from .solvers.budget import BudgetChoice, choose_for_budget
from .solvers.grids import resolve_grid
from .solvers.sde import Ancestral

__all__ = ["sample", "sample_steps", "SampleResult", "SampleStep", "CountingScore", "AnalyticFirstStep"]


@dataclass
class SampleResult:
    """What :func:`sample` returns.

    Attributes:
        x: the samples ``(B, *D)``.
        nfe: number of score evaluations actually made (counted, not computed).
        trajectory: the states after every step, each ``(B, *D)`` on the CPU, if requested.
        choice: what ``nfe=K`` picked (solver, options, grid, steps), if it was given.
    """

    x: Tensor
    nfe: int
    trajectory: list[Tensor] | None = None
    choice: BudgetChoice | None = None


class CountingScore:
    """Wraps ``score_fn``: counts calls, casts ``t`` to ``x``'s dtype and checks the output shape once."""

    def __init__(self, score_fn: ScoreFn) -> None:
        self.score_fn, self.nfe = score_fn, 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        out = self.score_fn(x, t.to(x.dtype))
        if self.nfe == 0 and (not isinstance(out, Tensor) or out.shape != x.shape):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"score_fn(x, t) must return a tensor shaped like x {tuple(x.shape)}, got {got}")
        self.nfe += 1
        return out


class AnalyticFirstStep:
    """Wraps ``score_fn`` for the "analytical first step" (Dockhorn et al., 2022, GENIE; Zhou et al., 2024, AMED):
    the first call, at ``t = T``, is answered without the network as the score of data concentrated at the origin,
    ``s(x, T) = -x / sigma_T²`` (``x̂_0 = 0``; exact as ``alpha_T -> 0``: under VP ``alpha_T = 0.0067``), which saves one
    evaluation. Data far from the origin relative to ``sigma_T / alpha_T`` should not use it."""

    def __init__(self, score_fn: ScoreFn, sde: SDE, t0: float) -> None:
        self.score_fn, self.t0, self.pending = score_fn, t0, True
        self.sigma2 = float(sde.sigma(torch.tensor([t0], dtype=torch.float64))[0]) ** 2

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        if self.pending:
            self.pending = False
            if bool((t == self.t0).all()):
                return -x / self.sigma2
        return self.score_fn(x, t)


def bind_learned_variance(solver: Solver, score_fn: ScoreFn) -> Solver:
    """``ancestral`` with ``variance="learned"`` and no ``weights`` takes them from ``score_fn`` when it is a
    :class:`~scoresde.ScoreModel` that learns its variance (its ``variance_weight``)."""
    if isinstance(solver, Ancestral) and solver.variance == "learned" and solver.weights is None:
        if isinstance(score_fn, ScoreModel) and score_fn.learn_variance:
            return dataclasses.replace(solver, weights=score_fn.variance_weight)
        raise ValueError(
            "ancestral variance='learned' samples a ScoreModel(learn_variance=True) (trained with HybridLoss); "
            "this score_fn has no learned variance (pass Ancestral(variance='learned', weights=...) for another)"
        )
    return solver


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise TypeError(f"shape must be a sequence of ints (B, *D), got {shape!r}") from None
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ValueError(f"shape must be (B, *D) with positive sizes and at least one data dim, got {shape}")
    return shape


def resolve_seeds(
    n: int,
    generator: torch.Generator | None,
    seeds: Tensor | Sequence[int] | None,
    device: torch.device | str | None,
) -> tuple[Tensor, torch.device]:
    """One seed per sample, ``(n,)`` on the device sampling runs on: ``seeds`` as given, or drawn as
    ``torch.randint(2**62, (n,), generator=generator)`` (a fresh unseeded generator when neither is given)."""
    if seeds is not None and generator is not None:
        raise ValueError("pass either generator or seeds, not both")
    if generator is not None:
        device = torch.device(device) if device is not None else generator.device
        if generator.device.type != device.type:
            raise ValueError(f"the generator is on {generator.device} but sampling runs on {device}; create it there")
    device = torch.device(device) if device is not None else torch.device("cpu")
    if seeds is None:
        if generator is None:
            generator = torch.Generator(device=device)
            generator.seed()
        seeds = torch.randint(2**62, (n,), generator=generator, device=generator.device)
    seeds = torch.as_tensor(seeds, device=device)
    if seeds.shape != (n,):
        raise ValueError(f"seeds must hold one integer per sample, shape ({n},), got {tuple(seeds.shape)}")
    return seeds, device


def prepare_sampling(
    sde: SDE,
    shape: Sequence[int],
    solver: SolverSpec | None,
    steps: int | None,
    generator: torch.Generator | None,
    seeds: Tensor | Sequence[int] | None,
    x_init: Tensor | None,
    t_end: float | None,
    grid: str | Path | Tensor | None,
    device: torch.device | str | None,
    dtype: torch.dtype,
    solver_options: dict[str, Any],
) -> tuple[Solver, Tensor, PerSampleNoise, Tensor, float, torch.device]:
    """Check every input before any work: the solver, its grid, the per-sample noise and the state at ``T``."""
    built = get_solver("euler_maruyama" if solver is None else solver, **solver_options)
    built.check(sde)
    shape = _check_shape(shape)
    built.check_size(math.prod(shape[1:]))
    ts = resolve_grid("uniform" if grid is None else grid, sde, t_end, steps)
    t_end = float(ts[-1])
    seeds, device = resolve_seeds(shape[0], generator, seeds, device)
    noise = PerSampleNoise(seeds)
    if x_init is None:
        x = sde.prior_sample(shape, noise=noise, device=device, dtype=dtype)
    else:
        if tuple(x_init.shape) != shape:
            raise ValueError(f"x_init has shape {tuple(x_init.shape)} but shape={shape}")
        if not bool(torch.isfinite(x_init).all()):
            raise ValueError("x_init holds NaN or infinite values")
        x = x_init.to(device=device, dtype=dtype)

    return built, ts, noise, x, t_end, device


def sample(
    score_fn: ScoreFn,
    sde: SDE,
    shape: Sequence[int],
    *,
    solver: SolverSpec | None = None,
    steps: int | None = None,
    nfe: int | None = None,
    generator: torch.Generator | None = None,
    seeds: Tensor | Sequence[int] | None = None,
    x_init: Tensor | None = None,
    t_end: float | None = None,
    grid: str | Path | Tensor | None = None,
    analytic_first_step: bool = False,
    denoise: bool = False,
    callback: StepCallback | None = None,
    return_trajectory: bool = False,
    progress: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    **solver_options: Any,
) -> SampleResult:
    """Draw samples by integrating from the prior at ``T`` down to ``t_end`` with a registered solver.

    Args:
        score_fn: ``score_fn(x, t) -> ∇ log p_t(x)``, ``x: (B, *D)``, ``t: (B,)`` (a trained ``ScoreModel``, the
            analytic ``GaussianMixture.score_fn(sde)``, or any callable).
        sde: the forward SDE the score belongs to.
        shape: ``(B, *D)``.
        solver: a name from ``scoresde.solvers.SOLVERS`` or a :class:`Solver` instance (default ``euler_maruyama``).
        steps: number of solver steps (default 1000; a given grid has its own).
        nfe: a budget of score evaluations instead of ``solver``, ``steps`` and ``grid``: the solver and grid the
            solver benchmark measured best at that budget for this SDE's family
            (:func:`scoresde.solvers.budget.choose_for_budget`; the result's ``choice`` says which).
        generator: source of the per-sample seeds (``None``: a fresh unseeded one). Seeds are drawn as
            ``torch.randint(2**62, (B,), generator=generator)``; on the CPU a batch's seeds are the first ``B`` of a
            larger batch's, so the same generator state gives the same first samples whatever the batch size.
        seeds: ``(B,)`` integer seeds, one per sample, instead of ``generator`` (``scoresde.noise.derive_seeds``
            gives seeds from a run seed and sample indices, as ``scoresde sample`` uses). Every random draw of a
            sample (its prior draw and its solver noise) comes from its own stream, so it does not depend on the
            batch it is drawn in (solvers with ``per_sample_noise = False``, the torchsde ones, excepted).
        x_init: start from this ``x_T: (B, *D)`` instead of a prior draw.
        t_end: end time (default ``sde.sampling_eps``: 1e-3 for VP/sub-VP, 1e-5 for VE; a given grid has its own).
        grid: a time grid name (default ``uniform``; see ``scoresde.solvers.TIME_GRIDS``: ``quadratic``, ``log_snr``,
            ``karras``), a grid file (``*.json``, from ``scoresde grid`` or ``scoresde.solvers.save_grid``) or the
            decreasing times themselves, a ``(steps + 1,)`` tensor.
        analytic_first_step: answer the first score call (at ``T``) analytically (:class:`AnalyticFirstStep`): one
            evaluation fewer for the same grid.
        denoise: finish with Tweedie's denoising step ``x ← (x + sigma² s(x, t_end)) / alpha`` (one more NFE).
        callback: called after every step as ``callback(i, t_next, state)``.
        return_trajectory: keep every intermediate state (on the CPU).
        progress: show a progress bar.
        device, dtype: where and in what precision to sample.
        **solver_options: options of the named solver.

    Returns:
        :class:`SampleResult` with ``x``, the counted ``nfe`` and optionally the trajectory.
    """
    choice = None
    if nfe is not None:
        if solver is not None or steps is not None or grid is not None or solver_options:
            raise ValueError("nfe picks the solver, its options, the grid and the steps: give nfe or those, not both")
        choice = choose_for_budget(nfe, sde)
        solver, steps, grid, solver_options = choice.solver, choice.steps, choice.grid, dict(choice.options)
    built, ts, noise, x, t_end, device = prepare_sampling(
        sde, shape, solver, steps, generator, seeds, x_init, t_end, grid, device, dtype, solver_options
    )
    built = bind_learned_variance(built, score_fn)
    shape = tuple(x.shape)
    counted = CountingScore(score_fn)
    trajectory: list[Tensor] | None = [x.cpu()] if return_trajectory else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(ts) - 1, desc=f"sampling ({built.name})", unit="step")

    def on_step(i: int, t_next: float, state: State) -> None:
        if trajectory is not None:
            trajectory.append(state.x.cpu())
        if bar is not None:
            bar.update(1)
        if callback is not None:
            callback(i, t_next, state)

    observe = trajectory is not None or bar is not None or callback is not None
    with torch.no_grad():
        try:
            score: ScoreFn = AnalyticFirstStep(counted, sde, float(ts[0])) if analytic_first_step else counted
            x = built.solve(score, sde, x, ts, noise, on_step if observe else None)
        finally:
            if bar is not None:
                bar.close()
        if denoise:
            t = torch.full((shape[0],), t_end, dtype=torch.float64, device=device)
            alpha, sigma = (append_dims(c(t), x.ndim).to(x.dtype) for c in (sde.alpha, sde.sigma))
            x = (x + sigma**2 * counted(x, t)) / alpha
    return SampleResult(x=x, nfe=counted.nfe, trajectory=trajectory, choice=choice)


@dataclass(frozen=True)
class SampleStep:
    """One step of :func:`sample_steps`.

    Attributes:
        index, count: this is step ``index`` (0-based) of ``count``.
        t: the time the state has reached.
        x: the state ``(B, *D)`` at ``t``.
        denoised: the step's data prediction ``x̂_0`` ``(B, *D)``, where the solver forms one (else ``None``).
        nfe: score evaluations so far (counted).
    """

    index: int
    count: int
    t: float
    x: Tensor
    denoised: Tensor | None
    nfe: int


def sample_steps(
    score_fn: ScoreFn,
    sde: SDE,
    shape: Sequence[int],
    *,
    solver: SolverSpec = "euler_maruyama",
    steps: int | None = None,
    generator: torch.Generator | None = None,
    seeds: Tensor | Sequence[int] | None = None,
    x_init: Tensor | None = None,
    t_end: float | None = None,
    grid: str | Path | Tensor = "uniform",
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    **solver_options: Any,
) -> Iterator[SampleStep]:
    """:func:`sample` as an iterator, for users who bring their own loop::

        for step in sample_steps(score_fn, sde, (16, 2), solver="dpm_solver_pp", steps=20):
            show(step.denoised)

    Takes :func:`sample`'s arguments (checked the same way, before the first step) and yields a :class:`SampleStep`
    after every step; the last one holds the samples. Runs under ``torch.no_grad``.
    """
    built, ts, noise, x, _, _ = prepare_sampling(
        sde, shape, solver, steps, generator, seeds, x_init, t_end, grid, device, dtype, solver_options
    )
    built = bind_learned_variance(built, score_fn)
    counted = CountingScore(score_fn)
    with torch.no_grad():
        for ctx, state in built.steps(counted, sde, x, ts, noise):
            yield SampleStep(ctx.index, ctx.count, ctx.next.t, state.x, state.denoised, counted.nfe)
