"""FP32 ONNX -> static INT8 ONNX (QDQ) with ONNX Runtime's quantization tools, calibrated on images.

Format: QDQ (QuantizeLinear/DequantizeLinear pairs around the quantized ops), per-channel weights. The scheme
(activation and weight types) follows the CPU (``choose_scheme``, recorded in the metadata with the CPU flags;
``--int8-scheme`` overrides):

- VNNI or AMX (``avx512_vnni``, ``avx_vnni``, ``amx_int8``): U8S8, ONNX Runtime's default; the dot products
  accumulate in 32 bits.
- AVX2 without them: U8S8 with ``reduce_range`` (7-bit weights). ONNX Runtime runs U8S8 there with
  ``vpmaddubsw``, whose 16-bit pair sums saturate (its quantization docs suggest reduce_range or U8U8). Issue
  24's author measured on an AVX2-only machine (trained demo model, 200 held-out images, every candidate INT8; not
  a file in bench/results): U8S8 93.0 % top-1 agreement with fp32 at 1.38x fp32 speed, U8S8 + reduce_range 97.5 %
  at 1.66x, U8U8 95.0 % at 0.98x, S8S8 96.0 % at 0.68x.
- TensorRT (``--int8-target tensorrt``): S8S8 with symmetric activations, what its explicit quantization takes.

Kept float by the shared policy (``fgdeploy.export.precision.graph.float_policy``, the parts the fixed fp16
policy keeps fp32): the input normalisation; the keypoint heatmap head, decode and scores; the CoordinateTransfer
node; the head/body crops (GridSample); the poolings, normalisations and the classifier. Every conv outside
them is quantized: the trunks' and the head/body part nets' (a part net reads a crop, which starts afresh). The
guard (``fgdeploy.export.precision.guard``) may keep some of them float. Calibration runs once per export (ORT's
calibration cache); each guard build only changes which nodes are excluded.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fgdeploy.errors import ConfigError, ExportError
from fgdeploy.export.precision.graph import CONV_OPS, CROP_OPS, MATMUL_OPS, downstream, float_policy
from fgdeploy.export.precision.images import ImageSet, calibration_reader
from fgdeploy.tensors import INPUT_IMAGES

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

# Quantized nodes the guard may keep float (the compute; the ops between them follow their inputs).
GUARD_CANDIDATE_OPS = CONV_OPS
QUANT_TYPES = {"uint8": "QUInt8", "int8": "QInt8"}
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}

# Activation / weight types of each scheme (ONNX Runtime's quantization docs name them U8S8, U8U8, S8S8).
SCHEMES: dict[str, dict[str, object]] = {
    "u8s8": {"activation_type": "uint8", "weight_type": "int8", "reduce_range": False},
    "u8s8-reduce-range": {"activation_type": "uint8", "weight_type": "int8", "reduce_range": True},
    "u8u8": {"activation_type": "uint8", "weight_type": "uint8", "reduce_range": False},
    "s8s8": {"activation_type": "int8", "weight_type": "int8", "reduce_range": False, "symmetric_activations": True},
}
INT8_TARGETS = ("cpu", "tensorrt")
CALIBRATION_PIXELS = 160 * 160   # per image of a calibration call at the full ``Int8Settings.batch``
# MinMax ranges merge exactly: reduce the tensors of every call before the next (ORT's strided calibration)
# instead of keeping all calls' tensors until the end
MEMORY_BOUND: dict[str, dict[str, object]] = {"minmax": {"CalibStridedMinMax": 1}}


def choose_scheme(cpu: dict[str, Any]) -> tuple[str, str]:
    """(scheme, why) for a CPU (``fgdeploy.cpu.cpu_features``): see the module docstring."""
    from fgdeploy.cpu import VNNI_FLAGS

    flags = set(cpu.get("flags") or [])
    vnni = sorted(flags & set(VNNI_FLAGS))
    if vnni:
        return "u8s8", f"{'/'.join(vnni)}: U8S8 runs on VNNI dot products, no saturation"
    if "avx2" in flags:
        return "u8s8-reduce-range", ("AVX2 without VNNI/AMX: U8S8 runs on vpmaddubsw, whose 16-bit sums can saturate; "
                                     "7-bit weights (reduce_range) cannot")
    return "u8s8", f"no AVX2 flags seen ({cpu.get('machine') or 'unknown machine'}): ONNX Runtime's default U8S8"


@dataclass(frozen=True)
class Int8Settings:
    """How ONNX Runtime quantizes (see the module docstring for why these defaults).

    ``scheme`` "auto" is resolved when the settings are made: s8s8 for target tensorrt, else by this
    machine's CPU flags (``choose_scheme``); the resolved scheme, why, and the flags are recorded.
    """

    target: str = "cpu"                 # what the settings are for: "cpu" or "tensorrt" (INT8_TARGETS)
    scheme: str = "auto"                # "auto" or a key of SCHEMES
    per_channel: bool = True            # one scale per output channel of each conv's weights
    calibrate_method: str = "minmax"    # "minmax", "entropy" or "percentile"
    batch: int = 8                      # calibration images per ONNX Runtime call
    chosen_by: str = field(default="", compare=False)   # filled in: "cpu flags", "target tensorrt", "given"
    reason: str = field(default="", compare=False)
    cpu: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        from fgdeploy.cpu import cpu_features

        if self.target not in INT8_TARGETS:
            raise ConfigError(f"int8 target {self.target!r}: use one of {list(INT8_TARGETS)}")
        if self.calibrate_method not in CALIBRATION_METHODS:
            raise ConfigError(f"int8 calibrate_method {self.calibrate_method!r}: use one of "
                              f"{sorted(CALIBRATION_METHODS)}")
        if self.scheme != "auto" and self.scheme not in SCHEMES:
            raise ConfigError(f"--int8-scheme {self.scheme}: use auto or one of {', '.join(SCHEMES)}")
        if self.target == "tensorrt" and self.scheme not in ("auto", "s8s8"):
            raise ConfigError(f"--int8-scheme {self.scheme}: TensorRT takes only signed symmetric int8 (s8s8)")
        cpu = self.cpu or cpu_features()
        if self.scheme == "auto":
            if self.target == "tensorrt":
                scheme, chosen_by = "s8s8", "target tensorrt"
                reason = "TensorRT's explicit quantization: signed symmetric int8"
            else:
                (scheme, reason), chosen_by = choose_scheme(cpu), "cpu flags"
        else:
            scheme, chosen_by, reason = self.scheme, self.chosen_by or "given", self.reason or "--int8-scheme"
        for name, value in (("scheme", scheme), ("chosen_by", chosen_by), ("reason", reason), ("cpu", cpu)):
            object.__setattr__(self, name, value)

    @property
    def activation_type(self) -> str:
        return str(SCHEMES[self.scheme]["activation_type"])

    @property
    def weight_type(self) -> str:
        return str(SCHEMES[self.scheme]["weight_type"])

    @property
    def reduce_range(self) -> bool:
        """7-bit weights (what avoids vpmaddubsw saturation on AVX2 without VNNI)."""
        return bool(SCHEMES[self.scheme]["reduce_range"])

    @property
    def symmetric_activations(self) -> bool:
        """Zero point 0 (TensorRT takes only symmetric signed INT8)."""
        return bool(SCHEMES[self.scheme].get("symmetric_activations", False))

    def describe(self) -> dict[str, object]:
        """JSON-ready summary for the metadata."""
        return {"format": "QDQ", "target": self.target, "scheme": self.scheme, "scheme_chosen_by": self.chosen_by,
                "scheme_reason": self.reason, "cpu": self.cpu, "activations": self.activation_type,
                "weights": self.weight_type, "symmetric_activations": self.symmetric_activations,
                "per_channel": self.per_channel, "reduce_range": self.reduce_range,
                "calibration_method": self.calibrate_method}

    @classmethod
    def for_target(cls, target: str, scheme: str = "auto") -> Int8Settings:
        """Settings for where the model runs: "cpu" (ONNX Runtime; the scheme from the CPU flags unless given) or
        "tensorrt" (signed symmetric activations and weights: what TensorRT's explicit quantization takes)."""
        return cls(target=target, scheme=scheme)


class Int8Builder:
    """Quantizes one fp32 model; ``builder(float_nodes)`` returns the INT8 ONNX bytes with the policy's
    nodes and ``float_nodes`` kept float. Calibration runs on the first call and is cached.

    Args:
        fp32: the exported fp32 model (with its CoordinateTransfer function).
        images: calibration images (``fgdeploy.export.precision.images.load_image_set``).
        settings: quantization settings.
        workdir: folder for the fp32 copy, the calibration cache and the builds.
    """

    def __init__(self, fp32: onnx.ModelProto, images: ImageSet, settings: Int8Settings, workdir: Path) -> None:
        import onnx

        self.images, self.settings, self.workdir = images, settings, Path(workdir)
        self.fp32_path = self.workdir / "fp32.onnx"
        onnx.save(fp32, str(self.fp32_path))
        self.cache_path = self.workdir / "calibration.json"
        self.policy = float_policy(fp32)
        # the op types outside the policy: calibrating only their tensors leaves out the float parts' (e.g. the
        # -inf fill of the box computation, which percentile/entropy calibration refuses)
        self.op_types_to_quantize = sorted({n.op_type for n in fp32.graph.node if n.name not in self.policy})
        self.op_types = {n.name: n.op_type for n in fp32.graph.node}
        self.candidates = [n.name for n in fp32.graph.node
                           if n.op_type in GUARD_CANDIDATE_OPS and n.name not in self.policy]
        # ORT's calibrator keeps every tensor of the images it is fed until it computes the ranges; the paper
        # part-net model (four VGG-16s at 448-500 px) was killed at 23 GB with 8 images per call: at most
        # 8 x 160 x 160 pixels per call, and (MinMax) ranges reduced after every call
        side = int(images.images.shape[1]) if len(images) else 1
        self.calibration_batch = max(1, min(settings.batch, settings.batch * CALIBRATION_PIXELS // (side * side)))
        if not self.candidates:
            raise ExportError("int8: the model has no conv outside the float-kept parts to quantize")
        self.builds = 0

    def __call__(self, float_nodes: frozenset[str]) -> bytes:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        s = self.settings
        out = self.workdir / f"int8_{self.builds}.onnx"
        self.builds += 1
        unknown = sorted(set(float_nodes) - set(self.op_types))
        if unknown:
            raise ExportError(f"int8: no node(s) {unknown[:5]} in the model")
        with _quiet_quantizer():
            try:
                quantize_static(
                    str(self.fp32_path), str(out),
                    calibration_reader(self.images, INPUT_IMAGES, self.calibration_batch),
                    quant_format=QuantFormat.QDQ, per_channel=s.per_channel, reduce_range=s.reduce_range,
                    activation_type=getattr(QuantType, QUANT_TYPES[s.activation_type]),
                    weight_type=getattr(QuantType, QUANT_TYPES[s.weight_type]),
                    nodes_to_exclude=sorted(set(self.policy) | set(float_nodes)),
                    op_types_to_quantize=self.op_types_to_quantize,
                    calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[s.calibrate_method]),
                    calibration_cache_path=str(self.cache_path),
                    extra_options={"ActivationSymmetric": s.symmetric_activations, "WeightSymmetric": True,
                                   **MEMORY_BOUND.get(s.calibrate_method, {})})
            except Exception as exc:  # the quantizer raises plain exceptions of many types
                raise ExportError(f"int8: ONNX Runtime's quantize_static failed: "
                                  f"{str(exc).strip().splitlines()[0][:400] or type(exc).__name__}") from exc
        data = out.read_bytes()
        out.unlink()
        return data


def quantized_nodes(model: onnx.ModelProto) -> dict[str, int]:
    """Counts of QuantizeLinear/DequantizeLinear nodes, of convs/matmuls with int8 or float weights, and of the
    part nets' convs (those reading a head/body crop, directly or not) with int8 or float weights."""
    from collections import Counter

    graph = model.graph
    producers = {out: n.op_type for n in graph.node for out in n.output}
    part_nets = set(downstream(graph, [n for n in graph.node if n.op_type in CROP_OPS]))
    counts: Counter[str] = Counter()
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            counts[node.op_type] += 1
        elif node.op_type in GUARD_CANDIDATE_OPS | MATMUL_OPS:
            quantized = len(node.input) > 1 and producers.get(node.input[1]) == "DequantizeLinear"  # int8 weights
            kind = "int8" if quantized else "float"
            counts[f"{node.op_type} {kind}"] += 1
            if node.op_type in CONV_OPS and node.name in part_nets:
                counts[f"part-net Conv {kind}"] += 1
    return dict(sorted(counts.items()))


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Drop ONNX Runtime's root-logger advice to run its pre-processing (symbolic shape inference would
    meet the custom CoordinateTransfer node; the exporter's graph is already shape-inferred and optimised), and
    numpy's warning about the scale of a tensor no quantized node reads."""
    class Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "pre-processing" not in record.getMessage()

    root = logging.getLogger()
    drop = Drop()
    root.addFilter(drop)
    for handler in root.handlers:
        handler.addFilter(drop)
    try:
        with warnings.catch_warnings():
            # ORT computes scales for every calibrated tensor, also those of excluded nodes; the -inf fill of the
            # part nets' box computation then gives numpy's "invalid value encountered in divide" (never used)
            warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
            yield
    finally:
        root.removeFilter(drop)
        for handler in root.handlers:
            handler.removeFilter(drop)


def workdir() -> tempfile.TemporaryDirectory[str]:
    """A temporary folder for a quantization run (removed when closed)."""
    return tempfile.TemporaryDirectory(prefix="fgdeploy-int8-")
