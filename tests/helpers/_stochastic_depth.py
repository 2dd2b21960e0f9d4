"""Stand-ins for torchvision's ``ops.StochasticDepth`` and timm's ``DropPath`` (not a test module).

Neither package is installed in the test environment (torchvision's PyPI wheel is built
against CUDA torch and does not import beside torch 2.13.0+cpu), so the tests use these
classes, which keep the same class names, the same attribute holding the drop probability
(``p``, ``drop_prob``) and read it in ``forward`` as the originals do. Tests with the real
classes skip, with the reason, where the package is missing.
"""

from __future__ import annotations

import torch
from torch import nn


def _drop_rows(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    keep = 1.0 - p
    noise = torch.empty([x.shape[0]] + [1] * (x.ndim - 1), dtype=x.dtype,
                        device=x.device).bernoulli_(keep)
    return x * noise.div_(keep) if keep > 0.0 else x * noise


class StochasticDepth(nn.Module):
    """As ``torchvision.ops.StochasticDepth(p, mode="row")``."""

    def __init__(self, p: float, mode: str = "row") -> None:
        super().__init__()
        self.p = p
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _drop_rows(x, self.p, self.training)


class DropPath(nn.Module):
    """As ``timm.layers.DropPath(drop_prob)``."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _drop_rows(x, self.drop_prob, self.training)


class ResidualNet(nn.Module):
    """Two residual branches, one behind each kind of stochastic depth, then a head; a probe
    records, per training forward, the rate each module read and the rows it dropped."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Linear(4, 8)
        self.branch1 = nn.Linear(8, 8)
        self.sd = StochasticDepth(rate)
        self.branch2 = nn.Linear(8, 8)
        self.drop_path = DropPath(rate)
        self.head = nn.Linear(8, 2)
        self.read: list[tuple[float, float, float, float]] = []

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):  # type: ignore[no-untyped-def]
        h = self.stem(x)
        ones = torch.ones(x.shape[0], 1)
        a = self.sd(ones)
        b = self.drop_path(ones)
        if self.training:
            self.read.append((self.sd.p, float((a == 0).float().mean()),
                              self.drop_path.drop_prob, float((b == 0).float().mean())))
        h = h + a * self.branch1(h)
        h = h + b * self.branch2(h)
        out = self.head(h)
        if labels is not None:  # the Hugging Face Trainer's calling convention
            return {"loss": nn.functional.cross_entropy(out, labels), "logits": out}
        return out
