"""Progressive and consistency distillation of the exact teacher: students at 8, 4, 2 and 1 steps against the
teacher's own DDIM.

For each target (the 2-D ring; a 64-D anisotropic mixture) the teacher is the exact data prediction
(``GaussianMixture.denoise``) with deterministic DDIM on 256 uniform steps under VP. Each student predicts
``x̂ = x̂_exact + MLP(z, t)`` with the MLP's output starting at zero (so a stage starts from its teacher, as
distillation from the teacher's weights does) and is trained by ``scoresde.distill.ProgressiveDistillation`` for
``--steps`` Adam steps per stage, halving 256 → 2. For held-out ``x_T`` (float64) the table reports, at 8, 4 and 2
steps, the pathwise RMSE to the teacher's 256-step map, the Fréchet distance to the data and the mode-mass TV, for
the student and for the teacher's own DDIM at the same step count, next to the 256-step teacher's (the exact ODE
limit up to its own discretization) and the noise floor of exact samples.

A consistency student (the same network, ``scoresde.distill.ConsistencyDistillation`` on the teacher's 64-step DDIM
grid, EMA target ``mu = 0.95``) gets the progressive run's whole budget (7 stages × ``--steps`` Adam steps) and is
sampled in 1 step (``f(x_T, T)``, deterministic) and 2 (the ``consistency`` solver, re-noised at ``T/2``).

    python benchmarks/distill.py [--steps 1500] [--n 4000] [--methods progressive consistency]

``--methods`` runs some of the two and keeps the other's rows of an earlier run in the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch
from torch import nn

from scoresde import VPSDE, GaussianMixture, sample
from scoresde.distill import ConsistencyDistillation, ProgressiveDistillation, ddim_step
from scoresde.metrics import frechet_gaussian, mode_mass_error
from scoresde.nets.embeddings import SinusoidalEmbedding

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64


class Student(nn.Module):
    """``x̂(z, t) = x̂_exact(z, t) + MLP(z, t)``, the MLP's last layer zero at the start."""

    def __init__(self, mix: GaussianMixture, sde: VPSDE, width: int = 256) -> None:
        super().__init__()
        self.mix, self.sde, D = mix, sde, mix.dim
        self.emb = SinusoidalEmbedding(64)
        self.body = nn.Sequential(nn.Linear(D + 64, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                  nn.Linear(width, width), nn.SiLU(), nn.Linear(width, D))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)
        self.double()

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            base = self.mix.denoise(z, t.double(), self.sde)
        return base + self.body(torch.cat([z, self.emb(999 * t)], 1))


def ddim_map(x0_fn, pd: ProgressiveDistillation, x: torch.Tensor, steps: int) -> torch.Tensor:
    grid = pd.grid(steps)
    sde = pd.sde
    with torch.no_grad():
        for t, s in zip(grid[:-1].tolist(), grid[1:].tolist()):
            tt = torch.full((x.shape[0],), t, dtype=F64)
            ss = torch.full((x.shape[0],), s, dtype=F64)
            a_t, s_t, a_s, s_s = (float(v[0]) for v in (sde.alpha(tt), sde.sigma(tt), sde.alpha(ss), sde.sigma(ss)))
            x = ddim_step(x0_fn(x, tt), x, a_t, s_t, a_s, s_s)
    return x


def consistency_student(mix: GaussianMixture, sde: VPSDE, exact_x0, iters: int) -> Student:
    """A :class:`Student` trained by consistency distillation of the exact teacher on 64 DDIM steps."""
    cd = ConsistencyDistillation(sde, steps=64)
    student, target = Student(mix, sde), Student(mix, sde).requires_grad_(False)
    opt = torch.optim.Adam(student.parameters(), lr=3e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 - k / iters)
    g = torch.Generator().manual_seed(1)
    for _ in range(iters):
        x = mix.sample(512, generator=g, dtype=F64)
        opt.zero_grad()
        cd.per_sample(student, target, exact_x0, x, generator=g).mean().backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            for p, q in zip(target.parameters(), student.parameters()):
                p.lerp_(q, 0.05)
    return student.requires_grad_(False)


def consistency_samples(x0_fn, sde: VPSDE, x_T: torch.Tensor, steps: int) -> torch.Tensor:
    """The ``consistency`` solver on ``steps`` uniform steps, driven by the score of ``x0_fn``."""

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = sde.alpha(t.double())[:, None], sde.sigma(t.double())[:, None]
        return (a * x0_fn(x, t) - x) / s**2

    with torch.no_grad():
        return sample(score, sde, tuple(x_T.shape), solver="consistency", steps=steps, x_init=x_T,
                      seeds=torch.arange(x_T.shape[0]), dtype=F64).x


def metrics(x: torch.Tensor, ref: torch.Tensor, mix: GaussianMixture) -> dict[str, float]:
    return {
        "rmse": float((x - ref).pow(2).sum(1).mean().sqrt()),
        "fd": frechet_gaussian(x, mix.mean, mix.cov),
        "mode_tv": mode_mass_error(x, mix),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500, help="Adam steps per stage")
    ap.add_argument("--n", type=int, default=4000, help="held-out x_T")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "distill.json")
    ap.add_argument("--methods", nargs="+", default=["progressive", "consistency"],
                    choices=["progressive", "consistency"])
    args = ap.parse_args()
    torch.manual_seed(0)
    sde = VPSDE()
    pd = ProgressiveDistillation(sde, grid="uniform")
    targets = {"ring2d": GaussianMixture.ring(), "mix64d": GaussianMixture.random(64, k=6, cond=100.0, scale=0.5, seed=3)}
    rows = []
    for name, mix in targets.items():
        t0 = time.time()
        exact_x0 = lambda z, t, mix=mix: mix.denoise(z, t.double(), sde)  # noqa: E731
        x_T = torch.randn(args.n, mix.dim, generator=torch.Generator().manual_seed(11), dtype=F64)
        reference = ddim_map(exact_x0, pd, x_T, 256)
        floor = metrics(mix.sample(args.n, generator=torch.Generator().manual_seed(12), dtype=F64), reference, mix)
        teacher, steps = exact_x0, 256
        g = torch.Generator().manual_seed(0)
        student = Student(mix, sde)
        while steps > 2 and "progressive" in args.methods:
            steps //= 2
            opt = torch.optim.Adam(student.parameters(), lr=3e-4)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 - k / args.steps)
            for _ in range(args.steps):
                x = mix.sample(512, generator=g, dtype=F64)
                opt.zero_grad()
                pd.per_sample(student, teacher, x, steps, generator=g).mean().backward()
                opt.step()
                sched.step()
            frozen = Student(mix, sde)
            frozen.load_state_dict(student.state_dict())
            frozen.requires_grad_(False)
            teacher = frozen
            if steps in (8, 4, 2):
                row = {"target": name, "steps": steps, "method": "progressive",
                       "student": metrics(ddim_map(frozen, pd, x_T, steps), reference, mix),
                       "teacher_ddim": metrics(ddim_map(exact_x0, pd, x_T, steps), reference, mix),
                       "teacher_256": metrics(reference, reference, mix), "floor": floor,
                       "seconds": time.time() - t0}
                rows.append(row)
                s, d = row["student"], row["teacher_ddim"]
                print(f"{name:7} {steps:2d} steps  student rmse {s['rmse']:.4f} fd {s['fd']:.4g} tv {s['mode_tv']:.4f}"
                      f"  | teacher ddim rmse {d['rmse']:.4f} fd {d['fd']:.4g} tv {d['mode_tv']:.4f}"
                      f"  | 256-step fd {row['teacher_256']['fd']:.4g} tv {row['teacher_256']['mode_tv']:.4f}"
                      f"  | floor fd {floor['fd']:.4g} tv {floor['mode_tv']:.4f}  ({row['seconds']:.0f} s)", flush=True)
        if "consistency" not in args.methods:
            continue
        t0 = time.time()
        cm = consistency_student(mix, sde, exact_x0, 7 * args.steps)
        for steps in (2, 1):
            row = {"target": name, "steps": steps, "method": "consistency",
                   "student": metrics(consistency_samples(cm, sde, x_T, steps), reference, mix),
                   "teacher_ddim": metrics(ddim_map(exact_x0, pd, x_T, steps), reference, mix),
                   "teacher_256": metrics(reference, reference, mix), "floor": floor, "seconds": time.time() - t0}
            rows.append(row)
            s, d = row["student"], row["teacher_ddim"]
            print(f"{name:7} {steps:2d} steps  consistency rmse {s['rmse']:.4f} fd {s['fd']:.4g} tv {s['mode_tv']:.4f}"
                  f"  | teacher ddim rmse {d['rmse']:.4f} fd {d['fd']:.4g} tv {d['mode_tv']:.4f}"
                  f"  ({row['seconds']:.0f} s)", flush=True)
    if args.out.exists():  # keep the rows of the methods not run now
        earlier = json.loads(args.out.read_text())["rows"]
        rows += [r for r in earlier if r.get("method", "progressive") not in args.methods]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "steps_per_stage": args.steps,
                                    "n": args.n, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
