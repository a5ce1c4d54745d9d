"""The GPU check: what CPU tests cannot reach, measured on one CUDA device, written to one JSON file.

1. sampling on the GPU against the CPU: the same seeds, the same network, DPM-Solver++ and Euler–Maruyama;
2. bf16 drift: the same sampling under bf16 autocast against float32 on the GPU;
3. ``scoresde likelihood`` under DDP with NCCL on one device (the inference-mode path) against the CPU, on a toy
   model fitted here on the GPU;
4. DDPM++ (CIFAR-10 configuration, 61.8 M parameters) training and sampling throughput in images/s, fp32 and bf16.

Each part records its numbers or its error and the run goes on. Sized for at most 8 minutes.

    python scripts/gpu_check.py --out gpu_check.json [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("WANDB_MODE", "disabled")

import numpy as np
import torch

from scoresde import VPSDE, ScoreModel, sample
from scoresde.nets import UNet, paper_config
from scoresde.noise import derive_seeds

ROOT = Path(__file__).resolve().parents[1]


def part(results: dict[str, Any], name: str, fn: Callable[[], dict[str, Any]]) -> None:
    t0 = time.perf_counter()
    try:
        results[name] = {**fn(), "seconds": round(time.perf_counter() - t0, 1)}
    except Exception as err:  # record and go on: one JSON with everything that could be measured
        results[name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-2000:]}
    print(name, json.dumps(results[name])[:600], flush=True)


def _digits_model(device: str) -> ScoreModel:
    torch.manual_seed(0)
    net = UNet(in_channels=1, base_channels=32, channel_mult=(1, 2), num_res_blocks=2)
    return ScoreModel(net, VPSDE()).to(device).eval()


def gpu_vs_cpu(gpu: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for solver, steps in (("dpm_solver_pp", 20), ("euler_maruyama", 100)):
        xs = {}
        for device in ("cpu", gpu):
            model = _digits_model(device)
            with torch.no_grad():
                xs[device] = sample(model, model.sde, (64, 1, 8, 8), solver=solver, steps=steps,
                                    seeds=derive_seeds(0, 0, 64, device=device), device=device).x.cpu()
        diff = (xs[gpu] - xs["cpu"]).abs()
        out[solver] = {"max_abs_diff": float(diff.max()), "rel_rms_diff": float(diff.pow(2).mean().sqrt() /
                                                                                 xs["cpu"].pow(2).mean().sqrt())}
    return out


def bf16_drift(gpu: str) -> dict[str, Any]:
    model = _digits_model(gpu)
    xs = {}
    for dtype in (torch.float32, torch.bfloat16):
        with torch.no_grad(), torch.autocast(gpu, dtype=dtype, enabled=dtype is torch.bfloat16):
            xs[str(dtype)] = sample(model, model.sde, (64, 1, 8, 8), solver="dpm_solver_pp", steps=20,
                                    seeds=derive_seeds(0, 0, 64, device=gpu), device=gpu).x.float().cpu()
    a, b = xs["torch.float32"], xs["torch.bfloat16"]
    return {"dpm_solver_pp_20": {"max_abs_diff": float((a - b).abs().max()),
                                 "rel_rms_diff": float((a - b).pow(2).mean().sqrt() / a.pow(2).mean().sqrt())}}


def _cli(*args: str, cwd: Path) -> None:
    cmd = [sys.executable, "-c", "from scoresde.lightning.cli import main; main()", *args]
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} exited {done.returncode}: {done.stderr[-1500:]}")


def ddp_likelihood(gpu: str) -> dict[str, Any]:
    accelerator = "gpu" if gpu == "cuda" else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _cli("fit", "--config", str(ROOT / "experiments/toy_vp.yaml"), "--trainer.max_steps", "300",
             "--trainer.accelerator", accelerator, "--trainer.devices", "1", "--trainer.logger", "false",
             "--trainer.enable_progress_bar", "false", "--model.sample_steps", "20", cwd=root)
        ckpt = str(next(root.rglob("last.ckpt")))
        common = ["likelihood", "--ckpt", ckpt, "--limit", "256", "--block", "64", "--progress", "false"]
        _cli(*common, "--accelerator", accelerator, "--devices", "1", "--strategy", "ddp", "--out", "gpu", cwd=root)
        _cli(*common, "--accelerator", "cpu", "--out", "cpu", cwd=root)
        bpd = {k: np.load(root / k / "likelihood.npz")["bpd"].mean(1) for k in ("gpu", "cpu")}
    return {"n": 256, "bpd_gpu_ddp_nccl": float(bpd["gpu"].mean()), "bpd_cpu": float(bpd["cpu"].mean()),
            "max_abs_diff_bpd": float(np.abs(bpd["gpu"] - bpd["cpu"]).max())}


def throughput(gpu: str, quick: bool) -> dict[str, Any]:
    torch.manual_seed(0)
    net = paper_config("ddpmpp_cont", **({} if gpu == "cuda" else {"nf": 16})).to(gpu)
    model = ScoreModel(net, VPSDE())
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    B, reps = (128, 5 if quick else 20) if gpu == "cuda" else (8, 2)
    x = torch.randn(B, 3, 32, 32, device=gpu)
    out: dict[str, Any] = {"parameters": sum(p.numel() for p in net.parameters()), "batch": B}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        def train_step() -> None:
            t = torch.rand(B, device=gpu) * (1 - 1e-5) + 1e-5
            with torch.autocast(gpu, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = (model.eps(x, t) - x).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def sample_step() -> None:
            with torch.no_grad(), torch.autocast(gpu, dtype=dtype or torch.float32, enabled=dtype is not None):
                model(x, torch.full((B,), 0.5, device=gpu))

        for label, fn in (("train", train_step), ("forward", sample_step)):
            for _ in range(3):
                fn()
            sync = torch.cuda.synchronize if gpu == "cuda" else (lambda: None)
            sync()
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                sync()
                times.append(time.perf_counter() - t0)
            med = float(np.median(times))
            out[f"{label}_img_per_s_{name}"] = round(B / med, 1)
        out[f"sample_img_per_s_{name}_100_nfe"] = round(out[f"forward_img_per_s_{name}"] / 100, 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    p.add_argument("--quick", action="store_true", help="fewer repeats")
    p.add_argument("--smoke-cpu", action="store_true", help="run every part on the CPU (a check of this script)")
    a = p.parse_args()
    gpu = "cpu" if a.smoke_cpu else "cuda"
    if gpu == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: torch sees no CUDA device (--smoke-cpu runs the parts on the CPU)")
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if gpu == "cuda" else "cpu (smoke run)", "torch": torch.__version__,
        "cuda": torch.version.cuda, "python": platform.python_version(),
    }
    part(results, "gpu_vs_cpu_sampling", lambda: gpu_vs_cpu(gpu))
    part(results, "bf16_drift", lambda: bf16_drift(gpu))
    part(results, "likelihood_ddp_nccl", lambda: ddp_likelihood(gpu))
    part(results, "ddpmpp_cifar10_throughput", lambda: throughput(gpu, a.quick))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
