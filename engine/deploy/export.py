"""Export a checkpoint to deployable formats, each behind a parity gate.

Formats: pt (the checkpoint itself), safetensors (weights + metadata + a JSON sidecar),
torchscript (a module taking a preprocessed float batch), onnx (opset 17, dynamic batch axis,
metadata_props), pt2 (a torch.export ExportedProgram with a dynamic batch dimension; loading it unpickles,
so its SHA-256 is recorded in engine.deploy.trust, once it has passed the gate). After writing, the file is loaded back by its
own runtime and its logits are compared with the in-memory model's on real images, as a batch and
one image alone; the report is saved beside the file, and an export past the tolerance fails loudly.
The tolerance is relative to the logits' scale (float32 rounding grows with the logits: a model with
logits near 1e6 differs by ~1e-1 between runtimes even when its file is byte-identical), and every
image must keep its top-1 class, unless its top two logits tie within that tolerance.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from engine.model.checkpoint import load_checkpoint
from engine.atomic import atomic_file, atomic_write_bytes
from engine.errors import UserError
from engine.model.architectures import model_kwargs, plain_model
from engine.deploy.predict import LoadedClassifier, load_classifier
from engine.training.tasks import CheckpointTask

FORMATS = ("pt", "safetensors", "torchscript", "onnx", "pt2")
# pt2 only when asked for: loading it anywhere but this installation needs explicit trust (it unpickles).
DEFAULT_FORMATS = ("pt", "safetensors", "torchscript", "onnx")
# "-export.pt" so that exporting pt next to checkpoint.pt never overwrites the checkpoint itself.
SUFFIXES = {"pt": "-export.pt", "safetensors": ".safetensors", "torchscript": ".torchscript.pt", "onnx": ".onnx",
            "pt2": ".pt2"}
# Relative: the largest allowed logit difference is DEFAULT_TOLERANCE * max(1, largest |logit|).
DEFAULT_TOLERANCE = 1e-4
ONNX_OPSET = 17
# A single .onnx file is one protobuf message, which cannot exceed 2 GiB.
ONNX_MAX_BYTES = 2**31


class ParityError(UserError):
    """An exported file's outputs differ from the model's beyond the tolerance."""


@dataclass(frozen=True)
class ParityReport:
    format: str
    path: str
    images: int
    top1_agreement: float
    max_abs_logit_diff: float
    tolerance: float  # relative: the allowed difference is tolerance * max(1, logit_scale)
    passed: bool
    logit_scale: float = 0.0  # the model's largest |logit| on these images
    relative_diff: float = 0.0  # max_abs_logit_diff / max(1, logit_scale), compared with tolerance
    # What was compared: logits (single-label), probabilities (multi-label: sigmoid; the agreement
    # is then over every label's decision at its threshold) or values (regression, de-standardised).
    compared: str = "logits"

    def to_dict(self) -> dict:
        return asdict(self)


def metadata(classifier: LoadedClassifier) -> dict[str, str]:
    """What a deployment needs besides the weights, as strings (ONNX and safetensors store strings)."""
    return {
        "arch": classifier.arch,
        "class_names": json.dumps(classifier.class_names),
        "preprocessing": json.dumps(classifier.preprocessing.to_dict()),
        # What torchvision.models.get_model(arch, num_classes=K, ...) needs to take these weights.
        "model_kwargs": json.dumps(model_kwargs(classifier.arch, classifier.preprocessing.crop)),
        "producer": "transfer-studio",
        **({} if classifier.task.name == "single-label" else {"task": json.dumps(classifier.task.to_dict())}),
    }


def default_path(checkpoint: Path, fmt: str, folder: Path | None = None) -> Path:
    """checkpoint.pt -> checkpoint.onnx etc., beside the checkpoint or in `folder`."""
    stem = checkpoint.name[: -len(".pt")] if checkpoint.name.endswith(".pt") else checkpoint.stem
    return (Path(folder) if folder else checkpoint.parent) / (stem + SUFFIXES[fmt])


def export(checkpoint: str | Path, fmt: str, out: str | Path | None, parity_batch: torch.Tensor,
           tolerance: float = DEFAULT_TOLERANCE) -> ParityReport:
    """Write one format, check its parity on `parity_batch` (preprocessed images), save the report."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format '{fmt}' (use {', '.join(FORMATS)})")
    checkpoint = Path(checkpoint)
    classifier = load_classifier(checkpoint)
    out = Path(out) if out else default_path(checkpoint, fmt)
    if fmt != "pt" and out.resolve() == checkpoint.resolve():
        raise UserError(f"exporting {fmt} to {out} would overwrite the checkpoint it is exported from; "
                        f"choose another output file")
    if out.is_dir():
        raise UserError(f"cannot export to {out}: it is a folder; name a file, or a folder to export into")
    writer = {"pt": _write_pt, "safetensors": _write_safetensors, "torchscript": _write_torchscript,
              "onnx": _write_onnx, "pt2": _write_pt2}[fmt]
    with torch.no_grad():
        expected = classifier.model(parity_batch).float()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        written = writer(checkpoint, classifier, out)
        # By the format written, whatever the file's name; a pt2 is not trusted yet: its own bytes load back.
        loaded = _load_pt2(out, trust=False, written=written) if fmt == "pt2" else load_any(out, fmt)
        actual = loaded.logits(parity_batch)
        # A batch of one too: exported batch dimensions are dynamic, and must hold at 1 as at N.
        single = loaded.logits(parity_batch[:1]) if len(parity_batch) > 1 else actual[:0]
    except UserError:
        raise
    except OSError as exc:  # full disk, read-only folder: every write is atomic, so nothing partial is left
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    except Exception as exc:
        if fmt in ("pt", "safetensors"):
            raise  # these hold plain state dicts: a failure here is a bug, and its traceback is needed
        # The tracer, the exporter or the runtime cannot handle this architecture: one line, not a traceback.
        detail = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        raise UserError(f"{classifier.arch} cannot be exported to {fmt} ({type(exc).__name__}: {detail[:300]}); "
                        f"pt and safetensors work for every architecture") from exc
    if classifier.task.name == "single-label":
        report = compare_logits(fmt, out, expected, actual, single, tolerance)
    else:
        report = compare_task_outputs(fmt, out, expected, actual, single, tolerance, classifier.task)
    report_path = Path(str(out) + ".parity.json")
    try:
        atomic_write_bytes(report_path, (json.dumps(report.to_dict(), indent=2) + "\n").encode())
    except OSError as exc:
        raise UserError(f"cannot write {report_path}: {exc.strerror or exc}") from None
    if not report.passed:
        raise ParityError(f"{fmt} export {out} differs from the model: {gate_summary(report)}; see {out}.parity.json")
    if fmt == "pt2":  # only a file that passed: one that failed must not load later without --trust
        from engine.deploy.trust import record_export

        record_export(written, out)
    return report


def compare_logits(fmt: str, out: Path, expected: torch.Tensor, actual: torch.Tensor, single: torch.Tensor,
                   tolerance: float) -> ParityReport:
    """The gate: the file's logits (`actual` for the batch, `single` for its first image alone) against the
    model's (`expected`), relative to the logits' scale, and top-1 agreement."""
    diff = float((actual - expected).abs().max()) if len(expected) else 0.0
    if len(single):
        diff = max(diff, float((single - expected[:1]).abs().max()))
    scale = float(expected.abs().max()) if len(expected) else 0.0
    allowed = tolerance * max(1.0, scale)
    agreement = float((actual.argmax(1) == expected.argmax(1)).float().mean()) if len(expected) else 1.0
    passed = diff <= allowed and not _decisive_disagreements(expected, actual, allowed)
    return ParityReport(fmt, str(out), len(expected), agreement, diff, tolerance, passed, logit_scale=scale,
                        relative_diff=diff / max(1.0, scale))


def task_outputs(outputs: torch.Tensor, task: CheckpointTask) -> torch.Tensor:
    """What a multi-label or regression model answers with: probabilities, or values on the target's scale."""
    if task.name == "regression":
        return outputs[:, :1].double() * task.scale + task.mean
    return outputs.float().sigmoid()


def compare_task_outputs(fmt: str, out: Path, expected: torch.Tensor, actual: torch.Tensor, single: torch.Tensor,
                         tolerance: float, task: CheckpointTask) -> ParityReport:
    """The gate for multi-label (sigmoid probabilities; every label's decision at its threshold must agree
    unless the model's probability lies within the allowed difference of it) and regression (values)."""
    e, a = task_outputs(expected, task), task_outputs(actual, task)
    diff = float((a - e).abs().max()) if len(e) else 0.0
    if len(single):
        diff = max(diff, float((task_outputs(single, task) - e[:1]).abs().max()))
    scale = float(e.abs().max()) if len(e) else 0.0
    allowed = tolerance * max(1.0, scale)
    agreement, decisive = 1.0, 0
    if task.name == "multi-label" and len(e):
        k = e.shape[1]
        thresholds = torch.tensor(task.thresholds if len(task.thresholds) == k else [0.5] * k).view(1, -1)
        differ = (e >= thresholds) != (a >= thresholds)
        agreement = 1.0 - float(differ.float().mean())
        decisive = int((differ & ((e - thresholds).abs() > allowed)).sum())
    passed = diff <= allowed and not decisive
    return ParityReport(fmt, str(out), len(e), agreement, diff, tolerance, passed, logit_scale=scale,
                        relative_diff=diff / max(1.0, scale),
                        compared="probabilities" if task.name == "multi-label" else "values")


def _decisive_disagreements(expected: torch.Tensor, actual: torch.Tensor, allowed: float) -> int:
    """Images whose top-1 class the file changes although the model's logit for its own class leads the
    file's choice by more than the allowed difference (a tie within it may fall either way)."""
    if not len(expected):
        return 0
    ours, theirs = expected.argmax(1), actual.argmax(1)
    lead = expected.gather(1, ours[:, None]) - expected.gather(1, theirs[:, None])
    return int((lead[:, 0] > allowed).sum())


def gate_summary(report: ParityReport) -> str:
    """Both numbers of the gate, for a message: the relative difference and the top-1 agreement."""
    within = "within" if report.relative_diff <= report.tolerance else "above"
    return (f"largest logit difference {report.max_abs_logit_diff:.3g} at a logit scale of {report.logit_scale:.3g} "
            f"is {report.relative_diff:.3g} relative, {within} the tolerance {report.tolerance:g}; "
            f"top-1 agreement {report.top1_agreement:.1%} on {report.images} images")


def _write_pt(checkpoint: Path, classifier: LoadedClassifier, out: Path) -> None:
    if out.resolve() != checkpoint.resolve():
        with open(checkpoint, "rb") as source, atomic_file(out) as target:
            shutil.copyfileobj(source, target)


def _write_safetensors(checkpoint: Path, classifier: LoadedClassifier, out: Path) -> None:
    from safetensors.torch import save

    state = {k: v.contiguous() for k, v in classifier.model.state_dict().items()}
    meta = metadata(classifier)
    atomic_write_bytes(out, save(state, metadata=meta))
    sidecar = {"arch": classifier.arch, "class_names": classifier.class_names, "task": classifier.task.to_dict(),
               "preprocessing": classifier.preprocessing.to_dict(),
               "model_kwargs": model_kwargs(classifier.arch, classifier.preprocessing.crop), "weights": out.name}
    atomic_write_bytes(out.with_suffix(".json"), (json.dumps(sidecar, indent=2) + "\n").encode())


def _example(classifier: LoadedClassifier, batch: int = 2) -> torch.Tensor:
    crop = classifier.preprocessing.crop
    return torch.randn(batch, 3, crop, crop, generator=torch.Generator().manual_seed(0))


def _write_torchscript(checkpoint: Path, classifier: LoadedClassifier, out: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is marked deprecated; the format still loads everywhere
        traced = torch.jit.trace(classifier.model, _example(classifier), check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={"transfer_studio.json": json.dumps(metadata(classifier))})
    atomic_write_bytes(out, buffer.getvalue())


def _write_onnx(checkpoint: Path, classifier: LoadedClassifier, out: Path) -> None:
    try:
        import onnx
    except ImportError:
        raise UserError("ONNX export needs the export extra: pip install 'transfer-studio[export]'") from None
    size = sum(t.numel() * t.element_size() for t in classifier.model.state_dict().values())
    if size >= ONNX_MAX_BYTES:
        raise UserError(f"{classifier.arch} cannot be exported to onnx: its weights take {size / 2**30:.1f} GiB and a "
                        f"single ONNX file holds at most 2 GiB; use safetensors or torchscript")
    problem = onnx_pooling_problem(classifier.model, _example(classifier, batch=1))
    if problem:
        raise UserError(f"{classifier.arch} at {classifier.preprocessing.crop} px cannot be exported to onnx: {problem}; "
                        f"use torchscript, or train at a larger image size (224 px works)")
    buffer = io.BytesIO()  # in memory (under 2 GiB, checked above): no partial file for a full disk to leave
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(classifier.model, (_example(classifier),), buffer, input_names=["input"],
                          output_names=["logits"], opset_version=ONNX_OPSET,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    model = onnx.load_from_string(buffer.getvalue())
    for key, value in metadata(classifier).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    atomic_write_bytes(out, model.SerializeToString())


def _write_pt2(checkpoint: Path, classifier: LoadedClassifier, out: Path) -> bytes:
    """The bytes written, for export() to trust once they pass the parity gate."""
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(classifier.model, (_example(classifier),), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={"transfer_studio.json": json.dumps(metadata(classifier))})
    data = buffer.getvalue()
    atomic_write_bytes(out, data)
    return data


def onnx_pooling_problem(model: torch.nn.Module, example: torch.Tensor) -> str | None:
    """ONNX exports adaptive average pooling only where the output size divides the input size; AlexNet
    and VGG pool to 6x6 / 7x7, so at small image sizes they would upsample a 1x1 map. Found here, before
    the exporter fails (it also prints its whole graph to stdout, which would garble `--json` output)."""
    problems: list[str] = []

    def check(name: str, module, inputs, output) -> None:
        (h, w), (oh, ow) = inputs[0].shape[-2:], output.shape[-2:]
        if h % oh or w % ow:
            problems.append(f"its {name} pools a {h}x{w} map to {oh}x{ow}, and ONNX exports adaptive pooling only "
                            f"when the output size divides the input size")

    handles = [module.register_forward_hook(lambda m, i, o, name=name: check(name, m, i, o))
               for name, module in model.named_modules() if isinstance(module, torch.nn.AdaptiveAvgPool2d)]
    try:
        if handles:
            with torch.no_grad():
                model(example)
    finally:
        for handle in handles:
            handle.remove()
    return problems[0] if problems else None


# --- loading any format back ------------------------------------------------------------------


@dataclass
class Exported:
    """A loaded model of any format: its logits for a preprocessed batch, class names, preprocessing."""

    format: str
    class_names: list[str]
    preprocessing: dict
    _run: object
    task: CheckpointTask = CheckpointTask()  # a file without task metadata is single-label

    @classmethod
    def of_classifier(cls, classifier: LoadedClassifier) -> Exported:
        """A loaded checkpoint, run as any exported file is."""
        return cls("pt", classifier.class_names, classifier.preprocessing.to_dict(), _torch_runner(classifier.model),
                   classifier.task)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        return self._run(batch)

    def image_logits(self, images: list[Path], tta: bool = False) -> torch.Tensor:
        """The outputs for image files, preprocessed as the model was trained; with `tta` averaged with
        their mirror images' (engine.deploy.tta). What `predict` and the window's Try an image both run."""
        from engine.data.dataset import Preprocessing
        from engine.deploy.predict import preprocess
        from engine.deploy.tta import tta_logits

        batch = preprocess(images, Preprocessing.from_dict(self.preprocessing))
        return tta_logits(self.logits, batch) if tta else self.logits(batch)


def detect_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".onnx"):
        return "onnx"
    if name.endswith(".safetensors"):
        return "safetensors"
    if name.endswith((".torchscript.pt", ".torchscript", ".ts")):
        return "torchscript"
    if name.endswith(".pt2"):
        return "pt2"
    return "pt"


def load_any(path: str | Path, fmt: str | None = None, trust: bool = False) -> Exported:
    """Any exported file; its format is `fmt` when known, else detected from the file. A .pt2 loads
    only if this installation exported it (engine.deploy.trust) or `trust` is given."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is not a file (a folder)")
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    fmt = fmt or detect_format(path)
    if fmt == "pt":
        return Exported.of_classifier(load_classifier(path))
    if fmt == "pt2":
        return _load_pt2(path, trust)
    loader = {"safetensors": _load_safetensors, "torchscript": _load_torchscript, "onnx": _load_onnx}[fmt]
    try:
        return loader(path)
    except UserError:
        raise
    except Exception as exc:  # a pickle named .onnx, a damaged header: the reader's own error, in one line
        detail = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        raise UserError(f"{path} is not a valid {fmt} file, or is damaged "
                        f"({type(exc).__name__}: {detail[:200]})") from None


def _load_torchscript(path: Path) -> Exported:
    extra = {"transfer_studio.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    meta = _parse_meta(json.loads(extra["transfer_studio.json"] or "{}"), path)
    return Exported("torchscript", meta["class_names"], meta["preprocessing"], _torch_runner(module.eval()), meta["task"])


def _load_pt2(path: Path, trust: bool, written: bytes | None = None) -> Exported:
    """`written`: the bytes export() just wrote to `path`, loaded back before the parity gate trusts them."""
    from engine.deploy.trust import check_trusted

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    # Before anything unpickles; the bytes checked are the bytes loaded.
    if written is None:
        check_trusted(data, path, trust)
    elif data != written:
        raise UserError(f"{path} changed while it was being exported; export it again")
    extra = {"transfer_studio.json": ""}
    try:
        with warnings.catch_warnings(), _quiet_loggers("torch.export", "torch._export.serde.serialize"):
            warnings.simplefilter("ignore")
            module = torch.export.load(io.BytesIO(data), extra_files=extra).module()
        meta = json.loads(extra["transfer_studio.json"] or "{}")
    except Exception as exc:  # a damaged or foreign file: the reader's own error, in one line
        detail = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        raise UserError(f"{path} is not a valid pt2 file, or is damaged ({type(exc).__name__}: {detail[:200]})") from None
    meta = _parse_meta(meta if isinstance(meta, dict) else {}, path)
    return Exported("pt2", meta["class_names"], meta["preprocessing"], _torch_runner(module), meta["task"])


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    """torch.export.load logs a whole traceback (from torch.export, and from torch._export's
    deserializer on a hostile file) before it tries an older layout; the error we raise says it once."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _torch_runner(module):
    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(batch).float()
    return run


def _parse_meta(meta: dict, path: Path) -> dict:
    try:
        parsed = {"arch": meta.get("arch"), "class_names": json.loads(meta["class_names"]),
                  "preprocessing": json.loads(meta["preprocessing"])}
        task = json.loads(meta["task"]) if meta.get("task") else None
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path} has no Transfer Studio metadata (class names, preprocessing)") from None
    parsed["task"] = CheckpointTask.of({"task": task})  # one line for a task this version does not know
    return parsed


def _load_safetensors(path: Path) -> Exported:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as fh:
        meta = _parse_meta(fh.metadata() or {}, path)
    model = plain_model(meta["arch"], len(meta["class_names"]), int(meta["preprocessing"]["crop"]), for_weights=True)
    model.load_state_dict(load_file(str(path)), strict=True)
    return Exported("safetensors", meta["class_names"], meta["preprocessing"], _torch_runner(model.eval()), meta["task"])


def _load_onnx(path: Path) -> Exported:
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("reading ONNX needs onnxruntime: pip install 'transfer-studio[export]'") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = _parse_meta(dict(session.get_modelmeta().custom_metadata_map), path)
    input_name = session.get_inputs()[0].name

    def run(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {input_name: batch.float().numpy()})[0]).float()

    return Exported("onnx", meta["class_names"], meta["preprocessing"], run, meta["task"])


def checkpoint_dataset_root(checkpoint: Path) -> str | None:
    """The dataset a checkpoint was trained on, if it is still there (for parity images)."""
    try:
        root = load_checkpoint(checkpoint)["config"]["data"]["root"]
    except (KeyError, TypeError):
        return None
    return root if root and Path(root).exists() else None  # a folder, or a labels CSV


def parity_batch(checkpoint: str | Path, limit: int = 32) -> torch.Tensor:
    """Preprocessed images to compare outputs on: the run's validation images, else the demo set."""
    from engine.data.dataset import scan_dataset
    from engine.data.demo import ensure_demo_dataset
    from engine.deploy.predict import preprocess

    checkpoint = Path(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    prep = load_classifier(checkpoint).preprocessing
    root = checkpoint_dataset_root(checkpoint)
    paths: list[str] = []
    if root:
        data = ckpt["config"]["data"]
        seed = ckpt["config"].get("train", {}).get("seed", 0)
        try:
            scan = scan_dataset(root, data.get("val_fraction", 0.2), seed, task=data.get("task", "auto"))
            paths = [s.path for s in (scan.val or scan.train)]
        except UserError:
            paths = []
    if not paths:
        scan = scan_dataset(ensure_demo_dataset(), 0.2, 0)
        paths = [s.path for s in scan.val]
    step = max(1, len(paths) // limit)
    return preprocess([Path(p) for p in paths[::step][:limit]], prep)
