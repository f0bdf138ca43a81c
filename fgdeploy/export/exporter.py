"""Export with a precision: checkpoint -> traced fp32 ONNX -> the chosen precision -> checked -> written.

``export_checkpoint(checkpoint, out, ExportOptions(precision=PrecisionOptions(...)))`` is ``fgdeploy export``;
``reduce_exported(fp32_onnx, out, options)`` makes the fp16/INT8 model of an existing fp32 export without
tracing again (what ``fgdeploy demo`` does). Tracing, checking and writing are ``fgdeploy.export.onnx``; the
precision is ``fgdeploy.export.precision.reduce_precision``; a TensorRT engine is built from the written
file by ``fgdeploy.export.tensorrt``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fgdeploy.errors import ConfigError, ExportError
from fgdeploy.export.onnx import DEFAULT_OPSET, IR_VERSION, MAX_OPSET, MIN_OPSET
from fgdeploy.export.precision import PrecisionOptions

if TYPE_CHECKING:
    import onnx
    import torch

    from fgdeploy.export.precision import PrecisionResult
    from fgdeploy.export.precision.guard import GuardReport
    from fgdeploy.export.precision.images import ImageSet

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportOptions:
    """What ``export_checkpoint`` produces."""

    precision: PrecisionOptions = field(default_factory=PrecisionOptions)  # fp32, fp16 or int8, and what decides it
    batch: int | None = None           # fixed batch size; None = dynamic batch 1..max_batch
    max_batch: int = 64                # upper bound of the dynamic batch dimension
    opset: int = DEFAULT_OPSET         # default-domain opset
    heatmaps: bool = False             # also output the (N, P, Hh, Wh) heatmap logits
    verify_batches: tuple[int, ...] = (1, 3)  # batch sizes run in ONNX Runtime vs PyTorch before saving
    portable: bool = False             # inline the CoordinateTransfer function: standard ONNX ops only (portable.py)

    def __post_init__(self) -> None:
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ConfigError(f"--opset {self.opset}: the exporter supports opsets {MIN_OPSET}..{MAX_OPSET}")
        if self.batch is not None and self.batch < 1:
            raise ConfigError(f"--batch must be a positive int or 'dynamic', got {self.batch}")
        if self.max_batch < 2:
            raise ConfigError(f"max_batch must be >= 2, got {self.max_batch}")


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
    precision_summary: dict[str, Any] = field(default_factory=dict)  # fp16 / int8: node counts (PrecisionResult)
    guard_report: Path | None = None   # OUT.guard.json (a table beside it: OUT.guard.txt)
    guard_passed: bool | None = None
    guard_kept: list[str] = field(default_factory=list)  # nodes the guard kept float
    portable: bool = False             # the CoordinateTransfer node(s) were inlined (standard ONNX ops only)


def export_checkpoint(checkpoint: str | Path, out: str | Path, options: ExportOptions | None = None) -> ExportResult:
    """Export an fgdeploy checkpoint to ``out`` (.onnx) at ``options.precision``.

    Raises:
        CheckpointError: ``checkpoint`` is missing or not an fgdeploy checkpoint.
        ImageError: bad calibration or guard images.
        ExportError: tracing, the precision reduction, checking or verification failed.
    """
    from fgdeploy.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    return export_model(model, meta, out, options or ExportOptions(), source=Path(checkpoint))


def export_model(model: torch.nn.Module, meta: Any, out: str | Path, options: ExportOptions,
                 source: Path | None = None) -> ExportResult:
    """Export a loaded model with its ``CheckpointMeta``: trace (fp32), reduce, check, verify against PyTorch,
    write."""
    from fgdeploy.export.debug_outputs import coordinate_transfer_nodes
    from fgdeploy.export.onnx import (
        attach_function, build_metadata, check_onnx, count_coordinate_transfer_calls, set_metadata, trace_to_onnx,
        verify_against_torch, write_onnx,
    )
    from fgdeploy.export.portable import make_portable
    from fgdeploy.export.precision import load_calibration
    from fgdeploy.tensors import OP_DOMAIN, OP_NAME

    model = model.eval()
    size = int(meta.input_size)
    calibration = load_calibration(options.precision, size)  # bad calibration images fail now, before the trace
    expected_nodes = count_coordinate_transfer_calls(model, size)
    proto = trace_to_onnx(model, size, options)
    found = len(coordinate_transfer_nodes(proto))
    if found != expected_nodes:
        raise ExportError(f"expected {expected_nodes} {OP_DOMAIN}::{OP_NAME} node(s) (one per op call), "
                          f"the exported graph has {found}; the custom translation was not applied")
    attach_function(proto, options.opset)
    proto.ir_version = IR_VERSION
    outputs = [o.name for o in proto.graph.output]
    set_metadata(proto, build_metadata(meta, model, options, outputs, [], source, precision="fp32"))
    reduced = _reduce(proto, size, options.precision, calibration, Path(out))
    if reduced is not None:
        proto = reduced.model
    proto.ir_version = IR_VERSION
    kept = reduced.kept if reduced is not None else []
    set_metadata(proto, {**build_metadata(meta, model, options, outputs, kept, source, options.precision.name),
                         **(reduced.metadata if reduced is not None else {})})
    if options.portable:   # after the precision reduction: its policies find the op by its node
        proto = make_portable(proto)
    check_onnx(proto)
    data = proto.SerializeToString()
    verified = verify_against_torch(model, data, size, options)   # the portable graph too: parity with PyTorch
    out = Path(out)
    write_onnx(out, data)
    result = ExportResult(path=out, precision=options.precision.name,
                          batch="dynamic" if options.batch is None else options.batch, opset=options.opset,
                          outputs=outputs, coordinate_transfer_nodes=found, sha256=hashlib.sha256(data).hexdigest(),
                          size_bytes=len(data), verified=verified, portable=options.portable)
    _add_reduction(result, reduced, out)
    logger.debug("wrote %s (%d bytes, %s, %d CoordinateTransfer node(s))", out, len(data), result.precision, found)
    return result


def reduce_exported(fp32_onnx: str | Path, out: str | Path, options: ExportOptions) -> ExportResult:
    """The fp16 or INT8 model of an fp32 ``fgdeploy export``, without tracing the checkpoint again. Checked
    like an export, and run in ONNX Runtime once (finite outputs of the fp32 model's shapes) before it is
    written.

    Raises:
        ConfigError: ``options.precision`` is fp32.
        ExportError: ``fp32_onnx`` is not an fp32 fgdeploy export, or reduction/checks failed.
        ImageError: bad calibration or guard images.
    """
    import onnx

    from fgdeploy.export.debug_outputs import coordinate_transfer_nodes
    from fgdeploy.export.metadata import decode_metadata
    from fgdeploy.export.onnx import check_onnx, set_metadata, verify_runs, write_onnx
    from fgdeploy.export.onnx_function import register_coordinate_transfer_schema
    from fgdeploy.export.precision import load_calibration

    if not options.precision.reduced:
        raise ConfigError("reduce_exported makes fp16 or int8 models; the options ask for fp32")
    register_coordinate_transfer_schema()
    try:
        proto = onnx.load(str(fp32_onnx))
    except Exception as exc:  # onnx raises DecodeError, OSError, ...
        raise ExportError(f"{fp32_onnx}: cannot read it as ONNX ({exc}); export one with `fgdeploy export`") from exc
    meta = decode_metadata({p.key: p.value for p in proto.metadata_props})
    if meta.get("precision") != "fp32" or "input_size" not in meta:
        raise ExportError(f"{fp32_onnx}: not an fp32 fgdeploy export (precision {meta.get('precision')!r}); "
                          "reduce the fp32 export of the checkpoint")
    if meta.get("portable"):
        raise ExportError(f"{fp32_onnx} is a --portable export (its CoordinateTransfer is inlined, so the precision "
                          "policies cannot find it); reduce the default export, with --portable on the reduced one")
    size = int(meta["input_size"])
    calibration = load_calibration(options.precision, size)
    reference = proto.SerializeToString()
    reduced = _reduce(proto, size, options.precision, calibration, Path(out))
    assert reduced is not None   # a reduced precision
    model = reduced.model
    model.ir_version = IR_VERSION
    set_metadata(model, {**meta, "precision": reduced.precision, "fp32_kept": reduced.kept, **reduced.metadata})
    if options.portable:
        from fgdeploy.export.portable import make_portable

        model = make_portable(model)
    check_onnx(model)
    data = model.SerializeToString()
    verified = verify_runs(data, reference, size)
    out = Path(out)
    write_onnx(out, data)
    result = ExportResult(path=out, precision=reduced.precision, batch=meta.get("batch", "dynamic"),
                          opset=int(meta.get("opset", options.opset)), outputs=[o.name for o in model.graph.output],
                          coordinate_transfer_nodes=len(coordinate_transfer_nodes(proto)),
                          sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data), verified=verified,
                          portable=options.portable)
    _add_reduction(result, reduced, out)
    logger.info("wrote %s (%d bytes, %s, from %s)", out, len(data), result.precision, fp32_onnx)
    return result


def _reduce(fp32: onnx.ModelProto, size: int, precision: PrecisionOptions, calibration: ImageSet | None,
            out: Path) -> PrecisionResult | None:
    """``reduce_precision``; when the guard fails even with every candidate float, its report is written
    beside ``out`` and ExportError raised."""
    from fgdeploy.export.precision import GuardFailed, reduce_precision

    try:
        return reduce_precision(fp32, size, precision, calibration)
    except GuardFailed as exc:
        path = write_guard_report(exc.report, out)
        raise ExportError(f"{exc} (report: {path}); nothing written to {out}") from exc


def _add_reduction(result: ExportResult, reduced: PrecisionResult | None, out: Path) -> None:
    if reduced is None:
        return
    result.precision_summary = reduced.summary
    if reduced.report is not None:
        result.guard_report, result.guard_passed = write_guard_report(reduced.report, out), reduced.report.passed
        result.guard_kept = reduced.report.kept_names


def write_guard_report(report: GuardReport, out: Path) -> Path:
    """``OUT.guard.json`` and the table ``OUT.guard.txt`` beside the model; returns the JSON path."""
    from fgdeploy.fileio import atomic_write_text

    path = out.with_name(out.stem + ".guard.json")
    report.dump(path)
    atomic_write_text(path.with_suffix(".txt"), report.render() + "\n")
    return path
