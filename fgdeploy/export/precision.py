"""Reduced precision for an export: INT8 (``--int8 --calib``) and task-driven FP16 (``--fp16 --guard``).

Both take the fp32 graph the exporter made, build the reduced model with a maintained converter (ONNX
Runtime's quantizer, onnxconverter-common's float16 conversion) and, when held-out images are at hand,
let the guard (``fgdeploy.export.guard``) keep float the nodes the task metrics need. The result carries
what the exporter records: precision, the float-kept parts, the calibration set and the guard's verdict.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fgdeploy.errors import ConfigError, ExportError
from fgdeploy.export.calibration import (
    DEFAULT_CALIBRATION_IMAGES, MIN_CALIBRATION_IMAGES, ImageSet, is_cub_dataset, load_image_set,
)
from fgdeploy.export.guard import Guard, GuardReport, GuardThresholds, guarded_search
from fgdeploy.export.int8 import Int8Settings

if TYPE_CHECKING:
    import onnx

    from fgdeploy.parity.sources import ImageSource

logger = logging.getLogger(__name__)

DEFAULT_GUARD_IMAGES = 500   # as `fgdeploy parity --data`


@dataclass(frozen=True)
class CalibrationOptions:
    """Where INT8 calibration images come from (a CUB-format dataset's train split, or a folder)."""

    source: Path
    images: int = DEFAULT_CALIBRATION_IMAGES
    settings: Int8Settings = field(default_factory=Int8Settings)

    def __post_init__(self) -> None:
        if self.images < MIN_CALIBRATION_IMAGES:
            raise ConfigError(f"--calib-images {self.images}: INT8 calibration needs at least "
                              f"{MIN_CALIBRATION_IMAGES} images")


@dataclass(frozen=True)
class GuardOptions:
    """The guard's held-out images and thresholds; ``source`` None: the calibration source's test split."""

    source: Path | None = None
    images: int = DEFAULT_GUARD_IMAGES
    thresholds: GuardThresholds = field(default_factory=GuardThresholds)
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.images < 1:
            raise ConfigError(f"--guard-images {self.images}: give a positive number")


@dataclass
class PrecisionResult:
    """A reduced-precision model and what to record about it."""

    model: onnx.ModelProto
    precision: str                      # "int8" or "fp16"
    kept: list[str]                     # the metadata's fp32_kept: float parts, with why
    metadata: dict[str, Any]            # extra metadata_props values
    report: GuardReport | None = None
    summary: dict[str, Any] = field(default_factory=dict)


def guard_source(options: GuardOptions, calibration: Path | None, size: int) -> ImageSource | None:
    """The guard's images: ``options.source`` (a CUB-format dataset's test split with ground truth, or a
    folder of images), else the calibration dataset's test split; None when there is neither."""
    from fgdeploy.parity.sources import ArrayImages, DatasetImages

    source = options.source
    if source is None:
        if calibration is None or not is_cub_dataset(calibration):
            return None
        source = calibration
    if is_cub_dataset(source):
        images = DatasetImages(source, "test", size, options.images)
        if len(images) == 0:
            raise ConfigError(f"guard: {source} has no test images; give --guard a folder of held-out images")
        return images
    held_out = load_image_set(source, size, options.images, "all", minimum=1, what="guard")
    return ArrayImages(held_out.model_input(), description=held_out.description)


def load_calibration(calibration: CalibrationOptions, size: int) -> ImageSet:
    """Decode the calibration images (a CUB-format dataset's train split, or a folder).

    Raises:
        ImageError: none, fewer than ``MIN_CALIBRATION_IMAGES``, or an unreadable file (named).
    """
    return load_image_set(calibration.source, size, calibration.images, "train", minimum=MIN_CALIBRATION_IMAGES,
                          what="calibration")


def reduce_to_int8(fp32: onnx.ModelProto, size: int, images: ImageSet, calibration: CalibrationOptions,
                   guard: GuardOptions | None, progress: Callable[[str], None] | None = None) -> PrecisionResult:
    """Calibrate on ``images``, quantize and (with held-out images) guard; see ``fgdeploy.export.int8``.

    Raises:
        ImageError: bad guard images.
        ExportError: quantization failed, or the guard fails with every candidate node float.
    """
    import onnx

    from fgdeploy.export.int8 import Int8Builder, quantized_nodes, workdir
    from fgdeploy.parity.report import default_thresholds

    with workdir() as tmp:
        builder = Int8Builder(fp32, images, calibration.settings, Path(tmp))
        source = guard_source(guard, calibration.source, size) if guard is not None else None
        report = None
        if source is None:
            if guard is not None:
                logger.warning("int8: no held-out images for the guard (the calibration source is not a CUB-format "
                               "dataset); pass --guard DIR to check the task metrics")
            data = builder(frozenset())
        else:
            assert guard is not None
            check = Guard(fp32.SerializeToString(), source, guard.thresholds, default_thresholds("int8").tolerance,
                          threads=guard.threads)
            data, report = guarded_search(builder, builder.candidates, check, precision="int8",
                                          op_types=builder.op_types, policy_float=builder.policy, progress=progress)
            _raise_if_failed(report, "int8")
    model = onnx.load_from_string(data)
    kept = _kept_text(builder.policy, report, builder.op_types)
    calib = {"source": str(Path(calibration.source).resolve()), "images": len(images), "description": images.description,
             **calibration.settings.describe()}
    metadata = {"quantization": calib, "float_kept_nodes": _float_nodes(builder.policy, report),
                "precision_guard": _guard_summary(report)}
    return PrecisionResult(model, "int8", kept, metadata, report,
                           summary={"nodes": quantized_nodes(model), "calibration": images.description})


def reduce_to_fp16_guarded(fp32: onnx.ModelProto, size: int, guard: GuardOptions,
                           progress: Callable[[str], None] | None = None) -> PrecisionResult:
    """Task-driven fp16 (``fgdeploy.export.fp16_task``): all fp16, then the guard keeps what it needs fp32.

    Raises:
        ConfigError: no guard images.
        ExportError: conversion failed, or the guard fails with every candidate node fp32.
    """
    from fgdeploy.export.fp16_task import Fp16Builder, fp32_node_names
    from fgdeploy.parity.report import default_thresholds

    source = guard_source(guard, None, size)
    if source is None:
        raise ConfigError("--fp16 --guard needs held-out images: give --guard a CUB-format dataset or a folder")
    builder = Fp16Builder(fp32)
    check = Guard(fp32.SerializeToString(), source, guard.thresholds, default_thresholds("fp16").tolerance,
                  threads=guard.threads)
    _, report = guarded_search(builder, builder.candidates, check, precision="fp16", op_types=builder.op_types,
                               policy_float=builder.policy, progress=progress)
    _raise_if_failed(report, "fp16")
    model = builder.convert(frozenset(report.kept_names))
    fp32_nodes = fp32_node_names(model)
    kept = _kept_text(builder.policy, report, builder.op_types)
    kept.append(f"ops onnxconverter-common keeps fp32 (default op block list, e.g. Resize)")
    metadata = {"float_kept_nodes": _float_nodes(builder.policy, report), "precision_guard": _guard_summary(report),
                "fp16_policy": "task-driven (onnxconverter-common, guard block list)"}
    counts = Counter(builder.op_types[n] for n in fp32_nodes)
    return PrecisionResult(model, "fp16", kept, metadata, report,
                           summary={"fp32_compute_nodes": dict(sorted(counts.items()))})


class GuardFailed(ExportError):
    """The guard fails even with every candidate node float; ``report`` says what it measured."""

    def __init__(self, message: str, report: GuardReport) -> None:
        super().__init__(message)
        self.report = report


def _raise_if_failed(report: GuardReport, precision: str) -> None:
    if not report.passed:
        raise GuardFailed(f"{precision} guard: fails even with all {report.candidates} candidate nodes kept float "
                          f"({'; '.join(report.final.failures(GuardThresholds(**report.thresholds)))}); the "
                          "model is then nearly fp32: check the guard images, or loosen the thresholds", report)


def _kept_text(policy: dict[str, str], report: GuardReport | None, op_types: dict[str, str]) -> list[str]:
    reasons = list(dict.fromkeys(policy.values()))
    guard = [f"{node} ({op_types.get(node, '?')}): kept float by the guard" for node in (report.kept_names
                                                                                          if report else [])]
    return reasons + guard


def _float_nodes(policy: dict[str, str], report: GuardReport | None) -> dict[str, list[str]]:
    return {"policy": sorted(policy), "guard": report.kept_names if report else []}


def _guard_summary(report: GuardReport | None) -> dict[str, Any] | None:
    if report is None:
        return None
    final = report.final
    return {"passed": report.passed, "data": report.data, "images": report.n_images,
            "thresholds": report.thresholds, "kept_float_nodes": report.kept_names,
            "top1_agreement": final.top1_agreement, "keypoint_agreement": final.keypoint_agreement,
            "accuracy_drop_points": final.accuracy_drop}
