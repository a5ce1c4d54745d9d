#!/usr/bin/env python3
"""Export CIFAR-10 to one ``.npz`` for ``NpzDataModule`` (nothing is downloaded).

Give it the official "CIFAR-10 python version" archive (``cifar-10-python.tar.gz``) or the folder it unpacks to
(``cifar-10-batches-py/``); it writes ``train`` (50000, 32, 32, 3) and ``test`` (10000, 32, 32, 3) uint8 arrays plus
their labels:

    python scripts/export_cifar10.py ~/data/cifar-10-python.tar.gz data/cifar10.npz

The experiments read it with ``NpzDataModule(path=data/cifar10.npz, key=train, test_key=test)``.
"""

from __future__ import annotations

import argparse
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
TEST = ["test_batch"]


def _read_batches(source: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 32, 32, 3)`` uint8 and labels ``(N,)`` of the named pickled batches."""
    blobs = []
    if source.is_dir():
        for name in names:
            path = source / name
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: give the cifar-10-batches-py folder or the .tar.gz")
            blobs.append(path.read_bytes())
    else:
        with tarfile.open(source) as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            for name in names:
                if name not in members:
                    raise FileNotFoundError(f"{source} holds no {name}: is it the CIFAR-10 python version?")
                blobs.append(tar.extractfile(members[name]).read())
    images, labels = [], []
    for blob in blobs:
        batch = pickle.load(io.BytesIO(blob), encoding="bytes")  # the official batches are pickled dicts
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def export(source: Path, out: Path) -> dict[str, tuple[int, ...]]:
    """Write ``out`` (``train``, ``train_labels``, ``test``, ``test_labels``) and return the array shapes."""
    train, train_labels = _read_batches(source, TRAIN)
    test, test_labels = _read_batches(source, TEST)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    with open(tmp, "wb") as fh:
        np.savez(fh, train=train, train_labels=train_labels, test=test, test_labels=test_labels)
    tmp.replace(out)  # atomic: a half-written file never carries the final name
    return {"train": train.shape, "test": test.shape}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="cifar-10-python.tar.gz or the cifar-10-batches-py folder")
    parser.add_argument("out", type=Path, help="output .npz, e.g. data/cifar10.npz")
    args = parser.parse_args()
    shapes = export(args.source, args.out)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in shapes.items()))


if __name__ == "__main__":
    main()
