"""`regplug tune --task finetune`: the fine-tuning task's tunable strategies, searched on
its few-shot splits; best.toml read back by `regplug compare --task finetune`."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("optuna")

from _compare_cli import assert_one_line_error

from regplug import cli
from regplug.ranges import SpaceError
from regplug.tune.cli import _resolve_strategies


def tune(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["tune", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_task_tunes_its_strategies_that_declare_ranges():
    spaces, notes = _resolve_strategies(None, None, task="finetune")
    assert [sp.strategy.name for sp in spaces] == ["llrd", "l2sp", "ema", "l2"]
    assert [p.name for sp in spaces for p in sp.parameters] == [
        "layerwise_lr.decay", "l2sp.alpha", "ema.decay", "l2.l2"]
    assert notes == ["left out, nothing to tune: scratch, finetune, freeze, gradual_unfreeze"]
    with pytest.raises(SpaceError, match=r"strategy 'freeze' has nothing to tune.*tunable "
                                         r"strategies: llrd, l2sp, ema, l2"):
        _resolve_strategies("freeze", None, task="finetune")


def test_a_search_on_the_task_and_its_best_setting_compared(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    monkeypatch.chdir(tmp_path)
    code, out, err = tune(capsys, "--task", "finetune", "--data", "digits", "--shots", "5",
                          "--epochs", "2", "--trials", "2", "--strategies", "l2sp,llrd",
                          "--pruner", "none", "--out", "run")
    assert code == 0, err
    assert "data:       digits classes 5-9, 5 shots: 25 train / " in out
    assert "batch 25" in out  # the task's training settings
    payload = json.loads((tmp_path / "run" / "results.json").read_text())
    assert list(payload["strategies"]) == ["l2sp", "llrd"]
    for entry in payload["strategies"].values():
        assert entry["counts"]["complete"] == 2 and entry["best"] is not None
    code = cli.main(["compare", "--task", "finetune", "--data", "digits", "--shots", "5",
                     "--epochs", "1", "--seeds", "1", "-q", "--config", "run/best.toml",
                     "--strategies", "finetune,l2sp_tuned,llrd_tuned"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "l2sp_tuned" in out and "llrd_tuned" in out


@pytest.mark.parametrize(("argv", "fragments"), [
    (["--strategies", "l2sp"], ["strategy 'l2sp' belongs to --task finetune"]),
    (["--shots", "3"], ["--shots 3: only --task finetune has shots"]),
    (["--task", "finetun"], ["did you mean 'finetune'?"]),
    (["--task", "finetune", "--train-rows", "20"], ["--train-rows 20: not with --task "
                                                    "finetune"]),
    (["--task", "finetune", "--model", "linear"], ["no hidden layer to pretrain"]),
    (["--task", "finetune", "--data", "digits", "--shots", "500"], ["--shots 500: at most "]),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, fragments):
    code, out, err = tune(capsys, *argv, "--trials", "1", "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "out").exists() and "#0" not in out


def test_every_trial_starts_from_one_pretraining(capsys):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    import time

    from regplug.cli import build_parser
    from regplug.tune.cli import check_arguments, run_search, wire_search

    args = build_parser().parse_args(["tune", "--task", "finetune", "--data", "digits",
                                      "--shots", "5", "--epochs", "1", "--trials", "3",
                                      "--strategies", "l2sp,ema", "--pruner", "none", "-q"])
    plan = wire_search(args, check_arguments(args))
    summary = run_search(args, plan, width=8, start=time.perf_counter())
    assert [summary.counts(name)["complete"] for name in ("l2sp", "ema")] == [3, 3]
    assert list(plan.splits.cache) == [("torch", "mlp", None, False, 0)]  # pretrained once
