"""`cluster-script`: a SLURM job script (srun + torchrun, c10d rendezvous, resume on requeue)."""

import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from app.cli import build_parser, main
from engine.config import DataConfig, RunConfig, save_project


@pytest.fixture
def project(tmp_path):
    path = tmp_path / "my project" / "birds.tsproj.json"  # a space: the script must quote it
    path.parent.mkdir()
    save_project(path, RunConfig(data=DataConfig(root=str(tmp_path / "data"))))
    return path


def _write(project, out, *extra):
    return main(["cluster-script", "--project", str(project), "--nodes", "3", "--gpus-per-node", "2",
                 "--out", str(out), *extra])


def test_the_script_passes_bash_n_and_names_srun_torchrun_nodes_and_project(project, tmp_path, capsys):
    out = tmp_path / "job.sbatch"
    assert _write(project, out, "--partition", "gpu", "--time", "02:30:00") == 0
    assert "sbatch" in capsys.readouterr().err
    text = out.read_text()
    check = subprocess.run(["bash", "-n", str(out)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    sbatch = [line for line in text.splitlines() if line.startswith("#SBATCH ")]
    for option in ("--nodes=3", "--ntasks-per-node=1", "--gpus-per-node=2", "--cpus-per-task=16",
                   "--time=02:30:00", "--partition=gpu", "--requeue", "--signal=B:USR1@300"):
        assert f"#SBATCH {option}" in sbatch
    assert "srun torchrun --nnodes 3 --nproc-per-node 2" in text and "--rdzv-backend c10d" in text
    assert f"PROJECT={shlex.quote(str(project))}" in text and "-m app.cli train" in text
    # Without a partition or time, no such lines (the cluster's defaults apply).
    assert main(["cluster-script", "--project", str(project), "--nodes", "1", "--gpus-per-node", "1"]) == 0
    printed = capsys.readouterr().out
    assert "--partition" not in printed and "--time" not in printed and "--nodes=1" in printed
    assert f"RUN_DIR={shlex.quote(str(project.parent / 'runs' / 'birds-cluster'))}" in printed
    # A project that names its output folder: the run goes there.
    save_project(project, RunConfig(data=DataConfig(root=str(tmp_path / "data")), out_dir=str(tmp_path / "out")))
    assert main(["cluster-script", "--project", str(project), "--nodes", "1", "--gpus-per-node", "1"]) == 0
    assert f"RUN_DIR={shlex.quote(str(tmp_path / 'out'))} " in capsys.readouterr().out


def _fake_slurm(tmp_path) -> dict:
    """scontrol and srun stand-ins: srun records its arguments, one per line, instead of starting anything."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/bash\nprintf 'node7\\nnode8\\nnode9\\n'\n")
    (bin_dir / "srun").write_text(f"#!/bin/bash\nprintf '%s\\n' \"$@\" > {shlex.quote(str(tmp_path / 'srun.args'))}\n")
    for tool in bin_dir.iterdir():
        tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    return {**env, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
            "SLURM_JOB_NODELIST": "node[7-9]"}


def _run_job(script: Path, env: dict, tmp_path) -> list[str]:
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return (tmp_path / "srun.args").read_text().splitlines()


def test_the_job_starts_a_run_then_resumes_it_when_requeued(project, tmp_path):
    script, run_dir = tmp_path / "job.sbatch", tmp_path / "shared runs" / "birds"
    assert _write(project, script, "--run-dir", str(run_dir), "--port", "29999") == 0
    env = _fake_slurm(tmp_path)

    args = _run_job(script, env, tmp_path)
    assert args[:4] == ["torchrun", "--nnodes", "3", "--nproc-per-node"] and args[4] == "2"
    assert args[args.index("--rdzv-endpoint") + 1] == "node7:29999"  # the first node of the allocation
    assert args[args.index("--rdzv-id") + 1] == "4242"
    train = args[args.index("app.cli") + 1:]
    assert train == ["train", "--project", str(project), "--out", str(run_dir)]  # spaces survive, unsplit
    parsed = build_parser().parse_args(train)
    assert parsed.command == "train" and parsed.project == str(project) and parsed.out == str(run_dir)

    # Requeued after an epoch finished: the run continues from its resume state.
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text("{}")
    (run_dir / "resume.pt").write_bytes(b"state")
    train = _run_job(script, env, tmp_path)[-3:]
    assert train == ["train", "--resume", str(run_dir)]
    assert build_parser().parse_args(train).resume == str(run_dir)

    # Requeued before any epoch finished: nothing to resume; the started folder is kept aside, not lost.
    (run_dir / "resume.pt").unlink()
    train = _run_job(script, env, tmp_path)[-5:]
    assert train == ["train", "--project", str(project), "--out", str(run_dir)]
    assert (run_dir.parent / "birds.unfinished-4242-0" / "run.json").is_file() and not run_dir.exists()


@pytest.mark.parametrize("flags, words", [
    (["--nodes", "0"], "--nodes must be between 1"),
    (["--gpus-per-node", "-1"], "--gpus-per-node must be between 1"),
    (["--time", "2:61:00"], "is not HH:MM:SS"),
    (["--time", "00:00:00"], "no time at all"),
    (["--partition", "gpu\n#SBATCH --x"], "not a SLURM partition name"),
    (["--cpus-per-task", "0"], "--cpus-per-task must be at least 1"),
    (["--port", "80"], "--port must be between 1024"),
])
def test_bad_numbers_and_names_are_one_line(project, tmp_path, capsys, flags, words):
    argv = ["cluster-script", "--project", str(project), "--nodes", "2", "--gpus-per-node", "1", *flags]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("transfer-studio: error: ") and words in lines[0], captured.err
    assert captured.out == ""


def test_bad_projects_and_outputs_are_one_line(project, tmp_path, capsys):
    broken = tmp_path / "broken.tsproj.json"
    broken.write_text("{not json")
    relative = tmp_path / "relative.tsproj.json"
    save_project(relative, RunConfig(data=DataConfig(root="data/birds")))
    cases = [(tmp_path / "missing.tsproj.json", "project file not found"),
             (broken, "cannot read project file"),
             (relative, "is relative")]
    for path, words in cases:
        assert main(["cluster-script", "--project", str(path), "--nodes", "1", "--gpus-per-node", "1"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert _write(project, tmp_path) == 2  # --out a folder
    assert "is a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:  # not a number at all: argparse's one usage line
        main(["cluster-script", "--project", str(project), "--nodes", "two", "--gpus-per-node", "1"])
    assert exited.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_the_window_saves_the_project_and_writes_the_script(window, qtbot, tmp_path):
    from PySide6.QtWidgets import QDialog

    from engine.model.project import load_project

    action = next(a for a in window.menuBar().actions()[0].menu().actions() if "cluster job" in a.text().replace("&", ""))
    action.trigger()
    dialog = window.findChild(QDialog, "clusterDialog")
    assert dialog is not None and dialog.isVisible()
    project, script = tmp_path / "job.tsproj.json", tmp_path / "job.sbatch"
    dialog.project_edit.setText(str(project))
    dialog.script_edit.setText(str(script))
    dialog.nodes.setValue(4)
    dialog.gpus.setValue(8)
    dialog.partition_edit.setText("a100")
    dialog.time_edit.setText("1:00")
    dialog.write_button.click()
    assert "is not HH:MM:SS" in dialog.result.text() and not script.exists()
    dialog.time_edit.setText("1-00:00:00")
    dialog.write_button.click()
    assert "Wrote" in dialog.result.text(), dialog.result.text()
    assert load_project(project).model.arch == window.session.config().model.arch  # the configuration shown
    text = script.read_text()
    assert "#SBATCH --nodes=4" in text and "--nproc-per-node 8" in text and "#SBATCH --time=1-00:00:00" in text
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    dialog.close()


def _dialog(qtbot, project, script, config):
    from widgets.cluster_dialog import ClusterDialog

    saved = []

    def save(path):
        saved.append(path)
        save_project(path, config)

    dialog = ClusterDialog(str(project), save, config=lambda: config)
    qtbot.addWidget(dialog)
    dialog.script_edit.setText(str(script))
    return dialog, saved


def test_a_refused_job_leaves_the_project_and_script_as_they_were(qtbot, tmp_path):
    project, script = tmp_path / "birds.tsproj.json", tmp_path / "birds.sbatch"
    project.write_text("my own project\n")
    script.write_text("my own script\n")
    dialog, saved = _dialog(qtbot, project, script, RunConfig(data=DataConfig(root=str(tmp_path / "data"))))
    assert "output folder" in dialog.result.text()  # the rule of commit 5d96b96, not runs/<project>-cluster only
    dialog.time_edit.setText("1:00")
    dialog.write_button.click()
    assert "is not HH:MM:SS" in dialog.result.text()
    relative, _ = _dialog(qtbot, project, script, RunConfig(data=DataConfig(root="data/birds")))
    relative.write_button.click()
    message = relative.result.text()
    assert "is relative" in message and "birds.tsproj.json" in message and "checking" not in message, message
    assert saved == [] and project.read_text() == "my own project\n" and script.read_text() == "my own script\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["birds.sbatch", "birds.tsproj.json"]  # no check file left
    # A project in folders that do not exist yet: a refused job leaves none of them behind.
    relative.project_edit.setText(str(tmp_path / "new" / "deeper" / "birds.tsproj.json"))
    relative.write_button.click()
    assert "is relative" in relative.result.text() and not (tmp_path / "new").exists()


def test_existing_files_are_replaced_only_when_confirmed(qtbot, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QMessageBox

    from engine.model.project import load_project

    project, script = tmp_path / "birds.tsproj.json", tmp_path / "birds.sbatch"
    project.write_text("my own project\n")
    config = RunConfig(data=DataConfig(root=str(tmp_path / "data")))
    dialog, saved = _dialog(qtbot, project, script, config)
    asked = []

    def answer(choice):
        def question(parent, title, text, *args):
            asked.append(text)
            return choice
        return question

    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.No))
    dialog.write_button.click()
    assert "Nothing written" in dialog.result.text() and str(project) in asked[0] and str(script) not in asked[0]
    assert saved == [] and project.read_text() == "my own project\n" and not script.exists()
    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.Yes))
    dialog.write_button.click()
    assert "Wrote" in dialog.result.text(), dialog.result.text()
    assert saved == [str(project)] and load_project(project).data.root == config.data.root
    text = script.read_text()
    assert f"PROJECT={shlex.quote(str(project))}" in text  # the project, not the copy it was checked as
    assert f"RUN_DIR={shlex.quote(str(tmp_path / 'runs' / 'birds-cluster'))}" in text and "ts-birds" in text
    # Nothing existed for this pair: no question.
    asked.clear()
    dialog.project_edit.setText(str(tmp_path / "new.tsproj.json"))
    dialog.script_edit.setText(str(tmp_path / "new.sbatch"))
    dialog.write_button.click()
    assert "Wrote" in dialog.result.text() and asked == [] and (tmp_path / "new.sbatch").is_file()
    assert load_project(tmp_path / "new.tsproj.json").data.root == config.data.root
    # A folder that does not exist (a mistyped path) is refused in one line, and none is created (issue 21, item 22).
    dialog.project_edit.setText(str(tmp_path / "fresh" / "new.tsproj.json"))
    dialog.script_edit.setText(str(tmp_path / "fresh" / "new.sbatch"))
    dialog.write_button.click()
    assert "does not exist" in dialog.result.text() and not (tmp_path / "fresh").exists()


def test_a_newline_in_the_project_name_starts_no_line_bash_runs(tmp_path, capsys):
    """The script's comment names the project; a file name with a newline used to end the comment."""
    project = tmp_path / "evil\ntouch PWNED\n#.json"
    save_project(project, RunConfig(data=DataConfig(root=str(tmp_path / "data"))))
    assert main(["cluster-script", "--project", str(project), "--nodes", "1", "--gpus-per-node", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("# Transfer Studio: train ") and "evil\\ntouch PWNED" in lines[1]
    # sbatch reads #SBATCH lines up to the first line that is not a comment: all of them come first.
    first_command = next(i for i, line in enumerate(lines[1:], 1) if not line.startswith("#"))
    assert not any(line.startswith("#SBATCH") for line in lines[first_command:])
    assert f"cd {Path(__file__).resolve().parents[1]}  #" in "\n".join(lines)  # the folder holding app/


def test_the_script_never_replaces_its_project_and_cpus_have_a_ceiling(project, tmp_path, capsys):
    before = project.read_bytes()
    link = tmp_path / "link.sbatch"
    link.symlink_to(project)
    for out in (project, link):
        assert main(["cluster-script", "--project", str(project), "--nodes", "1", "--gpus-per-node", "1",
                     "--out", str(out)]) == 2
        assert "is the project file itself" in capsys.readouterr().err
    assert project.read_bytes() == before
    assert main(["cluster-script", "--project", str(project), "--nodes", "1", "--gpus-per-node", "1",
                 "--cpus-per-task", "99999999"]) == 2
    assert "--cpus-per-task must be at most" in capsys.readouterr().err
