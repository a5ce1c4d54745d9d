"""Every mistake a user can make at the command line ends as one line on stderr, `scoresde <command>: error: ...`,
with exit code 2 and no traceback, before any expensive work."""

import importlib.util
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scoresde.lightning.cli import main

EXPERIMENTS = Path(__file__).parents[1] / "experiments"
# what srun sets for a job step of 4 tasks on one node, started with --ntasks=4 only
SLURM = {"SLURM_NTASKS": "4", "SLURM_JOB_NAME": "train", "SLURM_NNODES": "1", "SLURM_PROCID": "0",
         "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}


def _npz(tmp_path, name, x):
    path = tmp_path / f"{name}.npz"
    np.savez(path, x=x)
    return path


def _data(path, **init):
    args = ", ".join(f"{k}: {v}" for k, v in {"path": str(path), **init}.items())
    return "{class_path: scoresde.lightning.NpzDataModule, init_args: {" + args + "}}"


def _cases(tmp_path, toy_ckpt):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(toy_ckpt.read_bytes()[:1000])
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    classifier = tmp_path / "classifier.ckpt"  # what `scoresde classifier fit` writes, as far as the check reads it
    torch.save({"state_dict": {}, "hyper_parameters": {"time_input": "auto", "lr": 1e-3, "t_eps": 1e-5}}, classifier)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    ck, out = str(toy_ckpt), str(tmp_path / "out")
    rng = np.random.default_rng(0)
    nan = _npz(tmp_path, "nan", np.where(rng.random((200, 2)) < 0.01, np.nan, rng.normal(size=(200, 2))).astype("f4"))
    pixels = _npz(tmp_path, "pixels", rng.integers(0, 256, (200, 2)).astype("f4"))  # 8-bit values saved as floats
    big = _npz(tmp_path, "big", rng.uniform(0, 255, (200, 2)).astype("f4"))  # not the ring's units
    frac = _npz(tmp_path, "frac", rng.uniform(0, 255, (200, 1, 4, 4)).astype("f4"))  # fractions given as 8-bit
    pth = tmp_path / "checkpoint_8.pth"  # a score_sde_pytorch file (its format is read before the config is needed)
    torch.save({"model": {}, "ema": {}, "step": 0}, pth)
    edm = tmp_path / "network-snapshot.pkl"
    edm.write_bytes(pickle.dumps({"augment_pipe": None}))
    empty = tmp_path / "empty"
    empty.mkdir()
    pretrained = [
        (["sample", "--ckpt", str(pth), "--out", out], f"{pth}: a score_sde_pytorch checkpoint does not record its SDE"),
        (["sample", "--ckpt", f"score_sde:{pth}", "--model-config", "ddpm", "--out", out], "unknown score_sde config"),
        (["sample", "--ckpt", f"edm:{edm}", "--out", out], f"{edm} holds no 'ema' network"),
        (["sample", "--ckpt", f"diffusers:{empty}", "--out", out], f"{empty} holds neither unet/config.json"),
    ]
    if importlib.util.find_spec("diffusers"):
        import diffusers

        unet, full = tmp_path / "unet", tmp_path / "unet_and_scheduler"
        for path in (unet, full):
            diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, norm_num_groups=8,
                                  block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                  up_block_types=("UpBlock2D", "UpBlock2D")).save_pretrained(path)
        diffusers.DDPMScheduler().save_pretrained(full)
        pretrained += [
            (["sample", "--ckpt", str(unet), "--out", out], f"{unet / 'scheduler_config.json'} is missing"),
            (["likelihood", "--ckpt", str(full), "--out", out], "a diffusers model records no dataset"),
        ]
    floats = tmp_path / "floats.npz"
    np.savez(floats, samples=rng.normal(size=(4, 1, 8, 8)))
    digits = tmp_path / "digits.npz"
    np.savez(digits, samples=rng.integers(0, 17, (4, 1, 8, 8)).astype("u1"))
    pretrained += [
        (["evaluate", "--data", "DigitsDataModule", "--out", out], "give the samples as --samples PATH"),
        (["evaluate", "--samples", str(floats), "--data", "DigitsDataModule", "--out", out],
         "--samples holds floats: give raw images"),
        (["evaluate", "--samples", str(digits), "--out", out], "give the reference as --reference PATH or as --data"),
        (["evaluate", "--samples", str(digits), "--data", "DigitsDataModule", "--features", "inception", "--out", out,
          {"SCORESDE_INCEPTION_WEIGHTS": ""}], "Inception features need weights-inception-2015-12-05-6726825d.pth"),
    ]
    gpu = [] if torch.cuda.is_available() else [
        (["sample", "--ckpt", ck, "--accelerator", "gpu", "--out", out], "accelerator 'gpu': torch sees no CUDA GPU"),
        (["fit", "--config", str(EXPERIMENTS / "toy_vp.yaml"), "--trainer.accelerator", "gpu"],
         "accelerator 'gpu': torch sees no CUDA GPU"),
    ]
    return gpu + pretrained + [
        (["likelihood", "--ckpt", ck, "--data", _data(nan), "--out", out], f"{nan}: the train data: 3 NaN"),
        (["likelihood", "--ckpt", ck, "--data", _data(pixels), "--out", out], f"{pixels} holds whole numbers"),
        (["likelihood", "--ckpt", ck, "--data", _data(big), "--out", out],
         "the test split: values in ["),
        (["likelihood", "--ckpt", ck, "--data", _data(frac, levels=256), "--out", out],
         f"{frac}: discrete data with 256 levels must be integers in [0, 255], got fractional values"),
        (["likelihood", "--ckpt", ck, "--data", _data(nan, key="nope"), "--out", out], f"{nan} holds no array 'nope'"),
        (["likelihood", "--ckpt", ck, "--method", "rk45", "--out", out], "unknown ODE method 'rk45'"),
        (["fit", "--config", str(EXPERIMENTS / "digits_vp.yaml"), "--data", "scoresde.lightning.NpzDataModule",
          "--data.init_args.path", str(tmp_path / "missing.npz")], f"data file not found: {tmp_path / 'missing.npz'}"),
        (["sample", "--ckpt", ck, "--devices", "2", "--accelerator", "cpu", "--strategy", "ddp", "--out", out, SLURM],
         "SLURM started 4 tasks (SLURM_NTASKS) but devices × num_nodes = 2 × 1 = 2"),
        # (argv, the message's first words)
        (["sample", "--ckpt", str(tmp_path / "missing.ckpt"), "--out", out], "checkpoint"),
        (["sample", "--ckpt", str(truncated), "--out", out], f"{truncated} is not a readable checkpoint"),
        (["sample", "--ckpt", str(text), "--out", out], f"{text} is not a readable checkpoint"),
        (["sample", "--ckpt", ck, "--classifier", ck, "--class", "1", "--out", out], f"{ck} is a score model checkpoint"),
        (["sample", "--ckpt", str(classifier), "--out", out], f"{classifier} is not a score model checkpoint"),
        (["sample", "--ckpt", ck, "--steps", "0", "--out", out], "--steps must be a positive integer"),
        (["sample", "--ckpt", ck, "--n", "0", "--out", out], "--n and --batch-size must be positive"),
        (["sample", "--ckpt", ck, "--out", str(a_file)], f"--out {a_file} is a file"),
        (["sample", "--ckpt", ck, "--solver", "dpm", "--out", out], "unknown solver 'dpm'"),
        (["sample", "--ckpt", ck, "--solver", "ddim", "--order", "2", "--out", out], "solver 'ddim' has no option"),
        (["sample", "--ckpt", ck, "--solver", "pc", "--out", out], "the Langevin corrector is unsafe below 16 dimensions"),
        (["sample", "--ckpt", ck, "--grid", str(tmp_path / "nope.json"), "--out", out], "grid file not found"),
        (["sample", "--ckpt", ck, "--nfe", "5", "--solver", "ddim", "--out", out], "--nfe picks the solver"),
        (["grid", "--ckpt", ck, "--steps", "5", "--out", str(tmp_path / "g.txt")], "--out must name a .json grid file"),
        (["likelihood", "--ckpt", ck, "--limit", "-5", "--out", out], "--limit must be a positive number"),
        (["likelihood", "--ckpt", ck, "--data", str(tmp_path / "nope.yaml"), "--out", out], "--data"),
        (["interpolate", "--ckpt", ck, "--pairs", "0", "--out", out], "--pairs must be >= 1"),
        (["inpaint", "--ckpt", ck, "--method", "magic", "--out", out], "unknown inpainting method 'magic'"),
        (["inpaint", "--ckpt", ck, "--method", "smc", "--particles", "0", "--out", out], "particles must be an integer"),
        (["nonsense"], "unknown command 'nonsense'"),
    ]


def test_every_bad_input_gets_one_line_and_exit_code_2(toy_ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SCORESDE_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    cases = _cases(tmp_path, toy_ckpt)
    assert len(cases) >= 23
    for argv, first_words in cases:
        env = argv.pop() if isinstance(argv[-1], dict) else {}
        has_progress = argv[0] in ("sample", "likelihood", "interpolate", "inpaint", "evaluate")
        with pytest.raises(SystemExit) as err, monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            main([*argv, "--progress", "false"] if has_progress else argv)
        captured = capsys.readouterr()
        lines = [line for line in captured.err.splitlines() if line.strip()]
        name = argv[0] if argv[0] != "nonsense" else ""
        prefix = f"scoresde {name}: error: " if name else "scoresde: error: "
        assert err.value.code == 2, (argv, captured.err)
        assert "Traceback" not in captured.err, (argv, captured.err)
        assert len(lines) == 1 and lines[0].startswith(prefix + first_words), (argv, lines)


def test_scoresde_debug_shows_the_traceback(toy_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("SCORESDE_DEBUG", "1")
    with pytest.raises(ValueError, match="--steps must be a positive integer"):
        main(["sample", "--ckpt", str(toy_ckpt), "--steps", "0", "--out", str(tmp_path)])


def test_a_slurm_job_step_with_other_task_counts_than_the_devices_is_refused_before_training(tmp_path):
    # in a fresh process, as srun starts it: the variables are there before anything imports Lightning
    env = {**os.environ, **SLURM, "SLURM_NTASKS_PER_NODE": "4", "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-c", "from scoresde.lightning.cli import main; main()", "fit", "--config",
           str(EXPERIMENTS / "toy_vp.yaml"), "--trainer.devices", "2", "--trainer.accelerator", "cpu",
           "--trainer.strategy", "ddp", "--trainer.logger", "false"]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip() and "Seed set to" not in line]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert lines == [lines[-1]] and lines[-1].startswith(
        "scoresde fit: error: SLURM started 4 tasks (SLURM_NTASKS) but devices × num_nodes = 2 × 1 = 2"), lines
    assert not (tmp_path / "runs").exists()  # nothing was trained or written
