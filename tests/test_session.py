"""The window's session without the window: one source of truth for the configuration and the run."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import app.session_tasks as session_tasks
import app.worker as worker_module
from app.session import Session
from app.session_state import WINDOW_DEFAULTS
from engine.config import HEAD_ONLY_BASE_LR, PlanConfig, PlanEdit, RunConfig, TrainConfig
from engine.data.dataset import list_dataset, scan_dataset, split_listing


@pytest.fixture
def session(qtbot, tmp_path):
    s = Session(tmp_path / "runs")
    yield s
    s.shutdown()


def open_and_wait(qtbot, session, folder):
    session.datasets.open_folder(str(folder))
    qtbot.waitUntil(lambda: session.is_ready, timeout=60_000)


def test_a_split_of_a_listing_is_the_scan(demo_dir):
    listing = list_dataset(demo_dir)
    for fraction, seed in ((0.2, 0), (0.35, 3), (0.0, 1)):
        assert split_listing(listing, fraction, seed) == scan_dataset(demo_dir, fraction, seed)


def test_a_change_of_split_does_not_list_the_folder_again(qtbot, session, demo_dir, monkeypatch):
    listings, splits = [], []
    monkeypatch.setattr(session_tasks, "list_dataset", lambda *a, **k: listings.append(a) or list_dataset(*a, **k))
    monkeypatch.setattr(session_tasks, "split_listing", lambda *a: splits.append(a[1:]) or split_listing(*a))
    open_and_wait(qtbot, session, demo_dir)
    assert len(listings) == 1 and len(splits) == 1
    for step in range(1, 6):  # five quick steps of the Validation box
        session.settings.update_data({"val_fraction": 0.2 + 0.05 * step})
    qtbot.waitUntil(lambda: session.dataset.split == (pytest.approx(0.45), 0), timeout=10_000)
    assert len(listings) == 1, "a split change read the folder again"
    assert splits[1:] == [(pytest.approx(0.45), 0)], "one split for a burst of changes"
    val = sum(c["val"] for c in session.dataset.summary["classes"])
    assert val == 4 * round(16 * 0.45)
    session.settings.update_train({"seed": 7})  # the seed decides the split too
    qtbot.waitUntil(lambda: session.dataset.split == (pytest.approx(0.45), 7), timeout=10_000)
    assert len(listings) == 1


def test_the_lr_settings_live_in_the_session_only(qtbot, session):
    plans = []
    session.configuration.plan_changed.connect(plans.append)
    session.plan.set_base_lr(3e-4)
    session.plan.set_discriminative_factor(4.0)
    session.plan.set_gradual_every(2)
    assert session.config().plan == replace(WINDOW_DEFAULTS.plan, base_lr=3e-4, discriminative_factor=4.0,
                                            gradual_every=2)
    session.plan.apply_preset("discriminative")  # a preset keeps the LR settings, drops the tree's edits
    assert session.config().plan.base_lr == 3e-4 and session.config().plan.strategy == "discriminative"
    session.plan.adopt_plan(session.config().plan.with_edit(PlanEdit("layer1", frozen=True)))
    session.plan.apply_preset("fine-tune")
    assert session.config().plan.edits == () and session.config().plan.discriminative_factor == 4.0
    assert [p.strategy for p in plans][-2:] == ["discriminative", "fine-tune"]
    session.plan.set_base_lr(3e-4)  # no change: nobody is told
    assert len(plans) == 6


def test_a_preset_brings_its_default_lr_unless_the_person_set_one(qtbot, session):
    assert session.config().plan.base_lr == HEAD_ONLY_BASE_LR  # the window starts with feature extraction
    session.plan.apply_preset("fine-tune")
    assert session.config().plan.base_lr == PlanConfig.base_lr
    session.plan.undo()
    assert session.config().plan.base_lr == HEAD_ONLY_BASE_LR
    session.plan.apply_preset("fine-tune")
    session.plan.set_base_lr(3e-4)
    session.plan.apply_preset("feature-extraction")
    assert session.config().plan.base_lr == 3e-4  # the person's own LR stays


def test_defaults_fit_a_small_dataset():
    assert WINDOW_DEFAULTS.plan.strategy == "feature-extraction"  # the guide, below 500 images
    assert WINDOW_DEFAULTS.data.image_size <= 128 and WINDOW_DEFAULTS.train.epochs <= 10
    assert WINDOW_DEFAULTS.data.augment == "none"  # lets the frozen trunk's features be cached


def test_a_configuration_applies_all_or_nothing(qtbot, session):
    before = session.config()
    bad = [replace(before, model=replace(before.model, arch="resnet1800")),
           replace(before, train=replace(before.train, epochs=0)),
           replace(before, plan=replace(before.plan, strategy="magic"))]
    errors = []
    session.messages.error_raised.connect(errors.append)
    for config in bad:
        assert not session.settings.apply_config(config)
        assert session.config() == before
    assert "resnet1800" in errors[0] and len(errors) == 3


def test_layer_edits_of_a_model_not_built_yet_are_checked_off_the_gui_thread(qtbot, session, demo_dir, monkeypatch):
    """A project's edits on another model than the one shown: building that model's structure to check
    them took 1 s on the GUI thread for an efficientnet_v2_s (bench/gui_stall.py's project scenario).
    It is built in the background; the configuration is shown whole once they pass, else refused whole."""
    import threading

    import app.settings_controller as settings_module

    built_on = []
    real = settings_module.structure_info
    monkeypatch.setattr(settings_module, "structure_info",
                        lambda *args: (real(*args), built_on.append(threading.current_thread()))[0])
    open_and_wait(qtbot, session, demo_dir)
    before = session.config()
    good = replace(before, model=replace(before.model, arch="resnet34"),
                   plan=replace(before.plan, edits=(PlanEdit("layer1.2", frozen=True),)))  # resnet18 has no layer1.2
    bad = replace(good, plan=replace(good.plan, edits=(PlanEdit("layer9", frozen=True),)))
    errors, shown = [], []
    session.messages.error_raised.connect(errors.append)

    assert session.settings.apply_config(bad, lambda: shown.append("bad"))
    assert session.config() == before  # nothing of it while its edits are checked
    qtbot.waitUntil(lambda: any("layer9" in e for e in errors), timeout=30_000)
    assert session.config() == before and shown == []

    assert session.settings.apply_config(good, lambda: shown.append("good"))
    qtbot.waitUntil(lambda: shown == ["good"], timeout=30_000)
    assert session.config() == good
    assert len(built_on) == 2 and threading.main_thread() not in built_on

    # One chosen after it replaces a configuration still being checked: that one is never shown.
    qtbot.waitUntil(lambda: session.model_info is not None and session.model_info.arch == "resnet34", timeout=30_000)
    assert session.settings.apply_config(replace(good, model=replace(good.model, arch="resnet50")),
                                         lambda: shown.append("replaced"))
    known = replace(good, plan=replace(good.plan, edits=(PlanEdit("layer4", frozen=True),)))
    assert session.settings.apply_config(known, lambda: shown.append("known"))
    assert shown == ["good", "known"] and session.config() == known  # resnet34's structure is at hand: at once
    qtbot.waitUntil(lambda: len(built_on) == 3, timeout=30_000)  # resnet50's, built all the same
    qtbot.wait(200)
    assert shown == ["good", "known"] and session.config() == known


def test_a_project_on_another_folder_builds_its_model_once(qtbot, session, demo_dir, tmp_path, monkeypatch):
    """Opening a project of another model on another folder: the layer tree's structure is built once,
    for the new folder's class count (not first for the count of the folder shown before), and the
    advice reads that same structure. Each extra build of an efficientnet_v2_s was 0.3-0.5 s of Python
    holding the GIL from the GUI thread (bench/gui_stall.py's project scenario)."""
    from collections import OrderedDict

    from engine.data.demo import write_demo_dataset

    builds = []
    real = session_tasks.model_structure
    monkeypatch.setattr(session_tasks, "_STRUCTURES", OrderedDict())  # none cached by earlier tests
    monkeypatch.setattr(session_tasks, "model_structure", lambda *args: builds.append(args) or real(*args))
    open_and_wait(qtbot, session, demo_dir)  # 4 classes
    qtbot.waitUntil(lambda: session.advisor.advice is not None, timeout=30_000)
    other = write_demo_dataset(tmp_path / "three", classes=3, per_class=8, size=32, seed=1)
    config = session.config()
    project = replace(config, data=replace(config.data, root=str(other)), model=replace(config.model, arch="resnet34"))
    builds.clear()
    session.settings.apply_config(project)
    qtbot.waitUntil(lambda: session.is_ready and session.model_info.arch == "resnet34"
                    and session.advisor.advice is not None and session.advisor.advice.figures["classes"] == 3,
                    timeout=30_000)
    assert session.model_info.num_classes == 3
    assert builds == [("resnet34", 3, 224)]


def test_a_folder_that_cannot_be_listed_still_shows_the_models_layer_tree(qtbot, session, demo_dir, tmp_path):
    """The tree waits for a listing's class count, not for one that never comes."""
    open_and_wait(qtbot, session, demo_dir)
    session.datasets.open_folder(str(tmp_path / "no such folder"))
    session.settings.set_arch("resnet34")  # while the folder is being read: the tree waits for its classes
    assert session.model_info is None
    qtbot.waitUntil(lambda: bool(session.dataset.error), timeout=10_000)
    qtbot.waitUntil(lambda: session.model_info is not None, timeout=30_000)
    assert session.model_info.arch == "resnet34"


def test_a_garbage_weights_file_is_one_line_and_not_offered(qtbot, session, demo_dir, tmp_path):
    open_and_wait(qtbot, session, demo_dir)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x80\x02.")  # torch's weights-only unpickler: "IndexError: pop from empty list"
    errors = []
    session.messages.error_raised.connect(errors.append)
    session.settings.set_weights(str(garbage))
    assert session.settings.weights_files == [str(garbage)]  # offered while it is being checked
    qtbot.waitUntil(lambda: bool(errors), timeout=30_000)
    assert "garbage.pth" in errors[0] and "pop from empty list" not in errors[0].split("(")[0]
    assert "\n" not in errors[0]
    assert session.settings.weights_files == [] and session.config().model.weights == "imagenet"


@pytest.mark.slow
def test_good_weights_files_are_kept_few(qtbot, session, demo_dir, tmp_path, resnet18_weights_file):
    open_and_wait(qtbot, session, demo_dir)
    state = torch.load(resnet18_weights_file, weights_only=True)
    checked, paths = [], []
    session.messages.notice.connect(checked.append)
    for i in range(session_tasks.MAX_WEIGHTS_FILES + 2):
        paths.append(str(tmp_path / f"w{i}.pt"))
        torch.save(state, paths[-1])
        session.settings.set_weights(paths[-1])
        qtbot.waitUntil(lambda: len(checked) == len(paths), timeout=30_000)
    assert session.settings.weights_files == paths[::-1][:session_tasks.MAX_WEIGHTS_FILES]
    assert session.config().model.weights == paths[-1]


def test_the_training_thread_is_lowered_relative_to_the_process(monkeypatch):
    calls = []
    monkeypatch.setattr(worker_module.sys, "platform", "linux")
    monkeypatch.setattr(worker_module.os, "getpriority", lambda which, who: 15)  # started with nice -n 15
    monkeypatch.setattr(worker_module.os, "setpriority", lambda which, who, value: calls.append(value))
    worker_module.lower_this_threads_priority()
    assert calls == [19]  # 15 + 10, capped at the lowest priority
    monkeypatch.setattr(worker_module.os, "getpriority", lambda which, who: -5)
    worker_module.lower_this_threads_priority()
    assert calls[-1] == 5  # relative: never a fixed 10 that a window started at 15 would be outranked by


def test_the_latest_run_is_found_again(qtbot, tmp_path, demo_dir):
    from engine.runs.run_folder import RunFolder

    config = RunConfig(data=replace(WINDOW_DEFAULTS.data, root=str(demo_dir)),
                       plan=PlanConfig(strategy="fine-tune"), train=TrainConfig(epochs=3))
    for name in ("resnet18-1", "resnet18-2"):
        RunFolder(tmp_path / "runs" / name).write_record({"config": replace(config, out_dir=name).to_dict()})
    session = Session(tmp_path / "runs")
    try:
        assert session.runs.restore_latest_run()
        assert session.run.folder.path.name == "resnet18-2" and session.config() == config
        assert not session.run.can_export and not session.run.can_continue  # no checkpoint, no resume state
    finally:
        session.shutdown()


def test_a_weights_file_is_checked_again_for_another_architecture(qtbot, session, demo_dir, resnet18_weights_file):
    open_and_wait(qtbot, session, demo_dir)
    errors = []
    session.messages.error_raised.connect(lambda text: text and errors.append(text))
    session.settings.set_weights(str(resnet18_weights_file))
    qtbot.waitUntil(lambda: session.settings.weights_files == [str(resnet18_weights_file)], timeout=30_000)
    session.settings.set_arch("mobilenet_v3_small")  # resnet18's tensors do not fit it
    qtbot.waitUntil(lambda: bool(errors), timeout=30_000)
    assert "does not fit" in errors[0] and session.config().model.weights == "imagenet"


@pytest.mark.slow
def test_garbage_is_collected_on_the_gui_thread_only_while_a_window_lives(qtbot, window):
    # A Qt wrapper collected on the training thread deadlocks against the GUI thread (seen in CI):
    # automatic collection is off while the window lives and the GUI thread collects instead.
    import gc
    import weakref

    from PySide6.QtCore import QObject

    assert not gc.isenabled()

    class Cyclic(QObject):
        pass

    obj = Cyclic()
    obj.myself = obj
    alive = weakref.ref(obj)
    del obj
    assert alive() is not None  # a cycle: only the collector frees it
    qtbot.waitUntil(lambda: alive() is None, timeout=3000)  # the GUI thread's next tick did
    window.close()
    assert gc.isenabled()


def test_a_background_job_starts_after_the_widgets_its_caller_added_are_painted(qtbot):
    """A job submitted while the window lays out new widgets starts only once they are painted: one
    started between the layout and the paint took the GIL from it (the layer tree's ~600 calls into
    Python while painting, 100 ms when a model was built meanwhile)."""
    from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

    events = []

    class Noted(QLabel):
        def paintEvent(self, event):
            events.append("painted")
            super().paintEvent(event)

    window = QWidget()
    qtbot.addWidget(window)
    layout = QVBoxLayout(window)
    layout.addWidget(QLabel("before"))
    window.show()
    qtbot.waitExposed(window)
    tasks, done = worker_module.BackgroundTasks(), []
    layout.addWidget(Noted("a row a listing added"))  # shown and laid out by posted events, then painted
    tasks.submit("job", lambda: events.append("job started"), done.append, done.append)
    qtbot.waitUntil(lambda: bool(done), timeout=5000)
    assert events.index("painted") < events.index("job started")
