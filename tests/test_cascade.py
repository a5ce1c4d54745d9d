"""Cascaded super-resolution against exact mixtures: 2×2 pooling of an 8×8 mixture is a 4×4 mixture (stage 1) and
the stage-2 conditional given a noisy low-resolution image is a mixture too (`ObservationPosterior`); the cascade of
the two exact scores reaches the 8×8 noise floor, and noise-conditioning augmentation rescues a degraded stage 1."""

import pytest
import torch

from scoresde import VPSDE, GaussianMixture
from scoresde.cascade import (
    SuperResolutionNet,
    cascade_sample,
    downsample,
    exact_stage2,
    low_resolution_mixture,
    pack_condition,
    pool_matrix,
    upsample,
)
from scoresde.metrics import frechet_gaussian

F64 = torch.float64
SDE = VPSDE()


def _image_mixture():
    return GaussianMixture.random(64, k=3, seed=0, spread=1.0, cond=10, scale=0.5, shape=(1, 8, 8))


def test_pooling_has_orthonormal_rows_and_maps_the_mixture_to_its_low_resolution_law():
    A = pool_matrix(1, 8, 8)
    assert A.shape == (16, 64) and torch.allclose(A @ A.T, torch.eye(16, dtype=F64))
    x = torch.randn(3, 1, 8, 8, dtype=F64)
    assert torch.allclose(downsample(x).flatten(1), x.flatten(1) @ A.T)
    gm = _image_mixture()
    low = low_resolution_mixture(gm)
    draws = downsample(gm.sample(50000, generator=torch.Generator().manual_seed(0), dtype=F64))
    assert torch.allclose(draws.flatten(1).mean(0), low.mean, atol=0.03)
    assert torch.allclose(torch.cov(draws.flatten(1).T), low.cov, atol=0.05)


def _final_fd(stage1_options, s, n=2000):
    gm = _image_mixture()
    low = low_resolution_mixture(gm)
    r = cascade_sample(low.score_fn(SDE), exact_stage2(gm, SDE), SDE, n, (1, 4, 4), (1, 8, 8), augmentation=s,
                       stage1_options=stage1_options, stage2_options={"solver": "euler_maruyama", "steps": 200},
                       generator=torch.Generator().manual_seed(0), dtype=F64)
    return frechet_gaussian(r.low, low.mean, low.cov), frechet_gaussian(r.x, gm.mean, gm.cov), r


def test_the_cascade_of_the_exact_scores_reaches_the_noise_floor():
    gm = _image_mixture()
    floor = frechet_gaussian(gm.sample(2000, generator=torch.Generator().manual_seed(9), dtype=F64), gm.mean, gm.cov)
    _, fd, r = _final_fd({"solver": "euler_maruyama", "steps": 200}, 0.0)
    # measured: 0.078 against the exact-sample floor 0.065 (at 100 steps each, 0.155: the solver's own error)
    assert fd < 1.5 * floor, (fd, floor)
    assert r.x.shape == (2000, 1, 8, 8) and r.nfe == (200, 200)


def test_augmentation_forgives_a_degraded_first_stage():
    # stage 1 by 3-step DDIM is far off (FD 1.17 at 4x4); conditioning stage 2 on it as if it were exact carries the
    # error up (1.83), conditioning on it augmented to s forgives it (measured 0.76, 0.28, 0.11 at s = 0.05, 0.1, 0.2)
    fds = []
    for s in (0.0, 0.05, 0.1, 0.2):
        low_fd, fd, _ = _final_fd({"solver": "ddim", "steps": 3}, s)
        fds.append(fd)
    assert low_fd > 0.5
    assert fds[0] > fds[1] > fds[2] > fds[3] and fds[3] < 0.1 * fds[0], fds


def test_cascade_refuses_bad_input():
    gm = _image_mixture()
    low = low_resolution_mixture(gm)
    with pytest.raises(ValueError, match="augmentation"):
        cascade_sample(low.score_fn(SDE), exact_stage2(gm, SDE), SDE, 4, (1, 4, 4), (1, 8, 8), augmentation=1.5)


def test_upsample_is_the_adjoint_of_downsample():
    x, z = torch.randn(2, 3, 8, 6, dtype=F64), torch.randn(2, 3, 4, 3, dtype=F64)
    assert torch.allclose((downsample(x) * z).sum(), (x * upsample(z)).sum())  # <A x, z> = <x, Aᵀ z>
    assert torch.allclose(downsample(upsample(z)), z)  # A Aᵀ = I


class _Recorder(torch.nn.Module):
    def forward(self, h, c_noise, y):
        self.seen = (h, c_noise, y)
        return h[:, :1]


def test_super_resolution_net_sees_the_upsampled_image_and_the_level():
    net = SuperResolutionNet(_Recorder())
    x, z, c = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 4, 4), torch.rand(3)
    y = pack_condition(z, 0.25)
    assert y.shape == (3, 17) and torch.equal(y[:, -1], torch.full((3,), 0.25))
    net(x, c, y)
    h, c_seen, level = net.net.seen
    assert torch.equal(h, torch.cat([x, upsample(z)], 1)) and c_seen is c and torch.equal(level, y[:, -1:])
    y[1] = float("nan")  # the null condition: no image, the null level
    net(x, c, y)
    h, _, level = net.net.seen
    assert torch.equal(h[1, 1], torch.zeros(8, 8)) and level[1].isnan().all() and not level[0].isnan().any()
    with pytest.raises(ValueError, match="pack_condition"):
        net(x, c, y[:, :-2])
    with pytest.raises(ValueError, match="needs its condition"):
        net(x, c)


def _super_module(**kw):
    from scoresde.lightning import ScoreModule
    from scoresde.nets import UNet

    unet = UNet(in_channels=2, out_channels=1, cond_dim=1, base_channels=8, channel_mult=(1,), num_res_blocks=1)
    return ScoreModule(SuperResolutionNet(unet), SDE, augmentation=0.5, data_shape=(1, 8, 8), **kw)


def test_stage_two_trains_on_the_low_resolution_view_diffused_to_a_level_drawn_per_example():
    from scoresde.lightning.module import step_noise

    module, n = _super_module(), 20000
    x0 = torch.randn(n, 1, 8, 8)
    y = module._augmented_condition(x0, step_noise(7, n, 0, 1, x0.device), None)
    s = y[:, -1].double()
    assert 0 <= float(s.min()) and float(s.max()) <= 0.5 and abs(float(s.mean()) - 0.25) < 0.01  # U[0, s_max]
    mean, std = SDE.marginal_prob(downsample(x0).double(), s)
    eps = (y[:, :-1].double().view(n, 1, 4, 4) - mean) / std.view(-1, 1, 1, 1)  # z_s = alpha_s A x0 + sigma_s eps
    assert abs(float(eps.mean())) < 0.01 and abs(float(eps.var()) - 1) < 0.01
    # each example's condition comes from its own stream: the same in a batch of 3
    few = module._augmented_condition(x0[:3], step_noise(7, 3, 0, 1, x0.device), None)
    assert torch.equal(few, y[:3])


def test_stage_one_learns_the_pooled_view():
    from scoresde.lightning import ScoreModule
    from scoresde.losses import DSMLoss
    from scoresde.nets import UNet

    module = ScoreModule(UNet(base_channels=8, channel_mult=(1,), num_res_blocks=1), SDE, low_resolution=True,
                         data_shape=(1, 8, 8))
    assert module.sample_shape == (1, 4, 4) and module.cascade_stage == "low"
    x0 = torch.randn(5, 1, 8, 8)
    loss, _ = module._loss(x0, "val", seed=3)
    ref = DSMLoss()(module.score_model, SDE, downsample(x0), generator=torch.Generator().manual_seed(3))
    assert torch.equal(loss, ref)


def test_cascade_stages_refuse_what_they_cannot_train():
    from scoresde.lightning import ScoreModule
    from scoresde.nets import UNet

    with pytest.raises(ValueError, match="not both"):
        _super_module(low_resolution=True)
    with pytest.raises(ValueError, match="SuperResolutionNet"):
        ScoreModule(UNet(base_channels=8), SDE, augmentation=0.2, data_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="even H and W"):
        ScoreModule(UNet(base_channels=8), SDE, low_resolution=True, data_shape=(1, 7, 8))
    with pytest.raises(ValueError, match=r"\[0, T\)"):
        ScoreModule(SuperResolutionNet(UNet(in_channels=2, out_channels=1, cond_dim=1)), SDE, augmentation=1.0,
                    data_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="needs one"):
        _super_module().sample(2, steps=2)
