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
    latents: dict[str, Tensor],
    bpd: dict[str, np.ndarray],
    weights: np.ndarray,
    path: str | os.PathLike,
    *,
    exact_bpd: dict[str, np.ndarray] | None = None,
    data: Tensor | None = None,
    prior: Tensor | None = None,
    title: str = "",
    footer: str = "",
) -> Path:
    """The interpolation study: a column per interpolation (``label``: kind and temperature), side by side, with
    three rows:

    * data space: ``paths[label]`` ``(K, M, 2)`` drawn as paths over ``data``, or ``(K, M, C, H, W)`` images in
      ``[0, 1]`` as strips (a row per pair);
    * latent space: ``latents[label]`` ``(K, M, *D)``, for 2-D as paths over ``prior`` draws, else each path's norm
      ``‖z‖/√D`` against the weight with the prior's ``±2`` standard-deviation band of that norm;
    * bits/dim of every decoded point, one curve per pair (``bpd[label]``: ``(K, M)``), with the data's exact
      bits/dim at the same points dashed where the density is known (``exact_bpd``).

    ``footer`` holds the run's metadata (checkpoint, tolerances, evaluations)."""
    plt = _pyplot()
    labels = list(paths)
    n = len(labels)
    fig, axes = plt.subplots(3, n, figsize=(4.0 * n, 11.5), squeeze=False)
    b_all = np.concatenate([np.asarray(bpd[lab]).ravel() for lab in labels])
    if exact_bpd:
        b_all = np.concatenate([b_all, *[np.asarray(v).ravel() for v in exact_bpd.values()]])
    lo, hi = np.nanpercentile(b_all, 1), np.nanpercentile(b_all, 99)
    pad = 0.08 * (hi - lo + 1e-9)
    for col, label in enumerate(labels):
        p = paths[label].detach().cpu().double()
        K = p.shape[0]
        colors = [plt.cm.tab10(k % 10) for k in range(K)]
        ax = axes[0, col]
        if p.ndim == 3:  # 2-D points
            if data is not None:
                d = data.detach().cpu().double().numpy()[:4000]
                ax.scatter(d[:, 0], d[:, 1], s=2, c="0.75", linewidths=0)
            for k, pk in enumerate(p.numpy()):
                ax.plot(pk[:, 0], pk[:, 1], "-o", ms=3, lw=1, color=colors[k])
            ax.set_aspect("equal")
        else:
            M = p.shape[1]
            tiled = _tile(p.reshape(K * M, *p.shape[2:]).clamp(0, 1).numpy(), M)
            ax.imshow(
                tiled.squeeze(-1) if tiled.shape[-1] == 1 else tiled,
                cmap="gray_r" if tiled.shape[-1] == 1 else None,
                vmin=0,
                vmax=1,
            )
            ax.axis("off")
        ax.set_title(f"{label}: data space", fontsize=10)
        ax = axes[1, col]
        z = latents[label].detach().cpu().double()
        D = z[0, 0].numel()
        if D == 2:
            if prior is not None:
                q = prior.detach().cpu().double().numpy()[:4000]
                ax.scatter(q[:, 0], q[:, 1], s=2, c="0.75", linewidths=0)
            for k, zk in enumerate(z.reshape(K, -1, 2).numpy()):
                ax.plot(zk[:, 0], zk[:, 1], "-o", ms=3, lw=1, color=colors[k])
            ax.set_aspect("equal")
        else:
            norms = z.reshape(K, z.shape[1], -1).norm(dim=2).numpy() / np.sqrt(D)
            band = 2 * np.sqrt(1 / (2 * D))  # ‖z‖/√D of a prior draw: about 1 ± √(1/(2D))
            ax.axhspan(1 - band, 1 + band, color="0.85", label="prior draws (±2 s.d.)")
            for k in range(K):
                ax.plot(weights, norms[k], "-o", ms=3, lw=1, color=colors[k])
            ax.set_xlabel("interpolation weight")
            ax.set_ylabel("‖z‖ / √D")
            ax.legend(fontsize=7, loc="lower center")
        ax.set_title("latent space (x_T)", fontsize=10)
        ax = axes[2, col]
        b = np.asarray(bpd[label])
        for k in range(K):
            ax.plot(weights, b[k], "-o", ms=3, lw=1.2, color=colors[k], label="model" if k == 0 else None)
            if exact_bpd is not None and label in exact_bpd:
                ax.plot(weights, exact_bpd[label][k], "--", lw=1.2, color=colors[k], label="exact" if k == 0 else None)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlabel("interpolation weight")
        ax.set_ylabel("bits/dim of the decoded point")
        ax.set_title("likelihood along each path", fontsize=10)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    if footer:
        fig.text(0.01, 0.005, footer, fontsize=7, family="monospace", va="bottom")
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
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
