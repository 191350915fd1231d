"""int8 ONNX behind an accuracy gate.

ONNX Runtime's static quantization (QDQ format, per-channel int8 weights, uint8 activations whose
ranges come from a CalibrationDataReader over real training images, stratified over the classes) is
the maintained path; torch.ao.quantization is deprecated. int8 can cost accuracy, badly on some
models (onnxruntime #11415), so the fp32 and the int8 file are both measured on the run's validation
images and the int8 file is kept only when top-1 falls by at most `max_drop` points. Before refusing,
the nodes that usually suffer most (the first convolution, the classifier) are left in fp32 and the
file is made and measured again. Both files' CPU throughput is measured on the same batch.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from engine.data.dataset import Preprocessing, Sample, eval_transform, normalize_batch, scan_dataset
from engine.data.images import BadImage
from engine.deploy.export import ParityError
from engine.errors import UserError
from engine.model.checkpoint import load_checkpoint

DEFAULT_CALIBRATION_IMAGES = 300
DEFAULT_MAX_DROP = 1.0  # points of top-1 accuracy
BATCH = 16
THROUGHPUT_SECONDS = 0.5  # per model: enough for a stable figure, short beside the quantization itself


class Int8Refused(ParityError):
    """The int8 file lost more accuracy than allowed; it was removed (exit code 1, as a failed parity check).
    `report` has the figures of the last file tried (passed False, no throughput measured)."""

    def __init__(self, message: str, report: Int8Report) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class Int8Settings:
    """What the person asks of an int8 export (the command line's --max-drop, --calibration-images)."""

    max_drop: float = DEFAULT_MAX_DROP
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES


@dataclass(frozen=True)
class Int8Report:
    format: str  # "onnx-int8"
    path: str
    fp32_path: str
    images: int  # validation images measured
    calibration_images: int
    fp32_accuracy: float
    int8_accuracy: float
    accuracy_drop: float  # points: (fp32 - int8) x 100
    max_drop: float
    fp32_images_per_second: float | None  # None: refused before its speed was measured
    int8_images_per_second: float | None
    speedup: float | None
    excluded_nodes: tuple[str, ...]  # left in fp32
    passed: bool

    def to_dict(self) -> dict:
        return {**asdict(self), "excluded_nodes": list(self.excluded_nodes)}


def int8_path(fp32_path: Path) -> Path:
    """model.onnx -> model.int8.onnx, beside it."""
    name = fp32_path.name[: -len(".onnx")] if fp32_path.name.endswith(".onnx") else fp32_path.name
    return fp32_path.with_name(name + ".int8.onnx")


# --- the run's images ------------------------------------------------------------------------


@dataclass(frozen=True)
class RunImages:
    preprocessing: Preprocessing
    train: tuple[Sample, ...]
    val: tuple[Sample, ...]


def run_images(checkpoint: Path) -> RunImages:
    """The training and validation images of the run the checkpoint came from, split as it was;
    one line when the dataset is gone or no longer the model's."""
    from engine.training.tasks import CheckpointTask, refuse_unless_single_label

    ckpt = load_checkpoint(checkpoint)
    # Its gate measures top-1 accuracy, which a multi-label or regression model does not have.
    refuse_unless_single_label(CheckpointTask.of(ckpt).name, "int8 export (its accuracy gate)")
    config = ckpt.get("config") or {}
    data, train = config.get("data") or {}, config.get("train") or {}
    root = data.get("root")
    if not root or not Path(root).is_dir():
        raise UserError(f"int8 export calibrates and measures on the run's images, and its dataset "
                        f"{root or '(not recorded in the checkpoint)'} is gone; restore it, or export without --int8")
    scan = scan_dataset(root, data.get("val_fraction", 0.2), train.get("seed", 0))
    if list(scan.class_names) != list(ckpt["class_names"]):
        raise UserError(f"the classes of {root} are no longer those of {checkpoint}; int8 cannot be measured on it")
    if not scan.val:
        raise UserError(f"{root} has no validation images to measure the int8 model's accuracy on")
    return RunImages(Preprocessing.from_dict(ckpt["preprocessing"]), scan.train, scan.val)


def stratified(samples: Sequence[Sample], count: int, seed: int = 0) -> list[Sample]:
    """Up to `count` samples taken in turn from each class (shuffled, seeded), so every class is seen."""
    rng = random.Random(seed)
    by_class: dict[int, list[Sample]] = {}
    for sample in samples:
        by_class.setdefault(sample.label, []).append(sample)
    for members in by_class.values():
        rng.shuffle(members)
    chosen: list[Sample] = []
    for i in range(max((len(m) for m in by_class.values()), default=0)):
        chosen += [members[i] for _, members in sorted(by_class.items()) if i < len(members)]
    return chosen[:count]


def image_batches(samples: Sequence[Sample], prep: Preprocessing, size: int = BATCH) -> Iterator[tuple[np.ndarray, list[int]]]:
    """Preprocessed float batches and their labels; images that cannot be decoded are left out."""
    crop = eval_transform(prep.crop)
    for start in range(0, len(samples), size):
        images, labels = [], []
        for sample in samples[start:start + size]:
            try:
                images.append(crop(prep.decode(Path(sample.path))))
                labels.append(sample.label)
            except (BadImage, OSError):
                continue
        if images:
            yield normalize_batch(torch.stack(images), prep).numpy(), labels


# --- quantization ------------------------------------------------------------------------------


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # its warnings about unused initializers are not the person's concern
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def accuracy(session, batches: list[tuple[np.ndarray, list[int]]]) -> float:
    name = session.get_inputs()[0].name
    correct = total = 0
    for images, labels in batches:
        predicted = session.run(None, {name: images})[0].argmax(axis=1)
        correct += int((predicted == np.asarray(labels)).sum())
        total += len(labels)
    return correct / total


def images_per_second(session, batch: np.ndarray, seconds: float = THROUGHPUT_SECONDS) -> float:
    name = session.get_inputs()[0].name
    session.run(None, {name: batch})  # warm-up: the first run allocates
    done, started = 0, time.perf_counter()
    while True:
        session.run(None, {name: batch})
        done += len(batch)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return done / elapsed


def sensitive_nodes(model_path: Path) -> list[str]:
    """The first convolution and the last matrix product (the classifier): where int8 usually hurts most."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    first = next((n.name for n in graph.node if n.op_type == "Conv"), None)
    last = next((n.name for n in reversed(graph.node) if n.op_type in ("Gemm", "MatMul")), None)
    return [name for name in (first, last) if name]


def quantize(fp32_path: Path, out: Path, calibration: list[np.ndarray], exclude: Sequence[str] = ()) -> None:
    """Write the statically quantized model to `out` (atomically) with the fp32 file's metadata."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self, name: str) -> None:
            self.batches = iter([{name: batch} for batch in calibration])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".int8-") as work:
        prepared, quantized = Path(work) / "prepared.onnx", Path(work) / "int8.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Shape inference and graph optimisation first, as onnxruntime's quantization guide asks.
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            input_name = _session(prepared).get_inputs()[0].name
            quantize_static(str(prepared), str(quantized), Reader(input_name), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=list(exclude) or None)
        model = onnx.load(str(quantized))
        source = onnx.load(str(fp32_path), load_external_data=False)
        del model.metadata_props[:]
        for entry in source.metadata_props:
            model.metadata_props.add(key=entry.key, value=entry.value)
        model.metadata_props.add(key="quantization", value="int8 static QDQ, per-channel weights")
        from engine.atomic import atomic_write_bytes

        atomic_write_bytes(out, model.SerializeToString())


def export_int8(checkpoint: str | os.PathLike, fp32_path: str | os.PathLike, out: str | os.PathLike | None = None,
                calibration_images: int = DEFAULT_CALIBRATION_IMAGES, max_drop: float = DEFAULT_MAX_DROP) -> Int8Report:
    """Quantize the (parity-checked) fp32 ONNX file of `checkpoint`; keep it only if it passes the gate."""
    try:
        import onnxruntime  # noqa: F401
        import onnx  # noqa: F401
    except ImportError:
        raise UserError("int8 export needs onnx and onnxruntime: pip install 'transfer-studio[export]'") from None
    if calibration_images < 1:
        raise UserError("--calibration-images must be at least 1")
    if not max_drop >= 0:
        raise UserError("--max-drop must be 0 or more points")
    checkpoint, fp32_path = Path(checkpoint), Path(fp32_path)
    out = Path(out) if out else int8_path(fp32_path)
    images = run_images(checkpoint)
    chosen = stratified(images.train or images.val, calibration_images)
    calibration = [batch for batch, _ in image_batches(chosen, images.preprocessing)]
    validation = list(image_batches(images.val, images.preprocessing))
    if not calibration or not validation:
        raise UserError("no usable image to calibrate or measure the int8 model on")
    fp32 = _session(fp32_path)
    fp32_accuracy = accuracy(fp32, validation)
    validation_images = sum(len(labels) for _, labels in validation)

    def report(exclude: tuple[str, ...], int8_accuracy: float, drop: float,
               speeds: tuple[float, float] | None) -> Int8Report:
        """Kept when its speeds were measured (fp32, int8); refused, with none, otherwise."""
        fp32_speed, int8_speed = speeds or (None, None)
        return Int8Report("onnx-int8", str(out), str(fp32_path), validation_images, len(chosen), fp32_accuracy,
                          int8_accuracy, drop, max_drop, fp32_speed, int8_speed,
                          int8_speed / fp32_speed if speeds else None, exclude, speeds is not None)

    tried: list[tuple[tuple[str, ...], float]] = []
    for exclude in ((), tuple(sensitive_nodes(fp32_path))):
        if tried and not exclude:
            break
        try:
            quantize(fp32_path, out, calibration, exclude)
            int8 = _session(out)
            int8_accuracy = accuracy(int8, validation)
        except OSError as exc:
            raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
        except Exception as exc:  # the quantizer or the runtime cannot handle this graph: one line
            out.unlink(missing_ok=True)
            detail = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
            raise UserError(f"int8 quantization of {fp32_path} failed ({type(exc).__name__}: {detail[:300]})") from None
        drop = (fp32_accuracy - int8_accuracy) * 100
        tried.append((exclude, drop))
        if drop <= max_drop + 1e-9:
            speed_batch = validation[0][0]
            return report(exclude, int8_accuracy, drop,
                          (images_per_second(fp32, speed_batch), images_per_second(int8, speed_batch)))
        del int8
    out.unlink(missing_ok=True)
    for stale in (Path(str(out) + ".card.json"), Path(str(out) + ".card.md")):  # an earlier int8 file's card
        stale.unlink(missing_ok=True)
    measured = "; ".join(f"{drop:.1f} points" + (f" with {', '.join(ex)} left in fp32" if ex else "")
                         for ex, drop in tried)
    raise Int8Refused(f"int8 export refused: top-1 accuracy fell {measured} (fp32 {fp32_accuracy:.1%} on "
                      f"{validation_images} validation images), more than --max-drop {max_drop:g}; {out} was not kept",
                      report(exclude, int8_accuracy, drop, None))
