"""Train the digits feature network of scoresde.evaluation (the domain FID's features) and write its weights.

A small CNN classifies the embedded 8×8 digits' train split (1350 images, 10 classes), with random shifts of one
pixel as augmentation, 60 epochs of Adam. Deterministic on a CPU; a few seconds. Prints the accuracy on the test split.

    python scripts/train_digits_features.py [--out scoresde/data/digits_features.pt]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from scoresde.evaluation import DigitsFeatureNet
from scoresde.lightning import DigitsDataModule

ROOT = Path(__file__).resolve().parents[1]


def shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each image moved by up to one pixel in each direction (zero fill)."""
    padded = F.pad(x, (1, 1, 1, 1))
    dy, dx = torch.randint(0, 3, (2,), generator=g).tolist()
    return padded[:, :, dy : dy + 8, dx : dx + 8]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "scoresde/data/digits_features.pt")
    p.add_argument("--epochs", type=int, default=60)
    a = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # bit-reproducible
    dm = DigitsDataModule(labels=True)
    x, y = dm.train_raw.float(), dm.train_labels
    net, g = DigitsFeatureNet(), torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for epoch in range(a.epochs):
        for idx in torch.randperm(len(x), generator=g).split(64):
            loss = F.cross_entropy(net(shift(x[idx], g)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = float((net(dm.test_raw.float()).argmax(1) == dm.test_labels).float().mean())
    a.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), a.out)
    print(f"test accuracy {acc:.4f} on {len(dm.test_raw)} images; wrote {a.out}")


if __name__ == "__main__":
    main()
