"""The regplug command: listing plugins, the deprecated demo alias, errors as one line."""

from __future__ import annotations

import sys
from typing import ClassVar

import pytest
from _compare_cli import table_rows

from regplug import cli


def test_plugins_wide_lists_origin_and_hooks(capsys):
    assert cli.main(["plugins", "--wide"]) == 0
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
                  "tunable": {"l2": "1e-06 .. 0.1, log"}, "status": "ok", "error": None}


def _acme_plugins(monkeypatch) -> None:
    """Two third-party plugins: ``acme_smooth`` declares a usable range, ``acme_bad`` one for
    an argument its constructor does not have."""
    import types

    from regplug import cli as cli_module
    from regplug import registry
    from regplug.hookspecs import hookimpl
    from regplug.plugin import Plugin
    from regplug.ranges import Choice, FloatRange, SearchRange

    module = types.ModuleType("acme_tunable")

    class Smooth(Plugin):
        tunable: ClassVar[dict[str, SearchRange]] = {"eps": FloatRange(0.0, 0.3),
                                                     "mode": Choice(["mean", "sum"])}

        def __init__(self, eps: float = 0.1, mode: str = "mean") -> None:
            self.eps, self.mode = eps, mode

        @hookimpl
        def on_train_begin(self, run):
            pass

    class Bad(Smooth):
        tunable: ClassVar[dict[str, SearchRange]] = {"strength": FloatRange(0.0, 1.0)}

    module.Smooth, module.Bad = Smooth, Bad
    monkeypatch.setitem(sys.modules, "acme_tunable", module)
    found = dict(registry.available_plugins())
    for name, target in (("acme_smooth", "acme_tunable:Smooth"), ("acme_bad", "acme_tunable:Bad")):
        found[name] = registry.PluginInfo(name, target, "acme 1.0", False)
    monkeypatch.setattr(cli_module, "available_plugins", lambda: found)


def test_plugins_wide_lists_each_plugins_tunable_ranges_under_its_row(capsys, monkeypatch):
    _acme_plugins(monkeypatch)
    assert cli.main(["plugins", "--wide"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: i for i, line in enumerate(lines) if not line.startswith(" ")}
    assert lines[rows["l2"] + 1] == "    tune: l2: 1e-06 .. 0.1, log"
    assert lines[rows["elastic_net"] + 1] == ("    tune: l1: 1e-06 .. 0.01, log; "
                                              "l2: 1e-06 .. 0.1, log")
    assert lines[rows["acme_smooth"] + 1] == "    tune: eps: 0.0 .. 0.3; mode: one of 'mean', 'sum'"
    assert lines[rows["acme_smooth"]].endswith("  ok")
    # a plugin that declares nothing has no tune line: the next line is the next plugin's row
    assert not lines[rows["non_finite_guard"] + 1].startswith(" ")
    # an unusable declaration makes the plugin broken, named, and the others are listed
    bad = lines[rows["acme_bad"]]
    assert "BROKEN: SpaceError: plugin 'acme_bad'" in bad and "'strength'" in bad
    assert rows["acme_bad"] + 1 == len(lines) or not lines[rows["acme_bad"] + 1].startswith(" ")


def test_plugins_json_holds_the_tunable_ranges_and_the_space_error(capsys, monkeypatch):
    import json

    from regplug.ranges import describe_space, tunable_arguments

    _acme_plugins(monkeypatch)
    assert cli.main(["plugins", "--json"]) == 0
    records = {r["name"]: r for r in json.loads(capsys.readouterr().out)["plugins"]}
    assert records["acme_smooth"]["tunable"] == {"eps": "0.0 .. 0.3",
                                                 "mode": "one of 'mean', 'sum'"}
    assert records["acme_smooth"]["status"] == "ok"
    assert records["acme_bad"]["tunable"] == {} and records["acme_bad"]["status"] == "broken"
    assert records["acme_bad"]["error"].startswith("SpaceError: plugin 'acme_bad'")
    # the built-ins' text is their declared ranges', as regplug.ranges describes them
    from regplug.registry import available_plugins

    for name, info in available_plugins().items():
        if info.builtin:
            declared = tunable_arguments(info.load(), name=name)
            text = "; ".join(f"{k}: {v}" for k, v in records[name]["tunable"].items())
            assert text == describe_space(declared), name


def test_plugins_mentions_disabled_discovery(capsys, monkeypatch):
    monkeypatch.setenv("REGPLUG_DISABLE_PLUGIN_AUTOLOAD", "1")
    cli.main(["plugins"])
    assert "discovery is off" in capsys.readouterr().out
    cli.main(["plugins", "--wide"])
    assert "discovery is off" in capsys.readouterr().out


LONG_DIST = "acme-regularizers-with-a-rather-long-distribution-name-for-testing 10.20.30"
LONG_DOC = ("Shrink every weight of the model towards the running mean of its own past values, "
            "with a strength that follows the schedule the config names (a long summary line).")


def _long_third_party_plugins(monkeypatch) -> None:
    """Beside the built-ins: a plugin with a long name whose docstring's first sentence is far
    longer than 80 columns; a factory function; one that fails to import; and, from a
    distribution with a long name, one without a docstring of its own (its base class has
    one)."""
    import types

    from regplug import cli as cli_module
    from regplug import registry
    from regplug.hookspecs import hookimpl
    from regplug.plugin import Plugin

    module = types.ModuleType("acme_long")

    class Verbose(Plugin):
        @hookimpl
        def on_train_begin(self, run):
            pass

    Verbose.__doc__ = LONG_DOC + "\n\n    :param x: not part of the summary.\n"

    class Quiet(Plugin):
        @hookimpl
        def on_train_begin(self, run):
            pass

    def make_verbose() -> Verbose:
        """Build a :class:`~acme_long.Verbose` with ``x=1``. Second sentence, not shown."""
        return Verbose()

    module.Verbose, module.Quiet, module.make_verbose = Verbose, Quiet, make_verbose
    monkeypatch.setitem(sys.modules, "acme_long", module)
    found = dict(registry.available_plugins())
    for name, target, dist in (
            ("acme_shrink_towards_the_running_mean", "acme_long:Verbose", "acme-reg 1.2.0"),
            ("acme_factory", "acme_long:make_verbose", "acme-reg 1.2.0"),
            ("acme_missing", "acme_not_installed_module:Thing", "acme-reg 1.2.0"),
            ("acme_quiet", "acme_long:Quiet", LONG_DIST)):
        found[name] = registry.PluginInfo(name, target, dist, False)
    monkeypatch.setattr(cli_module, "available_plugins", lambda: found)


def test_plugins_prints_one_line_per_plugin_in_80_columns(capsys, monkeypatch):
    _long_third_party_plugins(monkeypatch)
    listed = cli.available_plugins()  # the built-ins and the four above
    builtins = sorted(n for n, info in listed.items() if info.builtin)
    assert cli.main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    assert lines[0].split() == ["name", "description"]
    assert lines[-1].startswith("(regplug plugins --wide")
    rows = lines[1:-1]
    # one line per plugin, built-ins first, each starting with its name
    assert [row.split()[0] for row in rows] == builtins + sorted(set(listed) - set(builtins))
    by_name = {row.split()[0]: row[row.index("  "):].strip() for row in rows}
    # a built-in's description is its docstring's first sentence, shortened to fit
    assert by_name["l2"] == "Add l2 · Σθ² over the selected parameters to the loss…"
    assert by_name["early_stopping"] == "Stop training when monitor stops improving…"
    assert not any("``" in text or ":class:" in text for text in by_name.values())
    # third-party: the distribution first, then as much of the sentence as fits
    long_row = next(r for r in rows if r.startswith("acme_shrink_towards_the_running_mean"))
    assert long_row.startswith("acme_shrink_towards_the_running_mean  (acme-reg 1.2.0) Shrink")
    assert long_row.endswith("…") and 70 < len(long_row) <= 80
    assert by_name["acme_factory"] == "(acme-reg 1.2.0) Build a Verbose with x=1."
    assert by_name["acme_missing"].startswith(
        "(acme-reg 1.2.0) BROKEN: ModuleNotFoundError: No module")
    # a class without a docstring of its own does not show Plugin's
    assert by_name["acme_quiet"].startswith("(acme-regularizers-with") and \
        by_name["acme_quiet"].endswith("…")
    # --wide is the full listing: every plugin's target, hooks and status, lines past 80
    assert cli.main(["plugins", "--wide"]) == 0
    wide = capsys.readouterr().out.splitlines()
    assert wide[0].split() == ["name", "from", "target", "hooks", "status"]
    row = next(line for line in wide if line.startswith("acme_missing"))
    assert "acme_not_installed_module:Thing" in row and "BROKEN: ModuleNotFoundError" in row
    assert next(line for line in wide if line.startswith("l2 ")).endswith("  ok")
    assert max(len(line) for line in wide) > 80


def test_plugin_summary_is_the_first_sentence_in_plain_text():
    from regplug.cli import plugin_summary
    from regplug.plugins import DecoupledWeightDecay

    assert plugin_summary(DecoupledWeightDecay) == (
        "Multiply the selected weights by 1 − lr·weight_decay at every optimizer update.")

    class Documented:
        """Use :func:`math.exp` and :class:`~regplug.plugins.L2`, ``x``; e.g. `y`.

        More text."""

    class Undocumented(Documented):
        pass

    assert plugin_summary(Documented) == "Use math.exp and L2, x; e.g. y."
    assert plugin_summary(Undocumented) == ""


@pytest.mark.parametrize("room", range(2, 90))
def test_a_shortened_description_fits_its_room_and_says_it_was_cut(room):
    from regplug.cli import _shorten

    for text in (LONG_DOC, "x" * 100, "Add l1 · Σ|θ| + l2 · Σθ² (Keras regularizers.L1L2; both "
                 "default to 0).", "short"):
        short = _shorten(text, room)
        assert len(short) <= room
        assert short == text or (short.endswith("…") and text.startswith(short[:-1]))


def test_the_parser_names_the_four_loops(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ("four training loops: a plain PyTorch loop, Keras fit, Lightning and the Hugging "
            "Face Trainer") in text


def test_demo_is_a_deprecated_alias_of_compare_on_torch(capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("torch")
    from regplug.experiment import DEFAULT_STRATEGIES

    assert cli.main(["demo", "--epochs", "1", "--seed", "3"]) == 0
    captured = capsys.readouterr()
    assert "'demo' is deprecated" in captured.err
    assert "compare --preset notebook --framework torch" in captured.err
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
