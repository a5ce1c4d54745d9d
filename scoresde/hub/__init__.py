"""Pretrained models from other libraries as scoresde models: diffusers UNets, score_sde_pytorch checkpoints and
EDM network pickles (read safely).

Every loader returns a :class:`~scoresde.ScoreModel` whose ``.sde`` is the schedule the network was trained on, so
that every solver, the likelihood and guidance apply. Nothing is downloaded: weights come from local files.
"""

from .diffusers import from_diffusers as from_diffusers
from .edm import from_edm as from_edm
from .edm import read_edm as read_edm
from .score_sde import SCORE_SDE_CONFIGS as SCORE_SDE_CONFIGS
from .score_sde import from_score_sde as from_score_sde
