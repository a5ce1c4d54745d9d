"""scoresde: score-based generative modelling with stochastic differential equations.

The core (SDEs, analytic targets, parameterization, losses, solvers, sampling, likelihood, latent space) is plain PyTorch; the Lightning layer
(training, data, CLI) lives in :mod:`scoresde.lightning` and is imported only when used.
"""

from importlib.metadata import PackageNotFoundError, version

from .analytic import GaussianMixture as GaussianMixture
from .hybrid import HybridLoss as HybridLoss
from .latent import decode as decode
from .latent import encode as encode
from .latent import interpolate as interpolate
from .likelihood import LikelihoodResult as LikelihoodResult
from .likelihood import bits_per_dim as bits_per_dim
from .likelihood import fit_prior as fit_prior
from .likelihood import log_likelihood as log_likelihood
from .losses import DSMLoss as DSMLoss
from .parametrization import ScoreModel as ScoreModel
from .sampling import SampleResult as SampleResult
from .sampling import sample as sample
from .sde import SDE as SDE
from .sde import VESDE as VESDE
from .sde import VPSDE as VPSDE
from .sde import CosineVPSDE as CosineVPSDE
from .sde import DiscreteVPSDE as DiscreteVPSDE
from .sde import LearnedVPSDE as LearnedVPSDE
from .sde import SubVPSDE as SubVPSDE
from .sde import get_sde as get_sde
from .solvers import SOLVERS as SOLVERS
from .solvers import Solver as Solver
from .solvers import get_solver as get_solver
from .solvers import register_solver as register_solver
from .transforms import DataTransform as DataTransform
from .variational import elbo as elbo
from .vdm import VDMLoss as VDMLoss

try:
    __version__ = version("scoresde")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
