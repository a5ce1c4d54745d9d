"""DataModules: 2-D toy sets (exact densities where they exist), scikit-learn's 8×8 digits, ``.npz`` files and image
folders. Nothing is downloaded. Each exposes ``data_shape`` and ``transform`` (linked into the model by the CLI); raw
data stay in their own units and are mapped to model space (dequantized, rescaled) on the device, batch by batch.

With ``labels`` switched on, batches are ``(x, y)`` pairs (class labels ``y: (B,)``) for class-conditional training;
``num_classes`` says how many classes there are."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

import lightning as L

from ..analytic import GaussianMixture
from ..likelihood import data_moments
from ..transforms import DataTransform

__all__ = [
    "TensorDataModule",
    "ToyDataModule",
    "DigitsDataModule",
    "NpzDataModule",
    "ImageFolderDataModule",
    "TOY_DATASETS",
]


class _Rows(Dataset):
    """A tensor (and its labels) whose batches are gathered in one indexing op (``__getitems__``), not row by row."""

    def __init__(self, data: Tensor, labels: Tensor | None = None) -> None:
        self.data, self.labels = data, labels

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> Tensor | tuple[Tensor, Tensor]:
        return self.data[i] if self.labels is None else (self.data[i], self.labels[i])

    def __getitems__(self, idx: list[int]) -> Tensor | tuple[Tensor, Tensor]:
        return self.data[idx] if self.labels is None else (self.data[idx], self.labels[idx])


def _identity(batch: Tensor) -> Tensor:
    return batch


class EpochShuffle(DistributedSampler):
    """The training order: one permutation of the data per epoch (seeded by ``(seed, epoch)``), dealt out to the
    ranks as Lightning's own ``DistributedSampler`` does (rank ``r`` takes positions ``r, r + W, r + 2W, ...``).

    The same permutation on one device or many makes the global batch of step ``k`` the same examples whatever the
    device count (with per-device batch size ``B / W``), so runs on 1 and on W devices train alike. ``epoch()``, when
    given, says which epoch a pass belongs to (the trainer's count: Lightning's ``set_epoch`` on a restart counts a
    stopped epoch as processed). ``resume_at(epoch, n)`` makes that epoch's pass start after its first ``n`` examples.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        epoch: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self._epoch_of, self._resume = epoch, (0, 0)

    def resume_at(self, epoch: int, n: int) -> None:
        self._resume = (int(epoch), int(n))

    def __iter__(self) -> Iterator[int]:
        if self._epoch_of is not None:
            self.epoch = self._epoch_of()
        order = list(super().__iter__())
        start = self._resume[1] if self._resume[0] == self.epoch else 0
        self._resume = (0, 0)
        return iter(order[start:])


class ResumableLoader(DataLoader):
    """The training loader: Lightning saves its ``state_dict`` in every checkpoint (the stateful-loader interface), and
    a run resumed mid-epoch starts after the batches already trained on instead of at the start of the epoch.

    ``progress()`` answers ``(epoch, batches of it trained on)`` from the trainer (the loader's own count of batches
    would include the one Lightning's fetcher has drawn ahead).
    """

    sampler: EpochShuffle

    def __init__(self, *args: Any, progress: Callable[[], tuple[int, int]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._progress = progress

    def state_dict(self) -> dict[str, int]:
        epoch, batches = self._progress()
        return {"epoch": epoch, "batches": batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.resume_at(state["epoch"], state["batches"] * int(self.batch_size or 1))


class MissingArrayError(KeyError, ValueError):
    """An ``.npz`` key that is not in the file: a failed lookup, and a user's bad value (answered in one line)."""

    def __str__(self) -> str:
        return str(self.args[0])  # KeyError's own str() quotes the message


def _split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Validation and test sizes from fractions of ``n`` (at least one validation item)."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"need 0 <= val_fraction, test_fraction and their sum < 1; got {val_fraction}, {test_fraction}"
        )
    return max(1, round(val_fraction * n)), round(test_fraction * n)


def _check_labels(labels: np.ndarray | Tensor, n: int, what: str) -> Tensor:
    """Integer class labels ``(n,)`` in ``[0, K)``, as int64."""
    y = torch.as_tensor(np.asarray(labels))
    if y.shape != (n,) or y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(
            f"{what}: labels must be integers shaped ({n},) (one per data point), got {tuple(y.shape)} {y.dtype}"
        )
    if n and int(y.min()) < 0:
        raise ValueError(f"{what}: labels must be >= 0 (-1 is reserved for 'no class'), got {int(y.min())}")
    return y.long()


def _split(n: int, val: int, test: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val + test :], perm[:val], perm[val : val + test]


MOMENTS_STREAM = -1  # the dequantization stream of train_moments (the likelihood runs use streams >= 0)


class TensorDataModule(L.LightningDataModule):
    """Serves raw ``train``/``val``/``test`` tensors ``(N, *D)`` and maps each batch to model space with ``transform``.

    Subclasses fill ``self.train_raw``, ``self.val_raw``, ``self.test_raw`` and ``self.transform`` in ``__init__``, so
    that ``data_shape`` is known as soon as the DataModule exists (and bad paths or shapes fail at once).
    """

    train_raw: Tensor
    val_raw: Tensor
    test_raw: Tensor
    transform: DataTransform
    train_labels: Tensor | None = None
    val_labels: Tensor | None = None
    test_labels: Tensor | None = None
    num_classes: int | None = None
    """Number of classes when the splits carry labels (batches are then ``(x, y)``), else ``None``."""
    _moments: tuple[Tensor, Tensor] | None = None

    def __init__(self, batch_size: int = 128, num_workers: int = 0, random_flip: bool = False) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.num_workers, self.random_flip = batch_size, num_workers, random_flip

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one data point, e.g. ``(2,)`` or ``(1, 8, 8)``."""
        return tuple(self.train_raw.shape[1:])

    def _set_labels(self, train: Tensor, val: Tensor, test: Tensor, num_classes: int | None = None) -> None:
        """Attach class labels to the three splits; ``num_classes`` defaults to the largest label + 1."""
        self.train_labels, self.val_labels, self.test_labels = train, val, test
        seen = int(max(int(y.max()) for y in (train, val, test) if len(y))) + 1
        if num_classes is not None and seen > num_classes:
            raise ValueError(f"labels go up to {seen - 1} but num_classes={num_classes}")
        self.num_classes = num_classes or seen

    def _loader(self, split: str) -> DataLoader:
        data = getattr(self, f"{split}_raw")
        if len(data) == 0:
            raise ValueError("this split is empty; give it a positive size")
        rows = _Rows(data, getattr(self, f"{split}_labels"))
        options: dict[str, Any] = {
            "num_workers": self.num_workers,
            "collate_fn": _identity,
            "persistent_workers": self.num_workers > 0,
        }
        if split != "train":
            return DataLoader(rows, batch_size=min(self.batch_size, len(data)), **options)
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        # the run's seed, from where Lightning's own distributed sampler takes it (set by seed_everything)
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        order = EpochShuffle(rows, world, rank, seed, epoch=lambda: self._progress()[0])
        batch = min(self.batch_size, len(order))
        return ResumableLoader(
            rows, batch_size=batch, sampler=order, drop_last=len(order) >= batch, progress=self._progress, **options
        )

    def _progress(self) -> tuple[int, int]:
        """The trainer's epoch and the batches of it already trained on (what a resumed run must skip)."""
        trainer = self.trainer
        if trainer is None:
            return 0, 0
        return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_idx + 1

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def on_after_batch_transfer(
        self, batch: Tensor | tuple[Tensor, Tensor], dataloader_idx: int
    ) -> Tensor | tuple[Tensor, Tensor]:
        if isinstance(batch, (tuple, list)):
            x, y = batch
            return self._to_model_space(x), y
        return self._to_model_space(batch)

    def _to_model_space(self, batch: Tensor) -> Tensor:
        x = self.transform.forward(batch)
        if self.random_flip and self.trainer is not None and self.trainer.training:
            if x.ndim != 4:
                raise ValueError(f"random_flip applies to images (B, C, H, W), got batches of shape {tuple(x.shape)}")
            flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5  # horizontal, with probability 1/2
            x = torch.where(flip, x.flip(-1), x)
        return x

    def train_moments(self) -> tuple[Tensor, Tensor]:
        """Mean and covariance of the train split in model space (:func:`scoresde.likelihood.data_moments`; one fixed
        dequantization draw for discrete data), computed once: what :class:`ScoreModule` fits its prior at ``T`` to."""
        if self._moments is None:
            self._moments = data_moments(
                self.train_raw, prepare=lambda rows, index: self.transform.forward_points(rows, index, MOMENTS_STREAM)
            )
        return self._moments

    def real_examples(self, n: int) -> Tensor:
        """``n`` validation points in model space (for pictures next to samples)."""
        return self.transform.forward(self.val_raw[:n], generator=torch.Generator().manual_seed(0))


def _refuse_pixels_as_floats(data: Tensor, path: str, key: str | None) -> None:
    """Continuous data that are all integers spanning 16 or more values are pixels saved as floats: trained on as
    they are, their scale is far from the SDE's, and their likelihood is that of a density, not of discrete data."""
    if data.numel() and bool(torch.isfinite(data).all()) and bool((data == data.round()).all()):
        lo, hi = float(data.min()), float(data.max())
        if hi - lo >= 15:
            raise ValueError(
                f"{path}{f'[{key}]' if key else ''} holds whole numbers from {lo:g} to {hi:g} stored as floats, like "
                f"8-bit pixels: set levels: {int(hi) + 1} (discrete data, mapped to [low, high]), or rescale them"
            )


# ---- 2-D toy sets ------------------------------------------------------------------------------------------------
def _moons(n: int, g: torch.Generator, noise: float = 0.05) -> Tensor:
    upper = torch.rand(n, generator=g) < 0.5
    a = math.pi * torch.rand(n, generator=g)
    x = torch.where(upper, a.cos(), 1 - a.cos())
    y = torch.where(upper, a.sin(), 0.5 - a.sin())
    pts = torch.stack([x - 0.5, y - 0.25], 1) * 1.6
    return pts + noise * torch.randn(n, 2, generator=g)


def _swiss_roll(n: int, g: torch.Generator, noise: float = 0.3) -> Tensor:
    s = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))
    pts = torch.stack([s * s.cos(), s * s.sin()], 1)
    return (pts + noise * torch.randn(n, 2, generator=g)) / 5.0


def _checkerboard(n: int, g: torch.Generator) -> Tensor:
    # Uniform on the 8 dark squares of a 4×4 board over [-2, 2]²
    x = 4 * torch.rand(n, generator=g) - 2
    col = torch.floor(x + 2)
    row = 2 * torch.randint(0, 2, (n,), generator=g) + (col % 2)
    y = row - 2 + torch.rand(n, generator=g)
    return torch.stack([x, y], 1)


TOY_DATASETS = ("ring", "moons", "swiss_roll", "checkerboard", "mixture")


class ToyDataModule(TensorDataModule):
    """Two-dimensional toy data, regenerated identically from ``seed``.

    Args:
        name: ``"ring"`` (8 Gaussians on a circle; exact density known), ``"moons"``, ``"swiss_roll"``,
            ``"checkerboard"``, or ``"mixture"`` (samples of ``mixture``; exact density known).
        mixture: a :class:`~scoresde.GaussianMixture` for ``name="mixture"`` (any dimension).
        n_train, n_val, n_test: split sizes.
        batch_size: training batch size.
        seed: seed of the data draw.
        labels: yield ``(x, y)`` batches with the mixture component ``y`` each point was drawn from (``ring`` and
            ``mixture`` only): the classes of a class-conditional model whose exact conditional score is known.
    """

    def __init__(
        self,
        name: Literal["ring", "moons", "swiss_roll", "checkerboard", "mixture"] = "ring",
        mixture: GaussianMixture | None = None,
        n_train: int = 50_000,
        n_val: int = 5_000,
        n_test: int = 5_000,
        batch_size: int = 512,
        seed: int = 0,
        num_workers: int = 0,
        labels: bool = False,
    ) -> None:
        super().__init__(batch_size, num_workers)
        self.save_hyperparameters()  # recorded in checkpoints, so `scoresde likelihood` can rebuild the data
        if name not in TOY_DATASETS:
            raise ValueError(f"unknown toy dataset {name!r}; available: {', '.join(TOY_DATASETS)}")
        if name == "mixture" and mixture is None:
            raise ValueError("name='mixture' needs a GaussianMixture in `mixture`")
        if name != "mixture" and mixture is not None:
            raise ValueError(f"`mixture` is only used with name='mixture' (got name={name!r})")
        if min(n_train, n_val, n_test) < 1:
            raise ValueError(f"split sizes must be positive, got n_train={n_train}, n_val={n_val}, n_test={n_test}")
        self.name = name
        self.target: GaussianMixture | None = GaussianMixture.ring() if name == "ring" else mixture
        g = torch.Generator().manual_seed(seed)
        n = n_train + n_val + n_test
        if labels and self.target is None:
            raise ValueError(
                f"labels=True needs a dataset made of mixture components ('ring' or 'mixture'), not {name!r}"
            )
        if self.target is not None:
            data, y = self.target.sample(n, generator=g, return_labels=True)
        else:
            data = {"moons": _moons, "swiss_roll": _swiss_roll, "checkerboard": _checkerboard}[name](n, g).float()
        self.train_raw, self.val_raw, self.test_raw = (
            data[:n_train],
            data[n_train : n_train + n_val],
            data[n_train + n_val :],
        )
        self.transform = DataTransform.identity(self.train_raw)
        if labels and self.target is not None:
            y = y.cpu()
            self._set_labels(y[:n_train], y[n_train : n_train + n_val], y[n_train + n_val :], self.target.n_components)


# ---- images ------------------------------------------------------------------------------------------------------
class _ImageDataModule(TensorDataModule):
    """Discrete-valued images ``(N, C, H, W)`` with fixed validation/test splits and a recorded transform."""

    def _setup_images(
        self,
        images: Tensor,
        levels: int,
        val: int,
        test: int,
        seed: int,
        low: float,
        high: float,
        dequantize: bool,
        labels: Tensor | None = None,
    ) -> None:
        if images.ndim != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
        if val + test >= len(images):
            raise ValueError(f"val + test sizes ({val} + {test}) must leave training data out of {len(images)} images")
        tr, va, te = _split(len(images), val, test, seed)
        self.train_raw, self.val_raw, self.test_raw = images[tr], images[va], images[te]
        self.transform = DataTransform.discrete(levels, low, high, dequantize)
        if labels is not None:
            self._set_labels(labels[tr], labels[va], labels[te])


class DigitsDataModule(_ImageDataModule):
    """scikit-learn's bundled 8×8 handwritten digits (1,797 images, 17 grey levels 0…16), shape ``(1, 8, 8)``.

    Fixed splits (seed 0 by default): 1,350 train, 150 validation, 297 test. Pixels are uniformly dequantized and
    mapped to ``[low, high]``; the transform is recorded so bits/dim offsets follow from it (``log2 17 - log2 2``).
    With ``labels=True`` batches are ``(x, y)`` with the digit ``y`` in 0…9 (for class-conditional models).
    """

    def __init__(
        self,
        batch_size: int = 128,
        n_val: int = 150,
        n_test: int = 297,
        split_seed: int = 0,
        low: float = -1.0,
        high: float = 1.0,
        dequantize: bool = True,
        num_workers: int = 0,
        random_flip: bool = False,
        labels: bool = False,
    ) -> None:
        super().__init__(batch_size, num_workers, random_flip)
        self.save_hyperparameters()  # recorded in checkpoints, so `scoresde likelihood` can rebuild the data
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.from_numpy(digits.images.astype(np.uint8)).unsqueeze(1)
        y = _check_labels(digits.target, len(images), "digits") if labels else None
        self._setup_images(images, 17, n_val, n_test, split_seed, low, high, dequantize, y)


def nchw(arr: np.ndarray) -> np.ndarray:
    """Images to (N, C, H, W): (N, H, W) gains a channel; (N, H, W, C) with C in 1/3/4 is transposed."""
    if arr.ndim == 3:
        return arr[:, None]
    if arr.ndim == 4 and arr.shape[-1] in (1, 3, 4) and arr.shape[1] not in (1, 3, 4):
        return arr.transpose(0, 3, 1, 2)
    return arr


class NpzDataModule(TensorDataModule):
    """Data from an ``.npz`` (or ``.npy``) file: an array ``(N, *D)``, optionally with a separate test array.

    Integer arrays are treated as discrete (``levels`` defaults to 256 for ``uint8``) and dequantized into
    ``[low, high]``; image arrays ``(N, H, W)``/``(N, H, W, C)`` become ``(N, C, H, W)``. Float arrays are continuous and
    used as they are (``levels=None``).

    Args:
        path: the file.
        key: array name inside an ``.npz`` (default: its only array, or ``"x"``/``"data"``/``"images"``/``"train"``).
        test_key: an array of the same file that is the test split (e.g. CIFAR-10's official ``"test"`` images, as
            written by ``scripts/export_cifar10.py``). Then all of ``key`` is trained on, the test split is ``test_key``,
            and the validation split is ``val_fraction`` of the test array (a fixed subset; validation only monitors).
        levels: number of discrete values per entry (``None``: continuous for floats, 256 for ``uint8``).
        label_key: an array of class labels ``(N,)`` in the same file (e.g. ``"train_labels"``): batches become
            ``(x, y)`` for class-conditional training.
        test_label_key: the labels of ``test_key`` (needed with ``test_key`` and ``label_key``).
        val_fraction, test_fraction: split sizes as fractions (``test_fraction`` only without ``test_key``).
        random_flip: flip training images horizontally with probability 1/2 (the paper's CIFAR-10 setting).
    """

    def __init__(
        self,
        path: str,
        key: str | None = None,
        test_key: str | None = None,
        levels: int | None = None,
        batch_size: int = 128,
        val_fraction: float = 0.05,
        test_fraction: float | None = None,
        split_seed: int = 0,
        low: float = -1.0,
        high: float = 1.0,
        dequantize: bool = True,
        num_workers: int = 0,
        random_flip: bool = False,
        label_key: str | None = None,
        test_label_key: str | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, random_flip)
        self.save_hyperparameters()  # recorded in checkpoints, so `scoresde likelihood` can rebuild the data
        if test_key is not None and label_key is not None and test_label_key is None:
            raise ValueError("with test_key and label_key, name the test labels too: test_label_key=...")
        if test_key is not None and test_fraction is not None:
            raise ValueError(
                "give either test_key (a test array in the file) or test_fraction (split one array), not both"
            )
        arr = self._load(Path(path), key)
        discrete = np.issubdtype(arr.dtype, np.integer) or levels is not None
        if discrete and levels is None:
            if arr.dtype != np.uint8:
                raise ValueError(f"{path}: integer data of dtype {arr.dtype}: set `levels` (values per entry)")
            levels = 256
        data = self._tensor(arr, discrete, levels, f"{path}[{key}]" if key else path)
        if not discrete:
            _refuse_pixels_as_floats(data, path, key)
        transform = (
            DataTransform.discrete(levels, low, high, dequantize)
            if levels is not None
            else DataTransform.identity(data)
        )
        if test_key is None:
            val, test = _split_sizes(len(data), val_fraction, 0.05 if test_fraction is None else test_fraction)
            tr, va, te = _split(len(data), val, test, split_seed)
            self.train_raw, self.val_raw, self.test_raw = data[tr], data[va], data[te]
            if label_key is not None:
                y = _check_labels(self._load(Path(path), label_key, labels=True), len(data), f"{path}[{label_key}]")
                self._set_labels(y[tr], y[va], y[te])
        else:
            test_data = self._tensor(self._load(Path(path), test_key), discrete, levels, f"{path}[{test_key}]")
            if test_data.shape[1:] != data.shape[1:] or test_data.dtype != data.dtype:
                raise ValueError(
                    f"{path}: the test array {test_key!r} has shape {tuple(test_data.shape[1:])}, "
                    f"the train array {tuple(data.shape[1:])}; they must match"
                )
            val, _ = _split_sizes(len(test_data), val_fraction, 0.0)
            self.train_raw, self.test_raw = data, test_data
            va = _split(len(test_data), val, 0, split_seed)[1]
            self.val_raw = test_data[va]
            if label_key is not None:
                y = _check_labels(self._load(Path(path), label_key, labels=True), len(data), f"{path}[{label_key}]")
                y_test = _check_labels(
                    self._load(Path(path), test_label_key, labels=True), len(test_data), f"{path}[{test_label_key}]"
                )
                self._set_labels(y, y_test[va], y_test)
        for name, split in (("train", self.train_raw), ("test", self.test_raw)):
            # NaN, range and integrality, before training starts (without dequantizing them all)
            transform.check(split, f"{path}: the {name} data")
        self.transform = transform

    @staticmethod
    def _tensor(arr: np.ndarray, discrete: bool, levels: int | None = None, what: str = "data") -> Tensor:
        if discrete:
            x = torch.from_numpy(np.ascontiguousarray(nchw(arr)))
            if x.is_floating_point() and levels is not None:
                DataTransform(levels=levels).check(x, what)  # before the integer cast would truncate fractions
            return x.to(torch.int64)
        return torch.from_numpy(np.ascontiguousarray(arr)).to(torch.float32)

    @staticmethod
    def _load(path: Path, key: str | None, labels: bool = False) -> np.ndarray:
        if not path.is_file():
            raise FileNotFoundError(f"data file not found: {path}")
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            arr = loaded
        else:
            names = list(loaded.keys())
            if key is None:
                key = (
                    names[0]
                    if len(names) == 1
                    else next((k for k in ("x", "data", "images", "train") if k in names), None)
                )
            if key not in names:
                asked = f"no array {key!r}: " if key is not None else ""
                raise MissingArrayError(f"{path} holds {asked}arrays {names}; choose one with key=...")
            arr = loaded[key]
        if not labels and (arr.ndim < 2 or len(arr) < 3):
            raise ValueError(f"{path}: expected an array (N, *D) with N >= 3, got shape {arr.shape}")
        return arr


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def read_image_folder(root: str | Path, mode: str | None = None, minimum: int = 1) -> np.ndarray:
    """Every image under ``root`` (searched recursively, sorted by path) as one array ``(N, C, H, W)``, converted to
    PIL ``mode`` (``"L"``, ``"RGB"``; ``None``: as stored). All images must have one size."""
    from PIL import Image

    folder = Path(root)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if len(files) < minimum:
        raise ValueError(
            f"found {len(files)} images under {folder}; need at least {minimum} ({', '.join(IMAGE_EXTENSIONS)})"
        )
    arrays = []
    for f in files:
        with Image.open(f) as im:
            arrays.append(np.asarray(im if mode is None else im.convert(mode)))
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise ValueError(f"images under {folder} have different sizes {sorted(sizes)}; resize them to one size first")
    return np.ascontiguousarray(nchw(np.stack(arrays)))


class ImageFolderDataModule(_ImageDataModule):
    """All images under ``root`` (png, jpg, jpeg, bmp, gif; searched recursively), 8-bit, of one common size.

    Args:
        root: the folder.
        mode: ``"L"`` (grey, 1 channel) or ``"RGB"`` (3 channels).
        random_flip: flip training images horizontally with probability 1/2.
    """

    def __init__(
        self,
        root: str,
        mode: Literal["L", "RGB"] = "RGB",
        batch_size: int = 128,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        split_seed: int = 0,
        low: float = -1.0,
        high: float = 1.0,
        dequantize: bool = True,
        num_workers: int = 0,
        random_flip: bool = False,
    ) -> None:
        super().__init__(batch_size, num_workers, random_flip)
        self.save_hyperparameters()  # recorded in checkpoints, so `scoresde likelihood` can rebuild the data
        if mode not in ("L", "RGB"):
            raise ValueError(f"mode must be 'L' or 'RGB', got {mode!r}")
        images = torch.from_numpy(read_image_folder(root, mode, minimum=3))
        val, test = _split_sizes(len(images), val_fraction, test_fraction)
        self._setup_images(images, 256, val, test, split_seed, low, high, dequantize)
