"""A default selection on a model with LoRA adapters says that it leaves them out.

LoRA matrices are kind ``lora`` (not ``weight``) so decay on adapters and on the base can
differ; a plugin built without ``kinds`` therefore leaves them out, and on a PEFT model whose
base is frozen it would act on nothing that trains. It must say so, once, with the fix.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from regplug import RegplugWarning
from regplug.plugins import L2, DecoupledWeightDecay
from regplug.testing import numpy_run

PARAMS = {"q.base_layer.weight": np.ones((2, 2)), "q.lora_A.default.weight": np.ones((1, 2)),
          "q.lora_B.default.weight": np.ones((2, 1)), "q.bias": np.zeros(2)}


def _selected(plugin, params=PARAMS):
    run = numpy_run({k: v.copy() for k, v in params.items()})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = [p.name for p in run.parameters(plugin.selection)]
        run.parameters(plugin.selection)  # asked again: no second warning
    return names, [str(w.message) for w in caught if issubclass(w.category, RegplugWarning)]


def test_the_default_kinds_leave_lora_out_and_say_how_to_take_it_in():
    names, messages = _selected(L2(1e-3))
    assert names == ["q.base_layer.weight"]
    assert len(messages) == 1
    assert messages[0].startswith("L2: the model has 2 LoRA adapter parameters (kind 'lora', "
                                  "e.g. 'q.lora_A.default.weight')")
    assert "kinds=('weight', 'lora')" in messages[0] and "kinds='weight'" in messages[0]


@pytest.mark.parametrize("kinds, expected", [
    ("weight", ["q.base_layer.weight"]),
    (("weight", "lora"), ["q.base_layer.weight", "q.lora_A.default.weight",
                          "q.lora_B.default.weight"]),
    ("lora", ["q.lora_A.default.weight", "q.lora_B.default.weight"]),
])
def test_named_kinds_are_taken_as_meant_without_a_warning(kinds, expected):
    names, messages = _selected(DecoupledWeightDecay(0.01, kinds=kinds))
    assert names == expected and messages == []


def test_no_warning_when_the_patterns_leave_the_adapters_out_or_there_are_none():
    assert _selected(L2(1e-3, exclude="q.lora_*"))[1] == []
    no_lora = {k: v for k, v in PARAMS.items() if "lora" not in k}
    assert _selected(L2(1e-3), no_lora) == (["q.base_layer.weight"], [])
