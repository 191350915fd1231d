"""File > Export cluster job…: nodes, GPUs per node, partition, time limit and where to save; checks
the job, then writes the shown configuration as a project and a SLURM job script that trains it
(engine.distributed.cluster_script)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QDialog, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QMessageBox,
                               QPushButton, QSpinBox, QVBoxLayout)

from engine.atomic import atomic_write_bytes
from engine.distributed.cluster_script import MAX_GPUS_PER_NODE, MAX_NODES, check_script_path, job_for_project, render
from engine.config import RunConfig
from engine.model.project import validate_project
from engine.errors import UserError

DEFAULT_TIME = "04:00:00"


def script_path_for(project: str) -> str:
    """project.tsproj.json -> project.sbatch beside it."""
    path = Path(project)
    return str(path.with_name((path.name.split(".")[0] or "job") + ".sbatch"))


def check_folder_exists(path: Path) -> None:
    """Nothing is written outside folders the person chose: UserError when `path`'s folder is missing."""
    if not path.parent.is_dir():
        raise UserError(f"the folder {path.parent} does not exist: choose an existing folder for {path.name}")


class ClusterDialog(QDialog):
    def __init__(self, project: str, save_project: Callable[[str], None], config: Callable[[], RunConfig],
                 parent=None):
        """`save_project(path)` writes the configuration shown to `path` (the window's Save project);
        `config()` returns that configuration, checked as a job before anything is written."""
        super().__init__(parent)
        self.setObjectName("clusterDialog")
        self.setWindowTitle("Export cluster job")
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)  # the window keeps no reference to it
        self._save_project = save_project
        self._config = config
        self.project_edit = self._path_edit("clusterProjectEdit", project,
                                            "The configuration shown is saved to this project file first.")
        self.script_edit = self._path_edit("clusterScriptEdit", script_path_for(project), "The SLURM job script.")
        self.nodes = self._spin("clusterNodes", MAX_NODES, "Machines the job runs on.")
        self.gpus = self._spin("clusterGpus", MAX_GPUS_PER_NODE, "GPUs per machine: one training process each.")
        self.partition_edit = QLineEdit()
        self.partition_edit.setObjectName("clusterPartition")
        self.partition_edit.setPlaceholderText("the cluster's default")
        self.time_edit = QLineEdit(DEFAULT_TIME)
        self.time_edit.setObjectName("clusterTime")
        self.time_edit.setToolTip("Time limit, HH:MM:SS (or D-HH:MM:SS); empty: the partition's default. Near "
                                  "it the job requeues itself and continues from its last completed epoch.")
        self.result = QLabel("The run folder is the project's output folder when it names an absolute one, "
                             "else runs/<project>-cluster beside the project: keep both on storage every node sees.")
        self.result.setObjectName("clusterResult")
        self.result.setWordWrap(True)
        self.write_button = QPushButton("Write script")
        self.write_button.setObjectName("clusterWriteButton")
        self.write_button.setDefault(True)
        self.write_button.clicked.connect(self.write)
        close = QPushButton("Close")
        close.clicked.connect(self.reject)
        form = QFormLayout()
        form.addRow("Project file", self._with_browse(self.project_edit, self._browse_project))
        form.addRow("Nodes", self.nodes)
        form.addRow("GPUs per node", self.gpus)
        form.addRow("Partition", self.partition_edit)
        form.addRow("Time limit", self.time_edit)
        form.addRow("Save script as", self._with_browse(self.script_edit, self._browse_script))
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.write_button)
        buttons.addWidget(close)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.result)
        layout.addLayout(buttons)
        self.setMinimumWidth(560)

    def write(self) -> None:
        """Check the job, ask before replacing a file, then save the project and the script; a problem is
        one line in the dialog, and a refused job writes nothing."""
        project, script = self.project_edit.text().strip(), self.script_edit.text().strip()
        try:
            if not project or not script:
                raise UserError("name both the project file and the script file")
            paths = [Path(project).expanduser().absolute(), check_script_path(script, project).absolute()]
            if paths[0].is_dir():
                raise UserError(f"{paths[0]} is a folder; name a file")
            config = self._config()
            validate_project(config)  # what loading the saved project would check
            job = job_for_project(config, paths[0], self.nodes.value(), self.gpus.value(),
                                  partition=self.partition_edit.text().strip() or None,
                                  time_limit=self.time_edit.text().strip() or None)
            for path in paths:  # saving would create the missing folders: a mistyped path, a tree of them
                check_folder_exists(path)
            if not self._may_replace([path for path in paths if path.exists()]):
                self.result.setText("Nothing written: choose other file names, or replace the files.")
                return
            self._save_project(str(paths[0]))  # the paths checked, "~" expanded: never a folder named "~"
            atomic_write_bytes(paths[1], render(job).encode())
        except UserError as exc:
            self.result.setText(f"✘ {exc}")
            return
        except OSError as exc:
            self.result.setText(f"✘ cannot write {exc.filename or script}: {exc.strerror or exc}")
            return
        self.result.setText(f"✔ Wrote {script} for {Path(project).name}: {job.nodes} node(s) × {job.gpus_per_node} "
                            f"GPU(s), run folder {job.run_dir}. Submit it with: sbatch {script}")

    def _may_replace(self, existing: list[Path]) -> bool:
        if not existing:
            return True
        names = "\n".join(str(path) for path in existing)
        answer = QMessageBox.question(self, "Replace files", f"Replace these files?\n{names}",
                                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                      QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def _spin(self, name: str, maximum: int, tip: str) -> QSpinBox:
        box = QSpinBox()
        box.setObjectName(name)
        box.setRange(1, maximum)
        box.setToolTip(tip)
        return box

    def _path_edit(self, name: str, text: str, tip: str) -> QLineEdit:
        edit = QLineEdit(text)
        edit.setObjectName(name)
        edit.setToolTip(tip)
        return edit

    def _with_browse(self, edit: QLineEdit, browse) -> QHBoxLayout:
        button = QPushButton("Browse…")
        button.clicked.connect(browse)
        row = QHBoxLayout()
        row.addWidget(edit, 1)
        row.addWidget(button)
        return row

    def _browse_project(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save project as", self.project_edit.text(),
                                              "Transfer Studio project (*.tsproj.json *.json)",
                                              options=QFileDialog.Option.DontConfirmOverwrite)  # Write asks
        if path:
            self.project_edit.setText(path)
            self.script_edit.setText(script_path_for(path))

    def _browse_script(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save job script as", self.script_edit.text(),
                                              "SLURM job script (*.sbatch *.sh);;All files (*)",
                                              options=QFileDialog.Option.DontConfirmOverwrite)  # Write asks
        if path:
            self.script_edit.setText(path)
