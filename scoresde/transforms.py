"""The map from raw data to the model's space, recorded so that bits/dim offsets follow from it.

Discrete data with ``levels = L`` values per dim (``L = 256`` for 8-bit images, 17 for scikit-learn's digits):
``y = (raw + u) / L`` with ``u ~ U[0, 1)`` (uniform dequantization; ``u = ½`` without it), then ``z = scale·y + shift``.
Continuous data (``levels = None``): ``z = scale·raw + shift``.

A density ``p_z`` on model space gives, per dimension, ``bpd = -log2 p_z(z) / D + offset`` with
``offset = log2(L) - log2(scale)`` for dequantized discrete data (8-bit to ``[-1, 1]``: ``8 - 1 = 7``) and
``offset = -log2(scale)`` for continuous data (the change of variables back to raw units).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .noise import PerSampleNoise, index_seeds

if TYPE_CHECKING:
    from .dequantize import Dequantizer

__all__ = ["DataTransform", "uniform_from_normal"]


def uniform_from_normal(n: Tensor) -> Tensor:
    """``Φ(n)``: standard normal draws → uniform draws in ``[0, 1)`` (so per-sample normal streams dequantize)."""
    u = 0.5 * (1.0 + torch.erf(n.double() / math.sqrt(2.0)))
    return u.clamp(max=1.0 - 2.0**-40)


def _point_normals(raw: Tensor, index: Tensor, seed: int) -> Tensor:
    """Standard normals shaped like ``raw`` (float64), point ``index[i]`` from its own stream of ``seed``: what every
    per-point dequantization draw is made from."""
    return PerSampleNoise(index_seeds(seed, index.to(raw.device)))(raw.double())


@dataclass(frozen=True)
class DataTransform:
    """Raw data ↔ model space, ``z = scale · y + shift`` (see module docstring).

    Args:
        levels: number of discrete values per dim (raw values are integers ``0 … levels-1``); ``None`` for continuous.
        scale, shift: the affine map to model space (``2, -1`` maps ``[0, 1]`` to ``[-1, 1]``).
        dequantize: add ``u ~ U[0, 1)`` to discrete values (otherwise ``u = ½``, the bin centre).
        data_range: for continuous data, the ``(min, max)`` of the raw data the model was trained on; raw values more
            than that width outside it are refused as data in other units (``None``: not checked). Not part of
            equality: two transforms that map data alike are equal whatever data they saw.
    """

    levels: int | None = None
    scale: float = 1.0
    shift: float = 0.0
    dequantize: bool = True
    data_range: tuple[float, float] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.levels is not None and (
            isinstance(self.levels, bool) or int(self.levels) != self.levels or self.levels < 2
        ):
            raise ValueError(f"levels must be an integer >= 2 (or None for continuous data), got {self.levels!r}")
        if not self.scale > 0:
            raise ValueError(f"scale must be > 0, got {self.scale!r}")

    @classmethod
    def identity(cls, data: Tensor | None = None) -> DataTransform:
        """Continuous data used as is (offset 0); given the training ``data``, their range is recorded."""
        if data is None or data.numel() == 0:
            return cls()
        return cls(data_range=(float(data.min()), float(data.max())))

    @classmethod
    def discrete(cls, levels: int, low: float = -1.0, high: float = 1.0, dequantize: bool = True) -> DataTransform:
        """Discrete data with ``levels`` values mapped onto ``[low, high]``."""
        if not high > low:
            raise ValueError(f"need high > low, got low={low}, high={high}")
        return cls(levels=levels, scale=high - low, shift=low, dequantize=dequantize)

    @property
    def stochastic(self) -> bool:
        """Whether :meth:`forward` draws noise (dequantized discrete data), so repeated draws differ."""
        return self.levels is not None and self.dequantize

    @property
    def bpd_offset(self) -> float:
        """What to add to ``-log2 p_z / D`` to get bits/dim of the raw data (see module docstring)."""
        return (math.log2(self.levels) if self.levels is not None else 0.0) - math.log2(self.scale)

    def check(self, raw: Tensor, what: str = "data") -> None:
        """Refuse raw data this transform would turn into garbage, saying what is wrong with ``what``: NaN or
        infinite values; for discrete data, values that are not integers in ``0 … levels-1``; for continuous data
        with a recorded ``data_range``, values far outside it (another unit: 8-bit pixels given to a model of data
        in ``[-1, 1]``)."""
        if raw.numel() == 0 or (self.levels is None and self.data_range is None and not raw.is_floating_point()):
            return
        # one transfer per call: forward checks every training batch on its device
        x = raw.double()
        finite = torch.isfinite(x)
        x = x.where(finite, 0.0)
        bad, lo, hi, fractions = torch.stack([(~finite).sum(), x.min(), x.max(), (x != x.round()).sum()]).tolist()
        if bad:
            raise ValueError(f"{what}: {int(bad)} NaN or infinite values (of {raw.numel()}); remove or replace them")
        if self.levels is not None:
            fractional = fractions > 0
            if lo < 0 or hi > self.levels - 1 or fractional:
                raise ValueError(
                    f"{what}: discrete data with {self.levels} levels must be integers in [0, {self.levels - 1}], "
                    f"got {'fractional ' if fractional else ''}values in [{lo:g}, {hi:g}]; set levels to match your "
                    "data, or give continuous data without levels"
                )
        elif self.data_range is not None:
            a, b = self.data_range
            width = max(b - a, 1e-12)
            if lo < a - width or hi > b + width:
                raise ValueError(
                    f"{what}: values in [{lo:g}, {hi:g}], far outside the range the model was trained on "
                    f"[{a:g}, {b:g}]; give data in the training data's units"
                )

    def forward(self, raw: Tensor, *, generator: torch.Generator | None = None, u: Tensor | None = None) -> Tensor:
        """Raw data → model space (float32 unless ``raw`` is float64). The dequantization noise is drawn from
        ``generator``, or given as ``u`` (shaped like ``raw``, in ``[0, 1)``; e.g. per-sample streams)."""
        dtype = raw.dtype if raw.dtype == torch.float64 else torch.float32
        self.check(raw)
        y = raw.to(dtype)
        if self.levels is not None:
            offset: Tensor | float
            if not self.dequantize:
                offset = 0.5
            elif u is None:
                device = generator.device if generator is not None else y.device
                offset = torch.rand(y.shape, generator=generator, dtype=dtype, device=device).to(y.device)
            elif u.shape != y.shape or bool((u < 0).any()) or bool((u >= 1).any()):
                raise ValueError(f"u must have the data's shape {tuple(y.shape)} and values in [0, 1)")
            else:
                offset = u.to(device=y.device, dtype=dtype)
            y = (y + offset) / self.levels
        return self.scale * y + self.shift

    def forward_points(self, raw: Tensor, index: Tensor, seed: int) -> Tensor:
        """``raw: (N, *D)`` → model space, point ``index[i]`` with its own dequantization draw of stream ``seed``
        (none where the transform draws no noise), so a point's value does not depend on its batch."""
        if not self.stochastic:
            return self.forward(raw)
        return self.forward(raw, u=uniform_from_normal(_point_normals(raw, index, seed)))

    def dequantize_points(
        self, raw: Tensor, index: Tensor, seed: int, dequantizer: Dequantizer | None = None
    ) -> tuple[Tensor, Tensor]:
        """:meth:`forward_points` with ``u`` drawn by ``dequantizer`` (:mod:`scoresde.dequantize`) from the same
        per-point normal streams, and ``log q(u | raw)``: ``(N,)`` float64, to subtract from ``log p(z)``. ``None``
        (or continuous data) is :meth:`forward_points` with ``log q = 0``."""
        zero = torch.zeros(raw.shape[0], dtype=torch.float64, device=raw.device)
        if dequantizer is None or not self.stochastic:
            return self.forward_points(raw, index, seed), zero
        u, log_q = dequantizer.sample(raw, _point_normals(raw, index, seed))
        return self.forward(raw, u=u.detach()), log_q.detach().double()

    def raw_to_unit(self, raw: Tensor) -> Tensor:
        """Raw data (the dataset's units) → ``[0, 1]`` for pictures: ``raw / (levels - 1)`` for discrete data, the
        raw values clamped to ``[0, 1]`` otherwise."""
        return raw.float() / (self.levels - 1) if self.levels is not None else raw.float().clamp(0, 1)

    def inverse(self, z: Tensor) -> Tensor:
        """Model space → raw data (discrete: nearest level, clamped, as integers)."""
        y = (z - self.shift) / self.scale
        if self.levels is None:
            return y
        raw = torch.floor(y * self.levels).clamp(0, self.levels - 1)
        return raw.to(torch.uint8 if self.levels <= 256 else torch.int64)

    def to_unit(self, z: Tensor) -> Tensor:
        """Model space → ``[0, 1]`` for display (discrete data only; continuous data is returned unscaled)."""
        y = (z - self.shift) / self.scale
        return y.clamp(0, 1) if self.levels is not None else y
