"""Continuous-time denoising score matching (Song et al., 2021, eq. 7; Song et al., 2021b for likelihood weighting).

    L(theta) = E_t E_{x_0} E_{z ~ N(0, I)} [ lambda(t) ‖ s_theta(x_t, t) + z / sigma_t ‖² ],   x_t = alpha_t x_0 + sigma_t z

Weightings: ``"sigma2"`` (``lambda = sigma_t²``, i.e. ``‖sigma_t s + z‖²``; the default) and ``"likelihood"``
(``lambda = g(t)²``, which makes the loss an upper bound on the negative log-likelihood). With
``importance_sampling=True`` the likelihood-weighted loss draws ``t ∝ g(t)² / sigma_t²`` instead of uniformly and
reweights, so that its expectation is unchanged but its variance drops.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from ._typing import ScoreFn
from ._utils import append_dims, batch_sum, check_batch
from .noise import PerSampleNoise
from .sde import SDE

__all__ = ["DSMLoss", "WEIGHTINGS", "REDUCTIONS"]

WEIGHTINGS = ("sigma2", "likelihood")
REDUCTIONS = ("mean", "sum")


class DSMLoss:
    """Denoising score-matching loss with ``t ~ U(t_eps, T)`` (or importance-sampled ``t``).

    Args:
        weighting: ``"sigma2"`` (default; ``lambda = sigma_t²``) or ``"likelihood"`` (``lambda = g(t)²``).
        importance_sampling: with ``"likelihood"``, sample ``t ∝ g²/sigma²`` (unbiased, lower variance).
        t_eps: smallest training time (1e-5 in the paper), ``0 < t_eps < T``.
        reduction: over data dims, ``"mean"`` or ``"sum"``; ``"sum"`` is ``½ Σ`` as in the score-SDE reference, so
            that it equals the ``½ E λ ‖s - ∇log p‖²`` objective up to a constant.
        table_size: grid points of the numerical inverse CDF used for importance sampling.
    """

    def __init__(
        self,
        weighting: Literal["sigma2", "likelihood"] = "sigma2",
        importance_sampling: bool = False,
        t_eps: float = 1e-5,
        reduction: Literal["mean", "sum"] = "mean",
        table_size: int = 4096,
    ) -> None:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; available: {', '.join(WEIGHTINGS)}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; available: {', '.join(REDUCTIONS)}")
        if importance_sampling and weighting != "likelihood":
            raise ValueError(
                "importance_sampling applies to weighting='likelihood' only (sigma2 weighting is already flat in t)"
            )
        if not t_eps > 0:
            raise ValueError(f"t_eps must be > 0, got {t_eps}")
        self.weighting, self.importance_sampling = weighting, importance_sampling
        self.t_eps, self.reduction, self.table_size = float(t_eps), reduction, int(table_size)
        self._table: tuple[SDE, Tensor, Tensor, float] | None = None

    def __repr__(self) -> str:
        return (
            f"DSMLoss(weighting={self.weighting!r}, importance_sampling={self.importance_sampling}, "
            f"t_eps={self.t_eps:g}, reduction={self.reduction!r})"
        )

    # ---- time sampling ---------------------------------------------------------------------------------------
    def _check_sde(self, sde: SDE) -> None:
        if not self.t_eps < sde.T:
            raise ValueError(f"t_eps={self.t_eps:g} must be below the SDE's end time T={sde.T:g}")

    def _is_table(self, sde: SDE) -> tuple[Tensor, Tensor, float]:
        """Cumulative distribution of ``q(t) ∝ g(t)² / sigma_t²`` on a log-spaced float64 grid over ``[t_eps, T]``."""
        if self._table is None or self._table[0] is not sde:
            log_t = torch.linspace(math.log(self.t_eps), math.log(sde.T), self.table_size, dtype=torch.float64)
            t = log_t.exp()
            density = sde.diffusion(t) ** 2 / sde.sigma(t) ** 2 * t  # q(t) dt = q(t) t d(log t)
            cdf = torch.cat([density.new_zeros(1), torch.cumsum(0.5 * (density[1:] + density[:-1]) * log_t.diff(), 0)])
            self._table = (sde, log_t, cdf, float(cdf[-1]))
        return self._table[1:]

    def sample_t(
        self,
        sde: SDE,
        n: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        u: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Training times ``t: (n,)`` (float64) and the weight ``lambda(t) / sigma_t²`` each term is multiplied by.

        The loss term is always ``‖sigma_t s + z‖²``; the weight turns it into ``lambda(t) ‖s + z / sigma_t‖²``
        (uniform ``t``) or its importance-sampled equivalent ``Z / (T - t_eps) ‖sigma_t s + z‖²``. ``u: (n,)``
        uniforms in ``[0, 1)`` replace the draw from ``generator``.
        """
        self._check_sde(sde)
        if u is None:
            u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        u = u.to(torch.float64)
        if self.importance_sampling:
            log_t, cdf, Z = self._is_table(sde)
            log_t, cdf = log_t.to(u.device), cdf.to(u.device)
            target = u * Z
            i = torch.searchsorted(cdf, target).clamp(1, len(cdf) - 1)
            frac = (target - cdf[i - 1]) / (cdf[i] - cdf[i - 1])
            t = (log_t[i - 1] + frac * (log_t[i] - log_t[i - 1])).exp().clamp(self.t_eps, sde.T)
            return t, torch.full_like(t, Z / (sde.T - self.t_eps))
        t = self.t_eps + u * (sde.T - self.t_eps)
        if self.weighting == "likelihood":
            return t, sde.diffusion(t) ** 2 / sde.sigma(t) ** 2
        return t, torch.ones_like(t)

    # ---- the loss --------------------------------------------------------------------------------------------
    def per_sample(
        self,
        score_fn: ScoreFn,
        sde: SDE,
        x0: Tensor,
        *,
        generator: torch.Generator | None = None,
        noise: PerSampleNoise | None = None,
        t: Tensor | None = None,
        z: Tensor | None = None,
    ) -> Tensor:
        """The loss of each sample, ``(B,)``. The random ``t`` and ``z`` come from ``noise`` (one stream per sample:
        a sample's terms do not depend on the batch it is in), else from ``generator``; ``t`` (float64 or any float)
        and ``z`` may also be given, for common random numbers."""
        check_batch(x0, "x0")
        B = x0.shape[0]
        if t is None:
            u = noise.uniform(x0.device) if noise is not None else None
            t, w = self.sample_t(sde, B, generator=generator, device=x0.device, u=u)
        else:
            if t.shape != (B,):
                raise ValueError(f"t must have shape ({B},), got {tuple(t.shape)}")
            w = sde.diffusion(t) ** 2 / sde.sigma(t) ** 2 if self.weighting == "likelihood" else torch.ones_like(t)
            if self.importance_sampling:
                raise ValueError(
                    "pass t only with importance_sampling=False (importance weights depend on how t was drawn)"
                )
        if z is None and noise is not None:
            z = noise(x0)
        elif z is None:
            z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        mean, std = sde.marginal_prob(x0, t)
        sigma = append_dims(std, x0.ndim)
        x_t = mean + sigma * z
        residual = sigma * score_fn(x_t, t.to(x0.dtype)) + z  # sigma_t s + z
        sq = residual**2
        per = sq.flatten(1).mean(1) if self.reduction == "mean" else 0.5 * batch_sum(sq)
        return per * w.to(per.dtype)

    def __call__(
        self,
        score_fn: ScoreFn,
        sde: SDE,
        x0: Tensor,
        *,
        generator: torch.Generator | None = None,
        noise: PerSampleNoise | None = None,
    ) -> Tensor:
        """Mean loss over the batch ``x0: (B, *D)``: a scalar (``noise``, ``generator``: as in :meth:`per_sample`)."""
        return self.per_sample(score_fn, sde, x0, generator=generator, noise=noise).mean()
