"""The Keras callback under tf.distribute.MirroredStrategy (two logical CPU devices), unchanged.

Model and optimizer are built and compiled in ``strategy.scope()``; the callback is passed
to ``fit`` as on one device. The strategy runs the train step once per replica, each on
half of the batch, divides each replica's loss by the number of replicas and sums their
gradients: a penalty or gradient term must count once, not once per replica. The runs
happen in a fresh Python (``_keras_distributed.py``), where the CPU can still be split in
two before TensorFlow sets up its devices.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

if keras.backend.backend() != "tensorflow" or importlib.util.find_spec("tensorflow") is None:
    pytest.skip("tf.distribute needs Keras' TensorFlow backend", allow_module_level=True)

pytestmark = pytest.mark.slow

HELPERS = Path(__file__).resolve().parents[1] / "helpers"


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    """Runs every scenario once; returns (report, folder with the weights)."""
    out = tmp_path_factory.mktemp("mirrored")
    # From the output folder, not the repository root, whose source folders would shadow
    # the installed regplug; the script's own folder (tests/helpers/) is first on its sys.path.
    done = subprocess.run([sys.executable, str(HELPERS / "_keras_distributed.py"), str(out)],
                          cwd=out, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, KERAS_BACKEND="tensorflow",
                                   TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES=""))
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    report = json.loads((out / "report.json").read_text())
    assert report["replicas"] == 2 and report["backend"] == "tensorflow"
    return report, out


def _weights(folder: Path, name: str) -> dict[str, np.ndarray]:
    with np.load(folder / f"{name}.npz") as saved:
        return dict(saved)


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray], *, rtol: float,
                 atol: float) -> None:
    assert len(a) == len(b)
    for (name, x), y in zip(a.items(), b.values()):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=name)


def test_l2_max_norm_and_decoupled_decay_give_keras_own_weights_under_the_strategy(mirrored):
    report, folder = mirrored
    # kernel_regularizer=L2 + kernel_constraint=MaxNorm + AdamW on one model, the plugins
    # L2, MaxNorm, DecoupledWeightDecay + Adam on the other (see keras/test_equivalence.py
    # for the same on one device). A penalty counted per replica would shrink more.
    _assert_same(_weights(folder, "keras_theirs"), _weights(folder, "keras_ours"),
                 rtol=1e-5, atol=1e-6)
    seen = report["keras_own_vs_plugins"]
    # The logged loss includes the penalty, once, as with Keras' own regularizer.
    np.testing.assert_allclose(seen["ours"]["loss"], seen["theirs"]["loss"], rtol=1e-5)


def test_two_replicas_give_the_weights_and_logs_of_one_device(mirrored):
    report, folder = mirrored
    # Scheduled L2, a gradient term added through run.ops, decoupled decay and max-norm
    # on a model without batch norm (which normalizes each replica's half batch alone).
    _assert_same(_weights(folder, "one_device"), _weights(folder, "mirrored"),
                 rtol=1e-5, atol=1e-6)
    runs = report["one_device_vs_mirrored"]
    assert runs["mirrored"]["l2_penalty"][0] < runs["mirrored"]["l2_penalty"][1]  # warm-up
    for key in ("loss", "l2_penalty"):
        np.testing.assert_allclose(runs["mirrored"][key], runs["one_device"][key], rtol=1e-5)


def test_a_stop_vote_ends_fit_under_the_strategy(mirrored):
    report, _ = mirrored
    assert report["stop_vote"] == {"epochs_run": 2,
                                   "requests": [["asked to stop at epoch 1", "stop_at", 1]]}


def test_dropout_rates_set_by_a_plugin_act_on_every_replica(mirrored):
    report, _ = mirrored
    zeros = report["dropout_rates"]["zeros"]
    # probe_0 sees drop_0's rate; probe_1 both: 1 - (1 - r0)(1 - r1).
    np.testing.assert_allclose(zeros["probe_0"], [0.0, 0.3, 0.6], atol=0.04)
    np.testing.assert_allclose(zeros["probe_1"], [0.5, 0.3, 1 - 0.4 * 0.8], atol=0.04)


def test_early_stopping_restores_the_best_epoch_exactly_under_the_strategy(mirrored):
    report, folder = mirrored
    # val_score 1.0, 0.5, 0.8, 0.9: best at epoch 1, patience 2 stops after epoch 3.
    assert report["early_stopping"] == {"epochs_run": 4, "best_epoch": 1, "restored_epoch": 1}
    final, best = _weights(folder, "early_stopping_final"), _weights(folder, "epoch_1")
    assert any("moving_mean" in name for name in final)
    assert not all(np.array_equal(best[k], v) for k, v in _weights(folder, "epoch_3").items())
    for name, value in best.items():
        np.testing.assert_array_equal(final[name], value, err_msg=name)
