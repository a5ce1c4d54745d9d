"""The commands take pretrained models wherever they take --ckpt: a diffusers directory samples through the CLI
exactly as scoresde.sample does on scoresde.hub.from_diffusers's model."""

import numpy as np
import pytest
import torch

from scoresde import DataTransform, sample
from scoresde.hub import from_diffusers
from scoresde.lightning.cli import main
from scoresde.noise import derive_seeds

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hub") / "ddpm"
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, norm_num_groups=8,
                                 block_out_channels=(16, 32), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(path)
    return path


@pytest.mark.parametrize("spec", ["diffusers:{}", "{}"])  # the prefix, or recognised as a directory
def test_cli_samples_equal_the_library_on_the_hub_model(unet_dir, tmp_path, spec):
    out = tmp_path / "s"
    main(["sample", "--ckpt", spec.format(unet_dir), "--solver", "ddim", "--grid", "trailing", "--steps", "5",
          "--n", "4", "--block", "0", "--progress", "false", "--out", str(out)])
    got = np.load(out / "samples.npz")["samples"]
    model = from_diffusers(unet_dir)
    with torch.no_grad():
        x = sample(model, model.sde, (4, 1, 8, 8), solver="ddim", grid="trailing", steps=5,
                   seeds=derive_seeds(0, 0, 4)).x
    want = DataTransform.discrete(256, -1.0, 1.0).inverse(x).numpy()
    assert got.dtype == np.uint8 and got.shape == (4, 1, 8, 8)
    assert np.array_equal(got, want)
