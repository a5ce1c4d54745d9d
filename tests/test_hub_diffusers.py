"""diffusers UNets loaded through scoresde.hub.from_diffusers: the score is the network's eps / sigma at the
discrete timesteps, for eps-, v- and sample-prediction configs, and a scoresde DDIM run equals diffusers' own."""

import pytest
import torch

from scoresde import DiscreteVPSDE, sample
from scoresde.hub import from_diffusers

diffusers = pytest.importorskip("diffusers")

SMALL = {"sample_size": 8, "in_channels": 3, "out_channels": 3, "layers_per_block": 1, "block_out_channels": (32, 64),
         "down_block_types": ("DownBlock2D", "AttnDownBlock2D"), "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
         "norm_num_groups": 8}
# google/ddpm-cifar10-32's UNet2DModel configuration
DDPM_CIFAR10 = {"sample_size": 32, "in_channels": 3, "out_channels": 3, "layers_per_block": 2,
                "block_out_channels": (128, 256, 256, 256),
                "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                "attention_head_dim": None, "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1,
                "norm_eps": 1e-6, "norm_num_groups": 32, "center_input_sample": False, "act_fn": "silu",
                "time_embedding_type": "positional", "mid_block_scale_factor": 1}
TIMESTEPS = [0, 1, 10, 100, 250, 500, 750, 998, 999]


def _save(tmp_path, unet_config, scheduler_config=None, pipeline=False, seed=0):
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(**unet_config)
    scheduler = diffusers.DDPMScheduler(**(scheduler_config or {}))
    path = tmp_path / "model"
    if pipeline:
        diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(path)
    else:
        unet.save_pretrained(path)
        scheduler.save_pretrained(path)
    return path, unet.eval(), scheduler


def _reference_score(unet, scheduler, x, n, prediction_type, y=None):
    """The score the diffusers network implies at timestep n, from diffusers' own (float32) quantities' definitions,
    with alphas_cumprod in float64."""
    abar = DiscreteVPSDE(scheduler.betas.double()).alphas_cumprod[n]
    a, s = abar.sqrt().float(), (1 - abar).sqrt().float()
    out = unet(x, torch.full((len(x),), n), class_labels=y).sample
    eps = {"epsilon": out, "v_prediction": a * out + s * x, "sample": (x - a * out) / s}[prediction_type]
    return -eps / s


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_score_is_the_networks_eps_over_sigma(tmp_path, prediction_type):
    path, unet, scheduler = _save(tmp_path, SMALL, {"prediction_type": prediction_type})
    model = from_diffusers(path)
    assert isinstance(model.sde, DiscreteVPSDE) and model.sde.num_timesteps == 1000
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for n in TIMESTEPS:
            t = model.sde.time_of(torch.full((2,), n)).float()
            got, want = model(x, t), _reference_score(unet, scheduler, x, n, prediction_type)
            rel = float((got - want).abs().max() / want.abs().max())
            assert rel <= 1e-5, (n, rel)


def test_the_ddpm_cifar10_configuration_and_a_pipeline_directory(tmp_path):
    path, unet, scheduler = _save(tmp_path, DDPM_CIFAR10, pipeline=True)
    model = from_diffusers(path)
    n_params = sum(p.numel() for p in model.net.parameters())
    assert 35.6e6 < n_params < 35.8e6, n_params
    assert model.net.data_shape == (3, 32, 32)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for n in TIMESTEPS:
            t = model.sde.time_of(torch.full((2,), n)).float()
            got, want = model(x, t), _reference_score(unet, scheduler, x, n, "epsilon")
            rel = float((got - want).abs().max() / want.abs().max())
            assert rel <= 1e-5, (n, rel)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_equals_diffusers_ddim_scheduler_on_the_network(tmp_path, spacing):
    path, unet, _ = _save(tmp_path, SMALL)
    model = from_diffusers(path)
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", timestep_spacing=spacing,
                                        set_alpha_to_one=False, clip_sample=False)
    scheduler.set_timesteps(10)
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    x = x_T.clone()
    with torch.no_grad():
        for n in scheduler.timesteps:
            x = scheduler.step(unet(x, n).sample, n, x).prev_sample
        ours = sample(model, model.sde, x_T.shape, solver="ddim", grid=spacing, steps=10, x_init=x_T).x
    rel = float((ours - x).abs().max() / x.abs().max())
    assert rel <= 1e-5, rel


def test_class_labels_pass_through(tmp_path):
    path, unet, scheduler = _save(tmp_path, {**SMALL, "num_class_embeds": 3})
    model = from_diffusers(path)
    assert model.num_classes == 3
    x, y = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 2, 1])
    t = model.sde.time_of(torch.full((3,), 400)).float()
    with torch.no_grad():
        want = _reference_score(unet, scheduler, x, 400, "epsilon", y)
        assert torch.allclose(model(x, t, y), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
        other = model(x, t, torch.tensor([1, 0, 2]))
    assert not torch.allclose(other, want)
    with pytest.raises(ValueError, match="no null class"):
        model(x, t, torch.tensor([-1, 0, 1]))


def test_schedules_of_the_scheduler_config(tmp_path):
    path, _, scheduler = _save(tmp_path, SMALL, {"beta_schedule": "squaredcos_cap_v2"})
    ours = from_diffusers(path).sde.alphas_cumprod
    assert float(((ours - scheduler.alphas_cumprod.double()) / ours).abs().max()) < 3e-5


def test_missing_scheduler_config_is_explained(tmp_path):
    torch.manual_seed(0)
    diffusers.UNet2DModel(**SMALL).save_pretrained(tmp_path / "unet_only")
    with pytest.raises(FileNotFoundError, match="scheduler_config.json is missing"):
        from_diffusers(tmp_path / "unet_only")
    with pytest.raises(FileNotFoundError, match="neither unet/config.json"):
        from_diffusers(tmp_path)
