"""The data, model and training settings as the person edits them, and whole configurations (a
project, a run to continue, the defaults): what each edit sets off (a new split, a new layer tree, a
weights file checked, new advice) and what it leaves wrong (an image size the model refuses, weights
that cannot be had, random weights under frozen layers). Loading runs off the GUI thread
(session_tasks.ModelDescriber and WeightsFiles)."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from PySide6.QtCore import QObject, Signal, Slot

from app.advice_controller import AdviceController
from app.dataset_controller import DatasetController
from app.plan_controller import PlanController
from app.session_state import WINDOW_DEFAULTS, Configuration, Messages, ShownRun
from app.session_tasks import DatasetState, ModelDescriber, WeightsFiles, structure_info, structure_size
from app.worker import BackgroundTasks
from engine.config import ModelConfig, PlanConfig, RunConfig
from engine.errors import UserError
from engine.model.architectures import ModelInfo, available_archs, check_arch, check_image_size, min_image_size, weights_cache_path
from engine.plan.plan import build_plan, unreached_phases_note

CHECK_EDITS = "check-plan-edits"  # the background task that checks a configuration's layer edits


def check_plan_edits(config: RunConfig, known: ModelInfo | None = None) -> None:
    """UserError naming the first layer edit of `config`'s plan that its model does not have: a
    configuration is refused whole before any of it is shown (a half-applied project is worse than
    none). `known`: the model's structure when it is at hand; else the model is built (on the meta
    device, and only when there are edits: still 0.1-1 s for an efficientnet_v2_s, never on the GUI
    thread)."""
    if not config.plan.edits:
        return
    if known is None:
        arch = config.model.arch
        known = structure_info(arch, 2, structure_size(arch, config.data.image_size))  # names: any class count
    build_plan(config.plan, known)


class SettingsController(QObject):
    edited = Signal()  # a data or training setting changed: advice and planned LRs follow
    image_size_rule_changed = Signal(int, str)  # the architecture's minimum image size and why
    image_size_problem_changed = Signal(str)  # why the image size cannot work ("" when it can)
    weights_files_changed = Signal(list)  # weights files offered besides ImageNet and random init
    weights_note_changed = Signal(str)  # where ImageNet weights come from, when that needs saying
    model_info_changed = Signal(object)  # ModelInfo, or None while it is being built
    model_failed = Signal(str)  # the architecture could not be built
    model_warning_changed = Signal(str)  # advice about the model and plan together ("" for none)
    model_names_changed = Signal(list)  # every architecture on offer, torchvision's and timm's

    def __init__(self, tasks: BackgroundTasks, configuration: Configuration, shown_run: ShownRun, messages: Messages,
                 datasets: DatasetController, plan: PlanController, advisor: AdviceController, parent=None):
        super().__init__(parent)
        self._configuration, self._shown_run, self._messages = configuration, shown_run, messages
        self._datasets, self._plan, self._advisor = datasets, plan, advisor
        self._tasks = tasks
        self._describer = ModelDescriber(tasks, self)
        self._weights = WeightsFiles(tasks, self)
        self._download_failed: set[str] = set()  # architectures whose ImageNet weights did not download
        self._weights_before_file = configuration.model.weights  # where a refused weights file falls back to
        self._weights_waiting: tuple[str, str] | None = None  # (file, arch) checked once the classes are known
        self._describer.changed.connect(self._on_model_info)
        self._describer.failed.connect(self.model_failed)
        self._weights.changed.connect(self.weights_files_changed)
        self._weights.passed.connect(self._on_weights_passed)
        self._weights.refused.connect(self._on_weights_refused)
        datasets.changed.connect(self._on_dataset_changed)
        configuration.plan_changed.connect(self._on_plan_changed)

    def announce(self) -> None:
        """What follows from the settings, and the weights files on offer, for views connected just now."""
        self._announce_consequences()
        self.weights_files_changed.emit(self.weights_files)
        self._list_model_names()

    def _list_model_names(self) -> None:
        # Off the GUI thread: importing timm and listing its ~1,300 models takes seconds. Without
        # timm the search keeps torchvision's names.
        self._tasks.submit("model-names", lambda: available_archs() + available_archs("timm"),
                           self.model_names_changed.emit, lambda message: None)

    def _announce_consequences(self) -> None:
        """What follows from the model and the data settings: the image size's rule and problem, the
        weights' note, the model's warning."""
        self.image_size_rule_changed.emit(*min_image_size(self._configuration.model.arch))
        self.image_size_problem_changed.emit(self.image_size_problem())
        self.weights_note_changed.emit(self.weights_note())
        self.model_warning_changed.emit(self.model_warning())

    # --- what panels ask ----------------------------------------------------------------------------

    @property
    def model_info(self) -> ModelInfo | None:
        return self._describer.info

    @property
    def weights_files(self) -> list[str]:
        return list(self._weights.files)

    def problem(self) -> str:
        """Why the model cannot train yet, in one line; "" when it can."""
        arch = self._configuration.model.arch
        size_problem = self.image_size_problem()
        if size_problem:
            return size_problem
        if self._describer.problem:
            return f"{arch} cannot be built: {self._describer.problem}"
        if self.model_info is None:
            return f"Still building {arch}…"
        return self._weights_problem()

    def image_size_problem(self) -> str:
        try:
            check_image_size(self._configuration.model.arch, self._configuration.data.image_size)
        except UserError as exc:
            return str(exc)
        return ""

    def _weights_problem(self) -> str:
        model = self._configuration.model
        if model.weights == "imagenet" and weights_cache_path(model.arch) is None:
            return f"{model.arch} has no ImageNet weights in torchvision: choose random init or a weights file."
        return ""

    def weights_note(self) -> str:
        arch, weights = self._configuration.model.arch, self._configuration.model.weights
        if weights != "imagenet":
            return ""
        path = weights_cache_path(arch)
        if path is None:
            return self._weights_problem()
        if path.exists():
            return ""
        if arch in self._download_failed:
            return (f"ImageNet weights for {arch} are not cached and could not be downloaded: "
                    f"put {path.name} into {path.parent}, or choose random init or a file.")
        return f"ImageNet weights not cached yet: downloaded on Start, or put {path.name} into {path.parent}."

    def model_warning(self) -> str:
        """What the model, plan and epochs together get wrong, in a line or two ("" for nothing)."""
        info = self.model_info
        if info is None:
            return ""
        try:
            built = build_plan(self._configuration.plan, info)
        except UserError:
            return ""
        warnings = [unreached_phases_note(built, info, self._configuration.train.epochs)]
        if self._configuration.model.weights == "none" and any(built.effective(s).frozen for s in info.stages):
            warnings.append("Random-init weights with frozen layers: those layers stay random. "
                            "Choose ImageNet weights or a file, or fine-tune all.")
        return " ".join(w for w in warnings if w)

    def note_download_failed(self, arch: str) -> None:
        """A run could not download `arch`'s ImageNet weights: the note says so from now on."""
        self._download_failed.add(arch)
        self.weights_note_changed.emit(self.weights_note())

    # --- the person's edits ---------------------------------------------------------------------------

    @Slot(dict)
    def update_data(self, changes: dict) -> None:
        """Validation share, image size, augmentation or task, as edited in the data panel."""
        old = self._configuration.data
        new = replace(old, **changes)
        if new == old or self._shown_run.refused("change the data settings"):
            return
        self._configuration.set_data(new)
        if new.task != old.task:  # what a labels CSV's rows give depends on the task: listed again
            self._datasets.read_again()
        elif new.val_fraction != old.val_fraction:
            self._datasets.split_again()
        if new.image_size != old.image_size:
            self.image_size_problem_changed.emit(self.image_size_problem())
            self._describe_model()
            self._advisor.request()  # the advice weighs the images' size against it
        self.edited.emit()

    @Slot(dict)
    def update_train(self, changes: dict) -> None:
        old = self._configuration.train
        new = replace(old, **changes)
        if new == old or self._shown_run.refused("change the training settings"):
            return
        self._configuration.set_train(new)
        if new.seed != old.seed:  # the seed decides the split too
            self._datasets.split_again()
        if new.epochs != old.epochs:  # a gradual plan's last phases may now fall beyond the run
            self.model_warning_changed.emit(self.model_warning())
        self.edited.emit()

    @Slot(str)
    def set_arch(self, arch: str) -> None:
        model = self._configuration.model
        if arch == model.arch or self._shown_run.refused("change the architecture"):
            return
        self._set_model(replace(model, arch=arch))
        self.image_size_rule_changed.emit(*min_image_size(arch))
        self.image_size_problem_changed.emit(self.image_size_problem())
        self._describe_model()
        self._advisor.request()
        weights = self._configuration.model.weights
        if weights not in ("imagenet", "none"):  # a file made for one model may not fit another
            self._check_weights_file(weights, arch)

    @Slot(str)
    def set_weights(self, weights: str) -> None:
        model = self._configuration.model
        if weights == model.weights or self._shown_run.refused("change the weights"):
            return
        self._weights_before_file = model.weights
        self._set_model(replace(model, weights=weights))
        self._advisor.request()
        if weights not in ("imagenet", "none"):
            self._check_weights_file(weights, model.arch)

    def _set_model(self, model: ModelConfig) -> None:
        self._configuration.set_model(model)  # the runs controller forgets a run of another model
        self.weights_note_changed.emit(self.weights_note())
        self.model_warning_changed.emit(self.model_warning())

    def _check_weights_file(self, path: str, arch: str) -> None:
        """Load the file into the model the dataset needs; while the dataset shown is not yet the listed
        folder the configuration names, the check waits for it (its note says how many classes the new
        head has: the count of a folder listed before, or 2, would be wrong)."""
        if not self._classes_known():
            self._weights_waiting = (path, arch)
            self.weights_files_changed.emit([path] + [f for f in self.weights_files if f != path])  # shown meanwhile
            return
        self._weights_waiting = None
        self._weights.check(path, arch, self._datasets.classes())

    def _classes_known(self) -> bool:
        root, state = self._configuration.data.root, self._datasets.state
        return not root or (state.folder == root and (state.listing is not None or bool(state.error)))

    @Slot(str, list)
    def _on_weights_passed(self, path: str, notes: list) -> None:
        self._messages.error_raised.emit("")
        self._messages.notice.emit(" · ".join(notes))

    @Slot(str, str)
    def _on_weights_refused(self, path: str, message: str) -> None:
        fallback = self._weights_before_file if self._weights_before_file != path else "imagenet"
        model = self._configuration.model
        if model.weights == path and not self._shown_run.running:
            self._set_model(replace(model, weights=fallback))
        self._messages.error_raised.emit(f"{message} (weights set back to {self._configuration.model.weights})")

    # --- whole configurations -----------------------------------------------------------------------

    def apply_config(self, config: RunConfig, then: Callable[[], None] = lambda: None) -> bool:
        """Show a whole configuration (a project file, a run to continue): all of it or, when any
        part cannot work, none of it (the reason goes to error_raised); `then()` once it is shown.
        False when it is refused at once. Layer edits on a model other than the one shown are checked
        off the GUI thread (its structure is built for that): the configuration is shown when they pass."""
        return self._apply(config, True, then)  # a project's or run's plan: advice never replaces it by itself

    def reset(self) -> bool:
        """Back to the window's defaults on the demo dataset; False while a run is in progress."""
        if self._shown_run.running:
            return False
        self._apply(WINDOW_DEFAULTS, False, self._datasets.open_demo)  # a first dataset's advice may replace them
        return True

    def _apply(self, config: RunConfig, persons: bool, then: Callable[[], None]) -> bool:
        if self._shown_run.refused("open a project"):
            return False
        self._tasks.cancel(CHECK_EDITS)  # a configuration still being checked is not shown after this one
        try:
            config.validate()
            check_arch(config.model.arch)
            known = self._describer.known(config.model.arch, config.data.image_size)
            if config.plan.edits and known is None:
                self._tasks.submit(CHECK_EDITS, lambda: check_plan_edits(config),
                                   lambda _: self._show_config(config, persons, then), self._messages.error_raised.emit)
                return True
            check_plan_edits(config, known)
        except UserError as exc:
            self._messages.error_raised.emit(str(exc))
            return False
        self._show_config(config, persons, then)
        return True

    def _show_config(self, config: RunConfig, persons: bool, then: Callable[[], None]) -> None:
        if self._shown_run.refused("open a project"):  # a run started while its edits were checked
            return
        old_weights = self._configuration.model.weights
        self._plan.begin(persons)  # another configuration: undo does not reach into the one before
        self._configuration.set_all(config)  # the runs controller forgets a run of another configuration
        self._announce_consequences()
        dataset, data = self._datasets.state, self._configuration.data
        if data.root and (data.root != dataset.folder or dataset.error or data.task != dataset.task):
            self._datasets.open(data.root)
        elif data.root:
            self._datasets.split_again()
        self._describe_model()
        model = self._configuration.model
        if model.weights not in ("imagenet", "none") and model.weights != old_weights:
            self._weights_before_file = old_weights
            self._check_weights_file(model.weights, model.arch)
        then()

    # --- the model's layer tree -----------------------------------------------------------------------

    def _describe_model(self) -> None:
        if not self._classes_known():  # built once, when the listing gives the class count (_on_dataset_changed)
            self._describer.wait()
            return
        self._request_model()

    def _request_model(self) -> None:
        self._describer.request(self._configuration.model.arch, self._datasets.classes(),
                                self._configuration.data.image_size)

    @Slot(object)
    def _on_dataset_changed(self, state: DatasetState) -> None:
        if state.error:
            self._request_model()  # no classes to wait for: the tree shows the model all the same
        elif state.listing is not None:
            self._describe_model()  # the class count may have changed
        if self._weights_waiting is not None and self._classes_known():
            self._check_weights_file(*self._weights_waiting)

    @Slot(object)
    def _on_model_info(self, info: ModelInfo | None) -> None:
        if info is not None:
            try:
                build_plan(self._configuration.plan, info)
            except UserError as exc:  # tree edits (from a project) that this model does not have
                self._configuration.drop_plan_edits()
                self._messages.error_raised.emit(f"The layer edits do not fit {info.arch} and were dropped: {exc}")
        self.model_info_changed.emit(info)
        if info is not None:
            self._configuration.announce_plan()  # with the model's warning (_on_plan_changed)

    @Slot(object)
    def _on_plan_changed(self, plan: PlanConfig) -> None:
        self.model_warning_changed.emit(self.model_warning())
