#!/usr/bin/env python3
"""Set up everything Transfer Studio needs, then open the window or run the tests.

    python3 scripts/quickstart.py          # creates .venv, installs, opens the window on the demo dataset
    python3 scripts/quickstart.py test     # creates .venv, installs, runs the test suite
    python3 scripts/quickstart.py -- ARGS  # any transfer-studio command, e.g. -- train --epochs 3

Only the Python standard library is used here, so a fresh machine with Python 3.10+ suffices.
Re-running is fast: the install is repeated only when pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("TRANSFER_STUDIO_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")


def say(message: str) -> None:
    print(f"[quickstart] {message}", file=sys.stderr, flush=True)


def ensure_environment() -> None:
    if sys.version_info < (3, 10):
        sys.exit(f"Transfer Studio needs Python 3.10 or newer; this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        say(f"creating virtual environment in {VENV}")
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = VENV / ".transfer-studio-installed"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == wanted:
        return
    say("installing Transfer Studio and its dependencies (torch is large: the first time takes a while)")
    subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[test,export]"], check=True)
    stamp.write_text(wanted + "\n")


# What Qt's X11 plugin needs from a Debian/Ubuntu system beyond what desktops always have.
QT_XCB_PACKAGES = ["libxcb-cursor0", "libxcb-icccm4", "libxcb-keysyms1", "libxcb-image0", "libxcb-render-util0",
                   "libxcb-randr0", "libxcb-shape0", "libxcb-xfixes0", "libxcb-xkb1", "libxkbcommon-x11-0",
                   "libxcb-sync1", "libxcb-xinerama0", "libegl1", "libfontconfig1", "libdbus-1-3"]


def missing_qt_libraries() -> list[str]:
    """Shared libraries Qt's xcb plugin cannot find (Linux only)."""
    import ctypes.util

    qt = subprocess.run([str(PYTHON), "-c", "import os, PySide6; print(os.path.join(os.path.dirname(PySide6.__file__), 'Qt'))"],
                        capture_output=True, text=True).stdout.strip()
    missing = set()
    for binary in (Path(qt) / "plugins" / "platforms" / "libqxcb.so", Path(qt) / "lib" / "libQt6XcbQpa.so.6"):
        if binary.exists() and shutil.which("ldd"):
            out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
            missing |= {line.split()[0] for line in out.splitlines() if "not found" in line}
    if ctypes.util.find_library("xcb-cursor") is None:  # loaded at run time, so ldd cannot see it
        missing.add("libxcb-cursor.so.0")
    return sorted(missing)


def ensure_gui_can_start() -> None:
    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM", "xcb") != "xcb":
        return
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        sys.exit("[quickstart] no screen here (DISPLAY is not set): run it on a desktop, or under `xvfb-run`")
    missing = missing_qt_libraries()
    if not missing:
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        say(f"installing the system libraries Qt needs ({', '.join(missing)})")
        install = ["apt-get", "install", "-y", "-qq", *QT_XCB_PACKAGES]
        if subprocess.call(install, stdout=subprocess.DEVNULL) != 0:
            subprocess.call(["apt-get", "update", "-qq"], stdout=subprocess.DEVNULL)
            subprocess.check_call(install, stdout=subprocess.DEVNULL)
        return
    sys.exit(f"[quickstart] Qt needs system libraries that are missing ({', '.join(missing)}); on Debian/Ubuntu: "
             f"sudo apt-get install {' '.join(QT_XCB_PACKAGES)}")


def test_workers(pytest_args: list[str]) -> list[str]:
    """pytest-xdist's options: one test process per core (at most 4: each holds torch and a model), the
    tests of a file kept together (their module fixtures are built once). Each process computes on one
    thread (tests/conftest.py). A process that dies ends the run at once, red: xdist's loadfile
    scheduler, left to replace it, once waited forever. Given `-n` or `-p no:xdist`, it runs as given."""
    if any(a.startswith(("-n", "--numprocesses", "--dist")) or a == "no:xdist" for a in pytest_args):
        return []
    return ["-n", str(max(1, min(4, os.cpu_count() or 1))), "--dist", "loadfile", "--max-worker-restart", "0"]


def main(argv: list[str]) -> int:
    ensure_environment()
    if argv[:1] == ["test"]:
        env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
        return subprocess.call([str(PYTHON), "-m", "pytest", *test_workers(argv[1:]), *argv[1:]], cwd=ROOT, env=env)
    args = argv[1:] if argv[:1] == ["--"] else argv
    if not args or args[0] == "gui":
        ensure_gui_can_start()
    return subprocess.call([str(PYTHON), "-m", "app", *args], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
