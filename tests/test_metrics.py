"""The sample metrics of the fit summary against closed forms, and the case they exist for: a smeared model that the
Fréchet distance and mode masses call good."""

import math

import numpy as np
import torch

from scoresde import GaussianMixture
from scoresde import metrics as M


def test_sliced_wasserstein_of_two_shifted_gaussians_is_the_shift_over_root_d():
    # 1-D projections of N(0, I) and N(mu, I) on a unit direction theta are N(0, 1) and N(theta·mu, 1): W2² = (theta·mu)²,
    # and E (theta·mu)² = |mu|² / D over uniform directions, so SW2 = |mu| / sqrt(D).
    g = torch.Generator().manual_seed(0)
    for dim in (2, 5):
        mu = torch.zeros(dim, dtype=torch.float64)
        mu[0] = 1.5
        x = torch.randn(20_000, dim, generator=g, dtype=torch.float64)
        y = torch.randn(20_000, dim, generator=g, dtype=torch.float64) + mu
        sw = M.sliced_wasserstein(x, y, n_projections=500, generator=g)
        assert abs(sw - 1.5 / math.sqrt(dim)) < 0.02, (dim, sw)


def test_cross_entropy_gap_of_a_widened_gaussian_is_its_closed_form():
    # p_0 = N(0, I) in D = 2; samples from N(0, s² I): E log p_0 = -D s²/2 - D/2 log 2π, the reference -D/2 - ...,
    # so the gap is (s² - 1) / (2 ln 2) bits/dim.
    g = torch.Generator().manual_seed(1)
    p0 = GaussianMixture([1.0], [[0.0, 0.0]], [[1.0, 1.0]])  # one component, diagonal covariance
    reference = torch.randn(400_000, 2, generator=g, dtype=torch.float64)
    wide = math.sqrt(2.0) * torch.randn(400_000, 2, generator=g, dtype=torch.float64)
    assert abs(M.cross_entropy_gap(wide, p0, reference) - 1 / (2 * math.log(2))) < 0.01
    assert abs(M.cross_entropy_gap(torch.randn(400_000, 2, generator=g, dtype=torch.float64), p0, reference)) < 0.01


def test_cross_entropy_gap_sees_mass_between_the_modes_that_frechet_and_mode_mass_cannot():
    ring, g, n = GaussianMixture.ring(), torch.Generator().manual_seed(0), 4000
    smeared = ring.sample(n, generator=g)
    k = int(0.15 * n)  # 15% of the mass spread evenly around the circle the modes sit on
    angle = 2 * math.pi * torch.rand(k, generator=g, dtype=torch.float64)
    smeared[:k] = (2.0 * torch.stack([angle.cos(), angle.sin()], 1)).to(smeared.dtype)
    exact = [ring.sample(n, generator=g) for _ in range(20)]
    reference = torch.cat([ring.sample(n, generator=g) for _ in range(20)])
    floor = {
        "frechet": np.percentile([M.frechet_gaussian(e, ring.mean, ring.cov) for e in exact], 90),
        "mode_mass": np.percentile([M.mode_mass_error(e, ring) for e in exact], 90),
        "cross_entropy": np.percentile([abs(M.cross_entropy_gap(e, ring, reference)) for e in exact], 90),
    }
    assert M.frechet_gaussian(smeared, ring.mean, ring.cov) < floor["frechet"]
    assert M.mode_mass_error(smeared, ring) < floor["mode_mass"]
    assert M.cross_entropy_gap(smeared, ring, reference) > 10 * floor["cross_entropy"]
