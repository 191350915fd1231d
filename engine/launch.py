"""`train --nproc N`: the same command again as N local processes, started by torchrun's launcher.

torch.distributed.run is called in this process (not as a subprocess), so its failure report
arrives as an exception: its multi-line summary is left out and the exit code of the rank that
failed (rank 0's when it failed: 2 for bad input, 1 for a failed run) becomes ours. Each rank
prints its own one-line error; the launcher's logging is kept quiet.
"""

from __future__ import annotations

import logging
import sys

from .errors import UserError


def without_option(argv: list[str], option: str) -> list[str]:
    """`argv` without `option VALUE` / `option=VALUE`."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            kept.append(arg)
    return kept


def launch_local(nproc: int, module: str, args: list[str]) -> int:
    """Run `python -m module *args` as `nproc` processes of one process group on this machine;
    the exit code of the first that failed, 0 when all succeeded."""
    if nproc < 2:
        raise UserError(f"--nproc {nproc}: several processes means 2 or more")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    logging.getLogger("torch.distributed").setLevel(logging.ERROR)  # its INFO/WARNING notes are not for the person
    launcher_args = parse_args(["--standalone", f"--nproc-per-node={nproc}", "--monitor-interval=0.5",
                                "-m", module, *args])
    try:
        run(launcher_args)
    except ChildFailedError as exc:
        failures = exc.failures
        first = failures.get(0) or failures[min(failures)]
        code = first.exitcode
        return code if code > 0 else 1  # a rank killed by a signal: a failed run
    finally:
        sys.stdout.flush()
    return 0
