"""``--storage`` never mixes what does not compare and never harms a user's file: a study
records the settings its trials were run with and refuses a run with others; a file that is
not an SQLite database or an Optuna journal is refused untouched; a trial pruned because its
metric diverged says so; an empty study name is refused."""

from __future__ import annotations

import csv
import math
import sqlite3

import numpy as np
import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalStorage

from regplug import cli
from regplug.experiment.datasets import Splits
from regplug.experiment.frameworks import TrainSettings
from regplug.experiment.models import BUILTIN_MODELS
from regplug.experiment.strategies import BUILTIN_STRATEGIES, Strategy
from regplug.ranges import IntRange
from regplug.tune.search import Objective, Search, SearchError
from regplug.tune.storage import (
    STUDY_SETTINGS_ATTR,
    check_storage_url,
    open_storage,
    study_settings,
)
from regplug.tune.strategy_space import strategy_space

NOT_A_JOURNAL = ("is not an Optuna journal file (its first line is not a journal record); give "
                 "a new file or an existing journal")
NOT_SQLITE = ("is not an SQLite database (it does not start with SQLite's header); give a new "
              "file or an existing database")


def splits(offset: float = 0.0, name: str = "tiny") -> Splits:
    x = np.full((4, 2), offset, np.float32)
    y = np.arange(4) % 2
    return Splits(name, x, y, x, y, x, y, 2)


def search(runner, storage, *, data: Splits | None = None, strategy: Strategy | None = None,
           ranges=None, study_name: str = "s", **settings) -> Search:
    space = strategy_space(strategy or BUILTIN_STRATEGIES["l2"], ranges)
    return Search(spaces=[space], runner=runner, splits=data or splits(),
                  model=BUILTIN_MODELS["mlp"], settings=TrainSettings(**{"epochs": 2, **settings}),
                  objective=Objective(), sampler="random", pruner="none", storage=storage,
                  study_name=study_name)


def journal(tmp_path):
    return open_storage(f"journal:{tmp_path / 'study.log'}")


def tune(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["tune", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- a study's settings --------------------------------------------------------------------

@pytest.mark.parametrize("changed, was, now", [
    (["--epochs", "3"], "--epochs 2", "--epochs 3"),
    (["--lr", "0.1"], "--lr 0.05", "--lr 0.1"),
    (["--batch-size", "64"], "--batch-size 128", "--batch-size 64"),
    (["--seed", "1"], "--seed 0", "--seed 1"),  # and the digits' rows it draws
    (["--model", "linear"], "--model 'mlp (Dense 50", "--model 'linear (logistic regression"),
    (["--data", "mnist"], "--data 'digits: ", "--data 'mnist: "),
])
def test_a_run_with_other_training_settings_is_refused_naming_the_setting(
        tmp_path, fake_runner, capsys, changed, was, now):
    url = f"sqlite:///{tmp_path / 'mix.db'}"
    base = ["--strategies", "l2", "--trials", "2", "--epochs", "2", "--storage", url]
    assert tune(capsys, *base)[0] == 0
    calls = len(fake_runner.calls)
    code, _, err = tune(capsys, *base, *changed)
    assert code == 2
    there, here = err.split(", this run has ")
    assert there.startswith("regplug: error: study 'regplug-tune/l2' in the storage was run "
                            "with ")
    assert was in there and now in here
    assert err.rstrip().endswith(": use another --study-name or the same settings")
    assert len(err.strip().splitlines()) == 1
    assert len(fake_runner.calls) == calls  # refused before any training
    study = optuna.load_study(study_name="regplug-tune/l2", storage=url)
    assert len(study.trials) == 2


def test_the_same_settings_join_the_study_and_each_difference_is_named(tmp_path, fake_runner):
    storage = journal(tmp_path)
    first = search(fake_runner, storage)
    first.run(trials=2)
    recorded = first.studies["l2"].study.user_attrs[STUDY_SETTINGS_ATTR]
    assert recorded["framework"] == "torch" and recorded["epochs"] == 2
    assert recorded["objective"] == "val_cross_entropy"
    assert recorded["space"] == "l2.l2 in 1e-06 .. 0.1, log"
    assert recorded["data"].startswith("tiny: 4 train / 4 validation / 4 test rows")

    again = search(fake_runner, storage)
    again.run(trials=1)
    assert [r.number for r in again.records()["l2"]] == [0, 1, 2]

    # the same description, other rows (only their SHA-256 tells), and another learning rate
    with pytest.raises(SearchError) as caught:
        search(fake_runner, storage, data=splits(offset=1.0), learning_rate=0.1)
    message = str(caught.value)
    assert "--lr 0.05" in message and "--lr 0.1" in message
    there, here = message.split(", this run has ")
    sha_there = there.split("rows sha256 ")[1][:16]
    sha_here = here.split("rows sha256 ")[1][:16]
    assert sha_there != sha_here and " and --lr 0.05" in there


def test_another_search_space_or_fixed_argument_is_refused_a_searched_default_is_not(
        tmp_path, fake_runner):
    storage = journal(tmp_path)
    stopping = BUILTIN_STRATEGIES["early_stopping"]  # patience searched, monitor fixed
    search(fake_runner, storage, strategy=stopping).run(trials=1)
    # the strategy's own patience is replaced by every trial's: it does not matter
    other_default = Strategy("early_stopping", plugins=({**stopping.plugins[0], "patience": 2},))
    search(fake_runner, storage, strategy=other_default).run(trials=1)

    other_monitor = Strategy("early_stopping",
                             plugins=({**stopping.plugins[0], "monitor": "val_accuracy"},))
    with pytest.raises(SearchError, match="was run with fixed strategy arguments") as caught:
        search(fake_runner, storage, strategy=other_monitor)
    assert '"monitor": "val_loss"' in str(caught.value)
    assert '"monitor": "val_accuracy"' in str(caught.value)

    narrower = {"early_stopping": {"patience": IntRange(2, 4)}}
    with pytest.raises(SearchError, match="was run with search space 'early_stopping.patience"):
        search(fake_runner, storage, strategy=stopping, ranges=narrower)


def test_a_study_without_the_record_is_refused_when_it_has_trials(tmp_path, fake_runner):
    storage = journal(tmp_path)
    legacy = optuna.create_study(study_name="s/l2", storage=storage)
    legacy.add_trial(optuna.trial.create_trial(
        params={"l2.l2": 1e-3}, distributions={"l2.l2": optuna.distributions.FloatDistribution(
            1e-6, 0.1, log=True)}, value=0.5))
    with pytest.raises(SearchError) as caught:
        search(fake_runner, storage)
    assert str(caught.value) == (
        "study 's/l2' in the storage has 1 trial(s) but no record of the settings they were "
        "run with (made by Optuna itself, another program or an earlier regplug): use another "
        "--study-name")
    assert fake_runner.calls == []


def test_a_study_without_the_record_or_trials_takes_this_runs(tmp_path, fake_runner):
    storage = journal(tmp_path)
    optuna.create_study(study_name="s/l2", storage=storage)  # as a process killed at once
    joined = search(fake_runner, storage)
    recorded = joined.studies["l2"].study.user_attrs[STUDY_SETTINGS_ATTR]
    space = strategy_space(BUILTIN_STRATEGIES["l2"])
    assert recorded == study_settings(runner=fake_runner, splits=splits(),
                                      model=BUILTIN_MODELS["mlp"],
                                      settings=TrainSettings(epochs=2), objective=Objective(),
                                      space=space)
    with pytest.raises(SearchError, match="--epochs 2, this run has --epochs 5"):
        search(fake_runner, storage, epochs=5)


def test_of_two_runs_claiming_a_new_study_at_once_the_last_record_stands(
        tmp_path, fake_runner, monkeypatch):
    # another process, with --epochs 7, writes its record just after this one's
    write = optuna.study.Study.set_user_attr

    def and_then_another(study, key, value):
        write(study, key, value)
        write(study, key, {**value, "epochs": 7})

    monkeypatch.setattr(optuna.study.Study, "set_user_attr", and_then_another)
    with pytest.raises(SearchError, match="was run with --epochs 7, this run has --epochs 2"):
        search(fake_runner, journal(tmp_path))


# -- the storage's file --------------------------------------------------------------------

def sqlite_bytes(tmp_path) -> bytes:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("create table t (x)")
    return path.read_bytes()


@pytest.mark.parametrize("content", [b"hello world\n", b"hello world", b'{"a": 1}\n',
                                     b"[1, 2]\n", b"\xff\xfe\x00\n", "sqlite"])
def test_a_journal_path_to_another_file_is_refused_untouched(tmp_path, fake_runner, capsys,
                                                             content):
    path = tmp_path / "notes.txt"
    path.write_bytes(sqlite_bytes(tmp_path) if content == "sqlite" else content)
    before = path.read_bytes()
    url = f"journal:{path}"
    with pytest.raises(SearchError) as caught:
        open_storage(url)
    assert str(caught.value) == f"--storage {url!r}: {str(path)!r} {NOT_A_JOURNAL}"
    code, _, err = tune(capsys, "--strategies", "l2", "--trials", "1", "--storage", url)
    assert code == 2 and err == f"regplug: error: {caught.value}\n"
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["notes.txt", "other.db"]
                                                                if content == "sqlite"
                                                                else ["notes.txt"])
    assert fake_runner.calls == []


@pytest.mark.parametrize("content", [b"hello world\n", b"hello", b'{"op_code":0}\n', "journal"])
def test_an_sqlite_url_to_another_file_is_refused_untouched(tmp_path, fake_runner, capsys,
                                                            content):
    path = tmp_path / "notes.db"
    if content == "journal":
        open_storage(f"journal:{path}")
        optuna.create_study(study_name="x", storage=JournalStorage(JournalFileBackend(str(path))))
    else:
        path.write_bytes(content)
    before = path.read_bytes()
    url = f"sqlite:///{path}"
    code, _, err = tune(capsys, "--strategies", "l2", "--trials", "1", "--storage", url)
    assert code == 2
    assert err == f"regplug: error: --storage {url!r}: {str(path)!r} {NOT_SQLITE}\n"
    assert path.read_bytes() == before
    assert fake_runner.calls == []


def test_an_sqlite_url_with_a_query_checks_the_file_it_names(tmp_path, fake_runner, capsys):
    # the file is the URL's path without its query: the checks read the one Optuna opens
    path = tmp_path / "notes.db"
    path.write_bytes(b"hello world\n")
    url = f"sqlite:///{path}?timeout=9"
    code, _, err = tune(capsys, "--strategies", "l2", "--trials", "1", "--storage", url)
    assert code == 2
    assert err == f"regplug: error: --storage {url!r}: {str(path)!r} {NOT_SQLITE}\n"
    assert path.read_bytes() == b"hello world\n"
    assert fake_runner.calls == []


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_an_empty_file_or_an_existing_storage_is_used(tmp_path, kind, fake_runner):
    path = tmp_path / ("study.db" if kind == "sqlite" else "study.log")
    url = f"sqlite:///{path}" if kind == "sqlite" else f"journal:{path}"
    path.touch()  # an empty file: a storage another process has just begun
    search(fake_runner, open_storage(url)).run(trials=1)
    search(fake_runner, open_storage(url)).run(trials=1)
    study = optuna.load_study(study_name="s/l2", storage=open_storage(url))
    assert len(study.trials) == 2


def test_a_journal_whose_first_record_is_still_being_written_is_accepted(tmp_path):
    path = tmp_path / "study.log"
    path.write_bytes(b'{"op_code":0,"worker_id":"a-1","study_na')
    check_storage_url(f"journal:{path}")


# -- a diverged trial -----------------------------------------------------------------------

def test_a_trial_pruned_because_its_metric_diverged_says_so_in_trials_csv(
        tmp_path, fake_runner, monkeypatch, capsys):
    # the fake's validation cross-entropy is NaN from the first epoch above L2 = 0.01
    fake_globals = type(fake_runner).train_strategy.__globals__
    floor = fake_globals["floor_of"]
    monkeypatch.setitem(fake_globals, "floor_of", lambda strategy: math.nan if (
        fake_globals["l2_of"](strategy) or 0) > 0.01 else floor(strategy))
    # a grid of 3 L2 strengths: 1e-6, 3.2e-4 and 0.1, the last one diverging
    code, out, err = tune(capsys, "--strategies", "l2", "--trials", "3", "--epochs", "3",
                          "--sampler", "grid", "--grid-points", "3", "--pruner", "none",
                          "--storage", f"journal:{tmp_path / 'study.log'}",
                          "--out", str(tmp_path / "o"))
    assert code == 0, err
    why = "val_cross_entropy is nan at epoch 1 (the training diverged)"
    assert f"pruned at epoch 1: {why}" in out
    with (tmp_path / "o" / "trials.csv").open(newline="") as fh:
        rows = {float(r["l2.l2"]): r for r in csv.DictReader(fh)}
    assert len(rows) == 3
    diverged = rows[0.1]
    assert (diverged["state"], diverged["error"], diverged["pruned_at_epoch"]) == \
        ("PRUNED", why, "1")
    assert [r["error"] for l2, r in rows.items() if l2 != 0.1] == ["", ""]


# -- the study's name -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["", "   ", "\t"])
def test_an_empty_study_name_is_refused(tmp_path, fake_runner, name):
    with pytest.raises(SearchError) as caught:
        search(fake_runner, journal(tmp_path), study_name=name)
    assert str(caught.value) == (f"--study-name {name!r}: the studies' name must not be empty; "
                                 "give one (run1), or leave --study-name out for "
                                 "'regplug-tune'")


def test_a_blank_study_name_on_the_command_line_is_refused(tmp_path, fake_runner, capsys):
    code, _, err = tune(capsys, "--strategies", "l2", "--trials", "1", "--storage",
                        f"journal:{tmp_path / 'study.log'}", "--study-name", " ")
    assert code == 2 and err.startswith("regplug: error: --study-name ' ': ")
    assert fake_runner.calls == []
