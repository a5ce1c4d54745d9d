"""Progressive distillation (Salimans & Ho, 2022, "Progressive distillation for fast sampling of diffusion models").

A teacher samples with deterministic DDIM on ``2N`` steps of a grid ``t_0 = T > t_1 > ... > t_2N = t_end``; the
student learns to take one DDIM step from ``t = t_2i`` to ``t'' = t_2i+2`` that lands where the teacher's two steps
``t → t' → t''`` land. With the DDIM step written in data prediction,

    z_s = alpha_s x̂ + (sigma_s / sigma_t) (z_t - alpha_t x̂)                                  (DDIM, eta = 0)

the student's target ``x̃`` is the data prediction that makes that one step exact (Algorithm 2):

    z_t' = DDIM(teacher x̂(z_t), t → t'),   z_t'' = DDIM(teacher x̂(z_t'), t' → t''),
    x̃ = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t),

and the loss is ``w(t) ‖x̃ - x̂_student(z_t)‖²`` with the truncated-SNR weight ``w = max(alpha²/sigma², 1)`` (§4;
``"snr_plus_one"`` is the paper's other choice, ``alpha²/sigma² + 1``), at ``z_t = alpha_t x + sigma_t eps`` for
data ``x`` and a time drawn from the student's ``N`` grid points. The student then becomes the teacher of the next
stage, at half the steps. Grids are ``scoresde.solvers.timesteps``' (``uniform`` or ``log_snr``), whose ``N``-step
grid is every other point of the ``2N``-step one, so the student is sampled by ``ddim`` on its own grid.

Consistency distillation (Song et al., 2023, "Consistency models", Algorithm 2) is the one-step end of the same
machinery. Its consistency function is written through the student's data prediction as the DDIM step to the end,

    f_theta(z_t, t) = DDIM(x̂_theta(z_t, t), t → t_end),

which is the identity at ``t = t_end`` (the boundary condition ``f(z, t_end) = z`` holds exactly). On an ``N``-step
grid, a pair ``t_n > t_n+1`` is drawn, ``z_t_n = alpha x + sigma eps``, one teacher DDIM step gives ``ẑ_t_n+1``, and
the loss is ``mean‖f_theta(z_t_n, t_n) - f_theta⁻(ẑ_t_n+1, t_n+1)‖²`` with ``theta⁻`` an exponential moving average
of ``theta`` (the target network, ``theta⁻ ← mu theta⁻ + (1 - mu) theta``). A consistency model samples in one step,
``f(z_T, T)``, or alternates it with re-noising (the ``consistency`` solver).

Closed form (``tests/test_distill.py``): for ``N(0, s² I)`` data the exact ``x̂ = alpha s² z / (alpha² s² + sigma²)``
is linear, every DDIM step is ``z_s = c(t, s) z_t``, and the optimal student coefficient is the product of the
teacher's two; a consistency student's ``f(z, t_n) = k_n z`` has the fixed point ``k_n = c_n k_n+1``, ``k_N = 1``:
its one step from ``T`` is the teacher's whole ``N``-step map.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from ._utils import check_batch
from .noise import PerSampleNoise, standard_normal, standard_uniform
from .sde import SDE
from .solvers.timesteps import get_timesteps

__all__ = ["ProgressiveDistillation", "ConsistencyDistillation", "ddim_step", "X0Fn"]

X0Fn = Callable[[Tensor, Tensor], Tensor]
"""``x0_fn(z_t, t) -> x̂_0``: a data prediction (``ScoreModel.x0``, ``GaussianMixture.denoise`` bound to an SDE)."""

WEIGHTINGS = ("truncated_snr", "snr_plus_one")


def ddim_step(x0: Tensor, z: Tensor, alpha_t: Tensor, sigma_t: Tensor, alpha_s: Tensor, sigma_s: Tensor) -> Tensor:
    """One deterministic DDIM step from ``t`` to ``s`` given the data prediction ``x0`` at ``(z, t)``: ``alpha_s x0 +
    (sigma_s/sigma_t)(z - alpha_t x0)`` (coefficients broadcast against ``z``)."""
    return alpha_s * x0 + (sigma_s / sigma_t) * (z - alpha_t * x0)


class ProgressiveDistillation:
    """The distillation objective of one stage and the grids of all of them.

    Args:
        sde: the teacher's SDE.
        grid: ``"uniform"`` (in ``t``) or ``"log_snr"``; the student is sampled by ``ddim`` on the same grid.
        t_end: the last grid time (default: the SDE's ``sampling_eps``, what ``scoresde sample`` ends at).
        weighting: ``"truncated_snr"`` (``max(SNR, 1)``, the default) or ``"snr_plus_one"``.
    """

    def __init__(
        self,
        sde: SDE,
        grid: Literal["uniform", "log_snr"] = "uniform",
        t_end: float | None = None,
        weighting: Literal["truncated_snr", "snr_plus_one"] = "truncated_snr",
    ) -> None:
        if grid not in ("uniform", "log_snr"):
            raise ValueError(
                f"distillation grid must be 'uniform' or 'log_snr' (they nest under halving), got {grid!r}"
            )
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; available: {', '.join(WEIGHTINGS)}")
        self.sde, self.grid_name, self.weighting = sde, grid, weighting
        self.t_end = float(sde.sampling_eps if t_end is None else t_end)

    def __repr__(self) -> str:
        return f"ProgressiveDistillation(grid={self.grid_name!r}, t_end={self.t_end:g}, weighting={self.weighting!r})"

    def grid(self, steps: int) -> Tensor:
        """The decreasing float64 times ``(steps + 1,)`` of a ``steps``-step sampler."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        return get_timesteps(self.grid_name, self.sde, self.t_end, steps).to(torch.float64)

    @torch.no_grad()
    def target(self, teacher: X0Fn, z: Tensor, t: Tensor, t_mid: Tensor, t_next: Tensor) -> Tensor:
        """The student's target ``x̃`` (module docstring) for ``z: (B, *D)`` at times ``t > t_mid > t_next``, each
        ``(B,)``: two teacher DDIM steps, then the data prediction of the one step that matches them."""
        a_t, s_t = self.sde.coefficients(t, z)
        a_m, s_m = self.sde.coefficients(t_mid, z)
        a_n, s_n = self.sde.coefficients(t_next, z)
        z_mid = ddim_step(teacher(z, t.to(z.dtype)), z, a_t, s_t, a_m, s_m)
        z_next = ddim_step(teacher(z_mid, t_mid.to(z.dtype)), z_mid, a_m, s_m, a_n, s_n)
        ratio = s_n / s_t
        return (z_next - ratio * z) / (a_n - ratio * a_t)

    def weight(self, t: Tensor) -> Tensor:
        """``max(SNR, 1)`` or ``SNR + 1`` at ``t: (B,)`` (float64)."""
        snr = torch.exp(2 * self.sde.log_snr(t.to(torch.float64)))
        return snr.clamp_min(1.0) if self.weighting == "truncated_snr" else snr + 1

    def per_sample(
        self,
        student: X0Fn,
        teacher: X0Fn,
        x0: Tensor,
        student_steps: int,
        *,
        generator: torch.Generator | None = None,
        noise: PerSampleNoise | None = None,
    ) -> Tensor:
        """The stage's loss of each data point ``x0: (B, *D)``, ``(B,)``: a step ``i`` of the student's
        ``student_steps`` drawn uniformly, ``z_t`` from the forward kernel, ``w(t) mean‖x̃ - x̂_student(z_t, t)‖²``."""
        check_batch(x0, "x0")
        B = x0.shape[0]
        fine = self.grid(2 * student_steps).to(x0.device)
        u = standard_uniform(B, x0.device, generator, noise)
        i = (u * student_steps).floor().long().clamp(0, student_steps - 1)
        t, t_mid, t_next = fine[2 * i], fine[2 * i + 1], fine[2 * i + 2]
        eps = standard_normal(x0, generator, noise)
        a_t, s_t = self.sde.coefficients(t, x0)
        z = a_t * x0 + s_t * eps
        x_tilde = self.target(teacher, z, t, t_mid, t_next)
        err = (student(z, t.to(x0.dtype)) - x_tilde).pow(2).flatten(1).mean(1)
        return self.weight(t).to(err.dtype) * err


class ConsistencyDistillation:
    """The consistency-distillation objective (module docstring) on an ``N``-step grid.

    Args:
        sde: the teacher's SDE.
        steps: ``N``, the teacher's DDIM steps between ``T`` and ``t_end`` (adjacent pairs are distilled).
        grid: a time grid of ``scoresde.solvers.timesteps`` (``"uniform"``, ``"log_snr"``, ...).
        t_end: the end time ``f`` maps to (default: the SDE's ``sampling_eps``).
    """

    def __init__(self, sde: SDE, steps: int = 64, grid: str = "uniform", t_end: float | None = None) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"consistency distillation steps must be a positive integer, got {steps!r}")
        self.sde, self.steps, self.grid_name = sde, steps, grid
        self.t_end = float(sde.sampling_eps if t_end is None else t_end)
        self.times = get_timesteps(grid, sde, self.t_end, steps).to(torch.float64)

    def __repr__(self) -> str:
        return f"ConsistencyDistillation(steps={self.steps}, grid={self.grid_name!r}, t_end={self.t_end:g})"

    def consistency(self, x0_fn: X0Fn, z: Tensor, t: Tensor) -> Tensor:
        """``f(z_t, t) = DDIM(x̂(z_t, t), t → t_end)`` for ``z: (B, *D)`` at times ``t: (B,)``."""
        a_t, s_t = self.sde.coefficients(t, z)
        a_e, s_e = self.sde.coefficients(torch.full_like(t, self.t_end, dtype=torch.float64), z)
        return ddim_step(x0_fn(z, t.to(z.dtype)), z, a_t, s_t, a_e, s_e)

    def per_sample(
        self,
        student: X0Fn,
        target: X0Fn,
        teacher: X0Fn,
        x0: Tensor,
        *,
        generator: torch.Generator | None = None,
        noise: PerSampleNoise | None = None,
    ) -> Tensor:
        """The loss of each data point ``x0: (B, *D)``, ``(B,)``: a pair ``n`` of the grid drawn uniformly, ``z`` from
        the forward kernel at ``t_n``, one teacher DDIM step to ``t_n+1``, ``mean‖f_student - f_target‖²``."""
        check_batch(x0, "x0")
        B = x0.shape[0]
        times = self.times.to(x0.device)
        u = standard_uniform(B, x0.device, generator, noise)
        n = (u * self.steps).floor().long().clamp(0, self.steps - 1)
        t, s = times[n], times[n + 1]
        eps = standard_normal(x0, generator, noise)
        a_t, s_t = self.sde.coefficients(t, x0)
        z = a_t * x0 + s_t * eps
        with torch.no_grad():
            z_next = ddim_step(teacher(z, t.to(x0.dtype)), z, a_t, s_t, *self.sde.coefficients(s, x0))
            goal = self.consistency(target, z_next, s)
        return (self.consistency(student, z, t) - goal).pow(2).flatten(1).mean(1)
