"""Training-step cost of ScoreModule under Lightning against a bare PyTorch loop doing the same work.

Both loops train the same network with the same loss on the same batches, with Adam, linear warm-up, gradient
clipping at 1.0 and an EMA of the weights (the bare loop uses a fused foreach EMA, the fastest hand-written form).
Steady-state time per step is the median over repeats, after warm-up steps. Prints a table and writes JSON.

    python benchmarks/train_overhead.py [--steps 300] [--repeats 3] [--out benchmarks/results/train_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")

import lightning as L
import torch

from scoresde import VPSDE, DSMLoss
from scoresde.lightning import ScoreModule, ToyDataModule
from scoresde.nets import MLP

WARMUP = 20


def make(seed: int, width: int) -> tuple[ScoreModule, ToyDataModule]:
    torch.manual_seed(seed)
    dm = ToyDataModule(n_train=100_000, n_val=512, n_test=512, batch_size=512, seed=seed)
    module = ScoreModule(MLP([2], width=width, depth=3), VPSDE(), DSMLoss(), warmup_steps=100, ema_decay=0.999, data_shape=(2,))
    return module, dm


class _Clock(L.Callback):
    def __init__(self) -> None:
        self.t0 = self.t1 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == WARMUP:
            self.t0 = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self.t1 = time.perf_counter()


def lightning_step_time(steps: int, seed: int, width: int) -> float:
    module, dm = make(seed, width)
    clock = _Clock()
    trainer = L.Trainer(
        max_steps=WARMUP + steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, gradient_clip_val=1.0, callbacks=[clock],
    )
    trainer.fit(module, datamodule=dm)
    return (clock.t1 - clock.t0) / steps


def bare_step_time(steps: int, seed: int, width: int) -> float:
    module, dm = make(seed, width)
    model, sde, loss_fn = module.score_model, module.sde, module.loss
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    params = list(model.parameters())
    ema = [p.detach().clone() for p in params]
    loader = dm.train_dataloader()
    done, t0 = 0, 0.0
    while done < WARMUP + steps:
        for raw in loader:
            if done == WARMUP:
                t0 = time.perf_counter()
            x0 = dm.on_after_batch_transfer(raw, 0)
            loss = loss_fn(model, sde, x0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - 0.999)
            done += 1
            if done == WARMUP + steps:
                break
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--widths", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--out", default="benchmarks/results/train_overhead.json")
    args = ap.parse_args()
    rows = []
    for width in args.widths:
        bare, light = [], []
        for r in range(args.repeats):  # interleaved so drifts in machine load hit both alike
            bare.append(bare_step_time(args.steps, r, width))
            light.append(lightning_step_time(args.steps, r, width))
        b, l = statistics.median(bare), statistics.median(light)
        rows.append({"net": f"MLP width {width} depth 3", "batch": 512, "bare_ms": 1e3 * b, "lightning_ms": 1e3 * l, "ratio": l / b})
    print(f"\n{'network':<24} {'batch':>5} {'bare ms/step':>13} {'Lightning ms/step':>18} {'ratio':>6}")
    for row in rows:
        print(f"{row['net']:<24} {row['batch']:>5} {row['bare_ms']:>13.2f} {row['lightning_ms']:>18.2f} {row['ratio']:>6.3f}")
    print("target: ratio <= 1.10 for the toy MLP on CPU")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "lightning": L.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "steps": args.steps, "repeats": args.repeats}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
