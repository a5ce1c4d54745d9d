"""The digits cascade 4×4 → 8×8 (``experiments/cascade/``): super-resolution of held-out digits and sample quality.

1. **Super-resolution of the test split's 297 digits**: stage 2 given each digit's own 4×4 view ``A x`` (``s = 0``),
   Euler–Maruyama with the model's steps. Columns, in grey levels (0 … 16): ``consistency`` (RMS of the block means
   of the output minus those of the digit: 0 for a perfect stage 2) and ``rmse`` to the digit itself, next to the
   nearest-neighbour upsampling of its block means (consistent by construction, blurred).
2. **The cascade**, ``scoresde sample --ckpt STAGE2 --stage1 STAGE1 --augmentation s`` for each ``s`` of the scan:
   digits-feature FID (mean ± sd over 3 sets of 297, as ``benchmarks/digits_fid.py``; the test split is the floor)
   and the consistency of each sample with its own stage-1 image (block means, grey levels; saved images are whole
   grey levels, so the row ``test split`` gives that rounding floor).

    python benchmarks/digits_cascade.py [--low runs/digits_low/checkpoints/last.ckpt]
        [--super runs/digits_super/checkpoints/last.ckpt] [--levels 0 0.1 0.2] [--figure docs/figures/digits_cascade.png]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")

import numpy as np
import torch

from scoresde import evaluation
from scoresde.cascade import downsample, pack_condition
from scoresde.lightning import DigitsDataModule
from scoresde.lightning.cli import main as scoresde
from scoresde.lightning.commands._common import load_model
from scoresde.noise import derive_seeds
from scoresde.plotting import image_panels

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from digits_fid import SET, score_sets  # noqa: E402


def block_means(images: np.ndarray) -> np.ndarray:
    """2×2 block means of ``(N, C, H, W)`` grey levels, float64."""
    x = images.astype(np.float64)
    return 0.25 * (x[..., ::2, ::2] + x[..., 1::2, ::2] + x[..., ::2, 1::2] + x[..., 1::2, 1::2])


def rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def super_resolve_test(super_ckpt: str, dm: DigitsDataModule) -> tuple[dict, np.ndarray, np.ndarray]:
    model = load_model(super_ckpt, block=64, cascade=True)
    truth = dm.test_raw.numpy()
    x = dm.transform.forward(dm.test_raw, u=torch.full(dm.test_raw.shape, 0.5))  # bin centres
    t0 = time.perf_counter()
    with torch.no_grad():
        res = model.sample(len(x), seeds=derive_seeds(0, 0, len(x)), condition=pack_condition(downsample(x), 0.0))
    out = model.transform.inverse(res.x).numpy()
    nearest = np.repeat(np.repeat(block_means(truth), 2, axis=-1), 2, axis=-2)
    row = {
        "n": len(out),
        "consistency": rms(block_means(out), block_means(truth)),
        "rmse": rms(out, truth),
        "nearest_upsampling_rmse": rms(nearest, truth),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return row, out, nearest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--low", default=str(ROOT / "runs/digits_low/checkpoints/last.ckpt"))
    p.add_argument("--super", default=str(ROOT / "runs/digits_super/checkpoints/last.ckpt"))
    p.add_argument("--levels", type=float, nargs="+", default=[0.0, 0.1, 0.2])
    p.add_argument("--n", type=int, default=3 * SET)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/digits_cascade.json")
    p.add_argument("--figure", type=Path, default=ROOT / "docs/figures/digits_cascade.png")
    a = p.parse_args()
    dm = DigitsDataModule()
    extract = evaluation.feature_extractor("digits")
    stats = evaluation.ReferenceStats.from_features("digits", evaluation.extract_features(extract, dm.train_raw)[0])
    test = dm.test_raw.numpy()
    rows: dict[str, dict] = {
        "test split": {**score_sets(stats, test, extract), "consistency": rms(block_means(test), np.round(block_means(test)))}
    }
    sr, completed, nearest = super_resolve_test(a.super, dm)
    print("super-resolution of the test digits:", json.dumps(sr), flush=True)
    panels = [("test digit", test[:32]), ("its 4×4 view", nearest[:32]), ("stage 2 given it", completed[:32])]
    with tempfile.TemporaryDirectory() as tmp:
        for s in a.levels:
            out = Path(tmp) / f"s{s:g}"
            t0 = time.perf_counter()
            scoresde(["sample", "--ckpt", a.super, "--stage1", a.low, "--augmentation", str(s), "--n", str(a.n),
                      "--progress", "false", "--out", str(out)])
            seconds = time.perf_counter() - t0
            saved = np.load(out / "samples.npz")
            images, low = saved["samples"], saved["low_resolution"]
            row = {**score_sets(stats, images, extract), "consistency": rms(block_means(images), low),
                   "sample_seconds": round(seconds, 1), "nfe": float(saved["nfe_per_sample"].mean())}
            rows[f"cascade, s={s:g}"] = row
            print(f"s={s:g}", json.dumps(row), flush=True)
            if s == a.levels[-1]:
                panels += [(f"stage 1 (s = {s:g})", np.repeat(np.repeat(low[:32], 2, -1), 2, -2)),
                           ("stage 2", images[:32])]
    top = float(dm.train_raw.max())
    a.figure.parent.mkdir(parents=True, exist_ok=True)
    image_panels([(n, torch.as_tensor(x, dtype=torch.float32) / top) for n, x in panels], a.figure, ncol=8)
    print(f"wrote {a.figure}")
    print(f"\n{'':<18}{'FID (297)':>16}{'KID':>10}{'consistency':>13}")
    for name, row in rows.items():
        fid = f"{row['fid_297_mean']:.2f} ± {row['fid_297_sd']:.2f}"
        print(f"{name:<18}{fid:>16}{row['kid_297_mean']:>10.4f}{row['consistency']:>13.3f}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"super_resolution_of_test": sr, **rows}, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
