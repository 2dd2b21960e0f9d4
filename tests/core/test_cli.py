"""The regplug command: listing plugins, the deprecated demo alias, errors as one line."""

from __future__ import annotations

import pytest
from _compare_cli import table_rows

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


def test_demo_is_a_deprecated_alias_of_compare_on_torch(capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("torch")
    from regplug.compare import DEFAULT_STRATEGIES

    assert cli.main(["demo", "--epochs", "1", "--seed", "3"]) == 0
    captured = capsys.readouterr()
    assert "'demo' is deprecated" in captured.err and "compare --framework torch" in captured.err
    assert [row[1] for row in table_rows(captured.out)] == list(DEFAULT_STRATEGIES)
    assert all(row[0] == "torch" for row in table_rows(captured.out))
    assert "seed 3" in captured.out


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
