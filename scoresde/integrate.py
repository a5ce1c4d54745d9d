"""Adaptive ODE integration with a step size per sample: Dormand–Prince 5(4) on a batch of independent problems.

torchdiffeq takes one step size for a whole batch, so the stiffest sample sets everyone's step, the evaluations per
sample grow with the batch, and a sample's result depends on the batch it is in. Here every sample has its own time,
step size and error test; samples that reach the end leave the batch, and the right-hand side is called on those
still running. A sample's result depends on its own problem only.

The method is Dormand & Prince (1980) with the first-same-as-last property (6 evaluations per accepted step after the
first), the elementary step-size controller ``h ← h · clip(0.9 E^{-1/5}, 0.2, 10)`` and Hairer, Nørsett & Wanner's
initial step (Solving ODEs I, §II.4).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["PerSampleSolution", "rms_norm", "solve_per_sample"]

RHS = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``f(t, y, rows) -> dy/dt``: ``t: (R,)`` times, ``y: (R, n)`` states, ``rows: (R,)`` the samples' indices in the
batch (so per-sample data such as probes or labels can be indexed)."""

# Dormand–Prince 5(4): nodes, stage coefficients, fifth-order weights (= the last stage row) and error weights.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b - b4 for b, b4 in zip((*_B, 0.0), _B4))


def rms_norm(r: Tensor) -> Tensor:
    """Per-sample RMS of ``r: (R, n)``: ``(R,)``."""
    return r.pow(2).mean(1).sqrt()


@dataclass(frozen=True)
class PerSampleSolution:
    """``y``: the states at ``t1`` ``(B, n)``; ``nfe``, ``accepted``, ``rejected``: per-sample counts ``(B,)``."""

    y: Tensor
    nfe: Tensor
    accepted: Tensor
    rejected: Tensor


def _combine(y: Tensor, h: Tensor, ks: list[Tensor], weights: tuple[float, ...]) -> Tensor:
    out = y
    for w, k in zip(weights, ks):
        if w != 0.0:
            out = out + (h * w) * k
    return out


def solve_per_sample(
    f: RHS,
    y0: Tensor,
    t0: float,
    t1: float,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    norm: Callable[[Tensor], Tensor] = rms_norm,
    max_steps: int = 100_000,
) -> PerSampleSolution:
    """Integrate ``dy/dt = f(t, y)`` from ``t0`` to ``t1`` (either direction) for every row of ``y0: (B, n)``.

    Each row is its own problem with its own steps. The error of a step is ``norm(err / (atol + rtol max(|y|,
    |y_new|)))`` per row (``norm`` maps ``(R, n)`` to ``(R,)``; the default is the RMS), and a row lands exactly on
    ``t1``. ``f`` is called only on the rows still running.
    """
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be positive, got rtol={rtol}, atol={atol}")
    if y0.ndim != 2:
        raise ValueError(f"y0 must have shape (B, n), got {tuple(y0.shape)}")
    B, dev = y0.shape[0], y0.device
    direction = 1.0 if t1 >= t0 else -1.0
    span = abs(t1 - t0)
    y = y0.clone()
    t = torch.full((B,), float(t0), dtype=torch.float64, device=dev)
    nfe = torch.zeros(B, dtype=torch.long, device=dev)
    accepted, rejected = torch.zeros_like(nfe), torch.zeros_like(nfe)
    if span == 0 or B == 0:
        return PerSampleSolution(y, nfe, accepted, rejected)
    rows = torch.arange(B, device=dev)

    def call(tr: Tensor, yr: Tensor, r: Tensor) -> Tensor:
        nfe[r] += 1
        return f(tr, yr, r)

    k1 = call(t, y, rows)
    h = _initial_step(call, t, y, k1, rows, direction, rtol, atol, norm).clamp(max=span)
    for _ in range(max_steps):
        if len(rows) == 0:
            return PerSampleSolution(y, nfe, accepted, rejected)
        tr, yr, hr = t[rows], y[rows], h[rows]
        remaining = (t1 - tr) * direction
        last = hr >= remaining
        hr = torch.where(last, remaining, hr)
        hs = (direction * hr).to(y.dtype)[:, None]
        ks = [k1[rows]]
        for c, a in zip(_C[1:], _A[1:]):
            ks.append(call(tr + direction * c * hr, _combine(yr, hs, ks, a), rows))
        y_new = _combine(yr, hs, ks, _B)
        t_new = torch.where(last, torch.full_like(tr, float(t1)), tr + direction * hr)
        k7 = call(t_new, y_new, rows)
        err = _combine(torch.zeros_like(yr), hs, [*ks, k7], _E)
        scale = atol + rtol * torch.maximum(yr.abs(), y_new.abs())
        ratio = norm(err / scale).to(torch.float64)
        ok = ratio <= 1
        acc = rows[ok]
        y[acc], t[acc], accepted[acc] = y_new[ok], t_new[ok], accepted[acc] + 1
        k1[acc] = k7[ok]
        rejected[rows[~ok]] += 1
        factor = (0.9 * ratio.clamp_min(1e-10).pow(-0.2)).clamp(0.2, 10.0)
        h[rows] = hr * torch.where(ok, factor, factor.clamp_max(1.0))
        rows = rows[~(ok & last)]
    raise RuntimeError(f"solve_per_sample took {max_steps} steps without reaching t = {t1:g}; loosen rtol/atol")


def _initial_step(
    call: Callable[[Tensor, Tensor, Tensor], Tensor],
    t: Tensor,
    y: Tensor,
    f0: Tensor,
    rows: Tensor,
    direction: float,
    rtol: float,
    atol: float,
    norm: Callable[[Tensor], Tensor],
) -> Tensor:
    """Hairer, Nørsett & Wanner's starting step per sample (one more evaluation): ``(B,)`` float64."""
    scale = atol + rtol * y.abs()
    d0, d1 = norm(y / scale).double(), norm(f0 / scale).double()
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
    y1 = y + (direction * h0).to(y.dtype)[:, None] * f0
    f1 = call(t + direction * h0, y1, rows)
    d2 = norm((f1 - f0) / scale).double() / h0
    big = torch.maximum(d1, d2)
    h1 = torch.where(big <= 1e-15, torch.maximum(torch.full_like(h0, 1e-6), h0 * 1e-3), (0.01 / big) ** 0.2)
    return torch.minimum(100 * h0, h1)
