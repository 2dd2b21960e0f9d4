"""Hostile inputs to ``regplug tune`` (and what it shares with ``regplug compare``): a FIFO or
device where a file belongs, a config without end, a foreign database, a factory that raises,
a choice list of thousands — each refused in one line naming the option (details under
``-v``), never a hang, a traceback or numpy's advice to unpickle."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time

import optuna
import pytest

from regplug import cli
from regplug.experiment.arguments import MAX_BATCH_SIZE, MAX_SEEDS, seed_count

optuna.logging.set_verbosity(optuna.logging.ERROR)

#: Runs every case through ``cli.main`` in one child process (a hang fails the test by its
#: timeout instead of stopping the suite), printing each case's exit code and stderr.
SCRIPT = """
import contextlib, io, json, sys
from regplug import cli
found = {}
for name, argv in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    found[name] = [code, err.getvalue()]
print(json.dumps(found))
"""

FACTORIES = """
def raises(spec):
    raise RuntimeError("kaboom")

def value_error(spec):
    raise ValueError("boom")

def data_raises():
    raise RuntimeError("kaboom")

def data_value_error():
    raise ValueError("boom")
"""


def run_cases(tmp_path, cases: dict[str, list[str]], timeout: float = 240) -> dict:
    script = tmp_path / "cases.py"
    script.write_text(textwrap.dedent(SCRIPT))
    done = subprocess.run([sys.executable, str(script), json.dumps(cases)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    return {name: (code, err) for name, (code, err) in json.loads(done.stdout).items()}


TUNE = ["tune", "--strategies", "l2", "--trials", "1", "--epochs", "1"]


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# -- item 12: regular files only, a capped config read --------------------------------------

def test_fifos_devices_and_endless_files_are_refused_without_reading_them(tmp_path):
    for name in ("fifo.log", "fifo.npz", "fifo.toml"):
        os.mkfifo(tmp_path / name)
    with (tmp_path / "huge.toml").open("wb") as fh:  # sparse: 64 MB of NUL bytes
        fh.truncate(64 << 20)
    found = run_cases(tmp_path, {
        "journal fifo": [*TUNE, "--storage", "journal:fifo.log"],
        "journal /dev/null": [*TUNE, "--storage", "journal:/dev/null"],
        "sqlite fifo": [*TUNE, "--storage", "sqlite:///fifo.log"],
        "data fifo": [*TUNE, "--data", "fifo.npz"],
        "config /dev/zero": [*TUNE, "--config", "/dev/zero"],
        "config fifo": [*TUNE, "--config", "fifo.toml"],
        "config huge": [*TUNE, "--config", "huge.toml"],
        "compare config /dev/zero": ["compare", "--config", "/dev/zero"],
    }, timeout=120)
    assert {name: code for name, (code, _) in found.items()} == dict.fromkeys(found, 2)
    assert one_line(found["journal fifo"][1]) == (
        "regplug: error: --storage 'journal:fifo.log': 'fifo.log' is not a regular file (a "
        "FIFO); give a file path")
    assert "'/dev/null' is not a regular file (a character device)" in \
        one_line(found["journal /dev/null"][1])
    assert "--storage 'sqlite:///fifo.log'" in one_line(found["sqlite fifo"][1])
    assert "'fifo.npz' is not a regular file (a FIFO)" in one_line(found["data fifo"][1])
    assert one_line(found["config /dev/zero"][1]) == (
        "regplug: error: --config '/dev/zero' cannot be read: it is not a regular file (a "
        "character device)")
    assert "is not a regular file (a FIFO)" in one_line(found["config fifo"][1])
    assert "is larger than" in one_line(found["config huge"][1])
    assert "'/dev/zero' cannot be read: it is not a regular file" in \
        one_line(found["compare config /dev/zero"][1])


# -- items 14, 15: one line naming the option ---------------------------------------------------

def test_factories_that_raise_are_named_in_one_line_with_the_traceback_under_v(tmp_path):
    pytest.importorskip("torch")
    (tmp_path / "fac.py").write_text(FACTORIES)
    found = run_cases(tmp_path, {
        "model raises": [*TUNE, "--model", "fac:raises"],
        "model raises -v": ["-v", *TUNE, "--model", "fac:raises"],
        "model ValueError": [*TUNE, "--model", "fac:value_error"],
        "model os:system": [*TUNE, "--model", "os:system"],
        "data raises": [*TUNE, "--data", "fac:data_raises"],
        "data ValueError": [*TUNE, "--data", "fac:data_value_error"],
        "compare model raises": ["compare", "--strategies", "none", "--epochs", "1",
                                 "--model", "fac:raises"],
        "compare data ValueError": ["compare", "--strategies", "none", "--epochs", "1",
                                    "--data", "fac:data_value_error"],
    })
    assert {name: code for name, (code, _) in found.items()} == dict.fromkeys(found, 2)
    assert one_line(found["model raises"][1]) == (
        "regplug: error: --model 'fac:raises': the factory raised RuntimeError: kaboom "
        "(-v shows the traceback)")
    verbose = found["model raises -v"][1]
    assert "Traceback (most recent call last)" in verbose and 'raise RuntimeError("kaboom")' \
        in verbose
    assert one_line(found["model ValueError"][1]) == (
        "regplug: error: --model 'fac:value_error': the factory raised ValueError: boom "
        "(-v shows the traceback)")
    system = one_line(found["model os:system"][1])
    assert system.startswith("regplug: error: --model 'os:system': the factory raised "
                             "TypeError: ")
    assert one_line(found["data raises"][1]) == (
        "regplug: error: --data 'fac:data_raises': the function raised RuntimeError: kaboom "
        "(-v shows the traceback)")
    assert one_line(found["data ValueError"][1]) == (
        "regplug: error: --data 'fac:data_value_error': the function raised ValueError: boom "
        "(-v shows the traceback)")
    assert one_line(found["compare model raises"][1]).startswith(
        "regplug: error: --model 'fac:raises': the factory raised RuntimeError: kaboom")
    assert one_line(found["compare data ValueError"][1]).startswith(
        "regplug: error: --data 'fac:data_value_error': the function raised ValueError: boom")


def test_a_text_file_as_data_npz_is_named_and_never_advises_unpickling(tmp_path):
    (tmp_path / "x.npz").write_text("x_train = [1, 2, 3]\n")
    found = run_cases(tmp_path, {"text": [*TUNE, "--data", "x.npz"]})
    line = one_line(found["text"][1])
    assert found["text"][0] == 2 and "pickle" not in line.lower()
    assert line == ("regplug: error: data file 'x.npz' cannot be read as .npz: it is not a "
                    "zip archive of .npy arrays (as numpy.savez writes); it starts with "
                    "b'x_train = [1'")


def test_object_arrays_in_an_npz_are_refused_without_advising_unpickling(tmp_path):
    import numpy as np

    from regplug.experiment.loaders import load_npz

    np.savez(tmp_path / "o.npz", x_train=np.array([{"a": 1}], dtype=object),
             y_train=np.zeros(1), x_test=np.zeros((1, 1)), y_test=np.zeros(1))
    with pytest.raises(ValueError) as caught:
        load_npz(tmp_path / "o.npz")
    assert "pickle" not in str(caught.value).lower()
    assert "holds Python objects" in str(caught.value)


def test_a_utf8_bom_config_is_read_and_a_bad_config_names_the_option(tmp_path, fake_runner,
                                                                    capsys):
    (tmp_path / "bom.toml").write_bytes(
        "\ufeff[tune.l2]\nl2 = {low = 1e-5, high = 1e-3, log = true}\n".encode())
    assert cli.main([*TUNE, "--config", str(tmp_path / "bom.toml")]) == 0
    assert "l2.l2 in 1e-05 .. 0.001, log" in capsys.readouterr().out
    (tmp_path / "bad.toml").write_text("[tune.l2\n")
    assert cli.main([*TUNE, "--config", str(tmp_path / "bad.toml")]) == 2
    assert one_line(capsys.readouterr().err).startswith(
        f"regplug: error: --config {str(tmp_path / 'bad.toml')!r} is not valid TOML")


@pytest.mark.parametrize("out, message", [
    ("a" * 300, "--out 'aaaaaaaaaa"),
    ("/", "--out '/': the file-system root cannot be an output folder"),
])
def test_an_unusable_out_is_named(tmp_path, fake_runner, capsys, monkeypatch, out, message):
    monkeypatch.chdir(tmp_path)
    assert cli.main([*TUNE, "--out", out]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"regplug: error: {message}")
    if len(out) > 255:
        assert "300 characters" in line and "255" in line
    assert fake_runner.calls == []


def test_a_foreign_sqlite_database_is_refused_untouched(tmp_path, fake_runner, capsys):
    db = tmp_path / "mine.db"
    with sqlite3.connect(db) as connection:
        connection.execute("create table invoices (amount real)")
    before = db.read_bytes()
    assert cli.main([*TUNE, "--storage", f"sqlite:///{db}"]) == 2
    assert one_line(capsys.readouterr().err) == (
        f"regplug: error: --storage 'sqlite:///{db}': {str(db)!r} is another program's "
        "SQLite database (tables: invoices; no Optuna tables); give a new file or an Optuna "
        "study database")
    assert db.read_bytes() == before and fake_runner.calls == []


def test_a_storage_that_cannot_be_written_is_named_not_optunas_internal_error(
        tmp_path, fake_runner, capsys, monkeypatch):
    """Optuna wraps a failed write as ``StorageInternalError`` ("... exceeding max length"):
    the cause is what the user needs. (Read-only files cannot be made for root, so the write
    fails here as SQLite fails it on a read-only database.)"""
    from optuna.storages import RDBStorage

    def read_only(*args, **kwargs):
        try:
            raise sqlite3.OperationalError("attempt to write a readonly database")
        except sqlite3.OperationalError as err:
            raise optuna.exceptions.StorageInternalError(
                "An exception is raised during the commit. This typically happens due to "
                "invalid data in the commit, e.g. exceeding max length.") from err

    monkeypatch.setattr(RDBStorage, "create_new_study", read_only)
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert cli.main([*TUNE, "--storage", url]) == 2
    assert one_line(capsys.readouterr().err) == (
        f"regplug: error: --storage {url!r} cannot be written: OperationalError: attempt to "
        "write a readonly database")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes read-only files")
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_read_only_storage_file_is_named(tmp_path, fake_runner, capsys, kind):
    path = tmp_path / ("s.db" if kind == "sqlite" else "s.log")
    url = f"sqlite:///{path}" if kind == "sqlite" else f"journal:{path}"
    assert cli.main([*TUNE, "--storage", url]) == 0
    capsys.readouterr()
    path.chmod(0o444)
    assert cli.main([*TUNE, "--storage", url]) == 2
    assert one_line(capsys.readouterr().err).startswith(f"regplug: error: --storage {url!r}")


# -- item 17: one prefix, bounded counts ---------------------------------------------------------

@pytest.mark.parametrize("argv, expected", [
    (["tune", "--timeout", "-5"], "regplug: error: argument --timeout: must be a finite number "
                                  "> 0, got -5 (see regplug tune --help)"),
    (["compare", "--batch-size", str(10**12)],
     f"regplug: error: argument --batch-size: must be from 1 to {MAX_BATCH_SIZE:,}, got "
     f"{10**12} (see regplug compare --help)"),
    (["tune", "--batch-size", str(10**12)], "argument --batch-size: must be from 1 to"),
    (["plugins", "--nope"], "regplug: error: unrecognized arguments: --nope"),
])
def test_every_error_has_one_prefix(capsys, argv, expected):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("regplug: error: ") and expected in line


def test_seed_counts_are_bounded():
    assert seed_count("5") == 5
    for text in ("0", str(MAX_SEEDS + 1), str(10**9)):
        with pytest.raises(Exception, match=f"must be from 1 to {MAX_SEEDS:,}"):
            seed_count(text)


# -- item 13: thousands of choices ---------------------------------------------------------------

def test_five_thousand_choices_are_checked_in_seconds(tmp_path):
    from regplug.experiment.strategies import BUILTIN_STRATEGIES
    from regplug.tune.strategy_space import load_tune_config, strategy_space

    values = ", ".join(repr(1e-6 * (i + 1)) for i in range(5000))
    (tmp_path / "many.toml").write_text(f"[tune.l2]\nl2 = {{choices = [{values}]}}\n")
    start = time.perf_counter()
    config = load_tune_config(tmp_path / "many.toml")
    space = strategy_space(BUILTIN_STRATEGIES["l2"], config.ranges, config.model)
    seconds = time.perf_counter() - start
    assert space.grid_size(5) == 5000
    assert seconds < 10, f"{seconds:.1f} s (54 s when every build rescanned entry points)"


def test_discovery_runs_once_per_search_path(monkeypatch, tmp_path):
    from importlib import metadata

    from regplug import registry

    scans = []
    real = metadata.entry_points

    def counted(**kwargs):
        scans.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(registry.metadata, "entry_points", counted)
    monkeypatch.delenv(registry.DISABLE_AUTOLOAD_ENV, raising=False)
    registry._discover.cache_clear()
    for _ in range(50):
        registry.create_plugin("l2", l2=1e-4)
    assert len(scans) == 1
    monkeypatch.syspath_prepend(str(tmp_path))  # a new folder may hold new distributions
    registry.available_plugins()
    assert len(scans) == 2
