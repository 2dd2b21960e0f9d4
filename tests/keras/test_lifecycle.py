"""The callback across a fit's life: logs and stop votes, repeated fits, saving, crashes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import zipfile

import keras
import numpy as np
import pytest
from _keras_models import BACKEND, SetRates, StopAt, assert_same_weights, data, fit, mlp, sgd
from keras import ops

import regplug
from regplug.adapters.keras import Regularize, detach
from regplug.plugins import L2, MaxNorm

X, Y = data(64)


def test_on_epoch_end_gets_keras_logs_with_validation_and_penalty_and_may_add_keys():
    watcher = StopAt(epoch=99)
    model = mlp()
    model.compile(optimizer=sgd(), loss="mse", metrics=["mae"])
    history = fit(model, X, Y, validation_data=(X[:16], Y[:16]),
                  callbacks=[Regularize([L2(0.01), watcher])])
    assert len(watcher.seen) == 2
    for logs in watcher.seen:
        assert {"loss", "mae", "l2_penalty", "val_loss", "val_mae", "val_l2_penalty"} <= set(logs)
        assert all(type(v) is float for v in logs.values())
    assert history.history["seen_by_plugin"] == [0.0, 1.0]  # plugins' keys reach History


def test_penalty_is_logged_under_its_own_name_with_the_value_of_the_weights(capsys):
    model = mlp(dropout=0.0)
    model.compile(optimizer=sgd(0.0), loss="mse")  # lr 0: the weights stay as they are
    kernels = [ops.convert_to_numpy(v) for v in model.trainable_variables if v.name == "kernel"]
    history = model.fit(X, Y, epochs=1, batch_size=16, shuffle=False, verbose=2,
                        callbacks=[Regularize([L2(0.01)])])
    expected = 0.01 * sum(float(np.square(k.astype(np.float64)).sum()) for k in kernels)
    assert history.history["l2_penalty"][0] == pytest.approx(expected, rel=1e-5)
    assert "l2_penalty: " in capsys.readouterr().out  # in the progress line


def test_a_stop_vote_stops_fit_and_fit_can_run_again_without_double_penalties():
    baseline = mlp(reg=keras.regularizers.L2(0.01))
    baseline.compile(optimizer=sgd(), loss="mse")
    ours = mlp()
    ours.compile(optimizer=sgd(), loss="mse")
    callback = Regularize([L2(0.01), StopAt(epoch=1)])
    for _ in range(2):
        fit(baseline, X, Y, epochs=2)
        history = fit(ours, X, Y, epochs=10, callbacks=[callback])
        assert len(history.history["loss"]) == 2  # stopped after epoch 1
        assert ours.stop_training
    assert [str(r) for r in callback.stop_requests] == ["stop_at: asked to stop at epoch 1"]
    assert_same_weights(baseline, ours)


def test_model_is_plain_keras_again_after_fit():
    model = mlp()
    model.compile(optimizer=sgd(), loss="mse")
    names_before = list(model.metrics_names)
    fit(model, X, Y, epochs=1, callbacks=[Regularize([L2(0.01), MaxNorm(1.0), SetRates(
        {"dropout": [0.3]})])])
    assert "compute_loss" not in vars(model) and "apply" not in vars(model.optimizer)
    assert "call" not in vars(model.layers[2]) and model.layers[2].rate == 0.2
    assert not detach(model)  # nothing of regplug left to remove
    assert list(model.metrics_names) == names_before and model.losses == []
    assert model.train_function is None  # the next fit/evaluate retraces, unpatched
    y_pred = model(X, training=False)
    plain = model.compute_loss(X, Y, y_pred)  # no penalty in it any more
    np.testing.assert_allclose(ops.convert_to_numpy(plain),
                               np.mean((ops.convert_to_numpy(y_pred) - Y) ** 2), rtol=1e-5)
    history = fit(model, X, Y, epochs=1)
    assert sorted(history.history) == ["loss"]


_LOAD_WITHOUT_REGPLUG = textwrap.dedent("""
    import sys

    class NoRegplug:
        def find_spec(self, name, path=None, target=None):
            if name == "regplug" or name.startswith("regplug."):
                raise ModuleNotFoundError("No module named 'regplug' (blocked by the test)")
            return None

    sys.meta_path.insert(0, NoRegplug())
    try:
        import regplug
    except ImportError:
        pass
    else:
        raise SystemExit("regplug is still importable")
    import keras, numpy as np
    x = np.load(sys.argv[1])
    for path, out in zip(sys.argv[2::2], sys.argv[3::2]):
        model = keras.models.load_model(path)
        np.save(out, keras.ops.convert_to_numpy(model(x, training=False)))
    assert not any(m.startswith("regplug") for m in sys.modules)
""")


def test_saved_model_loads_in_a_python_with_and_without_regplug(tmp_path):
    model = mlp()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    mid, end = tmp_path / "mid.keras", tmp_path / "end.keras"
    plugins = [L2(0.01), MaxNorm(1.0), SetRates({"dropout": [0.3, 0.6]})]
    fit(model, X, Y, callbacks=[Regularize(plugins), keras.callbacks.ModelCheckpoint(mid)])
    model.save(end)
    expected = ops.convert_to_numpy(model(X, training=False))

    for path in (mid, end):
        with zipfile.ZipFile(path) as archive:
            config = archive.read("config.json").decode()
        assert "regplug" not in config
        assert json.loads(config)["config"]["layers"][3]["config"]["rate"] == 0.2
    reloaded = keras.models.load_model(end)  # here, with regplug imported
    np.testing.assert_allclose(ops.convert_to_numpy(reloaded(X, training=False)), expected,
                               rtol=1e-6)

    np.save(tmp_path / "x.npy", X)
    script = tmp_path / "load.py"
    script.write_text(_LOAD_WITHOUT_REGPLUG)
    outs = [tmp_path / "mid.npy", tmp_path / "end.npy"]
    env = dict(os.environ, KERAS_BACKEND=BACKEND)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "x.npy"),
                           str(mid), str(outs[0]), str(end), str(outs[1])],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_allclose(np.load(outs[1]), expected, rtol=1e-6)
    assert np.load(outs[0]).shape == expected.shape


class Boom(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise RuntimeError("boom")


def test_fit_interrupted_by_an_exception_is_cleaned_up_by_the_next_fit(caplog):
    baseline = mlp(reg=keras.regularizers.L2(0.01))
    baseline.compile(optimizer=sgd(), loss="mse")
    ours = mlp()
    ours.compile(optimizer=sgd(), loss="mse")
    fit(baseline, X, Y, epochs=2)
    with pytest.raises(RuntimeError, match="boom"):  # Keras then skips on_train_end
        fit(ours, X, Y, epochs=1, callbacks=[Regularize([L2(0.01)]), Boom()])
    assert "compute_loss" in vars(ours)
    with caplog.at_level(logging.WARNING, logger="regplug"):
        fit(ours, X, Y, epochs=1, callbacks=[Regularize([L2(0.01)])])
    assert "did not finish" in caplog.text
    assert_same_weights(baseline, ours)  # one penalty per step in both epochs


def test_detach_removes_the_patches_left_by_an_interrupted_fit():
    model = mlp()
    model.compile(optimizer=sgd(), loss="mse")
    with pytest.raises(RuntimeError, match="boom"):
        fit(model, X, Y, epochs=1, callbacks=[Regularize([L2(0.01), MaxNorm(1.0)]), Boom()])
    assert detach(model) is True
    assert "compute_loss" not in vars(model) and "apply" not in vars(model.optimizer)
    assert detach(model) is False


def test_two_regularize_callbacks_in_one_fit_are_refused():
    model = mlp()
    model.compile(optimizer=sgd(), loss="mse")
    with pytest.raises(regplug.UsageError, match="two Regularize callbacks"):
        fit(model, X, Y, epochs=1, callbacks=[Regularize([L2(0.01)]), Regularize([L2(0.1)])])
