"""Turn a network's raw output into the score, whatever it was trained to predict.

With ``x_t = alpha_t x_0 + sigma_t eps`` (any SDE of :mod:`scoresde.sde`), the four usual targets are interchangeable:

    eps    score = -eps / sigma_t
    x0     score = (alpha_t x0 - x_t) / sigma_t²
    v      v = alpha_t eps - sigma_t x0  ⇒  eps = (sigma_t x_t + alpha_t v) / (alpha_t² + sigma_t²)
    score  the network output is the score itself
    edm    EDM's preconditioned denoiser (Karras et al., 2022, eq. 7 and Table 1), in the scaled view
           x̃ = x_t / alpha_t = x_0 + σ eps with σ = sigma_t / alpha_t (so it applies to any SDE; σ = sigma_t for VE):
               D(x̃; σ) = c_skip x̃ + c_out F(c_in x̃; c_noise)  is the prediction of x0, with
               c_skip = σ_d² / (σ² + σ_d²),  c_out = σ σ_d / √(σ² + σ_d²),  c_in = 1 / √(σ² + σ_d²),  c_noise = ¼ ln σ

The network sees ``(x_t, c_noise)`` (``(c_in x̃, c_noise)`` for ``edm``) where ``c_noise`` follows the reference
conventions: ``999 t`` for VP/sub-VP (embedded sinusoidally), ``log sigma_t`` for VE (embedded with Gaussian Fourier
features) and ``¼ ln σ`` for EDM (Fourier features suit it). A conditional network
also sees the condition ``y``: class labels ``(B,)`` with ``-1`` the null label, or vectors ``(B, C)`` with NaN rows
null; ``y=None`` calls the network as ``net(x_t, c_noise)``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ._utils import append_dims
from .sde import SDE, DiscreteVPSDE

__all__ = ["ScoreModel", "PREDICTIONS", "noise_condition"]

Prediction = Literal["eps", "x0", "v", "score", "edm"]
PREDICTIONS: tuple[str, ...] = ("eps", "x0", "v", "score", "edm")
TimeInput = Literal["auto", "t", "log_sigma", "timestep", "edm"]
TIME_INPUTS: tuple[str, ...] = ("auto", "t", "log_sigma", "timestep", "edm")


def _version(x: Tensor) -> int:
    """``x``'s in-place version counter (inference tensors keep none: -1; the solvers never write a state in place)."""
    return -1 if x.is_inference() else x._version


def noise_condition(sde: SDE, t: Tensor, kind: str = "auto") -> Tensor:
    """The network's time input ``c_noise: (B,)``: ``999 t`` (``"t"``), ``log sigma_t`` (``"log_sigma"``), the
    discrete timestep ``N t - 1`` of a discrete schedule (``"timestep"``; ``n`` at ``t_n = (n + 1)/N``) or EDM's
    ``¼ ln(sigma_t / alpha_t)`` (``"edm"``).

    ``"auto"`` takes the SDE's reference convention (``sde.noise_condition``).
    """
    kind = sde.noise_condition if kind == "auto" else kind
    if kind == "t":
        return 999.0 * t
    if kind == "log_sigma":
        return sde.sigma(t).log()
    if kind == "edm":
        return -0.25 * sde.log_snr(t)  # lambda_t = log(alpha_t / sigma_t) = -ln σ
    if kind == "timestep":
        if not isinstance(sde, DiscreteVPSDE):
            raise ValueError(f"time input 'timestep' needs a discrete schedule (DiscreteVPSDE), not {sde!r}")
        return sde.timestep_of(t)
    raise ValueError(f"unknown time input {kind!r}; use one of {', '.join(TIME_INPUTS)}")


class ScoreModel(nn.Module):
    """Wrap ``net(x, c_noise)`` that predicts ``eps``, ``x0``, ``v`` or the ``score`` so that ``model(x, t)`` is the score.

    Args:
        net: module called as ``net(x_t, c_noise)`` (or ``net(x_t, c_noise, y)`` with a condition) with ``x_t: (B, *D)``,
            ``c_noise: (B,)``; returns ``(B, *D)``.
        sde: the forward SDE that defines ``alpha_t`` and ``sigma_t``.
        prediction: what the network predicts: ``"eps"`` (default), ``"x0"``, ``"v"``, ``"score"`` or ``"edm"``
            (EDM's ``F`` of the preconditioned denoiser, fed ``c_in x̃``).
        time_input: ``"auto"`` (the SDE's reference convention; EDM's ``¼ ln σ`` for ``prediction="edm"``),
            ``"t"`` (``999 t``), ``"log_sigma"``, ``"timestep"`` (``N t - 1``, discrete schedules) or ``"edm"``.
        sigma_data: EDM's ``σ_d``, the data standard deviation the preconditioning assumes (0.5 for data in [-1, 1]).
        learn_variance: the network also outputs improved DDPM's variance interpolation (Nichol & Dhariwal, 2021,
            eq. 15): its output has twice ``x``'s channels (dim 1), the prediction first and ``v_raw`` second, and
            :meth:`variance_weight` is ``v = (v_raw + 1)/2`` in ``Σ = exp(v log beta + (1 - v) log beta~)``
            (trained by :class:`scoresde.hybrid.HybridLoss`; sampled by ``ancestral`` with ``variance="learned"``).

    ``block`` (an attribute, ``None`` by default) makes every network call take exactly ``block`` rows: a batch is cut
    into blocks and the last one is filled up with copies of its last row. Matrix-multiply and convolution kernels
    choose their algorithm by batch size, so without it a sample's score differs in the last bits between a batch of
    1, of 5 and of 64; with it each row's output depends on that row alone (the commands set 64, so that results
    depend on (seed, index) and never on the batch size or the device count).
    """

    block: int | None = None
    _memo: tuple[Tensor, int, Tensor, Tensor | None, Tensor] | None = None

    def __init__(
        self,
        net: nn.Module,
        sde: SDE,
        prediction: Prediction = "eps",
        time_input: TimeInput = "auto",
        sigma_data: float = 0.5,
        learn_variance: bool = False,
    ) -> None:
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; available: {', '.join(PREDICTIONS)}")
        if time_input not in TIME_INPUTS:
            raise ValueError(f"unknown time_input {time_input!r}; use one of {', '.join(TIME_INPUTS)}")
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        if time_input == "auto" and prediction == "edm":
            time_input = "edm"
        self.net, self.sde, self.prediction, self.time_input = net, sde, prediction, time_input
        self.sigma_data, self.learn_variance = float(sigma_data), bool(learn_variance)

    def extra_repr(self) -> str:
        edm = f", sigma_data={self.sigma_data:g}" if self.prediction == "edm" else ""
        learned = ", learn_variance=True" if self.learn_variance else ""
        return f"sde={self.sde!r}, prediction={self.prediction!r}, time_input={self.time_input!r}{edm}{learned}"

    def _coeffs(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        alpha = append_dims(self.sde.alpha(t), x.ndim).to(x.dtype)
        sigma = append_dims(self.sde.sigma(t), x.ndim).to(x.dtype)
        return alpha, sigma

    @property
    def num_classes(self) -> int | None:
        """Number of classes of a class-conditional network (its ``num_classes``), ``None`` otherwise."""
        return getattr(self.net, "num_classes", None)

    def raw(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """The network's own output at ``(x_t, t)`` (given ``y``): ``(B, *D)`` (in blocks of ``block`` rows if set)."""
        return self._raw(x, t, y, None)

    def _raw(self, x: Tensor, t: Tensor, y: Tensor | None, coeffs: tuple[Tensor, Tensor] | None) -> Tensor:
        """:meth:`raw`, reusing ``coeffs = (alpha_t, sigma_t)`` where the caller has them (the ``edm`` input). With
        ``learn_variance`` the prediction half; outside autograd the variance half is kept for
        :meth:`variance_weight` at the same ``(x, t, y)``, so a sampler asking for both pays one evaluation."""
        out = self._net(x, t, y, coeffs)
        if not self.learn_variance:
            return out
        pred, v_raw = self._split(out, x)
        self._memo = None if torch.is_grad_enabled() else (x, _version(x), t.detach().clone(), y, v_raw)
        return pred

    def _split(self, out: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        c = x.shape[1]
        if out.shape[1] != 2 * c or out.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"learn_variance needs a network output with twice the input's channels, {(2 * c, *x.shape[2:])} "
                f"per sample, got {tuple(out.shape[1:])} (e.g. UNet(out_channels=2 in_channels), MLP(out_features=2 D))"
            )
        return out[:, :c], out[:, c:]

    def variance_weight(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Improved DDPM's interpolation weight ``v = (v_raw + 1)/2`` at ``(x_t, t)``, ``(B, *D)``: a reverse step
        from ``t`` to ``s`` has variance ``exp(v log beta + (1 - v) log beta~)`` (eq. 15; ``beta = G²``, ``beta~ = G²
        sigma_s²/sigma_t²``). Reuses the evaluation of the last :meth:`score` call at the same ``(x, t, y)``."""
        if not self.learn_variance:
            raise ValueError("this model does not learn its variance (ScoreModel(learn_variance=True) does)")
        memo = self._memo
        if (
            memo is not None
            and memo[0] is x
            and memo[1] == _version(x)
            and memo[3] is y
            and memo[2].shape == t.shape
            and torch.equal(memo[2], t.to(memo[2].dtype))
        ):
            return (memo[4] + 1) / 2
        return (self._split(self._net(x, t, y, None), x)[1] + 1) / 2

    def eps_and_weight(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The noise prediction and :meth:`variance_weight` from one evaluation (what training needs): each
        ``(B, *D)``."""
        if not self.learn_variance:
            raise ValueError("this model does not learn its variance (ScoreModel(learn_variance=True) does)")
        coeffs = self._coeffs(x, t)
        pred, v_raw = self._split(self._net(x, t, y, coeffs), x)
        return self._eps_from(pred, x, *coeffs), (v_raw + 1) / 2

    def _net(self, x: Tensor, t: Tensor, y: Tensor | None, coeffs: tuple[Tensor, Tensor] | None) -> Tensor:
        """The network's whole output at ``(x_t, t)`` (in blocks of ``block`` rows if set)."""
        c_noise = noise_condition(self.sde, t, self.time_input).to(x.dtype)
        if self.prediction == "edm":
            alpha, sigma = coeffs if coeffs is not None else self._coeffs(x, t)
            x = x / torch.sqrt(sigma**2 + (alpha * self.sigma_data) ** 2)  # c_in x̃ = x_t / √(sigma_t² + alpha_t² σ_d²)
        if self.block is None:
            return self.net(x, c_noise) if y is None else self.net(x, c_noise, y)
        B, k = x.shape[0], int(self.block)
        pad = -B % k  # fill the last block with copies of the batch's last row (rows do not mix: any would do)

        def fill(a: Tensor) -> Tensor:
            return torch.cat([a, a[-1:].expand(pad, *a.shape[1:])]) if pad else a

        xs, cs = fill(x), fill(c_noise.expand(B) if c_noise.numel() == 1 else c_noise)
        ys = fill(y) if y is not None else None
        blocks = [
            self.net(xs[i : i + k], cs[i : i + k])
            if ys is None
            else self.net(xs[i : i + k], cs[i : i + k], ys[i : i + k])
            for i in range(0, B + pad, k)
        ]
        return torch.cat(blocks)[:B]

    def _eps_from(self, out: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """Noise implied by a network output of this model's prediction type (the table in the module docstring)."""
        if self.prediction == "eps":
            return out
        if self.prediction == "x0":
            return (x - alpha * out) / sigma
        if self.prediction == "v":
            return (sigma * x + alpha * out) / (alpha**2 + sigma**2)
        if self.prediction == "edm":
            return (x - alpha * self._edm_denoiser(out, x, alpha, sigma)) / sigma
        return -sigma * out  # score

    def _edm_denoiser(self, F: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """``D(x̃; σ) = c_skip x̃ + c_out F`` with ``x̃ = x_t / alpha_t``, ``σ = sigma_t / alpha_t`` (module docstring)."""
        s, sd2 = sigma / alpha, self.sigma_data**2
        c_skip, c_out = sd2 / (s**2 + sd2), s * self.sigma_data / torch.sqrt(s**2 + sd2)
        return c_skip * (x / alpha) + c_out * F

    def eps(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Predicted noise ``eps_hat = -sigma_t score``: ``(B, *D)``."""
        if self.prediction == "eps":
            return self._raw(x, t, y, None)
        coeffs = self._coeffs(x, t)
        return self._eps_from(self._raw(x, t, y, coeffs), x, *coeffs)

    def score(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Predicted score ``∇ log p_t(x | y) = -eps_hat / sigma_t``: ``(B, *D)``."""
        if self.prediction == "score":
            return self._raw(x, t, y, None)
        alpha, sigma = coeffs = self._coeffs(x, t)
        return -self._eps_from(self._raw(x, t, y, coeffs), x, alpha, sigma) / sigma

    def x0(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Predicted ``E[x_0 | x_t]`` by Tweedie's formula, ``(x_t + sigma_t² score) / alpha_t``: ``(B, *D)``."""
        alpha, sigma = self._coeffs(x, t)
        return (x + sigma**2 * self.score(x, t, y)) / alpha

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Same as :meth:`score`, so the module itself is a ``score_fn`` (and, with ``y``, a conditional one)."""
        return self.score(x, t, y)
