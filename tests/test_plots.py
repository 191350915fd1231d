"""The live plots: typed events in, distinct colours, legends beside the data, readable axes."""

from __future__ import annotations

import math

import pytest

from engine.events import BatchEvent, EpochEvent, LayerStats
from widgets.plots import Axis, TrainingPlots, distinct_colours, format_tick, log_ticks


def batch(step: int, lrs: dict[str, float], loss: float = 1.0, steps: int = 1000, layers=None) -> BatchEvent:
    epoch, within = 1 + (step - 1) // steps, (step - 1) % steps + 1
    return BatchEvent(epoch=epoch, epochs=10, step=within, steps=steps, global_step=step, total_steps=10 * steps,
                      loss=loss, lrs=lrs, images_per_second=100.0, eta_seconds=60.0, layers=layers or {})


def epoch_event(epoch: int, val_loss: float | None = 0.5) -> EpochEvent:
    return EpochEvent(epoch=epoch, epochs=10, train_loss=0.6, train_accuracy=0.7, val_loss=val_loss,
                      val_accuracy=None if val_loss is None else 0.8, per_class_accuracy={},
                      confusion_matrix=[], seconds=1.0, images_per_second=100.0, data_seconds=0.1,
                      compute_seconds=0.9, lr={}, trainable_params=10, is_best=True)


@pytest.fixture
def plots(qtbot):
    widget = TrainingPlots()
    qtbot.addWidget(widget)
    widget.resize(700, 900)
    widget.show()
    qtbot.waitExposed(widget)
    return widget


def settle(qtbot, plots):
    plots.redraw()
    qtbot.wait(20)  # let the layouts place legends and axes


def groups(n: int, step: int = 1) -> dict[str, float]:
    return {f"group {i}": 1e-3 / (1.5 ** i) * (1 + step / 100) for i in range(n)}


def test_typed_events_feed_loss_accuracy_and_lr(plots):
    for step in range(1, 6):
        plots.add_batch(batch(step, {"base": 1e-4, "fc": 1e-3}, loss=2.0 / step))
    plots.add_epoch(epoch_event(1))
    plots.add_epoch(epoch_event(2, val_loss=None))  # no validation split
    assert plots.point_count() == 5
    assert plots._series["train_acc"].size == 2
    assert plots._series["val_loss"].size == 1
    assert set(plots._lr_series) == {"base", "fc"}
    assert plots._series["train_loss_raw"].x[0] == pytest.approx(0.001)


def test_a_warm_up_lr_of_zero_is_not_drawn_on_the_log_axis(plots):
    plots.add_batch(batch(1, {"fc": 0.0}))
    plots.add_batch(batch(2, {"fc": 1e-4}))
    assert plots._lr_series["fc"].size == 1


@pytest.mark.slow
@pytest.mark.parametrize("n", [10, 20, 40])
def test_every_lr_group_has_its_own_colour(qtbot, plots, n):
    plots.add_batch(batch(1, groups(n)))
    settle(qtbot, plots)
    colours = [curve.opts["pen"].color().getRgb() for curve in plots._lr_curves.values()]
    assert len(colours) == n
    assert len(set(colours)) == n


def test_distinct_colours_never_repeat():
    for n in (1, 9, 10, 11, 12, 30, 100, 500):
        colours = distinct_colours(n)
        assert len(colours) == n and len(set(colours)) == n


def test_groups_joining_later_keep_all_colours_distinct(plots):
    for n in range(1, 15):  # gradual unfreezing adds one group at a time
        plots.add_batch(batch(n, groups(n, n)))
        colours = [curve.opts["pen"].color().getRgb() for curve in plots._lr_curves.values()]
        assert len(set(colours)) == n


def _overlap(a, b) -> float:
    both = a.intersected(b)
    return max(0.0, both.width()) * max(0.0, both.height())


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 6, 10, 20])
def test_legends_stay_off_the_data(qtbot, plots, n):
    for step in range(1, 50):
        plots.add_batch(batch(step, groups(n, step), loss=2.0 / step))
    plots.add_epoch(epoch_event(1))
    settle(qtbot, plots)
    for plot in (plots.loss_plot, plots.accuracy_plot, plots.lr_plot):
        item = plot.getPlotItem()
        legend, data_area = plot.legend.sceneBoundingRect(), item.vb.sceneBoundingRect()
        assert legend.width() > 0 and legend.height() > 0
        assert _overlap(legend, data_area) == 0, plot.objectName()
        assert item.sceneBoundingRect().contains(legend), plot.objectName()  # not cut off either
        for axis in ("left", "bottom"):
            assert _overlap(legend, item.getAxis(axis).sceneBoundingRect()) == 0
    assert len(plots.lr_plot.legend.entry_names()) == n
    assert all(f"group {i}" in plots.lr_plot.toolTip() for i in range(n))  # every name, however long


def test_plots_line_up_on_the_epoch_axis(qtbot, plots):
    plots.add_batch(batch(1, groups(12)))
    settle(qtbot, plots)
    lefts = {round(p.getPlotItem().vb.sceneBoundingRect().left()) for p in (plots.loss_plot, plots.lr_plot)}
    widths = {round(p.getPlotItem().vb.sceneBoundingRect().width()) for p in (plots.loss_plot, plots.lr_plot)}
    assert len(lefts) == 1 and len(widths) == 1


def test_x_axis_has_no_si_prefix_early_in_a_run(qtbot, plots):
    plots.add_batch(batch(1, {"fc": 1e-3}))  # x = 0.001 epochs
    plots.add_batch(batch(2, {"fc": 1e-3}))
    settle(qtbot, plots)
    for plot in (plots.loss_plot, plots.lr_plot):
        axis = plot.getAxis("bottom")
        assert axis.autoSIPrefixScale == 1.0
        assert "x0.001" not in axis.labelString() and "(x" not in axis.labelString()


def _labels(axis, lo, hi, pixels):
    levels = axis.tickValues(lo, hi, pixels)
    values = [v for _, vs in levels for v in vs]
    return values, axis.tickStrings(values, 1.0, levels[0][0] if levels else 1.0)


def test_lr_axis_before_data_shows_learning_rates_not_two_to_nine(qtbot, plots):
    settle(qtbot, plots)
    axis = plots.lr_plot.getAxis("left")
    lo, hi = plots.lr_plot.getViewBox().viewRange()[1]
    _, labels = _labels(axis, lo, hi, axis.height())
    assert labels and all(float(text) <= 0.1 for text in labels), labels


def test_lr_axis_follows_the_data_once_it_arrives(qtbot, plots):
    plots.add_batch(batch(1, {"fc": 3.0}))
    settle(qtbot, plots)
    lo, hi = plots.lr_plot.getViewBox().viewRange()[1]
    assert lo < math.log10(3.0) < hi


@pytest.mark.parametrize("lo_value, hi_value, pixels", [
    (1e-3, 1.2e-3, 120),   # a narrow range: cosine early in a run
    (1e-3, 1.02e-3, 120),  # narrower still
    (1e-4, 1e-3, 80),      # one decade in a small plot
    (1e-4, 3e-3, 150),
    (1e-7, 1e-1, 120),     # six decades
    (1e-12, 1.0, 60),
])
def test_log_tick_labels_never_overlap(lo_value, hi_value, pixels):
    axis = Axis("left")
    axis.setLogMode(y=True)
    lo, hi = math.log10(lo_value), math.log10(hi_value)
    values, labels = _labels(axis, lo, hi, pixels)
    assert len(values) >= 2 or (len(values) == 1 and hi - lo < 0.01), (values, labels)
    assert len(set(labels)) == len(labels), labels  # no two ticks read the same
    gaps = [abs(b - a) * pixels / (hi - lo) for a, b in zip(values, values[1:])]
    assert all(gap >= 14 for gap in gaps), (labels, gaps)  # a line of 9 pt text is about 14 px tall
    assert all(lo - 1e-9 <= v <= hi + 1e-9 for v in values)


def test_log_ticks_and_their_labels():
    assert log_ticks(-5, -1, 200, 20) == pytest.approx([-5, -4, -3, -2, -1])
    assert log_ticks(0, 0, 100, 20) == []
    assert [format_tick(v) for v in (1e-3, 2.5e-4, 0.05, 1.05e-3, 1.0, 123.0, 1e-5, 9.99999e-4)] == \
        ["1e-3", "2.5e-4", "0.05", "1.05e-3", "1", "123", "1e-5", "1e-3"]


def test_update_ratio_plot_is_hidden_until_asked_for(qtbot, plots):
    toggle = plots.findChild(type(plots.update_ratio_toggle), "updateRatioToggle")
    assert toggle is plots.update_ratio_toggle
    assert plots.update_ratio_plot.objectName() == "updateRatioPlot"
    assert not plots.update_ratio_visible() and not toggle.isChecked()
    plots.set_update_ratio_visible(True)
    assert plots.update_ratio_visible() and toggle.isChecked()
    toggle.click()
    assert not plots.update_ratio_visible()
    toggle.click()
    assert plots.update_ratio_visible()


def test_update_ratio_plot_gets_a_curve_per_module_from_sampled_steps(qtbot, plots):
    plots.set_update_ratio_visible(True)
    stats = lambda ratio: LayerStats(grad_norm=1.0, update_ratio=ratio, zero_grad_fraction=0.0)  # noqa: E731
    plots.add_batch(batch(1, {"fc": 1e-3}))  # not a sampled step: no layers
    plots.add_batch(batch(2, {"fc": 1e-3}, layers={"conv1": stats(0.0), "layer1": stats(1e-4), "fc": stats(1e-2)}))
    plots.add_batch(batch(3, {"fc": 1e-3}, layers={"conv1": stats(0.0), "layer1": stats(2e-4), "fc": stats(2e-2)}))
    settle(qtbot, plots)
    series = plots.update_ratio_series
    assert set(series) == {"layer1", "fc"}  # conv1 is frozen: 0 cannot go on a log axis
    assert series["fc"].size == 2 and list(series["fc"].x) == pytest.approx([0.002, 0.003])
    curve_y = plots._ratios.curves["fc"].yData
    assert list(curve_y) == pytest.approx([1e-2, 2e-2])
    assert "cannot show 0" in plots.update_ratio_plot.toolTip()
    assert plots.update_ratio_plot.getPlotItem().getAxis("left").logMode
    colours = {plots._ratios.colour(name) for name in series}
    assert len(colours) == 2

    plots.clear()
    assert plots.update_ratio_series == {} and plots._ratios.curves == {}
    assert plots.update_ratio_plot.legend.entry_names() == []


def test_update_ratio_plot_keeps_to_the_first_level_when_there_are_many_modules(qtbot, plots):
    names = ["conv1", "bn1"] + [f"layer{i}" for i in range(1, 5)] + \
        [f"layer{i}.{j}" for i in range(1, 5) for j in range(3)] + ["fc"]
    layers = {name: LayerStats(1.0, 1e-3, 0.0) for name in names}
    plots.add_batch(batch(1, {"fc": 1e-3}, layers=layers))
    assert set(plots.update_ratio_series) == {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"}
    few = {name: LayerStats(1.0, 1e-3, 0.0) for name in ["layer4", "layer4.0", "layer4.1", "fc"]}
    plots.clear()
    plots.add_batch(batch(1, {"fc": 1e-3}, layers=few))
    assert set(plots.update_ratio_series) == set(few)  # they fit: the second level too


def test_clear_resets_every_plot(qtbot, plots):
    plots.add_batch(batch(1, groups(3)))
    plots.add_epoch(epoch_event(1))
    plots.clear()
    assert plots.point_count() == 0 and plots._lr_series == {}
    assert plots.lr_plot.legend.entry_names() == []
    assert plots.lr_plot.getViewBox().viewRange()[1] == pytest.approx([-5, -1])
    assert plots.loss_plot.legend.entry_names() == ["train (each step)", "train (smoothed)", "validation"]


def test_many_points_stay_cheap(qtbot, plots):
    for step in range(1, 20_001):
        plots.add_batch(batch(step, {"base": 1e-3, "fc": 1e-2}))
    settle(qtbot, plots)
    assert len(plots._curves["train_loss"].xData) == 20_000
    assert plots.lr_plot.getPlotItem().clipToViewMode()
