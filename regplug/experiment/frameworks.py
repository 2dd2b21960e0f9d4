"""The frameworks an experiment can train with: one protocol, one registry.

``regplug compare`` and ``regplug tune`` never import an adapter by name. A framework's
runner implements :class:`FrameworkRunner` and is found by name in the registry: registered
in code with :func:`register_runner`, or declared as an entry point of group
``regplug.frameworks`` (regplug's own: ``regplug.adapters.torch.compare:TorchRunner`` and
``regplug.adapters.keras.compare:KerasRunner``). So the dependency points one way: the
runners import this package (settings, strategies, result types), and this package loads
them only through the registry, when their framework is asked for.

>>> sorted(framework_names())
['keras', 'torch']

Docs: docs/compare.md
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..errors import RegplugError

if TYPE_CHECKING:
    from ..uncertainty import MCPrediction
    from .datasets import Splits
    from .models import ModelChoice
    from .strategies import Strategy
    from .toy import RegressionToy
    from .training import TrainOutcome

__all__ = ["TrainSettings", "EpochCallback", "FrameworkRunner", "FrameworkUnavailable",
           "ENTRY_POINT_GROUP", "register_runner", "get_runner", "framework_names",
           "RUNNER_LOG_KEYS", "runner_log_keys"]

#: The entry-point group of framework runners.
ENTRY_POINT_GROUP = "regplug.frameworks"

#: What to install for a framework whose runner cannot be imported.
INSTALL_HINTS: dict[str, str] = {"torch": "pip install 'regplug[torch]'",
                                 "keras": "pip install 'regplug[keras]'"}

#: What to install for a Keras backend (``KERAS_BACKEND``) that is missing.
_KERAS_BACKEND_INSTALL: dict[str, str] = {"jax": "pip install jax",
                                          "torch": "pip install 'regplug[torch]'",
                                          "tensorflow": "pip install 'regplug[keras]'",
                                          "openvino": "pip install openvino"}

#: The keys of every epoch's logs a runner writes (:class:`~.training.TrainOutcome`'s
#: ``history``), besides each penalty and what the plugins add. A runner whose logs hold
#: other keys says so in a ``log_keys`` attribute (:func:`runner_log_keys`).
RUNNER_LOG_KEYS: tuple[str, ...] = ("loss", "accuracy", "cross_entropy", "val_loss",
                                    "val_accuracy", "val_cross_entropy")

#: Called by a runner after every epoch with the epoch index (from 0) and its logs.
EpochCallback = Callable[[int, Mapping[str, float]], None]


@dataclass(frozen=True)
class TrainSettings:
    """The hyper-parameters every strategy trains with, in every framework.

    SGD with momentum (the same update in torch and Keras), mini-batches reshuffled every
    epoch from the seed (each framework draws its own orders: torch's generator, NumPy's in
    Keras, the same on every Keras backend), cross-entropy on logits; weights initialised
    Glorot-uniform with zero biases in both frameworks, from the same seed for every strategy.

    >>> TrainSettings().describe()
    'SGD(lr=0.05, momentum=0.9), batch 128, 30 epochs, seed 0'
    """

    epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 0.05
    momentum: float = 0.9
    seed: int = 0

    def describe(self) -> str:
        return (f"SGD(lr={self.learning_rate:g}, momentum={self.momentum:g}), batch "
                f"{self.batch_size}, {self.epochs} epoch{'' if self.epochs == 1 else 's'}, "
                f"seed {self.seed}")


@runtime_checkable
class FrameworkRunner(Protocol):
    """Trains the comparison's models in one framework.

    A runner whose epoch logs differ from :data:`RUNNER_LOG_KEYS` also has a ``log_keys``
    attribute (a tuple of keys): the applications refuse, before training, a plugin that
    monitors a key no log will hold (:func:`runner_log_keys`).
    """

    #: The name ``--framework`` uses (``"torch"``, ``"keras"``).
    name: str

    def describe(self) -> str:
        """The framework and its version, for the results' settings (``"torch 2.13.0"``)."""

    def train_strategy(self, splits: Splits, strategy: Strategy, plugins: list[object],
                       model_choice: ModelChoice, settings: TrainSettings,
                       on_epoch: EpochCallback | None = None) -> TrainOutcome:
        """Train a fresh model under ``strategy`` (its model options and ``plugins``) on
        ``splits`` with ``settings``; call ``on_epoch`` after every epoch."""

    def mc_dropout(self, toy: RegressionToy, *, seed: int = 0) -> MCPrediction:
        """Train the toy regression network with dropout; predict its grid with dropout on."""


class FrameworkUnavailable(RegplugError, ImportError):
    """The framework an application asks for is not installed (or not known)."""


_registered: dict[str, Callable[[], FrameworkRunner]] = {}
_loaded: dict[str, FrameworkRunner] = {}


def register_runner(name: str, factory: Callable[[], FrameworkRunner]) -> None:
    """Make ``factory()`` the runner of framework ``name`` (replacing an entry point's)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"register_runner: 'name' must be an identifier, got {name!r}")
    if not callable(factory):
        raise TypeError(f"register_runner: 'factory' must be callable, got "
                        f"{type(factory).__name__}")
    _registered[name] = factory
    _loaded.pop(name, None)


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def framework_names() -> list[str]:
    """Every framework with a runner, registered or declared (installed or not)."""
    return list(dict.fromkeys([*_entry_points(), *_registered]))


def get_runner(name: str) -> FrameworkRunner:
    """The runner of framework ``name``; a one-line error says what to install."""
    runner = _loaded.get(name)
    if runner is not None:
        return runner
    factory = _registered.get(name)
    if factory is None:
        ep = _entry_points().get(name)
        if ep is None:
            known = framework_names()
            close = difflib.get_close_matches(str(name), known, n=1)
            raise FrameworkUnavailable(
                f"unknown framework {name!r}; "
                + (f"did you mean {close[0]!r}? " if close else "")
                + f"choose from {', '.join(known) or '(none installed)'}")
        try:
            factory = ep.load()
        except ImportError as err:
            missing = getattr(err, "name", None) or str(err)
            backend = _missing_keras_backend(name, missing,
                                             os.environ.get("KERAS_BACKEND"))
            if backend is not None:
                raise FrameworkUnavailable(
                    f"--framework {name}: KERAS_BACKEND={backend} but "
                    f"{missing.partition('.')[0]} is not "
                    f"installed: {_KERAS_BACKEND_INSTALL.get(backend, f'pip install {backend}')} "
                    "(or unset KERAS_BACKEND for TensorFlow, which 'regplug[keras]' "
                    "installs)") from None
            hint = INSTALL_HINTS.get(name, f"install the framework of entry point {ep.value}")
            raise FrameworkUnavailable(f"--framework {name} needs {missing!r}, which is not "
                                       f"installed: {hint}") from None
    runner = factory()
    if not isinstance(runner, FrameworkRunner):
        raise TypeError(f"the runner of framework {name!r} ({type(runner).__name__}) does not "
                        "implement regplug.experiment.FrameworkRunner (name, describe, "
                        "train_strategy, mc_dropout)")
    _loaded[name] = runner
    return runner


def _missing_keras_backend(framework: str, missing: str, backend: str | None) -> str | None:
    """``backend`` (``KERAS_BACKEND``) when Keras failed to import because the backend's
    module ``missing`` is not installed (TensorFlow, the default: ``None``, as the extra
    brings it).

    >>> _missing_keras_backend("keras", "jax", "jax"), _missing_keras_backend("keras", "x", "jax")
    ('jax', None)
    """
    backend = (backend or "").strip().lower()
    if framework != "keras" or not backend or backend == "tensorflow":
        return None
    top = missing.partition(".")[0]
    return backend if top == backend or (backend == "jax" and top == "jaxlib") else None


def runner_log_keys(runner: object) -> tuple[str, ...]:
    """The keys of the epoch logs ``runner`` writes: its ``log_keys`` attribute where it has
    one, else :data:`RUNNER_LOG_KEYS` (what regplug's runners write).

    >>> class Mine:
    ...     log_keys = ("loss", "val_loss", "val_f1")
    >>> runner_log_keys(Mine()), runner_log_keys(object()) == RUNNER_LOG_KEYS
    (('loss', 'val_loss', 'val_f1'), True)
    """
    keys = getattr(runner, "log_keys", None)
    if keys is None:
        return RUNNER_LOG_KEYS
    if isinstance(keys, str) or not isinstance(keys, Iterable) \
            or not all(isinstance(k, str) for k in keys):
        raise TypeError(f"the runner {type(runner).__name__}: 'log_keys' must be a tuple of "
                        f"log keys, got {keys!r}")
    return tuple(keys)
