"""The cascade through the CLI: `scoresde fit` trains stage 1 on the pooled view and stage 2 with augmentation from
the two recipes, `scoresde sample --stage1` runs both stages and draws what `scoresde.cascade.cascade_sample` draws
from the same seeds, and the commands that need one model refuse a stage with one clear line."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from scoresde.cascade import cascade_sample, stage2_score
from scoresde.lightning.cli import run
from scoresde.lightning.commands._common import load_model
from scoresde.noise import derive_seeds

EXPERIMENTS = Path(__file__).parents[1] / "experiments" / "cascade"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "1", "--model.sample_steps", "3"]


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """Both stages, 5 steps each, trained in one folder as the recipes say."""
    root = tmp_path_factory.mktemp("cascade")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for stage in ("low", "super"):
            run(["fit", "--config", str(EXPERIMENTS / f"digits_{stage}.yaml"), "--trainer.max_steps", "5", *QUIET])
    finally:
        os.chdir(cwd)
    return root / "runs/digits_low/checkpoints/last.ckpt", root / "runs/digits_super/checkpoints/last.ckpt"


def test_sample_runs_both_stages_as_cascade_sample_does(stages, tmp_path):
    low_ckpt, super_ckpt = stages
    out = tmp_path / "cascade"
    run(["sample", "--ckpt", str(super_ckpt), "--stage1", str(low_ckpt), "--augmentation", "0.1", "--stage1-steps",
         "4", "--n", "6", "--batch-size", "4", "--seed", "2", "--progress", "false", "--out", str(out)])
    saved = np.load(out / "samples.npz")
    assert saved["samples"].shape == (6, 1, 8, 8) and saved["low_resolution"].shape == (6, 1, 4, 4)
    assert (out / "cascade.png").exists()
    np.testing.assert_array_equal(saved["nfe_per_sample"], np.full(6, 4 + 3))
    low, high = load_model(low_ckpt, block=64, cascade=True), load_model(super_ckpt, block=64, cascade=True)
    with torch.no_grad():
        ref = cascade_sample(low.score_model, stage2_score(high.score_model), high.sde, 6, (1, 4, 4), (1, 8, 8),
                             augmentation=0.1, stage1_options={"solver": "euler_maruyama", "steps": 4},
                             stage2_options={"solver": "euler_maruyama", "steps": 3}, seeds=derive_seeds(2, 0, 6))
    # the same draws whatever the batch size (shards of 4 and 2 here, one batch of 6 there)
    np.testing.assert_array_equal(saved["samples"], high.transform.inverse(ref.x).numpy())
    np.testing.assert_array_equal(saved["low_resolution"], low.transform.inverse(ref.low / 2).numpy())


def test_stage_one_alone_writes_low_resolution_images(stages, tmp_path):
    low_ckpt, _ = stages
    run(["sample", "--ckpt", str(low_ckpt), "--n", "3", "--progress", "false", "--out", str(tmp_path / "low")])
    samples = np.load(tmp_path / "low" / "samples.npz")["samples"]
    assert samples.shape == (3, 1, 4, 4) and samples.dtype == np.uint8


def test_cascade_mistakes_get_one_clear_line(stages, tmp_path):
    low_ckpt, super_ckpt = stages
    base = ["--n", "2", "--progress", "false", "--out", str(tmp_path / "x")]
    with pytest.raises(ValueError, match="give --stage1"):
        run(["sample", "--ckpt", str(super_ckpt), *base])
    with pytest.raises(ValueError, match="super-resolution stage 2"):
        run(["sample", "--ckpt", str(low_ckpt), "--stage1", str(low_ckpt), *base])
    with pytest.raises(ValueError, match=r"samples shape \(1, 8, 8\)"):
        run(["sample", "--ckpt", str(super_ckpt), "--stage1", str(super_ckpt), *base])
    with pytest.raises(ValueError, match=r"--augmentation must lie in \[0, T"):
        run(["sample", "--ckpt", str(super_ckpt), "--stage1", str(low_ckpt), "--augmentation", "1", *base])
    with pytest.raises(ValueError, match="stage of a cascade"):
        run(["likelihood", "--ckpt", str(low_ckpt), "--limit", "4", "--out", str(tmp_path / "bpd")])
