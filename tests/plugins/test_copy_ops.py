"""The copy ops (clone, copy_into_, copy_from_) of the reference NumPy backend."""

from __future__ import annotations

import numpy as np
import pytest

from regplug.numpy_ops import NumpyOps
from regplug.testing import numpy_run


def test_clone_is_a_detached_copy_and_the_copies_go_both_ways():
    w, b = np.arange(6.0).reshape(2, 3), np.array([1.0, -1.0])
    run = numpy_run({"fc.weight": w, "fc.bias": b})
    ops, params = run.ops, list(run.params)
    copies = ops.clone(params)
    assert [c.shape for c in copies] == [(2, 3), (2,)]
    assert all(c is not p.tensor and not np.shares_memory(c, p.tensor)
               for c, p in zip(copies, params))
    w += 1.0  # the model moves on; the copy does not
    np.testing.assert_array_equal(copies[0], np.arange(6.0).reshape(2, 3))
    ops.copy_into_(copies, params)
    np.testing.assert_array_equal(copies[0], w)
    kept = copies[0]
    copies[0][...] = 7.0
    b[...] = 0.0
    ops.copy_from_(params, copies)
    assert (w == 7.0).all() and np.array_equal(b, [1.0, -1.0])
    assert copies[0] is kept  # in place: the same arrays


def test_copies_that_do_not_pair_with_the_parameters_are_refused():
    run = numpy_run({"fc.weight": np.ones((2, 2)), "out.weight": np.ones((1, 2))})
    ops = NumpyOps()
    copies = ops.clone(run.params)
    with pytest.raises(ValueError, match="copy_from_ got 1 copies for 2 parameters"):
        ops.copy_from_(run.params, copies[:1])
    with pytest.raises(ValueError, match="copy_into_ got 2 copies for 1 parameters"):
        ops.copy_into_(copies, run.params[:1])
