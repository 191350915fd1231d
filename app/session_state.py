"""The state every controller of the session shares, each piece with one owner: the configuration the
person is building (Configuration), the run the window shows (ShownRun, changed only by the runs
controller) and the lines said to the person (Messages)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from PySide6.QtCore import QObject, Signal

from app.run_events import RunFailure
from engine.config import DataConfig, ModelConfig, PlanConfig, RunConfig, TrainConfig
from engine.events import FitResult
from engine.runs.run_folder import RunFolder

# What the window starts with: the guide's choice for a small dataset like the 240-image demo
# (feature extraction below 500 images), at a size that trains in seconds on a CPU.
WINDOW_DEFAULTS = RunConfig(
    data=DataConfig(image_size=96, augment="none"),
    plan=PlanConfig().with_strategy("feature-extraction"),
    train=TrainConfig(epochs=5),
)


class Messages(QObject):
    """What any controller says to the person."""

    notice = Signal(str)  # one line for the status bar
    error_raised = Signal(str)  # one line the person must see ("" clears it)


class Configuration(QObject):
    """The draft: data, model, plan and training settings as the person edits them. The base LR, the
    discriminative factor and the gradual interval live in its PlanConfig and nowhere else."""

    data_changed = Signal(object)  # DataConfig
    model_changed = Signal(object)  # ModelConfig
    plan_changed = Signal(object)  # PlanConfig
    train_changed = Signal(object)  # TrainConfig

    def __init__(self, parent=None):
        super().__init__(parent)
        self._data, self._model = WINDOW_DEFAULTS.data, WINDOW_DEFAULTS.model
        self._plan, self._train = WINDOW_DEFAULTS.plan, WINDOW_DEFAULTS.train

    @property
    def data(self) -> DataConfig:
        return self._data

    @property
    def model(self) -> ModelConfig:
        return self._model

    @property
    def plan(self) -> PlanConfig:
        return self._plan

    @property
    def train(self) -> TrainConfig:
        return self._train

    def draft(self) -> RunConfig:
        return RunConfig(data=self._data, model=self._model, plan=self._plan, train=self._train)

    def split_settings(self) -> tuple[float, int]:
        """What the dataset's split depends on: the validation share and the seed."""
        return self._data.val_fraction, self._train.seed

    def set_data(self, data: DataConfig) -> None:
        self._data = data
        self.data_changed.emit(data)

    def set_model(self, model: ModelConfig) -> None:
        self._model = model
        self.model_changed.emit(model)

    def set_plan(self, plan: PlanConfig) -> None:
        self._plan = plan
        self.plan_changed.emit(plan)

    def set_train(self, train: TrainConfig) -> None:
        self._train = train
        self.train_changed.emit(train)

    def set_all(self, config: RunConfig) -> None:
        """A whole configuration (a project, a run to continue): every part is in place before any is told."""
        self._data, self._model, self._plan, self._train = config.data, config.model, config.plan, config.train
        self.announce()

    def drop_plan_edits(self) -> None:
        """Tree edits that the model built just now does not have; quietly: the views hear of the plan
        with the model, since an old tree would refuse it."""
        self._plan = replace(self._plan, edits=())

    def announce(self) -> None:
        self.data_changed.emit(self._data)
        self.model_changed.emit(self._model)
        self.plan_changed.emit(self._plan)
        self.train_changed.emit(self._train)

    def announce_plan(self) -> None:
        """The plan again, for a view that showed another (an edit refused, a layer tree built)."""
        self.plan_changed.emit(self._plan)


@dataclass(frozen=True)
class RunState:
    """The run the window shows: the one in progress, or the last one of this configuration."""

    folder: RunFolder | None = None  # None until the engine has created it
    config: RunConfig | None = None
    running: bool = False
    result: FitResult | None = None
    failure: RunFailure | None = None
    name: str = ""  # the name the person gave the run ("" for none): it follows the run when continued

    @property
    def shown_name(self) -> str:
        """What the run is called in the window: its given name, else its folder's ("" before it has one)."""
        return self.name or (self.folder.path.name if self.folder is not None else "")

    @property
    def can_export(self) -> bool:
        return not self.running and self.folder is not None and self.folder.has_checkpoint()

    @property
    def can_continue(self) -> bool:
        return not self.running and self.folder is not None and self.folder.can_resume()


class ShownRun(QObject):
    """The run the window shows. Only the runs controller changes it; while it runs, every other
    controller refuses edits (refused()), so the window shows what trains."""

    changed = Signal(object)  # RunState
    renamed = Signal(object)  # RunState: only its name changed (nothing to read again, nothing to redraw)

    def __init__(self, messages: Messages, parent=None):
        super().__init__(parent)
        self._messages = messages
        self._state = RunState()

    @property
    def state(self) -> RunState:
        return self._state

    @property
    def running(self) -> bool:
        return self._state.running

    def set(self, state: RunState) -> None:
        self._state = state
        self.changed.emit(state)

    def rename(self, name: str) -> None:
        self._state = replace(self._state, name=name)
        self.renamed.emit(self._state)

    def announce(self) -> None:
        self.changed.emit(self._state)

    def refused(self, what: str) -> bool:
        """True, and the person told why, while a run is in progress."""
        if self._state.running:
            self._messages.notice.emit(f"A run is in progress: stop it to {what}.")
            return True
        return False
