"""Sizes no one means are named in one line before anything runs (issue 16, items 15 and 17):
a billion seeds, an ``--out`` that can never be a folder, a strategy name of 100,000
characters (its message is cut, not echoed whole)."""

from __future__ import annotations

import pytest
from _compare_cli import assert_one_line_error, run_cli

from regplug.experiment.strategies import StrategyError, strategy_from_table


@pytest.mark.parametrize("seeds", ["1000000000", "1001"])
def test_a_seed_count_beyond_a_thousand_is_refused(capsys, tmp_path, monkeypatch, seeds):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:  # argparse's own exit, code 2
        run_cli(capsys, "--seeds", seeds)
    out, err = capsys.readouterr()
    assert_one_line_error(exited.value.code, err, "argument --seeds: must be from 1 to 1,000",
                          seeds)
    assert out == "" and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("out_arg, fragment", [
    ("/", "the file-system root cannot be an output folder"),
    ("y" * 300, "a name of 300 characters"),
])
def test_an_out_folder_that_can_never_exist_is_refused_before_training(
        capsys, tmp_path, monkeypatch, out_arg, fragment):
    monkeypatch.chdir(tmp_path)
    code, _out, err = run_cli(capsys, "--out", out_arg, "--epochs", "1")
    assert_one_line_error(code, err, "--out", fragment)
    assert list(tmp_path.iterdir()) == []


def test_a_huge_unknown_strategy_name_is_cut_in_the_message(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _out, err = run_cli(capsys, "--strategies", "x" * 100_000)
    assert_one_line_error(code, err, "unknown strategy 'xxxx", "(100000 characters)")
    assert len(err) < 600


def test_a_strategy_name_longer_than_64_characters_is_refused_in_a_config():
    strategy_from_table({"name": "s" * 64, "plugins": []}, where="t")
    with pytest.raises(StrategyError, match=r"at most 64 letters.*\(65 characters\)"):
        strategy_from_table({"name": "s" * 65, "plugins": []}, where="t")
