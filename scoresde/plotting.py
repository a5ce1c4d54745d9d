"""Pictures: 2-D samples over the exact density, and image grids next to real data. Files are written atomically."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._utils import atomic_path
from .analytic import GaussianMixture
from .transforms import DataTransform

__all__ = ["plot_2d", "image_grid", "image_panels", "save_figure", "plot_interpolation", "samples_picture"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Save a matplotlib figure to ``path`` atomically (temporary file, then rename) and close it."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
    finally:
        _pyplot().close(fig)
    return path


def _bounds(*arrays: np.ndarray | None, pad: float = 0.15) -> tuple[float, float, float, float]:
    pts = np.concatenate([a for a in arrays if a is not None and len(a)])
    lo, hi = np.quantile(pts, 0.002, axis=0), np.quantile(pts, 0.998, axis=0)
    span = (hi - lo).max() * (1 + 2 * pad)
    c = (lo + hi) / 2
    return c[0] - span / 2, c[0] + span / 2, c[1] - span / 2, c[1] + span / 2


def plot_2d(
    samples: Tensor,
    path: str | os.PathLike,
    *,
    target: GaussianMixture | None = None,
    data: Tensor | None = None,
    title: str = "",
) -> Path:
    """Two panels: the data (exact density and/or training points) and the model's samples over the same background;
    only the samples' panel when neither the data nor the density is given (no empty panel)."""
    plt = _pyplot()
    s = samples.detach().cpu().double().numpy()
    d = data.detach().cpu().double().numpy() if data is not None else None
    x0, x1, y0, y1 = _bounds(s if d is None else d, d)
    panels = [(s, "samples")] if d is None and target is None else [(d, "data"), (s, "samples")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.4), sharex=True, sharey=True, squeeze=False)
    background = None
    if target is not None:
        gx, gy = np.meshgrid(np.linspace(x0, x1, 300), np.linspace(y0, y1, 300))
        grid = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], 1))
        background = target.log_prob(grid).exp().sqrt().reshape(gx.shape).numpy()  # sqrt: tails stay visible
    for ax, (pts, name) in zip(axes[0], panels):
        if background is not None:
            ax.imshow(background, extent=(x0, x1, y0, y1), origin="lower", cmap="Blues", aspect="auto")
        if pts is not None:
            n = min(len(pts), 4000)
            ax.scatter(pts[:n, 0], pts[:n, 1], s=2, c="tab:red" if name == "samples" else "k", alpha=0.5, linewidths=0)
        ax.set_title(
            f"{name}"
            + (" over the exact density" if background is not None else "")
            + (f" (n={len(pts)})" if pts is not None else "")
        )
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def _tile(images: np.ndarray, ncol: int) -> np.ndarray:
    n, c, h, w = images.shape
    nrow = -(-n // ncol)
    canvas = np.ones((c, nrow * (h + 1) + 1, ncol * (w + 1) + 1))
    for i, img in enumerate(images):
        r, k = divmod(i, ncol)
        canvas[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + k * (w + 1) : 1 + k * (w + 1) + w] = img
    return canvas.transpose(1, 2, 0)


def image_grid(
    samples: Tensor,
    path: str | os.PathLike,
    *,
    real: Tensor | None = None,
    ncol: int = 8,
    title: str = "",
) -> Path:
    """Grid of generated images ``(N, C, H, W)`` in ``[0, 1]``, with real images in a panel beside them if given."""
    panels = [("real", real)] if real is not None else []
    panels.append(("samples", samples))
    return image_panels(panels, path, ncol=ncol, title=title)


def image_panels(
    panels: Sequence[tuple[str, Tensor]], path: str | os.PathLike, *, ncol: int = 8, title: str = ""
) -> Path:
    """Named grids of images ``(N, C, H, W)`` in ``[0, 1]`` side by side (e.g. originals, masked, completed)."""
    plt = _pyplot()
    ncol = max(1, min(ncol, max(len(imgs) for _, imgs in panels)))
    rows = max(math.ceil(len(imgs) / ncol) for _, imgs in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2 * rows / ncol + 0.9), squeeze=False)
    for ax, (name, imgs) in zip(axes[0], panels):
        arr = imgs.detach().cpu().float().clamp(0, 1).numpy()
        tiled = _tile(arr, ncol)
        ax.imshow(
            tiled.squeeze(-1) if tiled.shape[-1] == 1 else tiled,
            cmap="gray_r" if tiled.shape[-1] == 1 else None,
            vmin=0,
            vmax=1,
        )
        ax.set_title(name)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_interpolation(
    paths: dict[str, Tensor],
    bpd: dict[str, np.ndarray],
    weights: np.ndarray,
    path: str | os.PathLike,
    *,
    data: Tensor | None = None,
    title: str = "",
) -> Path:
    """One panel per interpolation (``paths[label]``: ``(K, M, 2)`` points drawn as paths over ``data``, or
    ``(K, M, C, H, W)`` images in ``[0, 1]`` as strips, a row per pair) and one of bits/dim along the path
    (``bpd[label]``: ``(K, M)``; mean over pairs ± standard error)."""
    plt = _pyplot()
    labels = list(paths)
    fig, axes = plt.subplots(1, len(labels) + 1, figsize=(4.2 * (len(labels) + 1), 4.4), squeeze=False)
    for ax, label in zip(axes[0], labels):
        p = paths[label].detach().cpu().double()
        if p.ndim == 3:  # 2-D points
            if data is not None:
                d = data.detach().cpu().double().numpy()[:4000]
                ax.scatter(d[:, 0], d[:, 1], s=2, c="0.7", linewidths=0)
            for k, pk in enumerate(p.numpy()):
                ax.plot(pk[:, 0], pk[:, 1], "-o", ms=3, lw=1, color=plt.cm.tab10(k % 10))
            ax.set_aspect("equal")
        else:
            K, M = p.shape[:2]
            tiled = _tile(p.reshape(K * M, *p.shape[2:]).clamp(0, 1).numpy(), M)
            ax.imshow(
                tiled.squeeze(-1) if tiled.shape[-1] == 1 else tiled,
                cmap="gray_r" if tiled.shape[-1] == 1 else None,
                vmin=0,
                vmax=1,
            )
            ax.axis("off")
        ax.set_title(label)
    ax = axes[0, -1]
    for label in labels:
        b = np.asarray(bpd[label])
        mean, se = b.mean(0), b.std(0, ddof=1) / np.sqrt(len(b)) if len(b) > 1 else np.zeros(b.shape[1])
        ax.plot(weights, mean, "-o", ms=3, label=label)
        ax.fill_between(weights, mean - se, mean + se, alpha=0.2)
    ax.set_xlabel("interpolation weight")
    ax.set_ylabel("bits/dim of the decoded point")
    ax.set_title("likelihood along the path (mean ± s.e. over pairs)")
    ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def samples_picture(
    samples: np.ndarray | Tensor,
    transform: DataTransform,
    path: str | os.PathLike,
    *,
    labels: np.ndarray | None = None,
    title: str = "",
) -> Path | None:
    """The picture of samples in the dataset's units: 2-D points as a scatter, images ``(N, C, H, W)`` as a grid of
    full rows (one column per class when 2–16 classes were drawn in turn). ``None`` for other shapes."""
    x = torch.as_tensor(np.asarray(samples[:4096]))
    if x.ndim == 2 and x.shape[1] == 2:
        return plot_2d(x.float(), path, title=title)
    if x.ndim != 4:
        return None
    k = len(np.unique(labels)) if labels is not None else 0
    ncol = k if 2 <= k <= 16 else min(8, len(x))
    shown = max(ncol, min(len(x), 8 * ncol) // ncol * ncol)  # whole rows only: no empty cells
    return image_grid(transform.raw_to_unit(x[:shown]), path, ncol=ncol, title=title)
