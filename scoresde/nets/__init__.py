"""Time-conditioned networks ``net(x, c_noise)`` (``net(x, c_noise, y)`` when built conditional) and classifiers."""

from .classifier import ConvClassifier as ConvClassifier
from .embeddings import ConditionEmbedding as ConditionEmbedding
from .embeddings import GaussianFourierEmbedding as GaussianFourierEmbedding
from .embeddings import SinusoidalEmbedding as SinusoidalEmbedding
from .mlp import MLP as MLP
from .ncsnpp import DDPMpp as DDPMpp
from .ncsnpp import NCSNpp as NCSNpp
from .ncsnpp import count_parameters as count_parameters
from .ncsnpp import paper_config as paper_config
from .unet import UNet as UNet
