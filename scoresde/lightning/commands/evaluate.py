"""``scoresde evaluate``: FID, KID, Inception Score and precision/recall of samples against a reference set.

    scoresde evaluate --samples samples/ --data DigitsDataModule --split train --out eval/        # domain FID, digits
    scoresde evaluate --ckpt runs/digits_vp/checkpoints/last.ckpt --n 891 --data DigitsDataModule --out eval/
    scoresde evaluate --samples cifar/samples.npz --reference data/cifar10.npz --inception pt_inception.pth --out e/
    scoresde evaluate --ckpt diffusers:ddpm-cifar10-32 --solver ddim --steps 50 --n 50000 --reference stats.npz --out e/

The samples are a ``scoresde sample`` run (its folder or ``samples.npz``), any ``.npz`` of images, or drawn first
from ``--ckpt`` with the sampling options given (into ``<out>/samples``, resumable). The reference is an ``.npz`` of
images, a folder of PNG/JPEG images, precomputed statistics (scoresde's, or ``mu``/``sigma``), or a DataModule's
split (``--data``, ``--split``). Its statistics are cached (``--cache``, by default under ``~/.cache/scoresde``
keyed by the reference's content), so a second evaluation reads them instead of recomputing.

Features (``--features``): ``inception`` (the standard FID; weights from ``--inception`` or
``SCORESDE_INCEPTION_WEIGHTS``, never downloaded) or ``digits`` (the shipped digits classifier: a domain FID for the
embedded 8×8 digits); ``auto`` takes ``digits`` for 8×8 single-channel images of grey levels 0 … 16.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ... import evaluation
from ..._utils import atomic_path
from ..data import nchw, read_image_folder
from ._common import CKPT_HELP, MODEL_CONFIG_HELP, build_parser, load_data, option, parse_config, prepare_out, split_of

__all__ = ["EvaluateConfig", "evaluate_command", "run_evaluation", "load_images"]


@dataclass(kw_only=True)
class EvaluateConfig:
    """The options of ``scoresde evaluate``."""

    samples: str | None = option(None, "a `scoresde sample` folder, its samples.npz, or any .npz of images")
    ckpt: str | None = option(None, f"draw the samples first from this model: {CKPT_HELP}")
    model_config: str | None = option(None, MODEL_CONFIG_HELP, "--model-config")
    solver: str | None = option(None, "with --ckpt: the solver (default: the model's)")
    steps: int | None = option(None, "with --ckpt: solver steps")
    n: int = option(10_000, "with --ckpt: number of samples")
    reference: str | None = option(None, "an .npz of images, an image folder, or a statistics .npz")
    data: str | None = option(None, "a DataModule (experiment YAML or class name) whose --split is the reference")
    split: str = option("train", "with --data: train, val or test")
    features: str = option("auto", "inception, digits, or auto (digits for 8×8 grey levels 0 … 16)")
    inception: str | None = option(None, "Inception weights file (default: $SCORESDE_INCEPTION_WEIGHTS)")
    cache: str | None = option(None, "reference statistics file (default: ~/.cache/scoresde/<features>-<digest>.npz)")
    kid_subsets: int = option(100, "KID subsets", "--kid-subsets")
    kid_subset_size: int = option(1000, "KID subset size (at most the smaller set)", "--kid-subset-size")
    k: int = option(3, "precision/recall neighbourhood size")
    seed: int = option(0, "seed of the sampling (--ckpt), of KID's subsets and of IS's splits")
    batch_size: int = option(200, "images per feature batch", "--batch-size")
    out: str = option(help="output directory (writes metrics.json)", result=False)
    progress: bool = option(True, "show a progress bar", result=False)


def _raw_images(x: np.ndarray, what: str) -> np.ndarray:
    """Images as ``(N, C, H, W)`` (channels-last arrays transposed), refused when they hold floats."""
    x = nchw(x)
    if x.ndim != 4:
        raise ValueError(f"{what}: expected images (N, C, H, W) or (N, H, W, C), got shape {x.shape}")
    if np.issubdtype(x.dtype, np.floating):
        raise ValueError(
            f"{what} holds floats: give raw images (uint8 pixels, or the dataset's integer levels) as "
            "`scoresde sample` writes them"
        )
    return np.ascontiguousarray(x)


def load_images(path: str | Path, what: str) -> np.ndarray:
    """Images ``(N, C, H, W)`` from an ``.npz`` (its ``samples`` array, else ``train``, ``x`` or its only array),
    a ``scoresde sample`` folder or a folder of images (:func:`~scoresde.lightning.data.read_image_folder`)."""
    p = Path(path)
    if p.is_dir() and (p / "samples.npz").is_file():
        p = p / "samples.npz"
    if p.is_dir():
        try:
            return _raw_images(read_image_folder(p), what)
        except ValueError as err:
            raise ValueError(f"{what}: {p} holds no samples.npz, and {err}") from err
    if not p.is_file():
        raise FileNotFoundError(f"{what}: {p} not found")
    with np.load(p) as z:
        keys = list(z.keys())
        key = next((k for k in ("samples", "train", "x") if k in keys), keys[0] if len(keys) == 1 else None)
        if key is None:
            raise ValueError(f"{what}: {p} holds {', '.join(keys)}; name the images 'samples'")
        return _raw_images(z[key], what)


def _digest(arrays: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arrays).tobytes()).hexdigest()[:16]


def _cache_dir() -> Path:
    return Path(os.environ.get("SCORESDE_CACHE", Path.home() / ".cache" / "scoresde"))


def _choose_features(cfg: EvaluateConfig, images: np.ndarray) -> str:
    if cfg.features != "auto":
        return cfg.features
    return "digits" if images.shape[1:] == (1, 8, 8) and int(images.max()) <= 16 else "inception"


def _draw_samples(cfg: EvaluateConfig, out: Path) -> Path:
    """``scoresde sample`` with the sampling options given, through the command table (commands stay separate)."""
    from ..cli import run

    assert cfg.ckpt is not None
    argv = ["sample", "--ckpt", cfg.ckpt, "--n", str(cfg.n), "--seed", str(cfg.seed), "--out", str(out / "samples"),
            "--progress", str(cfg.progress).lower()]  # fmt: skip
    for flag, value in (("--model-config", cfg.model_config), ("--solver", cfg.solver), ("--steps", cfg.steps)):
        if value is not None:
            argv += [flag, str(value)]
    path = run(argv)
    if path is None:  # another rank finished the run
        raise RuntimeError("sampling ended without samples on this process")
    return Path(path)


def _reference(cfg: EvaluateConfig, name: str, extract: evaluation.Extractor) -> evaluation.ReferenceStats:
    if (cfg.reference is None) == (cfg.data is None):
        raise ValueError("give the reference as --reference PATH or as --data (with --split), not both or neither")
    if cfg.reference is not None and evaluation.ReferenceStats.is_stats_file(cfg.reference):
        return evaluation.ReferenceStats.load(cfg.reference, expect=name)
    if cfg.reference is not None:
        images = load_images(cfg.reference, "--reference")
    else:
        images = split_of(load_data(cfg.data, ""), cfg.split).numpy()
    cache = Path(cfg.cache) if cfg.cache else _cache_dir() / f"{name}-{_digest(images)}.npz"
    return evaluation.reference_stats(extract, name, images, cache, cfg.batch_size, cfg.progress)


def run_evaluation(cfg: EvaluateConfig) -> dict[str, Any]:
    if (cfg.samples is None) == (cfg.ckpt is None):
        raise ValueError("give the samples as --samples PATH, or --ckpt to draw them, not both or neither")
    if cfg.k < 1 or cfg.kid_subsets < 1 or cfg.kid_subset_size < 2 or cfg.batch_size < 1:
        raise ValueError("--k, --kid-subsets, --batch-size must be >= 1 and --kid-subset-size >= 2")
    out = prepare_out(cfg.out)
    samples_path = _draw_samples(cfg, out) if cfg.ckpt is not None else Path(str(cfg.samples))
    images = load_images(samples_path, "--samples")
    name = _choose_features(cfg, images)
    extract = evaluation.feature_extractor(name, cfg.inception if name == "inception" else None)
    stats = _reference(cfg, name, extract)
    features, logits = evaluation.extract_features(extract, images, cfg.batch_size, cfg.progress)
    result = evaluation.image_metrics(
        stats, features, logits, kid_subsets=cfg.kid_subsets, kid_subset_size=cfg.kid_subset_size, k=cfg.k,
        seed=cfg.seed,
    )  # fmt: skip
    record = {"samples": str(samples_path), "features": name, **result}
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    width = max(map(len, result))
    print(f"{len(images)} samples of {samples_path} against {stats.count} reference images, {name} features")
    print("\n".join(f"  {k:<{width}}  {v:.6g}" for k, v in result.items()))
    print(f"wrote {out / 'metrics.json'}")
    return record


def evaluate_command(argv: Sequence[str]) -> dict[str, Any]:
    """``scoresde evaluate ...``; ``argv`` excludes the word ``evaluate``."""
    parser = build_parser(EvaluateConfig, "scoresde evaluate", __doc__ or "")
    return run_evaluation(parse_config(EvaluateConfig, parser, argv))
