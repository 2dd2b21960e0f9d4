"""Small models and data for the PyTorch tests (imported by them; not a test module)."""

from __future__ import annotations

import torch
from torch import nn


def make_model(seed: int = 0, *, norm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(8, 16)]
    if norm:
        layers += [nn.BatchNorm1d(16)]
    layers += [nn.ReLU(), nn.Linear(16, 16)]
    if norm:
        layers += [nn.LayerNorm(16)]
    layers += [nn.Tanh(), nn.Linear(16, 3)]
    return nn.Sequential(*layers)


def batches(n: int, seed: int = 1, size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 8, generator=gen), torch.randint(0, 3, (size,), generator=gen))
            for _ in range(n)]


def weights_and_others(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(Linear weights, everything else) — regplug's default selection and the rest."""
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    ids = {id(w) for w in weights}
    return weights, [p for p in model.parameters() if id(p) not in ids]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: nn.Module, b: nn.Module, *, rtol: float = 1e-6, atol: float = 1e-7) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")
