"""Labels CSV (engine/data/label_table.py): tasks from columns, bad rows with reasons, splits, the scan."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from engine.data.dataset import list_dataset, scan_dataset
from engine.data.label_table import co_occurrence, read_label_table, value_summary
from engine.errors import UserError
from tests.helpers import cli


def _images(folder, n, size=12):
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"im{i}.png")


@pytest.fixture
def table_dir(tmp_path):
    _images(tmp_path, 12)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    return tmp_path


def test_multi_label_rows_and_every_bad_row(table_dir):
    csv = table_dir / "labels.csv"
    csv.write_text("path,labels\nim0.png,cat dog\nim1.png,dog;bird\nim2.png,\nmissing.png,cat\n"
                   "im0.png,cat\n,cat\nim3.png,cat\n")
    table = read_label_table(csv)
    assert table.task == "multi-label"
    assert table.label_names == ("bird", "cat", "dog")
    assert [r.labels for r in table.rows] == [("cat", "dog"), ("dog", "bird"), (), ("cat",)]
    reasons = {b.line: b.reason for b in table.bad}
    assert reasons == {5: "missing file missing.png", 6: "duplicate path (first on line 2)", 7: "empty path"}


def test_unknown_label_and_single_label_rows(table_dir):
    csv = table_dir / "labels.csv"
    csv.write_text("path,labels\nim0.png,cat\nim1.png,cow\nim2.png,cat dog\n")
    table = read_label_table(csv, "single-label", known_labels=["cat", "dog"])
    assert [r.labels for r in table.rows] == [("cat",)]
    assert [b.reason for b in table.bad] == ["unknown label 'cow'", "a single-label row needs exactly one label, got 2"]


def test_regression_rows_and_not_a_number(table_dir):
    csv = table_dir / "values.csv"
    csv.write_text("path,value\nim0.png,1.5\nim1.png,abc\nim2.png,nan\nim3.png,-2\n")
    table = read_label_table(csv)
    assert table.task == "regression" and table.label_names == ("value",)
    assert [r.value for r in table.rows] == [1.5, -2.0]
    assert [b.reason for b in table.bad] == ["value 'abc' is not a number", "value 'nan' is not a finite number"]


@pytest.mark.parametrize("text, task, message", [
    ("file,labels\n", "auto", "no 'path' column"),
    ("path,other\n", "auto", "needs a 'labels' column"),
    ("path,labels,value\n", "auto", "both 'labels' and 'value'"),
    ("path,labels\n", "regression", "needs a 'value' column"),
    ("path,value\n", "multi-label", "needs a 'labels' column"),
])
def test_columns_that_cannot_give_the_task_are_one_line(tmp_path, text, task, message):
    csv = tmp_path / "t.csv"
    csv.write_text(text)
    with pytest.raises(UserError, match=message):
        read_label_table(csv, task)


def test_not_text_and_missing_file(tmp_path):
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x81path")
    with pytest.raises(UserError):
        read_label_table(tmp_path / "bin.csv")
    with pytest.raises(UserError, match="not found"):
        read_label_table(tmp_path / "none.csv")


def test_listing_skips_undecodable_images_and_given_split(table_dir):
    csv = table_dir / "labels.csv"
    rows = [f"im{i}.png,{'a' if i % 2 else 'b'},{'val' if i < 4 else 'train'}" for i in range(10)]
    csv.write_text("path,labels,split\n" + "\n".join(rows) + "\nbroken.png,a,train\nim10.png,a,\nim11.png,a,test\n")
    scan = scan_dataset(csv, 0.2, 0)
    assert scan.task == "multi-label" and scan.layout == "csv-split"
    assert len(scan.val) == 4 and len(scan.train) == 6
    reasons = " | ".join(s.reason for s in scan.skipped)
    assert "split must be train or val" in reasons and "no split value" in reasons
    assert any(s.path.endswith("broken.png") for s in scan.skipped)
    assert scan.train[0].label in ((1.0, 0.0), (0.0, 1.0))


def test_seeded_split_spans_the_values(table_dir):
    csv = table_dir / "values.csv"
    csv.write_text("path,value\n" + "".join(f"im{i}.png,{i}\n" for i in range(12)))
    scan = scan_dataset(csv, 0.25, 0)
    assert scan.task == "regression" and len(scan.val) == 3
    values = sorted(s.label for s in scan.val)
    assert values[0] < 4 and values[-1] >= 8  # one from the low bins, one from the high
    assert scan_dataset(csv, 0.25, 0).val == scan.val  # seeded


def test_folder_with_another_task_is_refused(demo_dir):
    with pytest.raises(UserError, match="needs a labels CSV"):
        list_dataset(demo_dir, task="regression")


def test_co_occurrence_and_value_summary_by_hand():
    assert co_occurrence([[0, 1], [1], [], [0, 1, 2]], 3) == [[2, 2, 1], [2, 3, 1], [1, 1, 1]]
    summary = value_summary([0.0, 1.0, 2.0, 3.0], bins=2)
    assert summary["min"] == 0 and summary["max"] == 3 and summary["mean"] == 1.5
    assert summary["histogram"]["counts"] == [2, 2]
    assert abs(summary["std"] - 1.118034) < 1e-6


def test_scan_command_reports_counts_and_bad_rows(table_dir, capsys):
    csv = table_dir / "labels.csv"
    csv.write_text("path,labels\nim0.png,a b\nim1.png,a\nim2.png,b\nnope.png,a\nim2.png,a\n")
    rc, out, err = cli(capsys, "scan", csv)
    assert rc == 0, err
    assert "multi-label" in out and "co-occurrence" in out
    assert "line 5: missing file nope.png" in out and "line 6: duplicate path" in out
    rc, out, _ = cli(capsys, "scan", csv, "--json")
    report = json.loads(out)
    assert report["task"] == "multi-label" and report["co_occurrence"][0][1] == 1
    values = table_dir / "values.csv"
    values.write_text("path,value\nim0.png,1\nim1.png,x\nim2.png,3\n")
    rc, out, _ = cli(capsys, "scan", values)
    assert rc == 0 and "value: min 1, max 3" in out and "#" in out and "not a number" in out
    rc, _, err = cli(capsys, "scan", values, "--task", "multi-label")
    assert rc == 2 and len(err.strip().splitlines()) == 1
