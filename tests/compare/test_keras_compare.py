"""`regplug compare --framework keras|both`: the same table from model.fit with Regularize."""

from __future__ import annotations

import json
import textwrap

import pytest

from regplug import cli

pytest.importorskip("keras")
pytest.importorskip("sklearn")

from _compare_cli import TABLE_COLUMNS, assert_one_line_error, run_cli, table_rows


def test_both_frameworks_give_the_same_table_shape(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    out_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, "--preset", "notebook", "--framework", "both", "--strategies",
                             "none,l2,proximal_l1", "--epochs", "2", "--out", str(out_dir))
    assert code == 0, err
    rows = table_rows(out)
    assert [r[:2] for r in rows] == [[fw, s] for fw in ("torch", "keras")
                                     for s in ("none", "l2", "proximal_l1")]
    assert {len(r) for r in rows} == {len(TABLE_COLUMNS)}
    payload = json.loads((out_dir / "results.json").read_text())
    torch_rows = [r for r in payload["results"] if r["framework"] == "torch"]
    keras_rows = [r for r in payload["results"] if r["framework"] == "keras"]
    assert [sorted(r) for r in torch_rows] == [sorted(r) for r in keras_rows]
    for row in keras_rows:
        assert set(row["history"]) >= {"loss", "val_loss", "accuracy", "val_accuracy",
                                       "cross_entropy", "val_cross_entropy"}
    by_name = {r["strategy"]: r for r in keras_rows}
    assert by_name["l2"]["penalty"] > 0 == by_name["none"]["penalty"]
    assert by_name["proximal_l1"]["zero_fraction"] > 0 == by_name["none"]["zero_fraction"]
    assert {"loss_curves_torch.png", "loss_curves_keras.png",
            "weight_histograms.png"} <= set(payload["figures"])
    assert "keras" in payload["settings"]["frameworks"]


def test_keras_runs_the_model_options_early_stopping_and_dropout_schedule(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(textwrap.dedent("""
        [[strategies]]
        name = "impatient"
        [[strategies.plugins]]
        name = "early_stopping"
        patience = 0
        min_delta = 100.0
        """))
    code, out, err = run_cli(capsys, "--preset", "notebook",
                             "--framework", "keras", "--config", str(path),
                             "--strategies", "batch_norm_dropout,dropout_schedule,impatient",
                             "--epochs", "3", "--quiet")
    assert code == 0, err
    epochs = {r[1]: int(r[5]) for r in table_rows(out)}
    assert epochs == {"batch_norm_dropout": 3, "dropout_schedule": 3, "impatient": 2}


def test_keras_model_factory_gets_the_spec_and_is_checked(tmp_path, capsys, monkeypatch):
    (tmp_path / "compare_kmodels.py").write_text(textwrap.dedent("""
        import keras

        def factory(spec):
            assert spec.framework == "keras"
            layers = [keras.Input((spec.n_features,)), keras.layers.Dense(16, activation="relu")]
            if spec.dropout is not None:
                layers.append(keras.layers.Dropout(spec.dropout))
            return keras.Sequential([*layers, keras.layers.Dense(spec.n_classes)])

        def no_batch_norm(spec):
            return factory(spec)
        """))
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "--preset", "notebook",
                             "--framework", "keras", "--model", "compare_kmodels:factory",
                             "--strategies", "none,dropout", "--epochs", "1")
    assert code == 0, err
    assert [r[1] for r in table_rows(out)] == ["none", "dropout"]
    code, _, err = run_cli(capsys, "--preset", "notebook", "--framework", "keras", "--model",
                           "compare_kmodels:no_batch_norm", "--strategies", "batch_norm",
                           "--epochs", "1")
    assert_one_line_error(code, err, "strategy 'batch_norm'", "no BatchNormalization layer")


def test_keras_results_repeat_with_the_same_seed(capsys):
    def run() -> list[list[str]]:
        assert cli.main(["compare", "--preset", "notebook",
                         "--framework", "keras", "--strategies", "l2,dropout",
                         "--epochs", "2", "--seed", "4"]) == 0
        return table_rows(capsys.readouterr().out)

    assert run() == run()


def test_torch_and_keras_runners_train_the_same_network_the_same_way():
    # Same initial weights, same batches in the same order: the runners' models, optimizers
    # and losses must give the same losses and weights, so rows differ only by randomness.
    torch = pytest.importorskip("torch")
    import keras
    import numpy as np

    from regplug.adapters.keras import compare as keras_compare
    from regplug.adapters.torch import compare as torch_compare
    from regplug.experiment import ModelSpec, TrainSettings
    from regplug.experiment.loaders import load_digits

    settings = TrainSettings()
    keras.utils.set_random_seed(1)
    kmodel = keras_compare.build_mlp((50, 250), ModelSpec("keras", 64, 10))
    keras_compare.compile_model(kmodel, settings)
    tmodel = torch_compare.build_mlp((50, 250), ModelSpec("torch", 64, 10))
    linears = [m for m in tmodel if isinstance(m, torch.nn.Linear)]
    for linear, dense in zip(linears, kmodel.layers, strict=True):
        kernel, bias = dense.get_weights()
        linear.weight.data = torch.tensor(kernel.T.copy())
        linear.bias.data = torch.tensor(bias)
    optimizer = torch_compare.make_optimizer(tmodel, settings)

    data = load_digits()
    x, y = data.x_train[:1024], data.y_train[:1024]
    keras_losses = kmodel.fit(x, y, batch_size=settings.batch_size, epochs=4, shuffle=False,
                              verbose=0).history["loss"]
    torch_losses = []
    for _ in range(4):
        total = 0.0
        for i in range(0, len(x), settings.batch_size):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(
                tmodel(torch.from_numpy(x[i:i + settings.batch_size])),
                torch.from_numpy(y[i:i + settings.batch_size]))
            loss.backward()
            optimizer.step()
            total += loss.item() * len(x[i:i + settings.batch_size])
        torch_losses.append(total / len(x))
    assert keras_losses[-1] < 0.5 * keras_losses[0]  # it trained
    np.testing.assert_allclose(torch_losses, keras_losses, rtol=1e-5)
    np.testing.assert_allclose(linears[-1].weight.detach().numpy().T,
                               kmodel.layers[-1].get_weights()[0], atol=1e-5)
