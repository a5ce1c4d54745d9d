"""The first stage of latent diffusion (Rombach et al., 2022): an autoencoder, its loss, and the scaled latent space.

Diffusion runs on latents ``z = s · E(x)`` instead of data: ``E`` encodes, ``D`` decodes, and the scale factor ``s``
(one number, stored with the model) makes the latents' standard deviation 1, so an SDE with a unit-variance prior
fits them (Rombach et al., §4.3.2 and appendix G). Any SDE, solver, guidance and likelihood then work on the latent
shape; samples are decoded at the end.

An autoencoder here also owns its decoder's density ``log p(x | z)``. The likelihood of a latent model is reported as
what it is: the latent probability-flow value ``log p(z)`` at the encoded data (with the scale's Jacobian) plus the
decoder term ``log p(x | z)`` (:func:`latent_log_likelihood`). It is the joint density at the encoded latent; it equals
``log p(x)`` for an orthonormal linear encoder whose decoder noise lies off the latent subspace
(:class:`LinearAutoencoder`, the exact test). Otherwise it is the variational bound's integrand at the encoder's mean,
without the encoder's entropy: neither the likelihood nor a guaranteed bound on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ._typing import ScoreFn
from ._utils import check_batch
from .likelihood import LikelihoodResult, log_likelihood
from .sde import SDE

__all__ = [
    "Autoencoder",
    "LinearAutoencoder",
    "ConvAutoencoder",
    "AutoencoderLoss",
    "LatentCodec",
    "LatentLikelihood",
    "latent_log_likelihood",
]


class Autoencoder(nn.Module):
    """The interface of a first stage: ``encode(x) -> (mean, logvar or None)``, ``decode(z)``, the latent and data
    shapes, and the decoder's density ``decoder_log_prob(x, z) -> (B,)`` nats."""

    data_shape: tuple[int, ...]
    latent_shape: tuple[int, ...]

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(mean, logvar)`` of ``q(z | x)`` for ``x: (B, *data_shape)``, each ``(B, *latent_shape)`` (``logvar``
        ``None`` for a deterministic encoder)."""
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:
        """The decoder's mean ``D(z)``: ``(B, *data_shape)``."""
        raise NotImplementedError

    def decoder_log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        """``log p(x | z)`` in nats: ``(B,)``."""
        raise NotImplementedError


class LinearAutoencoder(Autoencoder):
    """Encoder ``Uᵀ``, decoder ``U`` for ``U: (D, k)`` with orthonormal columns, and decoder noise ``N(0, tau² I)`` in
    the ``D - k`` directions off the subspace: for data ``x = U z + noise`` it is exact (the latent-diffusion test).

    Args:
        U: ``(D, k)``, ``Uᵀ U = I``.
        noise_std: ``tau``, the standard deviation off the subspace.
        data_shape: the shape of one sample (default ``(D,)``).
    """

    U: Tensor

    def __init__(self, U: Tensor, noise_std: float, data_shape: Sequence[int] | None = None) -> None:
        super().__init__()
        U = torch.as_tensor(U, dtype=torch.float64)
        D, k = U.shape
        if not torch.allclose(U.T @ U, torch.eye(k, dtype=torch.float64), atol=1e-8):
            raise ValueError("LinearAutoencoder: U must have orthonormal columns (Uᵀ U = I)")
        if not noise_std > 0:
            raise ValueError(f"LinearAutoencoder: noise_std must be positive, got {noise_std}")
        self.register_buffer("U", U)
        self.noise_std = float(noise_std)
        self.data_shape = tuple(data_shape) if data_shape is not None else (D,)
        self.latent_shape = (k,)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        return x.flatten(1) @ self.U.to(x.dtype), None

    def decode(self, z: Tensor) -> Tensor:
        return (z @ self.U.T.to(z.dtype)).reshape(z.shape[0], *self.data_shape)

    def decoder_log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        """``log N(x - U z; 0, tau² I_{D-k})``: the residual of an encoded ``x`` lies off the subspace."""
        r = (x - self.decode(z)).flatten(1).double()
        D, k = self.U.shape
        return -0.5 * r.pow(2).sum(1) / self.noise_std**2 - 0.5 * (D - k) * math.log(2 * math.pi * self.noise_std**2)


class ConvAutoencoder(Autoencoder):
    """A small convolutional autoencoder with a KL-regularised Gaussian encoder (Rombach et al.'s "KL-f" first stage,
    scaled down): ``levels`` stride-2 convolutions from ``(C, H, W)`` to ``(latent_channels, H / 2^levels, ...)``, and
    a Gaussian decoder ``p(x | z) = N(D(z), decoder_std² I)``.

    Args:
        data_shape: ``(C, H, W)`` with ``H`` and ``W`` divisible by ``2^levels``.
        latent_channels: channels of the latent.
        channels: width of the hidden convolutions.
        levels: downsampling steps (each halves ``H`` and ``W``).
        decoder_std: the decoder's standard deviation in model units (the data's ``[-1, 1]``).
    """

    def __init__(
        self,
        data_shape: Sequence[int] = (1, 8, 8),
        latent_channels: int = 2,
        channels: int = 64,
        levels: int = 1,
        decoder_std: float = 0.1,
    ) -> None:
        super().__init__()
        C, H, W = (int(s) for s in data_shape)
        f = 2**levels
        if H % f or W % f:
            raise ValueError(f"ConvAutoencoder: H and W ({H}, {W}) must be divisible by 2^levels = {f}")
        if not decoder_std > 0:
            raise ValueError(f"ConvAutoencoder: decoder_std must be positive, got {decoder_std}")
        self.data_shape, self.latent_shape = (C, H, W), (latent_channels, H // f, W // f)
        self.decoder_std = float(decoder_std)
        act = nn.SiLU
        down: list[nn.Module] = [nn.Conv2d(C, channels, 3, padding=1), act()]
        up: list[nn.Module] = [nn.Conv2d(latent_channels, channels, 3, padding=1), act()]
        for _ in range(levels):
            down += [nn.Conv2d(channels, channels, 4, stride=2, padding=1), act()]
            down += [nn.Conv2d(channels, channels, 3, padding=1), act()]
            up += [nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1), act()]
            up += [nn.Conv2d(channels, channels, 3, padding=1), act()]
        self.encoder = nn.Sequential(*down, nn.Conv2d(channels, 2 * latent_channels, 3, padding=1))
        self.decoder = nn.Sequential(*up, nn.Conv2d(channels, C, 3, padding=1))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def decoder_log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        r = (x - self.decode(z)).flatten(1).double()
        return -0.5 * r.pow(2).sum(1) / self.decoder_std**2 - 0.5 * r.shape[1] * math.log(
            2 * math.pi * self.decoder_std**2
        )


@dataclass
class AutoencoderLoss:
    """The negative ELBO of the first stage with a weighted KL: ``-log p(x | z) + kl_weight · KL(q(z | x) ‖ N(0, I))``
    per sample, with ``z = mean + exp(logvar / 2) · eps`` (reparameterised), in nats per data dimension.

    A small ``kl_weight`` keeps the latents near a standard normal without blurring reconstructions (Rombach et al.
    use about 1e-6 of the reconstruction's weight; the stored scale factor fixes the rest).
    """

    kl_weight: float = 1e-3

    def __post_init__(self) -> None:
        if not self.kl_weight >= 0:
            raise ValueError(f"kl_weight must be non-negative, got {self.kl_weight}")

    def terms(self, ae: Autoencoder, x: Tensor, eps: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(-log p(x | z), KL)`` per sample ``(B,)``, each divided by the data dimensions."""
        mean, logvar = ae.encode(x)
        if logvar is None:
            z, kl = mean, torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        else:
            z = mean + (0.5 * logvar).exp() * (torch.randn_like(mean) if eps is None else eps)
            kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).flatten(1).double().sum(1)
        d = x[0].numel()
        return -ae.decoder_log_prob(x, z) / d, kl / d

    def __call__(self, ae: Autoencoder, x: Tensor, eps: Tensor | None = None) -> Tensor:
        nll, kl = self.terms(ae, x, eps)
        return (nll + self.kl_weight * kl).mean()


class LatentCodec(nn.Module):
    """Data ↔ scaled latents: ``to_latent(x) = s · mean(E(x))``, ``to_data(z) = D(z / s)``.

    Args:
        autoencoder: the first stage (a latent score model freezes it; its own training does not).
        scale: ``s``; :meth:`fit_scale` sets it to ``1 / std`` of the encoded latents of some data.
    """

    scale: Tensor

    def __init__(self, autoencoder: Autoencoder, scale: float = 1.0) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.register_buffer("scale", torch.tensor(float(scale), dtype=torch.float64))

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.autoencoder.latent_shape)

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.autoencoder.data_shape)

    def fit_scale(self, x: Tensor) -> float:
        """Set ``s = 1 / std`` of the (unscaled) latent means of ``x: (N, *data_shape)`` (all elements pooled, as
        Rombach et al.'s ``scale_factor``) and return it."""
        with torch.no_grad():
            mean, _ = self.autoencoder.encode(x)
        std = float(mean.double().std())
        if not std > 0:
            raise ValueError("the encoded latents have zero spread; cannot fit a scale factor")
        self.scale.fill_(1.0 / std)
        return 1.0 / std

    def to_latent(self, x: Tensor) -> Tensor:
        """``s · mean(E(x))``: ``(B, *latent_shape)``."""
        check_batch(x)
        mean, _ = self.autoencoder.encode(x)
        return mean * self.scale.to(mean.dtype)

    def to_data(self, z: Tensor) -> Tensor:
        """``D(z / s)``: ``(B, *data_shape)``."""
        return self.autoencoder.decode(z / self.scale.to(z.dtype))

    def latent_dims(self) -> int:
        return math.prod(self.latent_shape)


@dataclass
class LatentLikelihood:
    """What :func:`latent_log_likelihood` returns, in nats per sample ``(B,)``.

    Attributes:
        logp: ``latent + decoder``: the joint density at the encoded latent (the reported value; module docstring).
        latent: ``log p(z)`` of the unscaled latent ``z = E(x)``: the probability-flow value of ``s z`` plus
            ``k log s`` (the scale's Jacobian).
        decoder: ``log p(x | z)``.
        flow: the latent probability-flow solve itself.
    """

    logp: Tensor
    latent: Tensor
    decoder: Tensor
    flow: LikelihoodResult


def latent_log_likelihood(
    codec: LatentCodec, score_fn: ScoreFn, sde: SDE, x: Tensor, **likelihood_options: Any
) -> LatentLikelihood:
    """``log p(z) + log p(x | z)`` at ``z = E(x)`` for data ``x: (B, *data_shape)`` in model space, the latent density
    from the probability-flow ODE of the latent model (``likelihood_options`` go to :func:`scoresde.log_likelihood`)."""
    with torch.no_grad():
        z_scaled = codec.to_latent(x)
    flow = log_likelihood(score_fn, sde, z_scaled, **likelihood_options)
    scale = float(codec.scale)
    latent = flow.logp.double() + codec.latent_dims() * math.log(scale)
    with torch.no_grad():
        decoder = codec.autoencoder.decoder_log_prob(x, z_scaled / scale).double()
    return LatentLikelihood(logp=latent + decoder, latent=latent, decoder=decoder, flow=flow)
