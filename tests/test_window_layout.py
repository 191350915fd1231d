"""The window's layout, checked by geometry (never pixels): every control reachable on a small
screen, the curves sharing their tab, layer names readable, the insight fitting its tab."""

from pathlib import Path

import pytest
from PySide6.QtCore import QPoint, QRect, QSize, Qt
from PySide6.QtWidgets import (QAbstractButton, QAbstractItemView, QAbstractSpinBox, QApplication, QComboBox, QLineEdit,
                               QScrollArea, QWidget)

from engine.config import PlanConfig
from engine.events import LayerStats
from engine.model.architectures import build_model
from tests.gui_helpers import wait_ready
from widgets.layer_tree import LAYER, LayerTreeModel, LayerTreeView

STYLE = Path(__file__).resolve().parents[1] / "resources" / "style.qss"
CONTROLS = (QAbstractButton, QAbstractSpinBox, QComboBox, QLineEdit)


@pytest.fixture
def styled(qapp):
    """The application's style sheet, as people see the window (it makes controls taller)."""
    qapp.setStyleSheet(STYLE.read_text())
    yield
    qapp.setStyleSheet("")


def visible_height(widget: QWidget) -> int:
    """How much of `widget` its ancestors leave in view, by geometry (a QGraphicsView, like the
    plots, reports no visible region of its own offscreen)."""
    window = widget.window()
    shown = QRect(widget.mapTo(window, QPoint(0, 0)), widget.size())
    parent = widget.parentWidget()
    while parent is not None and parent is not window:
        shown = shown.intersected(QRect(parent.mapTo(window, QPoint(0, 0)), parent.size()))
        parent = parent.parentWidget()
    return max(0, shown.intersected(window.rect()).height())


def resize(qtbot, window, width: int, height: int) -> None:
    window.resize(width, height)
    qtbot.waitUntil(lambda: window.size() == QSize(width, height), timeout=5_000)
    qtbot.wait(50)  # the splitters' refit runs on the next turn of the event loop


def _inside_a_control(widget: QWidget) -> bool:
    """A spin box's line edit, a combo box's parts, an item view's editors: not controls of their own."""
    parent = widget.parentWidget()
    while parent is not None:
        if isinstance(parent, (QAbstractSpinBox, QComboBox, QAbstractItemView)):
            return True
        parent = parent.parentWidget()
    return False


def _scroll_area_of(widget: QWidget) -> QScrollArea | None:
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QScrollArea):
        parent = parent.parentWidget()
    return parent


def _can_scroll_to(area: QScrollArea, rect: QRect) -> bool:
    """`rect` (in the area's widget) lies in the widget, and the area can scroll wherever the widget is larger."""
    inner, viewport = area.widget(), area.viewport()
    if not inner.rect().contains(rect):
        return False
    off = Qt.ScrollBarPolicy.ScrollBarAlwaysOff
    if inner.width() > viewport.width() and area.horizontalScrollBarPolicy() == off:
        return False
    return not (inner.height() > viewport.height() and area.verticalScrollBarPolicy() == off)


def unreachable_controls(window) -> list[str]:
    """Controls shown neither whole in the window nor inside a scroll area that can scroll to them."""
    problems = []
    for widget in window.centralWidget().findChildren(QWidget):
        if not isinstance(widget, CONTROLS) or not widget.isVisibleTo(window) or _inside_a_control(widget):
            continue
        area = _scroll_area_of(widget)
        name = widget.objectName() or f"{type(widget).__name__} {getattr(widget, 'text', lambda: '')()}"
        if area is not None:
            rect = QRect(widget.mapTo(area.widget(), QPoint(0, 0)), widget.size())
            area_rect = QRect(area.mapTo(window, QPoint(0, 0)), area.size())
            if not (_can_scroll_to(area, rect) and window.rect().contains(area_rect)):
                problems.append(f"{name} at {rect} of a scroll area's {area.widget().size()}")
        else:
            rect = QRect(widget.mapTo(window, QPoint(0, 0)), widget.size())
            if not window.rect().contains(rect) or widget.visibleRegion().boundingRect().size() != widget.size():
                problems.append(f"{name} at {rect}, visible {widget.visibleRegion().boundingRect()}")
    return problems


@pytest.mark.slow
@pytest.mark.parametrize("width", [1024, 925])
def test_every_control_is_reachable_on_a_small_screen(qtbot, styled, window, demo_dir, width):
    window.open_folder(str(demo_dir))
    wait_ready(qtbot, window, classes=4)
    resize(qtbot, window, width, 700)
    for tab in range(window.right_tabs.count()):
        window.right_tabs.setCurrentIndex(tab)
        qtbot.wait(20)
        assert unreachable_controls(window) == [], window.right_tabs.tabText(tab)


@pytest.mark.slow
def test_the_layer_tree_keeps_rows_on_a_small_screen(qtbot, styled, window, demo_dir):
    window.open_folder(str(demo_dir))
    wait_ready(qtbot, window, classes=4)
    resize(qtbot, window, 1024, 700)
    tree = window.model_panel.tree
    assert tree.viewport().height() >= 8 * tree.sizeHintForRow(0)


@pytest.mark.slow
def test_the_training_panel_shows_start_and_progress_on_a_small_screen(qtbot, styled, window, demo_dir):
    window.open_folder(str(demo_dir))
    wait_ready(qtbot, window, classes=4)
    resize(qtbot, window, 1024, 700)
    panel = window.training_panel
    for widget in (panel.start_button, panel.stop_button, panel.progress):
        assert visible_height(widget) == widget.height(), widget.objectName()  # in view without scrolling
    assert visible_height(window.plots.loss_plot) > 100  # and the curves keep room for a plot


@pytest.mark.slow
def test_a_gradual_plan_leaves_every_curve_its_share(qtbot, styled, window, demo_dir):
    window.open_folder(str(demo_dir))
    wait_ready(qtbot, window, classes=4)
    resize(qtbot, window, 1400, 900)
    window.session.plan.apply_preset("gradual")
    qtbot.waitUntil(lambda: window.plots.phases_label.isVisible(), timeout=10_000)
    qtbot.wait(50)
    plots = window.plots
    for plot in (plots.loss_plot, plots.accuracy_plot, plots.lr_plot):
        assert visible_height(plot) > 100, plot.objectName()
    assert visible_height(plots.phases_label) > 0


@pytest.fixture(scope="module")
def resnet18_info():
    return build_model("resnet18", 10, "none").info


def test_layer_names_stay_readable_in_a_narrow_tree_after_a_run(qtbot, resnet18_info):
    model = LayerTreeModel()
    model.set_model_info(resnet18_info, PlanConfig(strategy="gradual"))
    view = LayerTreeView()
    qtbot.addWidget(view)
    view.setModel(model)
    view.resize(360, 300)
    view.show()
    qtbot.waitExposed(view)
    model.set_layer_stats({layer.name: LayerStats(grad_norm=1.0, update_ratio=1.234e-3, zero_grad_fraction=0.0)
                           for layer in resnet18_info.layers if layer.name})
    qtbot.wait(20)
    assert view.header().sectionSize(LAYER) >= view.layer_column_minimum()
    assert view.layer_column_minimum() >= view.fontMetrics().horizontalAdvance("downsample") + 3 * view.indentation()
    assert view.textElideMode() == Qt.TextElideMode.ElideMiddle  # both ends of a long name stay
    assert model.index_for("layer4.0.downsample.0").data(Qt.ItemDataRole.ToolTipRole).startswith("layer4.0.downsample.0")
    view.resize(900, 300)  # room to spare goes to the names
    qtbot.wait(20)
    header = view.header()
    assert sum(header.sectionSize(c) for c in range(header.count())) >= view.viewport().width() - 1


def _evaluation(classes: int):
    from engine.insight.evaluation import Evaluation
    from engine.runs.predictions import PredictionRecord

    names = [f"class_with_a_long_name_{i}" for i in range(classes)]
    matrix = [[8 if r == c else (3 if c == (r + 1) % classes else 0) for c in range(classes)] for r in range(classes)]
    records = [PredictionRecord(f"{names[r]}/{k}.png", names[r], names[c], 0.5, 0.87, ((names[c], 0.87),))
               for r in range(classes) for c in range(classes) for k in range(matrix[r][c])]
    per_class = {name: {"precision": 0.7, "recall": 0.7, "f1": 0.7, "support": 11} for name in names}
    return Evaluation(accuracy=0.7, balanced_accuracy=0.7, class_names=names, confusion_matrix=matrix,
                      per_class=per_class, most_confused=[{"true": names[0], "pred": names[1], "count": 3}],
                      top_losses=records[:5], records=records)


@pytest.mark.slow
def test_the_insight_fits_its_tab(qtbot, styled, window):
    resize(qtbot, window, 1400, 900)
    window.show_view(window.insight)
    insight = window.insight
    insight.show_evaluation(_evaluation(8), "/nowhere", "run-1")
    qtbot.wait(50)
    matrix = insight.matrix_view
    assert matrix.verticalScrollBar().maximum() == 0 and matrix.verticalScrollBar().value() == 0  # every row in view
    assert matrix.horizontalScrollBar().maximum() == 0
    for title in (insight.predicted_title, insight.true_title):
        assert title.isVisible() and visible_height(title) > 0, title.text()
    table = insight.per_class_view
    assert table.viewport().height() >= 6 * table.rowHeight(0)  # more than three classes in view
    caption = insight.gallery_model.index(0, 0).data()
    assert caption.startswith("87%")  # the confidence is never the part the grid cuts off
