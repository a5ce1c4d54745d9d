"""Progressive distillation (``scoresde.distill``) against its closed form: on ``N(0, s² I)`` data the exact data
prediction is linear in ``z``, so each DDIM step multiplies by a known coefficient and the optimal one-step student
is the product of its teacher's two (DESIGN.md §7)."""

import math

import pytest
import torch

from scoresde import VPSDE, GaussianMixture
from scoresde.distill import ProgressiveDistillation, ddim_step

F64 = torch.float64
S2, D = 0.5, 4


class LinearStudent(torch.nn.Module):
    """``x̂(z, t) = a_k z`` with one learned coefficient per grid time ``t_k`` (k = 0 .. N-1)."""

    def __init__(self, grid: torch.Tensor, a: torch.Tensor) -> None:
        super().__init__()
        self.grid = grid[:-1]
        self.a = torch.nn.Parameter(a.clone())

    def index(self, t):
        return (t[:, None].double() - self.grid[None]).abs().argmin(1)

    def forward(self, z, t):
        return self.a[self.index(t)][:, None] * z


def _coefficients(sde, grid, a):
    """DDIM step coefficients ``c_k`` with ``z_{k+1} = c_k z_k`` for the linear prediction ``a_k z``."""
    al, si = sde.alpha(grid), sde.sigma(grid)
    return al[1:] * a + si[1:] / si[:-1] * (1 - al[:-1] * a)


def test_ddim_step_of_the_exact_gaussian_denoiser_is_linear():
    sde = VPSDE()
    mix = GaussianMixture(torch.ones(1), torch.zeros(1, D), torch.full((1,), S2))
    t, s = torch.full((5,), 0.7, dtype=F64), torch.full((5,), 0.4, dtype=F64)
    z = torch.randn(5, D, generator=torch.Generator().manual_seed(0), dtype=F64)
    a_t, s_t, a_s, s_s = (float(v[0]) for v in (sde.alpha(t), sde.sigma(t), sde.alpha(s), sde.sigma(s)))
    a = a_t * S2 / (a_t**2 * S2 + s_t**2)
    out = ddim_step(mix.denoise(z, t, sde), z, a_t, s_t, a_s, s_s)
    torch.testing.assert_close(out, (a_s * a + s_s / s_t * (1 - a_t * a)) * z, rtol=1e-13, atol=0)


@pytest.mark.parametrize("grid", ["uniform", "log_snr"])
def test_each_stage_learns_the_product_of_its_teachers_two_steps(grid):
    """From the exact teacher on 64 steps down to 2: each stage's learned coefficients (300 Adam steps from the
    teacher's own) equal the product of the teacher's two step coefficients within 1e-4 relative, and the final
    2-step map equals the exact 64-step DDIM map within 1e-3 relative."""
    sde = VPSDE()
    pd = ProgressiveDistillation(sde, grid=grid)
    fine = pd.grid(64)
    al, si = sde.alpha(fine[:-1]), sde.sigma(fine[:-1])
    a_teacher = al * S2 / (al**2 * S2 + si**2)  # the exact x̂ = a z on N(0, S2 I)
    teacher = lambda z, t: LinearStudent(fine, a_teacher)(z, t)  # noqa: E731
    g = torch.Generator().manual_seed(0)
    steps = 64
    while steps > 2:
        steps //= 2
        coarse = pd.grid(steps)
        torch.testing.assert_close(coarse, pd.grid(2 * steps)[::2], rtol=0, atol=1e-14)
        student = LinearStudent(coarse, a_teacher[::2])
        opt = torch.optim.Adam(student.parameters(), lr=0.02)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 300)
        for _ in range(300):
            x = torch.randn(512, D, generator=g, dtype=F64) * math.sqrt(S2)
            opt.zero_grad()
            pd.per_sample(student, teacher, x, steps, generator=g).mean().backward()
            opt.step()
            sched.step()
        c_teacher = _coefficients(sde, pd.grid(2 * steps), a_teacher)
        want = c_teacher[0::2] * c_teacher[1::2]
        got = _coefficients(sde, coarse, student.a.detach())
        assert float(((got - want) / want).abs().max()) < 1e-4, (steps, got, want)
        a_teacher = student.a.detach().clone()
        teacher = lambda z, t, s=student: s(z, t)  # noqa: E731
    exact = _coefficients(sde, fine, (sde.alpha(fine[:-1]) * S2 / (sde.alpha(fine[:-1]) ** 2 * S2 + sde.sigma(fine[:-1]) ** 2)))
    final = _coefficients(sde, pd.grid(2), a_teacher)
    assert abs(float(final.prod() / exact.prod()) - 1) < 1e-3


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="nest under halving"):
        ProgressiveDistillation(VPSDE(), grid="karras")
    with pytest.raises(ValueError, match="unknown weighting"):
        ProgressiveDistillation(VPSDE(), weighting="snr")


def _ddim_map(model, x_T, steps, grid="uniform"):
    from scoresde import sample

    with torch.no_grad():
        return sample(model.score_model, model.sde, tuple(x_T.shape), solver="ddim", steps=steps, grid=grid,
                      x_init=x_T).x


def test_scoresde_distill_writes_students_that_sample_in_their_own_steps(toy_ckpt, tmp_path, monkeypatch):
    """``scoresde distill`` on the toy checkpoint, 16 teacher steps down to 4 (two stages of 150 steps): it writes
    ``student_8steps.ckpt`` and ``student_4steps.ckpt``; ``scoresde sample`` draws from the 4-step student with
    ``ddim`` in 4 evaluations per sample; and on held-out ``x_T`` the student's 4-step map is closer to the teacher's
    16-step map than the teacher's own 4-step DDIM is (pathwise RMSE, at most half)."""
    import json

    import numpy as np

    from scoresde.lightning.cli import run
    from scoresde.lightning.commands._common import load_model

    from .conftest import EXPERIMENTS

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "students"
    run(["distill", "--config", str(EXPERIMENTS / "distill" / "toy_vp.yaml"), "--model.teacher", str(toy_ckpt),
         "--model.teacher_steps", "16", "--model.final_steps", "4", "--model.steps_per_stage", "150",
         "--trainer.max_steps", "300", "--model.dirpath", str(out), "--model.lr", "0.002", "--trainer.logger", "false",
         "--trainer.enable_progress_bar", "false"])
    assert sorted(p.name for p in out.glob("*.ckpt")) == ["student_4steps.ckpt", "student_8steps.ckpt"]
    student4 = out / "student_4steps.ckpt"
    record = torch.load(student4, map_location="cpu", weights_only=False)["distillation"]
    assert record["steps"] == 4 and record["grid"] == "uniform" and record["teacher_steps"] == 16
    run(["sample", "--ckpt", str(student4), "--n", "32", "--out", str(tmp_path / "s"), "--progress", "false"])
    npz = np.load(tmp_path / "s" / "samples.npz")
    assert (npz["nfe_per_sample"] == 4).all() and np.isfinite(npz["samples"]).all()
    assert json.loads((tmp_path / "s" / "sample_config.json").read_text())["solver"] == "ddim"
    teacher, student = load_model(toy_ckpt), load_model(student4)
    x_T = torch.randn(2000, 2, generator=torch.Generator().manual_seed(7))
    target = _ddim_map(teacher, x_T, 16)
    rmse_student = float((_ddim_map(student, x_T, 4) - target).pow(2).sum(1).mean().sqrt())
    rmse_teacher = float((_ddim_map(teacher, x_T, 4) - target).pow(2).sum(1).mean().sqrt())
    assert rmse_student < 0.5 * rmse_teacher, (rmse_student, rmse_teacher)


def test_distill_checks_its_stage_arithmetic(toy_ckpt, tmp_path, monkeypatch):
    from scoresde.lightning.cli import run

    from .conftest import EXPERIMENTS

    monkeypatch.chdir(tmp_path)
    base = ["distill", "--config", str(EXPERIMENTS / "distill" / "toy_vp.yaml"), "--model.teacher", str(toy_ckpt),
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    with pytest.raises(ValueError, match="power of two"):
        run([*base, "--model.teacher_steps", "12", "--model.final_steps", "5"])
    with pytest.raises(ValueError, match="trainer.max_steps must be stages x steps_per_stage"):
        run([*base, "--model.teacher_steps", "8", "--model.final_steps", "2", "--model.steps_per_stage", "5",
             "--trainer.max_steps", "7"])
    with pytest.raises(ValueError, match="not found"):
        run([*base[:3], "--model.teacher", str(tmp_path / "missing.ckpt"), *base[5:]])


# ---- consistency distillation -----------------------------------------------------------------------------------


def _consistency_coefficients(sde, grid, a, t_end):
    """``k_n`` with ``f(z, t_n) = k_n z`` for the linear prediction ``a_n z``: the DDIM step from ``t_n`` to ``t_end``."""
    al, si = sde.alpha(grid), sde.sigma(grid)
    te = torch.tensor([t_end], dtype=F64)
    return sde.alpha(te) * a + sde.sigma(te) / si * (1 - al * a)


def test_consistency_distillation_reaches_its_fixed_point_the_teachers_whole_map():
    """Exact teacher on 16 DDIM steps, a linear student with one coefficient per grid time and its EMA target
    (mu = 0.9): after 1500 Adam steps ``f(z, t_n) = k_n z`` equals the teacher's map from ``t_n`` to ``t_end``
    (the product of its remaining step coefficients) within 1e-10 relative at every ``t_n`` (measured 7e-16: every
    sample's gradient points at the same fixed point, so there is no noise floor), so one step from ``T`` is the
    16-step sampler; at the start (the teacher's own one-step jump) it was 30 % and more off."""
    from scoresde.distill import ConsistencyDistillation

    sde = VPSDE()
    cd = ConsistencyDistillation(sde, steps=16)
    grid = cd.times
    al, si = sde.alpha(grid), sde.sigma(grid)
    a_exact = al * S2 / (al**2 * S2 + si**2)
    teacher = LinearStudent(torch.cat([grid, grid[-1:]]), a_exact)  # every grid time, t_end included
    c = _coefficients(sde, grid, a_exact[:-1])
    want = torch.cat([torch.flip(torch.cumprod(torch.flip(c, [0]), 0), [0]), torch.ones(1, dtype=F64)])
    student = LinearStudent(torch.cat([grid, grid[-1:]]), a_exact)
    target = LinearStudent(torch.cat([grid, grid[-1:]]), a_exact).requires_grad_(False)
    k0 = _consistency_coefficients(sde, grid, a_exact, cd.t_end)
    assert float(((k0 - want) / want).abs()[:8].max()) > 0.3
    opt = torch.optim.Adam(student.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    for k in range(1500):
        for group in opt.param_groups:
            group["lr"] = 0.01 if k < 1000 else 0.001
        x = torch.randn(512, D, generator=g, dtype=F64) * math.sqrt(S2)
        opt.zero_grad()
        cd.per_sample(student, target, teacher, x, generator=g).mean().backward()
        opt.step()
        with torch.no_grad():
            target.a.lerp_(student.a, 0.1)
    got = _consistency_coefficients(sde, grid, student.a.detach(), cd.t_end)
    assert float(((got - want) / want).abs().max()) < 1e-10, ((got - want) / want)
    # the boundary: f(z, t_end) = z whatever the prediction
    assert abs(float(got[-1]) - 1) < 1e-14


def test_the_consistency_solver_is_the_consistency_function_in_one_step():
    """One step of ``consistency`` from ``T`` is ``f(x_T, T) = DDIM(x̂, T → t_end)`` (it equals ``ddim`` on one
    step); with two steps the middle state is ``alpha_s x̂ + sigma_s z``, re-noised from the first jump."""
    from scoresde import sample
    from scoresde.distill import ConsistencyDistillation

    sde = VPSDE()
    mix = GaussianMixture.ring()
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    one = sample(mix.score_fn(sde), sde, (64, 2), solver="consistency", steps=1, x_init=x_T, dtype=F64)
    ddim = sample(mix.score_fn(sde), sde, (64, 2), solver="ddim", steps=1, x_init=x_T, dtype=F64)
    cd = ConsistencyDistillation(sde, steps=1)
    f = cd.consistency(lambda z, t: mix.denoise(z, t, sde), x_T, torch.full((64,), sde.T, dtype=F64))
    torch.testing.assert_close(one.x, f, rtol=0, atol=1e-12)
    torch.testing.assert_close(ddim.x, f, rtol=0, atol=1e-12)
    assert one.nfe == 1
    seen = {}
    two = sample(mix.score_fn(sde), sde, (64, 2), solver="consistency", steps=2, x_init=x_T, dtype=F64,
                 seeds=torch.arange(64), callback=lambda i, t, s: seen.setdefault(i, (t, s.x, s.denoised)))
    t_mid, x_mid, x0 = seen[0]
    tt = torch.tensor([t_mid], dtype=F64)
    z = (x_mid - sde.alpha(tt) * x0) / sde.sigma(tt)  # the fresh noise: standard normal, independent of x̂
    assert abs(float(z.mean())) < 0.3 and 0.8 < float(z.std()) < 1.2 and two.nfe == 2


def test_scoresde_distill_consistency_writes_a_one_step_student(toy_ckpt, tmp_path, monkeypatch):
    """``scoresde distill --config experiments/distill/toy_vp_consistency.yaml`` on the toy checkpoint (16 teacher
    steps, 400 optimizer steps): it writes ``consistency.ckpt``, which ``scoresde sample`` draws with the
    ``consistency`` solver in one evaluation per sample; on held-out ``x_T`` its one step is closer to the teacher's
    16-step DDIM map than the teacher's own one-step DDIM (pathwise RMSE, at most half)."""
    import json

    import numpy as np

    from scoresde import sample
    from scoresde.lightning.cli import run
    from scoresde.lightning.commands._common import load_model

    from .conftest import EXPERIMENTS

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "students"
    run(["distill", "--config", str(EXPERIMENTS / "distill" / "toy_vp_consistency.yaml"), "--model.teacher",
         str(toy_ckpt), "--model.teacher_steps", "16", "--model.steps_per_stage", "400", "--trainer.max_steps", "400",
         "--model.dirpath", str(out), "--model.lr", "0.002", "--trainer.logger", "false",
         "--trainer.enable_progress_bar", "false"])
    ckpt = out / "consistency.ckpt"
    assert [p.name for p in out.glob("*.ckpt")] == ["consistency.ckpt"]
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["distillation"]["method"] == "consistency"
    run(["sample", "--ckpt", str(ckpt), "--n", "32", "--out", str(tmp_path / "s"), "--progress", "false"])
    npz = np.load(tmp_path / "s" / "samples.npz")
    assert (npz["nfe_per_sample"] == 1).all() and np.isfinite(npz["samples"]).all()
    assert json.loads((tmp_path / "s" / "sample_config.json").read_text())["solver"] == "consistency"
    teacher, student = load_model(toy_ckpt), load_model(ckpt)
    x_T = torch.randn(2000, 2, generator=torch.Generator().manual_seed(7))
    target = _ddim_map(teacher, x_T, 16)
    with torch.no_grad():
        one = sample(student.score_model, student.sde, (2000, 2), solver="consistency", steps=1, x_init=x_T).x
    rmse_student = float((one - target).pow(2).sum(1).mean().sqrt())
    rmse_teacher = float((_ddim_map(teacher, x_T, 1) - target).pow(2).sum(1).mean().sqrt())
    assert rmse_student < 0.5 * rmse_teacher, (rmse_student, rmse_teacher)
