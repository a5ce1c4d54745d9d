"""``scoresde interpolate``: an interpolation study in the probability-flow ODE's latent space, in one command.

    scoresde interpolate --ckpt runs/digits_vp/checkpoints/last.ckpt --pairs 4 --steps 9 --out interp/
    scoresde interpolate --ckpt last.ckpt --kinds slerp lerp --temperatures 1.0 0.8 --pairs 16 --steps 11 --out study/

Takes ``2·pairs`` points of a split (pair ``k`` joins points ``2k`` and ``2k+1``), encodes them, checks the round trip
``decode(encode(x))``, then for every interpolation kind × temperature decodes ``steps`` points along each path and
computes the bits/dim of every decoded point. Writes ``interpolation.npz`` (decoded points in model space, latents,
weights, bits/dim, round-trip errors), ``interpolation.csv`` (one row per decoded point) and ``interpolation.png``
(the study figure: a column per interpolation kind and temperature, with the paths in data space, in latent space,
and the bits/dim of every decoded point per pair, beside the data's exact bits/dim where the density is known, and
the run's metadata).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ... import plotting
from ..._utils import atomic_path, save_npz
from ...analytic import GaussianMixture
from ...latent import decode, encode, interpolate
from ...likelihood import log_likelihood, resolve_trace
from ...metrics import mean_stderr
from ...noise import PerSampleNoise, index_seeds
from ._common import (
    CKPT_HELP,
    MODEL_CONFIG_HELP,
    CheckpointSpec,
    build_parser,
    load_data,
    load_model,
    option,
    parse_config,
    prepare_out,
    split_of,
)

__all__ = ["InterpolateConfig", "interpolate_command", "run_interpolation"]


@dataclass(kw_only=True)
class InterpolateConfig:
    """The options of ``scoresde interpolate``."""

    ckpt: str = option(help=CKPT_HELP)
    model_config: str | None = option(None, MODEL_CONFIG_HELP, "--model-config")
    data: str | None = option(None, "as for `scoresde likelihood` (default: the checkpoint's)")
    split: str = option("test", "train, val or test")
    pairs: int = option(4, "number of pairs K")
    steps: int = option(9, "points per path M, both ends included")
    kinds: list[str] = option(["slerp", "lerp"], "interpolations to compare")
    temperatures: list[float] = option([1.0], "latent temperatures to compare")
    trace: str = option("auto", "exact, hutchinson, or auto (exact up to 16 dims)")
    seed: int = option(0, "dequantization noise and probes of point j: index_seeds(seed, j)")
    t_eps: float = option(1e-5, "start time of the ODE")
    rtol: float = option(1e-5, "relative tolerance of the ODE solves")
    atol: float = option(1e-5, "absolute tolerance of the ODE solves")
    out: str = option(help="output directory", result=False)
    device: str | None = option(None, "default: cuda if available, else cpu", result=False)
    progress: bool = option(True, "show a progress bar", result=False)


def _display(transform: Any, x: torch.Tensor) -> torch.Tensor:
    """Model space → what a picture shows: ``[0, 1]`` for discrete images, model units otherwise."""
    return transform.to_unit(x) if transform.levels is not None else x


def run_interpolation(cfg: InterpolateConfig) -> dict[str, Any]:
    if cfg.pairs < 1:
        raise ValueError(f"--pairs must be >= 1, got {cfg.pairs}")
    if cfg.steps < 2:
        raise ValueError(f"--steps must be >= 2 (the two ends), got {cfg.steps}")
    out = prepare_out(cfg.out)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_model(cfg.ckpt, device, model_config=cfg.model_config)
    dm = load_data(cfg.data, cfg.ckpt)
    raw = split_of(dm, cfg.split)
    K, M = cfg.pairs, cfg.steps
    if len(raw) < 2 * K:
        raise ValueError(f"--pairs {K} needs {2 * K} points but the {cfg.split} split has {len(raw)}")
    tf, score, sde = dm.transform, model.score_model, model.sde
    x = tf.forward_points(raw[: 2 * K], torch.arange(2 * K), cfg.seed).to(device)
    dim = x[0].numel()
    trace = resolve_trace(cfg.trace, dim)
    # a step size per point: each latent, path and bits/dim is independent of the batch it was solved in
    ode: dict[str, Any] = {"t_eps": cfg.t_eps, "rtol": cfg.rtol, "atol": cfg.atol, "backend": "per_sample"}

    with torch.no_grad():
        z = encode(score, sde, x, **ode)
        back = decode(score, sde, z, **ode)
    roundtrip = ((back - x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)).cpu().numpy()
    target = getattr(dm, "target", None)
    # the data's own density, in raw units, where it is known
    target_mix: GaussianMixture | None = target if isinstance(target, GaussianMixture) and tf.levels is None else None
    labels, decoded, latents, bpd, exact, nfe = [], [], [], [], [], []
    runs = [(kind, tau) for kind in cfg.kinds for tau in cfg.temperatures]
    for kind, tau in tqdm(runs, desc="paths (decode + bits/dim)", disable=not cfg.progress):
        with torch.no_grad():
            path = interpolate(
                score, sde, x[0::2], x[1::2], M, kind=kind, temperature=tau, z0=z[0::2], z1=z[1::2], **ode
            )
        flat = path.x.reshape(K * M, *x.shape[1:])
        seeds = index_seeds(cfg.seed + 1, torch.arange(K * M))
        res = log_likelihood(score, sde, flat, trace=trace, noise=PerSampleNoise(seeds), **ode)
        labels.append(f"{kind}, T={tau:g}")
        decoded.append(path.x.cpu())
        latents.append(path.z.cpu())
        bpd.append(res.bits_per_dim(tf.bpd_offset).reshape(K, M).cpu().double().numpy())
        nfe.append(float(res.nfe_per_sample.double().mean()) if res.nfe_per_sample is not None else float(res.nfe))
        if target_mix is not None:
            raw_points = tf.inverse(flat.double().cpu())
            exact.append((-target_mix.log_prob(raw_points) / (dim * math.log(2))).reshape(K, M).numpy())

    weights = path.weights.numpy()
    extra = {"exact_bpd": np.stack(exact)} if target_mix is not None else {}
    save_npz(
        out / "interpolation.npz",
        {
            **extra,
            "labels": np.array(labels),
            "x": torch.stack(decoded).numpy(),
            "z": torch.stack(latents).numpy(),
            "weights": weights,
            "bpd": np.stack(bpd),
            "endpoints": x.cpu().numpy(),
            "roundtrip_rel_error": roundtrip,
        },
    )
    with atomic_path(out / "interpolation.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["interpolation", "pair", "step", "weight", "bits_per_dim"])
        for label, b in zip(labels, bpd):
            for k in range(K):
                for m in range(M):
                    w.writerow([label, k, m, f"{weights[m]:.6g}", f"{b[k, m]:.6f}"])
    data = _display(tf, tf.forward(raw[:4000])) if dim == 2 else None
    prior = sde.prior_sample((4000, 2), generator=torch.Generator().manual_seed(0)) if dim == 2 else None
    spec = CheckpointSpec.parse(cfg.ckpt)
    footer = (
        f"checkpoint {Path(cfg.ckpt).name} (sha256 {spec.digest()[:12]}), {cfg.split} split; ODE dopri5 "
        f"rtol={cfg.rtol:g} atol={cfg.atol:g} t_eps={cfg.t_eps:g}, trace {trace}; likelihood NFE per point "
        f"{np.mean(nfe):.0f}; round trip max rel. error {roundtrip.max():.1e}"
        + ("; dashed: the data's exact bits/dim" if target_mix is not None else "")
    )
    plotting.plot_interpolation(
        {lab: _display(tf, d) for lab, d in zip(labels, decoded)},
        dict(zip(labels, latents)),
        dict(zip(labels, bpd)),
        weights,
        out / "interpolation.png",
        exact_bpd=dict(zip(labels, exact)) if target_mix is not None else None,
        data=data,
        prior=prior,
        title=f"interpolation study: {K} pairs × {M} points",
        footer=footer,
    )
    summary = {
        "roundtrip_rel_error_max": float(roundtrip.max()),
        "nfe_per_point": float(np.mean(nfe)),
        **({"gap_to_exact_mean": float(np.mean(np.stack(bpd) - np.stack(exact)))} if target_mix is not None else {}),
        "bpd_ends": float(np.mean([b[:, [0, -1]].mean() for b in bpd])),
        **{f"bpd_mid[{lab}]": float(b[:, M // 2].mean()) for lab, b in zip(labels, bpd)},
    }
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    print(f"round trip decode(encode(x)): max relative error {summary['roundtrip_rel_error_max']:.2e}")
    for lab, b in zip(labels, bpd):
        mid, mid_se = mean_stderr(b[:, M // 2])
        print(f"  {lab:<16} bits/dim at the ends {b[:, [0, -1]].mean():.4f}, at the middle {mid:.4f} ± {mid_se:.4f}")
    print(f"wrote {out / 'interpolation.png'}, interpolation.npz and interpolation.csv")
    return summary


def interpolate_command(argv: Sequence[str]) -> dict[str, Any]:
    """``scoresde interpolate ...``; ``argv`` excludes the word ``interpolate``."""
    parser = build_parser(InterpolateConfig, "scoresde interpolate", __doc__ or "")
    return run_interpolation(parse_config(InterpolateConfig, parser, argv))
