"""Results depend on (seed, global index) only: sampling and inpainting on 1, 2 or 3 processes with 1, 5 or 64 items
per batch, on n = 37 items (uneven shards, ranks with nothing to do), are bit-identical; so is likelihood on 1, 2 or 3
processes. Processes are Lightning's DDP on CPU (gloo, forked inside pytest)."""

import json

import numpy as np

from scoresde.lightning.cli import run

DDP = ["--accelerator", "cpu", "--strategy", "ddp_fork"]
GRID = [(devices, batch) for devices in (1, 2, 3) for batch in (1, 5, 64)]


def _spread(devices):
    return ["--devices", str(devices), *(DDP if devices > 1 else [])]


def _over_grid(command, ckpt, tmp_path, args, result):
    """``command`` for every (devices, batch size) of GRID: ``{(devices, batch): samples}`` from its ``result`` file."""
    runs = {}
    for devices, batch in GRID:
        out = tmp_path / f"d{devices}b{batch}"
        run([command, "--ckpt", str(ckpt), "--out", str(out), *args, "--batch-size", str(batch), *_spread(devices)])
        runs[devices, batch] = np.load(out / result)["samples"]
    return runs


def test_sampling_is_bit_identical_on_1_2_3_devices_with_batches_of_1_5_64(toy_ckpt, tmp_path):
    args = ["--solver", "euler_maruyama", "--steps", "4", "--n", "37", "--seed", "2", "--progress", "false"]
    runs = _over_grid("sample", toy_ckpt, tmp_path, args, "samples.npz")
    first = runs[1, 64]
    assert first.shape == (37, 2) and len(np.unique(first[:, 0])) == 37  # 37 different samples
    for key, samples in runs.items():
        np.testing.assert_array_equal(samples, first, err_msg=str(key))


def test_inpainting_is_bit_identical_on_1_2_3_devices_with_batches_of_1_5_64(digits_ckpt, tmp_path):
    args = ["--mask", "right", "--n", "37", "--solver", "euler_maruyama", "--steps", "3", "--seed", "4",
            "--progress", "false"]
    runs = _over_grid("inpaint", digits_ckpt, tmp_path, args, "inpainted.npz")
    first = runs[1, 64]
    assert first.shape[0] == 37 and len({s.tobytes() for s in first}) == 37
    for key, samples in runs.items():
        np.testing.assert_array_equal(samples, first, err_msg=str(key))


def test_likelihood_is_bit_identical_on_1_2_3_devices(toy_ckpt, tmp_path):
    # --block 64 (likelihood's default is no blocks): CPU processes under DDP run fewer threads each, and BLAS rounds
    # a batch of 5 differently with 1 thread than with 2
    args = ["--limit", "37", "--batch-size", "5", "--block", "64", "--rtol", "1e-4", "--atol", "1e-4", "--progress",
            "false"]
    runs = {}
    for devices in (1, 2, 3):
        out = tmp_path / f"d{devices}"
        run(["likelihood", "--ckpt", str(toy_ckpt), "--out", str(out), *args, *_spread(devices)])
        runs[devices] = np.load(out / "likelihood.npz")["bpd"], json.loads((out / "summary.json").read_text())["bpd"]
    assert runs[1][0].shape[0] == 37
    for devices, (bpd, mean) in runs.items():
        np.testing.assert_array_equal(bpd, runs[1][0], err_msg=str(devices))
        assert mean == runs[1][1]
