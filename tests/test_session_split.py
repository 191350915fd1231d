"""The window's session split by job (issue 20), read from the source: every session controller is a
small module, and the main window is layout and wiring only: it imports nothing of the engine at
run time, calls no run-folder reader, no suspects search and no insight work itself, and reaches
into no other object's private parts. Each check is also shown to fail on code that breaks it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tests.import_graph as layers

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app"
MAX_CONTROLLER_LINES = 400
CONTROLLERS = ["session.py", "session_state.py", "session_tasks.py", "session_devices.py", "plan_history.py",
               "data_edit_session.py", "insight_session.py", "dataset_controller.py", "plan_controller.py",
               "advice_controller.py", "settings_controller.py", "preview_controller.py", "mending_controller.py",
               "runs_controller.py", "run_list_controller.py", "export_controller.py", "run_closer.py"]
# The types the window's slots take, imported for annotations only (under TYPE_CHECKING).
WINDOW_ENGINE_TYPES = {"BatchEvent", "EpochEvent", "RunStarted", "TrainConfig", "ModelInfo"}
# What only a controller calls: run folders read or removed, the suspects search, the insight and
# the runs list's work, a past run opened.
CONTROLLER_CALLS = {"RunFolder", "read_record", "read_run", "read_epochs", "read_metrics", "load_config",
                    "latest_run", "moveToTrash", "has_checkpoint", "can_resume", "find", "find_suspects",
                    "open_insight", "load_history", "compare", "delete_run", "preview_run", "open_run",
                    "fit", "load_project", "resolve_precision"}


def controller_modules() -> list[Path]:
    """The session's controllers: the named ones and any module named like one."""
    found = {APP / name for name in CONTROLLERS}
    found |= set(APP.glob("*_controller.py")) | set(APP.glob("session_*.py"))
    return sorted(found)


def too_long(paths: list[Path], limit: int = MAX_CONTROLLER_LINES) -> list[str]:
    return [f"{path.name}: {n} lines" for path in paths if (n := len(path.read_text().splitlines())) > limit]


def type_checking_engine_names(tree: ast.Module) -> set[str]:
    """Names the module imports from the engine under `if TYPE_CHECKING:`."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and layers._type_checking_only(node):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and (inner.module or "").split(".")[0] == "engine":
                    names |= {alias.name for alias in inner.names}
    return names


def _called_name(call: ast.Call) -> str:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def window_violations(source: str, class_name: str = "MainWindow") -> list[str]:
    """What in the window class is not layout or wiring: a controller's call, or a reach into
    another object's private attribute (a panel's, a controller's)."""
    tree = ast.parse(source)
    window = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == class_name)
    found = []
    for method in (node for node in window.body if isinstance(node, ast.FunctionDef)):
        for node in ast.walk(method):
            if isinstance(node, ast.Call) and _called_name(node) in CONTROLLER_CALLS:
                found.append(f"{method.name} calls {_called_name(node)}")
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and not (isinstance(node.value, ast.Name) and node.value.id == "self")):
                found.append(f"{method.name} reaches into {ast.unparse(node)}")
    return found


def state_read_back_with_defaults(source: str) -> list[str]:
    """getattr(x, name, default) and hasattr: state that may or may not have been set somewhere."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if (node.func.id == "getattr" and len(node.args) == 3) or node.func.id == "hasattr":
                found.append(ast.unparse(node))
    return found


# --- the promises ---------------------------------------------------------------------------------


def test_every_session_controller_is_small():
    modules = controller_modules()
    assert len(modules) >= len(CONTROLLERS) and all(path.is_file() for path in modules)
    assert too_long(modules) == []


def test_the_main_window_imports_nothing_of_the_engine_at_run_time():
    window = APP / "main_window.py"
    runtime = {name for name in layers.imported_modules(window) if name.split(".")[0] in ("engine", "torch")}
    assert runtime == set()
    assert type_checking_engine_names(ast.parse(window.read_text())) <= WINDOW_ENGINE_TYPES


def test_the_main_window_holds_no_controller_code():
    assert window_violations((APP / "main_window.py").read_text()) == []


def test_no_controller_reads_back_state_that_may_not_be_set():
    found = {path.name: state_read_back_with_defaults(path.read_text()) for path in controller_modules()}
    assert {name: calls for name, calls in found.items() if calls} == {}


# --- the checks can fail ----------------------------------------------------------------------------

PLANTED_WINDOW = '''
from typing import TYPE_CHECKING
from engine.runs.run_folder import RunFolder
if TYPE_CHECKING:
    from engine.events import BatchEvent
    from engine.data.dataset import list_dataset

class MainWindow:
    def _open_run(self, path):
        record = RunFolder(path).read_record()
        return self.session.runs._shown_run

    def find_suspects(self):
        self.session.mending.suspect_finder.find(self.session.config(), "", None)

    def _fit(self):
        return self._data_area.sizeHint(), self.model_panel._tree_model
'''


def test_the_checks_find_what_they_must_refuse(tmp_path, monkeypatch):
    monkeypatch.setattr(layers, "ROOT", tmp_path)
    (tmp_path / "app").mkdir()
    window = tmp_path / "app" / "main_window.py"
    window.write_text(PLANTED_WINDOW)
    assert layers.imported_modules(window) == {"typing", "engine.runs.run_folder"}  # TYPE_CHECKING ones aside
    assert type_checking_engine_names(ast.parse(PLANTED_WINDOW)) == {"BatchEvent", "list_dataset"}
    assert sorted(window_violations(PLANTED_WINDOW)) == [
        "_fit reaches into self.model_panel._tree_model", "_open_run calls RunFolder", "_open_run calls read_record",
        "_open_run reaches into self.session.runs._shown_run", "find_suspects calls find"]
    assert state_read_back_with_defaults("x = getattr(self, '_pending', None)\ny = getattr(c, 'k')") == [
        "getattr(self, '_pending', None)"]
    long = tmp_path / "app" / "big_controller.py"
    long.write_text("x = 1\n" * (MAX_CONTROLLER_LINES + 1))
    assert too_long([long, window]) == [f"big_controller.py: {MAX_CONTROLLER_LINES + 1} lines"]


@pytest.mark.parametrize("name", ["runs_controller.py", "run_list_controller.py", "mending_controller.py"])
def test_the_controller_calls_named_are_the_ones_the_controllers_make(name):
    """The Runs and Suspects tabs' work, which MainWindow held before, is in its controllers, and
    CONTROLLER_CALLS names what they call: a check that finds nothing there would find nothing anywhere."""
    source = (APP / name).read_text()
    controller = next(node.name for node in ast.parse(source).body
                      if isinstance(node, ast.ClassDef) and node.name.endswith("Controller"))
    assert any(" calls " in found for found in window_violations(source, controller))


@pytest.mark.slow
def test_the_window_starts_the_loader_workers_server_off_the_gui_thread(qtbot, tmp_path, monkeypatch):
    import threading

    import app.session
    from app.main_window import window_with_private_settings
    from engine.data.dataset import start_worker_server

    started_on = []
    monkeypatch.setattr(app.session, "start_worker_server",
                        lambda: (started_on.append(threading.current_thread()), start_worker_server())[1])
    win = window_with_private_settings(tmp_path / "window")
    qtbot.addWidget(win)
    qtbot.waitUntil(lambda: bool(started_on), timeout=30_000)
    assert started_on[0] is not threading.main_thread()
    win.close()
