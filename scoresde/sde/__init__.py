"""Forward SDEs with Gaussian perturbation kernels: VP, sub-VP, cosine VP, discrete VP (DDPM tables), a learned VP
schedule (VDM) and VE."""

from .base import SDE as SDE
from .base import ProbabilityFlowODE as ProbabilityFlowODE
from .base import ReverseSDE as ReverseSDE
from .discrete import DiscreteVPSDE as DiscreteVPSDE
from .learned import LearnedVPSDE as LearnedVPSDE
from .learned import MonotoneGamma as MonotoneGamma
from .ve import VESDE as VESDE
from .vp import VPSDE as VPSDE
from .vp import CosineVPSDE as CosineVPSDE
from .vp import SubVPSDE as SubVPSDE

SDES: dict[str, type[SDE]] = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}
"""SDE classes by short name."""


def get_sde(name: str, **kwargs: float) -> SDE:
    """Build an SDE by short name (``"vp"``, ``"subvp"``, ``"ve"``); an unknown name lists the valid ones. The
    schedules of other models are classes: ``CosineVPSDE()``, ``DiscreteVPSDE.linear()``."""
    try:
        cls = SDES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown SDE {name!r}; available: {', '.join(sorted(SDES))}") from None
    return cls(**kwargs)
