"""What TensorBoard reads, written with tensorboardX's protocol buffers and nothing else: an event
file, a confusion-matrix image and the projector's files.

tensorboardX's SummaryWriter is not used: it hands events to a writer thread through a bounded
queue, so a failing disk would end that thread with a traceback and later calls would block on the
full queue. Here every write happens on the caller's thread and a failure raises to the caller
(TensorBoardLog turns it into one warning).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PROJECTOR_CONFIG = "projector_config.pbtxt"
THUMBNAIL_PX = 32  # the projector shows each point's image this size


class EventFile:
    """One event file of a run's TensorBoard folder. A continued run opens a new one beside the
    old ones (TensorBoard reads every file of the folder, in name order, so names sort by time)."""

    def __init__(self, logdir: Path) -> None:
        from tensorboardX import RecordWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        self._event, self._session_log = Event, SessionLog
        logdir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        # TensorBoard's own pattern, then nanoseconds: two files made in the same second still sort by time.
        self.path = logdir / f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{time.time_ns()}"
        self._records = RecordWriter(str(self.path))
        self._write(Event(wall_time=now, file_version="brain.Event:2"))  # version 2: START events purge

    def _write(self, event) -> None:
        self._records.write(event.SerializeToString())

    def summary(self, summary, step: int) -> None:
        self._write(self._event(wall_time=time.time(), step=step, summary=summary))

    def scalars(self, values: dict[str, float], step: int) -> None:
        from tensorboardX.summary import scalar

        for name, value in values.items():
            self.summary(scalar(name, value), step)

    def image(self, tag: str, pixels: np.ndarray, step: int) -> None:
        from tensorboardX.summary import image

        self.summary(image(tag, pixels, dataformats="HWC"), step)

    def purge_from(self, step: int) -> None:
        """TensorBoard drops what earlier files logged at `step` or later: a run killed after
        logging an epoch whose resume state was never saved repeats that epoch, shown once."""
        self._write(self._event(wall_time=time.time(), step=step,
                                session_log=self._session_log(status=self._session_log.START)))

    def flush(self) -> None:
        self._records.flush()

    def close(self) -> None:
        self._records.close()


# --- the confusion matrix as an image ---------------------------------------------------------------


def confusion_image(confusion: Sequence[Sequence[int]], class_names: Sequence[str]) -> np.ndarray:
    """(H, W, 3) uint8: rows the true class, columns the predicted one; each cell shaded by its share
    of its row (the diagonal is each class' recall), with its count and the class names where they fit."""
    k = len(confusion)
    counts = np.asarray(confusion, dtype=np.float64).reshape(k, k)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    cell = max(4, min(40, 640 // max(1, k)))
    labelled = cell >= 14  # text needs room; a hundred classes get the shading alone
    margin = 6 * min(14, max((len(n) for n in class_names), default=1)) + 8 if labelled else 0
    image = Image.new("RGB", (margin + k * cell + 1, k * cell + 1), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for i in range(k):
        if labelled:
            draw.text((2, i * cell + cell // 2), class_names[i][:14], fill="black", font=font, anchor="lm")
        for j in range(k):
            share = float(shares[i, j])
            colour = (int(247 - 239 * share), int(251 - 170 * share), int(255 - 148 * share))  # white to dark blue
            box = (margin + j * cell, i * cell, margin + (j + 1) * cell, (i + 1) * cell)
            draw.rectangle(box, fill=colour, outline=(200, 200, 200))
            if labelled:
                draw.text(((box[0] + box[2]) // 2, (box[1] + box[3]) // 2), str(int(counts[i, j])),
                          fill="white" if share > 0.5 else "black", font=font, anchor="mm")
    return np.asarray(image, dtype=np.uint8)


# --- the embedding projector --------------------------------------------------------------------------


@dataclass(frozen=True)
class ProjectorPoints:
    """The best epoch's validation images as the projector shows them: features, labels, images."""

    epoch: int
    features: np.ndarray  # (N, D) float32
    true: tuple[str, ...]
    pred: tuple[str, ...]
    paths: tuple[str, ...]  # absolute, for the thumbnails
    shown_paths: tuple[str, ...]  # relative to the dataset root, for the metadata


def write_projector(logdir: Path, points: ProjectorPoints, tag: str = "val_features") -> None:
    """<logdir>/<epoch>/<tag>/{tensors,metadata}.tsv and sprite.png, and their entry in
    projector_config.pbtxt (TensorBoard's projector reads only that file, not the event files)."""
    subdir = f"{points.epoch:05d}/{tag}"
    folder = logdir / subdir
    folder.mkdir(parents=True, exist_ok=True)
    np.savetxt(folder / "tensors.tsv", points.features, delimiter="\t", fmt="%.6g")
    rows = ["true\tpred\tpath"] + [f"{t}\t{p}\t{path}" for t, p, path in zip(points.true, points.pred, points.shown_paths)]
    (folder / "metadata.tsv").write_text("\n".join(_tsv_safe(row) for row in rows) + "\n", encoding="utf-8")
    Image.fromarray(sprite([thumbnail(p) for p in points.paths])).save(folder / "sprite.png")
    config = logdir / PROJECTOR_CONFIG
    name = f"{tag}:{points.epoch:05d}"
    known = config.read_text(encoding="utf-8") if config.is_file() else ""
    if f'tensor_name: "{name}"' in known:  # a continued run that repeated this epoch: the files were replaced
        return
    entry = (f'embeddings {{\ntensor_name: "{name}"\ntensor_path: "{subdir}/tensors.tsv"\n'
             f'metadata_path: "{subdir}/metadata.tsv"\nsprite {{\nimage_path: "{subdir}/sprite.png"\n'
             f"single_image_dim: {THUMBNAIL_PX}\nsingle_image_dim: {THUMBNAIL_PX}\n}}\n}}\n")
    with open(config, "a", encoding="utf-8") as fh:
        fh.write(entry)


def _tsv_safe(row: str) -> str:
    return row.replace("\r", " ").replace("\n", " ")


def thumbnail(path: str) -> np.ndarray:
    """(T, T, 3) uint8: the image's centre, decoded small (JPEG draft mode); grey when it cannot be read."""
    from engine.data.images import BadImage, load_rgb, resize_shorter_side

    try:
        img = resize_shorter_side(load_rgb(Path(path), min_side=THUMBNAIL_PX), THUMBNAIL_PX)
    except (BadImage, OSError):
        return np.full((THUMBNAIL_PX, THUMBNAIL_PX, 3), 128, dtype=np.uint8)
    left, top = (img.width - THUMBNAIL_PX) // 2, (img.height - THUMBNAIL_PX) // 2
    return np.asarray(img.crop((left, top, left + THUMBNAIL_PX, top + THUMBNAIL_PX)), dtype=np.uint8)


def sprite(thumbnails: list[np.ndarray]) -> np.ndarray:
    """The thumbnails in a square grid, row by row, as the projector expects."""
    per_row = max(1, int(np.ceil(np.sqrt(len(thumbnails)))))
    side = per_row * THUMBNAIL_PX
    grid = np.zeros((side, side, 3), dtype=np.uint8)
    for i, thumb in enumerate(thumbnails):
        row, col = divmod(i, per_row)
        grid[row * THUMBNAIL_PX:(row + 1) * THUMBNAIL_PX, col * THUMBNAIL_PX:(col + 1) * THUMBNAIL_PX] = thumb
    return grid
