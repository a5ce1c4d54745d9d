"""Every prediction type yields the exact score when the network outputs the exact target."""

import pytest
import torch
from torch import nn

from scoresde import VESDE, VPSDE, ScoreModel
from scoresde._utils import append_dims
from scoresde.parametrization import noise_condition


class _OracleNet(nn.Module):
    """Outputs the exact eps / x0 / v / score of the diffused mixture; reads t back from c_noise = 999 t."""

    def __init__(self, gm, sde, prediction):
        super().__init__()
        self.gm, self.sde, self.prediction = gm, sde, prediction

    def forward(self, x, c):
        t = c / 999.0
        a, s = (append_dims(f(t), x.ndim) for f in (self.sde.alpha, self.sde.sigma))
        score = self.gm.score(x, t, self.sde)
        eps, x0 = -s * score, self.gm.denoise(x, t, self.sde)
        return {"eps": eps, "x0": x0, "v": a * eps - s * x0, "score": score}[self.prediction]


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "score"])
def test_each_prediction_gives_the_exact_score(prediction, sde, ring, gen):
    model = ScoreModel(_OracleNet(ring, sde, prediction), sde, prediction=prediction, time_input="t")
    x = 2 * torch.randn(64, 2, generator=gen, dtype=torch.float64)
    t = torch.linspace(0.01, 1.0, 64, dtype=torch.float64)
    assert torch.allclose(model(x, t), ring.score(x, t, sde), rtol=1e-7, atol=1e-9)
    assert torch.allclose(model.x0(x, t), ring.denoise(x, t, sde), rtol=1e-7, atol=1e-9)
    assert torch.allclose(model.eps(x, t), -append_dims(sde.sigma(t), 2) * ring.score(x, t, sde), rtol=1e-7, atol=1e-9)


def test_reference_time_inputs():
    t = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(noise_condition(VPSDE(), t), 999 * t)
    ve = VESDE(sigma_min=0.01, sigma_max=50.0)
    assert torch.allclose(noise_condition(ve, t), torch.tensor([0.01, (0.01 * 50) ** 0.5, 50.0]).log())


def test_bad_prediction_is_explained():
    with pytest.raises(ValueError, match="available: eps, x0, v, score, edm"):
        ScoreModel(nn.Identity(), VPSDE(), prediction="noise")
    with pytest.raises(ValueError, match="time_input"):
        ScoreModel(nn.Identity(), VPSDE(), time_input="sigma")


class _EDMOracle(nn.Module):
    """EDM's exact ``F = (x0* - c_skip x̃) / c_out``, with ``x_t`` and ``t`` read back from ``(c_in x̃, ¼ ln σ)``."""

    def __init__(self, gm, sde, sigma_data):
        super().__init__()
        self.gm, self.sde, self.sd = gm, sde, sigma_data

    def forward(self, x_in, c):
        s = torch.exp(4 * c)  # σ = sigma_t / alpha_t
        t = self.sde.t_from_log_snr(-torch.log(s))
        s2 = append_dims(s, x_in.ndim) ** 2
        x_tilde = x_in * torch.sqrt(s2 + self.sd**2)
        x = append_dims(self.sde.alpha(t), x_in.ndim) * x_tilde
        c_skip, c_out = self.sd**2 / (s2 + self.sd**2), s2.sqrt() * self.sd / torch.sqrt(s2 + self.sd**2)
        return (self.gm.denoise(x, t, self.sde) - c_skip * x_tilde) / c_out


@pytest.mark.parametrize("sigma_data", [0.5, 1.3])
def test_edm_preconditioning_gives_the_exact_score(sde, ring, gen, sigma_data):
    """The edm prediction: network input c_in x̃, time input ¼ ln σ, and D = c_skip x̃ + c_out F, on every SDE."""
    model = ScoreModel(_EDMOracle(ring, sde, sigma_data), sde, prediction="edm", sigma_data=sigma_data)
    assert model.time_input == "edm"
    x = 2 * torch.randn(64, 2, generator=gen, dtype=torch.float64)
    t = torch.linspace(0.01, 1.0, 64, dtype=torch.float64)
    assert torch.allclose(model(x, t), ring.score(x, t, sde), rtol=1e-7, atol=1e-9)
    assert torch.allclose(model.x0(x, t), ring.denoise(x, t, sde), rtol=1e-7, atol=1e-9)


def test_edm_time_input_is_a_quarter_log_sigma():
    t = torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64)
    vp = VPSDE()
    assert torch.allclose(noise_condition(vp, t, "edm"), 0.25 * (vp.sigma(t) / vp.alpha(t)).log())
    ve = VESDE(sigma_min=0.01, sigma_max=50.0)
    assert torch.allclose(noise_condition(ve, t, "edm"), 0.25 * ve.sigma(t).log())
