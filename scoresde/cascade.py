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
from torch import Tensor, nn

from .analytic import GaussianMixture, ObservationPosterior
from .noise import PerSampleNoise, child_seeds
from .sampling import resolve_seeds, sample
from .sde import SDE
from .solvers import Coefficients

__all__ = [
    "downsample",
    "upsample",
    "pool_matrix",
    "augment",
    "augment_per_example",
    "pack_condition",
    "SuperResolutionNet",
    "stage2_score",
    "CascadeResult",
    "stage_seeds",
    "cascade_sample",
    "exact_stage2",
    "low_resolution_mixture",
]

Stage2 = Callable[[Tensor, Tensor, Tensor, float], Tensor]
"""``score(x_t, t, z_s, s)``: the stage-2 score given the augmented low-resolution image ``z_s`` at level ``s``."""


def downsample(x: Tensor) -> Tensor:
    """``A x``: 2×2 average pooling times 2 of ``x: (B, C, H, W)``, ``(B, C, H/2, W/2)`` (orthonormal rows)."""
    return 2.0 * F.avg_pool2d(x, 2)


def upsample(z: Tensor) -> Tensor:
    """``Aᵀ z``: the adjoint of :func:`downsample`, ``(B, C, h, w) -> (B, C, 2h, 2w)`` (each value halved over its
    2×2 block; ``A Aᵀ = I``, and ``Aᵀ A x`` is ``x`` averaged over its blocks)."""
    return 0.5 * F.interpolate(z, scale_factor=2, mode="nearest")


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


def augment_per_example(z: Tensor, s: Tensor, sde: SDE, noise: Callable[[Tensor], Tensor]) -> Tensor:
    """``alpha_{s_i} z_i + sigma_{s_i} eps_i`` for a level per example, ``s: (B,)`` (training's augmentation)."""
    mean, std = sde.marginal_prob(z, s)
    std = std.to(z.dtype).view(-1, *([1] * (z.ndim - 1)))
    return mean.to(z.dtype) + std * noise(z)


def pack_condition(z: Tensor, s: Tensor | float) -> Tensor:
    """The condition vector ``y = [vec(z_s), s]`` a :class:`SuperResolutionNet` reads: ``(B, C h w + 1)``."""
    level = torch.as_tensor(s, dtype=z.dtype, device=z.device).expand(z.shape[0]).reshape(-1, 1)
    return torch.cat([z.flatten(1), level], dim=1)


class SuperResolutionNet(nn.Module):
    """Stage 2's network: ``net(cat[x_t, Aᵀ z_s], c_noise, s)`` for ``x_t: (B, C, H, W)`` given ``y`` from
    :func:`pack_condition` (the augmented low-resolution image ``z_s: (B, C, H/2, W/2)`` and its level ``s``).

    ``net`` takes ``2 C`` input channels, returns ``C`` and is conditional on vectors of size 1 (e.g. ``UNet(
    in_channels=2 C, out_channels=C, cond_dim=1)``): the level ``s`` enters through its condition embedding, the image
    as extra channels (Ho et al., 2022, §2). A NaN row of ``y`` is the null condition (zero image, null level).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, c_noise: Tensor, y: Tensor | None = None) -> Tensor:
        if y is None:
            raise ValueError("a super-resolution network needs its condition y = pack_condition(z_s, s)")
        B, C, H, W = x.shape
        if y.shape != (B, C * (H // 2) * (W // 2) + 1):
            raise ValueError(
                f"the condition must be pack_condition(z_s, s) with z_s of shape ({B}, {C}, {H // 2}, {W // 2}), "
                f"got {tuple(y.shape)}"
            )
        null = y.isnan().any(dim=1, keepdim=True)
        z = torch.where(null, 0.0, y[:, :-1]).reshape(B, C, H // 2, W // 2)
        level = torch.where(null, torch.nan, y[:, -1:])
        return self.net(torch.cat([x, upsample(z)], dim=1), c_noise, level)


def stage2_score(score_model: Callable[..., Tensor]) -> Stage2:
    """A trained stage 2 (``score_model(x, t, y)`` over a :class:`SuperResolutionNet`) as :func:`cascade_sample`'s
    ``stage2(x_t, t, z_s, s)``."""

    def score(x: Tensor, t: Tensor, z: Tensor, s: float) -> Tensor:
        return score_model(x, t, pack_condition(z, s))

    return score


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


def stage_seeds(seeds: Tensor) -> tuple[Tensor, PerSampleNoise, Tensor]:
    """The three streams of each sample of a cascade, from its seed ``seeds: (B,)``: stage 1's seeds, the
    augmentation noise and stage 2's seeds."""
    streams = child_seeds(seeds, 3)
    return streams[:, 0], PerSampleNoise(streams[:, 1]), streams[:, 2]


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
    stage1_sde: SDE | None = None,
    generator: torch.Generator | None = None,
    seeds: Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> CascadeResult:
    """Stage 1, augmentation at level ``s = augmentation``, stage 2: ``n`` samples of shape ``high_shape``.

    ``sde`` is stage 2's SDE, which defines the augmentation levels; stage 1 has ``stage1_sde`` (default: the same).
    ``stage*_options`` go to :func:`scoresde.sample` (``solver``, ``steps``, ...). Sample ``i`` draws from three
    streams derived from its seed (stage 1, the augmentation noise, stage 2), so it does not depend on the batch.
    """
    if not 0.0 <= augmentation < sde.T:
        raise ValueError(f"augmentation must lie in [0, T), got {augmentation}")
    base, device = resolve_seeds(n, generator, seeds, device)
    first, noise, second = stage_seeds(base)
    low = sample(
        stage1, stage1_sde or sde, (n, *low_shape), seeds=first, device=device, dtype=dtype, **(stage1_options or {})
    )
    z = augment(low.x, augmentation, sde, noise)
    score = partial(_conditioned, stage2=stage2, z=z, s=augmentation)
    high = sample(score, sde, (n, *high_shape), seeds=second, device=device, dtype=dtype, **(stage2_options or {}))
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
