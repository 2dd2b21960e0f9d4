"""Nothing a killed or interrupted search leaves behind is lost or silently wrong: a journal
whose last record was cut off is set aside (a copy kept) before anything is appended, so
Optuna can read every trial afterwards; a grid is used up only when every setting has a
finished trial; SIGTERM and Ctrl-C during a trial mark it FAIL with the reason."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from _tune_scripts import fake_runner_script
from optuna.storages.journal import JournalFileBackend, JournalStorage

from regplug import cli
from regplug.tune.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.ERROR)


def tune(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["tune", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def optuna_trials(path: Path, study: str = "regplug-tune/l2") -> list[optuna.trial.FrozenTrial]:
    """The study's trials as Optuna itself reads the journal (a fresh reader)."""
    storage = JournalStorage(JournalFileBackend(str(path)))
    return optuna.load_study(study_name=study, storage=storage).get_trials()


def rows_of(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


# -- item 1: a journal whose last record was cut off -------------------------------------------

def test_a_cut_off_last_record_is_set_aside_and_optuna_reads_every_trial_afterwards(
        tmp_path, fake_runner, capsys):
    log = tmp_path / "study.log"
    base = ["--strategies", "l2", "--epochs", "2", "--pruner", "none", "--storage",
            f"journal:{log}"]
    assert tune(capsys, *base, "--trials", "2")[0] == 0
    whole = log.read_bytes()
    cut = b'{"op_code":4,"worker_id":"dead","study_id":0,"datetime_sta'  # a killed writer's
    log.write_bytes(whole + cut)
    assert len(optuna_trials(log)) == 2  # still readable: Optuna skips a partial last line

    code, out, err = tune(capsys, *base, "--trials", "2")
    assert code == 0, err
    backups = sorted(tmp_path.glob("study.log.cut-*"))
    assert len(backups) == 1 and backups[0].read_bytes() == whole + cut  # nothing lost
    note = next(line for line in out.splitlines() if "cut off" in line)
    assert note.startswith("note: --storage ") and str(backups[0].name) in note
    trials = optuna_trials(log)  # Optuna itself reads every trial: the old and the new
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert log.read_bytes().startswith(whole) and log.read_bytes().endswith(b"\n")


def test_a_record_cut_off_while_the_search_runs_is_set_aside_before_the_next_append(tmp_path):
    """Another worker killed mid-write after this one opened the journal: the next append
    (under Optuna's lock) sets the partial line aside instead of writing after it."""
    log = tmp_path / "study.log"
    storage = open_storage(f"journal:{log}")
    study = optuna.create_study(study_name="s", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    with log.open("ab") as fh:
        fh.write(b'{"op_code":5,"worker_id":"dead","trial_id":1,"sta')
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    fresh = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(log))))
    assert [t.state.name for t in fresh.get_trials()] == ["COMPLETE"] * 4
    assert len(list(tmp_path.glob("study.log.cut-*"))) == 1


def test_a_garbage_line_inside_the_journal_is_refused_naming_the_option_and_the_line(
        tmp_path, fake_runner, capsys):
    log = tmp_path / "study.log"
    url = f"journal:{log}"
    assert tune(capsys, "--strategies", "l2", "--trials", "1", "--epochs", "2",
                "--storage", url)[0] == 0
    lines = log.read_bytes().splitlines(keepends=True)
    damaged = b"".join([*lines[:2], b"garbage\n", *lines[2:]])
    log.write_bytes(damaged)
    code, _, err = tune(capsys, "--strategies", "l2", "--trials", "1", "--epochs", "2",
                        "--storage", url)
    assert code == 2
    assert err.startswith(f"regplug: error: --storage {url!r}: line 3 is not an Optuna "
                          "journal record")
    assert len(err.strip().splitlines()) == 1
    assert log.read_bytes() == damaged  # untouched


# -- items 2 and 3: grid search and signals --------------------------------------------------

GRID_SCRIPT = """
from regplug import cli
sys.exit(cli.main(["tune", "--strategies", "l2", "--sampler", "grid", "--grid-points", "3",
                   "--trials", "3", "--epochs", "2", "--pruner", "none",
                   "--storage", {url!r}]))
"""


def interrupt_second_trial(tmp_path: Path, url: str, sig: signal.Signals) -> tuple[int, str]:
    """Run the grid search in a child process and send ``sig`` during its second trial."""
    script = tmp_path / "grid.py"
    script.write_text(fake_runner_script(GRID_SCRIPT.format(url=url), seconds_per_training=0.6))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout is not None
    for line in proc.stdout:  # the first trial's line: the second has started
        if line.startswith("l2 ") and "#0" in line:
            break
    time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_grid_interrupted_mid_trial_is_run_through_by_the_continued_search(
        tmp_path, fake_runner, capsys, sig):
    log = tmp_path / "study.log"
    url = f"journal:{log}"
    code, err = interrupt_second_trial(tmp_path, url, sig)
    assert code == (143 if sig == signal.SIGTERM else -signal.SIGKILL), err
    interrupted = optuna_trials(log)[1]
    if sig == signal.SIGTERM:  # item 3: not left RUNNING forever
        assert interrupted.state.name == "FAIL"
        assert interrupted.user_attrs["error"] == "interrupted (SIGTERM)"

    code, out, err = tune(capsys, "--strategies", "l2", "--sampler", "grid", "--grid-points",
                          "3", "--trials", "5", "--epochs", "2", "--pruner", "none",
                          "--storage", url, "--out", str(tmp_path / "o"))
    assert code == 0, err
    grid = [1e-6, 1e-6 ** 0.5 * 0.1 ** 0.5, 0.1]
    rows = rows_of(tmp_path / "o" / "trials.csv")
    complete = sorted(float(r["l2.l2"]) for r in rows if r["state"] == "COMPLETE")
    assert complete == pytest.approx(grid, rel=1e-6)  # every setting trained to the end once
    assert len([r for r in rows if r["state"] == "COMPLETE"]) == 3
    assert "l2: the grid was run through before --trials" in out
    best = json.loads((tmp_path / "o" / "results.json").read_text())["strategies"]["l2"]["best"]
    assert best["params"]["l2.l2"] == pytest.approx(1e-6 ** 0.5 * 0.1 ** 0.5)  # nearest 1e-3
    if sig == signal.SIGTERM:
        (failed,) = [r for r in rows if r["state"] == "FAIL"]
        assert failed["error"] == "interrupted (SIGTERM)"
    assert all(r["state"] != "RUNNING" for r in rows) or sig == signal.SIGKILL


def test_sigterm_marks_the_running_trial_fail_with_the_reason_in_a_sqlite_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    code, err = interrupt_second_trial(tmp_path, url, signal.SIGTERM)
    assert code == 143 and "terminated (SIGTERM)" in err and "Traceback" not in err
    trials = optuna.load_study(study_name="regplug-tune/l2", storage=url).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL"]
    assert trials[1].user_attrs["error"] == "interrupted (SIGTERM)"


def test_ctrl_c_during_a_trial_writes_its_reason(tmp_path, fake_runner, capsys):
    """SIGINT may be ignored where tests run in the background: the interrupt is raised
    where a Ctrl-C would land, inside the training."""
    original = fake_runner.train_strategy
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    fake_runner.train_strategy = interrupted
    log = tmp_path / "study.log"
    code, _, err = tune(capsys, "--strategies", "l2", "--trials", "3", "--epochs", "2",
                        "--storage", f"journal:{log}")
    assert code == 130 and err.strip() == "regplug: interrupted"
    trials = optuna_trials(log)
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL"]
    assert trials[1].user_attrs["error"] == "interrupted (Ctrl-C)"
