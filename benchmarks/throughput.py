"""Training and sampling throughput of DDPM++ at CIFAR-10 size (3×32×32), with bf16 autocast and torch.compile on
and off, against the float32 eager baseline measured in the same run.

Training: images/s of a full step (DSM loss under the VP SDE, backward, gradient clipping at 1, Adam). Sampling:
images/s of Euler–Maruyama with a reduced number of steps (``--sample-steps``), also given as network evaluations per
second, from which a 1000-step run follows. Each figure is the median over ``--repeats`` timed blocks after warm-up
(compilation happens in the warm-up). Prints a table and writes JSON with the device.

    python benchmarks/throughput.py                       # the paper's DDPM++ cont. (nf 128), on a GPU if there is one
    python benchmarks/throughput.py --nf 64 --train-batch 8 --modes fp32,bf16   # a quicker CPU run
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from scoresde import VPSDE, DSMLoss, ScoreModel, sample
from scoresde.nets import count_parameters, paper_config

MODES = {"fp32": (None, False), "bf16": (torch.bfloat16, False), "fp32+compile": (None, True),
         "bf16+compile": (torch.bfloat16, True)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: torch.device, warmup: int, repeats: int, inner: int) -> float:
    """Median seconds per call of ``fn`` over ``repeats`` blocks of ``inner`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        _sync(device)
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


def _network(nf: int, compile_net: bool, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    net = paper_config("ddpmpp_cont", nf=nf).to(device)
    if compile_net:
        net.compile()
    return net


def train_throughput(nf: int, batch: int, dtype, compile_net: bool, device: torch.device, args) -> float:
    net = _network(nf, compile_net, device)
    sde, loss_fn = VPSDE(), DSMLoss()
    model = ScoreModel(net, sde)
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    x0 = torch.rand(batch, 3, 32, 32, device=device) * 2 - 1

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(model, sde, x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()

    return batch / _timed(step, device, args.warmup, args.repeats, args.inner)


def sample_throughput(nf: int, batch: int, steps: int, dtype, compile_net: bool, device: torch.device, args) -> float:
    net = _network(nf, compile_net, device).eval()
    sde = VPSDE()
    model = ScoreModel(net, sde)

    @torch.no_grad()
    def run() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            sample(model, sde, (batch, 3, 32, 32), solver="euler_maruyama", steps=steps, device=device)

    return batch / _timed(run, device, 1, args.repeats, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nf", type=int, default=128, help="base channels (128: the paper's DDPM++ cont.)")
    p.add_argument("--train-batch", type=int, default=None, help="default: 128 on GPU, 8 on CPU")
    p.add_argument("--sample-batch", type=int, default=None, help="default: 256 on GPU, 8 on CPU")
    p.add_argument("--sample-steps", type=int, default=None, help="Euler–Maruyama steps (default: 20 on GPU, 2 on CPU)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--inner", type=int, default=None, help="training steps per timed block (default: 10 GPU, 1 CPU)")
    p.add_argument("--device", default=None)
    p.add_argument("--out", type=Path, default=None, help="JSON (default: benchmarks/results/throughput_<device>.json)")
    args = p.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    train_batch = args.train_batch or (128 if gpu else 8)
    sample_batch = args.sample_batch or (256 if gpu else 8)
    steps = args.sample_steps or (20 if gpu else 2)
    args.inner = args.inner or (10 if gpu else 1)
    modes = [m for m in args.modes.split(",") if m]
    if unknown := [m for m in modes if m not in MODES]:
        raise SystemExit(f"unknown modes {unknown}; available: {', '.join(MODES)}")
    name = torch.cuda.get_device_name(device) if gpu else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    params = count_parameters(paper_config("ddpmpp_cont", nf=args.nf))
    print(f"DDPM++ (nf {args.nf}, {params / 1e6:.2f} M parameters) on {name}; torch {torch.__version__}")
    print(f"train batch {train_batch}; sampling batch {sample_batch}, Euler–Maruyama {steps} steps")

    rows = []
    for mode in modes:
        dtype, compile_net = MODES[mode]
        t0 = time.perf_counter()
        train = train_throughput(args.nf, train_batch, dtype, compile_net, device, args)
        samp = sample_throughput(args.nf, sample_batch, steps, dtype, compile_net, device, args)
        rows.append({"mode": mode, "train_images_per_s": train, "sample_images_per_s": samp,
                     "sample_evals_per_s": samp * steps, "wall_s": time.perf_counter() - t0})
        print(f"  {mode:<13} train {train:9.2f} img/s   sampling {samp:9.3f} img/s ({samp * steps:9.2f} evals/s)", flush=True)
    base = next((r for r in rows if r["mode"] == "fp32"), rows[0])
    for r in rows:
        r["train_speedup"] = r["train_images_per_s"] / base["train_images_per_s"]
        r["sample_speedup"] = r["sample_images_per_s"] / base["sample_images_per_s"]

    print(f"\n| mode | train img/s | × {base['mode']} | sampling img/s ({steps} steps) | evals/s | × {base['mode']} |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['train_images_per_s']:.2f} | {r['train_speedup']:.2f} | {r['sample_images_per_s']:.3f} | "
              f"{r['sample_evals_per_s']:.2f} | {r['sample_speedup']:.2f} |")
    out = args.out or Path(__file__).parent / "results" / f"throughput_{'gpu' if gpu else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": name, "torch": torch.__version__, "nf": args.nf, "parameters": params,
                               "train_batch": train_batch, "sample_batch": sample_batch, "sample_steps": steps,
                               "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
