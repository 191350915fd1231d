"""The window's side of insight: every file read and every model run for the Insight and Runs
tabs happens here, as background tasks, and comes back as signals on the GUI thread.

It lists the runs, reads a run's evaluation (engine.insight.evaluation, from val_predictions.csv; a
multi-label or regression run's from val_outputs.pt, engine.insight.task_evaluation), calibration
(engine.insight.reliability) and embeddings, decodes gallery thumbnails, computes Grad-CAM overlays
(engine.insight.gradcam) and classifies tried images. Loaded models are kept (one at a time per file) so
a second Grad-CAM is quick.
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QImage

from engine.runs.catalog import config_diff, distinct_names, is_deletable_run, list_summaries, val_accuracy_curve
from app.worker import BackgroundTasks
from app.run_events import describe_failure
from engine.runs.embeddings import EmbeddingPoint, read_embeddings
from engine.errors import UserError
from engine.events import BatchEvent, EpochEvent
from engine.runs.records import EpochRecord
from engine.runs.run_folder import RunFolder
from widgets.gallery import submit_thumbnails

PREVIEW_SIDE = 256
TOP_K = 5


@dataclass(frozen=True)
class RunInsight:
    """What the Insight tab shows of one run."""

    folder: RunFolder
    evaluation: object  # engine.insight.evaluation.Evaluation; other tasks' a task_evaluation.TaskEvaluation
    dataset_root: str
    points: list[EmbeddingPoint] = field(default_factory=list)
    norm_line: str = ""  # what the run did with its BatchNorm statistics (run.json), "" when it did not say
    name: str = ""  # what the run is called (its given name, else its folder's)
    task: str = "single-label"
    calibration: object = None  # engine.insight.reliability.RunCalibration, or None
    calibration_note: str = ""  # why there is none


def qimage_from_pil(image) -> QImage:
    """A QImage that owns its pixels (made off the GUI thread is fine)."""
    rgb = image.convert("RGB")
    data = rgb.tobytes()
    return QImage(data, rgb.width, rgb.height, 3 * rgb.width, QImage.Format.Format_RGB888).copy()


def read_insight(folder: RunFolder) -> RunInsight:
    """The run's evaluation (from its val_predictions.csv) and embeddings, or a multi-label or
    regression run's (from val_outputs.pt); a UserError says in one line why there are none."""
    from engine.insight.evaluation import evaluate_run

    task = folder.read_run().raw.get("task", "single-label")
    if task != "single-label":
        return read_task_insight(folder, task)
    evaluation = evaluate_run(folder.path)
    points = read_embeddings(folder.embeddings_path) if folder.embeddings_path.is_file() else []
    norm = folder.read_run().norm_choice
    calibration, calibration_note = read_calibration(folder)
    return RunInsight(folder, evaluation, evaluation.data_root, points, norm_line=norm.line if norm else "",
                      name=folder.recorded_name() or folder.path.name, calibration=calibration,
                      calibration_note=calibration_note)


def read_calibration(folder: RunFolder) -> tuple[object, str]:
    """(RunCalibration, "") or (None, why there is none): a run without it still has its other insight."""
    from engine.insight.reliability import run_calibration

    try:
        return run_calibration(folder), ""
    except UserError as exc:
        return None, str(exc)


def read_task_insight(folder: RunFolder, task: str) -> RunInsight:
    """A multi-label or regression run's best validation pass, as evaluate reads it (the thresholds
    and the target's scale are its checkpoint's)."""
    from engine.insight.task_evaluation import evaluate_task_run
    from engine.model.checkpoint import load_checkpoint

    if not folder.has_checkpoint():
        raise UserError(f"{folder.path.name} is a {task} run without a checkpoint yet (stopped before its first "
                        f"epoch ended): nothing to show")
    evaluation = evaluate_task_run(folder.path, load_checkpoint(folder.checkpoint_path))
    return RunInsight(folder, evaluation, evaluation.data_root, name=folder.recorded_name() or folder.path.name,
                      task=task)


def history_events(history: list[EpochRecord], epochs: int) -> list[tuple[BatchEvent, EpochEvent]]:
    """metrics.jsonl's epochs as the events the live plots take: one batch point (the epoch's mean
    training loss and its LRs) and one epoch point each."""
    events = []
    for i, record in enumerate(history):
        if record.train_loss is None or (record.train_accuracy is None and record.task != "regression"):
            break  # an epoch without its training figures ends the history shown (a regression has no accuracy)
        batch = BatchEvent(epoch=record.epoch, epochs=epochs, step=1, steps=1, global_step=i + 1,
                           total_steps=len(history), loss=record.train_loss, lrs=dict(record.lr),
                           images_per_second=record.images_per_second or 0.0, eta_seconds=0.0)
        end = EpochEvent(epoch=record.epoch, epochs=epochs, train_loss=record.train_loss,
                         train_accuracy=record.train_accuracy, val_loss=record.val_loss,
                         val_accuracy=record.val_accuracy, per_class_accuracy={}, confusion_matrix=[], seconds=0.0,
                         images_per_second=0.0, data_seconds=0.0, compute_seconds=0.0, lr=dict(record.lr),
                         trainable_params=0, is_best=record.is_best, task=record.task,
                         val_metrics=dict(record.val_metrics))
        events.append((batch, end))
    return events


class LoadedModels:
    """One loaded model per file, reused while the file is unchanged. Models are used under one
    lock: Grad-CAM's hooks and a model shared by two tasks must not interleave."""

    def __init__(self):
        self.lock = threading.Lock()
        self._slots: dict[str, tuple[str, float, object]] = {}  # slot -> (file and loader, its mtime, what it gave)

    def classifier(self, path: Path):
        """A checkpoint's LoadedClassifier (call with the lock held)."""
        from engine.deploy.predict import load_classifier

        return self._load(path, load_classifier)

    def exported(self, path: Path):
        from engine.deploy.export import load_any
        from engine.deploy.trust import UntrustedFileError

        try:
            return self._load(path, load_any)
        except UntrustedFileError:  # the engine's line names the command line's --trust; the window has no such flag
            raise UntrustedFileError(f"{path.name} was not exported by this installation, and opening a .pt2 file can "
                                     f"run code: choose its .onnx, .safetensors or .pt file, or export the run here") from None

    def calibration(self, path: Path, fmt: str) -> dict | None:
        """The temperature and unknown rule the file's card (or the checkpoint) carries, as predict reads them."""
        from engine.deploy.calibrated import deployment_calibration

        def calibration_of(model_file: Path) -> dict | None:
            return deployment_calibration(model_file, fmt)

        return self._load(path, calibration_of, slot="calibration")

    def _load(self, path: Path, loader, slot: str = "model"):
        key = f"{loader.__name__}:{Path(path).resolve()}"
        stamp = Path(path).stat().st_mtime
        cached = self._slots.get(slot)
        if cached is None or cached[:2] != (key, stamp):
            cached = (key, stamp, loader(path))
            self._slots[slot] = cached  # one model at a time: models can be large
        return cached[2]


def explain_image(models: LoadedModels, checkpoint: Path, image: str,
                  target: str | None = None) -> tuple[QImage, str, list[tuple[str, float]]]:
    """The Grad-CAM overlay of `image` for `target` (None: the checkpoint's predicted class; a
    multi-label checkpoint's label), a caption, the top classes."""
    from engine.insight.gradcam import explain, overlay

    with models.lock:
        result = explain(models.classifier(checkpoint), image, target=target)
    ranked = sorted(result.probabilities.items(), key=lambda kv: kv[1], reverse=True)[:TOP_K]
    caption = f"{Path(image).name}: where it looked for {result.target} ({result.probabilities.get(result.target, 0):.0%})"
    if result.note:  # another layer than the default, or a map too coarse to point anywhere
        caption += f" — {result.note}"
    return qimage_from_pil(overlay(image, result.cam)), caption, ranked


def classify_image(models: LoadedModels, model_path: Path, image: str) -> tuple[dict, QImage | None, str]:
    """`image`'s answer as `predict --json` gives it (engine.deploy.calibrated.classify: calibrated
    probabilities where the model carries a temperature, the unknown verdict where it has a threshold)
    with its raw probabilities beside them ("raw_top_k"), and for a checkpoint its Grad-CAM overlay;
    exported files (TorchScript, ONNX, safetensors) give predictions only. A Grad-CAM that fails
    leaves the prediction standing and says why in the note."""
    from engine.deploy.calibrated import classify
    from engine.deploy.export import Exported, detect_format

    fmt, classifier = detect_format(Path(model_path)), None
    with models.lock:
        if fmt == "pt":
            try:
                classifier = models.classifier(Path(model_path))
            except UserError:
                pass  # a .pt that is not a checkpoint (an exported one): read as an exported file
        model = Exported.of_classifier(classifier) if classifier is not None else models.exported(Path(model_path))
        logits = model.image_logits([Path(image)])
        calibration = models.calibration(Path(model_path), model.format)
    answer = classify(logits, model.class_names, TOP_K, calibration)[0]
    answer["raw_top_k"] = classify(logits, model.class_names, TOP_K, calibration, raw=True)[0]["top_k"]
    if classifier is None:
        return answer, None, "no Grad-CAM for an exported file"
    try:
        overlay, _, _ = explain_image(models, Path(model_path), image)
    except Exception as exc:  # noqa: BLE001 - the prediction stands; why the heat map is missing is shown
        return answer, None, f"no Grad-CAM ({describe_failure(exc)})"
    return answer, overlay, ""


def task_answer(models: LoadedModels, model_path: Path, image: str) -> dict | None:
    """A multi-label or regression model's answer for `image` (engine.deploy.predict.task_answers,
    with the task's name and each label's threshold); None for a single-label model, which
    classify_image answers. No Grad-CAM: it explains one class's score."""
    from engine.data.dataset import Preprocessing
    from engine.deploy.export import detect_format
    from engine.deploy.predict import preprocess, task_answers

    with models.lock, torch.no_grad():
        classifier = None
        if detect_format(Path(model_path)) == "pt":
            try:
                classifier = models.classifier(Path(model_path))
            except UserError:
                pass  # an exported .pt: read as an exported file
        loaded = classifier if classifier is not None else models.exported(Path(model_path))
        if loaded.task.name == "single-label":
            return None
        prep = loaded.preprocessing if classifier is not None else Preprocessing.from_dict(loaded.preprocessing)
        batch = preprocess([Path(image)], prep)
        outputs = classifier.model(batch) if classifier is not None else loaded.logits(batch)
    names = list(loaded.class_names)
    answer = task_answers(outputs, names, loaded.task)[0]
    thresholds = list(loaded.task.thresholds) if len(loaded.task.thresholds) == len(names) else [0.5] * len(names)
    return {"task": loaded.task.name, **answer, "thresholds": dict(zip(names, thresholds))}


def try_image_job(models: LoadedModels, model_path: Path, image: str) -> tuple[str, object]:
    """("task", answer) for a multi-label or regression model, else ("classes", classify_image's result)."""
    answer = task_answer(models, model_path, image)
    return ("task", answer) if answer is not None else ("classes", classify_image(models, model_path, image))


def preview_image(path: str) -> QImage | None:
    from widgets.data_panel import make_thumbnail

    return make_thumbnail(path, PREVIEW_SIDE)


class InsightSession(QObject):
    runs_listed = Signal(list)  # RunSummary rows, newest first
    insight_ready = Signal(object)  # RunInsight
    insight_missing = Signal(str)  # why the chosen run has no insight
    thumbnails_ready = Signal(dict)  # absolute path -> QImage (None: did not decode)
    preview_ready = Signal(object, str)  # QImage or None, caption
    prediction_ready = Signal(str, dict, object, str)  # image, classify_image's answer, overlay or None, note
    task_prediction_ready = Signal(str, dict)  # image, a multi-label or regression model's answer (task_answer)
    prediction_failed = Signal(str)
    history_ready = Signal(str, list)  # run folder, [(BatchEvent, EpochEvent)]
    comparison_ready = Signal(dict, list, list)  # {name: (epochs, accuracies)}, config diff, names
    run_deleted = Signal(str)
    run_renamed = Signal(str, str)  # run folder, the name it was given ("" for none: its folder's name)
    failed = Signal(str)  # one line for the status bar

    def __init__(self, tasks: BackgroundTasks, runs_root: Path, parent=None):
        super().__init__(parent)
        self.tasks = tasks
        self.runs_root = Path(runs_root)
        self.models = LoadedModels()
        # Renames one after another: a rename holds its run folder's lock, and a second one finding it
        # held (two quick edits, on the pool's two threads) would be refused as if the run trained.
        self._renaming = threading.Lock()
        self.shown: RunFolder | None = None  # the run whose insight is shown
        self.try_model: Path | None = None  # chosen by the person; None: the shown run's checkpoint

    def refresh_runs(self) -> None:
        root = self.runs_root
        self.tasks.submit("runs", lambda: list_summaries(root), self.runs_listed.emit, self.failed.emit)

    def open_insight(self, folder: RunFolder) -> None:
        self.shown = folder
        self.tasks.submit("insight", lambda: read_insight(folder), self.insight_ready.emit, self.insight_missing.emit)

    def forget_shown(self) -> None:
        """Show no run's insight (another dataset is open): its matrix and gallery go, and a
        reading still on its way is dropped."""
        self.shown = None
        self.tasks.cancel("insight")
        self.tasks.cancel("gallery")
        self.insight_missing.emit("")

    def forget_run(self, path: str) -> None:
        """A run folder was deleted: nothing of it is shown or tried any more."""
        if self.try_model is not None and Path(path) in self.try_model.parents:
            self.try_model = None
        if self.shown is not None and self.shown.path == Path(path):
            self.forget_shown()

    def load_history(self, folder: RunFolder) -> None:
        def job():
            epochs = folder.load_config().train.epochs
            return str(folder.path), history_events(folder.read_epochs(), epochs)

        self.tasks.submit("history", job, lambda r: self.history_ready.emit(*r), self.failed.emit)

    def want_thumbnails(self, paths: list[str]) -> None:
        submit_thumbnails(self.tasks, "gallery", paths, self.thumbnails_ready.emit, self.failed.emit)

    def show_image(self, path: str) -> None:
        self.tasks.submit("preview", lambda: preview_image(path),
                          lambda image: self.preview_ready.emit(image, Path(path).name), self.failed.emit)

    def explain(self, image: str, label: str | None = None) -> None:
        """The shown run's Grad-CAM of `image`: for its predicted class, or (multi-label) for `label`."""
        folder = self.shown
        if folder is None or not folder.has_checkpoint():
            self.preview_ready.emit(None, "No checkpoint for this run: Grad-CAM needs the run's best weights.")
            return
        models = self.models
        self.tasks.submit("gradcam", lambda: explain_image(models, folder.checkpoint_path, image, label),
                          lambda r: self.preview_ready.emit(r[0], r[1]),
                          lambda message: self.preview_ready.emit(None, f"Grad-CAM failed: {message}"))

    def set_try_model(self, path: str) -> None:
        self.try_model = Path(path)

    def try_model_path(self) -> Path | None:
        if self.try_model is not None:
            return self.try_model
        if self.shown is not None and self.shown.has_checkpoint():
            return self.shown.checkpoint_path
        return None

    def try_image(self, image: str) -> None:
        model = self.try_model_path()
        if model is None:
            self.prediction_failed.emit("No model to try: train a run, select one in Runs, or choose a model file.")
            return
        models = self.models
        self.tasks.submit("try", lambda: try_image_job(models, model, image),
                          lambda r: self._on_tried(image, *r), self.prediction_failed.emit)

    def _on_tried(self, image: str, kind: str, result) -> None:
        if kind == "task":
            self.task_prediction_ready.emit(image, result)
        else:
            self.prediction_ready.emit(image, *result)

    def compare(self, paths: list[str]) -> None:
        def job():
            folders = [RunFolder(p) for p in paths]
            records = [f.read_run() for f in folders]
            names = distinct_names([r.name or f.path.name for r, f in zip(records, folders)], [f.path for f in folders])
            curves = {name: val_accuracy_curve(f) for name, f in zip(names, folders)}
            return curves, config_diff([r.config for r in records]), names

        self.tasks.submit("compare", job, lambda r: self.comparison_ready.emit(*r), self.failed.emit)

    def rename_run(self, path: str, typed: str) -> None:
        """Give a listed run a name (in its run.json, off the GUI thread: the write is fsynced)."""
        lock = self._renaming

        def job():
            with lock:
                return RunFolder(path).rename(typed)

        # One kind per run: renaming another run must not make this one's result obsolete.
        self.tasks.submit(f"rename:{path}", job, lambda name: self.run_renamed.emit(path, name), self.failed.emit)

    def delete_run(self, path: str) -> None:
        """Remove a run folder for good (after the person confirmed): only a run folder directly
        under the runs folder that no training holds."""
        root = self.runs_root

        def job():
            problem = is_deletable_run(Path(path), root)
            if problem:
                raise UserError(problem)
            shutil.rmtree(path)
            return path

        self.tasks.submit("delete", job, self._on_deleted, self.failed.emit)

    def _on_deleted(self, path: str) -> None:
        self.run_deleted.emit(path)
        self.refresh_runs()
