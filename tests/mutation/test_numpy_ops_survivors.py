"""A mutant of regplug/numpy_ops.py that tests/plugins lets live (issue 16, item 19):
``scale_update_`` scales only what the optimizer updates — a parameter with a gradient that
is not frozen — as the torch ops do (torch.optim's rule)."""

from __future__ import annotations

import numpy as np

from regplug.testing import numpy_run


def test_scale_update_leaves_frozen_parameters_and_those_without_a_gradient():
    arrays = {name: np.ones((1, 2)) for name in ("a.weight", "b.weight", "c.weight")}
    run = numpy_run(arrays)  # the parameters after an update from 3.0 to 1.0
    ops, params = run.ops, run.params
    ops.grads = {"a.weight": np.zeros((1, 2)), "b.weight": np.zeros((1, 2))}  # c: no gradient
    ops.set_trainable_([params[1]], False)  # b: frozen
    ops.scale_update_(params, [np.full((1, 2), 3.0) for _ in params], [0.5, 0.5, 0.5])
    np.testing.assert_array_equal(arrays["a.weight"], [[2.0, 2.0]])  # 3 + 0.5·(1 − 3)
    np.testing.assert_array_equal(arrays["b.weight"], [[1.0, 1.0]])
    np.testing.assert_array_equal(arrays["c.weight"], [[1.0, 1.0]])


def test_count_zeros_counts_the_exact_zeros_and_the_elements():
    run = numpy_run({"a.weight": np.array([[0.0, 1.0, -0.0]]), "b.weight": np.zeros((2, 2))})
    assert run.ops.count_zeros(run.params) == (6, 7)
