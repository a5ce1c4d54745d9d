"""Image metrics: the Fréchet distance against its closed form, precision/recall on cases with known answers, the
reference-statistics cache, the shipped digits features and `scoresde evaluate` end to end."""

import json
import math

import numpy as np
import pytest
import torch

from scoresde import evaluation
from scoresde.evaluation import DigitsFeatureNet, ReferenceStats, image_metrics, precision_recall
from scoresde.lightning import DigitsDataModule
from scoresde.lightning.cli import main


def _exact_moments(n, mean, cov, seed):
    """``n`` points whose sample mean and (unbiased) covariance are exactly ``mean`` and ``cov``."""
    z = torch.randn(n, len(mean), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(0)
    L = torch.linalg.cholesky(torch.cov(z.T))
    z = torch.linalg.solve_triangular(L, z.T, upper=False).T  # sample covariance exactly I
    return mean + z @ torch.linalg.cholesky(cov).T


def _closed_form(m1, C1, m2, C2):
    """‖m1 - m2‖² + tr(C1 + C2 - 2 (C1^½ C2 C1^½)^½), from eigendecompositions in float64."""
    lam, U = torch.linalg.eigh(C1)
    S = U @ torch.diag(lam.sqrt()) @ U.T
    cross = torch.linalg.eigvalsh(S @ C2 @ S).clamp_min(0).sqrt().sum()
    return float((m1 - m2).pow(2).sum() + C1.trace() + C2.trace() - 2 * cross)


def _random_gaussian(d, seed):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    return torch.randn(d, generator=g, dtype=torch.float64), A @ A.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def _logits(n):
    return torch.randn(n, 10, generator=torch.Generator().manual_seed(9), dtype=torch.float64)


@pytest.mark.parametrize("d", [2, 16, 64])
def test_fid_equals_the_closed_form_on_gaussian_features(d):
    (m1, C1), (m2, C2) = _random_gaussian(d, 0), _random_gaussian(d, 1)
    want = _closed_form(m1, C1, m2, C2)
    ref = ReferenceStats.from_features("test", _exact_moments(500, m1, C1, 2))
    got = image_metrics(ref, _exact_moments(400, m2, C2, 3), _logits(400))["fid"]
    assert abs(got - want) <= 1e-6 * max(1.0, want), (got, want)
    # from a precomputed mean and covariance, as reference repositories ship them
    got2 = image_metrics(ReferenceStats.from_mean_cov("test", m1, C1), _exact_moments(400, m2, C2, 3), _logits(400))
    assert abs(got2["fid"] - want) <= 1e-6 * max(1.0, want)
    assert "kid" not in got2  # no reference features: KID and precision/recall cannot be computed


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    m, C = _random_gaussian(8, 0)
    x = _exact_moments(300, m, C, 1)
    ref = ReferenceStats.from_features("test", x)
    assert abs(image_metrics(ref, x, _logits(300))["fid"]) < 1e-8
    shifted = image_metrics(ref, x + 0.5, _logits(300))["fid"]
    assert abs(shifted - 8 * 0.25) < 1e-8  # ‖Δm‖² = d · 0.5²


def test_precision_and_recall_on_known_cases():
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0]])
    fake = torch.tensor([[0.5], [10.0]])
    # k = 1: every real ball has radius 1, so 0.5 is inside and 10 is not; the two fake balls have radius 9.5
    assert precision_recall(real, fake, k=1) == (0.5, 1.0)
    far = torch.tensor([[100.0], [101.0], [102.0]])
    assert precision_recall(real, far, k=1) == (0.0, 0.0)
    same = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    assert precision_recall(same, same, k=3) == (1.0, 1.0)
    with pytest.raises(ValueError, match="more than 3 points"):
        precision_recall(real[:3], fake, k=3)


def test_reference_statistics_round_trip_through_the_cache(tmp_path):
    x = torch.randn(600, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.randn(300, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.2
    ref = ReferenceStats.from_features("digits", x, max_features=500)
    assert ref.features.shape == (500, 6) and ref.count == 600
    assert torch.allclose(ref.cov, torch.cov(x.T), atol=1e-12) and torch.allclose(ref.mean, x.mean(0))
    back = ReferenceStats.load(ref.save(tmp_path / "ref.npz"))
    assert back.features_name == "digits" and back.count == 600
    assert torch.equal(back.outer_sum, ref.outer_sum) and torch.equal(back.features, ref.features)
    assert image_metrics(back, y, _logits(300)) == image_metrics(ref, y, _logits(300))  # same seed, same KID subsets
    calls = []

    def extract(images):
        calls.append(len(images))
        return torch.as_tensor(images, dtype=torch.float64).flatten(1), _logits(len(images))

    cache = tmp_path / "cache.npz"
    first = evaluation.reference_stats(extract, "digits", x.numpy(), cache)
    second = evaluation.reference_stats(extract, "digits", x.numpy(), cache)
    assert calls == [200, 200, 200] and torch.equal(first.outer_sum, second.outer_sum)  # the second read the file
    with pytest.raises(ValueError, match="holds digits statistics, not inception"):
        evaluation.reference_stats(extract, "inception", x.numpy(), cache)


def test_the_shipped_digits_features_classify_and_separate():
    dm = DigitsDataModule(labels=True)
    net = DigitsFeatureNet()
    net.load_state_dict(torch.load(evaluation.resources.files("scoresde") / "data" / "digits_features.pt",
                                   weights_only=True))
    with torch.no_grad():
        acc = float((net(dm.test_raw.float()).argmax(1) == dm.test_labels).float().mean())
    assert acc >= 0.95, acc
    extract = evaluation.feature_extractor("digits")
    ref = ReferenceStats.from_features("digits", evaluation.extract_features(extract, dm.train_raw)[0])
    test = image_metrics(ref, *evaluation.extract_features(extract, dm.test_raw))
    noise = torch.randint(0, 17, (297, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    bad = image_metrics(ref, *evaluation.extract_features(extract, noise))
    assert test["fid"] < 15 and bad["fid"] > 20 * test["fid"], (test["fid"], bad["fid"])
    assert test["precision"] > 0.85 and test["recall"] > 0.85 and bad["precision"] < 0.05
    assert test["inception_score"] > 7 and bad["inception_score"] < 3  # 10 classes: at most 10


def test_extractor_plumbing_with_random_weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "random.pt"
    torch.save(DigitsFeatureNet().state_dict(), path)
    extract = evaluation.feature_extractor("digits", path)
    images = torch.randint(0, 17, (5, 1, 8, 8), dtype=torch.uint8)
    f, logits = extract(images)
    assert f.shape == (5, 64) and logits.shape == (5, 10) and f.dtype == torch.float64
    with pytest.raises(ValueError, match=r"take \(N, 1, 8, 8\)"):
        extract(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="grey levels 0 … 16"):
        extract(torch.full((2, 1, 8, 8), 255, dtype=torch.uint8))


def test_inception_weights_are_asked_for_in_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("SCORESDE_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(FileNotFoundError, match="weights-inception-2015-12-05-6726825d.pth .no weights file was given"):
        evaluation.feature_extractor("inception")
    with pytest.raises(ValueError, match="unknown features 'clip'"):
        evaluation.feature_extractor("clip")


def test_evaluate_command_on_the_digits(tmp_path, monkeypatch, capsys):
    """The test split as 'samples' against the train split: the numbers of the library call, and the cache used."""
    monkeypatch.setenv("SCORESDE_CACHE", str(tmp_path / "cache"))
    dm = DigitsDataModule()
    np.savez(tmp_path / "samples.npz", samples=dm.test_raw.numpy())
    main(["evaluate", "--samples", str(tmp_path / "samples.npz"), "--data", "DigitsDataModule",
          "--out", str(tmp_path / "e")])
    record = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert record["features"] == "digits"
    extract = evaluation.feature_extractor("digits")
    ref = ReferenceStats.from_features("digits", evaluation.extract_features(extract, dm.train_raw)[0])
    want = image_metrics(ref, *evaluation.extract_features(extract, dm.test_raw))
    assert math.isclose(record["fid"], want["fid"], rel_tol=1e-9) and record["kid"] == want["kid"]
    assert len(list((tmp_path / "cache").glob("digits-*.npz"))) == 1
    # channels-last images and a reference .npz give the same numbers
    np.savez(tmp_path / "last.npz", samples=dm.test_raw.numpy().transpose(0, 2, 3, 1))
    np.savez(tmp_path / "train.npz", train=dm.train_raw.numpy())
    main(["evaluate", "--samples", str(tmp_path / "last.npz"), "--reference", str(tmp_path / "train.npz"),
          "--out", str(tmp_path / "e2")])
    assert json.loads((tmp_path / "e2" / "metrics.json").read_text())["fid"] == record["fid"]


def test_evaluate_draws_from_a_checkpoint_exactly_as_sample_does(digits_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("SCORESDE_CACHE", str(tmp_path / "cache"))
    common = ["--ckpt", str(digits_ckpt), "--n", "24", "--steps", "5", "--solver", "ddim", "--progress", "false"]
    main(["evaluate", *common, "--data", "DigitsDataModule", "--kid-subset-size", "24", "--out", str(tmp_path / "e")])
    main(["sample", *common, "--out", str(tmp_path / "s")])
    drawn = np.load(tmp_path / "e" / "samples" / "samples.npz")["samples"]
    assert np.array_equal(drawn, np.load(tmp_path / "s" / "samples.npz")["samples"])
    record = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert record["n_samples"] == 24 and record["features"] == "digits"
    assert record["fid"] > 9.67  # a barely trained model is further from the train split than the held-out test split


def test_an_image_folder_reads_as_the_same_images(tmp_path):
    """PNG files (8-bit grey) load as the array they were written from, in path order."""
    from PIL import Image

    from scoresde.lightning.commands.evaluate import load_images

    x = np.random.default_rng(0).integers(0, 256, (5, 1, 6, 6), dtype=np.uint8)
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    for i, img in enumerate(x):
        Image.fromarray(img[0]).save(tmp_path / "imgs" / ("sub" if i > 2 else "") / f"{i}.png")
    assert np.array_equal(load_images(tmp_path / "imgs", "--reference"), x)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no samples.npz, and found 0 images"):
        load_images(tmp_path / "empty", "--reference")
