"""The house's arrows, read from the source (AST): every import, also those inside functions,
except type-checking-only ones.

- engine/'s sub-packages form one layered order (ENGINE_LAYERS); an import may point to its own
  package or one below, never up;
- no import cycle between modules of the engine, of app/ or of widgets/;
- widgets/ never imports app/; the engine imports neither Qt nor the app nor the widgets.
"""

from __future__ import annotations


import pytest

from tests import import_graph
from tests.import_graph import ROOT, cycles, graph, imported_modules, module_name, source_files

# Lowest first: a package may import from itself and from those before it.
ENGINE_LAYERS = ["engine", "engine.data", "engine.model", "engine.plan", "engine.runs", "engine.distributed",
                 "engine.training", "engine.deploy", "engine.insight", "engine.curation", "engine.search"]
QT_MODULES = ("PySide6", "pyqtgraph", "shiboken6")


def engine_layer(module: str) -> int:
    parts = module.split(".")
    package = ".".join(parts[:2]) if len(parts) > 1 and ".".join(parts[:2]) in ENGINE_LAYERS else "engine"
    return ENGINE_LAYERS.index(package)


def test_every_engine_package_has_a_place_in_the_order():
    packages = {module_name(p.parent) for p in (ROOT / "engine").rglob("__init__.py")}
    assert packages == set(ENGINE_LAYERS)


def test_engine_imports_point_down_the_layers_only():
    upward = []
    for path in source_files("engine"):
        here = module_name(path)
        for name in imported_modules(path):
            if name.split(".")[0] == "engine" and engine_layer(name) > engine_layer(here):
                upward.append(f"{here} -> {name}")
    assert upward == []


@pytest.mark.parametrize("top", ["engine", "app", "widgets"])
def test_no_import_cycles(top):
    assert cycles(graph(top)) == []


def test_widgets_never_import_the_app_and_the_engine_never_imports_qt_app_or_widgets():
    wrong = []
    for top, forbidden in (("widgets", ("app",)), ("engine", ("app", "widgets", *QT_MODULES))):
        for path in source_files(top):
            wrong += [f"{module_name(path)} -> {name}" for name in imported_modules(path)
                      if name.split(".")[0] in forbidden]
    assert wrong == []


def test_the_reader_finds_what_it_must_refuse(tmp_path, monkeypatch):
    """The checks above can fail: a planted upward import, a cycle and a Qt import are all seen."""
    monkeypatch.setattr(import_graph, "ROOT", tmp_path)
    for package in ("engine", "engine/data", "engine/training"):
        (tmp_path / package).mkdir(parents=True, exist_ok=True)
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "engine/data/scan.py").write_text("def f():\n    from engine.training.loop import g\n")
    (tmp_path / "engine/training/loop.py").write_text(
        "from typing import TYPE_CHECKING\nfrom engine.data import scan\nimport PySide6.QtCore\n"
        "if TYPE_CHECKING:\n    from engine.insight import x\ndef g(): ...\n")
    scan, loop = tmp_path / "engine/data/scan.py", tmp_path / "engine/training/loop.py"
    assert imported_modules(scan) == {"engine.training.loop"}
    assert imported_modules(loop) == {"typing", "engine.data.scan", "PySide6.QtCore"}
    assert engine_layer("engine.training.loop") > engine_layer("engine.data.scan")
    assert cycles(graph("engine")) == [["engine.data.scan", "engine.training.loop"]]


def test_no_test_module_imports_another():
    """Shared builders live in conftest.py or a helpers module, so each test file stands alone."""
    wrong = [f"{module_name(path)} -> {name}" for path in source_files("tests")
             for name in imported_modules(path) if name.startswith("tests.test_")]
    assert wrong == []
