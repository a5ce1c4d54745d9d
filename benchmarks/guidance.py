"""Controllable generation: how far inpainting lands from the exact conditional, and what guidance costs.

Accuracy (exact mixture score, VP SDE, float64): a 2-D mixture of three correlated Gaussians, ``x_1 = 0.8`` observed;
the exact conditional of ``x_2`` is a two-mode mixture (``GaussianMixture.condition``). Rows: replacement and RePaint
with ``r`` jumps per step, for Euler–Maruyama and DDIM. Columns: Fréchet distance of the completions' ``x_2`` to the
exact conditional, the total-variation error of the mode masses, the NFE; the noise floor is the same measures for
exact samples of the same size. The same for colorization of one RGB pixel of a 3-D mixture given its grey value.

Cost (a UNet of the digits size, batches 8, 64, 256, CPU): one guided score evaluation against an unguided one in the
same run (the fastest of ``--repeats`` interleaved rounds):
  * classifier-free guidance as one batch of ``2B`` (ours) and as two calls of ``B`` (the baseline);
  * classifier guidance (unguided score plus the classifier's input gradient).

    python benchmarks/guidance.py [--n 2000] [--seeds 3] [--batch 8 64 256] [--repeats 20]
                                  [--out benchmarks/results/guidance.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from scoresde import VPSDE, GaussianMixture, ScoreModel
from scoresde.guidance import NoisyClassifier, classifier_free, classifier_guidance
from scoresde.inverse import colorize, inpaint
from scoresde.metrics import frechet_gaussian, mode_mass_error
from scoresde.nets import ConvClassifier, UNet

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64


def correlated_mixture() -> GaussianMixture:
    C = 0.09 * torch.tensor([[1.0, 0.9], [0.9, 1.0]], dtype=F64)
    flip = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=F64)
    return GaussianMixture([1, 1, 1], [[-1.0, -1.0], [1.0, 1.0], [1.0, -1.0]], torch.stack([C, C, C * flip]))


def _row(task: str, method: str, solver: str, steps: int, runs: list[tuple[float, float, int]]) -> dict:
    """Mean and standard deviation over seeds of the Fréchet distance and the mode-mass error."""
    v = torch.tensor([r[:2] for r in runs], dtype=F64)
    sd = v.std(0) if len(runs) > 1 else torch.zeros(2, dtype=F64)
    return {"task": task, "method": method, "solver": solver, "steps": steps, "nfe": runs[0][2], "seeds": len(runs),
            "fd": float(v[:, 0].mean()), "fd_sd": float(sd[0]), "mode_tv": float(v[:, 1].mean()), "mode_tv_sd": float(sd[1])}


def accuracy(n: int, seeds: int) -> list[dict]:
    sde, rows = VPSDE(), []
    gm = correlated_mixture()
    mask = torch.tensor([1.0, 0.0])
    cond, _ = gm.condition(mask.bool(), torch.tensor([0.8], dtype=F64))

    def exact(c: GaussianMixture) -> list[tuple[float, float, int]]:
        refs = [c.sample(n, generator=torch.Generator().manual_seed(100 + s), dtype=F64) for s in range(seeds)]
        return [(frechet_gaussian(r, c.mean, c.cov), mode_mass_error(r, c), 0) for r in refs]

    rows.append(_row("inpaint", "exact samples", "-", 0, exact(cond)))
    y = torch.tensor([0.8, 0.0], dtype=F64).expand(n, 2).clone()
    for solver, steps in (("euler_maruyama", 100), ("ddim", 50)):
        for r in (1, 2, 5, 10, 20):
            runs = []
            for seed in range(seeds):
                res = inpaint(gm.score_fn(sde), sde, y, mask, method="replacement" if r == 1 else "repaint", resample=r,
                              solver=solver, steps=steps, generator=torch.Generator().manual_seed(seed), dtype=F64)
                z = res.x[:, 1:]
                runs.append((frechet_gaussian(z, cond.mean, cond.cov), mode_mass_error(z, cond), res.nfe))
            rows.append(_row("inpaint", "replacement" if r == 1 else f"repaint r={r}", solver, steps, runs))
    # colorization of one RGB pixel
    gm3 = GaussianMixture.random(3, k=3, spread=1.0, cond=10, scale=0.4, seed=2, shape=(3, 1, 1))
    A = torch.ones(1, 3, dtype=F64) / 3**0.5
    v = torch.tensor([0.3], dtype=F64)
    cond3, B = gm3.condition(A, v)
    rows.append(_row("colorize", "exact samples", "-", 0, exact(cond3)))
    y3 = (A.T @ v).reshape(1, 3, 1, 1).expand(n, 3, 1, 1).clone()
    for r in (1, 5, 10, 20):
        runs = []
        for seed in range(seeds):
            res = colorize(gm3.score_fn(sde), sde, y3, method="replacement" if r == 1 else "repaint", resample=r,
                           steps=100, generator=torch.Generator().manual_seed(seed), dtype=F64)
            z = res.x.flatten(1) @ B.T
            runs.append((frechet_gaussian(z, cond3.mean, cond3.cov), mode_mass_error(z, cond3), res.nfe))
        rows.append(_row("colorize", "replacement" if r == 1 else f"repaint r={r}", "euler_maruyama", 100, runs))
    return rows


def cost(batch: int, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    sde = VPSDE()
    model = ScoreModel(UNet(1, base_channels=32, num_classes=10), sde).eval()
    uncond = ScoreModel(UNet(1, base_channels=32), sde).eval()
    clf = NoisyClassifier(ConvClassifier(10, base_channels=32), sde).eval()
    x, t = torch.randn(batch, 1, 8, 8), torch.full((batch,), 0.5)
    y = torch.arange(batch) % 10
    cfg = classifier_free(model, y, 2.0)  # batched=True
    cg = classifier_guidance(uncond, clf, y, 2.0)

    two_calls = classifier_free(model, y, 2.0, batched=False)

    variants = {
        "conditional score (baseline)": lambda: model(x, t, y),
        "CFG, one 2B batch (ours)": lambda: cfg(x, t),
        "CFG, two B calls (batched=False)": lambda: two_calls(x, t),
        "unconditional score": lambda: uncond(x, t),
        "classifier guidance": lambda: cg(x, t),
    }
    best = dict.fromkeys(variants, float("inf"))
    with torch.no_grad():
        for fn in variants.values():  # warm-up
            fn()
        for _ in range(repeats):  # interleaved rounds, so a slow spell of the machine hits every variant alike
            for name, fn in variants.items():
                t0 = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - t0)
    base = best["conditional score (baseline)"] * 1e3
    rows = [{"evaluation": name, "ms": sec * 1e3} for name, sec in best.items()]
    for r in rows:
        r["ratio"], r["batch"] = r["ms"] / base, batch
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--batch", type=int, nargs="+", default=[8, 64, 256])
    p.add_argument("--seeds", type=int, default=3, help="seeds per accuracy row (mean ± sd)")
    p.add_argument("--repeats", type=int, default=20, help="interleaved timing rounds (the fastest is kept)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "guidance.json"))
    args = p.parse_args()
    acc = accuracy(args.n, args.seeds)
    print(f"\n{'task':9s} {'method':14s} {'solver':15s} {'NFE':>5s} {'FD (mean ± sd)':>20s} {'mode TV (mean ± sd)':>20s}")
    for r in acc:
        print(f"{r['task']:9s} {r['method']:14s} {r['solver']:15s} {r['nfe']:5d} {r['fd']:10.5f} ± {r['fd_sd']:.5f} "
              f"{r['mode_tv']:10.4f} ± {r['mode_tv_sd']:.4f}")
    cst = [row for b in args.batch for row in cost(b, args.repeats)]
    print(f"\n{'evaluation':36s} {'batch':>5s} {'ms':>8s} {'ratio':>6s}")
    for r in cst:
        print(f"{r['evaluation']:36s} {r['batch']:5d} {r['ms']:8.2f} {r['ratio']:6.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "machine": platform.machine(), "threads": torch.get_num_threads(), "n": args.n}
    out.write_text(json.dumps({"meta": meta, "accuracy": acc, "cost": cst}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
