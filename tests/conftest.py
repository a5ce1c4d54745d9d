import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402
import torch  # noqa: E402

from scoresde import VESDE, VPSDE, GaussianMixture, SubVPSDE  # noqa: E402


def all_sdes():
    """The three SDEs with settings that suit data of scale ~2 (VE sigma_max = largest pairwise distance)."""
    return [VPSDE(), SubVPSDE(), VESDE(sigma_min=0.01, sigma_max=5.0)]


SDE_IDS = ["vp", "subvp", "ve"]


@pytest.fixture(params=range(3), ids=SDE_IDS)
def sde(request):
    return all_sdes()[request.param]


@pytest.fixture
def ring():
    return GaussianMixture.ring()


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
