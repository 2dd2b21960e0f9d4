"""A mutant of plugins/monitors.py that tests/plugins let live (issue 16, item 19): the
epochs the generalization-gap warning names count from one, at both ends."""

from __future__ import annotations

import logging

import numpy as np

from regplug.plugins import GeneralizationGap
from regplug.testing import NumpyLoop


def test_the_gap_warning_names_first_and_last_epoch_counting_from_one(caplog):
    gap = GeneralizationGap(patience=3)
    loop = NumpyLoop({"w": np.ones((2, 2))}, [gap])
    with caplog.at_level(logging.WARNING, logger="regplug.plugins.monitors"):
        for epoch in range(4):  # gaps 0, 0.15, 0.3, 0.45
            loop.run.epoch = epoch
            loop.epoch_end({"loss": 1.0 - 0.1 * epoch, "val_loss": 1.0 + 0.05 * epoch})
    loop.close()
    assert gap.warned_at == [3]
    message = caplog.records[0].getMessage()
    assert "widened for 3 epochs in a row: 0 at epoch 1 → 0.45 at epoch 4" in message
