"""The variational bound of a diffusion model as a training loss, with the noise schedule learned (Kingma et al.,
2021, "Variational diffusion models", VDM).

For ``z_t = alpha_t x + sigma_t eps`` with ``gamma(t) = -log SNR(t)`` (any SDE: ``gamma = -2 lambda``, and
``gamma'(t) = g(t)² / sigma_t²``), the negative bound of one data point is, in nats,

    -VLB(x) = KL(q(z_1 | x) ‖ N(0, I))  +  E[-log p(x | z_0)]  +  L_diffusion(x),                   (VDM eq. 11)

    continuous time  L_inf = ½ E_{t~U(0,1)} [gamma'(t) ‖eps - eps_hat(z_t; t)‖²]                  (VDM eq. 17)
                           = -½ E_t [SNR'(t) ‖x - x_hat(z_t; t)‖²],
    T discrete steps L_T   = (T/2) E_{i~U{1..T}} [expm1(gamma(t_i) - gamma(s_i)) ‖eps - eps_hat(z_t; t_i)‖²],
                             s_i = (i - 1)/T, t_i = i/T                                             (VDM eq. 13),

since ``(SNR(s) - SNR(t)) ‖x - x_hat‖² = expm1(gamma_t - gamma_s) ‖eps - eps_hat‖²``. The prior term is the Gaussian
KL ``½ Σ (alpha_1² x² + sigma_1² - 1 - log sigma_1²)`` and the decoder ``p(x | z_0) = N(z_0 / alpha_0,
(sigma_0 / alpha_0)² I)`` gives ``E[-log p(x | z_0)] = (D/2)(log 2π + gamma_0 + 1)`` in closed form (a Gaussian
decoder for continuous data; the bound is then on ``-log p(x)`` as a density).

``L_inf`` depends on the schedule only through its endpoints (VDM eq. 18), so the endpoints are trained by the bound
and the shape in between by the variance of the estimator (VDM §5.2): the shape parameters receive the gradient of
``E[L²]`` instead of ``E[L]``, ``2 L ∂L/∂eta`` per sample, formed in one backward pass by scaling the gradient that
reaches ``gamma(t_i)`` by ``2 L_i`` (:class:`_ScaleGrad`).

Closed forms (``tests/test_vdm.py``): with the exact denoiser on ``N(0, s² I_D)`` data the per-dimension error at SNR
``v`` is ``s² / (1 + v s²)``, ``L_inf = (D/2) ln((1 + v_max s²) / (1 + v_min s²))`` for every schedule with those
endpoints, and the variance-optimal schedule ``t(v) = ln((1 + v_max s²)/(1 + v s²)) / ln((1 + v_max s²)/(1 + v_min
s²))`` makes the integrand constant, leaving the variance ``(2/D) L_inf²`` of ``‖x - x_hat‖²``'s chi-square.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from ._typing import ScoreFn
from ._utils import append_dims, batch_sum, check_batch
from .losses import Loss
from .noise import PerSampleNoise, standard_normal, standard_uniform
from .parametrization import ScoreModel
from .sde import SDE
from .sde.learned import LearnedVPSDE

__all__ = ["VDMLoss", "VDMTerms", "EpsFn", "gamma_and_derivative", "gaussian_diffusion_loss", "optimal_gamma"]

EpsFn = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
"""``eps_fn(z_t, t, alpha_t, sigma_t) -> eps_hat``: a noise prediction given the coefficients as tensors ``(B, 1...)``
(so that the schedule's gradient reaches it through them)."""


def gamma_and_derivative(sde: SDE, t: Tensor) -> tuple[Tensor, Tensor]:
    """``gamma(t) = -2 lambda_t`` and ``gamma'(t) = g(t)² / sigma_t²`` for any SDE: ``(B,)`` each (the learned
    schedule's own network for :class:`~scoresde.sde.learned.LearnedVPSDE`)."""
    if isinstance(sde, LearnedVPSDE):
        return sde.gamma(t)
    return -2 * sde.log_snr(t), sde.diffusion(t) ** 2 / sde.sigma(t) ** 2


def eps_fn_of(score_fn: ScoreFn) -> EpsFn:
    """The :data:`EpsFn` of a score function: a :class:`~scoresde.ScoreModel` is evaluated with the given
    coefficients (its network's output converted by them); any other ``score_fn`` as ``-sigma_t s(z_t, t)``."""
    if isinstance(score_fn, ScoreModel):
        model = score_fn

        def eps(z: Tensor, t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
            return model._eps_from(model._raw(z, t, None, (alpha, sigma)), z, alpha, sigma)

        return eps
    return lambda z, t, alpha, sigma: -sigma * score_fn(z, t)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``holder.scale`` (set after the forward pass)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, holder: _Scale) -> Tensor:
        ctx.holder = holder
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.holder.scale, None


class _Scale:
    scale: Tensor | float = 1.0


@dataclass
class VDMTerms:
    """Per-sample parts of the negative bound, ``(B,)`` in nats: ``prior`` (the KL at ``t = 1``), ``decoder``
    (``E[-log p(x | z_0)]``), ``diffusion`` (the one-draw estimate of ``L_inf`` or ``L_T``), and ``total``."""

    prior: Tensor
    decoder: Tensor
    diffusion: Tensor

    @property
    def total(self) -> Tensor:
        return self.prior + self.decoder + self.diffusion


class VDMLoss(Loss):
    """The negative variational bound (module docstring) in bits per dimension, one time draw per sample.

    Args:
        steps: ``None`` for the continuous-time ``L_inf``; an integer ``T`` for the discrete ``L_T``.
        minimize_variance: give a :class:`~scoresde.sde.learned.LearnedVPSDE`'s shape parameters the gradient of
            ``E[L²]`` (VDM's variance minimisation; its endpoints still get the bound's gradient).
        time_sampling: ``"uniform"`` (an independent ``t`` per sample, from its own noise stream) or
            ``"low_discrepancy"`` (VDM's ``t_i = (u + i/B) mod 1`` over the batch).

    Call it as ``loss(score_fn, sde, x0, generator=, noise=)`` like :class:`~scoresde.DSMLoss`; ``per_sample_terms``
    takes an :data:`EpsFn` directly.
    """

    def __init__(
        self,
        steps: int | None = None,
        minimize_variance: bool = True,
        time_sampling: Literal["uniform", "low_discrepancy"] = "uniform",
    ) -> None:
        if steps is not None and steps < 1:
            raise ValueError(f"steps must be a positive number of diffusion steps (or null for L_inf), got {steps}")
        if time_sampling not in ("uniform", "low_discrepancy"):
            raise ValueError(f"time_sampling must be 'uniform' or 'low_discrepancy', got {time_sampling!r}")
        self.steps, self.minimize_variance, self.time_sampling = steps, bool(minimize_variance), time_sampling

    def __repr__(self) -> str:
        return (
            f"VDMLoss(steps={self.steps}, minimize_variance={self.minimize_variance}, "
            f"time_sampling={self.time_sampling!r})"
        )

    def _times(self, B: int, u: Tensor) -> Tensor:
        if self.time_sampling == "low_discrepancy":
            u = torch.remainder(u[:1] + torch.arange(B, device=u.device, dtype=u.dtype) / B, 1.0)
        if self.steps is None:
            return u
        return (torch.floor(u * self.steps).clamp(0, self.steps - 1) + 1) / self.steps  # t_i = i/T, i ∈ {1..T}

    def _gamma(self, sde: SDE, t: Tensor, holder: _Scale | None) -> tuple[Tensor, Tensor]:
        """``gamma(t), gamma'(t)``; with ``holder``, the shape's gradient is scaled by it and the endpoints' is not."""
        if holder is None or not isinstance(sde, LearnedVPSDE):
            return gamma_and_derivative(sde, t)
        g_shape, dg_shape = sde.gamma(t, part="shape")
        g_end, dg_end = sde.gamma(t, part="ends")
        g = _ScaleGrad.apply(g_shape, holder) + (g_end - g_end.detach())
        dg = _ScaleGrad.apply(dg_shape, holder) + (dg_end - dg_end.detach())
        return g, dg

    def per_sample_terms(
        self,
        eps_fn: EpsFn,
        sde: SDE,
        x0: Tensor,
        *,
        generator: torch.Generator | None = None,
        noise: PerSampleNoise | None = None,
        t: Tensor | None = None,
        eps: Tensor | None = None,
    ) -> VDMTerms:
        """The bound's parts for each sample (random ``t`` and ``eps`` from ``noise`` or ``generator`` unless given;
        ``t`` is used as is, so pass grid times ``i/T`` with ``steps``)."""
        return self._terms(eps_fn, sde, x0, generator, noise, t, eps, None)

    def _terms(
        self,
        eps_fn: EpsFn,
        sde: SDE,
        x0: Tensor,
        generator: torch.Generator | None,
        noise: PerSampleNoise | None,
        t: Tensor | None,
        eps: Tensor | None,
        holder: _Scale | None,
    ) -> VDMTerms:
        check_batch(x0, "x0")
        B, D = x0.shape[0], x0[0].numel()
        if t is None:
            t = self._times(B, standard_uniform(B, x0.device, generator, noise))
        t = t.to(torch.float64)
        if eps is None:
            eps = standard_normal(x0, generator, noise)
        g, dg = self._gamma(sde, t, holder)
        g, dg = g.to(x0.dtype), dg.to(x0.dtype)
        alpha, sigma = append_dims(torch.sigmoid(-g).sqrt(), x0.ndim), append_dims(torch.sigmoid(g).sqrt(), x0.ndim)
        z = alpha * x0 + sigma * eps
        err = batch_sum((eps - eps_fn(z, t.to(x0.dtype), alpha, sigma)) ** 2)
        if self.steps is None:
            diffusion = 0.5 * dg * err
        else:
            g_s, _ = self._gamma(sde, t - 1.0 / self.steps, holder)
            diffusion = 0.5 * self.steps * torch.expm1(g - g_s.to(x0.dtype)) * err
        ends = torch.tensor([0.0, 1.0], dtype=torch.float64, device=x0.device)
        g01, _ = gamma_and_derivative(sde, ends)
        g0, g1 = g01.to(x0.dtype)
        a1sq, s1sq = torch.sigmoid(-g1), torch.sigmoid(g1)
        prior = 0.5 * (a1sq * batch_sum(x0**2) + D * (s1sq - 1 - torch.log(s1sq)))
        decoder = (0.5 * D * (math.log(2 * math.pi) + 1 + g0)).expand_as(prior)
        return VDMTerms(prior=prior, decoder=decoder, diffusion=diffusion)

    def per_sample(
        self,
        score_fn: ScoreFn | EpsFn,
        sde: SDE,
        x0: Tensor,
        *,
        generator: torch.Generator | None = None,
        noise: PerSampleNoise | None = None,
        eps_fn: EpsFn | None = None,
    ) -> Tensor:
        """The negative bound of each sample in bits per dimension, ``(B,)``, with the variance-minimising gradient
        for a learned schedule's shape (``minimize_variance``). ``eps_fn`` overrides the one made from ``score_fn``."""
        fn = eps_fn if eps_fn is not None else eps_fn_of(score_fn)  # type: ignore[arg-type]
        holder = _Scale() if self.minimize_variance and isinstance(sde, LearnedVPSDE) else None
        terms = self._terms(fn, sde, x0, generator, noise, None, None, holder)
        bpd = terms.total / (x0[0].numel() * math.log(2))
        if holder is not None:
            holder.scale = 2 * bpd.detach()  # d E[L²]/d eta = E[2 L dL/d eta]
        return bpd


def gaussian_diffusion_loss(log_snr_max: float, log_snr_min: float, s2: float, dim: int) -> float:
    """``L_inf = (D/2) ln((1 + v_max s²) / (1 + v_min s²))`` nats for ``N(0, s² I_D)`` data with the exact denoiser,
    ``v = SNR = e^{log_snr}`` (any schedule with these endpoints)."""
    return 0.5 * dim * (math.log1p(math.exp(log_snr_max) * s2) - math.log1p(math.exp(log_snr_min) * s2))


def optimal_gamma(t: Tensor, gamma_min: float, gamma_max: float, s2: float) -> Tensor:
    """The variance-optimal ``gamma(t) = -log v(t)`` for ``N(0, s² I)`` data: the inverse of ``t(v) = ln((1 + v_max
    s²)/(1 + v s²)) / ln((1 + v_max s²)/(1 + v_min s²))``, i.e. ``v(t) = ((1 + v_max s²)^{1-t} (1 + v_min s²)^t - 1)
    / s²``: ``(B,)``."""
    a = math.log1p(math.exp(-gamma_min) * s2)  # ln(1 + v_max s²)
    b = math.log1p(math.exp(-gamma_max) * s2)
    log_1p = (1 - t) * a + t * b  # ln(1 + v s²)
    return -(torch.log(torch.expm1(log_1p)) - math.log(s2))
