"""The ``scoresde`` command: LightningCLI over :class:`ScoreModule` and any DataModule.

    scoresde fit --config experiments/toy_vp.yaml
    scoresde fit --config experiments/digits_vp.yaml --trainer.max_epochs 50
    scoresde fit --help
    scoresde sample --ckpt runs/toy_vp/checkpoints/last.ckpt --solver dpm_solver_pp --steps 20 --n 1000 --out samples/
    scoresde likelihood --ckpt runs/digits_vp/checkpoints/last.ckpt --split test --repeats 5 --out bpd/
    scoresde interpolate --ckpt runs/digits_vp/checkpoints/last.ckpt --pairs 4 --steps 9 --out interp/
    scoresde inpaint --ckpt runs/digits_vp/checkpoints/last.ckpt --mask right --method repaint --out inpaint/
    scoresde classifier fit --config experiments/classifiers/digits.yaml   # noise-conditional classifier
    scoresde distill --config experiments/distill/toy_vp.yaml             # few-step students of a checkpoint
    scoresde autoencoder fit --config experiments/autoencoders/digits.yaml # the first stage of latent diffusion

The DataModule's ``data_shape`` and ``transform`` are linked into the model. Logging goes to Weights & Biases in
offline mode unless the config says otherwise (``wandb sync`` uploads later).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import lightning as L

from .cluster import check_devices
from .module import ScoreModule
from .progress import progress_callbacks

__all__ = [
    "COMMANDS",
    "Command",
    "ScoreCLI",
    "ClassifierCLI",
    "AutoencoderCLI",
    "DistillCLI",
    "cli",
    "classifier_cli",
    "autoencoder_cli",
    "distill_cli",
    "run",
    "main",
    "USER_ERRORS",
]

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, MisconfigurationException)
"""What a user's mistake raises (bad values and files; Lightning's configuration errors): :func:`main` answers these
with one line. Anything else is a bug in scoresde and keeps its traceback."""

WANDB_OFFLINE = {
    "class_path": "lightning.pytorch.loggers.WandbLogger",
    "init_args": {"project": "scoresde", "offline": True},
}


class ScoreCLI(LightningCLI):
    """LightningCLI with the DataModule's shape and transform linked into the model."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.data_shape", "model.data_shape", apply_on="instantiate")
        parser.link_arguments("data.transform", "model.transform", apply_on="instantiate")

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[L.Callback]) -> L.Trainer:
        """Lightning's Trainer, with whole-line progress when standard output is not a terminal (a log file), once
        the devices asked for are checked against the machine and the SLURM job."""
        check_devices(config.get("accelerator"), config.get("devices"), config.get("num_nodes"))
        enabled = config.get("enable_progress_bar") is not False
        return super()._instantiate_trainer(config, [*callbacks, *progress_callbacks(enabled)])

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


class AutoencoderCLI(ScoreCLI):
    """LightningCLI over :class:`~scoresde.lightning.autoencoder.AutoencoderModule` (``scoresde autoencoder fit``)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """The autoencoder's data shape is in its own init_args: nothing is linked from the DataModule."""


def _full_load(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {**kwargs, "weights_only": False if kwargs.get("weights_only") is None else kwargs["weights_only"]}


def _build(cli_class: type[LightningCLI], model_class: type, args: Sequence[str] | None, run: bool) -> Any:
    os.environ.setdefault("WANDB_SILENT", "true")
    if args is not None and list(args) == sys.argv[1:]:
        args = None  # the console script's own arguments: LightningCLI reads them (and warns when given both)
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


class DistillCLI(ScoreCLI):
    """LightningCLI over :class:`~scoresde.lightning.distill.DistillModule` (``scoresde distill --config ...``)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """The student and its SDE come from the teacher checkpoint: nothing is linked from the DataModule."""


def distill_cli(args: Sequence[str] | None = None, run: bool = True) -> DistillCLI:
    """``scoresde distill --config ...``: progressive distillation of a checkpoint (always a fit)."""
    from .distill import DistillModule

    argv = list(sys.argv[2:] if args is None else args)
    return _build(DistillCLI, DistillModule, ["fit", *argv], run)


def classifier_cli(args: Sequence[str] | None = None, run: bool = True) -> ClassifierCLI:
    """``scoresde classifier fit|validate ...``: train the noise-conditional classifier of classifier guidance."""
    from .classifier import ClassifierModule

    return _build(ClassifierCLI, ClassifierModule, args, run)


def autoencoder_cli(args: Sequence[str] | None = None, run: bool = True) -> AutoencoderCLI:
    """``scoresde autoencoder fit|validate ...``: train the first stage of a latent diffusion model."""
    from .autoencoder import AutoencoderModule

    return _build(AutoencoderCLI, AutoencoderModule, args, run)


@dataclass(frozen=True)
class Command:
    """One ``scoresde`` command: its one-line summary and the function that runs it (``"module:function"``,
    imported only when the command runs, so ``scoresde --help`` stays fast). ``lightning`` commands get the whole
    argument list (LightningCLI reads the subcommand itself); the others get what follows their name."""

    summary: str
    target: str
    lightning: bool = False

    def __call__(self, argv: list[str]) -> Any:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)(argv)


COMMANDS: dict[str, Command] = {
    "fit": Command("train a score model from a YAML experiment (LightningCLI)", "scoresde.lightning.cli:cli", True),
    "validate": Command("validation loss of a checkpoint (LightningCLI)", "scoresde.lightning.cli:cli", True),
    "test": Command("test loss of a checkpoint (LightningCLI)", "scoresde.lightning.cli:cli", True),
    "sample": Command(
        "draw samples from a checkpoint with any solver of the registry",
        "scoresde.lightning.commands.sample:sample_command",
    ),
    "likelihood": Command(
        "bits/dim of a data split through the probability-flow ODE",
        "scoresde.lightning.commands.likelihood:likelihood_command",
    ),
    "interpolate": Command(
        "encode pairs of data points, interpolate in the ODE latent space, decode and score them",
        "scoresde.lightning.commands.interpolate:interpolate_command",
    ),
    "inpaint": Command(
        "fill in masked parts (or the colours) of dataset images", "scoresde.lightning.commands.inpaint:inpaint_command"
    ),
    "evaluate": Command(
        "FID, KID, Inception Score and precision/recall of samples against a reference set",
        "scoresde.lightning.commands.evaluate:evaluate_command",
    ),
    "grid": Command(
        "search a time grid for a model, a solver and a budget (saved for sample --grid FILE)",
        "scoresde.lightning.commands.grid:grid_command",
    ),
    "distill": Command(
        "progressive distillation of a checkpoint into few-step students (LightningCLI)",
        "scoresde.lightning.cli:distill_cli",
    ),
    "classifier": Command(
        "train the noise-conditional classifier of classifier guidance (fit, validate)",
        "scoresde.lightning.cli:classifier_cli",
    ),
    "autoencoder": Command(
        "train the autoencoder of a latent diffusion model (fit, validate)", "scoresde.lightning.cli:autoencoder_cli"
    ),
}
"""Every ``scoresde`` command by name."""


def usage() -> str:
    """``scoresde --help``: every command with its one-line summary."""
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {c.summary}" for name, c in COMMANDS.items()]
    return (
        "usage: scoresde <command> [options]   (scoresde <command> --help for its options)\n\n"
        "Score-based generative modelling with SDEs.\n\ncommands:\n" + "\n".join(lines) + "\n"
    )


def run(args: Sequence[str]) -> Any:
    """Run ``scoresde <args>`` in-process and return what the command returns; errors propagate as exceptions."""
    argv = list(args)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), end="")
        return None
    name = argv[0]
    if name not in COMMANDS:
        raise ValueError(f"unknown command {name!r}; the commands are: {', '.join(COMMANDS)}")
    command = COMMANDS[name]
    return command(argv if command.lightning else argv[1:])


def _plain(message: str) -> str:
    """The cause inside jsonargparse's report on a class that failed to build ("Does not validate against any of the
    Union subtypes ... Errors: - <cause> - Expected a <class 'NoneType'> ..."), else the message itself."""
    if message.startswith("Does not validate against any of the Union subtypes") and "Errors: - " in message:
        causes = [c.strip() for c in message.split("Errors: - ", 1)[1].split(" - ")]
        return next((c for c in causes if not c.startswith("Expected a <class 'NoneType'>")), message)
    return message


def _no_product_tips(record: logging.LogRecord) -> bool:
    """Drops Lightning's advertisements for its cloud services ("💡 Tip: ... try installing litlogger"): Lightning
    prints them on every Trainer with no setting to turn them off."""
    return not str(record.msg).startswith("💡 Tip")


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the ``scoresde`` console script: :func:`run`, with every mistake a user can make answered by
    one line on stderr, ``scoresde <command>: error: <message>``, and exit code 2 (``SCORESDE_DEBUG=1`` re-raises,
    with the traceback)."""
    argv = list(sys.argv[1:] if args is None else args)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_no_product_tips)
    # Lightning's own use of a torch.utils._pytree API that this torch deprecates; nothing in scoresde calls it
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    try:
        run(argv)
    except USER_ERRORS as err:
        if os.environ.get("SCORESDE_DEBUG"):
            raise
        name = argv[0] if argv and argv[0] in COMMANDS else ""
        message = _plain(" ".join(str(err).split()) or type(err).__name__)
        print(f"scoresde{' ' + name if name else ''}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":  # pragma: no cover
    main()
