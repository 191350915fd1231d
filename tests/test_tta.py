"""Test-time augmentation (issue 24): evaluate --tta and predict --tta average each image's logits with
its mirror image's and say what it changed; off by default."""

from __future__ import annotations

import json

import pytest
import torch

from engine.deploy.tta import tta_logits
from engine.insight.evaluation import evaluate_checkpoint, evaluate_run
from tests.helpers import assert_refused, checkpoint, cli  # noqa: F401 - fixtures


def test_tta_averages_the_logits_of_the_image_and_its_mirror():
    seen = []

    def forward(batch):
        seen.append(batch.clone())
        return batch.sum(dim=(1, 2)) * torch.arange(1.0, batch.shape[-1] + 1)[: batch.shape[-1]].sum()

    batch = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).reshape(2, 3, 2, 4)
    tta_logits(forward, batch)
    assert torch.equal(seen[0], batch) and torch.equal(seen[1], batch.flip(-1))
    linear = torch.nn.Linear(4, 2)
    out = tta_logits(lambda b: linear(b[:, 0, 0]), batch)
    assert torch.allclose(out, (linear(batch[:, 0, 0]) + linear(batch.flip(-1)[:, 0, 0])) / 2)


@pytest.mark.slow
def test_evaluate_with_tta_reports_the_accuracy_change_and_predicts_again(checkpoint, capsys):
    run = checkpoint.parent
    plain = evaluate_run(run)
    assert plain.tta is None
    again = evaluate_run(run, tta=True)
    assert again.tta["views"] == ["as is", "mirrored"] and len(again.records) == len(plain.records)
    # Without TTA, predicting again gives the run's own figure back.
    assert again.tta["accuracy_without"] == plain.accuracy
    assert again.tta["accuracy_change"] == again.accuracy - plain.accuracy

    rc, out, _ = cli(capsys, "evaluate", str(run), "--tta", "--json")
    reported = json.loads(out)
    assert rc == 0 and reported["tta"]["accuracy_without"] == plain.accuracy
    assert reported["accuracy"] == again.accuracy
    rc, out, _ = cli(capsys, "evaluate", str(run), "--tta")
    assert rc == 0 and "test-time augmentation (as is + mirrored)" in out and "points)" in out
    assert_refused(cli(capsys, "evaluate", str(run), "--tta", "--unknown", str(run)), 2, "--tta")


@pytest.mark.slow
def test_evaluate_a_folder_with_tta(checkpoint):
    from engine.runs.run_folder import RunFolder

    data = RunFolder(checkpoint.parent).read_run().data_root
    evaluation = evaluate_checkpoint(checkpoint, data, tta=True)
    assert evaluation.tta and 0 <= evaluation.tta["accuracy_without"] <= 1
    assert len(evaluation.records) == 24


@pytest.mark.slow
def test_predict_with_tta_marks_its_answers(checkpoint, capsys):
    from engine.runs.run_folder import RunFolder

    data = RunFolder(checkpoint.parent).read_run().data_root
    image = sorted(p for p in __import__("pathlib").Path(data).rglob("*.png"))[0]
    rc, out, _ = cli(capsys, "predict", str(checkpoint), str(image), "--json")
    plain = json.loads(out)[0]
    rc2, out2, _ = cli(capsys, "predict", str(checkpoint), str(image), "--json", "--tta")
    with_tta = json.loads(out2)[0]
    assert rc == rc2 == 0 and "tta" not in plain and with_tta["tta"] == ["as is", "mirrored"]
    assert with_tta["top_k"][0]["class"] in {r["class"] for r in plain["top_k"]}
