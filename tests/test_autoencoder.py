"""Latent diffusion against a mixture that lives in a subspace: x = U z + noise with U orthonormal has exact latents
under the encoder Uᵀ, so latent sampling and the latent likelihood have closed forms (DESIGN.md §7); and the first
stage's loss, KL and scale factor against their formulas."""

import math

import pytest
import torch

from scoresde import VPSDE, GaussianMixture, sample
from scoresde.autoencoder import (
    AutoencoderLoss,
    ConvAutoencoder,
    LatentCodec,
    LinearAutoencoder,
    latent_log_likelihood,
)
from scoresde.metrics import frechet_gaussian

F64 = torch.float64
D, K, TAU = 12, 3, 0.05


def _subspace_problem():
    """A 3-D mixture embedded in R^12 by an orthonormal U, plus N(0, tau² I) noise in every direction."""
    latent = GaussianMixture.random(K, k=3, spread=1.5, cond=10, scale=0.4, seed=3)
    U, _ = torch.linalg.qr(torch.randn(D, K, generator=torch.Generator().manual_seed(1), dtype=F64))
    data = GaussianMixture(latent.weights, latent.means @ U.T, U @ latent.covs @ U.T + TAU**2 * torch.eye(D, dtype=F64))
    # the law of the encoded data Uᵀ x: the latent mixture plus the in-subspace part of the noise
    encoded = GaussianMixture(latent.weights, latent.means, latent.covs + TAU**2 * torch.eye(K, dtype=F64))
    return data, encoded, LinearAutoencoder(U, TAU)


def _scaled(mixture: GaussianMixture, s: float) -> GaussianMixture:
    return GaussianMixture(mixture.weights, s * mixture.means, s**2 * mixture.covs)


def test_latent_samples_decode_to_the_data_up_to_the_off_subspace_noise():
    data, encoded, ae = _subspace_problem()
    codec = LatentCodec(ae)
    train = data.sample(20000, generator=torch.Generator().manual_seed(0), dtype=F64)
    s = codec.fit_scale(train)
    assert abs(float(codec.to_latent(train).std()) - 1.0) < 1e-9  # the scale factor makes the latents unit-spread
    sde, n = VPSDE(), 4000
    res = sample(_scaled(encoded, s).score_fn(sde), sde, (n, K), solver="euler_maruyama", steps=500,
                 generator=torch.Generator().manual_seed(1), dtype=F64)
    decoded = codec.to_data(res.x)
    exact = data.sample(n, generator=torch.Generator().manual_seed(2), dtype=F64)
    fd, floor = frechet_gaussian(decoded, data.mean, data.cov), frechet_gaussian(exact, data.mean, data.cov)
    # decoded samples lack the noise in the D - k directions off the subspace: FD = (D - k) tau² exactly
    # (measured: 0.0229 against 0.0225, the exact-sample floor 0.0015; the encoded samples: 0.0004, floor 0.0013)
    gap = (D - K) * TAU**2
    assert abs(fd - gap) < 3 * floor + 0.002, (fd, gap, floor)
    # and in the subspace they are exact latents: the encoded decoded samples match the encoded law
    z = ae.encode(decoded)[0]
    ref = encoded.sample(n, generator=torch.Generator().manual_seed(3), dtype=F64)
    assert frechet_gaussian(z, encoded.mean, encoded.cov) < 3 * frechet_gaussian(ref, encoded.mean, encoded.cov) + 2e-3


def test_latent_likelihood_is_the_exact_density_given_the_off_subspace_term():
    data, encoded, ae = _subspace_problem()
    codec = LatentCodec(ae, scale=1.7)
    sde = VPSDE()
    x = data.sample(16, generator=torch.Generator().manual_seed(4), dtype=F64)
    scaled = _scaled(encoded, 1.7)
    T = torch.full((16,), sde.T, dtype=F64)
    res = latent_log_likelihood(codec, scaled.score_fn(sde), sde, x, prior=lambda z: scaled.log_prob(z, T, sde),
                                cutoff="taylor", rtol=1e-8, atol=1e-8)
    # the latent value is the encoded law's density at Uᵀ x, the scale's Jacobian included
    exact_latent = encoded.log_prob(ae.encode(x)[0])
    # (measured: 4e-8 nats; without the Jacobian k log s it is 1.6 off)
    assert torch.allclose(res.latent, exact_latent, atol=1e-5), (res.latent - exact_latent).abs().max()
    # the decoder term is the off-subspace Gaussian, and together they are log p(x)
    B = torch.eye(D, dtype=F64) - ae.U @ ae.U.T
    off = -0.5 * (x @ B).pow(2).sum(1) / TAU**2 - 0.5 * (D - K) * math.log(2 * math.pi * TAU**2)
    assert torch.allclose(res.decoder, off, atol=1e-9)
    assert torch.allclose(res.logp, data.log_prob(x), atol=1e-5), (res.logp - data.log_prob(x)).abs().max()


def test_the_first_stage_loss_is_its_formula():
    torch.manual_seed(0)
    ae = ConvAutoencoder((1, 8, 8), latent_channels=2, channels=8, decoder_std=0.2).double()
    x = torch.rand(5, 1, 8, 8, dtype=F64) * 2 - 1
    eps = torch.randn(5, 2, 4, 4, dtype=F64)
    nll, kl = AutoencoderLoss(kl_weight=0.1).terms(ae, x, eps)
    mean, logvar = ae.encode(x)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    kl_ref = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).flatten(1).sum(1) / 64
    z = mean + (0.5 * logvar).exp() * eps
    nll_ref = -torch.distributions.Normal(ae.decode(z), 0.2).log_prob(x).flatten(1).sum(1) / 64
    assert torch.allclose(kl, kl_ref) and torch.allclose(nll, nll_ref)
    assert torch.allclose(AutoencoderLoss(kl_weight=0.1)(ae, x, eps), (nll_ref + 0.1 * kl_ref).mean())
    assert ae.latent_shape == (2, 4, 4)


def test_the_first_stage_refuses_bad_input():
    with pytest.raises(ValueError, match="orthonormal"):
        LinearAutoencoder(2 * torch.eye(4)[:, :2], 0.1)
    with pytest.raises(ValueError, match="divisible"):
        ConvAutoencoder((1, 6, 6), levels=2)
    with pytest.raises(ValueError, match="kl_weight"):
        AutoencoderLoss(kl_weight=-1.0)
