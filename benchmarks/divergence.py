"""The exact trace ``Σ_i ∂v_i/∂x_i`` of a network's velocity: ``D`` autograd calls (one VJP per coordinate) against one
batched call (``torch.autograd.grad(..., is_grads_batched=True)``, the ``D`` unit vectors at once through vmap).

What ``scoresde.likelihood.exact_trace`` picks between: the batched call wins where the per-call overhead dominates
(few rows, several coordinates) and loses where the work does (many rows: vmap's batched backward moves more memory).
The per-sample likelihood solver shrinks its batch as samples finish, so both regimes occur in one solve.

For each ``(D, B)`` on the project's ``MLP`` (width 128, float32) it times forward + divergence, the two methods
interleaved, and reports the medians and their ratio (batched / loop; < 1: batched faster). Both give the same trace
(checked to 1e-5 relative).

    python benchmarks/divergence.py [--dims 2 4 8 16] [--rows 16 128 512 2000] [--repeats 21]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from scoresde.nets import MLP

ROOT = Path(__file__).resolve().parents[1]


def loop_trace(v: Tensor, x: Tensor) -> Tensor:
    div = torch.zeros(v.shape[0], dtype=v.dtype)
    for i in range(v.shape[1]):
        (g,) = torch.autograd.grad(v[:, i].sum(), x, retain_graph=True)
        div = div + g[:, i]
    return div


def batched_trace(v: Tensor, x: Tensor) -> Tensor:
    D = v.shape[1]
    basis = torch.eye(D, dtype=v.dtype).reshape(D, 1, D).expand(D, *v.shape)
    (g,) = torch.autograd.grad(v, x, grad_outputs=basis, is_grads_batched=True)
    return g.diagonal(dim1=0, dim2=2).sum(-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[2, 4, 8, 16])
    ap.add_argument("--rows", type=int, nargs="+", default=[16, 128, 512, 2000])
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/divergence.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    print(f"{'D':>3} {'B':>5} {'loop ms':>8} {'batched ms':>10} {'ratio':>6}")
    for D in args.dims:
        net = MLP((D,))
        for B in args.rows:
            x = torch.randn(B, D, requires_grad=True)
            t = torch.rand(B)
            a, b = loop_trace(net(x, t), x), batched_trace(net(x, t), x)
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * float(a.abs().max()))
            times: dict[str, list[float]] = {"loop": [], "batched": []}
            methods: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"loop": loop_trace, "batched": batched_trace}
            for _ in range(args.repeats):
                for name, fn in methods.items():  # interleaved
                    t0 = time.perf_counter()
                    fn(net(x, t), x)
                    times[name].append(time.perf_counter() - t0)
            loop, batched = statistics.median(times["loop"]), statistics.median(times["batched"])
            rows.append({"D": D, "B": B, "loop_ms": loop * 1e3, "batched_ms": batched * 1e3, "ratio": batched / loop})
            print(f"{D:>3} {B:>5} {loop * 1e3:>8.2f} {batched * 1e3:>10.2f} {batched / loop:>6.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    args.out.write_text(json.dumps({**meta, "repeats": args.repeats, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
