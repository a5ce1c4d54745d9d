"""Abstract forward SDE, its reverse-time SDE and its probability-flow ODE (Song et al., 2021, §2–4).

Forward SDE (eq. 5):          dx = f(x, t) dt + g(t) dw,            t ∈ [0, T]
Reverse-time SDE (eq. 6):     dx = [f(x, t) - g(t)² ∇ log p_t(x)] dt + g(t) dw̄
Probability-flow ODE (eq. 13): dx = [f(x, t) - ½ g(t)² ∇ log p_t(x)] dt

Every SDE here is linear with a Gaussian perturbation kernel, ``x_t = alpha_t x_0 + sigma_t eps``, so each one exposes
``alpha(t)``, ``sigma(t)`` and ``log_snr(t)``; samplers written in those terms need no per-SDE branches.
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar

import torch
from torch import Tensor

from .._typing import NoiseFn, ScoreFn
from .._utils import append_dims, batch_sum, check_batch, check_t

__all__ = ["SDE", "ReverseSDE", "ProbabilityFlowODE"]


class SDE(abc.ABC):
    """A forward diffusion ``dx = f(x, t) dt + g(t) dw`` on ``t ∈ [0, T]`` with a Gaussian perturbation kernel.

    Subclasses implement ``drift``, ``diffusion``, ``alpha`` and ``sigma`` (each taking ``t: (B,)``); everything else
    follows from those. All methods take a batch: ``x: (B, *D)`` and ``t: (B,)``.
    """

    T: float = 1.0
    prior_std: float = 1.0
    sampling_eps: float = 1e-3
    """Default end time of sampling (the reference stops VP/sub-VP at 1e-3 and VE at 1e-5; a discrete schedule at
    its first timestep, ``1/N``)."""
    piecewise_in_t: ClassVar[bool] = False
    """Whether ``lambda(t)`` is only piecewise smooth in ``t`` (discrete schedules): ODE integrators with step control
    then integrate in ``lambda``, where the problem is smooth."""
    noise_condition: ClassVar[str] = "t"
    """Reference convention for the network's time input: ``"t"`` (``999 t``), ``"log_sigma"`` (``log sigma_t``) or
    ``"timestep"`` (``N t - 1``, discrete schedules)."""

    # ---- the four primitives ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def _drift(self, x: Tensor, t: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def _diffusion(self, t: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def _alpha(self, t: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def _sigma(self, t: Tensor) -> Tensor: ...

    def _log_snr(self, t: Tensor) -> Tensor:
        return torch.log(self._alpha(t)) - torch.log(self._sigma(t))

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        # Generic inverse by bisection (lambda_t decreases in t); subclasses override with closed forms.
        lo, hi = torch.zeros_like(lam), torch.full_like(lam, self.T)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            above = self._log_snr(mid) > lam  # mid is too early
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    # ---- public, checked interface ---------------------------------------------------------------------------
    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """Drift ``f(x, t)``: ``(B, *D)``."""
        check_batch(x)
        check_t(t, self.T, batch=x.shape[0])
        return self._drift(x, t)

    def diffusion(self, t: Tensor) -> Tensor:
        """Diffusion coefficient ``g(t)``: ``(B,)``."""
        check_t(t, self.T)
        return self._diffusion(t)

    def alpha(self, t: Tensor) -> Tensor:
        """Signal scale ``alpha_t`` of ``x_t = alpha_t x_0 + sigma_t eps``: ``(B,)``."""
        check_t(t, self.T)
        return self._alpha(t)

    def coefficients(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """``alpha_t`` and ``sigma_t`` at ``t: (B,)``, computed in float64 and shaped and typed to broadcast against
        ``like: (B, *D)``."""
        tt = t.to(torch.float64)
        return (
            append_dims(self.alpha(tt), like.ndim).to(like.dtype),
            append_dims(self.sigma(tt), like.ndim).to(like.dtype),
        )

    def sigma(self, t: Tensor) -> Tensor:
        """Noise scale ``sigma_t`` of ``x_t = alpha_t x_0 + sigma_t eps``: ``(B,)``."""
        check_t(t, self.T)
        return self._sigma(t)

    def log_snr(self, t: Tensor) -> Tensor:
        """Half log signal-to-noise ratio ``lambda_t = log(alpha_t / sigma_t)``: ``(B,)``."""
        check_t(t, self.T)
        return self._log_snr(t)

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        """The time ``t`` with ``lambda_t = lam`` (inverse of :meth:`log_snr`): ``(B,)``, clamped to ``[0, T]``.

        Samplers that pick intermediate points in log-SNR (DPM-Solver, EDM's churn, the log-SNR and Karras grids)
        map them back to ``t`` with this. Compute in float64.
        """
        if not isinstance(lam, Tensor) or lam.ndim != 1:
            raise ValueError(f"lam must be a (B,) tensor of log-SNR values, got {lam!r}")
        return self._t_from_log_snr(lam).clamp(0.0, self.T)

    def marginal_prob(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``alpha_t x_0`` ``(B, *D)`` and std ``sigma_t`` ``(B,)`` of the perturbation kernel ``p_0t(x_t | x_0)``."""
        check_batch(x0, "x0")
        check_t(t, self.T, batch=x0.shape[0])
        alpha_t = append_dims(self._alpha(t), x0.ndim).to(x0.dtype)
        return alpha_t * x0, self._sigma(t).to(x0.dtype)

    def prior_sample(
        self,
        shape: tuple[int, ...],
        *,
        generator: torch.Generator | None = None,
        noise: NoiseFn | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Draw ``x_T ~ N(0, prior_std² I)`` of shape ``(B, *D)`` from ``generator``, or from a noise source such as
        ``scoresde.noise.PerSampleNoise`` (as :func:`scoresde.sample` does)."""
        if noise is not None:
            return self.prior_std * noise(torch.empty(tuple(shape), device=device, dtype=dtype))
        if generator is not None and device is None:
            device = generator.device
        z = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
        return self.prior_std * z

    def prior_logp(self, z: Tensor) -> Tensor:
        """Log-density of the prior ``N(0, prior_std² I)`` at ``z: (B, *D)``, in nats: ``(B,)``."""
        check_batch(z, "z")
        D = z[0].numel()
        s2 = self.prior_std**2
        return -0.5 * D * math.log(2 * math.pi * s2) - batch_sum(z**2) / (2 * s2)

    def discretize(self, x: Tensor, t: Tensor, t_next: Tensor) -> tuple[Tensor, Tensor]:
        """Exact one-step discretization of the forward SDE over ``[t_next, t]`` (``t_next < t``), evaluated at ``x``.

        Returns ``(f, G)`` with ``x_t = x + f + G z`` in distribution when ``x = x_{t_next}``: the perturbation kernel
        of a linear SDE gives ``f = (a - 1) x`` with ``a = alpha_t / alpha_{t_next}`` and
        ``G² = sigma_t² - a² sigma_{t_next}²`` (for VP this is DDPM's ``beta_i``, for VE ``sigma_i² - sigma_{i-1}²``).
        ``f: (B, *D)``, ``G: (B,)``.
        """
        check_batch(x)
        check_t(t, self.T, batch=x.shape[0])
        check_t(t_next, self.T, batch=x.shape[0], name="t_next")
        if bool((t_next > t).any()):
            raise ValueError("discretize(x, t, t_next) needs t_next <= t (it discretizes the interval [t_next, t])")
        a = self._alpha(t) / self._alpha(t_next)
        G2 = (self._sigma(t) ** 2 - (a * self._sigma(t_next)) ** 2).clamp_min(0)
        f = append_dims(a - 1, x.ndim).to(x.dtype) * x
        return f, G2.sqrt()

    def reverse(self, score_fn: ScoreFn) -> ReverseSDE:
        """The reverse-time SDE driven by ``score_fn`` (eq. 6)."""
        return ReverseSDE(self, score_fn)

    def probability_flow(self, score_fn: ScoreFn) -> ProbabilityFlowODE:
        """The probability-flow ODE driven by ``score_fn`` (eq. 13)."""
        return ProbabilityFlowODE(self, score_fn)


class ReverseSDE:
    """``dx = [f(x, t) - g(t)² s(x, t)] dt + g(t) dw̄``, integrated from ``t = T`` down to ``t ≈ 0`` (eq. 6)."""

    def __init__(self, sde: SDE, score_fn: ScoreFn) -> None:
        self.sde, self.score_fn = sde, score_fn

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """Reverse drift ``f - g² s``: ``(B, *D)``."""
        g2 = append_dims(self.sde.diffusion(t) ** 2, x.ndim).to(x.dtype)
        return self.sde.drift(x, t) - g2 * self.score_fn(x, t)

    def diffusion(self, t: Tensor) -> Tensor:
        """Reverse diffusion coefficient, equal to the forward ``g(t)``: ``(B,)``."""
        return self.sde.diffusion(t)


class ProbabilityFlowODE:
    """``dx/dt = f(x, t) - ½ g(t)² s(x, t)``, whose marginals equal those of the forward SDE (eq. 13)."""

    def __init__(self, sde: SDE, score_fn: ScoreFn) -> None:
        self.sde, self.score_fn = sde, score_fn

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """ODE velocity ``f - ½ g² s``: ``(B, *D)``."""
        g2 = append_dims(self.sde.diffusion(t) ** 2, x.ndim).to(x.dtype)
        return self.sde.drift(x, t) - 0.5 * g2 * self.score_fn(x, t)
