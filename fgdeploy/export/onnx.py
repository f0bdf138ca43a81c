"""Tracing, checking and writing ONNX: a model -> one ``fgdeploy::CoordinateTransfer`` node per op call
(docs/method.md 4a), the op's model-local function, metadata, checks.

The dynamo exporter traces the model; a custom translation maps ``torch.ops.fgdeploy.coordinate_transfer``
to ONE node in domain ``fgdeploy`` (attributes window, mode, plugin_namespace="fgdeploy",
plugin_version="1"; docs/deploy.md, TensorRT). The model then gets the op's FunctionProto in ``model.functions``
(runtimes without the plugin inline it) and the metadata ``infer`` needs (``fgdeploy.export.metadata``).
``check_onnx`` runs ``onnx.checker.check_model(full_check=True)`` and strict shape inference;
``verify_against_torch`` runs the ONNX in ONNX Runtime against PyTorch at several batch sizes;
``write_onnx`` writes atomically. The steps are put together, with the precision, by
``fgdeploy.export.exporter``.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fgdeploy import __version__
from fgdeploy.errors import ExportError
from fgdeploy.export.metadata import METADATA_FORMAT, encode_metadata
from fgdeploy.tensors import (
    INPUT_IMAGES, MODEL_OUTPUTS, OP_DOMAIN, OP_NAME, OP_VERSION, OUTPUT_HEATMAPS, OUTPUT_KEYPOINTS,
    OUTPUT_LOGITS, OUTPUT_PART_BOXES, PLUGIN_NAMESPACE,
)

if TYPE_CHECKING:
    import onnx
    import torch

    from fgdeploy.export.exporter import ExportOptions

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18      # supported by every TensorRT 10.x/11.x parser and ONNX Runtime >= 1.14
MIN_OPSET = 18          # the dynamo exporter's floor
MAX_OPSET = 21          # the CoordinateTransfer function's newest (onnx_function.SUPPORTED_OPSETS)
IR_VERSION = 10         # ONNX 1.16: what TensorRT 10.x parsers read (docs/onnx.md)


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
    """Custom translation: the torch op -> one ``fgdeploy::CoordinateTransfer`` node (docs/onnx.md, "The custom op")."""
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
                   fp32_kept: Sequence[str], source: Path | None, precision: str) -> dict[str, Any]:
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
        "precision": precision,
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


def verify_runs(data: bytes, reference: bytes, size: int) -> dict[str, float]:
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


def set_metadata(proto: onnx.ModelProto, values: dict[str, Any]) -> None:
    """Replace the model's ``metadata_props`` with ``values`` (JSON-encoded) and name fgdeploy as producer."""
    from onnx import helper

    proto.producer_name, proto.producer_version = "fgdeploy", __version__
    del proto.metadata_props[:]
    helper.set_model_props(proto, encode_metadata(values))


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
            if options.precision.name == "fp32" and (diff > 1e-3 * span or moved > 0.05):
                raise ExportError(f"ONNX Runtime disagrees with PyTorch at batch {n}: max |logit diff| {diff:.3g} "
                                  f"(logit range {span:.3g}), {100 * moved:.1f}% of keypoints moved")
    return results


def write_onnx(path: Path, data: bytes) -> None:
    """Write the serialized model atomically (a killed export leaves no half-written file)."""
    from fgdeploy.fileio import atomic_write_bytes

    atomic_write_bytes(path, data)
