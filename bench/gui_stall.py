#!/usr/bin/env python3
"""The longest gap between 10 ms timer ticks on the GUI thread, scenario by scenario.

    .venv/bin/python bench/gui_stall.py [--only scan,split,model,training,export,task-insight]
    .venv/bin/python bench/gui_stall.py --only idle,runs,try-cam,continue,project,cluster,relabel

Offscreen, on CPU. One JSON line per scenario:
  scan      open a folder of 5,000 small images (made once under the system temp folder)
  csv       open a multi-label labels CSV of 2,000 rows (3 labels; 20 bad rows), made once likewise
  split     five steps of the Validation spin box on that folder, as a person clicks them
  model     switch the architecture to efficientnet_v2_s and wait for its layer tree
  training  the demo dataset, resnet18 at 64 px, 3 epochs, random init
  export    export the run's checkpoint to .pt and ONNX, parity checked
  insight   on the 5,000-image folder, a 1-epoch feature-extraction run (not timed), then its Insight
            tab filled: 1,000 validation records, the worst cell's gallery with thumbnails, then the
            embeddings map of 1,000 points
  task-insight  Insight opening a multi-label run, then a regression run, each of 2,000 validation images
            (the csv scenario's images; outputs generated, a resnet18 checkpoint carrying the task: no
            training): the per-label table and grid or the scatter, and the gallery with its thumbnails
  suspects  after insight: Find suspects on that folder (5-fold head training on the trunk's features,
            in the background) and the Suspects tab filled, thumbnails included
  runs      the Runs tab listing 50 run folders (run.json and metrics, no training) read from disk, then
            "runs compare": 5 of them clicked (Ctrl-click), 200 ms apart, until their curves and settings
            are compared
  try-cam   the demo dataset, resnet18 at 64 px, random init: a 1-epoch run (not timed), then Try an image
            on its best checkpoint, until the answer and its Grad-CAM overlay show
  continue  that run selected in the Runs tab, Epochs one more, Continue clicked, until that epoch ends
  project   File > Open project… (the file chosen at once) on a project naming the 5,000-image folder
            and an efficientnet_v2_s plan with three layer edits, until the folder is split and the tree built
  cluster   File > Export cluster job… on that configuration, Write script clicked 300 ms after it shows,
            until the dialog says what it wrote
  relabel   a copy of the 5,000-image folder and a run predicting every image (no training): 200 images of
            Insight's first correct cell selected in the gallery and moved to another class, until the
            class counts and the gallery rows follow the files
  processes the training scenario again as 2 processes (DDP, the window's child process group)
  search    the demo dataset, resnet18 at 32 px, random init: a 4-trial head-only search of 2 epochs a
            trial started in the Search dialog (Optuna's import, each trial's set-up, the table and plots)
  closing   last (it closes the window): a 2-process run closed after its first epoch, until the
            window has stopped the run and closed
  idle      two seconds of nothing: the machine's own noise floor (other processes, the OS)
A gap is the time between two ticks of a 10 ms QTimer (the first from the start of the measurement:
what the action itself does before it returns counts): anything well above 10 ms is time the
window could not react. The goal is a longest gap under 50 ms on 2 cores; on a machine shared
with other work, compare each scenario with the idle line. max_gap_cpu_ms is the GUI thread's own
CPU time in the longest gap, max_cpu_ms its most in any gap: the window's own work, which other
processes do not inflate (waiting for the GIL or a core is not counted).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PySide6.QtCore import QElapsedTimer, QEventLoop, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

SCENARIOS = ("idle", "scan", "csv", "split", "model", "insight", "task-insight", "suspects", "runs", "try-cam",
             "continue", "project", "cluster", "relabel", "training", "export", "processes", "search", "closing")


class StallMeter:
    """Records the gaps between ticks of a 10 ms timer running on the GUI thread."""

    def __init__(self):
        self.gaps: list[int] = []
        self.busy: list[float] = []  # the GUI thread's own CPU time in each gap, ms
        self._cpu = 0.0
        self._clock = QElapsedTimer()
        self._timer = QTimer()
        self._timer.setInterval(10)
        self._timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        self.gaps.append(self._clock.restart())
        cpu, self._cpu = self._cpu, time.thread_time()
        self.busy.append((self._cpu - cpu) * 1000)

    def start(self) -> None:
        """From now: the first gap counts what the GUI thread does before the timer's first tick (the
        action measured, when it works before returning)."""
        self.gaps, self.busy = [], []
        self._cpu = time.thread_time()
        self._clock.start()
        self._timer.start()

    def stop(self, scenario: str, seconds: float, **extra) -> dict:
        """The gaps, and the GUI thread's own CPU time in the longest gap and at most in one gap: a long
        gap the thread spent little CPU in was the machine's (other processes, a worker thread's GIL)."""
        self._timer.stop()
        values, busy = np.array(self.gaps or [0], dtype=float), self.busy or [0.0]
        return {"scenario": scenario, "max_gap_ms": float(values.max()), "p99_gap_ms": float(np.percentile(values, 99)),
                "median_gap_ms": float(np.median(values)), "max_gap_cpu_ms": round(busy[int(values.argmax())], 1),
                "max_cpu_ms": round(max(busy), 1), "ticks": int(len(self.gaps)), "seconds": round(seconds, 2),
                "cpus": os.cpu_count(), **extra}


def wait_until(predicate, timeout_s: float, what: str) -> None:
    """Run the event loop until predicate() holds (a benchmark may spin its own loop)."""
    loop = QEventLoop()
    poll = QTimer()
    poll.setInterval(20)
    deadline = time.monotonic() + timeout_s

    def check():
        if predicate():
            loop.quit()
        elif time.monotonic() > deadline:
            loop.quit()
            raise SystemExit(f"timed out waiting for {what}")

    poll.timeout.connect(check)
    poll.start()
    loop.exec()
    poll.stop()


def large_folder(images: int = 5000, classes: int = 8) -> Path:
    """5,000 small PNGs in 8 classes, made once and reused."""
    from engine.data.demo import write_demo_dataset

    folder = Path(tempfile.gettempdir()) / f"ts-bench-{images}"
    if not (folder / ".complete").exists():
        write_demo_dataset(folder, classes=classes, per_class=images // classes, size=64, seed=1)
        (folder / ".complete").write_text("ok\n")
    return folder


def large_csv(rows: int = 2000, bad: int = 20) -> Path:
    """A multi-label labels CSV of `rows` small PNGs (labels red, blue, round) and `bad` rows naming
    missing files, made once and reused."""
    from PIL import Image

    folder = Path(tempfile.gettempdir()) / f"ts-bench-csv-{rows}"
    csv = folder / "labels.csv"
    if not (folder / ".complete").exists():
        (folder / "images").mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(1)
        lines = ["path,labels"]
        for i in range(rows):
            pixels = (rng.random((64, 64, 3)) * 255).astype("uint8")
            Image.fromarray(pixels).save(folder / "images" / f"{i:05d}.png")
            labels = [name for name, on in (("red", i % 2), ("blue", i % 3 == 0), ("round", i % 5 == 0)) if on]
            lines.append(f"images/{i:05d}.png,{' '.join(labels)}")
        lines += [f"images/missing-{i}.png,red" for i in range(bad)]
        csv.write_text("\n".join(lines) + "\n")
        (folder / ".complete").write_text("ok\n")
    return csv


def task_run(task: str, csv: Path, root: Path):
    """A finished multi-label or regression run folder over the CSV's images, every one a validation
    image, with generated outputs (about right: the labels or the value plus noise)."""
    import torch

    from engine.model.architectures import build_model
    from engine.model.checkpoint import atomic_torch_save, make_checkpoint
    from engine.runs.run_folder import RunFolder
    from engine.runs.val_logits import write_val_outputs

    rows = [line.split(",") for line in csv.read_text().splitlines()[1:] if "missing" not in line]
    paths = [path for path, _ in rows]
    generator = torch.Generator().manual_seed(0)
    if task == "multi-label":
        names = ["blue", "red", "round"]
        targets = torch.tensor([[name in labels.split() for name in names] for _, labels in rows], dtype=torch.float32)
        outputs = 2 * targets - 1 + 1.5 * torch.randn(targets.shape, generator=generator)
        fields = {"name": task, "thresholds": [0.5] * 3}
    else:
        names = ["value"]
        targets = torch.arange(len(rows), dtype=torch.float32) % 90
        outputs = ((targets - 45) / 26 + 0.3 * torch.randn(len(rows), generator=generator))[:, None]
        fields = {"name": task, "mean": 45.0, "scale": 26.0, "loss": "mse"}
    built = build_model("resnet18", len(names), "none", 32, min_classes=1)
    folder = RunFolder(root / task)
    folder.path.mkdir(parents=True)
    checkpoint = make_checkpoint(built.model, arch="resnet18", class_names=names,
                                 preprocessing=built.preprocessing.to_dict(), plan={}, metrics={}, epoch=1, config={})
    atomic_torch_save({**checkpoint, "task": fields}, folder.checkpoint_path)
    folder.write_record({"config": {}, "task": task, "class_names": names, "dataset": {"root": str(csv.parent)},
                         "status": "finished"})
    write_val_outputs(folder.val_outputs_path, 1, task, names, paths, targets, outputs, {})
    return folder


def measure(meter: StallMeter, name: str, action, done, timeout_s: float = 600, pause_s: float = 0.0,
            **extra) -> dict:
    meter.start()
    started = time.perf_counter()
    action()
    wait_until(lambda: done() and time.perf_counter() - started >= pause_s, timeout_s, name)
    seconds = time.perf_counter() - started
    settled = time.perf_counter() + 0.3  # what the window does right after counts too
    wait_until(lambda: time.perf_counter() > settled, 5, "settling")
    return meter.stop(name, seconds, **extra)


def settle(seconds: float = 1.0) -> None:
    """Let the window finish what it was doing (first paint, a previous scenario) before measuring."""
    until = time.perf_counter() + seconds
    wait_until(lambda: time.perf_counter() > until, seconds + 5, "settling")


def open_demo_with_random_resnet18(window, summary):
    """The demo dataset in the window, resnet18 from random weights (nothing to download): its session."""
    session = window.session
    session.datasets.open_demo()
    session.settings.set_arch("resnet18")
    wait_until(lambda: window.is_ready and summary()["total"] < 5000
               and window.model_panel.tree_model.model_info.arch == "resnet18", 120, "demo")
    session.settings.set_weights("none")
    return session


def search_scenario(window, meter: StallMeter, summary) -> dict:
    session = open_demo_with_random_resnet18(window, summary)
    session.settings.update_data({"image_size": 32})
    session.settings.update_train({"device": "cpu"})
    wait_until(lambda: window.is_ready, 120, "the tree at 32 px")
    dialog = window.search_dialog
    window.open_search()
    dialog.head_only.setChecked(True)
    dialog.knob_edit("epochs").setText("2")
    dialog.budget.setValue(4)
    ended = []
    session.search.ended.connect(lambda: ended.append(True))
    settle()
    line = measure(meter, "search", dialog.start_button.click, lambda: bool(ended), arch="resnet18", image_size=32,
                   trials=4, epochs=2, head_only=True)
    line["table_rows"] = dialog.results.table_model.rowCount()
    line["status"] = dialog.status.text()
    return line


def fake_runs(root: Path, count: int = 50) -> None:
    """`count` finished run folders as training leaves them (run.json, one metrics line an epoch), over
    five datasets, three strategies and a few learning rates and image sizes: a Runs tab full of runs
    without training any."""
    from dataclasses import replace

    from app.session_state import WINDOW_DEFAULTS
    from engine.runs.run_folder import RunFolder

    rng = np.random.default_rng(0)
    for i in range(count):
        folder = RunFolder(root / f"resnet18-bench-{i:02d}")
        defaults = WINDOW_DEFAULTS
        config = replace(defaults, out_dir=str(folder.path),
                         data=replace(defaults.data, root=f"/data/set{i % 5}/images", image_size=(160, 224)[i % 2]),
                         plan=replace(defaults.plan, strategy=("fine-tune", "discriminative", "feature-extraction")[i % 3],
                                      base_lr=(1e-3, 3e-4, 1e-4, 3e-3)[i % 4]),
                         train=replace(defaults.train, epochs=10 + 5 * (i % 3)))
        folder.write_record({"config": config.to_dict(), "class_names": ["a", "b", "c", "d"], "status": "finished",
                             "started": f"2026-11-{1 + i % 28:02d}T04:{i % 60:02d}:00"})
        folder.start_metrics()
        accuracy = 0.25
        for epoch in range(1, config.train.epochs + 1):
            accuracy += (0.95 - accuracy) * rng.uniform(0.1, 0.3)
            folder.append_metrics({"epoch": epoch, "train_loss": 1.0 / epoch, "train_accuracy": accuracy,
                                   "val_loss": 1.1 / epoch, "val_accuracy": accuracy - 0.03})


def click_run(view, row: int, extend: bool = False) -> None:
    """A click on a row of the Runs list (Ctrl-click with `extend`)."""
    from PySide6.QtCore import QPoint, Qt
    from PySide6.QtTest import QTest

    rect = view.table.visualRect(view.model.index(row, 1))
    modifier = Qt.KeyboardModifier.ControlModifier if extend else Qt.KeyboardModifier.NoModifier
    QTest.mouseClick(view.table.viewport(), Qt.MouseButton.LeftButton, modifier, QPoint(rect.center()))


def runs_scenario(window, meter: StallMeter) -> list[dict]:
    """The Runs tab listing 50 runs read from disk, then 5 of them Ctrl-clicked, 200 ms apart, and compared."""
    fake_runs(window.session.runs_root, 50)
    view = window.runs_view
    window.show_view(view)
    settle()
    fill = measure(meter, "runs", window.session.insight.refresh_runs, lambda: view.model.rowCount() >= 50,
                   runs=50)
    fill["rows"] = view.model.rowCount()

    def five_clicks() -> None:
        for row in range(5):
            QTimer.singleShot(200 * row, lambda row=row: click_run(view, row, extend=row > 0))

    settle()
    compare = measure(meter, "runs compare", five_clicks,
                      lambda: len(view.selected_paths()) == 5 and len(view.legend.items) == 5
                      and view.diff_table.columnCount() == 6, runs=5)
    compare["diff_rows"] = view.diff_table.rowCount()
    return [fill, compare]


def train_demo_run(window, summary):
    """A 1-epoch run on the demo dataset (resnet18 at 64 px, random init, fine-tune), trained in the
    window and not timed: the run the try-cam and continue scenarios use. The window shows it."""
    session = open_demo_with_random_resnet18(window, summary)
    session.plan.apply_preset("fine-tune")
    session.settings.update_data({"image_size": 64})
    session.settings.update_train({"epochs": 1, "device": "cpu", "processes": 1})
    finished = []
    window.controller.run_finished.connect(finished.append)
    window.session.runs.start()
    wait_until(lambda: bool(finished), 600, "the demo run for try-cam and continue")
    window.controller.run_finished.disconnect(finished.append)
    return session.run.folder


def try_cam_scenario(window, meter: StallMeter, run) -> dict:
    """Insight's Try an image: a demo image chosen for the run's best checkpoint, until its answer and
    its Grad-CAM overlay are shown."""
    from engine.config import RunConfig

    insight, panel = window.insight, window.insight.try_panel
    window.show_view(insight)
    insight.tabs.setCurrentWidget(panel)
    wait_until(lambda: window.session.insight.try_model_path() == run.checkpoint_path, 60, "the run's checkpoint")
    image = sorted(Path(RunConfig.from_dict(run.read_record()["config"]).data.root).rglob("*.png"))[0]
    settle()
    line = measure(meter, "try-cam", lambda: panel.image_chosen.emit(str(image)),  # as the file dialog or a drop says
                   lambda: bool(panel.bars.top()) and not panel.overlay.pixmap().isNull(), image_size=64)
    line["message"] = panel.message.text()
    return line


def continue_scenario(window, meter: StallMeter, run) -> dict:
    """The Runs tab: the run selected, Epochs one more than it trained, Continue, until that epoch ends."""
    from app.run_events import RunFailure

    view, session = window.runs_view, window.session
    window.show_view(view)
    session.insight.refresh_runs()
    wait_until(lambda: view.model.row_of(run.path) >= 0, 60, "the run in the list")
    view.table.scrollTo(view.model.index(view.model.row_of(run.path), 0))
    click_run(view, view.model.row_of(run.path))
    if view.selected_paths() != [str(run.path)]:
        raise SystemExit(f"the run to continue is not the one selected: {view.selected_paths()}")
    done = len(run.read_epochs())
    window.training_panel.epochs_spin.setValue(done + 1)
    wait_until(lambda: session.config().train.epochs == done + 1 and window.is_ready, 60, "the Epochs setting")
    finished = []
    window.controller.run_finished.connect(finished.append)
    window.controller.run_failed.connect(finished.append)
    settle()
    line = measure(meter, "continue", view.buttons["continue"].click, lambda: bool(finished), epochs=done + 1)
    line["epochs_run"] = len(run.read_epochs())
    if isinstance(finished[0], RunFailure):
        line["failure"] = finished[0].message
    return line


class AnsweredFileDialog:
    """QFileDialog.getOpenFileName answers `path` at once, as the person choosing it would: what
    follows the choice is measured, not a modal dialog."""

    def __init__(self, path: Path):
        self._path = str(path)

    def __enter__(self):
        from PySide6.QtWidgets import QFileDialog

        self._asked = QFileDialog.getOpenFileName
        QFileDialog.getOpenFileName = staticmethod(lambda *args, **kwargs: (self._path, ""))
        return self

    def __exit__(self, *_exc):
        from PySide6.QtWidgets import QFileDialog

        QFileDialog.getOpenFileName = self._asked


PROJECT_ARCH = "efficientnet_v2_s"


def project_file() -> Path:
    """A project naming the 5,000-image folder and a discriminative efficientnet_v2_s plan with three
    layer edits, saved once."""
    from dataclasses import replace

    from app.session_state import WINDOW_DEFAULTS
    from engine.config import PlanEdit, save_project

    path = Path(tempfile.gettempdir()) / "ts-bench-project" / "bench.tsproj.json"
    defaults = WINDOW_DEFAULTS
    edits = (PlanEdit("features.0", frozen=True), PlanEdit("features.1", frozen=True), PlanEdit("features.6", lr=3e-4))
    config = replace(defaults, data=replace(defaults.data, root=str(large_folder())),
                     model=replace(defaults.model, arch=PROJECT_ARCH, weights="none"),
                     plan=replace(defaults.plan, strategy="discriminative", edits=edits),
                     train=replace(defaults.train, device="cpu", epochs=4))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_project(path, config)
    return path


def menu_action(window, words: str):
    """The File menu's action whose text (without its & shortcut marks) starts with `words`."""
    file_menu = window.menuBar().actions()[0].menu()
    return next(a for a in file_menu.actions() if a.text().replace("&", "").startswith(words))


def project_scenario(window, meter: StallMeter, summary) -> dict:
    """File > Open project… on a project of another dataset and model, until both are shown and ready."""
    path = project_file()
    window.session.datasets.open_demo()  # the project's folder is another one: it is listed anew
    wait_until(lambda: window.is_ready and summary()["total"] < 5000, 120, "demo")
    settle()

    def shown():
        info = window.model_panel.tree_model.model_info
        return (window.is_ready and summary()["total"] >= 5000 and info is not None and info.arch == PROJECT_ARCH
                and window.session.config().plan.strategy == "discriminative")

    with AnsweredFileDialog(path):
        return measure(meter, "project", menu_action(window, "Open project").trigger, shown, images=5000,
                       arch=PROJECT_ARCH, edits=3)


def cluster_scenario(window, meter: StallMeter, summary) -> dict:
    """File > Export cluster job… on the project's configuration (layer edits included), Write script
    clicked once the dialog shows, until it says what it wrote."""
    from PySide6.QtWidgets import QDialog

    if window.session.config().model.arch != PROJECT_ARCH:
        window.open_project(str(project_file()))
        wait_until(lambda: window.is_ready and summary()["total"] >= 5000, 120, "the project")
    out = Path(tempfile.mkdtemp(prefix="ts-cluster-"))
    settle()
    dialogs = []

    def write():
        dialog = window.findChild(QDialog, "clusterDialog")
        dialog.project_edit.setText(str(out / "job.tsproj.json"))
        dialog.script_edit.setText(str(out / "job.sbatch"))
        dialog.nodes.setValue(2)
        dialog.gpus.setValue(4)
        dialog.write_button.click()
        dialogs.append(dialog)

    def open_and_write():
        menu_action(window, "Export cluster job").trigger()
        QTimer.singleShot(300, write)  # the person fills the dialog in

    line = measure(meter, "cluster", open_and_write, lambda: bool(dialogs) and "Wrote" in dialogs[0].result.text(),
                   arch=window.session.config().model.arch, edits=len(window.session.config().plan.edits))
    line["result"] = dialogs[0].result.text()[:60]
    dialogs[0].close()
    return line


def predicted_run(root: Path, data: Path):
    """A run folder (no training) whose validation predictions are every image of `data`, each predicted
    right: the Insight matrix's diagonal cells hold every image."""
    import torch
    from dataclasses import replace

    from app.session_state import WINDOW_DEFAULTS
    from engine.data.dataset import scan_dataset
    from engine.runs.predictions import prediction_records, write_predictions
    from engine.runs.run_folder import RunFolder

    scan = scan_dataset(data, 0.0, 0)
    paths = [Path(s.path).relative_to(data).as_posix() for s in scan.train]
    labels = torch.tensor([s.label for s in scan.train])
    classes = len(scan.class_names)
    logits = torch.nn.functional.one_hot(labels, classes).float() * 4 + torch.rand(len(labels), classes)
    folder = RunFolder(root / "resnet18-predicted-every-image")
    config = replace(WINDOW_DEFAULTS, data=replace(WINDOW_DEFAULTS.data, root=str(data))).to_dict()
    folder.write_record({"config": config, "class_names": list(scan.class_names), "status": "finished"})
    write_predictions(folder.predictions_path, prediction_records(paths, labels, logits, list(scan.class_names)))
    return folder


def class_totals(summary: dict) -> dict[str, int]:
    return {c["class"]: c["train"] + c["val"] for c in summary["classes"]}


def relabel_scenario(window, meter: StallMeter, summary) -> dict:
    """On a copy of the 5,000-image folder: Insight's first correct cell, 200 of its images selected in
    the gallery and moved to another class (Move to class), until the class counts and the gallery
    rows follow the files."""
    import shutil

    from PySide6.QtCore import QItemSelection, QItemSelectionModel

    data = (Path(tempfile.gettempdir()) / "ts-bench-relabel").resolve()  # replaced each time: 59 MB
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(large_folder(), data, ignore=shutil.ignore_patterns(".*"))
    window.open_folder(str(data))
    wait_until(lambda: window.is_ready and window.session.dataset.folder == str(data)
               and summary()["total"] >= 5000, 120, "the copied folder")
    insight = window.insight
    window.show_view(insight)
    window.session.insight.open_insight(predicted_run(window.session.runs_root, data))
    wait_until(lambda: insight.matrix_model.total() >= 5000, 120, "the insight of every image")
    insight.show_cell(0, 0)
    gallery = insight.gallery
    source, target = insight.matrix_model.class_names()[0], insight.matrix_model.class_names()[1]
    before = class_totals(summary())
    selection = QItemSelection(gallery.model().index(0), gallery.model().index(199))
    gallery.selectionModel().select(selection, QItemSelectionModel.SelectionFlag.ClearAndSelect)
    if len(gallery.selected_paths()) != 200:
        raise SystemExit(f"the gallery's cell holds {gallery.model().rowCount()} images, not 200 or more")
    move = next(a for a in insight.mend.move_menu.actions() if a.text() == target)
    settle()

    def followed():
        counts = class_totals(summary())
        moved = sum(r.true == target for r in gallery.model().records())
        return counts.get(source) == before[source] - 200 and counts.get(target) == before[target] + 200 and moved == 200

    return measure(meter, "relabel", move.trigger, followed, images=5000, moved=200)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default=",".join(SCENARIOS))
    args = parser.parse_args()
    wanted = set(args.only.split(","))
    app = QApplication(sys.argv)
    app.setQuitOnLastWindowClosed(False)  # the closing scenario closes the window; the measuring goes on
    from app.main_window import window_with_private_settings

    window = window_with_private_settings(Path(tempfile.mkdtemp(prefix="ts-stall-")))
    window.resize(1024, 700)
    window.show()
    meter = StallMeter()
    results = []

    def summary() -> dict:
        return window.session.dataset.summary or {"total": 0, "classes": []}

    settle()
    if "idle" in wanted:
        results.append(measure(meter, "idle", lambda: None, lambda: True, pause_s=2.0))
    if "csv" in wanted:
        csv = large_csv()
        settle()
        results.append(measure(meter, "csv", lambda: window.open_folder(str(csv)),
                               lambda: window.is_ready and summary()["total"] >= 2000
                               and window.session.dataset.scan.task == "multi-label",
                               pause_s=1.0, rows=2000, task="multi-label"))  # the thumbnails show in that time
    if wanted & {"scan", "split", "model"}:
        folder = large_folder()
        settle()
        results.append(measure(meter, "scan", lambda: window.open_folder(str(folder)),
                               lambda: window.is_ready and summary()["total"] >= 5000, images=5000))
        if "split" in wanted:
            spin = window.data_panel.val_spin
            start_value = spin.value()

            def five_steps():
                for i in range(5):
                    QTimer.singleShot(150 * i, lambda: spin.stepBy(1))

            def split_shown():
                val = sum(c["val"] for c in summary()["classes"])
                return abs(spin.value() - (start_value + 0.25)) < 1e-6 and abs(val / 5000 - spin.value()) < 0.01

            results.append(measure(meter, "split", five_steps, split_shown, steps=5))
        if "model" in wanted:
            def built():
                info = window.model_panel.tree_model.model_info
                return info is not None and info.arch == "efficientnet_v2_s"

            combo = window.model_panel.arch_combo
            results.append(measure(meter, "model", lambda: combo.setCurrentIndex(combo.findData("efficientnet_v2_s")),
                                   built, arch="efficientnet_v2_s"))

    if "insight" in wanted:
        folder = large_folder()
        session = window.session
        session.datasets.open_folder(str(folder))
        session.settings.set_arch("resnet18")
        wait_until(lambda: window.is_ready and summary()["total"] >= 5000
                   and window.model_panel.tree_model.model_info.arch == "resnet18", 120, "large folder")
        session.settings.set_weights("none")
        session.plan.apply_preset("feature-extraction")
        session.settings.update_data({"image_size": 32})
        session.settings.update_train({"epochs": 1, "device": "cpu"})
        ended = []
        window.controller.run_finished.connect(ended.append)
        window.session.runs.start()
        wait_until(lambda: bool(ended), 600, "the run for the insight scenario")
        settle()
        insight = window.insight
        window.show_view(insight)
        settle()

        def filled():
            return insight.matrix_model.total() >= 900 and insight.gallery_model.rowCount() > 0

        results.append(measure(meter, "insight", lambda: window.session.insight.open_insight(session.run.folder),
                               filled, pause_s=1.5))  # the thumbnails decode and show in that time
        results[-1]["records"] = insight.matrix_model.total()
        results[-1]["map_points"] = insight.embeddings.point_count()
        results.append(measure(meter, "insight embeddings tab", lambda: insight.tabs.setCurrentIndex(1),
                               lambda: True, pause_s=1.0))
    if "task-insight" in wanted:
        root = Path(tempfile.mkdtemp(prefix="ts-task-runs-"))
        insight = window.insight
        window.show_view(insight)
        page = insight.task_page
        for task in ("multi-label", "regression"):
            folder = task_run(task, large_csv(), root)
            settle()

            def filled(task=task):
                gallery = page.images.gallery_model
                shown = page.label_model.rowCount() == 3 if task == "multi-label" else bool(page.scatter.points())
                return shown and gallery.rowCount() > 0 and gallery.has_thumbnail(gallery.rowCount() - 1)

            results.append(measure(meter, f"task insight {task}",
                                   lambda folder=folder: window.session.insight.open_insight(folder), filled,
                                   images=2000, pause_s=1.0))
            results[-1]["gallery"] = page.images.gallery_model.rowCount()
    if "suspects" in wanted and "insight" in wanted:
        suspects = window.suspects_view
        window.show_view(suspects)
        settle()
        results.append(measure(meter, "suspects", window.session.mending.find_suspects,
                               lambda: suspects.model.rowCount() > 0, pause_s=1.5))  # thumbnails included
        results[-1]["rows"] = suspects.model.rowCount()
    if "runs" in wanted:
        results += runs_scenario(window, meter)
    if wanted & {"try-cam", "continue"}:
        run = train_demo_run(window, summary)
        if "try-cam" in wanted:
            results.append(try_cam_scenario(window, meter, run))
        if "continue" in wanted:
            results.append(continue_scenario(window, meter, run))
    if "project" in wanted:
        results.append(project_scenario(window, meter, summary))
    if "cluster" in wanted:
        results.append(cluster_scenario(window, meter, summary))
    if "relabel" in wanted:
        results.append(relabel_scenario(window, meter, summary))
    if "search" in wanted:  # before the training scenarios: "closing" closes the window
        results.append(search_scenario(window, meter, summary))
    if wanted & {"training", "export", "processes", "closing"}:
        session = window.session
        session.datasets.open_demo()
        session.settings.set_arch("resnet18")
        wait_until(lambda: window.is_ready and summary()["total"] < 5000
                   and window.model_panel.tree_model.model_info.arch == "resnet18", 120, "demo")
        session.settings.set_weights("none")
        session.plan.apply_preset("fine-tune")  # every layer trains: the heaviest case for the window
        session.settings.update_data({"image_size": 64})
        session.settings.update_train({"epochs": 3, "device": "cpu"})
        finished = []
        window.controller.run_finished.connect(finished.append)
        window.controller.run_failed.connect(finished.append)
        settle()
        if wanted & {"training", "export"}:  # the export exports this run
            results.append(measure(meter, "training", window.session.runs.start, lambda: bool(finished),
                                   arch="resnet18", image_size=64, epochs=3, strategy="fine-tune"))
        if "export" in wanted:
            reports = []
            out = Path(tempfile.mkdtemp(prefix="ts-export-"))
            session.exports.finished.connect(lambda folder, done: reports.append(done))
            session.exports.failed.connect(reports.append)
            settle()
            results.append(measure(meter, "export", lambda: session.exports.start(str(out), ["pt", "onnx"]),
                                   lambda: bool(reports), formats=["pt", "onnx"], process=True))
        if "processes" in wanted:
            session.settings.update_train({"processes": 2})
            finished.clear()
            settle()
            results.append(measure(meter, "processes", window.session.runs.start, lambda: bool(finished),
                                   arch="resnet18", image_size=64, epochs=3, strategy="fine-tune", processes=2))
        if "closing" in wanted:
            session.settings.update_train({"processes": 2, "epochs": 50})
            epochs = []
            window.controller.epoch_finished.connect(epochs.append)
            window.session.runs.start()
            wait_until(lambda: bool(epochs), 600, "the first epoch of the run to close")
            results.append(measure(meter, "closing", window.close, lambda: not window.isVisible(),
                                   arch="resnet18", image_size=64, strategy="fine-tune", processes=2))
    window.close()
    for line in results:
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
