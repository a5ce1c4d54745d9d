"""The latent space of the probability-flow ODE: encode, decode, interpolate (Song et al., 2021, §4.3).

The probability-flow ODE is a deterministic, invertible map between data ``x = x_eps`` and latents ``z = x_T``:
``encode`` integrates it from ``t_eps`` up to ``T``, ``decode`` back down. Latents of data are (approximately) prior
draws, so paths between two latents should stay where the prior has mass: spherical interpolation keeps the norm of
two independent Gaussian latents (``‖z‖ ≈ sqrt(D)·prior_std``), linear interpolation shrinks it by up to ``1/√2``
at the midpoint. Temperature ``tau`` scales a latent (``z → tau·z``), trading diversity for typicality.

Both maps are differentiable (autograd through torchdiffeq's solver), so they can sit inside an optimisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from ._typing import ScoreFn
from ._utils import append_dims, check_batch
from .likelihood import check_t_eps
from .sde import SDE
from .solvers.ode import ProbabilityFlow

__all__ = ["encode", "decode", "slerp", "lerp", "interpolation_weights", "interpolate", "Interpolation"]

Kind = Literal["slerp", "lerp"]


def _no_noise(x: Tensor) -> Tensor:
    raise RuntimeError("the probability-flow ODE draws no noise")


def _flow(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    t0: float,
    t1: float,
    method: str,
    rtol: float,
    atol: float,
    method_options: dict[str, Any] | None,
    backend: str = "torchdiffeq",
) -> Tensor:
    """The probability-flow ODE from ``t0`` to ``t1`` by the ``ode`` solver (per-sample error norm): ``(B, *D)``."""
    check_batch(x)
    solver = ProbabilityFlow(
        method=method, rtol=rtol, atol=atol, method_options=dict(method_options or {}), backend=backend
    )
    ts = torch.tensor([t0, t1], dtype=torch.float64)
    return solver.integrate(score_fn, sde, x, ts, noise=_no_noise, every_step=False)[-1]


def encode(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    *,
    t_eps: float = 1e-5,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method_options: dict[str, Any] | None = None,
    backend: str = "torchdiffeq",
) -> Tensor:
    """Data ``x: (B, *D)`` (at time ``t_eps``) → latents ``z = x_T: (B, *D)`` along the probability-flow ODE.

    ``backend="per_sample"`` (dopri5) gives every sample its own steps, so its latent does not depend on its batch
    (no gradients through it); ``"torchdiffeq"`` is differentiable."""
    check_t_eps(sde, t_eps)
    return _flow(score_fn, sde, x, t_eps, sde.T, method, rtol, atol, method_options, backend)


def decode(
    score_fn: ScoreFn,
    sde: SDE,
    z: Tensor,
    *,
    t_eps: float = 1e-5,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method_options: dict[str, Any] | None = None,
    backend: str = "torchdiffeq",
) -> Tensor:
    """Latents ``z: (B, *D)`` at ``T`` → data at ``t_eps``: the inverse of :func:`encode` (up to solver error;
    ``backend`` as there)."""
    check_t_eps(sde, t_eps)
    return _flow(score_fn, sde, z, sde.T, t_eps, method, rtol, atol, method_options, backend)


def _pair(z0: Tensor, z1: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Check ``z0, z1: (B, *D)`` and weights ``w: (M,)``; return them broadcast to ``(B, M, *D)`` / ``(1, M, 1…)``."""
    check_batch(z0, "z0")
    if z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 must have the same shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    if w.ndim != 1:
        raise ValueError(f"weights must have shape (M,), got {tuple(w.shape)}")
    w = append_dims(w.to(z0.dtype).to(z0.device)[None], z0.ndim + 1)
    return z0[:, None], z1[:, None], w


def lerp(z0: Tensor, z1: Tensor, w: Tensor) -> Tensor:
    """``(1 - w) z0 + w z1`` for each weight of ``w: (M,)``: ``(B, M, *D)``."""
    a, b, w = _pair(z0, z1, w)
    return (1 - w) * a + w * b


def slerp(z0: Tensor, z1: Tensor, w: Tensor) -> Tensor:
    """Spherical interpolation ``[sin((1-w)Ω) z0 + sin(wΩ) z1] / sin Ω``, ``cos Ω = <z0, z1> / (‖z0‖ ‖z1‖)``, per
    sample (the whole ``D``-vector): ``(B, M, *D)``. Falls back to :func:`lerp` where ``z0`` and ``z1`` are parallel."""
    a, b, w = _pair(z0, z1, w)
    cos = torch.nn.functional.cosine_similarity(z0.flatten(1), z1.flatten(1), dim=1).clamp(-1.0, 1.0)
    omega = append_dims(torch.arccos(cos), a.ndim)  # (B, 1, 1, ...)
    sin = torch.sin(omega)
    near = sin.abs() < 1e-6
    safe = torch.where(near, torch.ones_like(sin), sin)
    spherical = (torch.sin((1 - w) * omega) * a + torch.sin(w * omega) * b) / safe
    return torch.where(near, (1 - w) * a + w * b, spherical)


def interpolation_weights(steps: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """``steps`` evenly spaced weights from 0 to 1 inclusive: ``(steps,)``."""
    if steps < 2:
        raise ValueError(f"an interpolation needs at least 2 points (the two ends), got steps={steps}")
    return torch.linspace(0.0, 1.0, steps, dtype=dtype)


@dataclass
class Interpolation:
    """Paths between pairs of data points through latent space.

    Attributes:
        x: decoded points ``(B, M, *D)``; ``x[:, 0]`` and ``x[:, -1]`` reconstruct the inputs (at temperature 1).
        z: the latents along each path ``(B, M, *D)``.
        weights: ``(M,)`` interpolation weights in ``[0, 1]``.
    """

    x: Tensor
    z: Tensor
    weights: Tensor


def interpolate(
    score_fn: ScoreFn,
    sde: SDE,
    x0: Tensor,
    x1: Tensor,
    steps: int = 9,
    *,
    kind: Kind = "slerp",
    temperature: float = 1.0,
    z0: Tensor | None = None,
    z1: Tensor | None = None,
    **ode_options: Any,
) -> Interpolation:
    """Encode ``x0, x1: (B, *D)``, interpolate their latents at ``steps`` points (``kind``), scale them by
    ``temperature`` and decode every point. ``z0``/``z1`` skip the encoding when the latents are known.
    ``ode_options`` (``t_eps``, ``method``, ``rtol``, ``atol``) go to :func:`encode` and :func:`decode`."""
    if kind not in ("slerp", "lerp"):
        raise ValueError(f"unknown interpolation {kind!r}; use 'slerp' or 'lerp'")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
    z0 = encode(score_fn, sde, x0, **ode_options) if z0 is None else z0
    z1 = encode(score_fn, sde, x1, **ode_options) if z1 is None else z1
    w = interpolation_weights(steps)
    path = (slerp if kind == "slerp" else lerp)(z0, z1, w) * temperature  # (B, M, *D)
    B, M = path.shape[:2]
    x = decode(score_fn, sde, path.reshape(B * M, *path.shape[2:]), **ode_options)
    return Interpolation(x=x.reshape(path.shape), z=path, weights=w)
