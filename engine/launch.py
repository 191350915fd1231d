"""`train --nproc N`: the same command again as N local processes, started by torchrun's launcher.

torch.distributed.run is called in this process (not as a subprocess), so its failure report
arrives as an exception: its multi-line summary and its logging are left out, and the exit code
of the rank that failed first (2 for bad input, 1 for a failed run) becomes ours. Rank 0 writes
to this terminal; the other ranks' output goes to log files, and when one of them failed where
rank 0 did not, its one-line error is printed here, naming the rank. So an error is one line,
not one per process.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

from .errors import UserError

ERROR_PREFIX = "transfer-studio: error: "


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

    logging.getLogger("torch.distributed").setLevel(logging.CRITICAL)  # its notes are not for the person
    quiet_ranks = ",".join(f"{rank}:3" for rank in range(1, nproc))  # stdout and stderr into log files
    with tempfile.TemporaryDirectory(prefix="transfer-studio-ranks-") as logs:
        launcher_args = parse_args(["--standalone", f"--nproc-per-node={nproc}", "--monitor-interval=0.5",
                                    "--log-dir", logs, "--redirects", quiet_ranks, "-m", module, *args])
        # torchrun gives each rank one thread unless told otherwise: CPU ranks get their share of the cores
        given_threads = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = given_threads or str(max(1, (os.cpu_count() or 1) // nproc))
        try:
            run(launcher_args)
        except ChildFailedError as exc:
            return _failure_code(exc.failures, Path(logs))
        finally:
            sys.stdout.flush()
            if given_threads is None:
                del os.environ["OMP_NUM_THREADS"]
    return 0


def _failure_code(failures: dict, logs: Path) -> int:
    """The exit code of the lowest rank that exited with an error (not killed after another
    failed); its one-line error printed here unless it was rank 0's, already on the terminal."""
    exited = sorted(rank for rank, failure in failures.items() if failure.exitcode > 0)
    if not exited:
        return 1  # killed by a signal: a failed run
    rank = exited[0]
    if rank != 0:
        line = _last_error_line(logs, failures[rank].local_rank)
        print(f"{ERROR_PREFIX}rank {rank}: {line or f'exited with code {failures[rank].exitcode}'}", file=sys.stderr)
    return failures[rank].exitcode


def _last_error_line(logs: Path, local_rank: int) -> str | None:
    for log in sorted(logs.glob(f"**/{local_rank}/stderr.log")):
        errors = [line for line in log.read_text(errors="replace").splitlines() if line.startswith(ERROR_PREFIX)]
        if errors:
            return errors[-1][len(ERROR_PREFIX):]
    return None
