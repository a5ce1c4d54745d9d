import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402
import torch  # noqa: E402

from pathlib import Path  # noqa: E402

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


# ---- small checkpoints written by `scoresde fit` (module-scoped: one per test module that asks) ----
EXPERIMENTS = Path(__file__).parents[1] / "experiments"


def _fit(root, *args):
    """Run ``scoresde fit`` inside ``root`` (the experiments write under ./runs) and return its last checkpoint."""
    from scoresde.lightning.cli import cli

    cwd = os.getcwd()
    os.chdir(root)
    try:
        cli(["fit", *args, "--trainer.enable_progress_bar", "false"])
    finally:
        os.chdir(cwd)
    return next(root.rglob("last.ckpt"))


@pytest.fixture(scope="module")
def toy_ckpt(tmp_path_factory):
    return _fit(tmp_path_factory.mktemp("fit"), "--config", str(EXPERIMENTS / "toy_vp.yaml"), "--trainer.max_steps", "30",
                "--model.sample_steps", "10")


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory):
    return _fit(tmp_path_factory.mktemp("fit_digits"), "--config", str(EXPERIMENTS / "digits_vp.yaml"),
                "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1", "--model.sample_steps", "3")


@pytest.fixture(scope="module")
def digits_cond_ckpt(tmp_path_factory):
    return _fit(tmp_path_factory.mktemp("fit_digits_cond"), "--config", str(EXPERIMENTS / "digits_vp_cond.yaml"),
                "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1", "--model.sample_steps", "3")
