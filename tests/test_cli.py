"""The regplug command: listing plugins, the example run, errors as one line."""

from __future__ import annotations

import pytest

from regplug import cli


def test_plugins_lists_origin_and_hooks(capsys):
    assert cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("proximal_l1"))
    assert "regplug (built-in)" in line and "on_step" in line and line.endswith("ok")


def test_plugins_json_gives_one_record_per_plugin(capsys, monkeypatch):
    import json

    from regplug.registry import available_plugins

    monkeypatch.setenv("REGPLUG_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert cli.main(["plugins", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["third_party_discovery"] is False
    assert [r["name"] for r in listing["plugins"]] == sorted(available_plugins())
    l2 = next(r for r in listing["plugins"] if r["name"] == "l2")
    assert l2 == {"name": "l2", "distribution": "regplug (built-in)", "builtin": True,
                  "target": "regplug.plugins.penalties:L2",
                  "hooks": ["on_train_begin", "on_loss", "on_train_end"],
                  "status": "ok", "error": None}


def test_plugins_mentions_disabled_discovery(capsys, monkeypatch):
    monkeypatch.setenv("REGPLUG_DISABLE_PLUGIN_AUTOLOAD", "1")
    cli.main(["plugins"])
    assert "discovery is off" in capsys.readouterr().out


def test_demo_trains_every_strategy_and_reports_the_table(capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("torch")
    from regplug.adapters.torch_example import STRATEGIES, run_demo

    results = run_demo(epochs=2, seed=0)
    out = capsys.readouterr().out
    assert set(results) == set(STRATEGIES)
    for name, row in results.items():
        assert 0.5 < row["acc_train"] <= 1.0, name
        assert row["pct_diff"] == pytest.approx(1 - row["acc_test"] / row["acc_train"])
        assert name in out
    assert results["l2"]["penalty"] > 0 and results["none"]["penalty"] == 0
    assert results["proximal_l1"]["zero_weights"] > results["none"]["zero_weights"]


def test_demo_is_reproducible_with_a_seed():
    pytest.importorskip("sklearn")
    pytest.importorskip("torch")
    from regplug.adapters.torch_example import train_one
    from regplug.data import load_digits
    from regplug.plugins import L2

    data = load_digits(seed=3)
    first = train_one(data, [L2(1e-3)], epochs=1, seed=3)
    second = train_one(data, [L2(1e-3)], epochs=1, seed=3)
    assert first == second


def test_bad_arguments_exit_non_zero_without_traceback(capsys):
    with pytest.raises(SystemExit) as err:
        cli.main(["demo", "--epochs", "many"])
    assert err.value.code == 2
    assert "invalid int value" in capsys.readouterr().err


def test_epochs_must_be_positive_and_version_is_printed(capsys):
    with pytest.raises(SystemExit) as err:
        cli.main(["demo", "--epochs", "0"])
    assert err.value.code == 2 and "must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        cli.main(["--version"])
    assert err.value.code == 0 and capsys.readouterr().out.startswith("regplug 0.")
