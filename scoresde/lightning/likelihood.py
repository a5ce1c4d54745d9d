"""``scoresde likelihood``: bits/dim of a dataset split under a trained checkpoint, on one device or many.

    scoresde likelihood --ckpt runs/digits_vp/checkpoints/last.ckpt --split test --repeats 5 --out bpd/
    scoresde likelihood --ckpt last.ckpt --data experiments/digits_vp.yaml --trace hutchinson --devices 2 --out bpd/

Each data point ``j`` gets its own random streams (dequantization noise and Hutchinson probes, from
``index_seeds(seed, j)`` and the repeat), so results do not depend on batch size, device count or resumption.
Batches run through Lightning's predict loop with autograd enabled (``inference_mode=False``); each batch's results
are written atomically to ``parts/``, and a rerun skips the points already done. The solve itself holds no
collective operation, so ranks may take different numbers of steps (and of batches) without waiting on each other;
rank 0 merges the parts after one barrier at the end.

Outputs in ``--out``: ``likelihood.npz`` (per point: ``index``, ``bpd (N, R)``, ``logp``, ``prior``, ``integral`` in
nats, ``nfe``, ``gaussian_bpd (N, R)`` and, for known densities, ``exact_bpd``), ``summary.json`` and a printed table with bits/dim mean ± standard error,
the mean NFE, and the same points' exact bits/dim under a full-covariance Gaussian fitted to the train split (same
transform, same dequantization draws, same offset): the baseline any model of the data must beat. Data drawn from a known
density (``ToyDataModule``'s ring or mixture) also get their exact bits/dim (``exact_bpd``) and the model's gap to it.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from torch import Tensor
from torch.utils.data import DataLoader

from .._utils import atomic_path, file_digest
from ..analytic import GaussianMixture
from ..likelihood import log_likelihood, nats_to_bits_per_dim, resolve_trace
from ..noise import PerSampleNoise, index_seeds
from ..transforms import DataTransform
from .loading import add_device_arguments, check_manifest, load_data, load_model, predict_trainer, record_run, split_of
from .module import ScoreModule

__all__ = [
    "build_parser", "likelihood_command", "LikelihoodTask", "dequantized", "gaussian_logp", "mean_stderr",
    "uniform_from_normal",
]

RUN_KEYS = ("ckpt", "split", "trace", "probe", "n_probes", "repeats", "seed", "t_eps", "method", "rtol", "atol", "limit")


def uniform_from_normal(n: Tensor) -> Tensor:
    """``Φ(n)``: standard normal draws → uniform draws in ``[0, 1)`` (so per-sample normal streams dequantize)."""
    u = 0.5 * (1.0 + torch.erf(n.double() / math.sqrt(2.0)))
    return u.clamp(max=1.0 - 2.0**-40)


def dequantized(transform: DataTransform, raw: Tensor, index: Tensor, seed: int) -> Tensor:
    """``raw: (N, *D)`` → model space, point ``index[i]`` with its own dequantization draw of stream ``seed`` (none
    where the transform draws no noise)."""
    if not transform.stochastic:
        return transform.forward(raw)
    return transform.forward(raw, u=uniform_from_normal(PerSampleNoise(index_seeds(seed, index))(raw.double())))


def gaussian_logp(train: Tensor, x: Tensor) -> Tensor:
    """Exact ``log N(x; m, S)`` in nats, ``(N,)``, with ``m, S`` the maximum-likelihood fit to ``train: (M, *D)``."""
    train, x = train.flatten(1).double(), x.flatten(1).double()
    if train.shape[0] <= train.shape[1]:
        raise ValueError(f"a full-covariance Gaussian in {train.shape[1]} dims needs more than {train.shape[1]} "
                         f"train points, got {train.shape[0]}")
    m = train.mean(0)
    chol, info = torch.linalg.cholesky_ex(torch.cov(train.T, correction=0))
    if info != 0:
        raise ValueError("the train split's covariance is singular (constant coordinates?); dequantize the data")
    r = torch.linalg.solve_triangular(chol, (x - m).T, upper=False)
    return -0.5 * r.pow(2).sum(0) - chol.diagonal().log().sum() - 0.5 * x.shape[1] * math.log(2 * math.pi)


class LikelihoodTask(L.LightningModule):
    """Wraps a trained :class:`ScoreModule` for ``Trainer.predict``: each batch is the indices of one block of
    ``--batch-size`` points of ``raw``, solved as one system; blocks are the same whatever the number of processes, so
    every point gets the same value on 1 or N of them."""

    def __init__(self, model: ScoreModule, transform: DataTransform, raw: Tensor, cfg: dict[str, Any], parts: Path) -> None:
        super().__init__()
        self.model, self.transform, self.raw, self.cfg, self.parts = model, transform, raw, cfg, parts
        self.done = _done_indices(parts)

    def predict_step(self, batch: Tensor, batch_idx: int) -> None:
        index = batch
        raw = self.raw[index.cpu()].to(self.device)
        if self.done and all(int(j) in self.done for j in index):
            return  # written by an earlier (interrupted) run
        cfg, dim = self.cfg, raw[0].numel()
        repeats = cfg["repeats"] if self.transform.stochastic else 1
        out: dict[str, list[np.ndarray]] = {k: [] for k in ("bpd", "logp", "prior", "integral", "nfe")}
        for r in range(repeats):
            x = dequantized(self.transform, raw, index, _stream(cfg["seed"], r))
            noise = PerSampleNoise(index_seeds(_stream(cfg["seed"], r) + 1, index))  # Hutchinson probes
            res = log_likelihood(
                self.model.score_model, self.model.sde, x, t_eps=cfg["t_eps"], method=cfg["method"], rtol=cfg["rtol"],
                atol=cfg["atol"], trace=cfg["trace"], probe=cfg["probe"], n_probes=cfg["n_probes"], noise=noise,
            )
            for k, v in (("logp", res.logp), ("prior", res.prior), ("integral", res.integral)):
                out[k].append(v.double().cpu().numpy())
            out["bpd"].append(nats_to_bits_per_dim(res.logp.double(), dim, self.transform.bpd_offset).cpu().numpy())
            out["nfe"].append(np.full(len(index), res.nfe))
        name = f"part_{int(index[0]):08d}_{int(index[-1]):08d}_{len(index)}.npz"
        with atomic_path(self.parts / name) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, index=index.cpu().numpy(), **{k: np.stack(v, 1) for k, v in out.items()})


def _stream(seed: int, repeat: int) -> int:
    return seed * 1_000_003 + 2 * repeat


def gaussian_baseline(transform: DataTransform, train: Tensor, raw: Tensor, seed: int, repeats: int) -> np.ndarray:
    """Bits/dim ``(N, R)`` of ``raw`` under the Gaussian fitted to ``train`` (one draw), with the same dequantization
    draws as the model's run."""
    fit = dequantized(transform, train, torch.arange(len(train)), seed * 1_000_003 - 1)
    index, dim = torch.arange(len(raw)), raw[0].numel()
    bpd = [nats_to_bits_per_dim(gaussian_logp(fit, dequantized(transform, raw, index, _stream(seed, r))), dim,
                                transform.bpd_offset) for r in range(repeats)]
    return torch.stack(bpd, 1).numpy()


def _done_indices(parts: Path) -> set[int]:
    return {int(j) for p in sorted(parts.glob("part_*.npz")) for j in np.load(p)["index"]}


def merge_parts(parts: Path, n: int) -> dict[str, np.ndarray]:
    """All parts → one array per key, sorted by index, each point once (sampler padding and reruns removed)."""
    files = [np.load(p) for p in sorted(parts.glob("part_*.npz"))]
    merged = {k: np.concatenate([f[k] for f in files]) for k in files[0].files}
    _, first = np.unique(merged["index"], return_index=True)
    merged = {k: v[first] for k, v in merged.items()}
    if len(merged["index"]) != n:
        missing = sorted(set(range(n)) - set(merged["index"].tolist()))[:10]
        raise RuntimeError(f"{parts} holds {len(merged['index'])} of {n} points (missing e.g. {missing}); run again to resume")
    return merged


def mean_stderr(per_point: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the mean of ``per_point: (N,)`` (NaN error for one point)."""
    n = len(per_point)
    return float(per_point.mean()), float(per_point.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")


def summarize(merged: dict[str, np.ndarray]) -> dict[str, float]:
    """Means ± standard errors over points of the per-point averages over dequantization draws."""
    bpd = merged["bpd"].mean(1)
    s = {"n": len(bpd), "repeats": int(merged["bpd"].shape[1]), "nfe": float(merged["nfe"].mean())}
    s["bpd"], s["bpd_stderr"] = mean_stderr(bpd)
    if "gaussian_bpd" in merged:  # paired: the same points and draws under both models
        gauss = merged["gaussian_bpd"].mean(1)
        s["gaussian_bpd"], s["gaussian_bpd_stderr"] = mean_stderr(gauss)
        s["gain_over_gaussian"], s["gain_over_gaussian_stderr"] = mean_stderr(gauss - bpd)
    if "exact_bpd" in merged:  # the data's own density: E[gap] = KL(data || model) / (D ln 2) >= 0
        exact = merged["exact_bpd"].mean(1)
        s["exact_bpd"], s["exact_bpd_stderr"] = mean_stderr(exact)
        s["gap_to_exact"], s["gap_to_exact_stderr"] = mean_stderr(bpd - exact)
    return s


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="scoresde likelihood", description=__doc__.split("\n\n")[0], default_meta=False)
    p.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below")
    p.add_argument("--ckpt", type=str, required=True, help="checkpoint written by `scoresde fit` (EMA weights)")
    p.add_argument("--data", type=str | None, default=None,
                   help="experiment YAML, DataModule class name or '{class_path: ..., init_args: ...}' (default: the checkpoint's)")
    p.add_argument("--split", type=str, default="test", help="train, val or test")
    p.add_argument("--limit", type=int | None, default=None, help="use only the first N points of the split")
    p.add_argument("--trace", type=str, default="auto", help="exact, hutchinson, or auto (exact up to 16 dims)")
    p.add_argument("--probe", type=str, default="rademacher", help="Hutchinson probes: rademacher or gaussian")
    p.add_argument("--n_probes", "--n-probes", type=int, default=1, help="Hutchinson probes per point (fixed per solve)")
    p.add_argument("--repeats", type=int, default=1, help="dequantization draws per point (the reference uses 5)")
    p.add_argument("--seed", type=int, default=0, help="point j uses index_seeds(seed, j) for its noise")
    p.add_argument("--t_eps", type=float, default=1e-5, help="start time of the ODE")
    p.add_argument("--method", type=str, default="dopri5", help="torchdiffeq method")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--batch_size", "--batch-size", type=int, default=128)
    p.add_argument("--out", type=str, required=True, help="output directory")
    add_device_arguments(p)
    return p


def run_likelihood(cfg: dict[str, Any]) -> dict[str, float] | None:
    """Bits/dim of ``cfg['split']``; returns the summary on rank 0 (``None`` on the other ranks)."""
    for key in ("repeats", "n_probes", "batch_size"):
        if cfg[key] < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {cfg[key]}")
    model = load_model(cfg["ckpt"])
    dm = load_data(cfg["data"], cfg["ckpt"])
    if dm.transform != model.transform:
        raise ValueError(
            f"the checkpoint was trained on data mapped by {model.transform}, but --data maps by {dm.transform}; "
            "bits/dim would use the wrong offset. Pass the DataModule the model was trained on"
        )
    raw = split_of(dm, cfg["split"])[: cfg["limit"]]
    if len(raw) == 0:
        raise ValueError(f"the {cfg['split']} split is empty")
    dim = raw[0].numel()
    trace = resolve_trace(cfg["trace"], dim)
    run = {**{k: cfg[k] for k in RUN_KEYS}, "trace": trace, "n": len(raw), "data": str(cfg["data"]),
           "ckpt_sha256": file_digest(cfg["ckpt"])}

    out = Path(cfg["out"])
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    manifest = out / "likelihood_config.json"
    check_manifest(manifest, run, "results computed")
    trainer = predict_trainer(cfg, inference_mode=False)  # the divergence needs autograd
    record_run(manifest, run, trainer.is_global_zero)
    # one loader item per block of points, so the blocks (each one ODE system) do not depend on the number of ranks
    blocks = list(torch.arange(len(raw)).split(cfg["batch_size"]))
    loader = DataLoader(blocks, batch_size=None, shuffle=False)
    task = LikelihoodTask(model, dm.transform, raw, {**cfg, "trace": trace}, parts)
    trainer.predict(task, loader, return_predictions=False)
    trainer.strategy.barrier()  # the one collective: every rank has written its parts
    if not trainer.is_global_zero:
        return None
    merged = merge_parts(parts, len(raw))
    merged["gaussian_bpd"] = gaussian_baseline(dm.transform, split_of(dm, "train"), raw, cfg["seed"], merged["bpd"].shape[1])
    target = getattr(dm, "target", None)
    if isinstance(target, GaussianMixture) and dm.transform.levels is None:  # data drawn from a known density
        merged["exact_bpd"] = (-target.log_prob(raw.double()) / (dim * math.log(2))).numpy()[:, None]
    with atomic_path(out / "likelihood.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **merged)
    summary = {**summarize(merged), "offset": dm.transform.bpd_offset, "levels": dm.transform.levels, "trace": trace,
               "split": cfg["split"]}
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    print(_table(summary, dim))
    return summary


def _table(s: dict[str, Any], dim: int) -> str:
    rows = [
        ("split", f"{s['split']} ({s['n']} points × {s['repeats']} dequantization draws)" if s["levels"] is not None
                  else f"{s['split']} ({s['n']} points, continuous data)"),
        ("bits/dim", f"{s['bpd']:.4f} ± {s['bpd_stderr']:.4f} (s.e.)"),
        ("Gaussian fit", f"{s['gaussian_bpd']:.4f} ± {s['gaussian_bpd_stderr']:.4f} (full covariance, fitted to train)"),
        ("gain", f"{s['gain_over_gaussian']:.4f} ± {s['gain_over_gaussian_stderr']:.4f} bits/dim below the Gaussian "
                 "(paired s.e.)"),
        *([("exact", f"{s['exact_bpd']:.4f} ± {s['exact_bpd_stderr']:.4f} (the data's own density; the model is "
                     f"{s['gap_to_exact']:.4f} ± {s['gap_to_exact_stderr']:.4f} above it, paired s.e.)")]
          if "exact_bpd" in s else []),
        ("offset", f"{s['offset']:+.4f} bits/dim (from the data transform; D = {dim})"),
        ("trace", s["trace"]),
        ("NFE (mean)", f"{s['nfe']:.1f}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def likelihood_command(argv: Sequence[str] | None = None) -> dict[str, float] | None:
    """``scoresde likelihood ...``; ``argv`` excludes the word ``likelihood``."""
    cfg = build_parser().parse_args(list(sys.argv[2:] if argv is None else argv)).as_dict()
    cfg.pop("config", None)
    return run_likelihood(cfg)
