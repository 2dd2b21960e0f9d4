"""Many ``regplug tune`` workers on one PostgreSQL study: a throw-away cluster (``initdb`` and
``pg_ctl`` on a temporary folder, on 127.0.0.1 at a free port), three processes sharing one
study through ``postgresql://`` (psycopg); no trial lost or duplicated, another run's settings
refused, SIGTERM marks the running trial FAIL, and the outputs are a single process's.

Skips where PostgreSQL's server programs or psycopg are not installed (``.ci/run`` installs
Debian's ``postgresql``; ``pip install 'regplug[postgres]'``).
"""

from __future__ import annotations

import csv
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from _tune_scripts import fake_runner_script

from regplug import cli

optuna.logging.set_verbosity(optuna.logging.ERROR)


def server_program(name: str) -> str | None:
    """``initdb`` / ``pg_ctl`` on the PATH, or in Debian's versioned folder."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return versions[-1] if versions else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """The URL of a fresh database on a throw-away PostgreSQL server (stopped afterwards)."""
    initdb, pg_ctl = server_program("initdb"), server_program("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL's server programs (initdb, pg_ctl) are not installed: "
                    "apt-get install postgresql")
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install "
                                          "'regplug[postgres]'")
    pytest.importorskip("sqlalchemy")
    demote: Callable[[], None] | None = None
    folder = Path(tempfile.mkdtemp(prefix="regplug-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root: as the postgres user
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("PostgreSQL refuses to run as root, and there is no 'postgres' user")
        os.chown(folder, user.pw_uid, user.pw_gid)

        def demote() -> None:
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)

    data, port = folder / "data", free_port()
    run = {"preexec_fn": demote, "capture_output": True, "text": True, "timeout": 120}
    made = subprocess.run([initdb, "-D", str(data), "-U", "regplug", "-A", "trust", "-E",
                           "UTF8", "--no-sync"], **run)
    assert made.returncode == 0, made.stderr
    started = subprocess.run([pg_ctl, "-D", str(data), "-l", str(folder / "server.log"), "-w",
                              "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 "
                                    "-c fsync=off", "start"], **run)
    assert started.returncode == 0, started.stderr + (folder / "server.log").read_text()
    try:
        # the plain scheme: regplug picks psycopg (3) where psycopg2 is not installed
        yield f"postgresql://regplug@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([pg_ctl, "-D", str(data), "-m", "immediate", "stop"], **run)
        shutil.rmtree(folder, ignore_errors=True)


WORKER = """
from regplug import cli
sys.exit(cli.main(["tune", "--strategies", "l2", "--trials", sys.argv[1], "--epochs", "2",
                   "--pruner", "none", "--storage", {url!r}, "--study-name", sys.argv[2]]))
"""


def start_workers(tmp_path: Path, url: str, trials: list[int], study: str,
                  seconds: float = 0.3) -> list[subprocess.Popen[str]]:
    script = tmp_path / "worker.py"
    script.write_text(fake_runner_script(WORKER.format(url=url), seconds_per_training=seconds))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return [subprocess.Popen([sys.executable, str(script), str(n), study],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env, cwd=tmp_path) for n in trials]


def optuna_url(url: str) -> str:
    """The URL for Optuna itself, which leaves the plain scheme to psycopg2."""
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def rows_of(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_three_workers_share_one_study_and_a_later_run_writes_it_as_one_process_would(
        tmp_path, postgres, fake_runner, capsys):
    workers = start_workers(tmp_path, postgres, [3, 3, 4], "shared")
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
        assert "studies shared/<strategy>" in out
    study = optuna.load_study(study_name="shared/l2", storage=optuna_url(postgres))
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(10))  # none lost, none twice
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.params["l2.l2"] for t in trials}) == 10

    # another run's settings are refused before it trains
    code = cli.main(["tune", "--strategies", "l2", "--trials", "1", "--epochs", "3",
                     "--pruner", "none", "--storage", postgres, "--study-name", "shared"])
    err = capsys.readouterr().err
    assert code == 2 and "was run with --epochs 2, this run has --epochs 3" in err
    assert fake_runner.calls == []

    # a later run writes every trial, the best of all as best.toml, and the figures
    out = tmp_path / "o"
    assert cli.main(["tune", "--strategies", "l2", "--trials", "1", "--epochs", "2",
                     "--pruner", "none", "--storage", postgres, "--study-name", "shared",
                     "--out", str(out)]) == 0
    capsys.readouterr()
    rows = rows_of(out / "trials.csv")
    assert [int(r["number"]) for r in rows] == list(range(11))
    best = optuna.load_study(study_name="shared/l2", storage=optuna_url(postgres)).best_trial
    assert f"at trial {best.number} of 11 trials run" in (out / "best.toml").read_text()
    single = tmp_path / "single"  # one process, in memory: the same files
    assert cli.main(["tune", "--strategies", "l2", "--trials", "2", "--epochs", "2",
                     "--pruner", "none", "--out", str(single)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in single.iterdir())


def test_sigterm_marks_a_workers_running_trial_fail(tmp_path, postgres):
    (worker,) = start_workers(tmp_path, postgres, [50], "term", seconds=0.6)
    assert worker.stdout is not None
    for line in worker.stdout:
        if line.startswith("l2 ") and "#0" in line:
            break
    time.sleep(0.2)
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 143, err
    trials = optuna.load_study(study_name="term/l2", storage=optuna_url(postgres)).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL"]
    assert trials[1].user_attrs["error"] == "interrupted (SIGTERM)"
