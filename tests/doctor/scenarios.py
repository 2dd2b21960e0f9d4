"""The doctor's scenario suite: small, seeded, CPU-only setups whose right verdict is known.

Each scenario is the keyword arguments of :func:`regplug.doctor.cli.run_doctor` (the data,
model factory, strategy, learning rate, epochs) and the verdict a doctor must give. Data
functions and model factories are referenced as ``<this file>:name``, the way a user gives
``--data module:function`` and ``--model module:factory``. Docs: docs/doctor.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from regplug.experiment.strategies import Strategy

HERE = str(Path(__file__).resolve())


def ref(name: str) -> str:
    return f"{HERE}:{name}"


def _digits() -> dict[str, np.ndarray]:
    from regplug.experiment.loaders import load_digits

    d = load_digits(seed=0)
    return {"x_train": d.x_train, "y_train": d.y_train, "x_test": d.x_test, "y_test": d.y_test}


def shuffled_digits() -> dict[str, np.ndarray]:
    """Digits whose training labels were shuffled against the inputs (a broken pipeline:
    the validation rows, split from them, carry the shuffle too)."""
    arrays = _digits()
    arrays["y_train"] = np.random.default_rng(7).permutation(arrays["y_train"])
    return arrays


# -- model factories (torch or Keras, after spec.framework) ----------------------------------

def _mlp(spec: Any, hidden: tuple[int, ...], *, first_bias: float = 0.0,
         frozen: bool = False, activation: str = "relu") -> Any:
    if spec.framework == "torch":
        import torch
        from torch import nn

        layers: list[nn.Module] = []
        width = spec.n_features
        for i, h in enumerate(hidden):
            linear = nn.Linear(width, h)
            if i == 0 and first_bias:
                with torch.no_grad():
                    linear.bias.fill_(first_bias)
            layers += [linear, nn.ReLU() if activation == "relu" else nn.Tanh()]
            width = h
        if spec.dropout is not None:
            layers.append(nn.Dropout(spec.dropout))
        layers.append(nn.Linear(width, spec.n_classes))
        net = nn.Sequential(*layers)
        if not frozen:
            return net
        return _Frozen(net)
    import keras

    inputs = keras.Input((spec.n_features,))
    x = inputs
    for i, h in enumerate(hidden):
        init = keras.initializers.Constant(first_bias) if i == 0 and first_bias else "zeros"
        x = keras.layers.Dense(h, activation=activation, bias_initializer=init)(x)
    if spec.dropout is not None:
        x = keras.layers.Dropout(spec.dropout)(x)
    head = keras.layers.Dense(spec.n_classes)
    out = head(x)
    model = keras.Model(inputs, out)
    if frozen:
        for layer in model.layers[:-1]:
            layer.trainable = False
        head.trainable = False
        scale = _ZeroScale()
        model = keras.Model(inputs, scale(out))
    return model


def _frozen_torch() -> Any:
    import torch
    from torch import nn

    class Frozen(nn.Module):
        """A loop whose loss does not depend on what trains: the network is frozen and the
        one trainable parameter is multiplied by 0 (its gradient is always 0)."""

        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net.requires_grad_(False)
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x) + 0.0 * self.w

    return Frozen


def _Frozen(net: Any) -> Any:
    return _frozen_torch()(net)


def _ZeroScale() -> Any:
    import keras

    class ZeroScale(keras.layers.Layer):
        def build(self, shape: Any) -> None:
            self.w = self.add_weight(shape=(1,), initializer="ones", name="w")

        def call(self, x: Any) -> Any:
            return x + 0.0 * self.w

    return ZeroScale()


def small_model(spec: Any) -> Any:
    """Two hidden tanh units (no ReLU that could die): too little capacity for ten classes."""
    return _mlp(spec, (2,), activation="tanh")


def dead_relu_model(spec: Any) -> Any:
    """The notebook's MLP with its first layer's biases at -10: every unit of it is 0 on
    every input (digits' features lie in [0, 1]), so no gradient ever reaches them."""
    return _mlp(spec, (50, 250), first_bias=-10.0)


def frozen_model(spec: Any) -> Any:
    """The loss does not depend on the trainable parameter: one batch cannot be overfitted."""
    return _mlp(spec, (50,), frozen=True)


# -- the scenarios ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Scenario:
    name: str
    expected: str
    kwargs: dict[str, Any] = field(default_factory=dict)


STRONG_L2 = Strategy("strong_l2", ({"name": "l2", "l2": 0.1},))

SCENARIOS: tuple[Scenario, ...] = (
    Scenario("tiny_data", "overfitting", {"data": None, "train_rows": 60, "epochs": 40}),
    Scenario("label_noise", "overfitting", {"data": None, "train_rows": 200,
                                            "label_noise": 0.3, "epochs": 60}),
    Scenario("strong_l2", "underfitting", {"data": None, "baseline": STRONG_L2,
                                           "epochs": 15}),
    Scenario("high_lr", "unstable", {"data": None, "lr": 5.0, "epochs": 10}),
    Scenario("small_model", "underfitting", {"data": None, "model": ref("small_model"),
                                             "epochs": 15}),
    Scenario("shuffled_labels", "bug", {"data": ref("shuffled_digits"), "epochs": 30}),
    Scenario("frozen_loss", "bug", {"data": None, "model": ref("frozen_model"), "epochs": 3}),
    Scenario("dead_relu", "bug", {"data": None, "model": ref("dead_relu_model"),
                                  "epochs": 5}),
    Scenario("healthy", "healthy", {"data": None, "epochs": 8}),
)


def too_few_rows() -> dict[str, np.ndarray]:
    """40 rows: a validation split of 15 % leaves 6, too few to judge curves on."""
    arrays = _digits()
    return {"x_train": arrays["x_train"][:40], "y_train": arrays["y_train"][:40],
            "x_test": arrays["x_test"][:20], "y_test": arrays["y_test"][:20]}


def broken_factory(spec: Any) -> Any:
    """A factory that fails: the model cannot be built."""
    raise RuntimeError("no such layer: Dense3D")


def detached_model(spec: Any) -> Any:
    """A loop whose output is detached from the parameters (torch): backward raises."""
    from torch import nn

    class Detached(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _mlp(spec, (50,))

        def forward(self, x: Any) -> Any:
            return self.net(x).detach()

    return Detached()
