"""The regplug program ends by freezing the garbage collector's objects; a caller of
``regplug.cli.main(argv)`` in its own process is left alone."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from regplug import cli


@pytest.fixture
def freezes(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    calls: list[bool] = []
    monkeypatch.setattr(cli, "gc", SimpleNamespace(freeze=lambda: calls.append(True)))
    return calls


def test_the_program_freezes_the_collector_at_its_end(
        freezes: list[bool], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["regplug", "plugins"])
    assert cli.main() == 0
    assert freezes == [True]
    assert "l2" in capsys.readouterr().out


def test_also_when_the_command_fails(freezes: list[bool], monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["regplug", "compare", "--data", "MNIST"])
    assert cli.main() == 2
    assert freezes == [True]
    assert "did you mean 'mnist'" in capsys.readouterr().err


def test_a_caller_with_its_own_arguments_keeps_its_collector(
        freezes: list[bool], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plugins"]) == 0
    assert freezes == []
