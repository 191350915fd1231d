"""--adapt-norm auto: the trunk's features with the loaded BatchNorm statistics and with statistics adapted to
the training images (AdaBN), the head fitted on each, the better validation balanced accuracy kept (a tie
keeps them as loaded); the freeze proof holds the run to the chosen statistics; old true/false settings load.

Whole runs on a tiny convolutional net (built in place of resnet18) and 32 px images of two classes,
dark and bright: a second or less each, CPU.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import engine.training.setup as run_setup
import engine.training.shared_parts as run_parts
from engine.config import DataConfig, ModelConfig, PlanConfig, RunConfig, TrainConfig, save_project
from engine.errors import UserError
from engine.events import NormChoice
from engine.model.architectures import BuiltModel, describe, preprocessing_for
from engine.model.project import load_project
from engine.runs.event_lines import EventLines, read_event_line
from engine.runs.run_folder import RunFolder
from engine.training.batches import AugmentedFeatureBatches
from engine.training.head_fit import HeadScore
from engine.training.norm_choice import ADAPT, KEEP, MEASURE, decide, plan_norm
from engine.training.trainer import fit
from tests.helpers import Recorder, cli

BN_BUFFERS = ("1.running_mean", "1.running_var", "1.num_batches_tracked")


@pytest.fixture(scope="module")
def dark_and_bright(tmp_path_factory):
    """Two classes told apart by brightness alone, 12 noisy 32 px images each."""
    root = tmp_path_factory.mktemp("brightness") / "data"
    rng = np.random.default_rng(0)
    for name, level in (("dark", 70), ("bright", 180)):
        (root / name).mkdir(parents=True)
        for i in range(12):
            pixels = np.clip(level + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:02d}.png")
    return root


def tiny_net(loaded_mean: float, batch_norm: bool = True, outputs: int = 2) -> nn.Module:
    """conv -> BatchNorm whose loaded statistics are (loaded_mean, 1) -> ReLU -> pool -> head ("5")."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8) if batch_norm else nn.Identity(), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, outputs))
    with torch.no_grad():
        model[0].weight.copy_(torch.linspace(-0.3, 0.3, 8).view(8, 1, 1, 1).expand(8, 3, 3, 3))
        model[0].bias.zero_()
        if batch_norm:
            model[1].running_mean.fill_(loaded_mean)
            model[1].num_batches_tracked.fill_(1000)
    return model


def built_as(monkeypatch, model: nn.Module) -> nn.Module:
    """set_up builds `model` (as "resnet18" with ImageNet weights: nothing is loaded or downloaded)."""
    def build(arch, classes, weights, size, min_classes=2):
        return BuiltModel(model, describe(model, arch, classes, size), preprocessing_for(arch, size), [])

    monkeypatch.setattr(run_parts, "build_model", build)
    return model


def config(data, out, **train) -> RunConfig:
    augment = train.pop("augment", "none")
    # No loader workers: starting one costs seconds, and these images decode in milliseconds.
    return RunConfig(data=DataConfig(root=str(data), image_size=32, augment=augment, val_fraction=0.34,
                                     num_workers=0),
                     model=ModelConfig("resnet18", "imagenet"),
                     plan=PlanConfig(strategy="feature-extraction", base_lr=0.05),
                     train=TrainConfig(epochs=train.pop("epochs", 4), batch_size=8, device="cpu", precision="off",
                                       telemetry=False, **train),
                     out_dir=str(out))


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch, one_intra_op_thread):
    """Features are cached per weights file: every tiny net here says "resnet18, ImageNet weights".
    (One intra-op thread: tensors this small lose time in hand-offs.)"""
    monkeypatch.setenv("TRANSFER_STUDIO_CACHE", str(tmp_path / "cache"))


def statistics(state: dict) -> list[torch.Tensor]:
    return [state[key] for key in BN_BUFFERS]


# --- the two constructed cases ---------------------------------------------------------------------


def test_auto_adapts_when_the_loaded_statistics_collapse_the_features(dark_and_bright, tmp_path, monkeypatch):
    # A loaded mean of 1000 puts every channel below zero before the ReLU: both classes' features are 0.
    model = built_as(monkeypatch, tiny_net(loaded_mean=1000.0))
    loaded = [t.clone() for t in statistics(model.state_dict())]
    recorder = Recorder()
    result = fit(config(dark_and_bright, tmp_path / "run"), recorder)

    choice = recorder.started[0].norm_choice
    assert choice.setting == "auto" and choice.adapted and choice.measured
    assert choice.pinned_score == 0.5 and choice.adapted_score == 1.0 and choice.gain_points == 50.0
    assert choice.line in recorder.started[0].notes
    assert "adapted to the training images (AdaBN) (auto: val balanced accuracy 100.0% adapted, 50.0% as loaded, " \
           "+50.0 points" in choice.line
    # The freeze proof holds the run to the adapted statistics: intact, and they are what the checkpoint carries.
    assert result.integrity.intact and result.integrity.checked == 7  # conv and BatchNorm weights and biases, its 3 buffers
    saved = torch.load(result.checkpoint, weights_only=True)["model"]
    assert not torch.equal(statistics(saved)[0], loaded[0])
    assert all(torch.equal(a, b) for a, b in zip(statistics(saved), statistics(model.state_dict())))
    # The head the run trained is the one measured: the same score on the same features.
    epochs = RunFolder(tmp_path / "run").read_epochs()
    assert max(e.val_balanced_accuracy for e in epochs) == choice.adapted_score
    recorded = RunFolder(tmp_path / "run").read_run().norm_choice
    assert (recorded.adapted, recorded.pinned_score, recorded.adapted_score) == (True, 0.5, 1.0)
    assert recorded.seconds == round(choice.seconds, 3)


def test_auto_keeps_the_loaded_statistics_when_adapting_does_not_help(dark_and_bright, tmp_path, monkeypatch):
    model = built_as(monkeypatch, tiny_net(loaded_mean=0.0))  # the loaded statistics already separate them
    loaded = [t.clone() for t in statistics(model.state_dict())]
    recorder = Recorder()
    result = fit(config(dark_and_bright, tmp_path / "run", epochs=2), recorder)

    choice = recorder.started[0].norm_choice
    assert choice.measured and not choice.adapted
    assert choice.pinned_score == choice.adapted_score == 1.0  # a tie keeps them as loaded
    assert "not adapted (as loaded)" in choice.line and "a tie keeps them as loaded" in choice.line
    assert result.integrity.intact and result.integrity.checked == 7
    saved = torch.load(result.checkpoint, weights_only=True)["model"]
    assert all(torch.equal(a, b) for a, b in zip(statistics(saved), loaded))  # bit for bit as loaded
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["norm_statistics"]["adapted"] is False and record["norm_statistics"]["line"] == choice.line


def labels_csv(images, column: str, cell) -> Path:
    """A labels CSV over the dark and bright images: `column` is "labels" or "value", `cell(name, i)` its text."""
    rows = [f"{name}/{i:02d}.png,{cell(name, i)}" for name in ("dark", "bright") for i in range(12)]
    table = images / f"{column}.csv"
    table.write_text(f"path,{column}\n" + "\n".join(rows) + "\n")
    return table


@pytest.mark.parametrize("column, cell, outputs, score, metric", [
    ("labels", lambda name, i: name, 2, "mAP", "val_mAP"),
    ("value", lambda name, i: (70 if name == "dark" else 180) + i, 1, "R²", "val_r2"),
])
def test_auto_measures_multi_label_by_map_and_regression_by_r2(dark_and_bright, tmp_path, monkeypatch, column, cell,
                                                                 outputs, score, metric):
    """The loaded statistics collapse the features as above: the task's own score says to adapt, and
    the head the run trains is the one measured."""
    built_as(monkeypatch, tiny_net(loaded_mean=1000.0, outputs=outputs))
    recorder = Recorder()
    result = fit(config(labels_csv(dark_and_bright, column, cell), tmp_path / "run", epochs=6), recorder)

    choice = recorder.started[0].norm_choice
    assert choice.measured and choice.adapted and choice.score_name == score
    assert choice.adapted_score > choice.pinned_score and f"auto: val {score} " in choice.line
    assert result.integrity.intact
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(line[metric] for line in lines) == pytest.approx(choice.adapted_score, abs=1e-6)
    assert RunFolder(tmp_path / "run").read_run().norm_choice == NormChoice.from_dict(choice.to_dict())


def test_a_model_without_batch_norm_adapts_nothing_and_measures_nothing(dark_and_bright, tmp_path, monkeypatch):
    built_as(monkeypatch, tiny_net(loaded_mean=0.0, batch_norm=False))

    def no_pass(*args, **kwargs):
        raise AssertionError("AdaBN ran on a model without BatchNorm")

    monkeypatch.setattr(run_setup, "adapt_batch_norm", no_pass)
    recorder = Recorder()
    fit(config(dark_and_bright, tmp_path / "run", epochs=1), recorder)
    choice = recorder.started[0].norm_choice
    assert not choice.adapted and not choice.measured and "no BatchNorm layers" in choice.why
    assert not any("normalization statistics" in note for note in recorder.started[0].notes)  # nothing to say


def test_with_augmented_views_the_choice_is_measured_on_plain_views_then_the_views_use_it(dark_and_bright, tmp_path,
                                                                                          monkeypatch):
    model = built_as(monkeypatch, tiny_net(loaded_mean=1000.0))
    recorder = Recorder()
    result = fit(config(dark_and_bright, tmp_path / "run", augment="light", feature_views=2, epochs=2), recorder)
    choice = recorder.started[0].norm_choice
    assert choice.measured and choice.adapted
    assert recorder.started[0].feature_cache.startswith("trunk features of 2 augmented views per image, cached")
    assert result.integrity.intact
    # The views were computed with the adapted statistics: not the collapsed all-zero features.
    run = run_setup.set_up(config(dark_and_bright, tmp_path / "again", augment="light", feature_views=2),
                           None, Recorder(), run_setup.TrainingControl(), fresh=True)
    assert isinstance(run.batches, AugmentedFeatureBatches) and run.batches.views.abs().sum() > 0
    assert run.model is model and run.norm_choice.adapted


def test_a_continued_run_keeps_the_choice_it_recorded(dark_and_bright, tmp_path, monkeypatch):
    built_as(monkeypatch, tiny_net(loaded_mean=1000.0))
    fit(config(dark_and_bright, tmp_path / "run", epochs=1))
    first = RunFolder(tmp_path / "run").read_run().norm_choice
    built_as(monkeypatch, tiny_net(loaded_mean=1000.0))
    monkeypatch.setattr(run_setup, "measure", lambda *a, **k: pytest.fail("a continued run measured again"))
    recorder = Recorder()
    result = fit(config(dark_and_bright, tmp_path / "run", epochs=2), recorder, resume=True)
    assert recorder.started[0].norm_choice == first and first.adapted and first.measured
    assert result.integrity.intact and result.epochs_run == 2


# --- the rules --------------------------------------------------------------------------------------


def score(value: float) -> HeadScore:
    return HeadScore(epoch=1, score=value, order=(value, -0.5))


def test_decide_adapts_only_when_strictly_better():
    assert decide(score(0.8), score(0.9), 1.0).adapted
    assert not decide(score(0.9), score(0.8), 1.0).adapted
    assert not decide(score(0.9), score(0.9), 1.0).adapted  # tie: as loaded
    assert not decide(score(0.9), None, 1.0).adapted  # the adapted head diverged
    assert decide(None, score(0.6), 1.0).adapted
    assert decide(None, score(-0.3), 1.0, "R²").adapted  # a diverged head loses to a negative R² too
    assert not decide(score(-0.3), None, 1.0, "R²").adapted


def test_plan_norm_measures_only_where_it_can():
    common = dict(batch_norm_layers=20, cached_features=True, cache_note="feature cache on", has_val=True,
                  processes=1, random_weights=False)
    assert plan_norm("auto", **common).action == MEASURE
    assert plan_norm("on", **common).action == ADAPT and plan_norm("off", **common).action == KEEP
    for change, words in ((dict(batch_norm_layers=0), "no BatchNorm"),
                          (dict(cached_features=False, cache_note="feature cache off: layers before the head train"),
                           "layers before the head train"),
                          (dict(has_val=False), "no validation images"), (dict(processes=2), "several processes"),
                          (dict(random_weights=True), "random weights")):
        planned = plan_norm("auto", **{**common, **change})
        assert planned.action == KEEP and words in planned.why
    recorded = NormChoice("auto", True, "auto: measured", 0.5, 1.0, 2.0)
    assert plan_norm("auto", **common, recorded=recorded).action == ADAPT
    assert plan_norm("auto", **common, recorded=recorded).choice("auto", adapted=True) == recorded


def test_norm_choice_survives_run_json_and_event_lines(tmp_path):
    choice = NormChoice("auto", True, "auto: measured", 0.8125, 0.9375, 3.21)
    assert NormChoice.from_dict(json.loads(json.dumps(choice.to_dict()))) == NormChoice(
        "auto", True, "auto: measured", 0.8125, 0.9375, 3.21)
    assert choice.to_dict()["gain_points"] == 12.5
    assert NormChoice.from_dict({"adapted": "yes"}) is None and NormChoice.from_dict(None) is None

    class Sink:
        lines: list[str] = []

        def write(self, text):
            self.lines.append(text)

        def flush(self):
            pass

    from engine.events import RunStarted

    started = RunStarted("r", "cpu", "CPU", "fp32", ("a", "b"), 4, 2, 10, 100, "cache", ("n",), choice)
    EventLines(Sink(), Recorder()).on_run_started(started)
    kind, event = read_event_line("".join(Sink.lines).strip())
    assert kind == "started" and event == started


# --- settings: auto | on | off, and the old true/false ---------------------------------------------


def test_old_true_false_settings_load_as_on_and_off(tmp_path):
    for old, new in ((True, "on"), (False, "off")):
        raw = RunConfig().to_dict()
        raw["train"]["adapt_norm"] = old
        assert RunConfig.from_dict(raw).train.adapt_norm == new
        project = tmp_path / f"{old}.json"
        project.write_text(json.dumps({"transfer_studio_project": 1, **raw}))
        assert load_project(project).train.adapt_norm == new
        run = tmp_path / f"run-{old}"
        run.mkdir()
        (run / "run.json").write_text(json.dumps({"config": raw}))
        assert RunFolder(run).load_config().train.adapt_norm == new
    assert TrainConfig().adapt_norm == "auto"
    save_project(tmp_path / "new.json", RunConfig())
    assert json.loads((tmp_path / "new.json").read_text())["train"]["adapt_norm"] == "auto"
    raw = RunConfig().to_dict()
    raw["train"]["adapt_norm"] = "sometimes"
    with pytest.raises(UserError, match="^adapt norm must be one of auto, on, off$"):
        RunConfig.from_dict(raw).validate()
    raw["train"]["adapt_norm"] = 1
    with pytest.raises(UserError, match="train.adapt_norm must be a string"):
        RunConfig.from_dict(raw)


def test_cli_takes_auto_on_off_and_a_bare_flag_means_on(capsys):
    from app.cli_args import apply_flags, given_train_flags

    def adapt(*flags):
        return apply_flags(RunConfig(), given_train_flags(["train", *flags])).train.adapt_norm

    assert (adapt(), adapt("--adapt-norm"), adapt("--adapt-norm", "off"), adapt("--adapt-norm", "auto")) == \
        ("auto", "on", "off", "auto")
    rc, out, err = cli(capsys, "train", "--adapt-norm", "sometimes")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "--adapt-norm: invalid choice" in err


def test_cross_validation_keeps_the_first_folds_measured_choice_for_the_others(tmp_path):
    from engine.training.folds import _with_first_fold_norm_choice

    def after_first_fold(choice: NormChoice | None, setting: str = "auto") -> str:
        run = tmp_path / f"fold-{len(list(tmp_path.iterdir()))}"
        run.mkdir()
        (run / "run.json").write_text(json.dumps({"config": RunConfig().to_dict(),
                                                  **({"norm_statistics": choice.to_dict()} if choice else {})}))
        cfg = RunConfig(train=TrainConfig(adapt_norm=setting))
        return _with_first_fold_norm_choice(cfg, str(run)).train.adapt_norm

    assert after_first_fold(NormChoice("auto", True, "auto: measured", 0.5, 0.9, 1.0)) == "on"
    assert after_first_fold(NormChoice("auto", False, "auto: measured", 0.9, 0.9, 1.0)) == "off"
    assert after_first_fold(NormChoice("auto", False, "auto: this model has no BatchNorm layers")) == "auto"
    assert after_first_fold(None) == "auto"
    assert after_first_fold(NormChoice("on", True, "setting on"), setting="on") == "on"


def test_the_advice_for_feature_extraction_says_what_auto_will_do():
    from engine.insight.advisor import norm_statistics_reason

    with_bn = describe(tiny_net(0.0), "resnet18", 2, 32)
    without_bn = describe(tiny_net(0.0, batch_norm=False), "resnet18", 2, 32)
    said = norm_statistics_reason("feature-extraction", "imagenet", False, with_bn)
    assert "--adapt-norm auto (the default)" in said and "keeps the better validation balanced accuracy" in said
    assert norm_statistics_reason("feature-extraction", "imagenet", True, with_bn).startswith("The domain looks far")
    assert norm_statistics_reason("feature-extraction", "imagenet", False, without_bn) is None
    assert norm_statistics_reason("fine-tune", "imagenet", True, with_bn) is None
    assert norm_statistics_reason("feature-extraction", "none", False, with_bn) is None


@pytest.mark.parametrize("loaded_mean, adapted", [(1000.0, True), (0.0, False)])
def test_auto_decides_on_a_share_of_the_training_images_and_trains_on_all(dark_and_bright, tmp_path, monkeypatch,
                                                                           loaded_mean, adapted):
    """Past DECISION_IMAGES training images both heads are fitted on that many (every validation image
    scores them); then the chosen statistics' features of every training image train the run."""
    import engine.training.norm_choice as norm_choice

    monkeypatch.setattr(norm_choice, "DECISION_IMAGES", 6)
    fitted = []
    real_fit = norm_choice.fit_head
    monkeypatch.setattr(norm_choice, "fit_head", lambda recipe, train, val, **kw: (
        fitted.append((len(train[0]), len(val[0]))), real_fit(recipe, train, val, **kw))[1])
    passed = []  # images through the trunk, pass by pass
    real_pass = run_setup.compute_features
    monkeypatch.setattr(run_setup, "compute_features", lambda *a, **kw: (
        lambda out: (passed.append(len(out[0])), out)[1])(real_pass(*a, **kw)))
    built_as(monkeypatch, tiny_net(loaded_mean=loaded_mean))
    recorder = Recorder()
    cfg = config(dark_and_bright, tmp_path / "run", epochs=2)
    run = run_setup.set_up(cfg, None, recorder, run_setup.TrainingControl(), fresh=True)

    assert run.norm_choice.measured and run.norm_choice.adapted is adapted
    train_images, val_images = len(run.scan.train), len(run.scan.val)
    assert train_images > 6 and fitted == [(6, val_images), (6, val_images)]
    assert len(run.batches.train[0]) == train_images  # the run trains on every image, with the chosen statistics
    # Each side passed the decision's 6 and the validation images; the chosen side then only the others.
    assert sum(passed) == 2 * (6 + val_images) + train_images - 6
    monkeypatch.setenv("TRANSFER_STUDIO_CACHE", str(tmp_path / "another cache"))  # computed anew, not read back
    again = run_setup.set_up(replace(cfg, out_dir=str(tmp_path / "again"),
                                     train=replace(cfg.train, adapt_norm="on" if adapted else "off")),
                             None, Recorder(), run_setup.TrainingControl(), fresh=True)
    assert torch.allclose(run.batches.train[0], again.batches.train[0], atol=1e-5)


def test_measuring_decodes_each_image_once(dark_and_bright, tmp_path, monkeypatch):
    """The images decoded for AdaBN and the adapted pass serve the loaded statistics' pass too (the
    per-file store's): measuring reads no file twice."""
    import engine.data.dataset as dataset

    decoded = []
    real_decode = dataset.decode_resized
    monkeypatch.setattr(dataset, "decode_resized", lambda path, *a: decoded.append(path) or real_decode(path, *a))
    built_as(monkeypatch, tiny_net(loaded_mean=0.0))
    run = run_setup.set_up(config(dark_and_bright, tmp_path / "run"), None, Recorder(), run_setup.TrainingControl(),
                           fresh=True)
    assert run.norm_choice.measured
    assert len(decoded) == len(set(decoded)) == 24  # the 24 images, each once
