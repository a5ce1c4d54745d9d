"""The CLI runs every experiment in-process, and bad configs fail with a message that says what is wrong."""

import json
from pathlib import Path

import pytest

from scoresde.lightning.cli import cli

EXPERIMENTS = sorted((Path(__file__).parents[1] / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("config", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_every_experiment_runs_fast_dev_run(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if "autoencoder_ckpt:" in config.read_text():  # a latent model: its first stage first (2 steps)
        from scoresde.lightning.cli import autoencoder_cli

        autoencoder_cli(["fit", "--config", str(EXPERIMENTS[0].parent / "autoencoders" / "digits.yaml"),
                         "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
                         "--trainer.enable_progress_bar", "false"])
    c = cli(["fit", "--config", str(config), "--trainer.fast_dev_run", "true", "--trainer.enable_progress_bar", "false"])
    assert c.trainer.global_step == 1
    assert c.model.data_shape == c.datamodule.data_shape
    assert c.model.transform == c.datamodule.transform


def test_fit_writes_picture_and_summary(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = next(p for p in EXPERIMENTS if p.stem == "toy_vp")
    cli(["fit", "--config", str(config), "--trainer.max_steps", "20", "--trainer.enable_progress_bar", "false",
         "--model.sample_steps", "20"])
    out = tmp_path / "runs" / "toy_vp"
    assert (out / "samples.png").stat().st_size > 10_000
    assert (out / "checkpoints" / "last.ckpt").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["score_rel_error"] > 0 and summary["frechet_floor"] > 0
    # Resume: the run continues from step 20 (the checkpoint holds objects, so this needs the full load).
    c = cli(["fit", "--config", str(config), "--trainer.max_steps", "25", "--trainer.enable_progress_bar", "false",
             "--model.sample_steps", "20", "--ckpt_path", str(out / "checkpoints" / "last.ckpt")])
    assert c.trainer.ckpt_path == str(out / "checkpoints" / "last.ckpt")
    assert c.trainer.global_step == 25 and json.loads((out / "summary.json").read_text())["steps"] == 25


@pytest.mark.parametrize(
    "override, message",
    [
        (["--model.sde.init_args.beta_min", "30"], "beta_min < beta_max"),
        (["--model.sampler", "not_a_solver"], "available: adaptive_sde, ancestral, consistency, ddim, deis, dpm_solver"),
        (["--model.loss.init_args.weighting", "snr"], "weighting"),
        (["--data.init_args.name", "spiral"], "name"),
    ],
)
def test_bad_config_values_are_explained(override, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = next(p for p in EXPERIMENTS if p.stem == "toy_vp")
    with pytest.raises((SystemExit, ValueError)) as err:
        cli(["fit", "--config", str(config), "--trainer.fast_dev_run", "true", *override])
    shown = str(err.value) + capsys.readouterr().err
    assert message in shown, shown


CLASSIFIERS = sorted((Path(__file__).parents[1] / "experiments" / "classifiers").glob("*.yaml"))


@pytest.mark.parametrize("config", CLASSIFIERS, ids=[p.stem for p in CLASSIFIERS])
def test_every_classifier_experiment_runs_fast_dev_run(config, tmp_path, monkeypatch):
    from scoresde.lightning.cli import classifier_cli

    monkeypatch.chdir(tmp_path)
    c = classifier_cli(["fit", "--config", str(config), "--trainer.fast_dev_run", "true", "--trainer.enable_progress_bar", "false"])
    assert c.trainer.global_step == 1
    assert c.trainer.callback_metrics["train/loss"] > 0


AUTOENCODERS = sorted((Path(__file__).parents[1] / "experiments" / "autoencoders").glob("*.yaml"))


@pytest.mark.parametrize("config", AUTOENCODERS, ids=[p.stem for p in AUTOENCODERS])
def test_every_autoencoder_experiment_runs_fast_dev_run(config, tmp_path, monkeypatch):
    from scoresde.lightning.cli import autoencoder_cli

    monkeypatch.chdir(tmp_path)
    c = autoencoder_cli(["fit", "--config", str(config), "--trainer.fast_dev_run", "true",
                         "--trainer.enable_progress_bar", "false"])
    assert c.trainer.global_step == 1
    assert c.trainer.callback_metrics["train/loss"] > 0


def test_fit_into_a_log_file_prints_whole_progress_lines_and_the_summary_names_its_run(tmp_path, monkeypatch, capsys):
    from scoresde.lightning.cli import run

    monkeypatch.chdir(tmp_path)
    config = next(p for p in EXPERIMENTS if p.stem == "toy_vp")
    run(["fit", "--config", str(config), "--trainer.max_steps", "20", "--model.sample_steps", "5",
         "--trainer.logger", "false", "--trainer.callbacks.n_samples", "100"])
    out = capsys.readouterr().out  # pytest's capture is not a terminal, as a log file is not
    assert "\r" not in out
    steps = [line for line in out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in steps] == [f"{2 * k}/20" for k in range(1, 11)], steps
    summary = json.loads((tmp_path / "runs" / "toy_vp" / "summary.json").read_text())
    assert summary["checkpoint"].endswith("runs/toy_vp/checkpoints/last.ckpt") and summary["seed"] == 0
    assert summary["data"].startswith("ToyDataModule(") and "name='ring'" in summary["data"]
    assert summary["val/loss"] > 0
    for metric in ("frechet", "mode_mass", "cross_entropy_gap", "sliced_wasserstein"):
        assert any(k.startswith(metric) and "floor" in k for k in summary), metric
