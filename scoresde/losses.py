"""Continuous-time denoising score matching (Song et al., 2021, eq. 7; Song et al., 2021b for likelihood weighting).

    L(theta) = E_t E_{x_0} E_{z ~ N(0, I)} [ lambda(t) ‖ s_theta(x_t, t) + z / sigma_t ‖² ],   x_t = alpha_t x_0 + sigma_t z

Weightings: ``"sigma2"`` (``lambda = sigma_t²``, i.e. ``‖sigma_t s + z‖²``; the default), ``"likelihood"``
(``lambda = g(t)²``, which makes the loss an upper bound on the negative log-likelihood) and ``"edm"`` (Karras et al.,
2022, eq. 8: ``λ(σ) = (σ² + σ_d²) / (σ σ_d)²`` on ``‖D(x̃; σ) - x_0‖²`` in the scaled view ``σ = sigma_t / alpha_t``;
since ``D - x_0 = σ (sigma_t s + z)``, that is the weight ``(σ² + σ_d²) / σ_d²`` on ``‖sigma_t s + z‖²``, and with
the ``edm`` prediction the network's own target then has weight ``λ c_out² = 1`` at every σ).

Times: ``sampling="uniform"`` (``t ~ U(t_eps, T)``), ``"importance"`` (likelihood weighting only: ``t ∝ g(t)² /
sigma_t²``, reweighted so that the expectation is unchanged but the variance drops) or ``"log_normal"`` (EDM:
``ln σ ~ N(P_mean, P_std²)``, mapped to ``t`` through the SDE's log-SNR and clamped to ``[t_eps, T]``).
"""

from __future__ import annotations

import abc
import math
from typing import Literal

import torch
from torch import Tensor

from ._typing import ScoreFn
from ._utils import append_dims, batch_sum, check_batch
from .noise import PerSampleNoise
from .sde import SDE

__all__ = ["Loss", "DSMLoss", "WEIGHTINGS", "SAMPLINGS", "REDUCTIONS"]

WEIGHTINGS = ("sigma2", "likelihood", "edm")
SAMPLINGS = ("uniform", "importance", "log_normal")
REDUCTIONS = ("mean", "sum")


class Loss(abc.ABC):
    """A training loss of a score model: ``per_sample(score_fn, sde, x0, generator=, noise=) -> (B,)``, and the
    batch mean when called (what :class:`~scoresde.lightning.ScoreModule` minimises)."""

    @abc.abstractmethod
    def per_sample(
        self,
        score_fn: ScoreFn,
        sde: SDE,
        x0: Tensor,
        *,
        generator: torch.Generator | None = None,
        noise: PerSampleNoise | None = None,
    ) -> Tensor:
        """The loss of each sample, ``(B,)``."""

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


class DSMLoss(Loss):
    """Denoising score-matching loss with ``t ~ U(t_eps, T)``, importance-sampled ``t`` or EDM's log-normal ``σ``.

    Args:
        weighting: ``"sigma2"`` (default; ``lambda = sigma_t²``), ``"likelihood"`` (``lambda = g(t)²``) or ``"edm"``
            (``λ(σ) = (σ² + σ_d²)/(σ σ_d)²`` on the denoiser error, ``σ = sigma_t / alpha_t``).
        sampling: how ``t`` is drawn: ``"uniform"`` (default), ``"importance"`` (with ``"likelihood"`` only:
            ``t ∝ g²/sigma²``, unbiased, lower variance) or ``"log_normal"`` (``ln σ ~ N(P_mean, P_std²)``).
        t_eps: smallest training time (1e-5 in the paper), ``0 < t_eps < T``.
        reduction: over data dims, ``"mean"`` or ``"sum"``; ``"sum"`` is ``½ Σ`` as in the score-SDE reference, so
            that it equals the ``½ E λ ‖s - ∇log p‖²`` objective up to a constant.
        table_size: grid points of the numerical inverse CDF used for importance sampling.
        P_mean, P_std: EDM's log-normal training distribution of ``σ`` (-1.2 and 1.2 in the paper).
        sigma_data: EDM's ``σ_d`` in the ``"edm"`` weighting (0.5; it should equal the model's).
    """

    def __init__(
        self,
        weighting: Literal["sigma2", "likelihood", "edm"] = "sigma2",
        sampling: Literal["uniform", "importance", "log_normal"] = "uniform",
        t_eps: float = 1e-5,
        reduction: Literal["mean", "sum"] = "mean",
        table_size: int = 4096,
        P_mean: float = -1.2,
        P_std: float = 1.2,
        sigma_data: float = 0.5,
    ) -> None:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; available: {', '.join(WEIGHTINGS)}")
        if sampling not in SAMPLINGS:
            raise ValueError(f"unknown sampling {sampling!r}; available: {', '.join(SAMPLINGS)}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; available: {', '.join(REDUCTIONS)}")
        if sampling == "importance" and weighting != "likelihood":
            raise ValueError(
                "sampling='importance' applies to weighting='likelihood' only (it draws t ∝ g²/sigma², the shape "
                "of that weight)"
            )
        if not t_eps > 0:
            raise ValueError(f"t_eps must be > 0, got {t_eps}")
        if not P_std > 0 or not sigma_data > 0:
            raise ValueError(f"P_std and sigma_data must be > 0, got {P_std} and {sigma_data}")
        self.weighting, self.sampling = weighting, sampling
        self.t_eps, self.reduction, self.table_size = float(t_eps), reduction, int(table_size)
        self.P_mean, self.P_std, self.sigma_data = float(P_mean), float(P_std), float(sigma_data)
        self._table: tuple[SDE, Tensor, Tensor, float] | None = None

    def __repr__(self) -> str:
        edm = f", P_mean={self.P_mean:g}, P_std={self.P_std:g}" if self.sampling == "log_normal" else ""
        edm += f", sigma_data={self.sigma_data:g}" if self.weighting == "edm" else ""
        return (
            f"DSMLoss(weighting={self.weighting!r}, sampling={self.sampling!r}, t_eps={self.t_eps:g}, "
            f"reduction={self.reduction!r}{edm})"
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
        (uniform or log-normal ``t``) or its importance-sampled equivalent ``Z / (T - t_eps) ‖sigma_t s + z‖²``.
        ``u: (n,)`` uniforms in ``[0, 1)`` replace the draw from ``generator`` (log-normal: ``ln σ = P_mean + P_std
        Φ⁻¹(u)``).
        """
        self._check_sde(sde)
        if u is None:
            u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        u = u.to(torch.float64)
        if self.sampling == "log_normal":
            tiny = torch.finfo(torch.float64).eps
            ln_sigma = self.P_mean + self.P_std * math.sqrt(2.0) * torch.erfinv(2 * u.clamp(tiny, 1 - tiny) - 1)
            t = sde.t_from_log_snr(-ln_sigma).clamp(self.t_eps, sde.T)
            return t, self._weight(sde, t)
        if self.sampling == "importance":
            log_t, cdf, Z = self._is_table(sde)
            log_t, cdf = log_t.to(u.device), cdf.to(u.device)
            target = u * Z
            i = torch.searchsorted(cdf, target).clamp(1, len(cdf) - 1)
            frac = (target - cdf[i - 1]) / (cdf[i] - cdf[i - 1])
            t = (log_t[i - 1] + frac * (log_t[i] - log_t[i - 1])).exp().clamp(self.t_eps, sde.T)
            return t, torch.full_like(t, Z / (sde.T - self.t_eps))
        t = self.t_eps + u * (sde.T - self.t_eps)
        return t, self._weight(sde, t)

    def _weight(self, sde: SDE, t: Tensor) -> Tensor:
        """``lambda(t) / sigma_t²``, the weight of ``‖sigma_t s + z‖²`` at fixed ``t``: ``(B,)``."""
        if self.weighting == "likelihood":
            return sde.diffusion(t) ** 2 / sde.sigma(t) ** 2
        if self.weighting == "edm":
            s2 = torch.exp(-2 * sde.log_snr(t))  # σ² = (sigma_t / alpha_t)²
            return (s2 + self.sigma_data**2) / self.sigma_data**2
        return torch.ones_like(t)

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
            if self.sampling == "importance":
                raise ValueError(
                    "pass t only with sampling='uniform' or 'log_normal' (importance weights depend on how t was drawn)"
                )
            w = self._weight(sde, t)
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
