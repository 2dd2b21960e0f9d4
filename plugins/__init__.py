"""regplug's built-in plugins. Each works unchanged in the PyTorch and Keras adapters."""

from .constraints import MaxNorm
from .decay import DecoupledWeightDecay
from .penalties import L1, L2, ElasticNet
from .proximal import ProximalL1

__all__ = ["L1", "L2", "ElasticNet", "DecoupledWeightDecay", "ProximalL1", "MaxNorm"]
