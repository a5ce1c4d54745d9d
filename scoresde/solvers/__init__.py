"""Samplers: the solver contract (:mod:`.base`), the solvers, time grids, and one registry (:mod:`.registry`).

Add yours by writing one :class:`Solver` subclass and one entry in ``SOLVERS`` (or calling :func:`register_solver`).
"""

from .base import Coefficients as Coefficients
from .base import GaussianStepSolver as GaussianStepSolver
from .base import IntegratorSolver as IntegratorSolver
from .base import Solver as Solver
from .base import SolverSDEIncompatible as SolverSDEIncompatible
from .base import State as State
from .base import Step as Step
from .base import StepCallback as StepCallback
from .base import Transition as Transition
from .base import eps_and_x0 as eps_and_x0
from .correctors import AnnealedLangevin as AnnealedLangevin
from .correctors import Corrector as Corrector
from .correctors import Langevin as Langevin
from .correctors import NoPredictor as NoPredictor
from .correctors import PredictorCorrector as PredictorCorrector
from .fast import DDIM as DDIM
from .fast import ERSDE as ERSDE
from .fast import DPMSolver as DPMSolver
from .fast import DPMSolverPP as DPMSolverPP
from .fast import DPMSolverPPSDE as DPMSolverPPSDE
from .fast import Heun as Heun
from .fast import Restart as Restart
from .fast import dpm_solver_fast as dpm_solver_fast
from .multistep import DEIS as DEIS
from .multistep import IPNDM as IPNDM
from .multistep import UniPC as UniPC
from .ode import ProbabilityFlow as ProbabilityFlow
from .registry import CORRECTORS as CORRECTORS
from .registry import SOLVERS as SOLVERS
from .registry import SolverSpec as SolverSpec
from .registry import get_corrector as get_corrector
from .registry import get_solver as get_solver
from .registry import register_solver as register_solver
from .sde import SRK as SRK
from .sde import AdaptiveReverseSDE as AdaptiveReverseSDE
from .sde import Ancestral as Ancestral
from .sde import EulerMaruyama as EulerMaruyama
from .sde import Milstein as Milstein
from .sde import ReverseDiffusion as ReverseDiffusion
from .sde import ReversibleHeun as ReversibleHeun
from .sde import TorchSDE as TorchSDE
from .timesteps import DISCRETE_GRIDS as DISCRETE_GRIDS
from .timesteps import TIME_GRIDS as TIME_GRIDS
from .timesteps import get_timesteps as get_timesteps
