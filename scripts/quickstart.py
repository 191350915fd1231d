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


def main(argv: list[str]) -> int:
    ensure_environment()
    if argv[:1] == ["test"]:
        env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
        return subprocess.call([str(PYTHON), "-m", "pytest", *argv[1:]], cwd=ROOT, env=env)
    args = argv[1:] if argv[:1] == ["--"] else argv
    return subprocess.call([str(PYTHON), "-m", "app", *args], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
