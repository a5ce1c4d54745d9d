"""The latent diffusion pipeline through the CLI: `scoresde autoencoder fit` records the scale factor, `scoresde fit`
trains on the first stage's latents and writes one checkpoint holding both stages, `scoresde sample` decodes, and
the commands that work on pixels refuse a latent model with one clear line."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from scoresde.lightning.cli import autoencoder_cli, run
from scoresde.lightning.commands._common import load_model
from scoresde.noise import derive_seeds

EXPERIMENTS = Path(__file__).parents[1] / "experiments"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "1"]


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """A first stage (20 steps) and a latent model on it (5 steps), trained in one folder as the recipes say."""
    import os

    root = tmp_path_factory.mktemp("latent")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        autoencoder_cli(["fit", "--config", str(EXPERIMENTS / "autoencoders" / "digits.yaml"), "--trainer.max_steps",
                         "20", *QUIET])
        run(["fit", "--config", str(EXPERIMENTS / "digits_latent.yaml"), "--trainer.max_steps", "5",
             "--model.sample_steps", "3", *QUIET])
    finally:
        os.chdir(cwd)
    return root / "runs/digits_ae/checkpoints/last.ckpt", root / "runs/digits_latent/checkpoints/last.ckpt"


def test_the_first_stage_records_its_scale_factor(stages):
    from scoresde.lightning.autoencoder import AutoencoderModule
    from scoresde.lightning.data import DigitsDataModule

    ae_ckpt, _ = stages
    saved = torch.load(ae_ckpt, map_location="cpu", weights_only=False)
    ae = AutoencoderModule.load_from_checkpoint(ae_ckpt, weights_only=False).eval()
    dm = DigitsDataModule()
    raw = dm.train_raw[:2048]
    mean, _ = ae.autoencoder.encode(dm.transform.forward(raw, u=torch.full(raw.shape, 0.5)))
    assert abs(saved["latent_scale"] - 1.0 / float(mean.double().std())) < 1e-6 * saved["latent_scale"]
    assert float(saved["state_dict"]["codec.scale"]) == saved["latent_scale"]  # one scale, not two


def test_one_checkpoint_holds_both_stages_and_sample_decodes(stages, tmp_path):
    ae_ckpt, latent_ckpt = stages
    first = torch.load(ae_ckpt, map_location="cpu", weights_only=False)
    assert torch.load(latent_ckpt, map_location="cpu", weights_only=False)["hyper_parameters"]["autoencoder_ckpt"] is None
    moved = tmp_path / "elsewhere.ckpt"
    shutil.move(ae_ckpt, moved)  # the latent checkpoint needs no other file
    try:
        model = load_model(latent_ckpt, latent=True)
        assert model.sample_shape == (2, 4, 4) and model.data_shape == (1, 8, 8)
        assert float(model.codec.scale) == pytest.approx(first["latent_scale"], rel=1e-12)
        for k, v in model.codec.autoencoder.state_dict().items():
            assert torch.equal(v, first["state_dict"][f"codec.autoencoder.{k}"]), k
        out = tmp_path / "samples"
        run(["sample", "--ckpt", str(latent_ckpt), "--n", "6", "--steps", "3", "--seed", "2", "--progress", "false",
             "--out", str(out)])
        samples = np.load(out / "samples.npz")["samples"]
        assert samples.shape == (6, 1, 8, 8)
        with torch.no_grad():
            ref = model.sample(6, steps=3, seeds=derive_seeds(2, 0, 6))
        assert np.array_equal(samples, model.transform.inverse(ref.x).numpy())
        with pytest.raises(ValueError, match="latent diffusion model"):
            load_model(latent_ckpt)  # what the commands that work on pixels call
        with pytest.raises(ValueError, match="act on pixels"):
            run(["sample", "--ckpt", str(latent_ckpt), "--threshold", "static", "--n", "2", "--out",
                 str(tmp_path / "t")])
    finally:
        shutil.move(moved, ae_ckpt)


def test_likelihood_reports_the_latent_models_joint_density_as_latent_log_likelihood_does(stages, tmp_path):
    from scoresde.autoencoder import latent_log_likelihood
    from scoresde.lightning.commands._common import load_data
    from scoresde.lightning.commands.likelihood import _stream
    from scoresde.likelihood import nats_to_bits_per_dim
    from scoresde.noise import PerSampleNoise, index_seeds

    _, latent_ckpt = stages
    out = tmp_path / "bpd"
    summary = run(["likelihood", "--ckpt", str(latent_ckpt), "--limit", "5", "--batch-size", "3", "--trace",
                   "hutchinson", "--rtol", "1e-4", "--atol", "1e-4", "--progress", "false", "--out", str(out)])
    saved = np.load(out / "likelihood.npz")
    model, dm = load_model(latent_ckpt, latent=True), load_data(None, str(latent_ckpt))
    raw, index = dm.test_raw[:5], torch.arange(5)
    x, log_q = dm.transform.dequantize_points(raw, index, _stream(0, 0))
    ref = latent_log_likelihood(model.codec, model.score_model, model.sde, x, trace="hutchinson", rtol=1e-4,
                                atol=1e-4, noise=PerSampleNoise(index_seeds(_stream(0, 0) + 1, index)))
    bpd = nats_to_bits_per_dim(ref.logp.double() - log_q, 64, dm.transform.bpd_offset).numpy()
    # the same points, draws and probes in blocks of 3 and 2 as in one block of 5 (per-point step control)
    np.testing.assert_allclose(saved["bpd"][:, 0], bpd, rtol=0, atol=1e-4)
    np.testing.assert_allclose(saved["latent"][:, 0] + saved["decoder"][:, 0], saved["logp"][:, 0], atol=1e-9)
    assert summary["prior"] == "standard" and "elbo_bpd" not in summary and "bpd_other" not in summary
    total = summary["latent_bpd"] + summary["decoder_bpd"]
    assert abs(total - (-saved["logp"].mean() / (64 * np.log(2)))) < 1e-9


def test_a_latent_model_without_its_first_stage_is_explained(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="scoresde autoencoder fit"):
        run(["fit", "--config", str(EXPERIMENTS / "digits_latent.yaml"), "--trainer.fast_dev_run", "true"])
