"""`train --nproc N`: the same command again as N local processes, started by torchrun's launcher.

torch.distributed.run is called in this process (not as a subprocess), so its failure report
arrives as an exception: its multi-line summary and its logging are left out, and the exit code
of the rank that failed first (2 for bad input, 1 for a failed run) becomes ours. Rank 0 writes
to this terminal; the other ranks' output goes to log files, and when one of them failed where
rank 0 did not, its one-line error is printed here, naming the rank. So an error is one line,
not one per process (two when rank 0 only lost that rank: "another process of this run failed").
Each rank also leaves its line in the error file torchrun names (report_error), which is how
rank 0's line is known here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from engine.errors import UserError

ERROR_PREFIX = "transfer-studio: error: "
# A rank's line when a collective failed because another rank was gone: that rank's error is the one to show.
ANOTHER_PROCESS_FAILED = "another process of this run failed"


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
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    logging.getLogger("torch.distributed").setLevel(logging.CRITICAL)  # its notes are not for the person
    with tempfile.TemporaryDirectory(prefix="transfer-studio-ranks-") as logs:
        # torchrun gives each rank one thread unless told otherwise: CPU ranks get their share of the cores
        given_threads = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = given_threads or str(max(1, (os.cpu_count() or 1) // nproc))
        try:
            _launcher(nproc, module, args, logs)()
        except ChildFailedError as exc:
            return _failure_code(exc.failures, Path(logs))
        except SignalException as exc:  # SIGTERM or SIGINT to this launcher: it has ended the ranks already
            report_error(f"stopped by {exc.sigval.name}; every process of the run was ended")
            return 128 + int(exc.sigval)
        finally:
            with contextlib.suppress(OSError, ValueError, AttributeError):  # a full or closed stdout: run() says so
                sys.stdout.flush()
            if given_threads is None:
                del os.environ["OMP_NUM_THREADS"]
    return 0


def _launcher(nproc: int, module: str, args: list[str], logs: str):
    """torchrun's own launch (torch.distributed.run.run, --standalone), with ranks 1.. writing into
    log files under `logs` and rank 0 to this terminal. The redirects are given as a mapping: the
    text form torchrun parses takes one-digit ranks only, so 11 or more processes would be refused."""
    import uuid

    from torch.distributed.elastic.multiprocessing.api import DefaultLogsSpecs, Std
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, parse_args

    launcher_args = parse_args(["--standalone", f"--nproc-per-node={nproc}", "--monitor-interval=0.5",
                                "--log-dir", logs, "-m", module, *args])
    # What torch.distributed.run.run does for --standalone: a rendezvous on this machine alone.
    launcher_args.rdzv_backend, launcher_args.rdzv_endpoint = "c10d", "localhost:0"
    launcher_args.rdzv_id = str(uuid.uuid4())
    launcher_args.master_port = launcher_args.master_port or 29500  # as run() sets it; unused by c10d
    config, entrypoint, entry_args = config_from_args(launcher_args)
    config.logs_specs = DefaultLogsSpecs(log_dir=logs, redirects={rank: Std.ALL for rank in range(1, nproc)})
    return lambda: elastic_launch(config=config, entrypoint=entrypoint)(*entry_args)


def report_error(message: str) -> None:
    """The one error line on stderr; under torchrun also in the error file it names for this rank,
    so `train --nproc` reads rank 0's line too (its stderr is the terminal, not a log file)."""
    line = ERROR_PREFIX + message
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # a full or closed stderr: the error file below, and the exit code, remain
        pass
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        from engine.atomic import atomic_write_bytes

        try:
            atomic_write_bytes(Path(error_file), json.dumps({"message": line, "timestamp": int(time.time())}).encode())
        except OSError:
            pass  # the launcher falls back to the rank's log


def _failure_code(failures: dict, logs: Path) -> int:
    """The exit code of the rank whose failure caused the others', its one-line error printed here
    unless it was rank 0's, already on the terminal. The lowest rank with an error of its own
    first; then one that exited without a line (a traceback); then one killed by a signal (the OOM
    killer's before the launcher's own SIGTERMs); last one that only lost another process."""
    lines = {rank: _error_line(failure, logs) for rank, failure in failures.items()}

    def cause(rank: int) -> tuple:
        failure, line = failures[rank], lines[rank]
        if failure.exitcode > 0 and line and not line.startswith(ANOTHER_PROCESS_FAILED):
            return 0, rank
        if failure.exitcode > 0 and not line:
            return 1, rank
        if failure.exitcode < 0:
            return 2, -failure.exitcode == signal.SIGTERM, rank
        return 3, rank

    rank = min(failures, key=cause)
    failure = failures[rank]
    if failure.exitcode < 0:
        print(f"{ERROR_PREFIX}rank {rank}: killed by signal {-failure.exitcode} ({_signal_name(-failure.exitcode)})",
              file=sys.stderr)
        return 1  # a failed run
    if rank != 0:
        print(f"{ERROR_PREFIX}rank {rank}: {lines[rank] or f'exited with code {failure.exitcode}'}", file=sys.stderr)
    return failure.exitcode


def _error_line(failure, logs: Path) -> str | None:
    """The rank's one-line error (without the prefix): from its error file (report_error), else
    from its log file (ranks other than 0)."""
    if failure.message.startswith(ERROR_PREFIX):
        return failure.message[len(ERROR_PREFIX):]
    for log in sorted(logs.glob(f"**/{failure.local_rank}/stderr.log")):
        errors = [line for line in log.read_text(errors="replace").splitlines() if line.startswith(ERROR_PREFIX)]
        if errors:
            return errors[-1][len(ERROR_PREFIX):]
    return None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"
