"""Every experiment YAML parses, builds the network and settings it claims, and trains (at reduced width on CPU)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from scoresde import VESDE, SubVPSDE, VPSDE
from scoresde.lightning.cli import cli
from scoresde.nets import count_parameters

from .test_nets import PAPER_COUNTS

EXPERIMENTS = Path(__file__).parents[1] / "experiments"
CIFAR = {
    "vp_ddpmpp_cont": ("ddpmpp_cont", VPSDE, 0.9999, "mean"),
    "subvp_ddpmpp_cont": ("ddpmpp_cont", SubVPSDE, 0.9999, "mean"),
    "vp_ddpmpp_deep_cont": ("ddpmpp_deep_cont", VPSDE, 0.9999, "mean"),
    "subvp_ddpmpp_deep_cont": ("ddpmpp_deep_cont", SubVPSDE, 0.9999, "mean"),
    "ve_ncsnpp_cont": ("ncsnpp_cont", VESDE, 0.999, "sum"),
    "ve_ncsnpp_deep_cont": ("ncsnpp_deep_cont", VESDE, 0.999, "sum"),
}


@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory):
    """A stand-in for data/cifar10.npz in the exported layout (HWC uint8), 24 train and 12 test images."""
    path = tmp_path_factory.mktemp("cifar") / "cifar10.npz"
    rng = np.random.default_rng(0)
    np.savez(path, train=rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8),
             test=rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8))
    return path


def _build(name, data_path, *extra):
    return cli(["--config", str(EXPERIMENTS / "cifar10" / f"{name}.yaml"), "--data.init_args.path",
                str(data_path), "--trainer.logger", "false", *extra], run=False)


@pytest.mark.parametrize("name", list(CIFAR))
def test_cifar10_experiments_build_the_paper_networks_and_settings(name, fake_cifar, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paper_net, sde_cls, ema, reduction = CIFAR[name]
    c = _build(name, fake_cifar)
    model, h = c.model, c.model.hparams
    assert count_parameters(model.net) == PAPER_COUNTS[paper_net][0]
    assert type(model.sde) is sde_cls and h.ema_decay == ema and model.loss.reduction == reduction
    assert (h.lr, h.warmup_steps, c.datamodule.batch_size) == (2e-4, 5000, 128)
    assert c.trainer.gradient_clip_val == 1.0 and c.trainer.max_steps == 1_300_000
    assert c.datamodule.random_flip and c.datamodule.data_shape == (3, 32, 32)
    assert model.transform.shift == (0.0 if sde_cls is VESDE else -1.0)  # [0, 1] for VE, centred for VP / sub-VP
    assert model.net.centered == (sde_cls is not VESDE)
    if sde_cls is VESDE:
        assert (model.sde.sigma_min, model.sde.sigma_max) == (0.01, 50.0)
        assert h.sampler == "pc" and h.sampler_options["corrector_options"]["snr"] == 0.16


@pytest.mark.parametrize("name", ["vp_ddpmpp_cont", "ve_ncsnpp_cont"])
def test_cifar10_experiments_train_at_reduced_width(name, fake_cifar, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = _build(name, fake_cifar, "--model.net.init_args.nf", "8", "--data.init_args.batch_size", "4",
               "--trainer.fast_dev_run", "true", "--trainer.callbacks", "[]")
    c.trainer.fit(c.model, datamodule=c.datamodule)
    assert c.trainer.state.finished and torch.isfinite(c.trainer.callback_metrics["train/loss"])


@pytest.mark.parametrize("name", ["digits_vp_ddpmpp", "digits_ve_ncsnpp"])
def test_digits_variants_train_and_report_bits_per_dim(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = cli(["--config", str(EXPERIMENTS / f"{name}.yaml"), "--trainer.max_steps", "22",
             "--trainer.check_val_every_n_epoch", "1", "--trainer.limit_val_batches", "1", "--trainer.logger", "false",
             "--trainer.enable_progress_bar", "false", "--model.sample_steps", "3",
             "--trainer.callbacks.n_points", "4"], run=False)
    c.trainer.fit(c.model, datamodule=c.datamodule)
    bpd = float(c.trainer.callback_metrics["val/bpd"])
    # an untrained model is far from the data, but its bits/dim are finite and above the Gaussian fit's (~2.9)
    assert np.isfinite(bpd) and bpd > 2.0


@pytest.mark.parametrize(("name", "sigma_data"), [("toy_vp_edm", 1.4), ("digits_vp_edm", 0.7)])
def test_edm_experiments_use_edm_preconditioning_and_loss(name, sigma_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = cli(["--config", str(EXPERIMENTS / f"{name}.yaml"), "--trainer.max_steps", "5", "--trainer.logger", "false",
             "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]",
             "--trainer.check_val_every_n_epoch", "1000"], run=False)
    m = c.model.score_model
    assert (m.prediction, m.time_input, m.sigma_data) == ("edm", "edm", sigma_data)
    loss = c.model.loss
    assert (loss.weighting, loss.sampling, loss.P_mean, loss.P_std, loss.sigma_data) == (
        "edm", "log_normal", -1.2, 1.2, sigma_data)
    c.trainer.fit(c.model, datamodule=c.datamodule)
    assert c.trainer.global_step == 5 and torch.isfinite(c.trainer.callback_metrics["train/loss"])
