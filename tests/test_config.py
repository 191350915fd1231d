"""Run configs and project files: a file is fully valid or refused in one line naming the field."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine.config import DataConfig, ModelConfig, PlanConfig, PlanEdit, RunConfig, TrainConfig, save_project
from engine.model.project import load_project, validate_project
from engine.errors import UserError


def write_project(tmp_path, body: dict, name: str = "project.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"transfer_studio_project": 1, **body}))
    return path


def refusal(tmp_path, body: dict) -> str:
    with pytest.raises(UserError) as info:
        load_project(write_project(tmp_path, body))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("project.json: ")
    return message


def test_a_saved_project_loads_back_equal(tmp_path):
    config = RunConfig(
        data=DataConfig(root="/data/birds", val_fraction=0.1, image_size=160, num_workers=None),
        model=ModelConfig(arch="resnet34", weights="none"),
        plan=PlanConfig(strategy="discriminative", base_lr=3e-4,
                        edits=(PlanEdit("layer4", lr=1e-4), PlanEdit("layer1", frozen=True, train_norm=True))),
        train=TrainConfig(epochs=3, telemetry=False, warmup_epochs=1),
    )
    save_project(tmp_path / "p.json", config)
    assert load_project(tmp_path / "p.json") == config


def test_from_dict_round_trips_and_fills_defaults():
    config = RunConfig(train=TrainConfig(telemetry=False), plan=PlanConfig(edits=(PlanEdit("fc", lr=1e-2),)))
    assert RunConfig.from_dict(config.to_dict()) == config
    assert RunConfig.from_dict({}) == RunConfig()
    lr = RunConfig.from_dict({"plan": {"base_lr": 1}}).plan.base_lr
    assert lr == 1.0 and isinstance(lr, float)  # an integer is a fine number


@pytest.mark.parametrize("body, expected", [
    ({"data": {"image_size": "big"}}, "data.image_size must be an integer, got 'big'"),
    ({"data": {"image_size": 224.5}}, "data.image_size must be an integer, got 224.5"),
    ({"data": {"image_size": True}}, "data.image_size must be an integer, got true"),  # a bool is not an int
    ({"train": {"epochs": False}}, "train.epochs must be an integer, got false"),
    ({"data": {"num_workers": "4"}}, "data.num_workers must be an integer or null, got '4'"),
    ({"data": {"feature_cache": 1}}, "data.feature_cache must be true or false, got 1"),
    ({"train": {"telemetry": "yes"}}, "train.telemetry must be true or false, got 'yes'"),
    ({"plan": {"base_lr": "1e-3"}}, "plan.base_lr must be a number, got '1e-3'"),
    ({"plan": {"base_lr": True}}, "plan.base_lr must be a number, got true"),
    ({"plan": {"base_lr": None}}, "plan.base_lr must be a number, got null"),
    ({"model": {"arch": 18}}, "model.arch must be a string, got 18"),
    ({"model": "resnet18"}, "model must be an object ({...}), got 'resnet18'"),
    ({"out_dir": ["runs"]}, "out_dir must be a string, got a list"),
    ({"plan": {"edits": {"module": "fc"}}}, "plan.edits must be a list, got an object"),
    ({"plan": {"edits": [{"module": "fc", "lr": "fast"}]}}, "plan.edits[0].lr must be a number or null, got 'fast'"),
    ({"plan": {"edits": [{"module": "fc"}, {"frozen": True}]}}, "plan.edits[1].module is missing"),
    ({"plan": {"edits": [{"module": "fc", "frozen": "no"}]}}, "plan.edits[0].frozen must be true or false or null"),
    ({"data": {"image_size": 224, "colour": "red"}}, "unknown setting data.colour"),
    ({"plan": {"edits": [{"module": "fc", "speed": 2}]}}, "unknown setting plan.edits[0].speed"),
    ({"extra": 1}, "unknown setting extra"),
    ({"train": {"weight_decay": float("nan")}}, "train.weight_decay must be a finite number, got nan"),
])
def test_wrong_types_and_unknown_keys_are_refused_naming_the_field(tmp_path, body, expected):
    assert expected in refusal(tmp_path, body)


@pytest.mark.parametrize("body, expected", [
    ({"data": {"image_size": 8}}, "image size must be at least 16 px"),
    ({"plan": {"base_lr": 0}}, "base LR must be > 0"),
    ({"train": {"optimizer": "lion"}}, "optimizer must be one of"),
    ({"data": {"num_workers": -1}}, "loader workers must be >= 0"),
    ({"plan": {"edits": [{"module": "fc", "lr": -1e-3}]}}, "LR for 'fc' must be > 0"),
])
def test_out_of_range_values_are_refused(tmp_path, body, expected):
    assert expected in refusal(tmp_path, body)


def test_an_unknown_architecture_is_refused_with_a_suggestion(tmp_path):
    message = refusal(tmp_path, {"model": {"arch": "resnet181"}})
    assert "unknown architecture 'resnet181'" in message and "resnet18" in message
    with pytest.raises(UserError, match="unknown architecture"):
        validate_project(RunConfig(model=ModelConfig(arch="not-a-model")))
    validate_project(RunConfig())  # the defaults are a valid project


def test_an_image_size_the_architecture_cannot_take_is_refused(tmp_path):
    message = refusal(tmp_path, {"model": {"arch": "vit_b_16"}, "data": {"image_size": 40}})
    assert "multiple of 16 px" in message and "48 px" in message


def test_project_file_itself_is_checked(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"transfer_studio_project": "1"}))
    with pytest.raises(UserError, match="transfer_studio_project must be a format version"):
        load_project(path)
    path.write_text(json.dumps({"transfer_studio_project": 99}))
    with pytest.raises(UserError, match="newer Transfer Studio"):
        load_project(path)
    path.write_text("[1, 2]")
    with pytest.raises(UserError, match="not a Transfer Studio project"):
        load_project(path)
    path.write_text("{not json")
    with pytest.raises(UserError, match="cannot read project file"):
        load_project(path)
    with pytest.raises(UserError, match="not found"):
        load_project(tmp_path / "missing.json")


def test_all_or_nothing_one_bad_field_refuses_the_whole_file(tmp_path):
    """Every field is checked before anything is returned, wherever the bad one is: a window
    that applies the result can never apply half a project."""
    good = RunConfig(data=DataConfig(image_size=160), train=TrainConfig(epochs=7)).to_dict()
    for section, key, bad in [("data", "image_size", "big"), ("train", "epochs", "7"), ("model", "arch", "nope"),
                              ("train", "seed", 1.5), ("plan", "strategy", "all")]:
        body = json.loads(json.dumps(good))
        body[section][key] = bad
        with pytest.raises(UserError, match=key if key != "strategy" else "strategy"):
            load_project(write_project(tmp_path, body))


def test_malformed_run_config_raises_user_error_not_type_error():
    for raw in (None, [], "x", {"data": []}, {"plan": {"edits": [1]}}, {"train": {"epochs": "10"}}):
        with pytest.raises(UserError):
            RunConfig.from_dict(raw)


def test_config_imports_alone_without_torch_or_qt():
    code = ("import sys; import engine.config; "
            "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'PySide6', 'pyqtgraph')]")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=__import__("pathlib").Path(__file__).parents[1])


def test_package_metadata_reads_without_a_license_warning():
    """setuptools >= 77 deprecates `license = { text = ... }`; installing printed its warning."""
    import warnings
    from pathlib import Path

    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip("setuptools < 77 reads no SPDX license strings (the build installs a newer one)")
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), Path(__file__).parents[1] / "pyproject.toml")
    assert not [w for w in caught if "license" in str(w.message).lower()]
    assert dist.metadata.license_expression == "MIT"
