"""The `transfer-studio` command: gui (default), demo-data, layers, train, predict.

Every sub-command is a thin layer over the engine. Bad input ends with one line on stderr and
exit code 2; a run that fails (diverged, frozen tensors changed) or a failed parity check with 1.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from typing import NoReturn
import sys
from pathlib import Path

from engine.config import RunConfig
from engine.errors import OutputLost, RunFailed, UserError, out_of_memory_message, path_problem_message
from engine.deploy.export import ParityError

from app import cli_cluster, cli_data, cli_deploy, cli_guidance, cli_insight, cli_models, cli_search
from app.cli_output import note, print_json, stream_problem
from app.cli_args import (OneLineParser, add_model_args, add_plan_args, add_train_args, given_train_flags, number_arg,
                          plan_config, train_config_from_args)

# Sub-commands that live in modules of their own: each has add_commands(sub, number) and HANDLERS.
COMMAND_MODULES = (cli_insight, cli_guidance, cli_data, cli_cluster, cli_models, cli_search)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="transfer-studio",
                            description="Point-and-click transfer learning of image classifiers.")
    sub = parser.add_subparsers(dest="command", parser_class=OneLineParser)

    gui = sub.add_parser("gui", help="open the window (the default)")
    gui.add_argument("--data", help="dataset folder to open (default: the built-in demo dataset)")
    gui.add_argument("--project", help="project file to open")

    demo = sub.add_parser("demo-data", help="write a synthetic ImageFolder dataset")
    demo.add_argument("dir")
    demo.add_argument("--classes", type=number_arg("demo.classes"), default=4)
    demo.add_argument("--per-class", type=number_arg("demo.per_class"), default=60)
    demo.add_argument("--size", type=number_arg("demo.size"), default=96)
    demo.add_argument("--seed", type=number_arg("demo.seed"), default=0)

    layers = sub.add_parser("layers", help="print the layer tree with frozen flags, parameter counts and LRs")
    add_model_args(layers)
    layers.add_argument("--classes", type=number_arg("layers.classes"), required=True, help="number of classes of the new head")
    layers.add_argument("--weight-decay", type=number_arg("train.weight_decay"), default=0.01)
    layers.add_argument("--depth", type=number_arg("layers.depth"), default=None, help="show modules down to this depth")
    layers.add_argument("--json", action="store_true")
    add_plan_args(layers)
    cli_guidance.add_preview_args(layers, number_arg)

    train = sub.add_parser("train", help="train a classifier on a folder of images")
    add_train_args(train)

    export = sub.add_parser("export", help="export a checkpoint (pt, safetensors, torchscript, onnx, pt2) with a "
                                           "parity check")
    export.add_argument("checkpoint")
    export.add_argument("--format", action="append", choices=("pt", "safetensors", "torchscript", "onnx", "pt2"),
                        help="repeat for several; default: all but pt2 (torch.export, which needs --format pt2)")
    export.add_argument("--out", help="output file (one format) or folder (several)")
    export.add_argument("--tolerance", type=number_arg("export.tolerance"), default=1e-4, help="largest allowed logit difference, relative to the logits' scale: "
                        "max|diff| <= TOLERANCE * max(1, max|logit|); top-1 classes must agree too")
    export.add_argument("--parity-images", type=number_arg("export.parity_images"), default=32, help="validation images to compare on")
    export.add_argument("--json", action="store_true")
    cli_deploy.add_export_args(export, number_arg)

    predict = sub.add_parser("predict", help="classify images with a checkpoint or an exported file (any format)")
    predict.add_argument("checkpoint")
    predict.add_argument("images", nargs="+")
    predict.add_argument("--top-k", type=number_arg("predict.top_k"), default=5)
    predict.add_argument("--trust", action="store_true",
                         help="load a .pt2 this installation did not export (loading it unpickles, which can run code)")
    predict.add_argument("--json", action="store_true")
    cli_deploy.add_predict_args(predict)
    for commands in COMMAND_MODULES:
        commands.add_commands(sub, number_arg)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "gui"
    if command == "search":  # its --workers start the same command again, as typed
        args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if command == "gui":
            return _gui(getattr(args, "data", None), getattr(args, "project", None))
        if command == "train":
            return _train(args, list(sys.argv[1:] if argv is None else argv))
        handlers = {"demo-data": _demo_data, "layers": _layers, "export": _export, "predict": _predict}
        for commands in COMMAND_MODULES:
            handlers.update(commands.HANDLERS)
        return handlers[command](args)
    except (RunFailed, ParityError, UserError) as exc:  # a failed run 1, bad input 2
        from engine.distributed.launch import report_error  # under torchrun also for the launcher to read

        report_error(str(exc))
        return 1 if isinstance(exc, (RunFailed, ParityError)) else 2
    except KeyboardInterrupt:
        print("\ntransfer-studio: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # wherever a path was used: one that cannot exist is bad input
        message = path_problem_message(exc)
        if message is None:
            raise  # another OSError escaping is a bug, and its traceback is needed
        from engine.distributed.launch import report_error

        report_error(message)
        return 2
    except (MemoryError, RuntimeError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        message = out_of_memory_message(exc, command)
        if message is None:
            raise  # not about memory: a bug, and its traceback is needed
        from engine.distributed.launch import report_error

        report_error(message)
        return 1


def _gui(data: str | None, project: str | None) -> int:
    from engine.data.label_table import is_label_table, read_label_table

    if data and is_label_table(data):  # the window's panels are single-label's (issue 25)
        raise UserError(f"the window opens class folders only for now; {data} is {read_label_table(data).task} "
                        f"data: train it with transfer-studio train --data")
    from app.main_window import run_gui  # Qt is imported only when a window is wanted

    return run_gui(data=data, project=project)


def _demo_data(args) -> int:
    from engine.data.demo import write_demo_dataset

    if not 2 <= args.classes <= 8 or args.per_class < 1 or args.size < 16:
        raise UserError("demo-data needs 2..8 classes, --per-class >= 1 and --size >= 16")
    root = write_demo_dataset(args.dir, args.classes, args.per_class, args.size, args.seed)
    print(f"wrote {args.classes} x {args.per_class} images to {root}")
    return 0


def _layers(args) -> int:
    from engine.model.architectures import build_model
    from engine.plan.plan import build_plan, describe_plan, summary_line

    built = build_model(args.model, args.classes, args.weights)
    plan = build_plan(plan_config(args), built.info)
    report = describe_plan(built.info, plan, args.weight_decay)
    if args.preview:
        report.update(cli_guidance.layers_schedule(args, built, plan))
    if args.json:
        print_json(report)
        return 0
    for model_note in built.notes:
        print(f"# {model_note}")
    print(f"{'module':<44} {'type':<22} {'params':>12} {'trainable':>12}  frozen  lr")
    for m in report["modules"]:
        depth = 0 if m["name"] == "" else m["name"].count(".") + 1
        if args.depth is not None and depth > args.depth:
            continue
        name = ("  " * depth + (m["name"].rpartition(".")[2] or args.model))[:44]
        lr = f"{m['lr']:.3g}" + ("" if not m["lr_inherited"] else " (inherited)")
        when = f"  unfreezes at epoch {m['unfreeze_epoch'] + 1}" if m["unfreeze_epoch"] is not None else ""
        print(f"{name:<44} {m['type'][:22]:<22} {m['params']:>12,} {m['trainable_params']:>12,}  "
              f"{'yes' if m['frozen'] else 'no ':<6}  {lr}{when}")
    print("\n" + summary_line(report))
    if report["unassigned"]:
        shown = ", ".join(report["unassigned"][:6]) + (" ..." if len(report["unassigned"]) > 6 else "")
        print(f"  unassigned (in no stage; they follow the root): {shown}")
    for g in report["param_groups"]:
        print(f"  lr {g['lr']:.3g}  wd {g['weight_decay']:g}  {len(g['params'])} tensors  ({g['label']})")
    if args.preview:
        cli_guidance.print_schedule(report["schedule"])
    return 0


def _train(args, argv: list[str]) -> int:
    from app.progress import ProgressPrinter
    from engine.distributed.process_group import ProcessGroup, lost_processes_fail_the_run
    from engine.runs.event_lines import EventLines
    from engine.events import Callbacks
    from engine.distributed.remote_control import FileControl
    from engine.model.devices import select_device
    from engine.training.trainer import fit

    if args.folds is not None and args.resume:
        raise UserError("--folds trains new runs; it cannot continue one (--resume)")
    _check_mlflow_args(args)
    config = train_config_from_args(args, given_train_flags(argv))
    config.validate()
    if args.folds is not None:
        return _cross_validate(args, config)
    group = ProcessGroup.from_env()
    if group.is_distributed and args.nproc not in (None, 1):
        raise UserError("--nproc starts torchrun itself: under torchrun, leave it out")
    target = _mlflow_target(args) if args.mlflow and group.is_main else None  # checked before anything trains
    # --nproc, else the project's train.processes; under torchrun, its own world size decides
    processes = 1 if group.is_distributed else args.nproc if args.nproc is not None else config.train.processes
    if processes != 1:
        return _train_as_processes(args, argv, config, processes)
    progress = ProgressPrinter(sys.stderr) if group.is_main else Callbacks()  # rank 0 alone prints
    events = EventLines(sys.stdout, progress) if args.events_jsonl and group.is_main else None
    control = FileControl(args.control_file, group) if args.control_file else None
    callbacks = events or progress
    tracker = None
    if target is not None:
        from engine.deploy.mlflow_log import MlflowLog

        callbacks = tracker = MlflowLog(target, callbacks, resume=bool(args.resume))
    try:
        # A collective failing because another rank failed first: one line here, that rank's error the cause.
        with group.started(select_device(config.train.device).type), lost_processes_fail_the_run(group):
            # Started by torchrun without --out: every rank trains in rank 0's default run folder.
            config = replace(config, out_dir=group.gather_objects(config.out_dir)[0])
            result = fit(config, callbacks, control, resume=bool(args.resume), group=group)
    except BaseException as exc:
        if tracker is not None:
            tracker.fail(exc)
        if events and isinstance(exc, (UserError, RunFailed)):
            events.on_failed(str(exc))
        raise
    if tracker is not None:
        tracker.finish(result)
    if not group.is_main:
        return 0
    if isinstance(progress, ProgressPrinter):
        progress.close()
    for s in result.skipped:
        note(f"skipped {s.path}: {s.reason}")
    if result.task == "single-label":
        best = f"{result.best_val_accuracy:.4f}" if result.best_val_accuracy is not None else "n/a"
        note(f"best val accuracy {best} at epoch {result.best_epoch}; checkpoint {result.checkpoint}")
    else:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in (result.best_val_metrics or {}).items() if v is not None) or "n/a"
        note(f"best val {shown} at epoch {result.best_epoch} ({result.task}); checkpoint {result.checkpoint}")
    if events:
        events.on_result(result)
    if events and events.lost:
        _events_lost(events.lost, result, args.json)
    elif args.json:
        print_json(result.summary(), f"the run finished (checkpoint {result.checkpoint}) but its result")
    return 0


def _check_mlflow_args(args) -> None:
    if args.mlflow_experiment is not None and not args.mlflow:
        raise UserError("--mlflow-experiment names where --mlflow logs: add --mlflow URI or leave it out")
    if args.mlflow is not None and not args.mlflow.strip():
        raise UserError("--mlflow needs a tracking URI, e.g. sqlite:///mlflow.db")
    if args.mlflow and args.folds is not None:
        raise UserError("--mlflow logs single runs: leave it out with --folds")


def _mlflow_target(args):
    """The MLflow store, opened before training: a missing package or a store that cannot be used
    is one line (exit 2) now, not a surprise after the run."""
    from engine.deploy.mlflow_log import DEFAULT_EXPERIMENT, connect

    return connect(args.mlflow, args.mlflow_experiment or DEFAULT_EXPERIMENT)


def _events_lost(problem: str, result, json_wanted: bool) -> None:
    """Standard output failed mid-run (a reader that left, a full device): the run went on and
    finished. Without --json that is a note; with it, the result is lost too (exit 1)."""
    finished = f"the run finished (checkpoint {result.checkpoint})"
    if json_wanted:
        raise OutputLost(f"{finished} but its event lines and result could not be written to standard output: "
                         f"{problem}")
    note(f"{finished}; its event lines stopped early: {problem}")
    _discard_stdout()  # what stayed in stdout's buffer would fail again at exit


def _cross_validate(args, config: RunConfig) -> int:
    """`train --folds K`: one run per fold, then each fold's accuracy and the mean ± standard deviation."""
    from app.progress import ProgressPrinter
    from engine.runs.run_folder import RunFolder
    from engine.training.folds import cross_validate

    from engine.distributed.process_group import ProcessGroup

    if (args.nproc is not None and args.nproc != 1) or ProcessGroup.from_env().is_distributed:
        raise UserError("--folds trains its folds one after another in one process: leave --nproc out "
                        "and start it without torchrun")
    if args.events_jsonl or args.control_file:
        raise UserError("--folds prints one line per fold: --events-jsonl and --control-file are for single runs")
    if RunFolder(config.out_dir).exists():  # the folds' folders and folds.json would go into another run's folder
        raise UserError(f"{config.out_dir} holds a run; --folds needs an output folder of its own")
    progress = ProgressPrinter(sys.stderr)

    def on_fold(fold) -> None:
        last = f"{fold.val_accuracy:.2%}" if fold.val_accuracy is not None else "n/a"
        print(f"fold {fold.fold}/{args.folds}: val accuracy {last} on {fold.val_images} image(s) "
              f"(trained on {fold.train_images}); {fold.run_dir}", flush=True)

    report = cross_validate(config, args.folds, progress, on_fold=on_fold)
    progress.close()
    print(report.summary_line())
    if args.json:
        print_json(report.to_json())
    return 0


def _train_as_processes(args, argv: list[str], config: RunConfig, processes: int) -> int:
    """`train --nproc N`: what can be refused is refused here, once, before N processes start;
    then the same command without --nproc runs under torchrun, with the run folder (and the
    dataset) this process resolved, so every rank trains the same run."""
    import torch

    from engine.distributed.process_group import ProcessGroup
    from engine.distributed.launch import launch_local, without_option
    from engine.runs.run_folder import RunFolder
    from engine.model.devices import select_device
    from engine.training.trainer import processes_problem

    if processes < 2:
        raise UserError(f"--nproc {processes}: give 2 or more processes (or leave --nproc out)")
    problem = processes_problem(config, ProcessGroup(world_size=processes))
    if problem:
        raise UserError(problem)
    device = select_device(config.train.device)
    if device.type == "cuda" and processes > torch.cuda.device_count():
        raise UserError(f"{processes} processes need a GPU each; this machine has {torch.cuda.device_count()}")
    rest = without_option(argv[argv.index("train") + 1:], "--nproc")
    if not args.resume:
        RunFolder(config.out_dir).refuse_if_used()
        rest += ["--out", config.out_dir, "--data", config.data.root]
    code = launch_local(processes, "app.cli", ["train", *rest])
    if code > 128:  # the launcher was signalled and ended the ranks, which could not say so in run.json
        _record_ended_by_signal(RunFolder(config.out_dir), code - 128)
    return code


def _record_ended_by_signal(folder, signal_number: int) -> None:
    """run.json of a run whose processes a signal ended says "failed" and why, not "running"."""
    import signal

    from engine.training.listeners import record_failure

    try:
        if folder.read_run().status != "running":
            return
    except UserError:
        return
    record_failure(folder, RuntimeError(f"ended by {signal.Signals(signal_number).name} (sent to the launcher)"))


def _export(args) -> int:
    from engine.deploy.export import DEFAULT_FORMATS, default_path, export, parity_batch

    formats = args.format or list(DEFAULT_FORMATS)
    checkpoint = Path(args.checkpoint)
    cli_deploy.check_export_args(args, formats)
    batch = parity_batch(checkpoint, args.parity_images)
    reports = []
    for fmt in formats:
        out = None
        if args.out and len(formats) == 1 and not Path(args.out).is_dir():
            out = Path(args.out)
        elif args.out:
            out = default_path(checkpoint, fmt, Path(args.out))
        report = export(checkpoint, fmt, out, batch, args.tolerance)
        reports.append(report.to_dict())
        agreement = "top-1 agreement" if report.compared == "logits" else "decision agreement"
        print(f"{fmt:<12} {report.path}  {agreement} {report.top1_agreement:.1%} · largest {_SINGULAR[report.compared]} "
              f"difference {report.max_abs_logit_diff:.2e} on {report.images} images", file=sys.stderr)
    from engine.deploy.int8 import Int8Refused

    try:
        reports += cli_deploy.after_export(args, checkpoint, reports)  # model cards; int8 when asked
    except Int8Refused as refused:  # --json still lists the files kept, and the int8 entry with passed false
        if args.json:
            print_json(reports + [refused.report.to_dict()])
        raise
    if args.json:
        print_json(reports)
    return 0


_SINGULAR = {"logits": "logit", "probabilities": "probability", "values": "value"}


def _predict(args) -> int:
    from engine.deploy.export import load_any
    from engine.deploy.tta import VIEWS

    if args.top_k < 1:
        raise UserError("--top-k must be >= 1")
    model = load_any(args.checkpoint, trust=args.trust)
    paths = [Path(p) for p in args.images]
    # The mirrored image's outputs are averaged before the sigmoid (labels), the de-standardising (value)
    # or the temperature (classes).
    outputs = model.image_logits(paths, tta=args.tta)
    if model.task.name != "single-label":  # labels and their probabilities, or the value
        from engine.deploy.predict import task_answers

        if args.raw:
            raise UserError(f"--raw is about calibrated single-label probabilities; this model is {model.task.name}")
        results = task_answers(outputs, model.class_names, model.task)
        if args.json:
            print_json([{"image": str(p), "task": model.task.name, **r, **({"tta": list(VIEWS)} if args.tta else {})}
                        for p, r in zip(paths, results)])
            return 0
        for path, result in zip(paths, results):
            print(cli_deploy.task_prediction_line(path, result))
        return 0
    # Calibrated probabilities and the unknown verdict where the model's card or checkpoint has them.
    results = cli_deploy.predictions(model, args.checkpoint, outputs, args.top_k, args.raw)
    if args.json:
        print_json([{"image": str(p), **r, **({"tta": list(VIEWS)} if args.tta else {})} for p, r in zip(paths, results)])
        return 0
    for path, result in zip(paths, results):
        print(cli_deploy.prediction_line(path, result))
    return 0


def run(argv: list[str] | None = None) -> NoReturn:
    """The command's entry point: main(), then exit with its code.

    After `train` the interpreter's teardown is skipped (os._exit, once stdout and stderr are
    flushed): unloading torch alone takes 0.7 s here, a tenth of a short fine-tuning run's
    overhead, and by then every file of the run has been written, fsynced and closed."""
    argv = sys.argv[1:] if argv is None else argv
    code = _flush_output(main(argv))
    if argv[:1] == ["train"]:
        os._exit(code)
    sys.exit(code)


def _flush_output(code: int) -> int:
    """`code`, or 1 when what the command printed cannot reach stdout (a full device, a reader that
    left): said in one line, and stdout pointed at the null device so that the interpreter's own
    flush at exit adds no traceback."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except (OSError, ValueError) as exc:
        _discard_stdout()
        if code == 0:  # a command that failed has said its one line already
            from engine.distributed.launch import report_error

            report_error(f"the output could not be written to standard output: {stream_problem(exc)}")
            code = 1
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
    except (OSError, ValueError):
        pass  # nowhere left to say it
    return code


def _discard_stdout() -> None:
    if sys.stdout is None or sys.stdout is not sys.__stdout__:  # a test's capture: not this process's fd 1
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    run()
