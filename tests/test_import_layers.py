"""The house's arrows, read from the source (AST): every import, also those inside functions,
except type-checking-only ones.

- engine/'s sub-packages form one layered order (ENGINE_LAYERS); an import may point to its own
  package or one below, never up;
- no import cycle between modules of the engine, of app/ or of widgets/;
- widgets/ never imports app/; the engine imports neither Qt nor the app nor the widgets.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Lowest first: a package may import from itself and from those before it.
ENGINE_LAYERS = ["engine", "engine.data", "engine.model", "engine.plan", "engine.runs", "engine.distributed",
                 "engine.training", "engine.deploy", "engine.insight", "engine.curation"]
QT_MODULES = ("PySide6", "pyqtgraph", "shiboken6")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module `path` imports at run time (a `from X import y` counts
    as X.y where X.y is a module of ours, else as X)."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking_only(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in child.names:
                    candidate = f"{base}.{alias.name}"
                    found.add(candidate if _is_our_module(candidate) else base)
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return found


def _is_our_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def source_files(top: str) -> list[Path]:
    return sorted((ROOT / top).rglob("*.py"))


def graph(top: str) -> dict[str, set[str]]:
    """Module -> the modules of the same top-level package it imports."""
    edges = {}
    for path in source_files(top):
        ours = {name for name in imported_modules(path) if name.split(".")[0] == top and _is_our_module(name)}
        edges[module_name(path)] = ours - {module_name(path)}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in edges:
                continue
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return found


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
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
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
