"""Mutants of plugins/constraints.py that tests/plugins and tests/torch let live (issue 16,
item 19): MaxNorm's default bound (2.0, as ``keras.constraints.MaxNorm``), the refusal of a
bound of 0 (it must be ``> 0``) and its search range (``max_value`` over 0.1 … 10, log)."""

from __future__ import annotations

import numpy as np
import pytest

from regplug.plugins import MaxNorm
from regplug.testing import NumpyLoop


def test_the_default_bound_is_keras_2():
    loop = NumpyLoop({"w": np.array([[3.0, 4.0], [1.2, 1.6]])}, [MaxNorm()])
    loop.step({"w": np.zeros((2, 2))})
    loop.close()
    # the first row to norm 2 (Keras divides by the norm plus 1e-7), the second was within
    np.testing.assert_allclose(loop.params["w"], [[1.2, 1.6], [1.2, 1.6]], rtol=1e-6)


def test_a_bound_of_zero_is_refused():
    with pytest.raises(ValueError, match="max_value"):
        MaxNorm(0.0)


def test_the_bound_is_searched_on_a_log_scale_over_two_decades():
    assert {arg: r.to_config() for arg, r in MaxNorm.tunable.items()} == {
        "max_value": {"low": 0.1, "high": 10.0, "log": True}}
