"""FP32 ONNX -> static INT8 ONNX (QDQ) with ONNX Runtime's quantization tools, calibrated on images.

Format: QDQ (QuantizeLinear/DequantizeLinear pairs around the quantized ops), per-channel int8 weights,
uint8 activations (U8S8). On x86 without AVX-512 VNNI, ONNX Runtime runs U8S8 convs with AVX2
``vpmaddubsw``; measured on this project's AVX2 machine, S8S8 and U8U8 graphs ran slower than fp32 while
U8S8 ran faster (bench/results). The 16-bit intermediate of ``vpmaddubsw`` can saturate; the guard would
see the effect on the task metrics. TensorRT takes the same QDQ graph as explicit quantization.

Kept float by policy (the same parts the fp16 policy keeps fp32, for the same reasons):

- the input normalisation (the graph input stays float32);
- the keypoint heatmap head (score convs, upsampling, fusion: the logits ArgMax reads) and the keypoint
  decode, keypoint scores, the CoordinateTransfer node (it pools at exactly the keypoint cell), the
  reductions (holistic pooling, L2 normalisation) and the classifier: everything downstream of them.

The trunk convs are quantized; the guard (``fgdeploy.export.precision.guard``) may keep some of them float.
Calibration runs once per export (ORT's calibration cache); each guard build only changes which nodes
are excluded.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fgdeploy.errors import ConfigError, ExportError
from fgdeploy.export.precision.graph import (
    CONV_OPS, downstream, elem_types, heatmap_head, input_normalisation, is_coordinate_transfer,
)
from fgdeploy.export.precision.images import ImageSet, calibration_reader
from fgdeploy.tensors import INPUT_IMAGES

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

MATMUL_OPS = frozenset({"Gemm", "MatMul"})
# Nodes of these types, and everything downstream of them, stay float (decode, pooling, logits): the
# classifier and the compact bilinear projections (Gemm/MatMul) are float by policy, never guard candidates.
FLOAT_OPS = frozenset({"ArgMax", "ReduceMax", "ReduceMean", "ReduceL2", "Sigmoid", "Softmax"}) | MATMUL_OPS
# Quantized nodes the guard may keep float (the compute; the ops between them follow their inputs).
GUARD_CANDIDATE_OPS = CONV_OPS
QUANT_TYPES = {"uint8": "QUInt8", "int8": "QInt8"}
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}

INT8_TARGETS: dict[str, dict[str, object]] = {
    "cpu": {},
    "tensorrt": {"activation_type": "int8", "symmetric_activations": True},
}

POLICY_REASONS = {
    "input": "input normalisation",
    "head": "keypoint heatmap head (heatmap logits before ArgMax)",
    "op": "CoordinateTransfer",
    "downstream": "keypoint decode, scores, pooling, reductions and classifier (downstream of the heatmaps)",
}


@dataclass(frozen=True)
class Int8Settings:
    """How ONNX Runtime quantizes (see the module docstring for why these defaults)."""

    target: str = "cpu"                 # what the settings are for: "cpu" or "tensorrt" (INT8_TARGETS)
    activation_type: str = "uint8"      # "uint8" (U8S8, fastest on AVX2) or "int8" (S8S8)
    weight_type: str = "int8"
    per_channel: bool = True            # one scale per output channel of each conv's weights
    reduce_range: bool = False          # 7-bit weights (avoids vpmaddubsw saturation; slower here)
    symmetric_activations: bool = False  # zero point 0 (TensorRT takes only symmetric signed INT8)
    calibrate_method: str = "minmax"    # "minmax", "entropy" or "percentile"
    batch: int = 8                      # calibration images per ONNX Runtime call

    def __post_init__(self) -> None:
        for name, value, valid in (("activation_type", self.activation_type, QUANT_TYPES),
                                   ("weight_type", self.weight_type, QUANT_TYPES),
                                   ("calibrate_method", self.calibrate_method, CALIBRATION_METHODS)):
            if value not in valid:
                raise ConfigError(f"int8 {name} {value!r}: use one of {sorted(valid)}")

    def describe(self) -> dict[str, object]:
        """JSON-ready summary for the metadata."""
        return {"format": "QDQ", "target": self.target, "activations": self.activation_type, "weights": self.weight_type,
                "symmetric_activations": self.symmetric_activations, "per_channel": self.per_channel,
                "reduce_range": self.reduce_range, "calibration_method": self.calibrate_method}

    @classmethod
    def for_target(cls, target: str) -> Int8Settings:
        """Settings for where the model runs: "cpu" (ONNX Runtime, U8S8: the fastest measured on AVX2) or
        "tensorrt" (signed symmetric activations and weights: what TensorRT's explicit quantization takes;
        ONNX Runtime runs it too, slower on AVX2)."""
        if target not in INT8_TARGETS:
            raise ConfigError(f"int8 target {target!r}: use one of {list(INT8_TARGETS)}")
        return cls(target=target, **INT8_TARGETS[target])  # type: ignore[arg-type]


def float_policy(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> why it stays float (see the module docstring)."""
    graph = model.graph
    policy = {node: POLICY_REASONS["input"] for node in input_normalisation(graph, MATMUL_OPS | CONV_OPS)}
    head = heatmap_head(graph, elem_types(model))
    seeds = []
    for node in graph.node:
        if node.name in head:
            policy[node.name] = POLICY_REASONS["head"]
            seeds.append(node)
        elif is_coordinate_transfer(node):
            policy[node.name] = POLICY_REASONS["op"]
            seeds.append(node)
        elif node.op_type in FLOAT_OPS:
            seeds.append(node)
    for name in downstream(graph, seeds):
        policy.setdefault(name, POLICY_REASONS["downstream"])
    return policy


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
        self.op_types = {n.name: n.op_type for n in fp32.graph.node}
        self.candidates = [n.name for n in fp32.graph.node
                           if n.op_type in GUARD_CANDIDATE_OPS and n.name not in self.policy]
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
                    calibration_reader(self.images, INPUT_IMAGES, s.batch),
                    quant_format=QuantFormat.QDQ, per_channel=s.per_channel, reduce_range=s.reduce_range,
                    activation_type=getattr(QuantType, QUANT_TYPES[s.activation_type]),
                    weight_type=getattr(QuantType, QUANT_TYPES[s.weight_type]),
                    nodes_to_exclude=sorted(set(self.policy) | set(float_nodes)),
                    calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[s.calibrate_method]),
                    calibration_cache_path=str(self.cache_path),
                    extra_options={"ActivationSymmetric": s.symmetric_activations, "WeightSymmetric": True})
            except Exception as exc:  # the quantizer raises plain exceptions of many types
                raise ExportError(f"int8: ONNX Runtime's quantize_static failed: "
                                  f"{str(exc).strip().splitlines()[0][:400] or type(exc).__name__}") from exc
        data = out.read_bytes()
        out.unlink()
        return data


def quantized_nodes(model: onnx.ModelProto) -> dict[str, int]:
    """Counts of QuantizeLinear/DequantizeLinear nodes, and of convs/matmuls with int8 or float weights."""
    from collections import Counter

    producers = {out: n.op_type for n in model.graph.node for out in n.output}
    counts: Counter[str] = Counter()
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            counts[node.op_type] += 1
        elif node.op_type in GUARD_CANDIDATE_OPS | MATMUL_OPS:
            quantized = len(node.input) > 1 and producers.get(node.input[1]) == "DequantizeLinear"  # int8 weights
            counts[f"{node.op_type} int8" if quantized else f"{node.op_type} float"] += 1
    return dict(sorted(counts.items()))


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Drop ONNX Runtime's root-logger advice to run its pre-processing (symbolic shape inference would
    meet the custom CoordinateTransfer node; the exporter's graph is already shape-inferred and optimised)."""
    class Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "pre-processing" not in record.getMessage()

    root = logging.getLogger()
    drop = Drop()
    root.addFilter(drop)
    for handler in root.handlers:
        handler.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)
        for handler in root.handlers:
            handler.removeFilter(drop)


def workdir() -> tempfile.TemporaryDirectory[str]:
    """A temporary folder for a quantization run (removed when closed)."""
    return tempfile.TemporaryDirectory(prefix="fgdeploy-int8-")
