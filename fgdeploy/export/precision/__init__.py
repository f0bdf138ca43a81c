"""The precision of an export: fp32, fp16 (fixed policy or task-driven) or INT8. One entry point,
``reduce_precision``, takes the fp32 graph the exporter traced and ``PrecisionOptions``; it is the only place
where the precision is chosen.

Modules:

- ``graph``: graph analysis the policies share (tensor types, heatmap head, input normalisation, downstream);
- ``fp16``: the fixed fp16 policy (``--fp16``) and the task-driven builder (``--fp16 --guard``,
  onnxconverter-common);
- ``int8``: static INT8, QDQ, with ONNX Runtime's quantizer (``--int8``);
- ``guard``: scores reduced builds with parity's task metrics and keeps float the nodes they need;
- ``images``: the calibration and guard images, decoded like ``fgdeploy infer``.

A reduced model carries what the exporter records: precision, the float-kept parts, the calibration set and
the guard's verdict (``PrecisionResult``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fgdeploy.errors import ConfigError, ExportError
from fgdeploy.export.precision.guard import GuardReport, GuardThresholds
from fgdeploy.export.precision.images import DEFAULT_CALIBRATION_IMAGES, MIN_CALIBRATION_IMAGES, ImageSet
from fgdeploy.export.precision.int8 import Int8Settings

if TYPE_CHECKING:
    import onnx

    from fgdeploy.parity.report import Tolerance

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
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


@dataclass(frozen=True)
class PrecisionOptions:
    """Which precision an export has and what decides it.

    Args:
        name: "fp32", "fp16" or "int8".
        calibration: INT8 calibration images (required for int8, refused otherwise).
        guard: the task-metric guard; int8: None skips it; fp16: None is the fixed policy, a guard makes it
            task-driven.
    """

    name: str = "fp32"
    calibration: CalibrationOptions | None = None
    guard: GuardOptions | None = None

    def __post_init__(self) -> None:
        if self.name not in PRECISIONS:
            raise ConfigError(f"precision {self.name!r}: use one of {', '.join(PRECISIONS)}")
        if self.name == "int8" and self.calibration is None:
            raise ConfigError("--int8 needs calibration images: add --calib DIR (a CUB-format dataset or a folder)")
        if self.calibration is not None and self.name != "int8":
            raise ConfigError("--calib is for --int8 exports")
        if self.guard is not None and self.name == "fp32":
            raise ConfigError("--guard checks a reduced precision: use it with --int8 or --fp16")

    @property
    def reduced(self) -> bool:
        """Whether the fp32 graph is converted at all."""
        return self.name != "fp32"


@dataclass
class PrecisionResult:
    """A reduced-precision model and what to record about it."""

    model: onnx.ModelProto
    precision: str                      # "int8" or "fp16"
    kept: list[str]                     # the metadata's fp32_kept: float parts, with why
    metadata: dict[str, Any]            # extra metadata_props values
    report: GuardReport | None = None
    summary: dict[str, Any] = field(default_factory=dict)   # node counts (and the calibration set) to print


class GuardFailed(ExportError):
    """The guard fails even with every candidate node float; ``report`` says what it measured."""

    def __init__(self, message: str, report: GuardReport) -> None:
        super().__init__(message)
        self.report = report


def load_calibration(options: PrecisionOptions, size: int) -> ImageSet | None:
    """Decode the INT8 calibration images (a CUB-format dataset's train split, or a folder); None for other
    precisions. Callers load them before the slow trace, so bad images fail early.

    Raises:
        ImageError: none, fewer than ``MIN_CALIBRATION_IMAGES``, or an unreadable file (named).
    """
    from fgdeploy.export.precision.images import load_image_set

    if options.calibration is None:
        return None
    return load_image_set(options.calibration.source, size, options.calibration.images, "train",
                          minimum=MIN_CALIBRATION_IMAGES, what="calibration")


def reduce_precision(fp32: onnx.ModelProto, size: int, options: PrecisionOptions,
                     calibration: ImageSet | None = None,
                     progress: Callable[[str], None] | None = None) -> PrecisionResult | None:
    """The model at ``options.name``, from the exporter's fp32 graph; None for fp32 (nothing to do).

    Args:
        fp32: the fp32 model (with its CoordinateTransfer function and metadata).
        size: model input side S.
        options: the precision and what decides it.
        calibration: the decoded calibration images (``load_calibration``; loaded here when None).
        progress: one line per guard evaluation (default: the log).

    Raises:
        ImageError: bad calibration or guard images.
        GuardFailed: the guard fails with every candidate node float (its report attached).
        ExportError: the conversion failed.
    """
    if options.name == "int8":
        assert options.calibration is not None   # PrecisionOptions checks it
        images = calibration if calibration is not None else load_calibration(options, size)
        assert images is not None
        return _int8(fp32, size, images, options.calibration, options.guard, progress)
    if options.name == "fp16":
        return _fp16_fixed(fp32) if options.guard is None else _fp16_guarded(fp32, size, options.guard, progress)
    return None


def _int8(fp32: onnx.ModelProto, size: int, images: ImageSet, calibration: CalibrationOptions,
          guard: GuardOptions | None, progress: Callable[[str], None] | None) -> PrecisionResult:
    """Calibrate on ``images``, quantize and (with held-out images) guard; see ``fgdeploy.export.precision.int8``."""
    import onnx

    from fgdeploy.export.precision.guard import Guard, guarded_search
    from fgdeploy.export.precision.images import guard_source
    from fgdeploy.export.precision.int8 import Int8Builder, quantized_nodes, workdir
    with workdir() as tmp:
        builder = Int8Builder(fp32, images, calibration.settings, Path(tmp))
        source = None if guard is None else guard_source(guard.source, calibration.source, size, guard.images)
        report = None
        if source is None:
            if guard is not None:
                logger.warning("int8: no held-out images for the guard (the calibration source is not a CUB-format "
                               "dataset); pass --guard DIR to check the task metrics")
            data = builder(frozenset())
        else:
            assert guard is not None
            thresholds, tolerance = parity_profile(guard.thresholds, "int8")
            check = Guard(fp32.SerializeToString(), source, thresholds, tolerance, threads=guard.threads)
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
                           summary={"nodes": quantized_nodes(model), "calibration": images.description,
                                    "scheme": calibration.settings.scheme,
                                    "scheme_reason": f"{calibration.settings.chosen_by}: {calibration.settings.reason}"})


def _fp16_fixed(fp32: onnx.ModelProto) -> PrecisionResult:
    """The fixed fp16 policy (``fgdeploy.export.precision.fp16.convert_to_mixed_fp16``)."""
    from fgdeploy.export.precision.fp16 import convert_to_mixed_fp16

    model, fp16 = convert_to_mixed_fp16(fp32)
    return PrecisionResult(model, "fp16", list(fp16.kept_fp32), {},
                           summary={"fp16_nodes": fp16.fp16_nodes, "fp32_nodes": fp16.fp32_nodes,
                                    "casts": fp16.casts_inserted})


def _fp16_guarded(fp32: onnx.ModelProto, size: int, guard: GuardOptions,
                  progress: Callable[[str], None] | None) -> PrecisionResult:
    """Task-driven fp16 (``fgdeploy.export.precision.fp16.Fp16Builder``): all fp16, then the guard keeps what it
    needs fp32."""
    import onnx

    from fgdeploy.export.precision.fp16 import CONVERTER_REASON, Fp16Builder, fp32_node_names
    from fgdeploy.export.precision.guard import Guard, guarded_search
    from fgdeploy.export.precision.images import guard_source

    source = guard_source(guard.source, None, size, guard.images)
    if source is None:
        raise ConfigError("--fp16 --guard needs held-out images: give --guard a CUB-format dataset or a folder")
    builder = Fp16Builder(fp32)
    thresholds, tolerance = parity_profile(guard.thresholds, "fp16")
    check = Guard(fp32.SerializeToString(), source, thresholds, tolerance, threads=guard.threads)
    data, report = guarded_search(builder, builder.candidates, check, precision="fp16", op_types=builder.op_types,
                                  policy_float=builder.policy, progress=progress)
    _raise_if_failed(report, "fp16")
    model = onnx.load_from_string(data)    # the build with exactly the kept nodes float
    fp32_nodes = fp32_node_names(model)
    kept = _kept_text(builder.policy, report, builder.op_types)
    kept.append(CONVERTER_REASON)
    metadata = {"float_kept_nodes": _float_nodes(builder.policy, report), "precision_guard": _guard_summary(report),
                "fp16_policy": "task-driven (onnxconverter-common, guard block list)"}
    counts = Counter(builder.op_types[n] for n in fp32_nodes)
    return PrecisionResult(model, "fp16", kept, metadata, report,
                           summary={"fp32_compute_nodes": dict(sorted(counts.items()))})


def parity_profile(thresholds: GuardThresholds, precision: str) -> tuple[GuardThresholds, Tolerance]:
    """The guard's thresholds with parity's element check for ``precision``, and parity's tolerance (it also tells
    keypoint near-ties): what parity will check, the guard checks first, with a margin. Parity lets a fraction
    1 - min_fraction of the images have an output outside the tolerance (10 % for int8); the guard lets half as
    many, so that parity on other images of the same kind is likely to pass too: the guard decides on a sample."""
    from fgdeploy.parity.report import default_thresholds

    parity = default_thresholds(precision)
    within = 1.0 - (1.0 - parity.tolerance.min_fraction) / 2
    return dataclasses.replace(thresholds, min_outputs_within=max(thresholds.min_outputs_within, within),
                               logits_on_settled_images=parity.logits_on_settled_images), parity.tolerance


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
            "accuracy_drop_points": final.accuracy_drop, "source": report.source, "image_ids": report.image_ids,
            "image_digests": report.image_digests}
