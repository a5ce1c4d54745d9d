"""Time-conditioned networks ``net(x, c_noise)``."""

from .embeddings import GaussianFourierEmbedding as GaussianFourierEmbedding
from .embeddings import SinusoidalEmbedding as SinusoidalEmbedding
from .mlp import MLP as MLP
from .unet import UNet as UNet
