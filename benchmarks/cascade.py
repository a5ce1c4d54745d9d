"""Noise-conditioning augmentation of a cascade on an exact 8×8 mixture: a learned stage 2 against the oracle.

The 8×8 mixture of ``tests/test_cascade.py`` (3 components, VP SDE) has an exact low-resolution law (stage 1) and an
exact stage-2 conditional given a noisy low-resolution image (``scoresde.cascade.exact_stage2``, the oracle). A
learned stage 2 (``SuperResolutionNet`` around a small U-Net, trained by ``ScoreModule(augmentation=s_max)`` on
exact samples, s ~ U[0, s_max]) replaces the oracle. Stage 1 is the exact low-resolution score sampled badly on
purpose (3 DDIM steps). For each augmentation level ``s`` of a scan, each stage 2 gives:

  * ``fd``: Fréchet distance of the 8×8 samples to the exact mixture (the exact-sample floor is printed);
  * ``consistency``: RMS of ``A x - v`` per dimension, the disagreement of the final sample's low-resolution view with
    stage 1's sample ``v`` (what augmentation gives up: 0 would be a stage 2 that keeps ``v`` exactly).

The best ``s`` of a stage 2 is the smallest level of the scan whose FD is within ``--tolerance`` (relative) of its
lowest: past it, larger levels only lose consistency.

    python benchmarks/cascade.py [--train-steps 3000] [--n 2000] [--out benchmarks/results/cascade.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")

import torch

import lightning as L
from scoresde import VPSDE, GaussianMixture
from scoresde.cascade import (
    SuperResolutionNet,
    cascade_sample,
    downsample,
    exact_stage2,
    low_resolution_mixture,
    stage2_score,
)
from scoresde.lightning import ScoreModule, ToyDataModule
from scoresde.metrics import frechet_gaussian
from scoresde.nets import UNet

ROOT = Path(__file__).resolve().parents[1]
LEVELS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7)
S_MAX = 0.8
STAGE1 = {"solver": "ddim", "steps": 3}
STAGE2 = {"solver": "euler_maruyama", "steps": 200}


def mixture() -> GaussianMixture:
    return GaussianMixture.random(64, k=3, seed=0, spread=1.0, cond=10, scale=0.5, shape=(1, 8, 8))


def train(gm: GaussianMixture, steps: int) -> tuple[ScoreModule, float]:
    L.seed_everything(0, verbose=False)
    dm = ToyDataModule("mixture", mixture=gm, n_train=20000, n_val=500, n_test=500, batch_size=128)
    net = SuperResolutionNet(UNet(in_channels=2, out_channels=1, cond_dim=1, base_channels=32, channel_mult=(1, 2)))
    module = ScoreModule(net, VPSDE(), augmentation=S_MAX, data_shape=(1, 8, 8), lr=1e-3, warmup_steps=200,
                         ema_decay=0.999)
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        gradient_clip_val=1.0, limit_val_batches=0, enable_model_summary=False)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    return module.eval(), time.perf_counter() - t0


def scan(stage1, stage2, sde, n: int, dtype: torch.dtype, gm: GaussianMixture) -> dict[str, dict[str, float]]:
    rows = {}
    for s in LEVELS:
        with torch.no_grad():
            r = cascade_sample(stage1, stage2, sde, n, (1, 4, 4), (1, 8, 8), augmentation=s, stage1_options=STAGE1,
                               stage2_options=STAGE2, generator=torch.Generator().manual_seed(0), dtype=dtype)
        x = r.x.double()
        consistency = float((downsample(x) - r.low.double()).pow(2).mean().sqrt())
        rows[f"{s:g}"] = {"fd": frechet_gaussian(x, gm.mean, gm.cov), "consistency": consistency}
        print(f"  s={s:<5g} FD {rows[f'{s:g}']['fd']:.4f}  consistency {consistency:.4f}", flush=True)
    return rows


def best_level(rows: dict[str, dict[str, float]], tolerance: float) -> float:
    lowest = min(r["fd"] for r in rows.values())
    return min(float(s) for s, r in rows.items() if r["fd"] <= (1 + tolerance) * lowest)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-steps", type=int, default=3000)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--tolerance", type=float, default=0.1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/cascade.json")
    a = p.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    gm, sde = mixture(), VPSDE()
    low = low_resolution_mixture(gm)
    floor = frechet_gaussian(gm.sample(a.n, generator=torch.Generator().manual_seed(9), dtype=torch.float64),
                             gm.mean, gm.cov)
    stage1_fd = frechet_gaussian(
        cascade_sample(low.score_fn(sde), exact_stage2(gm, sde), sde, a.n, (1, 4, 4), (1, 8, 8), stage1_options=STAGE1,
                       stage2_options={"solver": "euler_maruyama", "steps": 1}, generator=torch.Generator().manual_seed(0),
                       dtype=torch.float64).low, low.mean, low.cov)
    print(f"exact-sample floor (n={a.n}): FD {floor:.4f}; stage 1 (3 DDIM steps) FD at 4x4 {stage1_fd:.4f}")
    print("oracle stage 2 (exact conditional score, float64)")
    oracle = scan(low.score_fn(sde), exact_stage2(gm, sde), sde, a.n, torch.float64, gm)
    print(f"learned stage 2: training {a.train_steps} steps")
    module, seconds = train(gm, a.train_steps)
    print(f"  trained in {seconds:.0f} s")
    learned = scan(low.score_fn(sde), stage2_score(module.score_model), sde, a.n, torch.float32, gm)
    result = {
        "floor_fd": floor,
        "stage1_fd_4x4": stage1_fd,
        "s_max": S_MAX,
        "train_steps": a.train_steps,
        "train_seconds": round(seconds, 1),
        "tolerance": a.tolerance,
        "oracle": oracle,
        "learned": learned,
        "best_s": {"oracle": best_level(oracle, a.tolerance), "learned": best_level(learned, a.tolerance)},
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    print(f"\n{'s':>6} {'oracle FD':>10} {'learned FD':>11} {'oracle cons.':>13} {'learned cons.':>14}")
    for s in oracle:
        print(f"{s:>6} {oracle[s]['fd']:>10.4f} {learned[s]['fd']:>11.4f} {oracle[s]['consistency']:>13.4f} "
              f"{learned[s]['consistency']:>14.4f}")
    print(f"best s (smallest within {a.tolerance:.0%} of the lowest FD): {result['best_s']}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
