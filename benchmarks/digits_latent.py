"""Latent diffusion on the digits against the pixel-space model: reconstruction, cost per evaluation, likelihood.

* **Reconstruction** of the first stage on the test split: mean squared error in [0, 1] pixels and the share of
  pixels whose decoded grey level (0…16) is off by more than one level.
* **Cost per score evaluation**: the latent model's network on ``(B, 2, 4, 4)`` latents against the pixel model's
  on ``(B, 1, 8, 8)`` digits, and the decoder once per sample; medians of ``--repeats`` interleaved rounds, with
  their ratio (each round times both in turn, so the machine's load hits both alike).
* **Likelihood** of the first ``--bpd-limit`` test digits, in bits/dim with the data's offset and the same
  dequantization draws for both: the pixel model's probability-flow value, and the latent model's
  ``log p(z) + log p(x | z)`` at the encoded latent (:func:`scoresde.autoencoder.latent_log_likelihood`; not a
  guaranteed bound, docs/pipelines.md); dopri5 at 1e-5, the trace by ``--trace`` (default Hutchinson, one
  Rademacher probe held per sample, as ``scoresde likelihood``; ``exact`` costs D VJPs per evaluation).

Sample quality (domain FID) comes from ``benchmarks/digits_fid.py`` on the same checkpoints.

    python benchmarks/digits_latent.py --latent runs/digits_latent/checkpoints/last.ckpt \
        --pixel runs/digits_vp/checkpoints/last.ckpt [--repeats 15] [--bpd-limit 64] \
        [--out benchmarks/results/digits_latent.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from scoresde.autoencoder import latent_log_likelihood
from scoresde.lightning.commands._common import load_model
from scoresde.lightning.data import DigitsDataModule
from scoresde.likelihood import log_likelihood, nats_to_bits_per_dim

ROOT = Path(__file__).resolve().parents[1]


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latent", required=True)
    p.add_argument("--pixel", required=True)
    p.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--bpd-limit", type=int, default=64, help="test digits for bits/dim (0: skip)")
    p.add_argument("--trace", choices=["hutchinson", "exact"], default="hutchinson")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/digits_latent.json")
    a = p.parse_args()
    torch.set_grad_enabled(False)
    latent, pixel = load_model(a.latent, latent=True), load_model(a.pixel)
    codec = latent.codec
    assert codec is not None, f"{a.latent} is not a latent model"
    dm = DigitsDataModule()
    report: dict = {"latent": a.latent, "pixel": a.pixel, "latent_shape": list(codec.latent_shape)}

    # ---- reconstruction ----------------------------------------------------------------------------------------
    raw = dm.test_raw
    x = dm.transform.forward(raw, u=torch.full(raw.shape, 0.5))
    back = dm.transform.inverse(codec.to_data(codec.to_latent(x)))
    unit_err = (back.float() - raw.float()) / float(raw.max())
    report["reconstruction_mse_unit"] = float(unit_err.pow(2).mean())
    report["reconstruction_off_by_more_than_one_level"] = float(((back - raw).abs() > 1).float().mean())
    print(f"reconstruction: MSE {report['reconstruction_mse_unit']:.5f} in [0, 1] pixels, "
          f"{100 * report['reconstruction_off_by_more_than_one_level']:.2f}% of pixels off by > 1 grey level")

    # ---- cost per evaluation -------------------------------------------------------------------------------------
    report["cost"] = []
    for B in a.batch:
        xl, xp = torch.randn(B, *codec.latent_shape), torch.randn(B, *pixel.data_shape)
        t = torch.full((B,), 0.5)
        lat, pix, dec = [], [], []
        for _ in range(2):  # warm-up
            latent.score_model(xl, t), pixel.score_model(xp, t), codec.to_data(xl)
        for _ in range(a.repeats):  # interleaved rounds
            lat.append(_timed(lambda: latent.score_model(xl, t)))
            pix.append(_timed(lambda: pixel.score_model(xp, t)))
            dec.append(_timed(lambda: codec.to_data(xl)))
        row = {"batch": B, "latent_ms": 1e3 * statistics.median(lat), "pixel_ms": 1e3 * statistics.median(pix),
               "decode_ms": 1e3 * statistics.median(dec)}
        row["ratio_pixel_over_latent"] = row["pixel_ms"] / row["latent_ms"]
        report["cost"].append(row)
        print(f"batch {B}: latent score {row['latent_ms']:.2f} ms, pixel score {row['pixel_ms']:.2f} ms "
              f"({row['ratio_pixel_over_latent']:.2f}x), decoder once {row['decode_ms']:.2f} ms")

    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=1))  # the likelihood below takes minutes: keep what is measured

    # ---- likelihood ----------------------------------------------------------------------------------------------
    if a.bpd_limit:
        raw = dm.test_raw[: a.bpd_limit]
        u = torch.rand(raw.shape, generator=torch.Generator().manual_seed(0))
        x = dm.transform.forward(raw, u=u)
        D, offset = x[0].numel(), dm.transform.bpd_offset
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(1)
        res = latent_log_likelihood(codec, latent.score_model, latent.sde, x, trace=a.trace, generator=g)
        lat_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(1)
        pix = log_likelihood(pixel.score_model, pixel.sde, x, prior=pixel.fitted_prior, trace=a.trace, generator=g)
        pix_s = time.perf_counter() - t0
        bl = nats_to_bits_per_dim(res.logp, D, offset)
        bp = nats_to_bits_per_dim(pix.logp, D, offset)
        se = lambda v: float(v.std() / len(v) ** 0.5)  # noqa: E731
        report["bpd"] = {
            "n": len(raw), "latent_joint": float(bl.mean()), "latent_joint_stderr": se(bl),
            "latent_part": float(nats_to_bits_per_dim(res.latent, D, 0).mean()),
            "decoder_part": float(nats_to_bits_per_dim(res.decoder, D, 0).mean()),
            "pixel": float(bp.mean()), "pixel_stderr": se(bp), "latent_seconds": lat_s, "pixel_seconds": pix_s,
            "latent_nfe": res.flow.nfe, "pixel_nfe": pix.nfe,
        }
        print(f"bits/dim on {len(raw)} test digits: latent {report['bpd']['latent_joint']:.3f} ± "
              f"{report['bpd']['latent_joint_stderr']:.3f} ({lat_s:.0f} s), pixel {report['bpd']['pixel']:.3f} ± "
              f"{report['bpd']['pixel_stderr']:.3f} ({pix_s:.0f} s)")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
