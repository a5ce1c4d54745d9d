"""`scoresde sample` with classes, guidance and thresholding, `scoresde classifier fit` and `scoresde inpaint`: the
commands give exactly what the library calls give, keep the observed pixels, and refuse bad input with a clear message."""

import os

import numpy as np
import pytest
import torch

from scoresde.guidance import classifier_guidance, threshold
from scoresde.lightning.cli import run
from scoresde.lightning.commands.inpaint import load_mask
from scoresde.lightning.commands._common import load_classifier, load_data, load_model
from scoresde.noise import derive_seeds

from .conftest import EXPERIMENTS


def _run(*args):
    run([*args, "--progress", "false"])


def _library(ckpt, n, labels, **kw):
    model = load_model(ckpt)
    res = model.sample(n, solver="ddim", steps=4, seeds=derive_seeds(0, 0, n), labels=labels, **kw)
    return model.transform.inverse(res.x).numpy()


def test_class_conditional_sampling_matches_the_library(digits_cond_ckpt, tmp_path):
    _run("sample", "--ckpt", str(digits_cond_ckpt), "--class", "0,3", "--guidance-scale", "2", "--n", "6",
         "--solver", "ddim", "--steps", "4", "--out", str(tmp_path / "s"))
    out = np.load(tmp_path / "s" / "samples.npz")
    assert out["labels"].tolist() == [0, 3, 0, 3, 0, 3]
    expected = _library(digits_cond_ckpt, 6, torch.tensor([0, 3, 0, 3, 0, 3]), guidance_scale=2.0)
    assert np.array_equal(out["samples"], expected)
    assert (tmp_path / "s" / "samples.png").stat().st_size > 1000
    # "all" cycles through the ten classes
    _run("sample", "--ckpt", str(digits_cond_ckpt), "--class", "all", "--n", "12", "--solver", "ddim", "--steps", "2",
         "--out", str(tmp_path / "all"))
    assert np.load(tmp_path / "all" / "samples.npz")["labels"].tolist() == [*range(10), 0, 1]


def test_thresholded_sampling_matches_the_library(digits_ckpt, tmp_path):
    _run("sample", "--ckpt", str(digits_ckpt), "--threshold", "dynamic", "--n", "4", "--solver", "ddim", "--steps", "4",
         "--out", str(tmp_path / "t"))
    model = load_model(digits_ckpt)
    expected = _library(digits_ckpt, 4, None,
                        score_transform=lambda s: threshold(s, model.sde, "dynamic", percentile=0.995, low=-1.0, high=1.0))
    assert np.array_equal(np.load(tmp_path / "t" / "samples.npz")["samples"], expected)


def test_classifier_fit_and_classifier_guided_sampling(digits_ckpt, tmp_path):
    root = tmp_path / "clf"
    root.mkdir()
    cwd = os.getcwd()
    os.chdir(root)
    try:
        run(["classifier", "fit", "--config", str(EXPERIMENTS / "classifiers" / "digits.yaml"), "--trainer.max_steps", "3",
              "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false"])
    finally:
        os.chdir(cwd)
    clf_ckpt = next(root.rglob("last.ckpt"))
    _run("sample", "--ckpt", str(digits_ckpt), "--classifier", str(clf_ckpt), "--class", "7", "--classifier-scale", "3",
         "--n", "4", "--solver", "ddim", "--steps", "4", "--out", str(tmp_path / "cg"))
    clf = load_classifier(clf_ckpt)
    labels = torch.full((4,), 7)
    expected = _library(digits_ckpt, 4, None, score_transform=lambda s: classifier_guidance(s, clf, labels, 3.0))
    assert np.array_equal(np.load(tmp_path / "cg" / "samples.npz")["samples"], expected)
    plain = _library(digits_ckpt, 4, None)
    assert not np.array_equal(plain, expected)  # the guidance changed the samples
    with pytest.raises(ValueError, match="score model checkpoint"):
        load_classifier(digits_ckpt)


def test_sampling_conditions_are_checked(digits_ckpt, digits_cond_ckpt, tmp_path):
    cases = [
        ((digits_cond_ckpt, "--class", "10"), r"\[0, 10\)"),
        ((digits_cond_ckpt, "--class", "three"), "comma list"),
        ((digits_ckpt, "--class", "3"), "class-conditional"),
        ((digits_ckpt, "--guidance-scale", "2"), "unconditional"),
        ((digits_ckpt, "--threshold", "soft"), "static or dynamic"),
    ]
    for i, ((ckpt, *args), message) in enumerate(cases):
        with pytest.raises(ValueError, match=message):
            _run("sample", "--ckpt", str(ckpt), *args, "--n", "2", "--steps", "2", "--out", str(tmp_path / str(i)))


def test_inpaint_keeps_the_observed_pixels_and_resumes(digits_ckpt, tmp_path):
    out = tmp_path / "inp"
    args = ["inpaint", "--ckpt", str(digits_ckpt), "--mask", "right", "--n", "5", "--batch-size", "2",
            "--solver", "ddim", "--steps", "3", "--method", "repaint", "--resample", "2", "--out", str(out)]
    _run(*args)
    res = np.load(out / "inpainted.npz")
    known = res["mask"].astype(bool)
    assert known[:, :, :4].all() and not known[:, :, 4:].any()
    assert np.array_equal(res["samples"][:, known], res["originals"][:, known])  # observed pixels kept exactly
    assert not np.array_equal(res["samples"][:, ~known], res["originals"][:, ~known])
    dm = load_data(None, digits_ckpt)
    assert np.array_equal(res["originals"], dm.test_raw[:5].numpy())
    assert (out / "inpainted.png").stat().st_size > 1000
    # a rerun finds every shard and redraws nothing; other settings in the same folder are refused
    stamp = (out / "shard_00000.npz").stat().st_mtime_ns
    _run(*args)
    assert (out / "shard_00000.npz").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="other settings"):
        _run(*[a if a != "right" else "left" for a in args])


def test_inpaint_by_smc_keeps_the_observation_and_does_not_depend_on_the_batch(digits_ckpt, tmp_path):
    args = ["inpaint", "--ckpt", str(digits_ckpt), "--mask", "top", "--n", "5", "--method", "smc", "--particles", "3",
            "--steps", "4", "--seed", "1"]
    runs = []
    for batch in (2, 5):
        out = tmp_path / f"b{batch}"
        _run(*args, "--batch-size", str(batch), "--out", str(out))
        runs.append(np.load(out / "inpainted.npz"))
    known = runs[0]["mask"].astype(bool)
    assert np.array_equal(runs[0]["samples"][:, known], runs[0]["originals"][:, known])
    assert np.array_equal(runs[0]["samples"], runs[1]["samples"])  # per-image streams: the batch changes nothing
    assert len({s.tobytes() for s in runs[0]["samples"]}) == 5
    with pytest.raises(ValueError, match="particles apply to method 'smc'"):
        _run(*[a if a != "smc" else "repaint" for a in args], "--out", str(tmp_path / "bad"))


def test_masks_from_names_and_files(tmp_path):
    assert load_mask("top", (3, 4, 4))[:, :2].sum() == 0 and load_mask("top", (3, 4, 4))[:, 2:].all()
    assert load_mask("center", (1, 8, 8)).sum() == 64 - 16
    m = np.zeros((8, 8), dtype=np.uint8)
    m[:, :3] = 255
    from PIL import Image

    Image.fromarray(m).save(tmp_path / "m.png")
    np.save(tmp_path / "m.npy", m > 0)
    for name in ("m.png", "m.npy"):
        mask = load_mask(str(tmp_path / name), (1, 8, 8))
        assert mask.shape == (1, 8, 8) and mask[0, :, :3].all() and not mask[0, :, 3:].any()
    with pytest.raises(ValueError, match=r"expected \(4, 4\)"):
        load_mask(str(tmp_path / "m.npy"), (1, 4, 4))
    with pytest.raises(FileNotFoundError, match="named mask"):
        load_mask("nowhere.png", (1, 8, 8))
    from scoresde.lightning.commands.inpaint import InpaintConfig, _observation

    with pytest.raises(ValueError, match="colour images"):
        _observation(InpaintConfig(ckpt="model.ckpt", out="out", task="colorize"), (1, 8, 8))
