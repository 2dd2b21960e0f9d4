"""``regplug compare --out DIR`` never deletes or replaces what regplug did not write, and
leaves no staging folder behind, whatever ends the run (issue 11, "data loss")."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from _compare_cli import assert_one_line_error, run_cli

from regplug.experiment.output import MANIFEST, OutputError, StagedOutput


def user_files(folder: Path) -> dict[str, str]:
    """A folder a user fills by hand: every file's relative path and content."""
    files = {"results.json": "{}", "thesis.txt": "four years of work",
             "sub/important.csv": "a,b\n1,2\n"}
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    return files


def contents(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text()
            for p in folder.rglob("*") if p.is_file()}


def earlier_output(folder: Path, **files: str) -> None:
    """What an earlier ``regplug compare --out folder`` left: its files and the manifest."""
    with StagedOutput(folder) as staged:
        for name, text in (files or {"results.json": "{}", "results.csv": "a\n"}).items():
            (staged.path / name).write_text(text)
        staged.commit()


def siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir())


# -- a folder regplug did not write -------------------------------------------------------------

def test_a_results_json_among_user_files_does_not_make_the_folder_ours(tmp_path, capsys):
    folder = tmp_path / "mine"
    files = user_files(folder)
    code, out, err = run_cli(capsys, "--preset", "notebook",
                             "--out", str(folder), "--framework", "torch",
                             "--strategies", "none", "--epochs", "1")
    assert_one_line_error(code, err, f"--out {str(folder)!r}", "holds other files",
                          "thesis.txt", "sub/important.csv", "choose another --out")
    assert "framework strategy" not in out  # refused before any training
    assert contents(folder) == files
    assert siblings(folder) == ["mine"]


def test_an_output_without_our_manifest_is_refused_and_kept(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "results.json").write_text("{}")
    with pytest.raises(OutputError, match=f"no {MANIFEST}"):
        StagedOutput(folder)
    assert contents(folder) == {"results.json": "{}"}


def test_a_forged_or_broken_manifest_is_no_licence_to_delete(tmp_path):
    folder = tmp_path / "run"
    earlier_output(folder)
    (folder / MANIFEST).write_text("not json")
    with pytest.raises(OutputError, match="holds other files"):
        StagedOutput(folder)
    (folder / MANIFEST).write_text(json.dumps({"format": "something else", "files": {}}))
    with pytest.raises(OutputError, match="holds other files"):
        StagedOutput(folder)
    assert (folder / "results.csv").read_text() == "a\n"


# -- our own earlier output ---------------------------------------------------------------------

def test_our_earlier_output_is_replaced_whole_and_its_manifest_lists_every_file(tmp_path):
    folder = tmp_path / "run"
    earlier_output(folder, **{"results.json": "{1}", "old_figure.png": "x"})
    earlier_output(folder, **{"results.json": "{2}", "results.csv": "b\n"})
    assert contents(folder).keys() == {"results.json", "results.csv", MANIFEST}
    assert (folder / "results.json").read_text() == "{2}"
    manifest = json.loads((folder / MANIFEST).read_text())
    assert sorted(manifest["files"]) == ["results.csv", "results.json"]
    assert manifest["files"]["results.csv"]["size"] == 2
    assert len(manifest["files"]["results.csv"]["sha256"]) == 64
    assert siblings(folder) == ["run"]  # no staging or old copy left


@pytest.mark.parametrize("change, fragment", [
    (lambda f: (f / "notes.txt").write_text("mine"), "notes.txt"),
    (lambda f: (f / "deep" / "x").mkdir(parents=True), "deep/x/"),
    (lambda f: (f / "results.csv").write_text("edited by hand\n"), "changed since regplug"),
    (lambda f: os.symlink(f / "results.csv", f / "link.csv"), "link.csv"),
])
def test_files_a_user_added_to_or_changed_in_our_output_are_named_and_kept(tmp_path, change,
                                                                             fragment):
    folder = tmp_path / "run"
    earlier_output(folder)
    change(folder)
    before = contents(folder)
    with pytest.raises(OutputError, match="holds other files") as err:
        StagedOutput(folder)
    assert fragment in str(err.value) and "\n" not in str(err.value)
    assert contents(folder) == before
    assert siblings(folder) == ["run"]


def test_a_file_added_while_the_run_trains_stops_the_replacement(tmp_path):
    folder = tmp_path / "run"
    earlier_output(folder)
    with StagedOutput(folder) as staged:
        (staged.path / "results.json").write_text("{new}")
        (folder / "thesis.txt").write_text("saved meanwhile")
        with pytest.raises(OutputError, match=r"thesis\.txt.*changed while this ran"):
            staged.commit()
    assert (folder / "thesis.txt").read_text() == "saved meanwhile"
    assert (folder / "results.json").read_text() == "{}"
    assert siblings(folder) == ["run"]


# -- paths that cannot be an output folder -----------------------------------------------------

def test_a_symlinked_out_is_refused_and_neither_link_nor_target_is_touched(tmp_path, capsys):
    real = tmp_path / "real"
    earlier_output(real)
    link = tmp_path / "link"
    link.symlink_to(real)
    code, _, err = run_cli(capsys, "--preset", "notebook",
                           "--out", str(link), "--framework", "torch")
    assert_one_line_error(code, err, f"--out {str(link)!r} is a symbolic link", "another --out")
    assert link.is_symlink() and contents(real).keys() == {"results.json", "results.csv",
                                                            MANIFEST}


def test_an_out_that_is_a_file_is_refused(tmp_path, capsys):
    path = tmp_path / "results.json"
    path.write_text("{}")
    code, _, err = run_cli(capsys, "--preset", "notebook",
                           "--out", str(path), "--framework", "torch")
    assert_one_line_error(code, err, "exists and is not a directory")
    assert path.read_text() == "{}"


def test_an_out_inside_a_staging_folder_is_refused(tmp_path):
    staging = tmp_path / ".run.partial-abc123"
    staging.mkdir()
    for target in (staging / "inner", staging, tmp_path / ".run.old-x1" / "previous"):
        with pytest.raises(OutputError, match="staging folder"):
            StagedOutput(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.partial-abc123"]


# -- SIGTERM -------------------------------------------------------------------------------------

_SLOW_RUN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from regplug import cli
    from regplug.experiment.frameworks import register_runner

    class SlowRunner:  # stands in for torch: trains "forever" once the staging folder exists
        name = "torch"
        def describe(self):
            return "slow 1.0"
        def train_strategy(self, *args, **kwargs):
            Path(sys.argv[1]).write_text("training")
            time.sleep(60)
            raise AssertionError("SIGTERM did not arrive")
        def mc_dropout(self, toy, *, seed=0):
            raise NotImplementedError

    register_runner("torch", SlowRunner)
    sys.exit(cli.main(["compare", "--preset", "notebook",
                       "--framework", "torch", "--strategies", "none",
                       "--epochs", "1", "--data", sys.argv[2], "--out", sys.argv[3], "-q"]))
""")


def test_sigterm_during_a_run_removes_the_staging_folder_and_exits_143(tmp_path):
    data = tmp_path / "tiny.npz"
    np.savez(data, x_train=np.eye(4), y_train=np.arange(4) % 2, x_test=np.eye(4)[:2],
             y_test=np.arange(2))
    ready, out = tmp_path / "ready", tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_RUN, str(ready), str(data), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ready.exists(), proc.communicate()
        assert [p.name for p in tmp_path.glob(".run.partial-*")]  # the run is staging
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ready", "tiny.npz"]


def test_the_sigterm_handler_is_only_ours_while_a_run_lasts():
    from regplug.experiment.output import Terminated, exit_cleanly_on_sigterm

    def terminate_self() -> None:
        with exit_cleanly_on_sigterm():
            assert signal.getsignal(signal.SIGTERM) is not before
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as stopped:
        terminate_self()
    assert stopped.value.code == 143
    assert signal.getsignal(signal.SIGTERM) is before
