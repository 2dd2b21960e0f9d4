"""A complete, small PyTorch loop using regplug: the notebook's MLP on the digits data.

Run it with ``regplug demo``. It trains the same model under a few strategies and prints
train/test accuracy, ``pct_diff = 1 − acc_test/acc_train`` and the fraction of exact-zero
weights — the comparison of the lecture notebook, in miniature.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from regplug.data import Dataset, load_digits
from regplug.plugins import L1, L2, DecoupledWeightDecay, MaxNorm, ProximalL1

from .torch import attach

STRATEGIES: dict[str, Callable[[], list[object]]] = {
    "none": lambda: [],
    "l2": lambda: [L2(1e-3)],
    "l1": lambda: [L1(1e-4)],
    "decoupled_weight_decay": lambda: [DecoupledWeightDecay(0.05)],
    "proximal_l1": lambda: [ProximalL1(1e-3)],
    "max_norm": lambda: [MaxNorm(2.0)],
}


def mlp(n_in: int, n_out: int) -> nn.Module:
    """The notebook's model: Dense 50 → 250 → classes, ReLU."""
    return nn.Sequential(nn.Linear(n_in, 50), nn.ReLU(), nn.Linear(50, 250), nn.ReLU(),
                         nn.Linear(250, n_out))


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return acc


def train_one(data: Dataset, plugins: list[object], *, epochs: int, seed: int,
              batch_size: int = 64, lr: float = 0.05) -> dict[str, float]:
    torch.manual_seed(seed)
    model = mlp(data.n_features, data.n_classes)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    xtr, ytr = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    xte, yte = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    gen = torch.Generator().manual_seed(seed)
    criterion = nn.CrossEntropyLoss()
    with attach(model, opt, plugins) as reg:
        for _ in range(epochs):
            order = torch.randperm(len(xtr), generator=gen)
            for i in range(0, len(xtr), batch_size):
                idx = order[i:i + batch_size]
                opt.zero_grad()
                loss = reg.loss(criterion(model(xtr[idx]), ytr[idx]))
                loss.backward()
                opt.step()
            if reg.epoch_end({"val_accuracy": _accuracy(model, xte, yte)}):
                break
        penalty = float(reg.penalty())
        zeros, total = reg.run.ops.count_zeros(reg.run.parameters())
    acc_train, acc_test = _accuracy(model, xtr, ytr), _accuracy(model, xte, yte)
    return {"acc_train": acc_train, "acc_test": acc_test,
            "pct_diff": 1.0 - acc_test / acc_train if acc_train else float("nan"),
            "zero_weights": zeros / total, "penalty": penalty}


def run_demo(epochs: int = 30, seed: int = 0) -> dict[str, dict[str, float]]:
    """Train every strategy on the digits data and print the comparison table."""
    data = load_digits(seed=seed)
    print(f"digits: {len(data.x_train)} train / {len(data.x_test)} test images, "
          f"{data.n_features} features; MLP with hidden layers 50 and 250, {epochs} epochs, "
          f"SGD(lr=0.05, momentum=0.9), batch 64")
    for name, make in STRATEGIES.items():
        print(f"  {name:<24}{', '.join(map(repr, make())) or '(no plugin)'}")
    results = {}
    header = f"{'strategy':<24}{'acc_train':>10}{'acc_test':>10}{'pct_diff':>10}" \
             f"{'zeros':>8}{'penalty':>10}{'time':>7}"
    print(header)
    for name, make in STRATEGIES.items():
        start = time.perf_counter()
        row = train_one(data, make(), epochs=epochs, seed=seed)
        row["seconds"] = time.perf_counter() - start
        results[name] = row
        print(f"{name:<24}{row['acc_train']:>10.4f}{row['acc_test']:>10.4f}"
              f"{row['pct_diff']:>10.4f}{row['zero_weights']:>8.1%}{row['penalty']:>10.4f}"
              f"{row['seconds']:>6.1f}s")
    return results
