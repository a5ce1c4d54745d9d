"""Steering a score model: conditioning, classifier-free and classifier guidance, and thresholding, each as a
*score transform*: a function that takes a score (and what it needs) and returns a plain ``score_fn(x, t)``, so it
composes with every solver of the registry, with :func:`scoresde.sample` and with each other.

With Bayes' rule ``∇ log p_t(x | y) = ∇ log p_t(x) + ∇ log p_t(y | x)``, guidance of scale ``w`` follows the score of
``p_t(x) p_t(y | x)^w``:

    classifier-free   s_w = s(x, t, ∅) + w (s(x, t, y) - s(x, t, ∅))             (Ho & Salimans, 2022)
    classifier        s_w = s(x, t) + w ∇_x log p_φ(y | x_t, t)                   (Dhariwal & Nichol, 2021, Song et al.,
                                                                                  2021, eq. 14)

``w = 0`` is unconditional, ``w = 1`` conditional; with exact scores and the exact posterior the two coincide for
every ``w`` (tested on :class:`~scoresde.GaussianMixture`). Labels use ``-1`` for "no class" (the null label).

Thresholding (Saharia et al., 2022) acts on the data prediction ``x̂_0 = (x + sigma_t² s) / alpha_t``: it clips
``x̂_0`` into the data range and returns the score that predicts the clipped ``x̂_0``. Solvers that step with ``x̂_0``
(DDIM, DPM-Solver(++), ancestral, Heun) then step with the thresholded estimate, exactly as if they clipped it inside.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from ._typing import ScoreFn
from ._utils import append_dims
from .parametrization import TimeInput, noise_condition
from .sde import SDE

__all__ = [
    "ConditionalScoreFn",
    "Classifier",
    "conditional",
    "classifier_free",
    "classifier_guidance",
    "classifier_gradient",
    "threshold",
    "dynamic_threshold",
    "null_condition",
    "NoisyClassifier",
]

ConditionalScoreFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``score_fn(x, t, y) -> ∇_x log p_t(x | y)``; ``y`` all ``-1`` (labels) or NaN rows (vectors) is unconditional."""

Classifier = Callable[[Tensor, Tensor], Tensor]
"""``classifier(x, t) -> logits (B, K)`` of ``p_φ(y | x_t, t)``, noise-conditional."""


class NoisyClassifier(nn.Module):
    """A noise-conditional classifier ``classifier(x_t, t) -> logits (B, K)`` of ``p_φ(y | x_t, t)``.

    Args:
        net: ``net(x_t, c_noise) -> (B, K)`` (e.g. ``scoresde.nets.MLP(out_features=K)`` or ``ConvClassifier``).
        sde: the forward SDE whose noise levels it classifies at.
        time_input: ``c_noise`` convention, as for :class:`~scoresde.ScoreModel` (``"auto"``: the SDE's).
    """

    def __init__(self, net: nn.Module, sde: SDE, time_input: TimeInput = "auto") -> None:
        super().__init__()
        self.net, self.sde, self.time_input = net, sde, time_input

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.net(x, noise_condition(self.sde, t, self.time_input).to(x.dtype))


def null_condition(y: Tensor) -> Tensor:
    """The null condition shaped like ``y``: ``-1`` labels, or NaN vectors."""
    return torch.full_like(y, float("nan")) if y.is_floating_point() else torch.full_like(y, -1)


def _check_y(y: Tensor, x: Tensor) -> Tensor:
    if not isinstance(y, Tensor) or y.ndim < 1 or y.shape[0] != x.shape[0]:
        got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"the condition y must hold one entry per sample ({x.shape[0]},...), got {got}")
    return y.to(x.device)


def conditional(score_fn: ConditionalScoreFn, y: Tensor) -> ScoreFn:
    """``score_fn(x, t, y)`` with ``y: (B,)`` (or ``(B, C)``) fixed: the conditional score as a plain ``score_fn``."""

    def conditional_score(x: Tensor, t: Tensor) -> Tensor:
        return score_fn(x, t, _check_y(y, x))

    return conditional_score


def classifier_free(score_fn: ConditionalScoreFn, y: Tensor, scale: float, *, batched: bool = True) -> ScoreFn:
    """Classifier-free guidance ``s(x, t, ∅) + w (s(x, t, y) - s(x, t, ∅))`` with ``w = scale``.

    A model trained with label dropout gives both terms: by default the conditional and the unconditional halves run
    as one batch of ``2B`` (``batched=False``: two calls of ``B``; on a 2-core CPU that is 5-20% faster from batch 32
    up and slower below, see docs/benchmarks.md). ``scale = 1`` (conditional) and ``scale = 0`` (unconditional) take
    one pass of ``B``.

    Args:
        score_fn: conditional score ``score_fn(x, t, y)`` (a conditional :class:`~scoresde.ScoreModel`, or
            ``GaussianMixture.conditional_score_fn(sde)``).
        y: labels ``(B,)`` (``-1``: unconditional for that sample) or condition vectors ``(B, C)``.
        scale: guidance scale ``w >= 0``; above 1 sharpens the class, between 0 and 1 interpolates.
    """
    w = float(scale)
    if not w >= 0:
        raise ValueError(f"guidance scale must be >= 0 (0: unconditional, 1: conditional), got {scale}")

    def guided_score(x: Tensor, t: Tensor) -> Tensor:
        yy = _check_y(y, x)
        if w == 1.0:
            return score_fn(x, t, yy)
        if w == 0.0:
            return score_fn(x, t, null_condition(yy))
        if batched:
            s_cond, s_uncond = score_fn(
                torch.cat([x, x]), torch.cat([t, t]), torch.cat([yy, null_condition(yy)])
            ).chunk(2)
        else:
            s_cond, s_uncond = score_fn(x, t, yy), score_fn(x, t, null_condition(yy))
        return s_uncond + w * (s_cond - s_uncond)

    return guided_score


def classifier_guidance(score_fn: ScoreFn, classifier: Classifier, y: Tensor, scale: float = 1.0) -> ScoreFn:
    """Classifier guidance ``s(x, t) + w ∇_x log p_φ(y | x_t, t)`` (the gradient by autograd, also under ``no_grad``).

    Args:
        score_fn: the (unconditional) score.
        classifier: ``classifier(x, t) -> logits (B, K)``, trained on noisy data (``scoresde.lightning.ClassifierModule``)
            or exact (``GaussianMixture.classifier(sde)``).
        y: target classes ``(B,)`` in ``[0, K)``.
        scale: ``w``; 1 gives the conditional score ``∇ log p_t(x | y)`` when both parts are exact.
    """
    w = float(scale)
    if not w >= 0:
        raise ValueError(f"classifier guidance scale must be >= 0, got {scale}")

    def guided_score(x: Tensor, t: Tensor) -> Tensor:
        yy = _check_y(y, x)
        if yy.ndim != 1 or yy.is_floating_point() or bool((yy < 0).any()):
            raise ValueError("classifier guidance needs class labels (B,) >= 0")
        s = score_fn(x, t)
        if w == 0.0:
            return s
        return s + w * classifier_gradient(classifier, x, t, yy)

    return guided_score


def classifier_gradient(classifier: Classifier, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
    """``∇_x log p_φ(y | x_t, t)``: ``(B, *D)``, each sample's gradient of its own log-probability."""
    # also inside torch.inference_mode (Lightning's predict loop): clones made outside it are ordinary tensors
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        logits = classifier(xg, t.clone())
        if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError(f"classifier(x, t) must return logits (B, K), got shape {tuple(logits.shape)}")
        if bool((y >= logits.shape[1]).any()):
            raise ValueError(f"class labels must lie in [0, {logits.shape[1]}), got up to {int(y.max())}")
        log_p = torch.log_softmax(logits.float(), dim=1).gather(1, y.clone()[:, None].long()).sum()
        (grad,) = torch.autograd.grad(log_p, xg)
    return grad.to(x.dtype)


def dynamic_threshold(x0: Tensor, percentile: float = 0.995, low: float = -1.0, high: float = 1.0) -> Tensor:
    """Imagen's dynamic thresholding of ``x̂_0: (B, *D)`` in the range ``[low, high]``.

    In the centred units ``u = (x̂_0 - c) / h`` (``c``, ``h`` the range's centre and half-width), each sample's
    ``s = max(1, quantile_p |u|)``; ``u`` is clipped to ``[-s, s]`` and divided by ``s``. ``percentile = 1`` divides by
    the largest entry; where ``s = 1`` it is static clipping.
    """
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"dynamic thresholding percentile must lie in (0, 1], got {percentile}")
    c, h = 0.5 * (high + low), 0.5 * (high - low)
    u = (x0 - c) / h
    s = torch.quantile(u.flatten(1).abs().float(), percentile, dim=1).clamp_min(1.0).to(u.dtype)
    s = append_dims(s, u.ndim)
    return c + h * (u.clamp(-s, s) / s)


def threshold(
    score_fn: ScoreFn,
    sde: SDE,
    method: Literal["static", "dynamic"] = "dynamic",
    *,
    percentile: float = 0.995,
    low: float = -1.0,
    high: float = 1.0,
) -> ScoreFn:
    """The score whose data prediction is ``x̂_0`` thresholded into ``[low, high]``: ``(alpha_t x̃_0 - x) / sigma_t²``.

    Args:
        score_fn: the score to threshold (guided or not: thresholding goes last).
        sde: the SDE (``alpha_t``, ``sigma_t``).
        method: ``"static"`` (clip to ``[low, high]``) or ``"dynamic"`` (:func:`dynamic_threshold`).
        percentile: the dynamic quantile ``p`` (0.995 as in Imagen).
        low, high: the data range in model space (``[-1, 1]`` for centred data, ``[0, 1]`` for VE's uncentred data).
    """
    if method not in ("static", "dynamic"):
        raise ValueError(f"unknown thresholding {method!r}; use 'static' or 'dynamic'")
    if not high > low:
        raise ValueError(f"thresholding range needs low < high, got [{low}, {high}]")
    if method == "dynamic" and not 0.0 < percentile <= 1.0:
        raise ValueError(f"dynamic thresholding percentile must lie in (0, 1], got {percentile}")

    def thresholded_score(x: Tensor, t: Tensor) -> Tensor:
        alpha = append_dims(sde.alpha(t), x.ndim).to(x.dtype)
        sigma2 = append_dims(sde.sigma(t), x.ndim).to(x.dtype) ** 2
        x0 = (x + sigma2 * score_fn(x, t)) / alpha  # Tweedie: E[x_0 | x_t]
        x0 = x0.clamp(low, high) if method == "static" else dynamic_threshold(x0, percentile, low, high)
        return (alpha * x0 - x) / sigma2

    return thresholded_score
