"""Cascaded super-resolution (Ho et al., 2022): stage 1 samples a low-resolution image, stage 2 the high-resolution
one given it, with noise-conditioning augmentation.

The low-resolution view is ``A x``: 2×2 average pooling times 2, a linear map with orthonormal rows (:func:`downsample`,
:func:`pool_matrix`), so a Gaussian mixture's low-resolution view is a mixture and the conditional given it is exact
(:class:`scoresde.analytic.ObservationPosterior`). Stage 2 is conditioned not on stage 1's sample ``v`` itself but on
``z_s = alpha_s v + sigma_s eps`` with the augmentation level ``s`` (a time of the SDE) given to it too: stage 2 then
treats its input as a noisy observation, ``v = z_s / alpha_s`` with noise ``sigma_s / alpha_s``, and forgives stage 1
its errors at that scale (Ho et al., §3.2). ``s`` is drawn during training and fixed at sampling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .analytic import GaussianMixture, ObservationPosterior
from .noise import PerSampleNoise, child_seeds
from .sampling import resolve_seeds, sample
from .sde import SDE
from .solvers import Coefficients

__all__ = [
    "downsample",
    "pool_matrix",
    "augment",
    "CascadeResult",
    "cascade_sample",
    "exact_stage2",
    "low_resolution_mixture",
]

Stage2 = Callable[[Tensor, Tensor, Tensor, float], Tensor]
"""``score(x_t, t, z_s, s)``: the stage-2 score given the augmented low-resolution image ``z_s`` at level ``s``."""


def downsample(x: Tensor) -> Tensor:
    """``A x``: 2×2 average pooling times 2 of ``x: (B, C, H, W)``, ``(B, C, H/2, W/2)`` (orthonormal rows)."""
    return 2.0 * F.avg_pool2d(x, 2)


def pool_matrix(channels: int, height: int, width: int) -> Tensor:
    """The matrix of :func:`downsample` on flattened ``(C, H, W)`` images: ``(C H W / 4, C H W)`` float64."""
    D = channels * height * width
    return downsample(torch.eye(D, dtype=torch.float64).reshape(D, channels, height, width)).reshape(D, -1).T


def augment(z: Tensor, s: float, sde: SDE, noise: Callable[[Tensor], Tensor]) -> Tensor:
    """``alpha_s z + sigma_s eps``: the low-resolution image diffused to the augmentation level ``s`` (``s = 0``:
    ``z`` itself)."""
    if s == 0:
        return z
    alpha, sigma = _level(sde, s)
    return alpha * z + sigma * noise(z)


def _level(sde: SDE, s: float) -> tuple[float, float]:
    """``(alpha_s, sigma_s)`` of the augmentation level ``s`` in float64 (``s = 0``: ``(1, 0)``, no augmentation)."""
    if s == 0:
        return 1.0, 0.0
    c = Coefficients.at(sde, s)
    return c.alpha, c.sigma


@dataclass
class CascadeResult:
    """What :func:`cascade_sample` returns: stage 1's ``low`` ``(B, *low)``, the augmented ``conditioning`` stage 2
    saw, the high-resolution samples ``x`` ``(B, *high)`` and the score evaluations of each stage."""

    low: Tensor
    conditioning: Tensor
    x: Tensor
    nfe: tuple[int, int]


def cascade_sample(
    stage1: Callable[[Tensor, Tensor], Tensor],
    stage2: Stage2,
    sde: SDE,
    n: int,
    low_shape: tuple[int, ...],
    high_shape: tuple[int, ...],
    *,
    augmentation: float = 0.0,
    stage1_options: dict[str, Any] | None = None,
    stage2_options: dict[str, Any] | None = None,
    generator: torch.Generator | None = None,
    seeds: Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> CascadeResult:
    """Stage 1, augmentation at level ``s = augmentation``, stage 2: ``n`` samples of shape ``high_shape``.

    ``stage*_options`` go to :func:`scoresde.sample` (``solver``, ``steps``, ...). Sample ``i`` draws from three
    streams derived from its seed (stage 1, the augmentation noise, stage 2), so it does not depend on the batch.
    """
    if not 0.0 <= augmentation < sde.T:
        raise ValueError(f"augmentation must lie in [0, T), got {augmentation}")
    base, device = resolve_seeds(n, generator, seeds, device)
    streams = child_seeds(base, 3)
    low = sample(
        stage1, sde, (n, *low_shape), seeds=streams[:, 0], device=device, dtype=dtype, **(stage1_options or {})
    )
    z = augment(low.x, augmentation, sde, PerSampleNoise(streams[:, 1]))
    score = partial(_conditioned, stage2=stage2, z=z, s=augmentation)
    high = sample(
        score, sde, (n, *high_shape), seeds=streams[:, 2], device=device, dtype=dtype, **(stage2_options or {})
    )
    return CascadeResult(low=low.x, conditioning=z, x=high.x, nfe=(low.nfe, high.nfe))


def _conditioned(x: Tensor, t: Tensor, *, stage2: Stage2, z: Tensor, s: float) -> Tensor:
    return stage2(x, t, z, s)


def exact_stage2(mixture: GaussianMixture, sde: SDE, min_noise: float = 1e-4) -> Stage2:
    """The exact stage-2 score of an image mixture under :func:`downsample`: ``∇ log p_t(x | v)`` with ``v = z_s /
    alpha_s`` observed with noise ``max(sigma_s / alpha_s, min_noise)`` (``min_noise`` stands in for ``s = 0``)."""
    C, H, W = mixture.shape
    A = pool_matrix(C, H, W)
    posteriors: dict[float, tuple[float, ObservationPosterior]] = {}  # one per level, built on its first call

    def score(x: Tensor, t: Tensor, z: Tensor, s: float) -> Tensor:
        if s not in posteriors:
            alpha, sigma = _level(sde, s)
            posteriors[s] = alpha, ObservationPosterior(mixture, A, max(sigma / alpha, min_noise))
        alpha, posterior = posteriors[s]
        return posterior.score(x, t, sde, z.flatten(1) / alpha)

    return score


def low_resolution_mixture(mixture: GaussianMixture) -> GaussianMixture:
    """The exact law of ``downsample(x)`` for an image mixture: means ``A mu_k``, covariances ``A Sigma_k Aᵀ``."""
    C, H, W = mixture.shape
    A = pool_matrix(C, H, W)
    return GaussianMixture(mixture.weights, mixture.means @ A.T, A @ mixture.covs @ A.T, shape=(C, H // 2, W // 2))
