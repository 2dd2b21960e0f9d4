"""A monitor missing from the logs: the warning says "There are no validation metrics" only
when there are none, and otherwise names the validation keys there are and the closest one
(issue 18)."""

from __future__ import annotations

import numpy as np
import pytest

from regplug import RegplugWarning
from regplug.plugins import EarlyStopping
from regplug.testing import NumpyLoop


def _warning(logs: dict[str, float], monitor: str = "val_loss") -> str:
    loop = NumpyLoop({"w": np.ones(1)}, [EarlyStopping(monitor=monitor, mode="min")])
    with pytest.warns(RegplugWarning) as caught:
        loop.epoch_end(dict(logs))
    (message,) = [str(w.message) for w in caught]
    return message


@pytest.mark.parametrize("logs, ending", [
    # the closest key is a validation metric: suggested, and no "no validation metrics"
    ({"loss": 1.0, "val/loss": 1.2, "val/acc": 0.5}, "Did you mean 'val/loss'?"),
    ({"loss": 1.0, "valid_loss": 1.2}, "Did you mean 'valid_loss'?"),
    # the closest key is not: the validation metrics are named, and the closest of them
    ({"loss": 1.0, "validation-loss": 1.2, "validation-acc": 0.5},
     "Did you mean 'loss'? The validation metrics are validation-acc, validation-loss; the "
     "closest is 'validation-loss'."),
    ({"loss": 1.0, "val_accuracy": 0.5, "val_cross_entropy": 0.4},
     "Did you mean 'loss'? The validation metrics are val_accuracy, val_cross_entropy; the "
     "closest is 'val_cross_entropy'."),
    ({"loss": 1.0, "accuracy": 0.5, "Val/F1": 0.5, "eval_acc": 0.5},
     "Did you mean 'loss'? The validation metrics are Val/F1, eval_acc; the closest is "
     "'eval_acc'."),
])
def test_other_validation_keys_are_never_called_no_validation_metrics(logs, ending):
    message = _warning(logs)
    assert "There are no validation metrics" not in message
    assert "monitor 'val_loss' is not in the logs of this epoch" in message
    assert message.endswith(f"Available keys: {', '.join(sorted(logs))}. {ending}"), message


def test_without_any_validation_key_the_hint_says_how_to_log_them():
    message = _warning({"loss": 1.0, "accuracy": 0.5})
    assert message.endswith("There are no validation metrics: pass validation metrics to "
                            "NumpyLoop.epoch_end."), message
    message = _warning({"loss": 1.0, "accuracy": 0.5}, monitor="eval_loss")
    assert "There are no validation metrics" in message
