"""Conditional networks, labelled DataModules and label dropout."""

import lightning as L
import numpy as np
import pytest
import torch

from scoresde import VPSDE, GaussianMixture, ScoreModel
from scoresde.lightning import DigitsDataModule, NpzDataModule, ScoreModule, ToyDataModule
from scoresde.nets import MLP, ConvClassifier, DDPMpp, NCSNpp, UNet
from scoresde.noise import PerSampleNoise, derive_seeds


def _nets():
    # init_scale=1: the residual branches (where the embedding enters) start at full scale, not near zero
    small = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), image_size=8, in_channels=1, init_scale=1.0)
    return {
        "mlp": (lambda **kw: MLP([1, 8, 8], width=32, depth=1, **kw), (1, 8, 8)),
        "unet": (lambda **kw: UNet(1, base_channels=8, **kw), (1, 8, 8)),
        "ddpmpp": (lambda **kw: DDPMpp(**small, **kw), (1, 8, 8)),
        "ncsnpp": (lambda **kw: NCSNpp(**small, **kw), (1, 8, 8)),
    }


@pytest.mark.parametrize("name", ["mlp", "unet", "ddpmpp", "ncsnpp"])
def test_conditional_networks_use_the_label_and_the_null_label(name):
    build, shape = _nets()[name]
    torch.manual_seed(0)
    net = build(num_classes=10).eval()  # no dropout: outputs are deterministic
    with torch.no_grad():  # non-zero label rows, so the labels show in the output even at a near-zero init
        net.cond.table.weight.normal_()
    x, c = torch.randn(3, *shape), torch.rand(3)
    y = torch.tensor([2, 7, -1])
    out = net(x, c, y)
    assert out.shape == x.shape
    assert torch.allclose(net(x, c, torch.tensor([2, 7, 5]))[:2], out[:2])  # each sample sees only its own label
    other = net(x, c, torch.tensor([3, 7, -1]))[0]
    assert (other - out[0]).abs().max() > 1e-2 * out[0].abs().max()  # another label, another output
    assert torch.allclose(net(x, c)[2], out[2], atol=1e-6)  # y=None is the null label for all
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        net(x, c, torch.tensor([2, 10, 0]))
    with pytest.raises(ValueError, match="unconditional"):
        build()(x, c, y)


def test_vector_conditions_and_their_null():
    torch.manual_seed(0)
    net = MLP([2], width=16, depth=1, cond_dim=3)
    x, c = torch.randn(2, 2), torch.rand(2)
    y = torch.randn(2, 3)
    y[1] = float("nan")
    out = net(x, c, y)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[1], net(x, c)[1])  # a NaN row is the null condition
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        net(x, c, torch.randn(2, 4))


def test_score_model_passes_the_condition():
    torch.manual_seed(0)
    model = ScoreModel(MLP([2], width=16, depth=1, num_classes=3), VPSDE())
    x, t = torch.randn(4, 2), torch.rand(4)
    y = torch.tensor([0, 1, 2, -1])
    assert model.num_classes == 3
    assert torch.allclose(model(x, t, y), -model.net(x, 999 * t, y) / VPSDE().sigma(t)[:, None])
    assert ScoreModel(MLP([2]), VPSDE()).num_classes is None


def test_noise_conditional_classifiers_read_the_image_and_the_noise_level():
    torch.manual_seed(0)
    x = torch.randn(5, 1, 8, 8)
    for net, x in ((ConvClassifier(10, in_channels=1, base_channels=8), x), (MLP([2], out_features=4), x[:, 0, 0, :2])):
        low, high = torch.full((5,), 1.0), torch.full((5,), 900.0)
        logits = net(x, low)
        assert logits.shape == (5, net.num_classes if isinstance(net, ConvClassifier) else 4)
        assert (logits - net(x, high)).abs().max() > 1e-3  # the noise level is wired in
        assert (logits[0] - logits[1]).abs().max() > 1e-3  # and the input
        torch.testing.assert_close(net(x.flip(0), low).flip(0), logits)  # each sample's own, not the batch's


# ---- labelled data ---------------------------------------------------------------------------------------------
def test_digits_labels_follow_the_images():
    from sklearn.datasets import load_digits

    digits = load_digits()
    dm = DigitsDataModule(labels=True)
    assert dm.num_classes == 10 and DigitsDataModule().num_classes is None
    images = torch.from_numpy(digits.images.astype(np.int64)).unsqueeze(1)
    for split in ("train", "val", "test"):
        raw, y = getattr(dm, f"{split}_raw"), getattr(dm, f"{split}_labels")
        # find each image in the full set and compare its target
        idx = [int(((images == im).flatten(1).all(1)).nonzero()[0]) for im in raw[:20]]
        assert torch.equal(y[:20], torch.as_tensor(digits.target[idx]))
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (128, 1, 8, 8) and y.shape == (128,) and y.dtype == torch.long


def test_mixture_labels_are_the_drawing_components():
    gm = GaussianMixture.ring(4, radius=2.0, std=0.1)  # well separated: the component is recoverable
    dm = ToyDataModule("mixture", mixture=gm, labels=True, n_train=1000, n_val=100, n_test=100)
    assert dm.num_classes == 4
    assert torch.equal(gm.responsibilities(dm.train_raw.double()).argmax(1), dm.train_labels)
    with pytest.raises(ValueError, match="mixture components"):
        ToyDataModule("moons", labels=True)


def test_npz_labels(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.integers(0, 256, (50, 4, 4), dtype=np.uint8), y=np.arange(50) % 5,
             test=rng.integers(0, 256, (20, 4, 4), dtype=np.uint8), test_y=np.arange(20) % 5)
    dm = NpzDataModule(str(path), key="x", label_key="y", val_fraction=0.2, test_fraction=0.2)
    assert dm.num_classes == 5 and len(dm.train_labels) == len(dm.train_raw)
    dm2 = NpzDataModule(str(path), key="x", test_key="test", label_key="y", test_label_key="test_y")
    assert torch.equal(dm2.test_labels, torch.arange(20) % 5) and torch.equal(dm2.train_labels, torch.arange(50) % 5)
    with pytest.raises(ValueError, match="test_label_key"):
        NpzDataModule(str(path), key="x", test_key="test", label_key="y")
    np.savez(path, x=rng.integers(0, 256, (50, 4, 4), dtype=np.uint8), y=np.arange(49))
    with pytest.raises(ValueError, match=r"\(50,\)"):
        NpzDataModule(str(path), key="x", label_key="y")


# ---- label dropout -------------------------------------------------------------------------------------------
def test_label_dropout_rate_and_clear_errors():
    module = ScoreModule(MLP([2], num_classes=4), VPSDE(), label_dropout=0.2, data_shape=(2,))
    y = torch.arange(100_000) % 4
    dropped = module._drop_labels(y, PerSampleNoise(derive_seeds(0, 0, len(y))))
    assert abs(float((dropped == -1).float().mean()) - 0.2) < 0.005
    assert torch.equal(dropped[dropped >= 0], y[dropped >= 0])
    vec = module._drop_labels(torch.randn(10_000, 3), PerSampleNoise(derive_seeds(0, 0, 10_000)))
    assert abs(float(vec.isnan().all(1).float().mean()) - 0.2) < 0.02
    with pytest.raises(ValueError, match="label_dropout"):
        ScoreModule(MLP([2], num_classes=4), VPSDE(), label_dropout=1.0)
    plain = ScoreModule(MLP([2]), VPSDE(), data_shape=(2,))
    with pytest.raises(ValueError, match="num_classes"):
        plain.training_step((torch.randn(4, 2), torch.zeros(4, dtype=torch.long)), 0)
    with pytest.raises(ValueError, match="unconditional"):
        plain.sample(4, labels=torch.zeros(4, dtype=torch.long), steps=2)


def test_conditional_training_runs_through_lightning(tmp_path):
    L.seed_everything(0)
    gm = GaussianMixture.ring(4)
    dm = ToyDataModule("mixture", mixture=gm, labels=True, n_train=2048, n_val=256, n_test=256, batch_size=256)
    module = ScoreModule(MLP([2], width=32, depth=1, num_classes=4), VPSDE(), warmup_steps=0, ema_decay=None,
                         data_shape=(2,), lr=3e-3)
    trainer = L.Trainer(max_steps=60, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, enable_checkpointing=False)
    trainer.fit(module, datamodule=dm)
    val = trainer.validate(module, datamodule=dm, verbose=False)[0]["val/loss"]
    assert val < 0.9  # the untrained sigma²-weighted loss is ~1
