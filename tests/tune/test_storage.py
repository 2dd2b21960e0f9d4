"""``--storage``: several processes add trials to one study per strategy (an SQLite database
or a journal file), and a later run reads them all."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from _tune_scripts import fake_runner_script

from regplug import cli

WORKER = """
from regplug import cli
sys.exit(cli.main(["tune", "--strategies", "l2,dropout", "--trials", sys.argv[1],
                   "--epochs", "2", "--pruner", "none", "--storage", {storage!r},
                   "--study-name", "shared"]))
"""


def storage_url(kind: str, folder: Path) -> str:
    return f"sqlite:///{folder / 'study.db'}" if kind == "sqlite" \
        else f"journal:{folder / 'study.log'}"


def open_storage(url: str):
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url[len("journal:"):]))
    return url


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_two_processes_share_each_strategys_study(tmp_path, kind, fake_runner, capsys):
    url = storage_url(kind, tmp_path)
    script = tmp_path / "worker.py"
    # 0.2 s a training: long enough for the two processes' trials to interleave
    script.write_text(fake_runner_script(WORKER.format(storage=url), seconds_per_training=0.2))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen([sys.executable, str(script), str(n)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
               for n in (3, 4)]
    outputs = [w.communicate(timeout=240) for w in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err
        assert "storage" in out and "studies shared/<strategy>" in out
    storage = open_storage(url)
    for strategy in ("l2", "dropout"):
        study = optuna.load_study(study_name=f"shared/{strategy}", storage=storage)
        trials = study.get_trials()
        assert len(trials) == 3 + 4  # the sum of the two processes' --trials
        assert sorted(t.number for t in trials) == list(range(7))
        assert all(t.state.name == "COMPLETE" for t in trials)
        assert len({tuple(sorted(t.params.items())) for t in trials}) == 7  # no repeats
    # both processes' trial lines, by trial number: each ran its own, none twice
    numbers = [line.split()[1] for out, _ in outputs for line in out.splitlines()
               if line.startswith("l2 ")]
    assert sorted(numbers) == sorted(f"#{i}" for i in range(7))

    # a later run (here, in this process) resumes the studies and writes every trial
    code = cli.main(["tune", "--strategies", "l2", "--trials", "1", "--epochs", "2",
                     "--pruner", "none", "--storage", url, "--study-name", "shared",
                     "--out", str(tmp_path / "o")])
    out, err = capsys.readouterr()
    assert code == 0, err
    with (tmp_path / "o" / "trials.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["number"]) for r in rows] == list(range(8))
    summary = out[out.index("summary"):].splitlines()
    cells = next(line.split() for line in summary if line.split()[:1] == ["l2"])
    assert cells[3:6] == ["8", "0", "0"]  # complete, pruned, failed: all the study's trials
    assert "16 of 16 (100%)" in " ".join(cells)


def test_a_study_created_for_the_other_direction_is_refused(tmp_path, fake_runner, capsys):
    url = storage_url("sqlite", tmp_path)
    base = ["tune", "--strategies", "l2", "--trials", "1", "--epochs", "2", "--storage", url]
    assert cli.main(base) == 0
    capsys.readouterr()
    assert cli.main([*base, "--objective", "val_accuracy"]) == 2
    err = capsys.readouterr().err
    assert "study 'regplug-tune/l2'" in err and "minimize" in err
    assert "--objective val_accuracy is maximized" in err and "--study-name" in err
    assert len(fake_runner.calls) == 1 + 1  # one trial and the best's measurement, then none
