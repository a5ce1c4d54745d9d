"""The ``scoresde`` command: LightningCLI over :class:`ScoreModule` and any DataModule.

    scoresde fit --config experiments/toy_vp.yaml
    scoresde fit --config experiments/digits_vp.yaml --trainer.max_epochs 50
    scoresde fit --help
    scoresde sample --ckpt runs/toy_vp/checkpoints/last.ckpt --solver dpm_solver_pp --steps 20 --n 1000 --out samples/
    scoresde likelihood --ckpt runs/digits_vp/checkpoints/last.ckpt --split test --repeats 5 --out bpd/
    scoresde interpolate --ckpt runs/digits_vp/checkpoints/last.ckpt --pairs 4 --steps 9 --out interp/
    scoresde inpaint --ckpt runs/digits_vp/checkpoints/last.ckpt --mask right --method repaint --out inpaint/
    scoresde classifier fit --config experiments/classifiers/digits.yaml   # noise-conditional classifier

The DataModule's ``data_shape`` and ``transform`` are linked into the model. Logging goes to Weights & Biases in
offline mode unless the config says otherwise (``wandb sync`` uploads later).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from .module import ScoreModule

__all__ = ["ScoreCLI", "ClassifierCLI", "cli", "classifier_cli", "main"]

WANDB_OFFLINE = {
    "class_path": "lightning.pytorch.loggers.WandbLogger",
    "init_args": {"project": "scoresde", "offline": True},
}


class ScoreCLI(LightningCLI):
    """LightningCLI with the DataModule's shape and transform linked into the model."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.data_shape", "model.data_shape", apply_on="instantiate")
        parser.link_arguments("data.transform", "model.transform", apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        """Lightning re-reads the model's hyperparameters from ``--ckpt_path`` (weights-only) to refill the config.
        Ours are the instantiated network and SDE, not config values, so the run's own config stays authoritative
        (pass the experiment's ``--config`` when resuming)."""

    # The subcommands below replace Trainer's (LightningCLI calls a method of the CLI named like the subcommand when
    # there is one). Checkpoints of `scoresde fit` keep the network, SDE and transform objects in their
    # hyperparameters, which torch's weights-only loading refuses; they are the user's own files, so `--ckpt_path`
    # loads them in full unless `--weights_only true` is given.
    def fit(self, model: L.LightningModule, **kwargs: Any) -> None:
        self.trainer.fit(model, **_full_load(kwargs))

    def validate(self, model: L.LightningModule, **kwargs: Any) -> Any:
        return self.trainer.validate(model, **_full_load(kwargs))

    def test(self, model: L.LightningModule, **kwargs: Any) -> Any:
        return self.trainer.test(model, **_full_load(kwargs))

    def predict(self, model: L.LightningModule, **kwargs: Any) -> Any:
        return self.trainer.predict(model, **_full_load(kwargs))


class ClassifierCLI(ScoreCLI):
    """LightningCLI over :class:`~scoresde.lightning.ClassifierModule` (``scoresde classifier fit ...``)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """A classifier needs nothing linked from the DataModule."""


def _full_load(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {**kwargs, "weights_only": False if kwargs.get("weights_only") is None else kwargs["weights_only"]}


def _build(cli_class: type[LightningCLI], model_class: type, args: Sequence[str] | None, run: bool) -> Any:
    os.environ.setdefault("WANDB_SILENT", "true")
    return cli_class(
        model_class,
        L.LightningDataModule,
        subclass_mode_data=True,
        args=list(args) if args is not None else None,
        run=run,
        trainer_defaults={"logger": WANDB_OFFLINE},
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


def cli(args: Sequence[str] | None = None, run: bool = True) -> ScoreCLI:
    """Build (and by default run) the CLI; ``args=None`` reads ``sys.argv``. Returns the ``ScoreCLI`` object."""
    return _build(ScoreCLI, ScoreModule, args, run)


def classifier_cli(args: Sequence[str] | None = None, run: bool = True) -> ClassifierCLI:
    """``scoresde classifier fit|validate ...``: train the noise-conditional classifier of classifier guidance."""
    from .classifier import ClassifierModule

    return _build(ClassifierCLI, ClassifierModule, args, run)


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the ``scoresde`` console script: LightningCLI's subcommands plus ``sample``, ``likelihood``,
    ``interpolate``, ``inpaint`` and ``classifier``."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv[:1] == ["sample"]:
        from .sampling import sample_command

        sample_command(argv[1:])
    elif argv[:1] == ["likelihood"]:
        from .likelihood import likelihood_command

        likelihood_command(argv[1:])
    elif argv[:1] == ["interpolate"]:
        from .interpolation import interpolate_command

        interpolate_command(argv[1:])
    elif argv[:1] == ["inpaint"]:
        from .inpainting import inpaint_command

        inpaint_command(argv[1:])
    elif argv[:1] == ["classifier"]:
        classifier_cli(argv[1:])
    else:
        cli(argv)


if __name__ == "__main__":  # pragma: no cover
    main()
