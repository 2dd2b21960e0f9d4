"""The regplug command keeps TensorFlow's start-up lines off stderr, and nothing else.

A program that imports regplug itself is untouched; inside the command, a warning or an
error printed while a framework loads still shows.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from regplug._cli_imports import ImportGuard, filter_startup_chatter, stderr_filtered

# TensorFlow 2.21's lines at import, verbatim (timestamps and thread ids vary)
CHATTER = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1796654242.313007   30062 port.cc:153] oneDNN custom operations are on. "
    "You may see slightly different numerical results due to floating-point round-off errors "
    "from different computation orders. To turn them off, set the environment variable "
    "`TF_ENABLE_ONEDNN_OPTS=0`.\n"
    "I0000 00:00:1796654242.388463   30062 cpu_feature_guard.cc:227] This TensorFlow binary is "
    "optimized to use available CPU instructions in performance-critical operations.\n"
    "To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other "
    "operations, rebuild TensorFlow with the appropriate compiler flags.\n"
    "E0000 00:00:1733.5   77 cuda_dnn.cc:8310] Unable to register cuDNN factory: Attempting "
    "to register factory for plugin cuDNN when one has already been registered\n")
REAL = ("E0000 00:00:1796654243.1   30062 op_kernel.cc:1857] OP_REQUIRES failed: out of memory\n"
        "W0000 00:00:1796654243.2   30062 some_file.cc:12] a real warning\n"
        "To enable the following instructions: not after the cpu guard, so kept\n"
        "UserWarning: something Python said\n")
MARKERS = ("absl::InitializeLog", "oneDNN custom operations", "cpu_feature_guard",
           "This TensorFlow binary is optimized", "rebuild TensorFlow", "cuDNN factory")


def test_filter_drops_the_start_up_chatter_and_keeps_every_other_line() -> None:
    kept, chatter = filter_startup_chatter(CHATTER + REAL)
    assert kept == REAL
    assert len(chatter) == 5
    interleaved = CHATTER.splitlines(keepends=True)
    text = interleaved[0] + REAL.splitlines(keepends=True)[0] + "".join(interleaved[1:])
    assert filter_startup_chatter(text)[0] == REAL.splitlines(keepends=True)[0]


def test_stderr_filtered_works_on_the_file_descriptor(capfd: pytest.CaptureFixture[str]) -> None:
    with stderr_filtered():
        os.write(2, (CHATTER + REAL).encode())  # as C++ code writes
        print("python's own stderr line", file=sys.stderr)
    err = capfd.readouterr().err
    assert REAL in err and "python's own stderr line" in err
    assert not any(marker in err for marker in MARKERS)


def test_stderr_filtered_writes_the_kept_lines_when_the_body_fails(
        capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError, match="import failed"), stderr_filtered():
        os.write(2, (CHATTER + REAL).encode())
        raise RuntimeError("import failed")
    err = capfd.readouterr().err
    assert REAL in err and "oneDNN" not in err


def _fake_framework(root: Path) -> None:
    """``fakefw`` prints chatter and a real error at import and tries the optional
    ``fakeopt``, which is installed; it records whether it got it."""
    (root / "fakeopt.py").write_text("VALUE = 1\n")
    (root / "fakefw.py").write_text(textwrap.dedent(f"""
        import os
        os.write(2, {(CHATTER + REAL).encode()!r})
        try:
            import fakeopt
        except ImportError:
            fakeopt = None
        """))


def test_import_guard_quiets_a_watched_import_and_refuses_its_optional_imports(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    _fake_framework(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("fakefw", "fakeopt"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    guard = ImportGuard({"fakefw": ("fakeopt",)})
    monkeypatch.setattr(sys, "meta_path", [guard, *sys.meta_path])
    import fakefw  # type: ignore[import-not-found]

    err = capfd.readouterr().err
    assert REAL in err and not any(marker in err for marker in MARKERS)
    assert fakefw.fakeopt is None  # refused while fakefw loaded
    assert "fakeopt" not in sys.modules
    import fakeopt  # type: ignore[import-not-found]  # and importable after

    assert fakeopt.VALUE == 1
    assert "exec_module" not in vars(fakefw.__spec__.loader)  # the loader is as it was


def test_without_the_guard_a_library_user_sees_everything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    _fake_framework(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("fakefw", "fakeopt"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import fakefw

    assert CHATTER + REAL in capfd.readouterr().err
    assert fakefw.fakeopt is not None


@pytest.mark.skipif(importlib.util.find_spec("keras") is None
                    or importlib.util.find_spec("tensorflow") is None,
                    reason="needs Keras on TensorFlow")
def test_regplug_compare_with_keras_prints_no_tensorflow_start_up_lines(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_BACKEND")}
    result = subprocess.run([sys.executable, "-m", "regplug", "compare", "--preset", "notebook",
                             "--framework", "keras",
                             "--strategies", "none", "--epochs", "1", "-q"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert "keras     none" in result.stdout
    assert not any(marker in result.stderr for marker in MARKERS), result.stderr
