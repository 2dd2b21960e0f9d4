"""EMA and SWA under PyTorch DDP (two gloo processes): every rank holds the same averages,
those of one process training on the full batches."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch was built without distributed gloo support", allow_module_level=True)

from _averaging_ddp import launch, reference  # noqa: E402 (after the skip)


@pytest.mark.slow
def test_every_rank_holds_the_same_average_as_one_process(tmp_path):
    outcome = launch(tmp_path)
    assert outcome.returncodes == [0, 0], outcome.describe()
    rank0, rank1 = outcome.results
    expected = reference()
    for plugin in ("EMA", "SWA"):
        assert set(rank0[plugin]) == set(expected[plugin])  # the module's names, no "module."
        for name, value in expected[plugin].items():
            np.testing.assert_array_equal(rank0[plugin][name], rank1[plugin][name])
            np.testing.assert_allclose(rank0[plugin][name], value, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{plugin} {name}")
