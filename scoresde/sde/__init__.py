"""Forward SDEs with Gaussian perturbation kernels: VP, sub-VP and VE."""

from .base import SDE as SDE
from .base import ProbabilityFlowODE as ProbabilityFlowODE
from .base import ReverseSDE as ReverseSDE
from .ve import VESDE as VESDE
from .vp import VPSDE as VPSDE
from .vp import SubVPSDE as SubVPSDE

SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}
"""SDE classes by short name."""


def get_sde(name: str, **kwargs: float) -> SDE:
    """Build an SDE by short name (``"vp"``, ``"subvp"``, ``"ve"``); an unknown name lists the valid ones."""
    try:
        cls = SDES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown SDE {name!r}; available: {', '.join(sorted(SDES))}") from None
    return cls(**kwargs)
