"""DropoutSchedule's selection of stochastic-depth handles: only when ``layers`` names them."""

from __future__ import annotations

from regplug import DropoutHandle
from regplug.plugins.dropout import STOCHASTIC_DEPTH_LAYERS, select_dropout_layers

HANDLES = [DropoutHandle(n, t, 0.1, lambda rate: None) for n, t in
           [("drop", "Dropout"), ("blocks.0.drop_path", "DropPath"),
            ("layer1.sd", "StochasticDepth"), ("drop2d", "Dropout2d")]]


def _names(**kwargs):
    return [h.name for h in select_dropout_layers(HANDLES, **kwargs)]


def test_the_default_is_dropout_only():
    assert _names() == ["drop", "drop2d"]
    assert _names(include=["blocks.*"]) == []


def test_stochastic_depth_when_named():
    assert _names(layers=sorted(STOCHASTIC_DEPTH_LAYERS)) == ["blocks.0.drop_path", "layer1.sd"]
    assert _names(layers=["DropPath"]) == ["blocks.0.drop_path"]
    assert _names(layers=["*"]) == [h.name for h in HANDLES]
