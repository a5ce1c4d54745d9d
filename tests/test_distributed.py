"""Training with Lightning's DDP on CPU (gloo, 2 processes, ``ddp_fork`` inside pytest): gradients are synchronised,
EMA and checkpoints work, and a run resumes from its checkpoint. Distributed sampling and likelihood are tested with
their commands (tests/test_sample_cli.py, tests/test_likelihood_cli.py)."""

import json

import lightning as L
import pytest
import torch

from scoresde import VPSDE
from scoresde.lightning.module import ScoreModule

from .conftest import EXPERIMENTS, _fit

DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp_fork"]


class ParameterDigest(L.Callback):
    """Writes, per rank, the sum of the raw (non-EMA) weights and the first step's loss at the end of fit."""

    def __init__(self, path: str) -> None:
        self.path, self.first_loss = path, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.first_loss is None:
            self.first_loss = float(outputs["loss"])

    def on_train_end(self, trainer, pl_module):
        total = sum(p.double().sum().item() for p in pl_module.net.parameters())
        with open(f"{self.path}/rank{trainer.global_rank}.json", "w") as fh:
            json.dump({"param_sum": total, "first_loss": self.first_loss, "step": trainer.global_step}, fh)


def _digest_args(path):
    return ["--trainer.callbacks+=tests.test_distributed.ParameterDigest", f"--trainer.callbacks.path={path}"]


def test_ddp_training_syncs_gradients_checkpoints_and_resumes(tmp_path):
    toy = ["--config", str(EXPERIMENTS / "toy_vp.yaml"), "--model.sample_steps", "5",
           "--trainer.callbacks.n_samples", "100"]
    # validation after step 3 and 6 with the bits/dim monitor: 8 points shared by the ranks, one collective
    val = ["--trainer.val_check_interval", "3", "--trainer.check_val_every_n_epoch", "null",
           "--trainer.limit_val_batches", "1", "--trainer.callbacks+=scoresde.lightning.BitsPerDimReport",
           "--trainer.callbacks.n_points", "8"]
    ckpt = _fit(tmp_path, *toy, *DDP, "--trainer.max_steps", "6", *val, *_digest_args(tmp_path))
    summary = json.loads((tmp_path / "runs" / "toy_vp" / "summary.json").read_text())
    assert 0.81 < summary["val/bpd"] < 50.0  # 6 steps of training: finite, above the data's exact 0.81
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # DDP averages gradients: both ranks hold the same weights after 6 steps although they saw different batches and
    # drew different training noise (different first losses).
    assert ranks[0]["step"] == ranks[1]["step"] == 6
    assert abs(ranks[0]["param_sum"] - ranks[1]["param_sum"]) < 1e-9 * max(1.0, abs(ranks[0]["param_sum"]))
    assert ranks[0]["first_loss"] != ranks[1]["first_loss"]

    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == 6
    raw = state["callbacks"]  # WeightAveraging keeps the raw weights for resumption; the state dict holds the EMA ones
    assert any("WeightAveraging" in k for k in raw)

    # Resume on 2 processes: training continues from step 6 to 10 with the optimizer state restored.
    _fit(tmp_path, *toy, *DDP, "--trainer.max_steps", "10", "--ckpt_path", str(ckpt), *_digest_args(tmp_path))
    resumed = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert resumed["global_step"] == 10
    assert resumed["optimizer_states"][0]["state"][0]["step"].item() == 10
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert abs(ranks[0]["param_sum"] - ranks[1]["param_sum"]) < 1e-9 * max(1.0, abs(ranks[0]["param_sum"]))


def test_training_noise_differs_by_batch_and_epoch_and_repeats_on_resume():
    module = ScoreModule(torch.nn.Linear(2, 2), sde=VPSDE(), warmup_steps=0)
    seeds = {module._noise_seed(b) for b in range(100)}
    assert len(seeds) == 100
    module._run_seed = 7
    assert module._noise_seed(3) == module._noise_seed(3) and module._noise_seed(3) not in seeds


def _digits(tmp_path, *extra):
    tmp_path.mkdir(parents=True, exist_ok=True)
    return _fit(tmp_path, "--config", str(EXPERIMENTS / "digits_vp.yaml"), "--trainer.max_steps", "2",
                "--trainer.limit_val_batches", "1", "--model.sample_steps", "2", "--trainer.logger", "false", *extra)


def test_bf16_mixed_precision_trains_and_checkpoints_float32_weights(tmp_path):
    ckpt = _digits(tmp_path, "--trainer.precision", "bf16-mixed")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    summary = json.loads(next(tmp_path.rglob("summary.json")).read_text())
    assert all(v.dtype == torch.float32 for v in state["state_dict"].values() if v.is_floating_point())
    assert 0.05 < summary["train/loss"] < 5.0


@pytest.mark.slow  # compiling the U-Net on CPU takes about two minutes
def test_compiled_network_trains_and_keeps_its_checkpoint_keys(tmp_path):
    plain = torch.load(_digits(tmp_path / "plain"), map_location="cpu", weights_only=False)["state_dict"]
    compiled = torch.load(_digits(tmp_path / "compiled", "--model.compile", "true"), map_location="cpu",
                          weights_only=False)["state_dict"]
    assert list(compiled) == list(plain)  # loadable by an uncompiled model (sampling, likelihood)


# ---- the same answer on any number of devices, and after a resume -----------------------------------------------
def _toy(tmp_path, *extra):
    """5+ steps of the toy experiment on a tiny network, no logger; returns the final checkpoint's raw and EMA weights."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    args = ["--config", str(EXPERIMENTS / "toy_vp.yaml"), "--model.net.init_args.width", "16",
            "--model.sample_steps", "5", "--trainer.callbacks.n_samples", "200", "--trainer.logger", "false", *extra]
    state = torch.load(_fit(tmp_path, *args), map_location="cpu", weights_only=False)
    return state, json.loads(next(tmp_path.rglob("summary.json")).read_text())


def _max_rel_diff(a, b):
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)) for k in b)


def test_one_device_batch_8_and_two_devices_batch_4_train_the_same_parameters(tmp_path):
    # Noise is keyed by (step, global position), the data order by the epoch's permutation: the global batch of every
    # step holds the same examples with the same t and z, and DDP's mean of the two half-batch gradients is the mean
    # over the whole batch. What may differ is the order of the floating-point reduction.
    one, _ = _toy(tmp_path / "one", "--data.init_args.batch_size", "8", "--trainer.max_steps", "5")
    two, _ = _toy(tmp_path / "two", "--data.init_args.batch_size", "4", "--trainer.max_steps", "5", *DDP)
    assert one["global_step"] == two["global_step"] == 5
    raw, ema = _max_rel_diff(two["current_model_state"], one["current_model_state"]), _max_rel_diff(
        two["state_dict"], one["state_dict"])
    assert raw < 1e-6 and ema < 1e-6, (raw, ema)
    # and the test can fail: another seed gives other parameters
    other, _ = _toy(tmp_path / "other", "--data.init_args.batch_size", "8", "--trainer.max_steps", "5",
                    "--seed_everything", "1")
    assert _max_rel_diff(other["current_model_state"], one["current_model_state"]) > 1e-3


def test_a_fit_resumed_mid_epoch_ends_with_the_weights_ema_and_summary_of_an_uninterrupted_one(tmp_path):
    # 97 steps per epoch: a checkpoint at step 6 is mid-epoch; the loader resumes after the batches already trained on
    whole, whole_summary = _toy(tmp_path / "whole", "--trainer.max_steps", "12")
    _toy(tmp_path / "parts", "--trainer.max_steps", "6")
    ckpt = next((tmp_path / "parts").rglob("last.ckpt"))
    parts, parts_summary = _toy(tmp_path / "parts", "--trainer.max_steps", "12", "--ckpt_path", str(ckpt))
    assert parts["global_step"] == whole["global_step"] == 12
    assert _max_rel_diff(parts["current_model_state"], whole["current_model_state"]) == 0.0
    assert _max_rel_diff(parts["state_dict"], whole["state_dict"]) == 0.0
    timing = ("train_seconds", "sample_seconds", "picture", "checkpoint")
    assert {k: v for k, v in parts_summary.items() if k not in timing} == {
        k: v for k, v in whole_summary.items() if k not in timing}
