"""``scoresde likelihood`` and ``scoresde interpolate`` on small checkpoints: outputs, resumption, several processes."""

import csv
import json
import math
import shutil

import numpy as np
import pytest
import torch

from scoresde import GaussianMixture
from scoresde.lightning import ToyDataModule
from scoresde.lightning.cli import run
from scoresde.lightning.commands._common import load_data, load_model
from scoresde.likelihood import diffused_prior, gaussian_logp

FAST = ["--rtol", "1e-4", "--atol", "1e-4", "--progress", "false"]


def _likelihood(ckpt, out, *extra):
    run(["likelihood", "--ckpt", str(ckpt), "--out", str(out), *FAST, *extra])
    return np.load(out / "likelihood.npz"), json.loads((out / "summary.json").read_text())


def test_likelihood_table_resumes_and_does_not_depend_on_batch_size(toy_ckpt, tmp_path, capsys):
    out = tmp_path / "a"
    res, summary = _likelihood(toy_ckpt, out, "--limit", "6", "--batch-size", "4")
    assert res["bpd"].shape == (6, 1) and list(res["index"]) == list(range(6))
    assert summary["bpd"] == pytest.approx(res["bpd"].mean())
    assert summary["bpd_stderr"] == pytest.approx(res["bpd"][:, 0].std(ddof=1) / math.sqrt(6))
    assert summary["trace"] == "exact" and summary["offset"] == 0.0 and summary["nfe"] > 10
    assert "bits/dim" in capsys.readouterr().out
    # The ring's own density, computed here independently; the paired gap is model minus exact.
    raw = ToyDataModule(name="ring").test_raw[:6].double()
    exact = -GaussianMixture.ring().log_prob(raw).numpy() / (2 * math.log(2))
    np.testing.assert_allclose(res["exact_bpd"][:, 0], exact, rtol=1e-12)
    assert summary["gap_to_exact"] == pytest.approx((res["bpd"][:, 0] - exact).mean())
    # Interrupted: one part lost. The rerun computes only that part, and gets the same numbers.
    parts = sorted((out / "parts").glob("shard_*.npz"))
    assert len(parts) == 2
    parts[1].unlink()
    again, _ = _likelihood(toy_ckpt, out, "--limit", "6", "--batch-size", "4")
    np.testing.assert_array_equal(again["bpd"], res["bpd"])
    # Another batch size: each point meets the tolerance on its own, but the float32 network rounds differently at
    # another batch size and the 30-step model's flow carries that to a few 1e-2 bits/dim (2.8e-2 seen on one
    # machine; --block makes the points equal bit for bit: the next test).
    other, _ = _likelihood(toy_ckpt, tmp_path / "b", "--limit", "6", "--batch-size", "6")
    np.testing.assert_allclose(other["bpd"], res["bpd"], atol=0.06)
    # Retrained in place: the same checkpoint path with other weights is refused, not silently resumed.
    ckpt = torch.load(toy_ckpt, map_location="cpu", weights_only=False)
    first = next(iter(ckpt["state_dict"]))
    ckpt["state_dict"][first] = ckpt["state_dict"][first] + 1.0
    retrained = tmp_path / "model.ckpt"
    shutil.copy(toy_ckpt, retrained)
    _likelihood(retrained, tmp_path / "c", "--limit", "2")
    torch.save(ckpt, retrained)
    with pytest.raises(ValueError, match="other settings \\(ckpt_sha256 differ\\)"):
        _likelihood(retrained, tmp_path / "c", "--limit", "2")
    with pytest.raises(ValueError, match="other settings \\(rtol differ\\)"):
        run(["likelihood", "--ckpt", str(toy_ckpt), "--out", str(out), "--limit", "6", "--batch-size", "4",
              "--rtol", "1e-3", "--atol", "1e-4", "--progress", "false"])


def test_the_checkpoint_carries_the_fitted_prior_and_the_table_shows_both_priors(toy_ckpt, tmp_path, capsys):
    """`scoresde fit` stores the train split's Gaussian diffused to T in the checkpoint; `scoresde likelihood` uses
    it by default and reports the same solves under N(0, I) beside it, which is what `--prior standard` reports as
    its bits/dim."""
    model, dm = load_model(toy_ckpt), load_data(None, str(toy_ckpt))
    expected = diffused_prior(model.sde, *dm.train_moments())
    assert model.fitted_prior is not None
    assert torch.equal(model.fitted_prior.mean, expected.mean) and torch.equal(model.fitted_prior.chol, expected.chol)
    fitted, s_fitted = _likelihood(toy_ckpt, tmp_path / "f", "--limit", "6")
    table = capsys.readouterr().out
    assert "the train split's Gaussian (full covariance) diffused to T (from the checkpoint)" in table and "N(0, prior_std" in table
    standard, s_standard = _likelihood(toy_ckpt, tmp_path / "s", "--limit", "6", "--prior", "standard")
    assert s_fitted["prior"] == "fitted" and s_standard["prior"] == "standard"
    np.testing.assert_array_equal(standard["integral"], fitted["integral"])  # the prior does not enter the solve
    np.testing.assert_allclose(standard["bpd"], fitted["bpd_other"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(fitted["bpd"], standard["bpd_other"], rtol=0, atol=1e-6)
    assert s_fitted["bpd_other"] == pytest.approx(s_standard["bpd"], abs=1e-6)
    # on the VP SDE alpha_T ≈ 6.7e-3, so the two priors differ little here (by ~1e-5 nats; more on sub-VP and VE)
    assert np.abs(fitted["prior"] - standard["prior"]).max() > 5e-6
    # the variational bound beside the ODE value: per point with its standard error, and the paired gap
    assert fitted["elbo_bpd"].shape == (6, 1) and (fitted["elbo_se"] > 0).all()
    assert s_fitted["elbo_gap"] == pytest.approx((fitted["elbo_bpd"] - fitted["bpd"]).mean())
    assert "the reverse SDE's variational bound" in table
    with pytest.raises(ValueError, match="--elbo must be an even number"):
        _likelihood(toy_ckpt, tmp_path / "x", "--limit", "6", "--elbo", "3")
    with pytest.raises(ValueError, match="--prior must be fitted or standard"):
        _likelihood(toy_ckpt, tmp_path / "x", "--limit", "6", "--prior", "data")


def test_fixed_call_shapes_make_every_point_independent_of_the_batch_size(toy_ckpt, tmp_path):
    """With a step size per point and the network always called on blocks of 64 rows (--block), a point's bits/dim
    and evaluations are the same in blocks of 1, 4 and 6 points, bit for bit. Without --block the float32 network's
    rounding changes with the batch size and the adaptive steps carry it to ~1e-2 bits/dim on this model (measured;
    one step size for the batch: ~1.5e-2)."""
    runs = [_likelihood(toy_ckpt, tmp_path / str(b), "--limit", "6", "--batch-size", str(b), "--block", "64")[0]
            for b in (1, 4, 6)]
    for other in runs[1:]:
        np.testing.assert_array_equal(other["bpd"], runs[0]["bpd"])
        np.testing.assert_array_equal(other["nfe"], runs[0]["nfe"])
    assert len(set(runs[0]["nfe"].ravel().tolist())) > 1  # the points took different numbers of evaluations


def test_likelihood_on_two_processes_matches_one(toy_ckpt, tmp_path):
    """7 points over 2 ranks in blocks of 3: the ranks run different numbers of blocks (2 and 1) and of solver steps,
    and must neither hang nor lose or duplicate points."""
    one, _ = _likelihood(toy_ckpt, tmp_path / "one", "--limit", "7", "--batch-size", "3")
    two, _ = _likelihood(toy_ckpt, tmp_path / "two", "--limit", "7", "--batch-size", "3", "--devices", "2",
                         "--accelerator", "cpu", "--strategy", "ddp_fork")
    assert list(two["index"]) == list(range(7))
    np.testing.assert_array_equal(two["bpd"], one["bpd"])  # the same blocks of points are solved: equal bit for bit
    # With fixed call shapes, each point alone on one process equals it in blocks of 3 across two, bit for bit.
    alone, _ = _likelihood(toy_ckpt, tmp_path / "alone", "--limit", "7", "--batch-size", "1", "--block", "64")
    spread, _ = _likelihood(toy_ckpt, tmp_path / "spread", "--limit", "7", "--batch-size", "3", "--block", "64",
                            "--devices", "2", "--accelerator", "cpu", "--strategy", "ddp_fork")
    np.testing.assert_array_equal(spread["bpd"], alone["bpd"])


def test_digits_bits_per_dim_with_repeats_and_offset(digits_ckpt, tmp_path):
    res, summary = _likelihood(digits_ckpt, tmp_path / "d", "--limit", "4", "--repeats", "2", "--trace", "hutchinson",
                               "--batch-size", "4", "--n-probes", "2", "--elbo", "0")
    # each point's own Hutchinson standard error over its 2 probes, and their RMS in the table
    assert res["hutchinson_se"].shape == (4, 2) and (res["hutchinson_se"] > 0).all()
    assert summary["hutchinson_stderr"] == pytest.approx(np.sqrt((res["hutchinson_se"] ** 2).mean()))
    assert res["bpd"].shape == (4, 2) and not np.array_equal(res["bpd"][:, 0], res["bpd"][:, 1])
    assert summary["offset"] == pytest.approx(math.log2(17) - 1) and summary["repeats"] == 2
    np.testing.assert_allclose(res["bpd"], -(res["prior"] + res["integral"]) / (64 * math.log(2)) + summary["offset"])
    # The Gaussian baseline: the same points and dequantization draws, paired gain.
    assert res["gaussian_bpd"].shape == (4, 2)
    gain = res["gaussian_bpd"].mean(1) - res["bpd"].mean(1)
    assert summary["gain_over_gaussian"] == pytest.approx(gain.mean())
    assert summary["gaussian_bpd"] == pytest.approx(res["gaussian_bpd"].mean())


def test_truncated_normal_dequantization_subtracts_log_q(digits_ckpt, tmp_path):
    res, summary = _likelihood(digits_ckpt, tmp_path / "tn", "--limit", "3", "--trace", "hutchinson", "--elbo", "0",
                               "--dequantization", "truncated_normal:0.25")
    assert summary["dequantization"] == "TruncatedNormalDequantizer(std=0.25)"
    assert (res["log_q"] != 0).all()  # a density on the bin other than 1
    np.testing.assert_allclose(res["bpd"], -(res["prior"] + res["integral"] - res["log_q"]) / (64 * math.log(2))
                               + summary["offset"], rtol=1e-6)
    for bad in ("gaussian", "truncated_normal:-1"):
        with pytest.raises(ValueError, match="--dequantization"):
            _likelihood(digits_ckpt, tmp_path / "bad", "--limit", "3", "--dequantization", bad)


def test_gaussian_baseline_is_the_exact_fitted_density():
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(0)
    train = torch.from_numpy(rng.normal(size=(500, 5)) @ rng.normal(size=(5, 5)) + 3.0)
    x = torch.from_numpy(rng.normal(size=(7, 5)))
    mean, cov = train.numpy().mean(0), np.cov(train.numpy().T, bias=True)
    np.testing.assert_allclose(gaussian_logp(train, x).numpy(), multivariate_normal(mean, cov).logpdf(x.numpy()), rtol=1e-10)
    with pytest.raises(ValueError, match="needs more than 5 train points"):
        gaussian_logp(train[:5], x)
    with pytest.raises(ValueError, match="singular"):
        gaussian_logp(torch.cat([train[:, :4], torch.zeros(500, 1)], 1), x)


def test_likelihood_refuses_data_with_another_transform(toy_ckpt, tmp_path):
    with pytest.raises(ValueError, match="trained on data mapped by .* but --data maps by"):
        run(["likelihood", "--ckpt", str(toy_ckpt), "--data", "DigitsDataModule", "--out", str(tmp_path), *FAST])
    with pytest.raises(ValueError, match="is not a DataModule"):
        run(["likelihood", "--ckpt", str(toy_ckpt), "--data", "[1, 2]", "--out", str(tmp_path), *FAST])


def test_interpolation_study(toy_ckpt, tmp_path, capsys):
    out = tmp_path / "i"
    run(["interpolate", "--ckpt", str(toy_ckpt), "--pairs", "2", "--steps", "3", "--temperatures", "[1.0, 0.5]", "--progress", "false",
          "--rtol", "1e-6", "--atol", "1e-6", "--out", str(out)])
    res = np.load(out / "interpolation.npz")
    assert res["x"].shape == (4, 2, 3, 2) and res["bpd"].shape == (4, 2, 3)  # (kinds × temperatures, K, M, D)
    # A 30-step float32 model: its flow near t_eps is stiff, so the round trip is only good to ~1e-2 here; the
    # 1e-4 bound at tight tolerance is checked against the analytic score in test_likelihood.py.
    assert res["roundtrip_rel_error"].max() < 3e-2
    ends = res["endpoints"]
    for first, end in ((res["x"][0][:, 0], ends[0::2]), (res["x"][0][:, -1], ends[1::2])):  # slerp at T = 1 ends at x_0, x_1
        assert (np.linalg.norm(first - end, axis=1) / np.linalg.norm(end, axis=1)).max() < 3e-2
    with open(out / "interpolation.csv") as fh:
        assert sum(1 for _ in csv.reader(fh)) == 1 + 4 * 2 * 3
    assert (out / "interpolation.png").stat().st_size > 10_000
    assert "round trip" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--pairs 5000 needs 10000 points"):
        run(["interpolate", "--ckpt", str(toy_ckpt), "--pairs", "5000", "--out", str(out)])
