"""The errors of ``regplug tune``, and the one way it imports Optuna (:func:`import_optuna`:
only inside functions, so ``regplug`` and ``regplug --help`` never import it).

Docs: docs/tune.md
"""

from __future__ import annotations

from typing import Any

from ..errors import RegplugError

__all__ = ["SearchError", "TrialFailed", "import_optuna"]


class SearchError(RegplugError, ValueError):
    """A search that cannot run as asked (a storage, a study, a runner's history)."""


class TrialFailed(RegplugError):
    """One trial could not give a value (its training failed or diverged); the study marks it
    FAIL and goes on."""


def import_optuna() -> Any:
    """The ``optuna`` module, or an ``ImportError`` that says what to install (one line)."""
    try:
        import optuna
    except ImportError as err:
        raise ImportError(f"regplug tune needs Optuna ({err.name or err} is not installed): "
                          "pip install 'regplug[tune]'") from None
    return optuna
