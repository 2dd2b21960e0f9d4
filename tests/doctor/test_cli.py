"""``regplug doctor`` on the command line: what it prints and writes, and its bad input (one
line, exit code 2, nothing written)."""

from __future__ import annotations

import json

import pytest
from scenarios import ref

from regplug.cli import main
from regplug.experiment.strategies import load_strategies

FAST = ["--data", "digits", "--epochs", "8", "-q"]


def _run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_a_healthy_run_prints_the_verdict_and_writes_everything(tmp_path, capsys):
    out_dir = tmp_path / "doc"
    code, out, err = _run(capsys, "doctor", *FAST, "--out", str(out_dir))
    assert code == 0, err
    assert "verdict: healthy" in out and "one batch was overfitted" in out
    assert "search (c)" not in out  # nothing to fix
    names = {p.name for p in out_dir.iterdir()}
    assert {"diagnosis.md", "report.html", "best.toml", "results.json", "curves.png",
            "monitor.png"} <= names
    results = json.loads((out_dir / "results.json").read_text())
    assert results["diagnosis"]["verdict"] == "healthy"
    assert any(k.startswith("dead_units/") for k in results["history"])
    setup = load_strategies(out_dir / "best.toml")  # what regplug compare --config reads
    assert list(setup) == ["doctor_setup"]
    assert "verdict: healthy" in (out_dir / "diagnosis.md").read_text()
    assert "curves.png" in (out_dir / "report.html").read_text()


def test_an_overfitting_run_searches_tests_and_writes_the_fix(tmp_path, capsys):
    out_dir = tmp_path / "doc"
    code, out, err = _run(capsys, "doctor", "--data", "digits", "--train-rows", "200",
                          "--label-noise", "0.3", "--epochs", "60", "--budget", "8",
                          "--seeds", "2", "--out", str(out_dir))
    assert code == 0, err
    assert "verdict: overfitting" in out and "search (c): l2, dropout" in out
    assert "seed test (d)" in out and "baseline none" in out  # progress lines
    fix = load_strategies(out_dir / "best.toml")
    (name,) = fix
    assert name.endswith("_tuned")
    best = json.loads((out_dir / "results.json").read_text())["search"]["best"]
    assert name == best["strategy"] + "_tuned"


@pytest.mark.parametrize(("argv", "message"), [
    (["--model", "no_such_module:factory"], "no module named 'no_such_module'"),
    (["--model", ref("broken_factory")], "no such layer"),
    (["--data", ref("too_few_rows")], "too small for a validation split"),
    (["--budget", "4"], "--budget 4: too small for step (c)"),
    (["--budget", "ten"], "must be a positive number of trainings"),
    (["--seeds", "1"], "at least 2 seeds"),
    (["--strategy", "l3"], "unknown strategy 'l3'"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, argv, message):
    out_dir = tmp_path / "doc"
    code, _out, err = _run(capsys, "doctor", *FAST, *argv, "--out", str(out_dir))
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out_dir.exists()


def test_a_seconds_budget_too_small_for_the_search_is_refused_after_the_baseline(
        tmp_path, capsys):
    out_dir = tmp_path / "doc"
    # 300 epochs: a training takes about as long as the whole budget even in a warm process
    # (40 took 0.1 s there, and 1 s then fitted the 7 trainings steps (c) and (d) need)
    code, _out, err = _run(capsys, "doctor", "--data", "digits", "--train-rows", "60",
                          "--epochs", "300", "--budget", "1s", "-q", "--out", str(out_dir))
    assert code == 2
    assert "--budget 1s: too small for step (c)" in err and len(err.strip().splitlines()) == 1
    assert not out_dir.exists()


def test_a_seconds_budget_is_honoured(capsys):
    import time

    start = time.perf_counter()
    code, out, err = _run(capsys, "doctor", "--data", "digits", "--train-rows", "200",
                          "--label-noise", "0.3", "--epochs", "60", "--budget", "45s", "-q")
    assert code == 0, err
    assert "trial(s) in the time the budget left" in out and "seed test (d)" in out
    assert time.perf_counter() - start < 45 * 1.5  # a trial started before the end finishes


def test_a_detached_loss_is_a_bug_with_what_training_raised():
    from regplug.doctor.cli import run_doctor

    result = run_doctor(framework="torch", data=None, model=ref("detached_model"), epochs=2)
    d = result.diagnosis
    assert d.verdict == "bug"
    assert result.error is not None and "RuntimeError" in result.error
    assert any("detached" in s for s in d.evidence)  # OverfitBatch's hint
    assert result.search is None


def _seed_test(base_train, base_test, fix_train, fix_test):
    from regplug.compare.stats import paired_t_test
    from regplug.doctor.cli import SeedTest
    from regplug.functional import pct_diff

    def rows(train, test):
        return [{"acc_train": a, "acc_test": b, "pct_diff": pct_diff(a, b)}
                for a, b in zip(train, test)]

    base, fix = rows(base_train, base_test), rows(fix_train, fix_test)
    gap = paired_t_test([r["pct_diff"] for r in fix], [r["pct_diff"] for r in base])
    acc = paired_t_test([r["acc_test"] for r in fix], [r["acc_test"] for r in base])
    return SeedTest(list(range(len(base))), base, fix, gap.t, gap.p, gap.mean_diff, gap.ci95,
                    acc_p=acc.p, acc_mean_diff=acc.mean_diff)


def test_the_notes_follow_from_the_seed_test_numbers():
    from regplug.doctor.cli import seed_test_notes

    # the gap narrows only because training accuracy fell: said, with its numbers
    s = _seed_test([1.0] * 4, [0.80, 0.78, 0.82, 0.79], [0.97, 0.96, 0.97, 0.96],
                   [0.80, 0.78, 0.815, 0.79])
    assert s.beats_noise and not s.raises_test_accuracy
    (note,) = seed_test_notes(s, 60)
    assert "by lowering training accuracy (1.000 -> 0.965)" in note
    # a real gain: nothing to add
    s = _seed_test([1.0] * 4, [0.80, 0.78, 0.82, 0.79], [1.0] * 4, [0.85, 0.84, 0.86, 0.83])
    assert s.beats_noise and s.raises_test_accuracy and seed_test_notes(s, 60) == []
    # no gain, training accuracy not at 1: the "fits every row" reading is NOT claimed
    s = _seed_test([1.0] * 3, [0.80, 0.78, 0.82], [0.9, 0.92, 0.91], [0.72, 0.75, 0.7])
    (note,) = seed_test_notes(s, 60)
    assert not s.beats_noise and "still fits" not in note and "0.910" in note
    s = _seed_test([1.0] * 3, [0.80, 0.78, 0.82], [1.0] * 3, [0.79, 0.79, 0.81])
    (note,) = seed_test_notes(s, 60)
    assert "fits 100.0% of its 60 training rows" in note
    s = _seed_test([1.0] * 3, [0.80, 0.78, 0.82], [0.993] * 3, [0.79, 0.79, 0.81])
    (note,) = seed_test_notes(s, 3400)
    assert "fits 99.3% of its 3400 training rows" in note  # not "all" of them


def test_the_report_wraps_the_diagnosis_lines(tmp_path, capsys):
    out_dir = tmp_path / "doc"
    code, _out, err = _run(capsys, "doctor", *FAST, "--out", str(out_dir))
    assert code == 0, err
    assert "white-space:pre-wrap" in (out_dir / "report.html").read_text()


def test_the_data_curve_compares_half_the_rows_with_seed_noise():
    from regplug.doctor.cli import DataCurve

    c = DataCurve(30, 60, 0.64, [0.79, 0.80, 0.78])
    assert c.climbing and abs(c.gain - 0.15) < 1e-9
    assert "still climbing: more rows" in c.verdict() and "on 30 training rows" in c.verdict()
    flat = DataCurve(30, 60, 0.78, [0.79, 0.80, 0.78])
    assert not flat.climbing and "flat within seed noise" in flat.verdict()


def test_best_toml_says_how_to_train_what_the_doctor_trained(tmp_path, capsys):
    # compare's own defaults (its preset: MNIST, 1,000 rows, 30 % noisy labels) are not the
    # doctor's: the read-back line names the data, rows, labels, model and settings
    out_dir = tmp_path / "doc"
    code, _out, err = _run(capsys, "doctor", *FAST, "--train-rows", "300", "--out",
                           str(out_dir))
    assert code == 0, err
    line = next(x for x in (out_dir / "best.toml").read_text().splitlines()
                if x.startswith("# read back with: "))
    assert line.endswith("--strategies doctor_setup --framework torch --data digits "
                         "--train-rows 300 --label-noise 0 --model mlp --epochs 8 "
                         "--batch-size 128 --lr 0.05 --seed 0 --seeds 3"), line


def test_a_best_setting_at_the_weak_end_of_its_range_is_called_that():
    # a 2-point grid tries each range's ends: l2 1e-6 "wins" when no strength helps, and a
    # seed test of it against none compares near-equal setups
    from regplug.doctor.cli import weakest_notes

    (note,) = weakest_notes({"l2.l2": 1e-06}, {"l2.l2": 1e-06})
    assert "weakest of its range (l2.l2=1e-06)" in note
    assert weakest_notes({"model.dropout": 0.0}, {"model.dropout": 0.0})
    assert weakest_notes({"model.dropout": 0.35}, {"model.dropout": 0.0}) == []
    assert weakest_notes({"l2.l2": 1e-06}, {}) == []  # nothing known about its range
