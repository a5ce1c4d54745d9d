"""Data: transforms and their bits/dim offsets against hand-computed values, fixed splits, file loaders, errors."""

import math

import numpy as np
import pytest
import torch

from scoresde import DataTransform
from scoresde.lightning import DigitsDataModule, ImageFolderDataModule, NpzDataModule, ToyDataModule


@pytest.mark.parametrize(
    "transform, offset",
    [
        (DataTransform.discrete(256, 0.0, 1.0), 8.0),  # 8-bit, dequantized to [0, 1]
        (DataTransform.discrete(256, -1.0, 1.0), 7.0),  # then rescaled to [-1, 1]: 8 - log2(2)
        (DataTransform.discrete(17, -1.0, 1.0), math.log2(17) - 1),  # scikit-learn digits
        (DataTransform.identity(), 0.0),
        (DataTransform(scale=4.0), -2.0),  # continuous data scaled by 4: bits of the raw data are 2 fewer per dim
    ],
)
def test_bpd_offsets(transform, offset):
    assert transform.bpd_offset == pytest.approx(offset, abs=1e-12)


def test_dequantization_is_uniform_within_each_bin_and_inverts():
    tr = DataTransform.discrete(256, -1.0, 1.0)
    raw = torch.randint(0, 256, (20000,), generator=torch.Generator().manual_seed(0))
    z = tr.forward(raw, generator=torch.Generator().manual_seed(1))
    z64 = tr.forward(raw.double(), generator=torch.Generator().manual_seed(1))
    assert torch.equal(tr.inverse(z64), raw.to(torch.uint8))
    # float32 can round a point within ~1e-7 of a bin edge onto the edge: at most one level off, rarely
    miss = tr.inverse(z).long() - raw
    assert int(miss.abs().max()) <= 1 and float((miss != 0).double().mean()) < 1e-3
    # position inside the bin is U[0, 1): mean ½, variance 1/12
    u = (z + 1) / 2 * 256 - raw
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.003
    assert float(z.min()) >= -1 and float(z.max()) <= 1


def test_bad_transforms_are_explained():
    with pytest.raises(ValueError, match="levels must be an integer >= 2"):
        DataTransform(levels=1)
    with pytest.raises(ValueError, match="scale must be > 0"):
        DataTransform(scale=0.0)
    with pytest.raises(ValueError, match=r"integers in \[0, 16\].*set levels"):
        DataTransform.discrete(17).forward(torch.tensor([[0, 255]]))


def test_digits_splits_are_fixed_disjoint_and_complete():
    a, b = DigitsDataModule(), DigitsDataModule()
    assert a.data_shape == (1, 8, 8)
    assert (len(a.train_raw), len(a.val_raw), len(a.test_raw)) == (1350, 150, 297)
    assert torch.equal(a.test_raw, b.test_raw)
    rows = {tuple(r.flatten().tolist()) for r in torch.cat([a.train_raw, a.val_raw, a.test_raw])}
    assert len(rows) > 1700  # no image is silently dropped or duplicated (a few digits are exact duplicates)
    batch = a.on_after_batch_transfer(next(iter(a.train_dataloader())), 0)
    assert batch.shape == (128, 1, 8, 8) and batch.dtype == torch.float32
    assert -1 <= float(batch.min()) and float(batch.max()) <= 1
    assert a.transform.bpd_offset == pytest.approx(math.log2(17) - 1)


@pytest.mark.parametrize("name", ["ring", "moons", "swiss_roll", "checkerboard"])
def test_toy_sets(name):
    dm = ToyDataModule(name=name, n_train=2000, n_val=100, n_test=100)
    assert dm.data_shape == (2,) and torch.isfinite(dm.train_raw).all()
    assert 0.3 < float(dm.train_raw.std()) < 3.0
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (512, 2)
    assert (dm.target is not None) == (name == "ring")


def test_toy_errors_are_explained():
    with pytest.raises(ValueError, match="available: ring, moons"):
        ToyDataModule(name="spiral")
    with pytest.raises(ValueError, match="needs a GaussianMixture"):
        ToyDataModule(name="mixture")


def test_npz_images_and_vectors(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (40, 6, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "imgs.npz", images=imgs, labels=np.arange(40))
    dm = NpzDataModule(str(tmp_path / "imgs.npz"), key="images", val_fraction=0.1, test_fraction=0.1)
    assert dm.data_shape == (3, 6, 6) and dm.transform.levels == 256 and dm.transform.bpd_offset == 7.0
    assert (len(dm.train_raw), len(dm.val_raw), len(dm.test_raw)) == (32, 4, 4)
    vecs = np.random.default_rng(1).normal(size=(30, 5)).astype(np.float32)
    np.savez(tmp_path / "vecs.npz", x=vecs)
    dv = NpzDataModule(str(tmp_path / "vecs.npz"))
    assert dv.data_shape == (5,) and dv.transform.levels is None and dv.transform.bpd_offset == 0.0
    with pytest.raises(FileNotFoundError, match="not found"):
        NpzDataModule(str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "two.npz", a=vecs, b=vecs)
    with pytest.raises(KeyError, match="choose one with key"):
        NpzDataModule(str(tmp_path / "two.npz"))
    np.savez(tmp_path / "ints.npz", x=np.zeros((10, 4), dtype=np.int32))
    with pytest.raises(ValueError, match="set `levels`"):
        NpzDataModule(str(tmp_path / "ints.npz"))
    np.savez(tmp_path / "big.npz", x=np.arange(40, dtype=np.int32).reshape(10, 4))
    with pytest.raises(ValueError, match=r"integers in \[0, 15\], got values in \[0, 39\]"):
        NpzDataModule(str(tmp_path / "big.npz"), levels=16)  # refused when the module is built, not at the first batch


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    dm = ImageFolderDataModule(str(tmp_path), mode="L", val_fraction=0.2, test_fraction=0.0)
    assert dm.data_shape == (1, 8, 8) and len(dm.train_raw) + len(dm.val_raw) == 6
    Image.fromarray(rng.integers(0, 256, (9, 8), dtype=np.uint8)).save(tmp_path / "odd.png")
    with pytest.raises(ValueError, match="different sizes"):
        ImageFolderDataModule(str(tmp_path), mode="L")
    with pytest.raises(FileNotFoundError):
        ImageFolderDataModule(str(tmp_path / "nope"))


# ---- CIFAR-10 layout: an exported .npz with separate train and test arrays; random flips --------------------------
def _fake_cifar_tar(path, n=3):
    import io
    import pickle
    import tarfile

    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            blob = pickle.dumps({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(range(n))})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def test_export_cifar10_writes_train_and_test_arrays_in_the_official_layout(tmp_path):
    import pickle
    import runpy
    import tarfile
    from pathlib import Path

    export = runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "export_cifar10.py"))["export"]
    _fake_cifar_tar(tmp_path / "cifar.tar.gz")
    shapes = export(tmp_path / "cifar.tar.gz", tmp_path / "c10.npz")
    assert shapes == {"train": (15, 32, 32, 3), "test": (3, 32, 32, 3)}
    with tarfile.open(tmp_path / "cifar.tar.gz") as tar:
        raw = pickle.load(tar.extractfile("cifar-10-batches-py/data_batch_2"), encoding="bytes")
    with np.load(tmp_path / "c10.npz") as f:
        # row 0 of batch 2 is train image 3; a row holds 1024 red, then green, then blue bytes
        np.testing.assert_array_equal(f["train"][3], raw[b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0))
    dm = NpzDataModule(str(tmp_path / "c10.npz"), key="train", test_key="test", val_fraction=0.34, low=0.0, high=1.0)
    assert dm.train_raw.shape == (15, 3, 32, 32) and dm.test_raw.shape == (3, 3, 32, 32) and len(dm.val_raw) == 1
    assert any(torch.equal(dm.val_raw[0], t) for t in dm.test_raw)  # validation is a fixed subset of the test array
    assert dm.transform.bpd_offset == pytest.approx(8.0)  # [0, 1] data: offset log2(256) - log2(1)
    with pytest.raises(ValueError, match="either test_key .* or test_fraction"):
        NpzDataModule(str(tmp_path / "c10.npz"), key="train", test_key="test", test_fraction=0.1)
    tarfile.open(tmp_path / "empty.tar.gz", "w:gz").close()
    with pytest.raises(FileNotFoundError, match="holds no data_batch_1: is it the CIFAR-10 python version"):
        export(tmp_path / "empty.tar.gz", tmp_path / "x.npz")


def test_random_flip_flips_about_half_of_the_training_images_and_never_validation_ones():
    class _Trainer:
        training = True

    images = torch.arange(64, dtype=torch.int64).reshape(1, 1, 8, 8).repeat(400, 1, 1, 1) % 17
    dm = DigitsDataModule(random_flip=True, dequantize=False)
    dm.trainer = _Trainer()
    torch.manual_seed(0)
    out = dm.on_after_batch_transfer(images, 0)
    plain = dm.transform.forward(images)
    flipped = (out == plain.flip(-1)).flatten(1).all(1)
    assert ((out == plain).flatten(1).all(1) | flipped).all()
    assert 0.4 < flipped.float().mean() < 0.6  # 400 fair coins: s.d. 0.025
    dm.trainer.training = False
    assert torch.equal(dm.on_after_batch_transfer(images, 0), plain)


def test_the_transform_refuses_nan_fractional_levels_and_data_in_other_units():
    import math

    discrete = DataTransform.discrete(256)
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        DataTransform.identity().check(torch.tensor([[0.0, math.nan]]))
    with pytest.raises(ValueError, match="must be integers in \\[0, 255\\], got fractional values"):
        discrete.check(torch.tensor([[3.0, 4.5]]))
    with pytest.raises(ValueError, match="got values in \\[-1, 4\\]"):
        discrete.check(torch.tensor([[-1, 4]]))
    discrete.check(torch.tensor([[0.0, 255.0]]))  # whole numbers in floats are fine
    ring = DataTransform.identity(torch.tensor([[-2.5, 2.5], [0.0, 1.0]]))
    assert ring.data_range == (-2.5, 2.5) and ring == DataTransform.identity()  # the range is not part of equality
    ring.check(torch.tensor([[-7.0, 7.0]]))  # within one range-width of it
    with pytest.raises(ValueError, match="far outside the range the model was trained on \\[-2.5, 2.5\\]"):
        ring.check(torch.tensor([[0.0, 255.0]]))
