"""Checkpoint -> ONNX with one ``fgdeploy::CoordinateTransfer`` node per op call (method.md 4a).

The dynamo exporter traces the model; a custom translation maps ``torch.ops.fgdeploy.coordinate_transfer``
to ONE node in domain ``fgdeploy`` (attributes window, mode, plugin_namespace="fgdeploy",
plugin_version="1"; tensorrt.md 6.4). The model then gets the op's FunctionProto in ``model.functions``
(runtimes without the plugin inline it), optionally the mixed-fp16 conversion (``fgdeploy.export.fp16``),
and the metadata ``infer`` needs (``fgdeploy.export.metadata``). The result passes
``onnx.checker.check_model(full_check=True)`` and strict shape inference, and is run once in ONNX Runtime
against PyTorch at several batch sizes before it is written (atomically).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fgdeploy import __version__
from fgdeploy.errors import ConfigError, ExportError
from fgdeploy.export.debug_outputs import coordinate_transfer_nodes
from fgdeploy.export.metadata import METADATA_FORMAT, encode_metadata
from fgdeploy.export.precision import CalibrationOptions, GuardOptions
from fgdeploy.tensors import (
    INPUT_IMAGES, MODEL_OUTPUTS, OP_DOMAIN, OP_NAME, OP_VERSION, OUTPUT_HEATMAPS, OUTPUT_KEYPOINTS,
    OUTPUT_LOGITS, OUTPUT_PART_BOXES, PLUGIN_NAMESPACE,
)

if TYPE_CHECKING:
    import onnx
    import torch

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18      # supported by every TensorRT 10.x/11.x parser and ONNX Runtime >= 1.14
MIN_OPSET = 18          # the dynamo exporter's floor
MAX_OPSET = 21          # the CoordinateTransfer function's newest (onnx_function.SUPPORTED_OPSETS)
IR_VERSION = 10         # ONNX 1.16: what TensorRT 10.x parsers read (tensorrt.md 6.4)


@dataclass(frozen=True)
class ExportOptions:
    """What ``export_onnx`` produces."""

    fp16: bool = False                 # mixed fp16 (fixed policy in fgdeploy.export.fp16; with guard: task-driven)
    int8: bool = False                 # static INT8, QDQ (fgdeploy.export.int8); needs calibration
    calibration: CalibrationOptions | None = None  # INT8 calibration images
    guard: GuardOptions | None = None  # task-metric guard of int8 / fp16 (fgdeploy.export.guard)
    batch: int | None = None           # fixed batch size; None = dynamic batch 1..max_batch
    max_batch: int = 64                # upper bound of the dynamic batch dimension
    opset: int = DEFAULT_OPSET         # default-domain opset
    heatmaps: bool = False             # also output the (N, P, Hh, Wh) heatmap logits
    verify_batches: tuple[int, ...] = (1, 3)  # batch sizes run in ONNX Runtime vs PyTorch before saving

    def __post_init__(self) -> None:
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ConfigError(f"--opset {self.opset}: the exporter supports opsets {MIN_OPSET}..{MAX_OPSET}")
        if self.batch is not None and self.batch < 1:
            raise ConfigError(f"--batch must be a positive int or 'dynamic', got {self.batch}")
        if self.max_batch < 2:
            raise ConfigError(f"max_batch must be >= 2, got {self.max_batch}")
        if self.int8 and self.fp16:
            raise ConfigError("--int8 and --fp16 exclude each other: export one precision per file")
        if self.int8 and self.calibration is None:
            raise ConfigError("--int8 needs calibration images: add --calib DIR (a CUB-format dataset or a folder)")
        if self.calibration is not None and not self.int8:
            raise ConfigError("--calib is for --int8 exports")
        if self.guard is not None and not (self.int8 or self.fp16):
            raise ConfigError("--guard checks a reduced precision: use it with --int8 or --fp16")

    @property
    def precision(self) -> str:
        """"int8", "fp16" or "fp32"."""
        return "int8" if self.int8 else "fp16" if self.fp16 else "fp32"


@dataclass
class ExportResult:
    """What was written and what was checked."""

    path: Path
    precision: str
    batch: str | int
    opset: int
    outputs: list[str]
    coordinate_transfer_nodes: int
    sha256: str
    size_bytes: int
    verified: dict[str, float] = field(default_factory=dict)  # "batch N max |logit diff|" -> value
    fp16_summary: dict[str, Any] = field(default_factory=dict)
    precision_summary: dict[str, Any] = field(default_factory=dict)  # int8 / guarded fp16: node counts
    guard_report: Path | None = None   # OUT.guard.json (a table beside it: OUT.guard.txt)
    guard_passed: bool | None = None
    guard_kept: list[str] = field(default_factory=list)  # nodes the guard kept float


def _wrap(model: torch.nn.Module, names: Sequence[str]) -> torch.nn.Module:
    """A module returning the model's named outputs as a tuple in ``names`` order."""
    import torch

    class NamedOutputs(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self.inner(images)
            return tuple(out[n] for n in names)

    return NamedOutputs(model).eval()


def _translate_coordinate_transfer(heatmaps: Any, features: Any, window: int = 3, mode: int = 0) -> Any:
    """Custom translation: the torch op -> one ``fgdeploy::CoordinateTransfer`` node (export-notes.md)."""
    import onnxscript

    op = onnxscript.values.Opset(OP_DOMAIN, 1)
    return op.CoordinateTransfer(heatmaps, features, window=window, mode=mode,
                                 plugin_namespace=PLUGIN_NAMESPACE, plugin_version=OP_VERSION)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's chatter (torchvision registrations, deprecation notes) below errors."""
    names = ["torch.onnx", "torch.onnx._internal.exporter._registration", "onnxscript", "onnx_ir"]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def output_names(model: torch.nn.Module, heatmaps: bool = False) -> list[str]:
    """The exported outputs: logits, keypoints, keypoint_scores, part_boxes (models with part nets: the head/body
    crops happen inside the graph) and, when asked, heatmaps."""
    boxes = [OUTPUT_PART_BOXES] if getattr(model, "part_nets", None) is not None else []
    return list(MODEL_OUTPUTS) + boxes + ([OUTPUT_HEATMAPS] if heatmaps else [])


def trace_to_onnx(model: torch.nn.Module, input_size: int, options: ExportOptions) -> onnx.ModelProto:
    """Run the dynamo exporter; returns the fp32 graph with the custom node (no function yet)."""
    import torch

    from fgdeploy.export.onnx_function import register_coordinate_transfer_schema

    register_coordinate_transfer_schema()
    names = output_names(model, options.heatmaps)
    example_batch = options.batch or 2  # 2, not 1: a size-1 example would be specialised
    example = torch.rand(example_batch, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    dynamic = None
    if options.batch is None:
        dynamic = {"images": {0: torch.export.Dim("batch", min=1, max=options.max_batch)}}
    table: dict[Any, Any] = {torch.ops.fgdeploy.coordinate_transfer.default: _translate_coordinate_transfer}
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                _wrap(model, names), (example,), dynamo=True, input_names=[INPUT_IMAGES], output_names=names,
                dynamic_shapes=dynamic, custom_translation_table=table, opset_version=options.opset,
                optimize=True, verbose=False, report=False)
    except Exception as exc:
        raise ExportError(f"torch.onnx.export (dynamo) failed: {str(exc).strip().splitlines()[0][:500]}") from exc
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    return program.model_proto


def count_coordinate_transfer_calls(model: torch.nn.Module, input_size: int) -> int:
    """How many times one forward pass calls the custom op (= the CoordinateTransfer nodes expected)."""
    import torch

    from fgdeploy.backends.torch_runner import CoordinateTransferCapture

    capture = CoordinateTransferCapture()
    with torch.inference_mode(), capture:
        model(torch.rand(1, 3, input_size, input_size, generator=torch.Generator().manual_seed(1)))
    return len(capture.tensors()) // 2


def attach_function(model: onnx.ModelProto, opset: int) -> None:
    """Append the op engineer's CoordinateTransfer FunctionProto and import the ``fgdeploy`` domain."""
    from onnx import helper

    from fgdeploy.export.onnx_function import coordinate_transfer_function

    fn = coordinate_transfer_function(opset)
    if (fn.domain, fn.name) != (OP_DOMAIN, OP_NAME):
        raise ExportError(f"function is {fn.domain}::{fn.name}, expected {OP_DOMAIN}::{OP_NAME}")
    model.functions.append(fn)
    domains = {o.domain for o in model.opset_import}
    if OP_DOMAIN not in domains:
        model.opset_import.append(helper.make_opsetid(OP_DOMAIN, 1))
    for imp in fn.opset_import:  # every domain the function body uses must be imported by the model
        if imp.domain not in domains | {OP_DOMAIN}:
            model.opset_import.append(helper.make_opsetid(imp.domain, imp.version))


def check_onnx(model: onnx.ModelProto) -> onnx.ModelProto:
    """Full checker + strict shape/type inference; returns the inferred model. Raises ExportError."""
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"exported ONNX fails onnx.checker/shape inference: {str(exc).strip()[:800]}") from exc


def build_metadata(meta: Any, model: torch.nn.Module, options: ExportOptions, outputs: Sequence[str],
                   fp32_kept: Sequence[str], source: Path | None, precision: str | None = None) -> dict[str, Any]:
    """``metadata_props`` values (see ``fgdeploy.export.metadata`` for the keys)."""
    hh, wh = tuple(getattr(model, "heatmap_size"))
    return {
        "fgdeploy_format": METADATA_FORMAT,
        "fgdeploy_version": __version__,
        "class_names": list(meta.class_names),
        "part_names": list(meta.part_names),
        "input_name": INPUT_IMAGES,
        "input_size": int(meta.input_size),
        "input_dtype": "float32",
        "input_range": [0.0, 1.0],
        "normalisation": {"mean": list(meta.mean), "std": list(meta.std), "applied": "in_graph"},
        "heatmap_size": [int(hh), int(wh)],
        "precision": precision or options.precision,
        "fp32_kept": list(fp32_kept),
        "batch": "dynamic" if options.batch is None else int(options.batch),
        "max_batch": int(options.max_batch if options.batch is None else options.batch),
        "outputs": list(outputs),
        "model_config": dict(meta.model_config),
        "source_checkpoint": source.name if source else "",
        "source_path": str(source.resolve()) if source else "",
        "source_sha256": getattr(meta, "sha256", "") or "",
        "stage": int(getattr(meta, "stage", 0)),
        "epoch": int(getattr(meta, "epoch", 0)),
        "opset": int(options.opset),
    }


def export_checkpoint(checkpoint: str | Path, out: str | Path, options: ExportOptions | None = None) -> ExportResult:
    """Export an fgdeploy checkpoint to ``out`` (.onnx).

    Raises:
        CheckpointError: ``checkpoint`` is missing or not an fgdeploy checkpoint.
        ExportError: tracing, checking or verification failed.
    """
    from fgdeploy.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    return export_model(model, meta, out, options or ExportOptions(), source=Path(checkpoint))


def export_model(model: torch.nn.Module, meta: Any, out: str | Path, options: ExportOptions,
                 source: Path | None = None) -> ExportResult:
    """Export a loaded model with its ``CheckpointMeta``; see the module docstring for the steps."""
    from fgdeploy.fileio import atomic_write_bytes

    model = model.eval()
    size = int(meta.input_size)
    calibration = None
    if options.int8:   # bad calibration images fail now, before the slow trace
        from fgdeploy.export.precision import load_calibration

        assert options.calibration is not None  # ExportOptions checks it
        calibration = load_calibration(options.calibration, size)
    expected_nodes = count_coordinate_transfer_calls(model, size)
    proto = trace_to_onnx(model, size, options)
    found = len(coordinate_transfer_nodes(proto))
    if found != expected_nodes:
        raise ExportError(f"expected {expected_nodes} {OP_DOMAIN}::{OP_NAME} node(s) (one per op call), "
                          f"the exported graph has {found}; the custom translation was not applied")
    attach_function(proto, options.opset)
    proto.ir_version = IR_VERSION
    outputs = [o.name for o in proto.graph.output]
    _set_metadata(proto, build_metadata(meta, model, options, outputs, [], source, precision="fp32"))
    summary: dict[str, Any] = {}
    kept: list[str] = []
    reduced = None
    if options.int8 or (options.fp16 and options.guard is not None):
        reduced = reduce_precision(proto, size, options, calibration, Path(out))
    elif options.fp16:
        from fgdeploy.export.fp16 import convert_to_mixed_fp16

        proto, fp16 = convert_to_mixed_fp16(proto)
        kept = list(fp16.kept_fp32)
        summary = {"fp16_nodes": fp16.fp16_nodes, "fp32_nodes": fp16.fp32_nodes, "casts": fp16.casts_inserted}
    if reduced is not None:
        proto, kept = reduced.model, reduced.kept
    proto.ir_version = IR_VERSION
    _set_metadata(proto, {**build_metadata(meta, model, options, outputs, kept, source),
                          **(reduced.metadata if reduced is not None else {})})
    check_onnx(proto)
    data = proto.SerializeToString()
    verified = verify_against_torch(model, data, size, options)
    out = Path(out)
    atomic_write_bytes(out, data)
    result = ExportResult(path=out, precision=options.precision,
                          batch="dynamic" if options.batch is None else options.batch, opset=options.opset,
                          outputs=outputs, coordinate_transfer_nodes=found, sha256=hashlib.sha256(data).hexdigest(),
                          size_bytes=len(data), verified=verified, fp16_summary=summary)
    if reduced is not None:
        _add_reduction(result, reduced, out)
    logger.debug("wrote %s (%d bytes, %s, %d CoordinateTransfer node(s))", out, len(data), options.precision, found)
    return result


def reduce_precision(fp32: onnx.ModelProto, size: int, options: ExportOptions, calibration: Any,
                     out: Path) -> Any:
    """INT8 (``options.int8``) or guarded FP16 of the fp32 graph (``fgdeploy.export.precision``); when the
    guard fails even with every candidate float, its report is written beside ``out`` and ExportError raised."""
    from fgdeploy.export.precision import GuardFailed, reduce_to_fp16_guarded, reduce_to_int8

    try:
        if options.int8:
            assert calibration is not None and options.calibration is not None
            return reduce_to_int8(fp32, size, calibration, options.calibration, options.guard)
        assert options.guard is not None
        return reduce_to_fp16_guarded(fp32, size, options.guard)
    except GuardFailed as exc:
        path = write_guard_report(exc.report, out)
        raise ExportError(f"{exc} (report: {path}); nothing written to {out}") from exc


def _add_reduction(result: ExportResult, reduced: Any, out: Path) -> None:
    result.precision_summary = reduced.summary
    if reduced.report is not None:
        result.guard_report, result.guard_passed = write_guard_report(reduced.report, out), reduced.report.passed
        result.guard_kept = reduced.report.kept_names


def reduce_exported(fp32_onnx: str | Path, out: str | Path, options: ExportOptions) -> ExportResult:
    """INT8 (``--int8``) or task-driven FP16 (``--fp16`` with a guard) from an fp32 ``fgdeploy export``,
    without tracing the checkpoint again (what ``fgdeploy demo`` does). Checked like an export, and run in
    ONNX Runtime once (finite outputs of the fp32 model's shapes) before it is written.

    Raises:
        ExportError: ``fp32_onnx`` is not an fp32 fgdeploy export, or reduction/checks failed.
        ImageError: bad calibration or guard images.
    """
    import onnx

    from fgdeploy.export.metadata import decode_metadata
    from fgdeploy.export.onnx_function import register_coordinate_transfer_schema
    from fgdeploy.export.precision import load_calibration
    from fgdeploy.fileio import atomic_write_bytes

    if not (options.int8 or (options.fp16 and options.guard is not None)):
        raise ConfigError("reduce_exported makes int8 or guarded fp16 models; the options ask for neither")
    register_coordinate_transfer_schema()
    try:
        proto = onnx.load(str(fp32_onnx))
    except Exception as exc:  # onnx raises DecodeError, OSError, ...
        raise ExportError(f"{fp32_onnx}: cannot read it as ONNX ({exc}); export one with `fgdeploy export`") from exc
    meta = decode_metadata({p.key: p.value for p in proto.metadata_props})
    if meta.get("precision") != "fp32" or "input_size" not in meta:
        raise ExportError(f"{fp32_onnx}: not an fp32 fgdeploy export (precision {meta.get('precision')!r}); "
                          "reduce the fp32 export of the checkpoint")
    size = int(meta["input_size"])
    calibration = load_calibration(options.calibration, size) if options.int8 and options.calibration else None
    reference = proto.SerializeToString()
    reduced = reduce_precision(proto, size, options, calibration, Path(out))
    model = reduced.model
    model.ir_version = IR_VERSION
    _set_metadata(model, {**meta, "precision": options.precision, "fp32_kept": reduced.kept, **reduced.metadata})
    check_onnx(model)
    data = model.SerializeToString()
    verified = _verify_runs(data, reference, size)
    out = Path(out)
    atomic_write_bytes(out, data)
    result = ExportResult(path=out, precision=options.precision, batch=meta.get("batch", "dynamic"),
                          opset=int(meta.get("opset", options.opset)), outputs=[o.name for o in model.graph.output],
                          coordinate_transfer_nodes=len(coordinate_transfer_nodes(model)),
                          sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data), verified=verified)
    _add_reduction(result, reduced, out)
    logger.info("wrote %s (%d bytes, %s, from %s)", out, len(data), options.precision, fp32_onnx)
    return result


def _verify_runs(data: bytes, reference: bytes, size: int) -> dict[str, float]:
    """Run the reduced model and its fp32 source on the same random images: shapes must match, outputs be
    finite; returns the max |logit diff| (information: the guard or ``fgdeploy parity`` judges)."""
    from fgdeploy.backends.ort_runner import OrtRunner

    images = np.random.default_rng(2).random((2, 3, size, size), dtype=np.float32)
    outs = []
    for model, name in ((reference, "fp32"), (data, "reduced")):
        with OrtRunner(model, providers=["cpu"], name=name) as runner:
            outs.append(runner.infer({INPUT_IMAGES: images}))
    want, got = outs
    for name, value in got.items():
        if value.shape != want[name].shape or not np.all(np.isfinite(value)):
            raise ExportError(f"reduced ONNX output {name}: shape {value.shape} (fp32 {want[name].shape}) or "
                              "non-finite values")
    return {"batch 2 max |logit diff| vs fp32 ONNX": float(np.abs(got[OUTPUT_LOGITS] - want[OUTPUT_LOGITS]).max())}


def _set_metadata(proto: onnx.ModelProto, values: dict[str, Any]) -> None:
    from onnx import helper

    proto.producer_name, proto.producer_version = "fgdeploy", __version__
    del proto.metadata_props[:]
    helper.set_model_props(proto, encode_metadata(values))


def write_guard_report(report: Any, out: Path) -> Path:
    """``OUT.guard.json`` and the table ``OUT.guard.txt`` beside the model; returns the JSON path."""
    from fgdeploy.fileio import atomic_write_text

    path = out.with_name(out.stem + ".guard.json")
    report.dump(path)
    atomic_write_text(path.with_suffix(".txt"), report.render() + "\n")
    return path


def verify_against_torch(model: torch.nn.Module, data: bytes, size: int, options: ExportOptions) -> dict[str, float]:
    """Run the ONNX in ONNX Runtime (CPU) and the model in PyTorch at a few batch sizes.

    fp32 exports must match (logits within 1e-3 of the logit range, <= 5% keypoints moved); fp16 and int8
    must give finite outputs of the right shapes (their task-level check is the guard, or ``fgdeploy parity``). Returns the max |logit diff| per batch size.
    """
    import torch

    from fgdeploy.backends.ort_runner import OrtRunner

    batches = [options.batch] if options.batch is not None else sorted(set(options.verify_batches))
    results: dict[str, float] = {}
    with OrtRunner(data, providers=["cpu"], name="export-check") as runner:
        for n in batches:
            images = np.random.default_rng(n).random((n, 3, size, size), dtype=np.float32)
            got = runner.infer({INPUT_IMAGES: images})
            with torch.inference_mode():
                want = {k: v.float().numpy() for k, v in model(torch.from_numpy(images)).items()}
            for name, value in got.items():
                if value.shape != want[name].shape or not np.all(np.isfinite(value)):
                    raise ExportError(f"ONNX output {name} at batch {n}: shape {value.shape} (PyTorch "
                                      f"{want[name].shape}) or non-finite values")
            diff = float(np.abs(got[OUTPUT_LOGITS] - want[OUTPUT_LOGITS]).max())
            results[f"batch {n} max |logit diff|"] = diff
            span = float(np.ptp(want[OUTPUT_LOGITS])) or 1.0
            # A smoke test, not parity (``fgdeploy parity`` is): near-ties may move a few keypoints.
            moved = float(np.any(got[OUTPUT_KEYPOINTS] != want[OUTPUT_KEYPOINTS], axis=-1).mean())
            if options.precision == "fp32" and (diff > 1e-3 * span or moved > 0.05):
                raise ExportError(f"ONNX Runtime disagrees with PyTorch at batch {n}: max |logit diff| {diff:.3g} "
                                  f"(logit range {span:.3g}), {100 * moved:.1f}% of keypoints moved")
    return results
