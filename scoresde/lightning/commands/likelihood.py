"""``scoresde likelihood``: bits/dim of a dataset split under a trained checkpoint, on one device or many.

    scoresde likelihood --ckpt runs/digits_vp/checkpoints/last.ckpt --split test --repeats 5 --out bpd/
    scoresde likelihood --ckpt last.ckpt --data experiments/digits_vp.yaml --trace hutchinson --devices 2 --out bpd/

Each data point ``j`` gets its own random streams (dequantization noise and Hutchinson probes, from
``index_seeds(seed, j)`` and the repeat), so results do not depend on batch size, device count or resumption.
Batches run through Lightning's predict loop with autograd enabled (``inference_mode=False``); each block's results
are written atomically as a shard of ``parts/``, and a rerun skips the blocks already done. The solve itself holds no
collective operation, so ranks may take different numbers of steps (and of batches) without waiting on each other;
rank 0 merges the parts after one barrier at the end.

Outputs in ``--out``: ``likelihood.npz`` (per point: ``index``, ``bpd (N, R)``, ``logp``, ``prior``, ``integral`` in
nats, ``nfe``, ``gaussian_bpd (N, R)`` and, for known densities, ``exact_bpd``), ``summary.json`` and a printed table with bits/dim mean ± standard error,
the mean NFE, and the same points' exact bits/dim under a full-covariance Gaussian fitted to the train split (same
transform, same dequantization draws, same offset): the baseline any model of the data must beat. Data drawn from a known
density (``ToyDataModule``'s ring or mixture) also get their exact bits/dim (``exact_bpd``) and the model's gap to it.

A latent diffusion model reports ``log p(z) + log p(x | z)`` at the encoded latent ``z = E(x)``
(:func:`scoresde.autoencoder.latent_log_likelihood`): the latent probability-flow value under the SDE's prior, with
the scale's Jacobian, plus the decoder's density (``latent`` and ``decoder`` in nats per point). It is the joint
density at one latent, neither the model's likelihood nor a guaranteed bound on it (it leaves out the encoder's
entropy); no ELBO or second prior is computed for it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..._utils import atomic_path, save_npz
from ...analytic import GaussianMixture
from ...autoencoder import latent_log_likelihood
from ...dequantize import Dequantizer, TruncatedNormalDequantizer
from ...likelihood import (
    GaussianPrior,
    Trace,
    diffused_prior,
    gaussian_logp,
    log_likelihood,
    nats_to_bits_per_dim,
    resolve_trace,
)
from ...metrics import mean_stderr
from ...noise import PerSampleNoise, index_seeds
from ...solvers.ode import check_ode_method
from ...transforms import DataTransform
from ...variational import elbo
from ..module import ScoreModule
from ._common import (
    CKPT_HELP,
    MODEL_CONFIG_HELP,
    CheckpointSpec,
    DeviceOptions,
    ShardTask,
    build_parser,
    load_data,
    load_model,
    manifest_record,
    option,
    parse_config,
    prepare_out,
    run_resumable,
    split_of,
)

__all__ = [
    "LikelihoodConfig",
    "likelihood_command",
    "run_likelihood",
    "LikelihoodTask",
    "gaussian_baseline",
    "summarize",
]


@dataclass(kw_only=True)
class LikelihoodConfig(DeviceOptions):
    """The options of ``scoresde likelihood`` (every one that changes results goes into the run manifest)."""

    ckpt: str = option(help=CKPT_HELP)
    model_config: str | None = option(None, MODEL_CONFIG_HELP, "--model-config")
    data: str | None = option(
        None,
        "experiment YAML, DataModule class name or '{class_path: ..., init_args: ...}' (default: the checkpoint's)",
    )
    split: str = option("test", "train, val or test")
    limit: int | None = option(None, "use only the first N points of the split")
    trace: str = option("auto", "exact, hutchinson, or auto (exact up to 16 dims)")
    probe: str = option("rademacher", "Hutchinson probes: rademacher or gaussian")
    n_probes: int = option(1, "Hutchinson probes per point (fixed per solve)", "--n-probes")
    repeats: int = option(1, "dequantization draws per point (the reference uses 5)")
    seed: int = option(0, "point j uses index_seeds(seed, j) for its noise")
    prior: str = option(
        "fitted",
        "log p_T: 'fitted' (the train split's Gaussian diffused to T, from the checkpoint) or 'standard' (the SDE's "
        "N(0, prior_std² I)); the table shows the other beside it",
    )
    dequantization: str = option(
        "uniform",
        "discrete data: uniform, or truncated_normal[:std] (a normal around the bin centre, std 0.3 by default)",
    )
    elbo: int = option(
        128,
        "time draws per point of the continuous-time variational bound reported beside the ODE value (even; 0: off)",
    )
    t_eps: float = option(1e-5, "start time of the ODE")
    cutoff: str = option(
        "none",
        "none (bits/dim of p at t_eps) or taylor (corrected to t = 0 with the score and its divergence at t_eps; "
        "exact-score studies: a learned score is poor there)",
    )
    method: str = option("dopri5", "ODE method (dopri5, or any torchdiffeq method with --backend torchdiffeq)")
    backend: str = option("per_sample", "dopri5 with a step size per point (per_sample) or for the block (torchdiffeq)")
    rtol: float = option(1e-5, "relative tolerance of the ODE solve")
    atol: float = option(1e-5, "absolute tolerance of the ODE solve")
    batch_size: int = option(128, "points per block (one ODE system) and per shard", "--batch-size")
    block: int = option(
        0,
        "the network takes exactly this many rows per call (the last block padded); 64 makes results identical "
        "on any number of CPU processes (each runs fewer threads, and BLAS rounds some batch sizes differently "
        "by thread count), at the cost of more, smaller calls (2x the time of the README's run); 0: the batch as it is",
    )
    out: str = option(help="output directory", result=False)


def _stream(seed: int, repeat: int) -> int:
    return seed * 1_000_003 + 2 * repeat


class LikelihoodTask(ShardTask):
    """Wraps a trained :class:`ScoreModule` for ``Trainer.predict``: each shard is one block of ``--batch-size``
    points of ``raw``, solved as one system; blocks are the same whatever the number of processes, so every point gets
    the same value on 1 or N of them."""

    def __init__(
        self,
        model: ScoreModule,
        transform: DataTransform,
        raw: Tensor,
        cfg: LikelihoodConfig,
        trace: Trace,
        parts: Path,
        fitted: GaussianPrior | None,
        dequantizer: Dequantizer | None,
    ) -> None:
        super().__init__(len(raw), cfg.batch_size, parts)
        self.model, self.transform, self.raw, self.cfg, self.trace = model, transform, raw, cfg, trace
        self.fitted, self.dequantizer = fitted, dequantizer

    def draw(self, start: int, count: int) -> dict[str, np.ndarray]:
        index = torch.arange(start, start + count)
        raw = self.raw[index].to(self.device)
        cfg, dim = self.cfg, raw[0].numel()
        repeats = cfg.repeats if self.transform.stochastic else 1
        keys = ["bpd", "logp", "log_q", "prior", "integral", "nfe", "bpd_other", "prior_other", "hutchinson_se"]
        keys += ["elbo_bpd", "elbo_se"] if cfg.elbo else []
        out: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        priors = (self.fitted or self.model.sde.prior_logp, self.model.sde.prior_logp)  # fitted: None, latent only
        used, other = priors if cfg.prior == "fitted" else priors[::-1]
        for r in range(repeats):
            x, log_q = self.transform.dequantize_points(raw, index, _stream(cfg.seed, r), self.dequantizer)
            noise = PerSampleNoise(index_seeds(_stream(cfg.seed, r) + 1, index.to(self.device)))  # Hutchinson probes
            options: dict[str, Any] = {
                "t_eps": cfg.t_eps,
                "method": cfg.method,
                "backend": cfg.backend,  # checked by log_likelihood
                "rtol": cfg.rtol,
                "atol": cfg.atol,
                "trace": self.trace,
                "probe": cfg.probe,  # checked in run_likelihood
                "n_probes": cfg.n_probes,
                "noise": noise,
                "cutoff": cfg.cutoff,  # checked in run_likelihood
            }
            if self.model.codec is not None:  # the joint density at the encoded latent (module docstring)
                lat = latent_log_likelihood(self.model.codec, self.model.score_model, self.model.sde, x, **options)
                self._latent_parts(out, lat.logp - log_q, lat, log_q, dim)
                continue
            res = log_likelihood(self.model.score_model, self.model.sde, x, prior=used, **options)
            prior_other = other(res.z).double()
            logp_other = res.logp.double() - res.prior.double() + prior_other  # the same solve, the other prior
            for k, v in (
                ("logp", res.logp),
                ("log_q", log_q),
                ("prior", res.prior),
                ("integral", res.integral),
                ("prior_other", prior_other),
            ):
                out[k].append(v.double().cpu().numpy())
            for k, v in (("bpd", res.logp.double() - log_q), ("bpd_other", logp_other - log_q)):
                out[k].append(nats_to_bits_per_dim(v, dim, self.transform.bpd_offset).cpu().numpy())
            se = res.integral_stderr  # Hutchinson with several probes: each point's own standard error
            out["hutchinson_se"].append(
                (se.double() / (dim * math.log(2))).cpu().numpy() if se is not None else np.full(count, np.nan)
            )
            if cfg.elbo:  # the variational bound on the same points, with its own per-point noise
                bound = elbo(
                    self.model.score_model,
                    self.model.sde,
                    x,
                    n_t=cfg.elbo,
                    t_eps=cfg.t_eps,
                    prior=self.fitted if cfg.prior == "fitted" else None,  # not None: pixel models have one
                    noise=PerSampleNoise(index_seeds(_stream(cfg.seed, r) + 2_000_000_011, index.to(self.device))),
                )
                shift = res.cutoff.double() if res.cutoff is not None else 0.0  # the same correction to t = 0
                bound_bpd = nats_to_bits_per_dim(bound.logp.double() + shift - log_q, dim, self.transform.bpd_offset)
                out["elbo_bpd"].append(bound_bpd.cpu().numpy())
                out["elbo_se"].append((bound.stderr / (dim * math.log(2))).double().cpu().numpy())
            per = res.nfe_per_sample
            out["nfe"].append(per.cpu().numpy() if per is not None else np.full(count, res.nfe))
        return {k: np.stack(v, 1) for k, v in out.items() if v}

    def _latent_parts(self, out: dict[str, list[np.ndarray]], nats: Tensor, lat: Any, log_q: Tensor, dim: int) -> None:
        """One dequantization draw's results of a latent model into ``out`` (``bpd`` from ``nats``, the joint density
        less ``log q``; its ``latent`` and ``decoder`` parts in nats)."""
        flow = lat.flow
        for k, v in (("logp", lat.logp), ("log_q", log_q), ("prior", flow.prior), ("integral", flow.integral)):
            out[k].append(v.double().cpu().numpy())
        out.setdefault("latent", []).append(lat.latent.double().cpu().numpy())
        out.setdefault("decoder", []).append(lat.decoder.double().cpu().numpy())
        out["bpd"].append(nats_to_bits_per_dim(nats.double(), dim, self.transform.bpd_offset).cpu().numpy())
        se = flow.integral_stderr
        out["hutchinson_se"].append(
            (se.double() / (dim * math.log(2))).cpu().numpy() if se is not None else np.full(len(nats), np.nan)
        )
        per = flow.nfe_per_sample
        out["nfe"].append(per.cpu().numpy() if per is not None else np.full(len(nats), flow.nfe))


def gaussian_baseline(
    transform: DataTransform,
    train: Tensor,
    raw: Tensor,
    seed: int,
    repeats: int,
    dequantizer: Dequantizer | None = None,
) -> np.ndarray:
    """Bits/dim ``(N, R)`` of ``raw`` under the Gaussian fitted to ``train`` (one draw), with the same dequantization
    draws (and ``log q``) as the model's run."""
    fit = transform.forward_points(train, torch.arange(len(train)), seed * 1_000_003 - 1)
    index, dim = torch.arange(len(raw)), raw[0].numel()
    bpd = []
    for r in range(repeats):
        z, log_q = transform.dequantize_points(raw, index, _stream(seed, r), dequantizer)
        bpd.append(nats_to_bits_per_dim(gaussian_logp(fit, z) - log_q, dim, transform.bpd_offset))
    return torch.stack(bpd, 1).numpy()


def parse_dequantization(spec: str, transform: DataTransform) -> Dequantizer | None:
    """``--dequantization``: ``uniform`` (``None``: the transform's own) or ``truncated_normal[:std]``."""
    name, _, arg = spec.partition(":")
    if name == "uniform" and not arg:
        return None
    if name != "truncated_normal":
        raise ValueError(f"--dequantization must be uniform or truncated_normal[:std], got {spec!r}")
    if not transform.stochastic:
        raise ValueError(f"--dequantization {spec} needs dequantized discrete data; this data is {transform}")
    try:
        return TruncatedNormalDequantizer(float(arg) if arg else 0.3)
    except ValueError as err:
        raise ValueError(f"--dequantization {spec}: {err}") from None


def summarize(merged: dict[str, np.ndarray]) -> dict[str, float]:
    """Means ± standard errors over points of the per-point averages over dequantization draws."""
    bpd = merged["bpd"].mean(1)
    s = {"n": len(bpd), "repeats": int(merged["bpd"].shape[1]), "nfe": float(merged["nfe"].mean())}
    s["bpd"], s["bpd_stderr"] = mean_stderr(bpd)
    if (
        "hutchinson_se" in merged and not np.isnan(merged["hutchinson_se"]).all()
    ):  # Hutchinson's own, per point and draw
        s["hutchinson_stderr"] = float(np.sqrt(np.mean(merged["hutchinson_se"] ** 2)))
    if "elbo_bpd" in merged:  # the variational bound: its mean, and its paired gap above the ODE value
        bound = merged["elbo_bpd"].mean(1)
        s["elbo_bpd"], s["elbo_bpd_stderr"] = mean_stderr(bound)
        s["elbo_gap"], s["elbo_gap_stderr"] = mean_stderr(bound - bpd)
    if "bpd_other" in merged:  # the same solves under the other prior at T
        s["bpd_other"], s["bpd_other_stderr"] = mean_stderr(merged["bpd_other"].mean(1))
    if "gaussian_bpd" in merged:  # paired: the same points and draws under both models
        gauss = merged["gaussian_bpd"].mean(1)
        s["gaussian_bpd"], s["gaussian_bpd_stderr"] = mean_stderr(gauss)
        s["gain_over_gaussian"], s["gain_over_gaussian_stderr"] = mean_stderr(gauss - bpd)
    if "exact_bpd" in merged:  # the data's own density: E[gap] = KL(data || model) / (D ln 2) >= 0
        exact = merged["exact_bpd"].mean(1)
        s["exact_bpd"], s["exact_bpd_stderr"] = mean_stderr(exact)
        s["gap_to_exact"], s["gap_to_exact_stderr"] = mean_stderr(bpd - exact)
    return s


def run_likelihood(cfg: LikelihoodConfig) -> dict[str, Any] | None:
    """Bits/dim of ``cfg.split``; returns the summary on rank 0 (``None`` on the other ranks)."""
    for key in ("repeats", "n_probes", "batch_size"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(cfg, key)}")
    if cfg.elbo < 0 or cfg.elbo % 2:
        raise ValueError(f"--elbo must be an even number of time draws (0: off), got {cfg.elbo}")
    if cfg.limit is not None and cfg.limit < 1:
        raise ValueError(f"--limit must be a positive number of points, got {cfg.limit}")
    check_ode_method(cfg.method)
    if cfg.probe not in ("rademacher", "gaussian"):
        raise ValueError(f"--probe must be rademacher or gaussian, got {cfg.probe!r}")
    if cfg.cutoff not in ("none", "taylor"):
        raise ValueError(f"--cutoff must be none or taylor, got {cfg.cutoff!r}")
    if cfg.prior not in ("fitted", "standard"):
        raise ValueError(f"--prior must be fitted or standard, got {cfg.prior!r}")
    model = load_model(cfg.ckpt, block=cfg.block, model_config=cfg.model_config, latent=True)
    latent = model.codec is not None
    if latent and cfg.cutoff != "none":
        raise ValueError("--cutoff taylor corrects a pixel-space density to t = 0; a latent model does not take it")
    if latent:  # the latent ODE ends at the SDE's prior (the train split's pixel Gaussian does not apply); no ELBO
        cfg = dataclasses.replace(cfg, prior="standard", elbo=0)
    dm = load_data(cfg.data, cfg.ckpt)
    if dm.transform != model.transform:
        raise ValueError(
            f"the checkpoint was trained on data mapped by {model.transform}, but --data maps by {dm.transform}; "
            "bits/dim would use the wrong offset. Pass the DataModule the model was trained on"
        )
    raw = split_of(dm, cfg.split)[: cfg.limit]
    if len(raw) == 0:
        raise ValueError(f"the {cfg.split} split is empty")
    model.transform.check(raw, f"the {cfg.split} split")  # all of it, before the first solve
    dim = raw[0].numel()
    trace = resolve_trace(cfg.trace, dim)
    run = manifest_record(cfg, trace=trace, n=len(raw), ckpt_sha256=CheckpointSpec.parse(cfg.ckpt).digest())

    fitted, prior_source = model.fitted_prior, "from the checkpoint"
    if fitted is None and not latent:  # a checkpoint from before fitted priors, or a pretrained model: fit it now
        fitted, prior_source = diffused_prior(model.sde, *dm.train_moments()), "fitted now"
    out = prepare_out(cfg.out)
    dequantizer = parse_dequantization(cfg.dequantization, dm.transform)
    task = LikelihoodTask(model, dm.transform, raw, cfg, trace, out / "parts", fitted, dequantizer)
    # inference_mode=False: the divergence needs autograd
    merged = run_resumable(cfg, task, out / "likelihood_config.json", run, "results computed", inference_mode=False)
    if merged is None:
        return None
    merged["gaussian_bpd"] = gaussian_baseline(
        dm.transform, split_of(dm, "train"), raw, cfg.seed, merged["bpd"].shape[1], dequantizer
    )
    target = getattr(dm, "target", None)
    if isinstance(target, GaussianMixture) and dm.transform.levels is None:  # data drawn from a known density
        merged["exact_bpd"] = (-target.log_prob(raw.double()) / (dim * math.log(2))).numpy()[:, None]
    save_npz(out / "likelihood.npz", merged)
    parts = {}
    if latent:  # its two terms in bits/dim of the data (the offset and log q are in the total only)
        parts = {k + "_bpd": float(-merged[k].mean() / (dim * math.log(2))) for k in ("latent", "decoder")}
    summary = {
        **summarize(merged),
        **parts,
        "offset": dm.transform.bpd_offset,
        "levels": dm.transform.levels,
        "trace": trace,
        "split": cfg.split,
        "prior": cfg.prior,
        "dequantization": repr(dequantizer) if dequantizer is not None else "uniform",
        "fitted_prior": "none (a latent model)"
        if fitted is None
        else f"train split's Gaussian ({'full' if fitted.chol.ndim == 2 else 'diagonal'} covariance)",
        "fitted_prior_source": prior_source,
    }
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    print(_table(summary, dim))
    return summary


def _table(s: dict[str, Any], dim: int) -> str:
    rows = [
        (
            "split",
            f"{s['split']} ({s['n']} points × {s['repeats']} dequantization draws)"
            if s["levels"] is not None
            else f"{s['split']} ({s['n']} points, continuous data)",
        ),
        ("bits/dim", f"{s['bpd']:.4f} ± {s['bpd_stderr']:.4f} (s.e.)"),
        *(
            [
                (
                    "latent model",
                    f"log p(z) + log p(x | z) at z = E(x): {s['latent_bpd']:.4f} bits/dim from the latent ODE, "
                    f"{s['decoder_bpd']:.4f} from the decoder; a joint density, not a guaranteed bound",
                )
            ]
            if "latent_bpd" in s
            else []
        ),
        ("prior at T", _prior_words(s, s["prior"])),
        *(
            [
                (
                    "other prior",
                    f"{s['bpd_other']:.4f} ± {s['bpd_other_stderr']:.4f}: the same solves under "
                    + _prior_words(s, "standard" if s["prior"] == "fitted" else "fitted"),
                )
            ]
            if "bpd_other" in s
            else []
        ),
        *(
            [
                (
                    "ELBO",
                    f"{s['elbo_bpd']:.4f} ± {s['elbo_bpd_stderr']:.4f}: the reverse SDE's variational bound (same "
                    f"prior), {s['elbo_gap']:+.4f} ± {s['elbo_gap_stderr']:.4f} from the ODE value (paired s.e.)",
                )
            ]
            if "elbo_bpd" in s
            else []
        ),
        (
            "Gaussian fit",
            f"{s['gaussian_bpd']:.4f} ± {s['gaussian_bpd_stderr']:.4f} (full covariance, fitted to train)",
        ),
        (
            "gain",
            f"{s['gain_over_gaussian']:.4f} ± {s['gain_over_gaussian_stderr']:.4f} bits/dim below the Gaussian "
            "(paired s.e.)",
        ),
        *(
            [
                (
                    "exact",
                    f"{s['exact_bpd']:.4f} ± {s['exact_bpd_stderr']:.4f} (the data's own density; the model is "
                    f"{s['gap_to_exact']:.4f} ± {s['gap_to_exact_stderr']:.4f} above it, paired s.e.)",
                )
            ]
            if "exact_bpd" in s
            else []
        ),
        *(
            [("dequantization", f"{s['dequantization']}; log q(u | x) subtracted from log p")]
            if s["levels"] is not None
            else []
        ),
        ("offset", f"{s['offset']:+.4f} bits/dim (from the data transform; D = {dim})"),
        ("trace", s["trace"]),
        *(
            [
                (
                    "Hutchinson s.e.",
                    f"{s['hutchinson_stderr']:.4f} bits/dim per point (RMS over points; their probes' spread)",
                )
            ]
            if "hutchinson_stderr" in s
            else []
        ),
        ("NFE (mean)", f"{s['nfe']:.1f}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def _prior_words(s: dict[str, Any], prior: str) -> str:
    if prior == "fitted":
        return (
            f"N(alpha_T m, alpha_T² C + sigma_T² I), the {s['fitted_prior']} diffused to T ({s['fitted_prior_source']})"
        )
    return "the SDE's N(0, prior_std² I), as published numbers use"


def likelihood_command(argv: Sequence[str]) -> dict[str, Any] | None:
    """``scoresde likelihood ...``; ``argv`` excludes the word ``likelihood``."""
    parser = build_parser(LikelihoodConfig, "scoresde likelihood", __doc__ or "")
    return run_likelihood(parse_config(LikelihoodConfig, parser, argv))
