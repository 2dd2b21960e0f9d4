"""regplug's built-in plugins. Each works unchanged in every adapter: a plain PyTorch loop,
Keras ``model.fit``, the Lightning ``Trainer`` and the Hugging Face ``Trainer`` (where an
adapter cannot serve a plugin, it refuses it at the start of training and says why).

Docs: docs/plugins/index.md.
"""

from .averaging import EMA, SWA
from .constraints import MaxNorm
from .decay import DecoupledWeightDecay
from .dropout import DropoutSchedule
from .early_stopping import EarlyStopping
from .freeze import Freeze
from .l2sp import L2SP
from .layer_monitor import LayerMonitor
from .layerwise import LayerwiseLR
from .monitors import GeneralizationGap, NonFiniteGuard
from .penalties import L1, L2, ElasticNet
from .proximal import ProximalL1
from .pruning import OptunaPruning
from .sanity import OverfitBatch, OverfitBatchError
from .stopping_criteria import (
    DivergenceThreshold,
    GeneralizationLoss,
    MetricHistory,
    NonFinite,
    Patience,
    ProgressQuotient,
    RisingStrips,
    StoppingCriterion,
    StoppingThreshold,
)

__all__ = ["L1", "L2", "ElasticNet", "DecoupledWeightDecay", "ProximalL1", "MaxNorm",
           "DropoutSchedule", "EarlyStopping", "GeneralizationGap", "NonFiniteGuard",
           "OverfitBatch", "OverfitBatchError", "OptunaPruning", "LayerMonitor", "Freeze",
           "LayerwiseLR", "EMA", "SWA", "L2SP",
           # EarlyStopping's criteria (plugins/stopping_criteria.py)
           "MetricHistory", "StoppingCriterion", "Patience", "StoppingThreshold",
           "DivergenceThreshold", "NonFinite", "GeneralizationLoss", "ProgressQuotient",
           "RisingStrips"]
