"""``regplug tune``'s command line with the fake runner (tests/tune/conftest.py): which
strategies ``default`` and ``all`` stand for, the grid's options and limits, the printed
header, the summary's epoch counts and a ``--storage`` file inside ``--out``."""

from __future__ import annotations

import json
import types

import pytest

from regplug import cli
from regplug.experiment.frameworks import TrainSettings
from regplug.experiment.strategies import BUILTIN_STRATEGIES, DEFAULT_STRATEGIES, Strategy
from regplug.ranges import SpaceError
from regplug.tune.cli import (
    MAX_GRID_SIZE,
    Summary,
    _resolve_strategies,
    check_grid,
    check_storage_outside_out,
)
from regplug.tune.search import Objective, SearchError, TrialRecord
from regplug.tune.storage import storage_file
from regplug.tune.strategy_space import strategy_space


def tune(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["tune", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def untunable(names) -> list[str]:
    return [n for n in names if not strategy_space(BUILTIN_STRATEGIES[n]).parameters]


# -- default and all ---------------------------------------------------------------------------

@pytest.mark.parametrize("group, members", [("default", list(DEFAULT_STRATEGIES)),
                                            ("all", list(BUILTIN_STRATEGIES))])
def test_default_and_all_stand_for_their_members_that_have_something_to_tune(group, members):
    left_out = untunable(members)
    assert left_out, "the groups hold strategies with nothing to tune (none, batch_norm)"
    spaces, notes = _resolve_strategies(group, None)
    assert [sp.strategy.name for sp in spaces] == [n for n in members if n not in left_out]
    assert f"left out, nothing to tune: {', '.join(left_out)}" in notes


def test_a_strategy_named_beside_a_group_must_have_something_to_tune():
    assert [sp.strategy.name for sp in _resolve_strategies("l2,default", None)[0]][:2] == \
        ["l2", "l1"]
    with pytest.raises(SpaceError, match="strategy 'batch_norm' has nothing to tune"):
        _resolve_strategies("default,batch_norm", None)


def test_an_empty_selection_suggests_strategies_that_can_be_tuned():
    with pytest.raises(SearchError, match="names no strategy") as refused:
        _resolve_strategies("", None)
    suggested = str(refused.value).rsplit("--strategies ", 1)[1]
    spaces, notes = _resolve_strategies(suggested, None)  # the suggestion is accepted as is
    assert len(spaces) == 2 and notes == []


def test_tune_all_runs_every_tunable_builtin_and_says_which_it_left_out(fake_runner, capsys):
    code, out, err = tune(capsys, "--strategies", "all", "--trials", "1", "--epochs", "1",
                          "--pruner", "none")
    assert code == 0, err
    ran = {line.split()[0] for line in out.splitlines() if " #0 " in line}
    assert ran == set(BUILTIN_STRATEGIES) - set(untunable(BUILTIN_STRATEGIES))
    assert "note: left out, nothing to tune: none, batch_norm" in out


# -- the grid ----------------------------------------------------------------------------------

def test_the_grid_defaults_to_five_points_per_range(fake_runner, capsys, tmp_path):
    code, out, err = tune(capsys, "--strategies", "l2", "--sampler", "grid", "--trials", "9",
                          "--epochs", "1", "--out", str(tmp_path / "o"))
    assert code == 0, err
    assert "grid: l2 has 5 setting(s) (5 points per range)" in out
    assert len([line for line in out.splitlines() if line.startswith("l2 ")]) == 5
    assert json.loads((tmp_path / "o" / "results.json").read_text())["settings"][
        "grid_points"] == 5


def test_a_grid_of_more_settings_than_the_limit_is_refused_naming_strategy_and_size():
    both = strategy_space(Strategy("l2_drop", plugins=({"name": "l2", "l2": 1e-4},),
                                   dropout=0.2))
    points = 316
    assert points * points <= MAX_GRID_SIZE < (points + 1) ** 2
    check_grid([both], points)  # 99,856 settings
    with pytest.raises(SearchError, match=r"strategy 'l2_drop' would have 100,489 settings "
                                          r"\(317 points per range of l2.l2, model.dropout\), "
                                          r"more than the limit of 100,000"):
        check_grid([strategy_space(BUILTIN_STRATEGIES["l2"]), both], points + 1)


# -- the header --------------------------------------------------------------------------------

@pytest.mark.parametrize("warmup, shown", [("1", "(warm-up 1 epoch)"), ("2", "(warm-up 2 epochs)")])
def test_the_header_counts_the_warmup_epochs(fake_runner, capsys, warmup, shown):
    code, out, err = tune(capsys, "--strategies", "l2", "--trials", "1", "--epochs", "3",
                          "--warmup-epochs", warmup)
    assert code == 0, err
    assert f"pruner median {shown}" in out


def test_the_strategies_column_fits_the_longest_name(fake_runner, capsys, tmp_path):
    long = "l2_with_a_name_of_thirty_chars"
    config = tmp_path / "c.toml"
    config.write_text(f'[[strategies]]\nname = "{long}"\nplugins = [{{name = "l2", l2 = 1e-4}}]\n')
    code, out, err = tune(capsys, "--config", str(config), "--strategies",
                          f"decoupled_weight_decay,{long},l2", "--trials", "1", "--epochs", "1")
    assert code == 0, err
    lines = out[out.index("strategies:\n"):].splitlines()[1:4]
    assert lines[0].startswith("  decoupled_weight_decay  " + " " * (len(long) - 22)
                               + "decoupled_weight_decay.weight_decay in ")
    assert lines[1].startswith(f"  {long}  l2.l2 in ")
    assert len({line.index(" in ") - len(line.split()[1]) for line in lines}) == 1  # aligned
    trials = [line for line in out.splitlines() if " #0 " in line]
    assert len(trials) == 3 and len({line.index("#0") for line in trials}) == 1


# -- the summary's epochs ----------------------------------------------------------------------

def record(state: str, epochs: int) -> TrialRecord:
    return TrialRecord("l2", 0, state, {}, None, epochs, None)


def test_a_failed_trial_counts_the_epochs_it_ran_in_both_numbers():
    search = types.SimpleNamespace(objective=Objective())
    records = {"l2": [record("COMPLETE", 4), record("PRUNED", 2), record("FAIL", 1),
                      record("FAIL", 0), record("RUNNING", 3)]}
    summary = Summary(search, records, {"l2": None}, types.SimpleNamespace(),
                      TrainSettings(epochs=4), 0.0)
    counts = summary.counts("l2")
    assert (counts["epochs_run"], counts["epochs_full"]) == (4 + 2 + 1, 4 + 4 + 1)
    assert summary.rows()[0][6] == "7 of 9 (78%)"


def test_the_summary_counts_no_epochs_a_failed_trial_never_ran(fake_runner, capsys):
    fake_runner.fail_above = 1e-2  # the grid's 0.1 fails before its first epoch
    code, out, err = tune(capsys, "--strategies", "l2", "--sampler", "grid", "--epochs", "2",
                          "--pruner", "none")
    assert code == 0, err
    line = next(s for s in out[out.index("summary"):].splitlines() if s.startswith("  l2 "))
    assert " 1 " in line and "8 of 8 (100%)" in line  # 4 complete trials of 2 epochs
    assert "a failed trial: the epochs it ran" in out


# -- a storage file inside --out ---------------------------------------------------------------

@pytest.mark.parametrize("url, path", [
    ("sqlite:///study.db", "study.db"), ("sqlite:///runs/a/study.db", "runs/a/study.db"),
    ("sqlite:////abs/study.db", "/abs/study.db"), ("sqlite+pysqlite:///s.db?timeout=5", "s.db"),
    ("journal:study.log", "study.log"), ("journal:/abs/j.log", "/abs/j.log"),
    ("postgresql://user@host/db", None), ("mysql+pymysql://u@h/db", None)])
def test_the_storage_file_is_read_from_the_url(url, path):
    found = storage_file(url)
    assert (None if found is None else str(found)) == path


def test_a_storage_beside_out_is_accepted_and_one_inside_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_storage_outside_out("sqlite:///out2/study.db", "out")  # a sibling, not inside
    check_storage_outside_out("journal:study.log", "out")
    check_storage_outside_out("postgresql://u@host/db", "out")
    for url in ("sqlite:///out/study.db", f"sqlite:///{tmp_path}/out/deep/study.db",
                "journal:./out/../out/j.log", "journal:out"):
        with pytest.raises(SearchError, match=r"lies inside --out 'out'"):
            check_storage_outside_out(url, "out")


def test_a_storage_inside_out_is_refused_before_any_training(fake_runner, capsys, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    code, printed, err = tune(capsys, "--strategies", "l2", "--trials", "2",
                              "--storage", f"journal:{out}/study.log", "--out", str(out))
    assert code == 2 and err.count("\n") == 1
    assert f"--storage '{out}/study.log' lies inside --out '{out}'" in err
    assert fake_runner.calls == [] and printed == ""
    assert list(out.iterdir()) == []
