"""Conditioning and guidance checked against the analytic mixture, whose classes are its components: the exact
conditional score, the exact posterior p(y | x_t), and sampling that must reproduce a component."""

import lightning as L
import numpy as np
import pytest
import torch

from scoresde import SOLVERS, VPSDE, GaussianMixture, sample
from scoresde.guidance import (
    classifier_free, classifier_guidance, conditional, dynamic_threshold, null_condition, threshold,
)
from scoresde.lightning import ClassifierModule, ScoreModule, ToyDataModule
from scoresde.metrics import frechet_gaussian, mode_mass_error
from scoresde.nets import MLP

from .conftest import all_sdes


def _mixture():
    # four overlapping classes: the posterior p(y | x_t) is far from one-hot, so guidance has work to do
    return GaussianMixture.ring(4, radius=1.0, std=0.4)


def _points(gm, sde, n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = gm.sample(n, generator=g, dtype=torch.float64)
    t = 1e-3 + (sde.T - 1e-3) * torch.rand(n, generator=g, dtype=torch.float64)
    mean, std = sde.marginal_prob(x0, t)
    return mean + std[:, None] * torch.randn(x0.shape, generator=g, dtype=torch.float64), t


@pytest.mark.parametrize("sde", all_sdes(), ids=["vp", "subvp", "ve"])
def test_bayes_rule_holds_exactly_for_the_mixture(sde):
    # ∇ log p_t(x | y) = ∇ log p_t(x) + ∇ log p_t(y | x): conditional score vs autograd through the exact posterior
    gm = GaussianMixture.random(3, k=4, seed=1)
    x, t = _points(gm, sde)
    y = torch.arange(len(x)) % 4
    cond = gm.score(x, t, sde, y)
    guided = classifier_guidance(gm.score_fn(sde), gm.classifier(sde), y, 1.0)(x, t)
    assert torch.allclose(guided, cond, rtol=1e-9, atol=1e-9 * float(cond.abs().max()))
    # the class-conditional density is the component's own
    for k in range(4):
        own = gm.component(k).log_prob(x, t, sde)
        assert torch.allclose(gm.log_prob(x, t, sde, torch.full((len(x),), k)), own, atol=1e-10)


@pytest.mark.parametrize("w", [0.0, 0.5, 1.0, 2.0, 4.0])
def test_classifier_free_equals_exact_classifier_guidance_at_every_scale(w):
    # both follow the score of p_t(x) p_t(y | x)^w when the parts are exact; two independent code paths
    sde = VPSDE()
    gm = _mixture()
    x, t = _points(gm, sde)
    y = torch.arange(len(x)) % 4
    y[::7] = -1  # unconditional rows: CFG returns the unconditional score there at every w
    cfg = classifier_free(gm.conditional_score_fn(sde), y, w)(x, t)
    yc = y.clamp_min(0)
    cg = classifier_guidance(gm.score_fn(sde), gm.classifier(sde), yc, w)(x, t)
    labelled = y >= 0
    assert torch.allclose(cfg[labelled], cg[labelled], atol=1e-9)
    assert torch.allclose(cfg[~labelled], gm.score(x[~labelled], t[~labelled], sde), atol=1e-12)
    # and w interpolates linearly between the unconditional (w=0) and conditional (w=1) scores
    s_u, s_c = gm.score(x, t, sde), gm.score(x, t, sde, yc)
    assert torch.allclose(cfg[labelled], (s_u + w * (s_c - s_u))[labelled], atol=1e-9)


def test_conditional_sampling_reproduces_each_component():
    sde, gm, n = VPSDE(), _mixture(), 3000
    for k in range(4):
        comp = gm.component(k)
        floor = frechet_gaussian(comp.sample(n, generator=torch.Generator().manual_seed(9)), comp.mean, comp.cov)
        score = conditional(gm.conditional_score_fn(sde), torch.full((n,), k))
        res = sample(score, sde, (n, 2), solver="dpm_solver_pp", steps=40, grid="log_snr",
                     generator=torch.Generator().manual_seed(k))
        fd = frechet_gaussian(res.x, comp.mean, comp.cov)
        assert fd < 4 * floor + 1e-4, (k, fd, floor)
        # the unconditional marginal is far away: the label really selects the component
        assert frechet_gaussian(gm.sample(n, generator=torch.Generator().manual_seed(3)), comp.mean, comp.cov) > 100 * fd


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_guidance_composes_with_every_solver(name):
    # With the exact posterior, classifier guidance (w=1) gives the conditional score, so every solver must draw
    # the same samples (same seeds) as with the conditional score itself, and CFG at w=2 the same as classifier
    # guidance at w=2: guidance reaches each solver only through the score callable.
    sde, gm, n = VPSDE(), _mixture(), 32
    y = torch.arange(n) % 4
    opts = {"rtol": 1e-9, "atol": 1e-9} if name == "ode" else {}
    if name == "pc":
        opts = {"corrector": "annealed_langevin"}  # langevin is refused in 2-D
    steps = 8 if name in ("ode",) else 20

    def draw(score):
        return sample(score, sde, (n, 2), solver=name, steps=steps, seeds=torch.arange(n), dtype=torch.float64, **opts).x

    # The adaptive SDE solver's accept/reject decisions are discontinuous in the score's last bits (autograd through
    # the classifier against the closed-form conditional score), and a changed step lands elsewhere on a rough
    # Brownian path: its samples agree to its tolerance only.
    tol = 0.1 if name == "adaptive_sde" else 1e-6
    cond = draw(conditional(gm.conditional_score_fn(sde), y))
    cg1 = draw(classifier_guidance(gm.score_fn(sde), gm.classifier(sde), y, 1.0))
    assert torch.isfinite(cond).all()
    assert (cg1 - cond).abs().max() < tol, name
    cfg2 = draw(classifier_free(gm.conditional_score_fn(sde), y, 2.0))
    cg2 = draw(classifier_guidance(gm.score_fn(sde), gm.classifier(sde), y, 2.0))
    assert (cfg2 - cg2).abs().max() < tol, name
    assert (cfg2 - cond).abs().max() > 1e-3  # w = 2 is a different target


def test_guidance_scale_sharpens_the_class():
    # p(y | x)^w with w > 1 pushes samples away from the other classes: the exact posterior of the drawn class rises
    sde, gm, n = VPSDE(), _mixture(), 2000
    y = torch.zeros(n, dtype=torch.long)
    post = []
    for w in (0.0, 1.0, 4.0):
        x = sample(classifier_free(gm.conditional_score_fn(sde), y, w), sde, (n, 2), solver="dpm_solver_pp", steps=30,
                   generator=torch.Generator().manual_seed(0)).x
        post.append(float(gm.log_posterior(x.double())[:, 0].exp().mean()))
    assert post[0] == pytest.approx(0.25, abs=0.03)  # unconditional: a quarter of the mass in class 0
    assert post[1] > 0.6 and post[2] > post[1] + 0.1, post


def test_guidance_refuses_bad_input():
    sde, gm = VPSDE(), _mixture()
    x = torch.zeros(4, 2)
    t = torch.full((4,), 0.5)
    with pytest.raises(ValueError, match=">= 0"):
        classifier_free(gm.conditional_score_fn(sde), torch.zeros(4, dtype=torch.long), -1.0)
    with pytest.raises(ValueError, match="one entry per sample"):
        classifier_free(gm.conditional_score_fn(sde), torch.zeros(3, dtype=torch.long), 2.0)(x, t)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        classifier_guidance(gm.score_fn(sde), gm.classifier(sde), torch.full((4,), 7), 1.0)(x, t)
    with pytest.raises(ValueError, match="-1"):
        gm.score(x, t, sde, torch.full((4,), 4))
    assert torch.equal(null_condition(torch.tensor([1, 2])), torch.tensor([-1, -1]))
    assert null_condition(torch.ones(2, 3)).isnan().all()


# ---- thresholding ----------------------------------------------------------------------------------------------
def test_dynamic_threshold_matches_a_numpy_reference():
    g = torch.Generator().manual_seed(0)
    x0 = 1.5 * torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    x0[0] *= 0.3  # a sample inside [-1, 1]: s = 1, so only static clipping
    for p in (0.9, 0.995, 1.0):
        out = dynamic_threshold(x0, p).numpy()
        for b, row in enumerate(x0.numpy()):
            s = max(1.0, np.quantile(np.abs(row), p))
            assert np.allclose(out[b], np.clip(row, -s, s) / s, atol=1e-12)
    assert torch.equal(dynamic_threshold(x0[:1], 0.5), x0[:1].clamp(-1, 1))  # median |x0| < 1: s = 1
    # other ranges map through the centred units: [0, 1] data
    assert torch.allclose(dynamic_threshold(0.5 + x0 / 2, 0.995, 0.0, 1.0), 0.5 + dynamic_threshold(x0, 0.995) / 2)
    with pytest.raises(ValueError, match="percentile"):
        dynamic_threshold(x0, 0.0)


def test_thresholded_score_predicts_the_clipped_data():
    sde = VPSDE()
    gm = GaussianMixture([1, 1], [[-1.5, 0.0], [1.5, 0.0]], [0.04, 0.04])  # half its mass outside [-1, 1]
    x, t = _points(gm, sde)
    for method in ("static", "dynamic"):
        s = threshold(gm.score_fn(sde), sde, method)(x, t)
        alpha, sigma = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
        x0_hat = (x + sigma**2 * s) / alpha
        assert x0_hat.abs().max() <= 1 + 1e-9
    # where the exact x̂_0 lies inside the range, thresholding changes nothing
    inner = GaussianMixture([1.0], [[0.0, 0.0]], [0.01])
    x, t = _points(inner, sde)
    assert torch.allclose(threshold(inner.score_fn(sde), sde, "static")(x, t), inner.score(x, t, sde), atol=1e-9)
    # sampling: DDIM with static thresholding (and its final x̂_0, by denoise=True) ends inside the range; unclipped
    # samples do not
    n = 500
    plain = sample(gm.score_fn(sde), sde, (n, 2), solver="ddim", steps=30, denoise=True,
                   generator=torch.Generator().manual_seed(0)).x
    clipped = sample(threshold(gm.score_fn(sde), sde, "static"), sde, (n, 2), solver="ddim", steps=30, denoise=True,
                     generator=torch.Generator().manual_seed(0)).x
    assert plain.abs().max() > 1.3
    assert clipped.abs().max() <= 1 + 1e-6


# ---- trained models --------------------------------------------------------------------------------------------
def _trainer(tmp_path, steps):
    return L.Trainer(max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
                     enable_checkpointing=False, default_root_dir=tmp_path, limit_val_batches=0, gradient_clip_val=1.0)


def test_one_model_with_label_dropout_serves_conditional_and_unconditional_use(tmp_path):
    L.seed_everything(0)
    gm, sde, n = _mixture(), VPSDE(), 2000
    dm = ToyDataModule("mixture", mixture=gm, labels=True, n_train=20_000, n_val=500, n_test=500, batch_size=256)
    module = ScoreModule(MLP([2], width=64, depth=2, num_classes=4), sde, lr=3e-3, warmup_steps=20, ema_decay=0.99,
                         label_dropout=0.2, data_shape=(2,), sampler="euler_maruyama", sample_steps=200)
    _trainer(tmp_path, 800).fit(module, datamodule=dm)
    module.eval()
    comp = gm.component(1)
    w1 = module.sample(n, labels=torch.full((n,), 1), guidance_scale=1.0, generator=torch.Generator().manual_seed(0)).x
    w0 = module.sample(n, labels=torch.full((n,), 1), guidance_scale=0.0, generator=torch.Generator().manual_seed(0)).x
    fd_cond = frechet_gaussian(w1, comp.mean, comp.cov)
    fd_uncond = frechet_gaussian(w0, gm.mean, gm.cov)
    assert fd_cond < 0.03, fd_cond  # the component (its mean is 1 away from the mixture's)
    assert fd_uncond < 0.03 and mode_mass_error(w0, gm) < 0.05, (fd_uncond, mode_mass_error(w0, gm))
    assert frechet_gaussian(w0, comp.mean, comp.cov) > 10 * fd_cond


def test_trained_noisy_classifier_approaches_the_exact_posterior_and_guides(tmp_path):
    L.seed_everything(0)
    gm, sde, n = _mixture(), VPSDE(), 2000
    dm = ToyDataModule("mixture", mixture=gm, labels=True, n_train=20_000, n_val=500, n_test=500, batch_size=256)
    module = ClassifierModule(MLP(out_features=4, width=64, depth=2), sde, lr=3e-3, warmup_steps=20)
    _trainer(tmp_path, 800).fit(module, datamodule=dm)
    module.eval()
    x, t = _points(gm, sde, n=4000, seed=5)
    log_p = gm.log_posterior(x, t, sde)
    with torch.no_grad():
        log_q = torch.log_softmax(module(x.float(), t.float()).double(), 1)
    kl = float((log_p.exp() * (log_p - log_q)).sum(1).mean())
    entropy = float(-(log_p.exp() * log_p).sum(1).mean())
    assert kl < 0.03 and kl < 0.03 * entropy, (kl, entropy)
    y = torch.full((n,), 2)
    x = sample(classifier_guidance(gm.score_fn(sde), module, y, 1.0), sde, (n, 2), solver="euler_maruyama", steps=200,
               generator=torch.Generator().manual_seed(0)).x
    comp = gm.component(2)
    assert frechet_gaussian(x, comp.mean, comp.cov) < 0.03
