"""``scoresde sample``: loads a checkpoint's EMA weights, writes resumable shards, and does not depend on batch size."""

import json

import numpy as np
import pytest
import torch

from scoresde.lightning.cli import run
from scoresde.lightning.commands._common import load_model

from .conftest import EXPERIMENTS


def _run(ckpt, out, *extra):
    run(["sample", "--ckpt", str(ckpt), "--out", str(out), "--progress", "false", *extra])
    return np.load(out / "samples.npz")["samples"]


def test_sample_writes_npz_and_picture_and_resumes(toy_ckpt, tmp_path):
    out = tmp_path / "s"
    x = _run(toy_ckpt, out, "--solver", "ddim", "--eta", "0.5", "--grid", "log_snr", "--steps", "8", "--n", "50",
             "--batch-size", "16", "--seed", "3")
    assert x.shape == (50, 2) and x.dtype == np.float32 and np.isfinite(x).all()
    assert sorted(p.name for p in out.glob("shard_*.npz")) == [f"shard_{k:05d}.npz" for k in range(4)]
    assert (out / "samples.png").stat().st_size > 10_000
    assert json.loads((out / "sample_config.json").read_text())["options"] == {"eta": 0.5}
    # An interrupted run: drop one shard and run again; only that shard is redrawn, and it is the same.
    (out / "shard_00002.npz").unlink()
    (out / "samples.npz").unlink()
    again = _run(toy_ckpt, out, "--solver", "ddim", "--eta", "0.5", "--grid", "log_snr", "--steps", "8", "--n", "50",
                 "--batch-size", "16", "--seed", "3")
    np.testing.assert_array_equal(again, x)
    # Another batch size gives the same samples (per-sample seeds).
    other = _run(toy_ckpt, tmp_path / "b", "--solver", "ddim", "--options", "{eta: 0.5}", "--grid", "log_snr", "--steps",
                 "8", "--n", "50", "--batch-size", "7", "--seed", "3")
    np.testing.assert_allclose(other, x, rtol=1e-5, atol=1e-5)  # float rounding of batched matmuls only


def test_changed_settings_in_the_same_out_dir_are_refused(toy_ckpt, tmp_path):
    _run(toy_ckpt, tmp_path, "--solver", "dpm_solver_pp", "--steps", "5", "--n", "8")
    with pytest.raises(ValueError, match=r"other settings \(steps differ\); use a new --out"):
        _run(toy_ckpt, tmp_path, "--solver", "dpm_solver_pp", "--steps", "6", "--n", "8")


def test_bad_solver_and_option_are_explained(toy_ckpt, tmp_path):
    with pytest.raises(ValueError, match="unknown solver 'dpm'; available: adaptive_sde, ancestral"):
        _run(toy_ckpt, tmp_path, "--solver", "dpm", "--n", "4")
    with pytest.raises(ValueError, match="has no option"):
        _run(toy_ckpt, tmp_path / "x", "--solver", "ddim", "--order", "2", "--n", "4")
    with pytest.raises(FileNotFoundError, match="not found"):
        _run(tmp_path / "missing.ckpt", tmp_path / "y", "--n", "4")


def test_image_samples_are_uint8_in_the_dataset_range(digits_ckpt, tmp_path):
    x = _run(digits_ckpt, tmp_path, "--solver", "dpm_solver_pp", "--steps", "3", "--n", "6", "--config",
             str(_yaml(tmp_path)))
    assert x.dtype == np.uint8 and x.shape == (6, 1, 8, 8) and x.max() <= 16
    assert (tmp_path / "samples.png").is_file()
    assert json.loads((tmp_path / "sample_config.json").read_text())["options"] == {"order": 3}


def _yaml(tmp_path):
    path = tmp_path.parent / f"{tmp_path.name}.yaml"
    path.write_text("batch_size: 4\noptions:\n  order: 3\n")
    return path


def test_two_processes_draw_exactly_the_samples_of_one(toy_ckpt, tmp_path):
    # 5 shards over 2 ranks (3 + 2), with an adaptive ODE solver: the ranks take different numbers of steps and of
    # shards, and nothing waits inside the solve.
    args = ["--solver", "ode", "--rtol", "1e-3", "--atol", "1e-3", "--n", "18", "--batch-size", "4", "--seed", "5"]
    one = _run(toy_ckpt, tmp_path / "one", *args)
    two = _run(toy_ckpt, tmp_path / "two", *args, "--devices", "2", "--accelerator", "cpu", "--strategy", "ddp_fork")
    np.testing.assert_array_equal(two, one)
    nfe = np.load(tmp_path / "two" / "samples.npz")["nfe_per_sample"]
    assert nfe.shape == (18,) and len(set(nfe.tolist())) > 1  # shards needed different numbers of evaluations


def test_a_killed_run_resumes_without_losing_or_redrawing_a_shard(toy_ckpt, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["--solver", "euler_maruyama", "--steps", "400", "--n", "240", "--batch-size", "8", "--seed", "1"]
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "scoresde.lightning.cli", "sample", "--ckpt", str(toy_ckpt), "--out", str(out),
           "--progress", "false", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    deadline = time.time() + 120
    while len(list(out.glob("shard_*.npz"))) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*.npz")}
    assert 3 <= len(before) < 30, f"the run was not killed midway ({len(before)} of 30 shards written)"
    assert not (out / "samples.npz").exists()

    resumed = _run(toy_ckpt, out, *args)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*.npz")}
    assert len(after) == 30 and all(after[k] == v for k, v in before.items())  # finished shards were not redrawn
    assert not list(out.glob(".shard_*"))  # no half-written leftovers
    straight = _run(toy_ckpt, tmp_path / "straight", *args)
    np.testing.assert_array_equal(resumed, straight)


def test_bf16_sampling_runs_under_autocast_and_stays_close_to_float32(toy_ckpt, tmp_path):
    args = ["--solver", "dpm_solver_pp", "--steps", "10", "--n", "64", "--seed", "2"]
    fp32 = _run(toy_ckpt, tmp_path / "fp32", *args)
    bf16 = _run(toy_ckpt, tmp_path / "bf16", *args, "--precision", "bf16-mixed")
    diff = np.abs(bf16 - fp32)
    assert diff.max() > 0  # the network really ran in bfloat16 (8-bit mantissa)
    assert diff.mean() < 0.05 * np.abs(fp32).mean()  # ... and the solver's float32/64 arithmetic kept samples close


def test_solver_options_as_flags_and_the_manifest_from_the_config():
    import dataclasses

    from scoresde.lightning.commands._common import DeviceOptions, build_parser, manifest_record, parse_config
    from scoresde.lightning.commands.sample import SampleConfig

    parser = build_parser(SampleConfig, "scoresde sample", "")
    base = ["--ckpt", "m.ckpt", "--out", "o", "--solver", "dpm_solver_pp"]
    dotted = parse_config(SampleConfig, parser, [*base, "--solver.order", "3"], solver_options=True)
    plain = parse_config(SampleConfig, parser, [*base, "--order", "3", "--batch-size", "8"], solver_options=True)
    assert dotted.options == plain.options == {"order": 3} and plain.batch_size == 8
    # every field that changes results is in the manifest, without a hand-kept list; output and devices are not
    record = manifest_record(plain)
    left_out = {f.name for f in dataclasses.fields(DeviceOptions)} | {"out"}
    assert set(record) == {f.name for f in dataclasses.fields(SampleConfig)} - left_out
    assert record["batch_size"] == 8 and record["options"] == {"order": 3}


def test_a_solver_instance_as_the_model_sampler_from_yaml_python_and_the_cli(tmp_path):
    from scoresde import VPSDE
    from scoresde.lightning import ScoreModule
    from scoresde.nets import MLP
    from scoresde.solvers import DPMSolverPP

    from .conftest import _fit

    # YAML: model.sampler as class_path + init_args; the checkpoint keeps it, and sampling without --solver uses it
    ckpt = _fit(tmp_path, "--config", str(EXPERIMENTS / "toy_vp.yaml"), "--trainer.max_steps", "2",
                "--trainer.logger", "false", "--trainer.callbacks.n_samples", "50", "--model.sample_steps", "6",
                "--model.sampler", "{class_path: scoresde.solvers.DPMSolverPP, init_args: {order: 3}}")
    model = load_model(ckpt)
    assert model.sampler == DPMSolverPP(order=3) and model.default_solver() == (DPMSolverPP(order=3), {})
    default = _run(ckpt, tmp_path / "default", "--n", "20", "--seed", "3")
    named = _run(ckpt, tmp_path / "named", "--n", "20", "--seed", "3", "--solver", "dpm_solver_pp", "--order", "3")
    np.testing.assert_array_equal(default, named)
    other = _run(ckpt, tmp_path / "other", "--n", "20", "--seed", "3", "--solver", "dpm_solver_pp", "--order", "2")
    assert np.abs(other - named).max() > 1e-6  # the order matters, so the equality above says something

    # Python: an instance, and the same validation as a name with options
    module = ScoreModule(MLP([2]), VPSDE(), sampler=DPMSolverPP(order=3), data_shape=(2,), sample_steps=6)
    g = torch.Generator().manual_seed(0)
    x = module.sample(8, generator=g).x
    y = module.sample(8, generator=torch.Generator().manual_seed(0), solver="dpm_solver_pp", order=3).x
    assert torch.equal(x, y)
    with pytest.raises(ValueError, match="instance"):
        ScoreModule(MLP([2]), VPSDE(), sampler=DPMSolverPP(order=3), sampler_options={"order": 2})
    with pytest.raises(ValueError, match="unknown solver 'dpm'"):
        ScoreModule(MLP([2]), VPSDE(), sampler="dpm")


def test_nfe_budget_picks_the_solver_and_says_which(toy_ckpt, tmp_path, capsys):
    x = _run(toy_ckpt, tmp_path / "b", "--nfe", "5", "--n", "12")
    merged = np.load(tmp_path / "b" / "samples.npz")
    assert x.shape == (12, 2) and (merged["nfe_per_sample"] == 5).all()
    manifest = json.loads((tmp_path / "b" / "sample_config.json").read_text())
    assert manifest["solver"] == "unipc" and manifest["nfe_budget"] == 5 and manifest["grid"] == "karras"
    assert "best at 5 evaluations for VP-type SDEs" in manifest["nfe_choice"]
    assert "--nfe 5: unipc (order=3) on the karras grid, 5 steps" in capsys.readouterr().out
    with pytest.raises(ValueError, match="give --nfe or those"):
        _run(toy_ckpt, tmp_path / "c", "--nfe", "5", "--solver", "ddim")


def test_the_adaptive_sde_solver_takes_its_tolerance_as_flags_and_does_not_depend_on_the_batch_size(toy_ckpt, tmp_path):
    """Each sample steps on its own Brownian path, so shards of 3 and of 8 draw the same samples."""
    args = ["--solver", "adaptive_sde", "--rtol", "0.1", "--atol", "0.02", "--n", "12", "--seed", "4"]
    a = _run(toy_ckpt, tmp_path / "a", *args, "--batch-size", "3")
    b = _run(toy_ckpt, tmp_path / "b", *args, "--batch-size", "8")
    assert np.isfinite(a).all()
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    manifest = json.loads((tmp_path / "a" / "sample_config.json").read_text())
    assert manifest["options"] == {"rtol": 0.1, "atol": 0.02}
