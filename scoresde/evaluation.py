"""Image metrics of samples against a reference set: FID, KID, Inception Score and precision/recall.

All four are computed from the features of one fixed network, through torchmetrics' metric classes (FID, KID, IS)
fed with precomputed features, so the feature network and the metric are separate:

* ``inception``: torch-fidelity's port of the TF FID Inception-v3 (via torchmetrics), 2048-d pool features and
  1008 logits, from a local weights file (``--inception PATH`` or ``SCORESDE_INCEPTION_WEIGHTS``; nothing is
  downloaded). The standard FID.
* ``digits``: a small CNN trained on the embedded digits' train split, shipped with scoresde (64-d features, 10
  logits). A *domain* FID for 8×8 digits, where Inception features mean little and cannot be fetched offline.

Precision and recall are Kynkäänniemi et al. (2019): the share of samples inside the union of the reference's
k-nearest-neighbour balls, and of reference points inside the samples' (k = 3). torchmetrics has no such metric and
torch-fidelity's needs torchvision, so :func:`precision_recall` computes it here (tested on cases with known answers).

Reference statistics are cached to an ``.npz``: torchmetrics' sufficient statistics of FID (feature sum, sum of outer
products, count) and up to ``max_features`` reference features for KID and precision/recall.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._utils import save_npz

__all__ = [
    "FEATURES",
    "DigitsFeatureNet",
    "feature_extractor",
    "ReferenceStats",
    "reference_stats",
    "image_metrics",
    "precision_recall",
    "INCEPTION_WEIGHTS_FILE",
]

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
"""torch-fidelity's Inception-v3 weights (the TF FID network), the file ``feature=2048`` needs."""

Extractor = Callable[[Tensor], tuple[Tensor, Tensor]]
"""``uint8 (N, C, H, W)`` images → ``(features (N, d), logits (N, K))``, float64."""


class DigitsFeatureNet(nn.Module):
    """A small CNN for 8×8 digits (grey levels ``0 … 16``): three convolutions, a mean pool to 64 features, a linear
    layer to 10 class logits. Its weights ship with scoresde (``scripts/train_digits_features.py`` makes them)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.SiLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.SiLU(),
        )  # fmt: skip
        self.head = nn.Linear(64, 10)

    def features(self, x: Tensor) -> Tensor:
        """``x: (N, 1, 8, 8)`` grey levels in ``[0, 16]`` → ``(N, 64)``."""
        return self.body(x / 16.0).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


DIGITS_WEIGHTS = "digits_features.pt"


def _digits_extractor(weights: str | Path | None) -> Extractor:
    net = DigitsFeatureNet()
    source = Path(weights) if weights else resources.files("scoresde") / "data" / DIGITS_WEIGHTS
    with source.open("rb") as f:
        net.load_state_dict(torch.load(f, map_location="cpu", weights_only=True))
    net.eval()

    def extract(images: Tensor) -> tuple[Tensor, Tensor]:
        if images.shape[1:] != (1, 8, 8):
            raise ValueError(f"the digits features take (N, 1, 8, 8) grey levels 0 … 16, got {tuple(images.shape)}")
        if int(images.max()) > 16:
            raise ValueError(f"the digits features take grey levels 0 … 16, got values up to {int(images.max())}")
        with torch.no_grad():
            f = net.features(images.float())
            return f.double(), net.head(f).double()

    return extract


def _inception_extractor(weights: str | Path | None) -> Extractor:
    path = weights or os.environ.get("SCORESDE_INCEPTION_WEIGHTS")
    if not path or not Path(path).is_file():
        where = f"{path} does not exist" if path else "no weights file was given"
        raise FileNotFoundError(
            f"Inception features need {INCEPTION_WEIGHTS_FILE} ({where}): download it once, on a machine with "
            "internet, from torch-fidelity's GitHub releases, then pass --inception PATH or set "
            "SCORESDE_INCEPTION_WEIGHTS"
        )
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
    except (ImportError, RuntimeError) as err:  # RuntimeError: a torchvision built for another torch
        raise ImportError(
            "Inception features need torch-fidelity: pip install 'scoresde[metrics]', with torchvision from the "
            f"same index as torch ({type(err).__name__}: {err})"
        ) from err
    net = NoTrainInceptionV3(
        name="inception-v3-compat", features_list=["2048", "logits_unbiased"], feature_extractor_weights_path=str(path)
    )

    def extract(images: Tensor) -> tuple[Tensor, Tensor]:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)  # grey images as RGB
        with torch.no_grad():
            pool, logits = net._torch_fidelity_forward(images.to(torch.uint8))
        return pool.reshape(len(images), -1).double(), logits.reshape(len(images), -1).double()

    return extract


FEATURES: dict[str, Callable[[str | Path | None], Extractor]] = {
    "inception": _inception_extractor,
    "digits": _digits_extractor,
}


def feature_extractor(name: str, weights: str | Path | None = None) -> Extractor:
    """The feature network ``name`` (``inception`` or ``digits``) as ``images → (features, logits)``."""
    if name not in FEATURES:
        raise ValueError(f"unknown features {name!r}; available: {', '.join(FEATURES)}")
    return FEATURES[name](weights)


def _batches(images: np.ndarray | Tensor, batch_size: int) -> Iterator[Tensor]:
    """Batches with the standard strides (a transposed array keeps odd strides on its size-1 channel axis, and
    convolutions then take another kernel, with other rounding)."""
    for i in range(0, len(images), batch_size):
        b = torch.as_tensor(np.asarray(images[i : i + batch_size]))
        yield torch.empty(b.shape, dtype=b.dtype).copy_(b)


def extract_features(
    extract: Extractor,
    images: np.ndarray | Tensor,
    batch_size: int = 200,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """Features and logits of ``images: uint8 (N, C, H, W)`` in batches: ``(N, d)`` and ``(N, K)`` (``progress``: a
    bar over the batches)."""
    feats, logits = [], []
    batches = _batches(images, batch_size)
    for batch in tqdm(batches, total=-(-len(images) // batch_size), desc="features", disable=not progress):
        f, lg = extract(batch)
        feats.append(f)
        logits.append(lg)
    return torch.cat(feats), torch.cat(logits)


@dataclass
class ReferenceStats:
    """What the metrics need of a reference set: FID's sufficient statistics (``feature_sum: (d,)``,
    ``outer_sum: (d, d)`` = Σ f fᵀ, ``count``) and a subset of its features ``(M, d)`` for KID and precision/recall
    (``None`` when built from someone's precomputed mean and covariance)."""

    features_name: str
    feature_sum: Tensor
    outer_sum: Tensor
    count: int
    features: Tensor | None

    @classmethod
    def from_features(cls, name: str, f: Tensor, max_features: int = 10_000, seed: int = 0) -> ReferenceStats:
        f = f.double()
        keep = f
        if len(f) > max_features:
            keep = f[torch.randperm(len(f), generator=torch.Generator().manual_seed(seed))[:max_features]]
        return cls(name, f.sum(0), f.T @ f, len(f), keep)

    @classmethod
    def from_mean_cov(cls, name: str, mu: Tensor, sigma: Tensor, count: int = 50_000) -> ReferenceStats:
        """From a precomputed ``mu, sigma`` (e.g. a reference repository's ``fid_stats_*.npz``): the sums that
        give back exactly that mean and (unbiased) covariance."""
        mu, sigma = mu.double(), sigma.double()
        return cls(name, count * mu, (count - 1) * sigma + count * torch.outer(mu, mu), count, None)

    @property
    def mean(self) -> Tensor:
        return self.feature_sum / self.count

    @property
    def cov(self) -> Tensor:
        m = self.mean
        return (self.outer_sum - self.count * torch.outer(m, m)) / (self.count - 1)

    def save(self, path: str | Path) -> Path:
        arrays = {
            "features_name": np.asarray(self.features_name),
            "feature_sum": self.feature_sum.numpy(),
            "outer_sum": self.outer_sum.numpy(),
            "count": np.asarray(self.count),
        }
        if self.features is not None:
            arrays["features"] = self.features.numpy()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return save_npz(Path(path), arrays)

    @staticmethod
    def is_stats_file(path: str | Path) -> bool:
        """Whether ``path`` is an ``.npz`` of statistics (scoresde's, or ``mu``/``sigma``) rather than of images."""
        if Path(path).suffix != ".npz" or not Path(path).is_file():
            return False
        with np.load(path) as z:
            return "feature_sum" in z or ("mu" in z and "sigma" in z)

    @classmethod
    def load(cls, path: str | Path, expect: str | None = None) -> ReferenceStats:
        """Statistics saved by :meth:`save` (or a ``mu``/``sigma`` file: Inception); ``expect`` refuses those of
        other features."""
        with np.load(path) as z:
            if "mu" in z and "sigma" in z:  # someone's precomputed statistics: mean and covariance only
                stats = cls.from_mean_cov("inception", torch.from_numpy(z["mu"]), torch.from_numpy(z["sigma"]))
            elif "feature_sum" in z:
                feats = torch.from_numpy(z["features"]) if "features" in z else None
                stats = cls(str(z["features_name"]), torch.from_numpy(z["feature_sum"]),
                            torch.from_numpy(z["outer_sum"]), int(z["count"]), feats)  # fmt: skip
            else:
                raise ValueError(f"{path} holds neither scoresde reference statistics nor mu/sigma")
        if expect is not None and stats.features_name != expect:
            raise ValueError(f"{path} holds {stats.features_name} statistics, not {expect}; give {expect} statistics")
        return stats


def reference_stats(
    extract: Extractor,
    name: str,
    images: np.ndarray | Tensor,
    cache: str | Path | None = None,
    batch_size: int = 200,
    progress: bool = False,
) -> ReferenceStats:
    """Statistics of a reference set, read from ``cache`` when it exists and written there otherwise."""
    if cache is not None and Path(cache).is_file():
        return ReferenceStats.load(cache, expect=name)
    stats = ReferenceStats.from_features(name, extract_features(extract, images, batch_size, progress)[0])
    if cache is not None:
        stats.save(cache)
    return stats


class _Given(nn.Module):
    """torchmetrics' feature hook fed precomputed features: the identity."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, f: Tensor) -> Tensor:
        return f


def precision_recall(real: Tensor, fake: Tensor, k: int = 3, block: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019) of ``fake: (N, d)`` against ``real: (M, d)``.

    A point's manifold ball has the radius of its ``k``-th nearest neighbour within its own set; precision is the
    share of ``fake`` points inside at least one ball of ``real``, recall the share of ``real`` inside ``fake``'s.
    """
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} points in each set")

    def radii(x: Tensor) -> Tensor:
        # the k-th smallest distance to the others (index k: the point itself is at distance 0)
        return torch.cat(
            [torch.cdist(x[i : i + block], x).kthvalue(k + 1, dim=1).values for i in range(0, len(x), block)]
        )

    def covered(points: Tensor, centres: Tensor, r: Tensor) -> float:
        inside = [(torch.cdist(points[i : i + block], centres) <= r[None]).any(1) for i in range(0, len(points), block)]
        return float(torch.cat(inside).double().mean())

    real, fake = real.double(), fake.double()
    return covered(fake, real, radii(real)), covered(real, fake, radii(fake))


def image_metrics(
    stats: ReferenceStats,
    features: Tensor,
    logits: Tensor,
    *,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    is_splits: int = 10,
    k: int = 3,
    seed: int = 0,
) -> dict[str, float]:
    """FID, KID (mean and std over subsets), Inception Score (mean, std over splits) and precision/recall of the
    samples' ``features: (N, d)``, ``logits: (N, K)`` against a reference's statistics."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore
    from torchmetrics.image.kid import KernelInceptionDistance

    d = features.shape[1]
    if stats.feature_sum.numel() != d:
        raise ValueError(f"the reference has {stats.feature_sum.numel()}-d features, the samples {d}-d")
    fid = FrechetInceptionDistance(feature=_Given(d), reset_real_features=False)
    fid.real_features_sum, fid.real_features_cov_sum = stats.feature_sum.clone(), stats.outer_sum.clone()
    fid.real_features_num_samples = torch.tensor(stats.count)
    fid.update(features, real=False)
    out = {"fid": float(fid.compute()), "n_samples": float(len(features)), "n_reference": float(stats.count)}
    with torch.random.fork_rng(), warnings.catch_warnings():  # KID's subsets and IS's splits use the global RNG
        warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer.*")
        torch.manual_seed(seed)
        isc = InceptionScore(feature=_Given(logits.shape[1]), splits=min(is_splits, len(logits)))
        isc.update(logits)
        is_mean, is_std = isc.compute()
        out.update(inception_score=float(is_mean), inception_score_std=float(is_std))
        if stats.features is not None:
            size = min(kid_subset_size, len(features), len(stats.features))
            kid = KernelInceptionDistance(feature=_Given(d), subsets=kid_subsets, subset_size=size)
            kid.update(stats.features, real=True)
            kid.update(features, real=False)
            kid_mean, kid_std = kid.compute()
            precision, recall = precision_recall(stats.features, features, k=k)
            out.update(kid=float(kid_mean), kid_std=float(kid_std), precision=precision, recall=recall)
    return out
