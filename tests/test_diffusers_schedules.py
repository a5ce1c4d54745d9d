"""The discrete schedules and timestep spacings against diffusers' own schedulers (diffusers is an optional extra,
installed with the test extra): tables to diffusers' float32 precision, and a scoresde DDIM run step for step equal to
diffusers' DDIMScheduler loop on the same network and the same x_T."""

import pytest
import torch

from scoresde import DiscreteVPSDE, sample

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize(("schedule", "build", "ends"), [
    ("linear", DiscreteVPSDE.linear, (1e-4, 0.02)),
    ("scaled_linear", DiscreteVPSDE.scaled_linear, (0.00085, 0.012)),  # latent diffusion's ends (diffusers' configs)
    ("squaredcos_cap_v2", DiscreteVPSDE.cosine, (1e-4, 0.02)),  # (ends unused)
])
def test_tables_equal_diffusers_to_its_float32_precision(schedule, build, ends):
    ours = build().alphas_cumprod
    theirs = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule, beta_start=ends[0],
                                     beta_end=ends[1]).alphas_cumprod.double()
    rel = ((ours - theirs) / theirs).abs().max()
    assert float(rel) < 3e-5, float(rel)  # float32 cumulative products over 1000 factors
    assert float(((ours.float().double() - ours) / ours).abs().max()) < 1e-7  # ours is the float64 table


class EpsNet(torch.nn.Module):
    """A fixed random eps-prediction network of (x, timestep), smooth in both."""

    def __init__(self, dim):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(dim, dim, generator=g) / dim**0.5)
        self.v = torch.nn.Parameter(torch.randn(dim, generator=g))

    def forward(self, x, timestep):
        n = torch.as_tensor(timestep, dtype=x.dtype).reshape(-1, 1).expand(len(x), 1)
        return torch.tanh(x @ self.w + self.v * n / 1000)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [10, 50])
def test_ddim_on_diffusers_spacings_equals_diffusers_ddim_scheduler(spacing, steps):
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", timestep_spacing=spacing,
                                        set_alpha_to_one=False, clip_sample=False)
    scheduler.set_timesteps(steps)
    net, dim = EpsNet(16).double(), 16
    x_T = torch.randn(8, dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = x_T.clone()
    with torch.no_grad():
        for n in scheduler.timesteps:
            x = scheduler.step(net(x, int(n)), n, x).prev_sample
    sde = DiscreteVPSDE(scheduler.betas)  # the same float32 table
    def score(x, t):  # noqa: E306 -- the eps network as a score: s = -eps(x, N t - 1) / sigma_t
        return -net(x, sde.timestep_of(t)) / sde.sigma(t)[:, None]
    with torch.no_grad():
        ours = sample(score, sde, x_T.shape, solver="ddim", grid=spacing, steps=steps, x_init=x_T,
                      dtype=torch.float64).x
    rel = float((ours - x).abs().max() / x.abs().max())
    if spacing == "linspace":
        # diffusers' DDIM steps from each timestep to timestep - N // S, not to the next one in its list, when the
        # spacing is not a whole number (linspace: 999/49 or 999/9 timesteps apart): the runs differ by those gaps
        assert rel > 1e-6
    else:
        assert rel < 1e-5, rel
