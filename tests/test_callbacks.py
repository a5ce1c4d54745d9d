"""Callbacks: the bits/dim monitor reproduces the exact bits/dim when the network is the exact score."""

import math

import lightning as L
import pytest
import torch
from torch import nn

from scoresde import VPSDE, GaussianMixture
from scoresde.lightning import BitsPerDimReport, ScoreModule, ToyDataModule


class ExactEps(nn.Module):
    """``net(x, 999 t) = -sigma_t ∇log p_t(x)`` of an analytic mixture: the ideal eps-prediction network."""

    def __init__(self, target: GaussianMixture, sde: VPSDE) -> None:
        super().__init__()
        self.target, self.sde = target, sde
        self.dummy = nn.Parameter(torch.zeros(()))  # Lightning wants a parameter

    def forward(self, x, c_noise):
        t = (c_noise / 999.0).double()
        score = self.target.score(x.double(), t, self.sde)
        return (-self.sde.sigma(t)[:, None] * score).to(x.dtype) + 0 * self.dummy


def test_bits_per_dim_report_matches_the_exact_bits_per_dim_of_the_validation_points():
    sde, target = VPSDE(), GaussianMixture.ring()
    dm = ToyDataModule("ring", n_train=100, n_val=40, n_test=10, batch_size=20)
    model = ScoreModule(ExactEps(target, sde), sde, ema_decay=None, warmup_steps=0, data_shape=[2])
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[BitsPerDimReport(n_points=40, rtol=1e-6, atol=1e-6)])
    metrics = trainer.validate(model, datamodule=dm, verbose=False)[0]
    exact = (-target.log_prob(dm.val_raw.double()) / (2 * math.log(2))).mean().item()
    # float32 ODE from t_eps = 1e-5, prior mismatch at T (~2e-3 pointwise, smaller on average)
    assert metrics["val/bpd"] == pytest.approx(exact, abs=1e-3)  # measured: 3e-6


def test_bits_per_dim_report_rejects_bad_settings():
    with pytest.raises(ValueError, match="trace must be auto, exact or hutchinson"):
        BitsPerDimReport(trace="exactly")
    with pytest.raises(ValueError, match="n_points and every_n_epochs must be >= 1"):
        BitsPerDimReport(n_points=0)
