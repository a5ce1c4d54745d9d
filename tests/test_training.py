"""Training moves the learned score measurably towards the exact score; EMA weights are what is evaluated and saved."""

import lightning as L
import torch

from scoresde import VPSDE, DSMLoss, GaussianMixture
from scoresde.lightning import ScoreModule, ToyDataModule
from scoresde.metrics import score_error
from scoresde.nets import MLP


def _trainer(tmp_path, steps, **kw):
    return L.Trainer(
        max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, gradient_clip_val=1.0, limit_val_batches=0, **kw,
    )


def test_short_training_approaches_the_exact_score(tmp_path):
    L.seed_everything(0)
    target = GaussianMixture.ring()
    dm = ToyDataModule(name="mixture", mixture=target, n_train=20_000, n_val=500, n_test=500, batch_size=256)
    sde = VPSDE()
    module = ScoreModule(MLP([2], width=64, depth=2), sde, DSMLoss(), lr=3e-3, warmup_steps=20, ema_decay=0.98,
                         data_shape=dm.data_shape, sample_steps=100)
    g = torch.Generator().manual_seed(0)
    before = score_error(module, target, sde, generator=g)
    _trainer(tmp_path, 600, enable_checkpointing=True).fit(module, datamodule=dm)
    after = score_error(module.eval(), target, sde, generator=torch.Generator().manual_seed(0))
    assert before > 0.8, before
    assert after < 0.25 and after < before / 4, (before, after)


def test_checkpoint_holds_the_ema_weights(tmp_path):
    L.seed_everything(0)
    dm = ToyDataModule(n_train=2048, n_val=256, n_test=256, batch_size=256)
    module = ScoreModule(MLP([2], width=32, depth=1), VPSDE(), ema_decay=0.9, warmup_steps=0, data_shape=(2,))
    trainer = _trainer(tmp_path, 30)
    trainer.fit(module, datamodule=dm)
    ckpt = torch.load(trainer.checkpoint_callback.best_model_path or trainer.checkpoint_callback.last_model_path,
                      map_location="cpu", weights_only=False)
    ema, raw = ckpt["state_dict"], ckpt["current_model_state"]
    key = next(k for k in ema if k.endswith("inp.weight"))
    assert not torch.equal(ema[key], raw[key])  # the average differs from the last iterate
    # after fit the module itself carries the averaged weights, which sampling uses
    assert torch.equal(module.state_dict()[key], ema[key])


def test_ema_warmup_is_the_recurrence_with_a_ramped_decay():
    from scoresde.lightning.module import ema_warmup_fn

    decay, update = 0.995, ema_warmup_fn(0.995)
    values = torch.randn(400, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ema, expect = [values[0].clone()], values[0].clone()  # AveragedModel copies the first weights (n = 0)
    for n in range(1, len(values)):
        update(ema, [values[n]], torch.tensor(n))
        d = min(decay, (1 + n) / (10 + n))
        expect = d * expect + (1 - d) * values[n]
        assert torch.allclose(ema[0], expect, rtol=1e-12, atol=1e-14)
    # early updates weigh the new weights heavily (d_1 = 2/11), late ones use the plain decay
    assert min(decay, 2 / 11) == 2 / 11 and min(decay, 1801 / 1810) == decay


def test_warmup_ema_of_a_short_run_is_near_its_recent_weights(tmp_path):
    L.seed_everything(0)
    dm = ToyDataModule(n_train=4096, n_val=256, n_test=256, batch_size=256)
    runs = {}
    for warmup in (False, True):
        L.seed_everything(0)
        module = ScoreModule(MLP([2], width=32, depth=1), VPSDE(), ema_decay=0.995, ema_warmup=warmup,
                             warmup_steps=0, data_shape=(2,))
        trainer = _trainer(tmp_path / str(warmup), 100)
        trainer.fit(module, datamodule=dm)
        ckpt = torch.load(trainer.checkpoint_callback.last_model_path or trainer.checkpoint_callback.best_model_path,
                          map_location="cpu", weights_only=False)
        raw, ema = ckpt["current_model_state"], ckpt["state_dict"]
        runs[warmup] = sum(float((ema[k] - raw[k]).norm()) for k in raw) / sum(float(raw[k].norm()) for k in raw)
    # after 100 steps at decay 0.995 the plain average still holds 0.995^100 = 61% of the random start
    assert runs[True] < runs[False] / 3, runs
