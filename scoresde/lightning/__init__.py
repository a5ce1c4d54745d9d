"""The Lightning layer: training module, DataModules, callbacks, the CLI and its commands (``commands/``). The only
package of scoresde that imports Lightning."""

from .callbacks import BitsPerDimReport as BitsPerDimReport
from .callbacks import SampleReport as SampleReport
from .callbacks import StepCheckpoint as StepCheckpoint
from .classifier import ClassifierModule as ClassifierModule
from .data import DigitsDataModule as DigitsDataModule
from .data import ImageFolderDataModule as ImageFolderDataModule
from .data import NpzDataModule as NpzDataModule
from .data import TensorDataModule as TensorDataModule
from .data import ToyDataModule as ToyDataModule
from .module import ScoreModule as ScoreModule
