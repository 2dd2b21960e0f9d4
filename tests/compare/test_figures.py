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


# -- all of it, from the command line -----------------------------------------------------

def test_a_run_with_config_strategies_writes_figures_and_captions_that_match_it(tmp_path,
                                                                               capsys):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "--config", str(config(tmp_path)), "--framework", "torch",
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
