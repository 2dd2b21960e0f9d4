"""`regplug compare`'s figures and report say what the results hold: checked through the
data the figures drew (their artists and labels) and the numbers their captions state."""

from __future__ import annotations

import html.parser
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from _compare_cli import run_cli

from regplug.compare import plots
from regplug.compare.report import write_report
from regplug.compare.results import StrategyResult
from regplug.experiment import BUILTIN_STRATEGIES, load_strategies
from regplug.experiment.toy import TOY_INTERVALS, regression_toy
from regplug.experiment.training import WeightArray
from regplug.uncertainty import summarize


def result(strategy: str, weights: np.ndarray | None = None, *, framework: str = "torch",
           epochs: int = 6, stop: str | None = None, restored: int | None = None
           ) -> StrategyResult:
    rng = np.random.default_rng(len(strategy))
    w = rng.normal(0, 0.3, (20, 10)) if weights is None else weights
    history = {"cross_entropy": list(np.linspace(1.0, 0.1, epochs)),
               "val_cross_entropy": list(np.linspace(1.1, 0.4, epochs))}
    zeros = float(np.mean(w == 0))
    return StrategyResult(framework, strategy, "", 0.99, 0.95, 0.04, epochs, zeros, 0.0, 1.0,
                          stop_reason=stop, history=history, restored_epoch=restored,
                          weights=[WeightArray("0.weight", "weight", "Linear", 0, w)])


CONFIG = """
    [[strategies]]
    name = "strong_l2"
    plugins = [{name = "l2", l2 = 0.01}]

    [[strategies]]
    name = "capped"
    plugins = [{name = "max_norm", max_value = 1.0}]

    [[strategies]]
    name = "impatient"
    plugins = [{name = "early_stopping", patience = 0, min_delta = 100.0}]
    """


def config(tmp_path: Path) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(textwrap.dedent(CONFIG))
    return path


# -- the weight histograms ----------------------------------------------------------------

def test_histograms_show_every_strategy_that_penalizes_or_changes_weights_config_included(
        tmp_path):
    custom = load_strategies(config(tmp_path))
    strategies = [BUILTIN_STRATEGIES["none"], BUILTIN_STRATEGIES["dropout"], custom["strong_l2"],
                  custom["capped"], custom["impatient"], BUILTIN_STRATEGIES["proximal_l1"],
                  BUILTIN_STRATEGIES["decoupled_weight_decay"]]
    shown, left_out = plots.weight_strategies(strategies)
    assert shown == ["none", "strong_l2", "capped", "proximal_l1", "decoupled_weight_decay"]
    assert left_out == []
    caption = plots.weight_histogram_caption(shown, left_out)
    assert "none, strong_l2, capped, proximal_l1, decoupled_weight_decay" in caption


def test_histograms_keep_a_readable_maximum_and_the_caption_names_those_left_out():
    many = [BUILTIN_STRATEGIES["none"],
            *(BUILTIN_STRATEGIES["l2"].__class__(f"l2_{i}", plugins=({"name": "l2"},))
              for i in range(plots.MAX_WEIGHT_PANELS + 2))]
    shown, left_out = plots.weight_strategies(many)
    assert len(shown) == plots.MAX_WEIGHT_PANELS and left_out == ["l2_7", "l2_8", "l2_9"]
    assert "left out for room: l2_7, l2_8, l2_9" in plots.weight_histogram_caption(shown,
                                                                                   left_out)


def test_each_strategy_gets_its_own_panel_colour_and_a_visible_bar_of_exact_zeros():
    sparse = np.random.default_rng(1).normal(0, 0.3, (20, 10))
    sparse[:, :6] = 0.0  # 120 of 200 exactly zero
    names = ["none", "l2", "l1", "proximal_l1"]
    by_framework = {fw: [result(n, sparse if n == "proximal_l1" else None, framework=fw)
                         for n in names] for fw in ("torch", "keras")}
    fig = plots.draw_weight_histograms(by_framework, shown=names)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == [f"{fw}: {n}" for fw in ("torch", "keras")
                                               for n in names]
    colours = []
    for ax in axes:
        labels = ax.get_legend_handles_labels()[1]
        strategy = ax.get_title().split(": ")[1]
        own = [p for p in ax.patches if p.get_label() == strategy]
        assert len(own) == 1  # one filled histogram per panel: nothing blends
        colours.append(own[0].get_facecolor()[:3])
        if strategy != "none":  # the reference outline, dashed, in grey
            assert "none (reference)" in labels
        zero_bars = [bar for c in ax.containers if c.get_label().startswith("exactly 0")
                     for bar in c.patches]
        if strategy == "proximal_l1":
            assert len(zero_bars) == 1 and zero_bars[0].get_height() == 120
            assert zero_bars[0].get_x() < 0 < zero_bars[0].get_x() + zero_bars[0].get_width()
            assert "exactly 0: 120 (60%)" in labels
        else:
            assert zero_bars == []
    assert len(set(colours[:4])) == 4 and colours[:4] == colours[4:]


# -- the loss curves ---------------------------------------------------------------------

def test_an_early_stopped_panel_marks_the_stop_and_the_restored_best_epoch():
    stopped = result("early_stopping", epochs=9, stop="early_stopping: patience",
                     restored=3)
    fig = plots.draw_loss_curves([result("none"), stopped], title="t")
    plain, marked = fig.axes[:2]
    lines = {line.get_label(): list(line.get_xdata()) for line in marked.get_lines()}
    assert lines["restored: epoch 4"] == [4, 4]  # restored_epoch counts from 0
    assert lines["stopped: epoch 9"] == [9, 9]
    assert any(t.get_text().strip() == "restored: epoch 4" for t in marked.texts)
    assert not any("restored" in line.get_label() for line in plain.get_lines())


def curves_result(strategy: str, *, seed: int = 0, epochs: int = 10, val_ce=None,
                  stop: str | None = None) -> StrategyResult:
    """A run whose validation cross-entropy is ``val_ce`` (a U by default) and whose
    accuracies rise; acc_train 0.99 and acc_test 0.95 in the table."""
    run = result(strategy, epochs=epochs, stop=stop)
    run.seed = seed
    e = np.arange(epochs, dtype=np.float64)
    run.history["val_cross_entropy"] = list(val_ce if val_ce is not None
                                            else 0.3 + 0.02 * (e - 3) ** 2 + 2.0 * (e == 0))
    run.history["accuracy"] = list(0.5 + 0.45 * e / max(epochs - 1, 1) + 0.01 * seed)
    run.history["val_accuracy"] = list(0.5 + 0.4 * e / max(epochs - 1, 1))
    return run


def test_loss_curves_are_linear_from_0_so_the_validation_minimum_and_rise_show():
    e = np.arange(16)
    val = list(0.3 + 0.005 * (e - 5) ** 2 + 2.0 * (e == 0))  # 2.43, then a U: 0.30 at 6
    run = curves_result("none", epochs=16, val_ce=val)
    fig = plots.draw_loss_curves([run], title="t")
    ax = fig.axes[0]
    assert ax.get_yscale() == "linear"
    low, high = ax.get_ylim()
    assert low == 0.0
    # the first epoch runs off the top; the U after it (0.30 up to 0.80) fills the panel
    assert max(val[1:]) <= high < min(val[0], 1.2 * max(val[1:]))
    train = run.history["cross_entropy"]
    assert plots.curve_limits([train], [val], accuracy=False) == (0.0, max(val[5:]) * 1.1)
    # a short run, still learning, is shown whole
    short = curves_result("none", epochs=5)
    assert plots.curve_limits([short.history["cross_entropy"]],
                              [short.history["val_cross_entropy"]], accuracy=False)[1] >= 2.3
    caption = plots.loss_curves_caption("torch")
    assert "linear axis from 0" in caption and "training mode" in caption


def test_a_two_epoch_run_has_whole_epoch_ticks_and_no_log_labels():
    fig = plots.draw_loss_curves([curves_result("none", epochs=2)], title="t")
    fig.canvas.draw()
    ax = fig.axes[0]
    left, right = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if left <= t <= right]
    assert ticks == [1.0, 2.0]
    assert not any("10^" in t.get_text() or "10^{" in t.get_text() or "times" in t.get_text()
                   for t in ax.get_yticklabels())


def test_accuracy_curves_draw_train_and_validation_and_the_tables_accuracies():
    run = curves_result("dropout", epochs=6)
    run.restored_epoch = 3
    fig = plots.draw_accuracy_curves([run], title="t")
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    train = lines["train (running mean, training mode)"]
    val = lines["validation (eval mode)"]
    assert list(train.get_ydata()) == run.history["accuracy"]
    assert list(val.get_ydata()) == run.history["val_accuracy"]
    assert list(train.get_xdata()) == [1, 2, 3, 4, 5, 6]
    # the table's numbers at the epoch whose weights they are of (restored: epoch 4)
    mark_train = lines["acc_train of the table (eval mode)"]
    mark_test = lines["acc_test of the table"]
    assert (list(mark_train.get_xdata()), list(mark_train.get_ydata())) == ([4.0], [0.99])
    assert (list(mark_test.get_xdata()), list(mark_test.get_ydata())) == ([4.0], [0.95])
    assert ax.get_ylim()[1] >= 1.0 and ax.get_yscale() == "linear"
    caption = plots.accuracy_curves_caption("torch", seeds=3)
    assert "training mode" in caption and "eval mode" in caption and "3 seeds" in caption
    # one legend, outside the panels: it covers no curve
    assert ax.get_legend() is None and len(fig.legends) == 1


def test_seed_averaged_curves_turn_dashed_and_say_how_many_runs_where_runs_stopped():
    runs = [curves_result("early_stopping", seed=s, epochs=n, stop="early_stopping: patience")
            for s, n in ((0, 9), (1, 6), (2, 4))]
    assert plots.runs_per_epoch([r.history["val_cross_entropy"] for r in runs]).tolist() == [
        3, 3, 3, 3, 2, 2, 1, 1, 1]
    fig = plots.draw_loss_curves(runs, title="t")
    ax = fig.axes[0]
    solid = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert [list(line.get_xdata()) for line in solid] == [[1, 2, 3, 4]] * 2  # every run
    assert [list(line.get_xdata()) for line in dashed] == [[4, 5, 6, 7, 8, 9]] * 2
    notes = sorted((t.get_position()[0], t.get_text()) for t in ax.texts)
    assert notes == [(4.5, "2 of 3 runs"), (6.5, "1 of 3 runs")]
    assert "dashed from the first epoch that averages fewer runs" in plots.loss_curves_caption(
        "torch", seeds=3)


# -- the gap and the seeds' spread ------------------------------------------------------------

def seeded(strategy: str, gaps: list[float], *, framework: str = "torch"
           ) -> list[StrategyResult]:
    runs = []
    for seed, gap in enumerate(gaps):
        run = result(strategy, framework=framework)
        run.seed, run.pct_diff, run.acc_test = seed, gap, 0.9 + gap
        runs.append(run)
    return runs


def test_the_gap_bars_show_the_mean_each_seed_and_the_std():
    from regplug.compare.results import summarize

    runs = seeded("none", [0.05, 0.07, 0.06]) + seeded("l2", [0.01, 0.02, 0.03])
    fig = plots.draw_gap_bars(runs, summaries=summarize(runs))
    ax = fig.axes[0]
    bars = ax.containers[0]
    assert [b.get_height() for b in bars] == pytest.approx([0.06, 0.02])
    from matplotlib.collections import PathCollection

    dots = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert sorted(y for c in dots for _, y in c.get_offsets()) == pytest.approx(
        sorted([0.05, 0.07, 0.06, 0.01, 0.02, 0.03]))
    for c, centre in zip(dots, (0.0, 1.0)):  # each dot nearest its own strategy's tick
        assert all(abs(x - centre) < 0.25 for x, _ in c.get_offsets())
    whiskers = [seg for c in ax.containers[1:] if hasattr(c, "lines")
                for coll in c.lines[2] for seg in coll.get_segments()]
    assert sorted(abs(s[1][1] - s[0][1]) for s in whiskers) == pytest.approx([0.02, 0.02])
    assert "mean over the 3 seeds" in plots.gap_caption(runs, summarize(runs))


def test_with_one_seed_the_gap_figure_is_bars_alone():
    runs = [result("none"), result("l2")]
    runs[1].pct_diff = 0.01
    fig = plots.draw_gap_bars(runs)
    ax = fig.axes[0]
    assert [b.get_height() for b in ax.containers[0]] == pytest.approx([0.04, 0.01])
    from matplotlib.collections import PathCollection

    assert len(ax.containers) == 1  # no whiskers
    assert not any(isinstance(c, PathCollection) for c in ax.collections)  # no dots
    assert "no seed spread" in plots.gap_caption(runs)


def test_the_seed_spread_puts_each_dot_by_its_strategy_and_the_legend_off_the_panels():
    from regplug.compare.results import summarize

    runs = seeded("none", [0.05, 0.07, 0.06]) + seeded("l2", [0.01, 0.02, 0.03])
    fig = plots.draw_seed_spread(summarize(runs), runs)
    fig.canvas.draw()
    for ax in fig.axes:
        for collection in ax.collections:
            xs = collection.get_offsets()[:, 0]
            # a dot is nearer its own tick (0 or 1) than the other one
            assert all(abs(x - round(x)) < 0.25 for x in xs), xs
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1
    legend = fig.legends[0].get_window_extent()
    assert not any(legend.overlaps(ax.get_window_extent()) for ax in fig.axes)


def test_no_weight_histogram_legend_covers_a_bar():
    sparse = np.random.default_rng(1).normal(0, 0.3, (60, 40))
    sparse[:, :10] = 0.0
    names = ["none", "l2", "proximal_l1"]
    by_framework = {"torch": [result(n, sparse if n == "proximal_l1" else None) for n in names]}
    fig = plots.draw_weight_histograms(by_framework, shown=names)
    fig.canvas.draw()
    for ax in fig.axes:
        legend = ax.get_legend().get_window_extent()
        tops = [patch.get_window_extent().y1 for patch in ax.patches]
        assert legend.y0 > max(tops), (ax.get_title(), legend.y0, max(tops))


# -- the MC-dropout figure ---------------------------------------------------------------

def fake_prediction(toy, std_of_x):
    """A prediction whose spread is ``std_of_x(x)`` (200 samples at ±std around 0)."""
    x = toy.x_grid.ravel()
    std = std_of_x(x)[:, None].astype(np.float64)
    samples = np.stack([-std, std] * 100)
    return summarize(samples, interval="normal", level=0.95)


def regions(x):
    (a, b), (c, d) = TOY_INTERVALS
    return ((x > b) & (x < c)), ((x < a) | (x > d))


def test_the_caption_states_the_spread_measured_in_each_region_and_never_claims_the_gap():
    toy = regression_toy(0)

    def narrow_gap(x):  # what the real toy does: wider beyond the data, not in the gap
        gap, beyond = regions(x)
        return np.where(gap, 0.12, np.where(beyond, 0.18, 0.14))

    spread = plots.uncertainty_by_region(toy, fake_prediction(toy, narrow_gap))
    assert spread == pytest.approx({"data": 0.14, "gap": 0.12, "beyond": 0.18})
    caption = plots.uncertainty_caption(spread, samples=200)
    assert "0.140 where the training data lie, 0.120 in the gap" in caption
    assert "0.180 beyond" in caption
    assert "in the gap it is narrower than" in caption
    assert "does not mark every region without data as uncertain" in caption
    assert "grows away from the training data" not in caption

    def wide_everywhere(x):
        gap, beyond = regions(x)
        return np.where(gap | beyond, 0.4, 0.1)

    spread = plots.uncertainty_by_region(toy, fake_prediction(toy, wide_everywhere))
    caption = plots.uncertainty_caption(spread, samples=200)
    assert "in the gap it is 4.0× as wide as at the data." in caption
    assert "does not mark" not in caption


def test_the_uncertainty_figure_shades_the_gap_and_draws_the_measured_spread():
    toy = regression_toy(0)
    prediction = fake_prediction(toy, lambda x: 0.1 + 0.01 * np.abs(x))
    fig = plots.draw_uncertainty(toy, prediction, title="t")
    top, low = fig.axes
    (_, b), (c, _) = TOY_INTERVALS
    spans = [p for p in top.patches if p.get_label() == "gap in the training data"]
    assert len(spans) == 1
    left, right = spans[0].get_x(), spans[0].get_x() + spans[0].get_width()
    assert (left, right) == pytest.approx((b, c))
    std_line = next(line for line in low.get_lines() if line.get_label() == "std")
    np.testing.assert_allclose(std_line.get_ydata(), prediction.std.ravel())
    spread = plots.uncertainty_by_region(toy, prediction)
    assert {t.get_text() for t in low.texts} == {f"{k} {v:.3f}" for k, v in spread.items()}
    # no label sits on the std line: every point of it is below every label's box
    fig.canvas.draw()
    points = low.transData.transform(np.column_stack([std_line.get_xdata(),
                                                      std_line.get_ydata()]))
    for text in low.texts:
        box = text.get_window_extent()
        assert points[:, 1].max() < box.y0, text.get_text()


# -- the report --------------------------------------------------------------------------

class _Table(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.head: list[str] = []
        self.rows: list[int] = []
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append(0)
        elif tag in ("th", "td"):
            self._in = tag
            if tag == "td":
                self.rows[-1] += 1

    def handle_endtag(self, tag):
        self._in = None if tag in ("th", "td") else self._in

    def handle_data(self, data):
        if self._in == "th":
            self.head.append(data)


def test_the_report_table_has_each_column_once_and_a_header_for_every_cell(tmp_path):
    results = [result("none"), result("l2", stop="early_stopping: patience")]
    page = write_report(tmp_path / "report.html", results, {"model": "mlp"}, [],
                        command="regplug compare").read_text()
    table = _Table()
    table.feed(page)
    assert len(table.head) == len(set(table.head)), table.head
    assert table.head[-1] == "description"
    assert table.rows[1:] == [len(table.head)] * len(results)


class _Cells(html.parser.HTMLParser):
    """Each row's cells of the first table.summary: (class, text)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[tuple[str, str]]] = []
        self._cell: list[str] | None = None
        self._class = ""
        self._table = False

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._table = dict(attrs).get("class") == "summary" and not self.rows
        elif self._table and tag == "tr":
            self.rows.append([])
        elif self._table and tag in ("td", "th"):
            self._cell, self._class = [], dict(attrs).get("class") or ""

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = False
        elif self._table and tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append((self._class, "".join(self._cell)))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


#: What a report table may take at 1280 px: the body's max-width (REPORT_STYLE).
BODY_PX = 1180
#: A generous width of one character of the table's 14-px font (digits are ~7.8 px), and
#: a cell's padding (8 px each side).
CHAR_PX, PAD_PX = 8.5, 16


def test_the_seeds_table_fits_a_laptop_window_one_line_a_row(tmp_path):
    """Without a browser: every cell but a description stays on one line (white-space:
    nowrap), so the table's narrowest width is the sum of its columns' longest texts; with
    two frameworks and the default strategies it fits the page at 1280 px, and each mean ±
    std is compact (3 decimals)."""
    import re

    from regplug.compare.results import summarize
    from regplug.experiment.reporting import REPORT_STYLE

    assert re.search(r"th, td \{[^}]*white-space: nowrap", REPORT_STYLE)
    assert re.search(r"td\.desc \{[^}]*white-space: normal", REPORT_STYLE)
    assert f"max-width: {BODY_PX}px" in REPORT_STYLE
    runs = []
    for framework in ("torch", "keras"):
        for name, strategy in BUILTIN_STRATEGIES.items():
            for seed, gap in enumerate((0.0312, 0.0105, 0.0287)):
                run = result(name, framework=framework)
                run.seed, run.pct_diff, run.description = seed, gap, strategy.describe()
                runs.append(run)
    summaries = summarize(runs)
    page = write_report(tmp_path / "report.html", runs, {"model": "mlp"}, [],
                        command="regplug compare --seeds 3", summaries=summaries).read_text()
    cells = _Cells()
    cells.feed(page)
    head, *rows = cells.rows
    assert len(rows) == 2 * len(BUILTIN_STRATEGIES)
    assert all(cls != "desc" for row in rows for cls, _ in row)  # descriptions: under it
    widest = [max(len(row[i][1]) for row in cells.rows) for i in range(len(head))]
    assert sum(w * CHAR_PX + PAD_PX for w in widest) <= BODY_PX, dict(
        zip((h for _, h in head), widest))
    spreads = [text for row in rows for cls, text in row if cls == "num"]
    assert len(spreads) == 3 * len(rows)
    assert all(re.fullmatch(r"-?\d\.\d{3} ± \d\.\d{3}", t) for t in spreads), spreads[:3]
    for name, strategy in BUILTIN_STRATEGIES.items():  # each description once, under it
        assert page.count(f"<b>{name}</b>: {html.escape(strategy.describe())}</li>") == 1


# -- all of it, from the command line -----------------------------------------------------

def test_a_run_with_config_strategies_writes_figures_and_captions_that_match_it(tmp_path,
                                                                               capsys):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "--preset", "notebook",
                           "--config", str(config(tmp_path)), "--framework", "torch",
                           "--strategies", "none,dropout,strong_l2,impatient", "--epochs",
                           "3", "--out", str(out))
    assert code == 0, err
    payload = json.loads((out / "results.json").read_text())
    captions = payload["captions"]
    assert "none, strong_l2 (" in captions["weight_histograms.png"]
    assert "dropout" not in captions["weight_histograms.png"].split("(")[0]
    assert payload["restored_epochs"] == {"torch/impatient": 0}
    spread = payload["uncertainty"]["mean_std"]
    for region, words in (("data", "where the training data lie"), ("gap", "in the gap"),
                          ("beyond", "beyond them")):
        assert f"{spread[region]:.3f} {words}" in captions["uncertainty_mc_dropout.png"]
    page = (out / "report.html").read_text()
    for name, caption in captions.items():
        assert f"<figcaption>{caption}</figcaption>" in page.replace("&#x27;", "'"), name
