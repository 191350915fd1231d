"""What the data panel says of a scan beyond its class table, as plain text: the headline line,
and for a labels CSV the task's own figures (images without a label, the value's range and
histogram) and the first bad rows with their reasons.

Everything here reads DatasetScan.summary(), the same dict `transfer-studio scan --json` prints,
so the window and the command line say the same things. No Qt: it is text from a dict.
"""

from __future__ import annotations

from engine.data.label_table import histogram_lines

CSV_LAYOUTS = ("csv", "csv-split")
BAD_ROWS_SHOWN = 3  # the rest are one click away (the skipped list)
HISTOGRAM_WIDTH = 24  # '#' for the largest bin: the panel is half a small screen wide


def is_table(summary: dict) -> bool:
    """Whether the scan is of a labels CSV (rows, not files in class folders)."""
    return summary.get("layout") in CSV_LAYOUTS


def headline(summary: dict) -> str:
    """One line for the panel's title: what the data is and how much of it."""
    task = summary.get("task", "single-label")
    sizes = summary.get("image_sizes") or {}
    size_text = f" · images {sizes['width']['median']}×{sizes['height']['median']} px (median)" if sizes else ""
    split_text = {"train-val": " · train/ and val/ as given",
                  "csv-split": " · split column as given"}.get(summary.get("layout"), "")
    count = len(summary["classes"])
    what = {"multi-label": f"multi-label · {count} labels", "regression": "regression",
            }.get(task, f"{count} classes")
    return f"{what} · {summary['total']:,} images{size_text}{split_text}"


def task_text(summary: dict) -> str:
    """The task's figures under the table: multi-label's images without any label, regression's
    value range and histogram; "" for class folders."""
    task = summary.get("task", "single-label")
    if task == "multi-label":
        return f"Images without any label: {summary.get('without_label', 0):,}"
    if task == "regression":
        values = summary.get("values") or {}
        if not values.get("count"):
            return "No values."
        counts = summary["classes"][0] if summary.get("classes") else {"train": 0, "val": 0}
        lines = [f"value: min {values['min']:.4g} · max {values['max']:.4g} · mean {values['mean']:.4g} · "
                 f"std {values['std']:.4g}",
                 f"train {counts['train']:,} · validation {counts['val']:,}"]
        return "\n".join(lines + [line.strip() for line in histogram_lines(values, HISTOGRAM_WIDTH)])
    return ""


def bad_rows_text(summary: dict) -> str:
    """A labels CSV's first bad rows (line and reason), and how many more there are."""
    if not is_table(summary) or not summary.get("skipped"):
        return ""
    skipped = summary["skipped"]
    shown = [f"{s['reason']}" for s in skipped[:BAD_ROWS_SHOWN]]
    more = f" · … {len(skipped) - BAD_ROWS_SHOWN} more (click)" if len(skipped) > BAD_ROWS_SHOWN else ""
    return f"{len(skipped)} row(s) not used: " + " · ".join(shown) + more
