"""Improved DDPM's learned reverse variance and its hybrid loss (Nichol & Dhariwal, 2021, "Improved denoising
diffusion probabilistic models", §3.1).

A reverse step from ``t`` to ``s < t``, with ``a = alpha_t / alpha_s`` and ``G² = sigma_t² - a² sigma_s²`` (the
forward kernel ``x_t | x_s ~ N(a x_s, G²)``), has the Gaussian posterior

    q(x_s | x_t, x_0) = N(mu~, beta~),   mu~ = (a sigma_s² x_t + alpha_s G² x_0) / sigma_t²,   beta~ = G² sigma_s² / sigma_t²

(DDPM eqs. 6-7). The model ``p(x_s | x_t) = N(mu_theta, Sigma_theta)`` takes ``mu~`` at ``x̂_0(x_t)`` and, per
dimension, the variance interpolated in the log domain between ``beta = G²`` and ``beta~`` (eq. 15)

    Sigma_theta = exp(v log beta + (1 - v) log beta~),

with ``v`` a network output (:class:`~scoresde.ScoreModel` with ``learn_variance=True``; ``v = (v_raw + 1)/2`` so that
a zero output is the geometric mean). It is trained by (eq. 16)

    L_hybrid = L_simple + lam L_vlb,   lam = 0.001,

``L_simple = E‖eps - eps_hat‖²`` (mean over dimensions) and ``L_vlb = Σ_i KL(q(x_{t_i+1} | x_{t_i}, x_0) ‖ p(x_{t_i+1} |
x_{t_i}))`` over a training grid of ``N`` steps, estimated as ``N`` times the KL of one uniformly drawn step, in bits
per dimension, with the gradient through the mean stopped so that ``L_vlb`` trains the variance alone (§3.1). With
``N = 1000`` this is the reference code's ``mse + vb``. The grid's last step ends at ``t_end > 0``, where the data are
still continuous, so DDPM's discretised decoder term ``L_0`` is not part of it. A sampler on another grid (fewer
steps) uses that grid's ``beta`` and ``beta~`` with the same ``v`` (§4, strided sampling): ``ancestral`` with
``variance="learned"``.

Closed form (``tests/test_hybrid.py``): with the exact mean, the KL-optimal variance of a step is ``beta~ +
E[(mu~ - mu_theta)² | x_t]``, Analytic-DPM's ``sigma*²`` when ``v`` depends on ``t`` alone; on ``N(0, s² I)`` data
``E[(mu~ - mu_theta)² | x_t] = (alpha_s G²/sigma_t²)² s² sigma_t² / (alpha_t² s² + sigma_t²)`` at every ``x_t``.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Literal

import torch
from torch import Tensor

from ._typing import ScoreFn
from ._utils import append_dims, check_batch
from .losses import Loss
from .noise import PerSampleNoise, standard_normal, standard_uniform
from .parametrization import ScoreModel
from .sde import SDE
from .solvers.timesteps import get_timesteps

__all__ = ["HybridLoss", "StepKernel", "interpolated_log_variance", "gaussian_kl"]


def interpolated_log_variance(v: Tensor, log_beta: Tensor, log_beta_tilde: Tensor) -> Tensor:
    """``log Sigma = v log beta + (1 - v) log beta~`` (eq. 15), broadcast."""
    return v * log_beta + (1 - v) * log_beta_tilde


def gaussian_kl(mean_q: Tensor, log_var_q: Tensor, mean_p: Tensor, log_var_p: Tensor) -> Tensor:
    """``KL(N(mean_q, e^log_var_q) ‖ N(mean_p, e^log_var_p))`` per element, in nats."""
    return 0.5 * (
        log_var_p - log_var_q + torch.exp(log_var_q - log_var_p) + (mean_q - mean_p) ** 2 * torch.exp(-log_var_p) - 1
    )


class StepKernel:
    """The coefficients of reverse steps ``t → s`` (each ``(B,)`` float64), shaped to broadcast against ``like``:
    ``mean(x_t, x_0)`` is ``mu~`` and ``log_beta``, ``log_beta_tilde`` the two ends of the interpolation."""

    def __init__(self, sde: SDE, t: Tensor, s: Tensor, like: Tensor) -> None:
        a_t, s_t = sde.alpha(t.double()), sde.sigma(t.double())
        a_s, s_s = sde.alpha(s.double()), sde.sigma(s.double())
        a = a_t / a_s
        G2 = s_t**2 - (a * s_s) ** 2

        def shape(c: Tensor) -> Tensor:
            return append_dims(c, like.ndim).to(like.dtype)

        self.coef_x, self.coef_x0 = shape(a * s_s**2 / s_t**2), shape(a_s * G2 / s_t**2)
        self.log_beta, self.log_beta_tilde = shape(G2.log()), shape((G2 * s_s**2 / s_t**2).log())

    def mean(self, x_t: Tensor, x0: Tensor) -> Tensor:
        """``mu~ = (a sigma_s² x_t + alpha_s G² x_0) / sigma_t²``."""
        return self.coef_x * x_t + self.coef_x0 * x0


def _model_of(score_fn: ScoreFn) -> tuple[ScoreModel, Tensor | None]:
    """The learned-variance model behind ``score_fn`` (a :class:`ScoreModel`, or one bound to a condition ``y``)."""
    model, y = score_fn, None
    if isinstance(score_fn, partial) and isinstance(score_fn.func, ScoreModel):
        model, y = score_fn.func, score_fn.keywords.get("y")
    if not isinstance(model, ScoreModel) or not model.learn_variance:
        raise ValueError(
            "HybridLoss trains a model that learns its variance: ScoreModel(..., learn_variance=True) (in a YAML, "
            "model.learn_variance: true and a network with twice the data's channels)"
        )
    return model, y


class HybridLoss(Loss):
    """``L_hybrid = L_simple + lam L_vlb`` (module docstring) for a model with a learned variance.

    Args:
        steps: ``N``, the steps of the training grid the bound is summed over (4000 in the paper, 1000 in DDPM).
        lam: the weight of ``L_vlb`` (0.001).
        grid: the training grid, ``"uniform"`` in ``t`` (DDPM's) or any name of ``scoresde.solvers.timesteps``.
        t_end: the grid's last time (default: the SDE's ``sampling_eps``).
    """

    def __init__(
        self,
        steps: int = 1000,
        lam: float = 0.001,
        grid: Literal["uniform", "quadratic", "log_snr", "karras"] = "uniform",
        t_end: float | None = None,
    ) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        if not lam >= 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        self.steps, self.lam, self.grid_name, self.t_end = steps, float(lam), grid, t_end
        self._grid: tuple[SDE, Tensor] | None = None

    def __repr__(self) -> str:
        return f"HybridLoss(steps={self.steps}, lam={self.lam:g}, grid={self.grid_name!r})"

    def grid(self, sde: SDE) -> Tensor:
        """The decreasing float64 training times ``(steps + 1,)``."""
        if self._grid is None or self._grid[0] is not sde:
            t_end = sde.sampling_eps if self.t_end is None else float(self.t_end)
            self._grid = (sde, get_timesteps(self.grid_name, sde, t_end, self.steps).to(torch.float64))
        return self._grid[1]

    def terms(
        self,
        score_fn: ScoreFn,
        sde: SDE,
        x0: Tensor,
        *,
        generator: torch.Generator | None = None,
        noise: PerSampleNoise | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``(L_simple, L_vlb)`` of each sample, ``(B,)`` each: the noise error (mean over dimensions) and ``N``
        times one step's KL in bits per dimension (mean stopped), at a step drawn uniformly from the grid."""
        check_batch(x0, "x0")
        model, y = _model_of(score_fn)
        grid = self.grid(sde).to(x0.device)
        u = standard_uniform(x0.shape[0], x0.device, generator, noise)
        i = (u * self.steps).floor().long().clamp(0, self.steps - 1)
        t, s = grid[i], grid[i + 1]
        eps = standard_normal(x0, generator, noise)
        alpha, sigma = sde.coefficients(t, x0)
        x_t = alpha * x0 + sigma * eps
        eps_hat, v = model.eps_and_weight(x_t, t.to(x0.dtype), y)
        simple = (eps - eps_hat).pow(2).flatten(1).mean(1)
        kernel = StepKernel(sde, t, s, x0)
        x0_hat = (x_t - sigma * eps_hat.detach()) / alpha
        log_var = interpolated_log_variance(v, kernel.log_beta, kernel.log_beta_tilde)
        kl = gaussian_kl(kernel.mean(x_t, x0), kernel.log_beta_tilde, kernel.mean(x_t, x0_hat), log_var)
        return simple, self.steps * kl.flatten(1).mean(1) / math.log(2)

    def per_sample(
        self,
        score_fn: ScoreFn,
        sde: SDE,
        x0: Tensor,
        *,
        generator: torch.Generator | None = None,
        noise: PerSampleNoise | None = None,
    ) -> Tensor:
        """``L_simple + lam L_vlb`` of each sample, ``(B,)``."""
        simple, vlb = self.terms(score_fn, sde, x0, generator=generator, noise=noise)
        return simple + self.lam * vlb
