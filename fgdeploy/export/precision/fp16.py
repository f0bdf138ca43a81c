"""FP32 -> FP16 ONNX: the precision lives in the graph (TensorRT 11 builds strongly typed only).

Two conversions:

- ``convert_to_mixed_fp16`` (``export --fp16``): a fixed policy.
- ``Fp16Builder`` (``export --fp16 --guard``): task-driven. onnxconverter-common's
  ``convert_float_to_float16`` (graph input and outputs stay float32, ``keep_io_types``; its default op block
  list keeps ops without fp16 kernels, e.g. Resize, in fp32) with a node block list: the nodes the guard
  (``fgdeploy.export.precision.guard``) keeps fp32. The exporter's graph casts the keypoint cell indices
  (int64) to float with Cast(to=FLOAT) nodes; onnxconverter-common 1.15-1.16 retypes such a Cast's output to
  float16 without changing its ``to`` attribute, and ONNX Runtime then refuses the model ("Type
  (tensor(float16)) of output arg ... does not match expected type (tensor(float))"; onnxconverter-common
  issue #320, fix proposed in PR #326). Those Casts are therefore on the block list always: they move
  integers, not activations, so no fp16 compute is lost.

The fixed policy (what runs in fp16 and what is kept in fp32):

- fp16: every Conv/ConvTranspose of the backbones (weights stored as fp16), and the ops that only move
  or combine their results (Relu, MaxPool, Add, Resize, Concat, ...) while all their activation inputs
  are fp16. That is nearly all of the FLOPs.
- fp32: the keypoint heatmap head (the convs whose outputs reach the heatmaps without another conv in
  between, their upsampling and fusion), so the heatmap logits that ArgMax reads keep fp32 accumulation
  and are not rounded to fp16 (rounding creates ties that move keypoints); everything downstream of the
  heatmaps: keypoint decode (ArgMax, cell centres), scores (Sigmoid); the CoordinateTransfer node, which
  receives the fp32 heatmaps and the trunk features cast to fp32, so it pools at exactly the cell the
  keypoints output reports; reductions (ReduceMean holistic pooling, ReduceL2 normalisation) and the
  classifier (Gemm/MatMul, logits); the input normalisation. Any op not known to be safe stays fp32.
- graph input and outputs stay float32; Cast nodes sit at every fp32/fp16 boundary.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fgdeploy.errors import ExportError
from fgdeploy.export.precision.graph import (
    CONV_OPS, DATA_INPUTS, TYPE_AGNOSTIC_OPS, elem_types, heatmap_head, op_label,
)
from fgdeploy.tensors import OP_DOMAIN, OP_NAME

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

FP16_COMPUTE_OPS = CONV_OPS
# Ops that may run in fp16 when all their activation (non-constant) float inputs are fp16.
FP16_FOLLOW_OPS = frozenset({
    "Relu", "LeakyRelu", "MaxPool", "AveragePool", "Add", "Sub", "Mul", "Concat", "Reshape", "Flatten",
    "Transpose", "Identity", "Resize", "Slice", "Squeeze", "Unsqueeze", "Split", "Pad", "Expand", "Clip",
    "Dropout", "BatchNormalization",
})
# Float inputs converted with the op's T (the others, e.g. Resize scales, keep their own type): DATA_INPUTS.
# Ops that accept any input type unchanged (no cast needed on their inputs): TYPE_AGNOSTIC_OPS.

KEPT_FP32 = (
    "input normalisation (graph input stays float32)",
    "keypoint heatmap head: score convs, upsampling and fusion (heatmap logits before ArgMax)",
    "keypoint decode (ArgMax, cell centres) and keypoint_scores (Sigmoid)",
    "CoordinateTransfer: fp32 heatmaps, trunk features cast to fp32",
    "reductions (holistic ReduceMean, ReduceL2 normalisation) and the classifier Gemm (logits)",
    "all outputs are float32",
)


@dataclass
class Fp16Summary:
    """What the conversion did: node counts by precision and op type, casts inserted, kept-in-fp32 notes."""

    fp16_nodes: dict[str, int] = field(default_factory=dict)
    fp32_nodes: dict[str, int] = field(default_factory=dict)
    casts_inserted: int = 0
    kept_fp32: list[str] = field(default_factory=lambda: list(KEPT_FP32))


def convert_to_mixed_fp16(model: onnx.ModelProto) -> tuple[onnx.ModelProto, Fp16Summary]:
    """Return an fp16 copy of an fp32 ``model`` following the module's policy.

    The model must be topologically sorted (as the exporter writes it). Model-local functions are left
    as they are: their bodies are type-generic (the CoordinateTransfer function accepts float and float16).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    new = onnx.ModelProto()
    new.CopyFrom(model)
    graph = new.graph
    orig_types = elem_types(new)
    inits = {i.name: i for i in graph.initializer}
    consts = {n.output[0] for n in graph.node if n.op_type == "Constant"} | set(inits)
    keep_fp32 = heatmap_head(graph, orig_types)
    cur: dict[str, int] = {name: t for name, t in orig_types.items()}
    summary = Fp16Summary()
    fp16_counts: Counter[str] = Counter()
    fp32_counts: Counter[str] = Counter()
    cast_cache: dict[tuple[str, int], str] = {}
    fp16_inits: dict[str, str] = {}
    nodes: list[onnx.NodeProto] = []

    def cast(name: str, to: int) -> str:
        if name in inits and to == TensorProto.FLOAT16:
            if name not in fp16_inits:
                arr = numpy_helper.to_array(inits[name]).astype("float16")
                graph.initializer.append(numpy_helper.from_array(arr, f"{name}__fp16"))
                fp16_inits[name] = f"{name}__fp16"
                cur[f"{name}__fp16"] = TensorProto.FLOAT16
            return fp16_inits[name]
        key = (name, to)
        if key not in cast_cache:
            out = f"{name}__to_{'fp16' if to == TensorProto.FLOAT16 else 'fp32'}"
            nodes.append(helper.make_node("Cast", [name], [out], to=to, name=f"{out}__cast"))
            cur[out] = to
            cast_cache[key] = out
            summary.casts_inserted += 1
        return cast_cache[key]

    for node in graph.node:
        floats = [i for i, name in enumerate(node.input) if name and orig_types.get(name) == TensorProto.FLOAT]
        target = _node_precision(node, floats, cur, consts, keep_fp32)
        if target is not None and node.op_type not in TYPE_AGNOSTIC_OPS:
            convert = DATA_INPUTS.get(node.op_type, tuple(floats))
            for i in floats:
                if i in convert and cur.get(node.input[i]) != target:
                    node.input[i] = cast(node.input[i], target)
        (fp16_counts if target == TensorProto.FLOAT16 else fp32_counts)[op_label(node)] += 1
        for out in node.output:
            if orig_types.get(out) == TensorProto.FLOAT:
                cur[out] = target if target is not None and node.op_type != "Cast" else TensorProto.FLOAT
        nodes.append(node)

    outputs = {o.name for o in graph.output}
    renamed = {}
    for name in outputs:
        if cur.get(name) == TensorProto.FLOAT16:  # outputs stay float32
            renamed[name] = f"{name}__fp16"
    for node in nodes:
        node.input[:] = [renamed.get(n, n) for n in node.input]
        node.output[:] = [renamed.get(n, n) for n in node.output]
    for name, src in renamed.items():
        nodes.append(helper.make_node("Cast", [src], [name], to=TensorProto.FLOAT, name=f"{name}__output_cast"))
        summary.casts_inserted += 1
    used = {n for node in nodes for n in node.input}
    kept_inits = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    del graph.node[:]
    graph.node.extend(nodes)
    _retype_value_info(graph, cur, renamed)
    summary.fp16_nodes = dict(sorted(fp16_counts.items()))
    summary.fp32_nodes = dict(sorted(fp32_counts.items()))
    logger.info("fp16: %d nodes fp16, %d fp32/other, %d casts", sum(fp16_counts.values()),
                sum(fp32_counts.values()), summary.casts_inserted)
    return new, summary


def _retype_value_info(graph: onnx.GraphProto, cur: dict[str, int], renamed: dict[str, str]) -> None:
    """Keep the exporter's value_info (shapes; the custom node's output type comes only from there),
    with element types updated to the new precision; add entries for the renamed fp16 outputs."""
    from onnx import TensorProto

    outputs = {o.name: o for o in graph.output}
    for info in graph.value_info:
        if info.name in cur and info.type.HasField("tensor_type"):
            info.type.tensor_type.elem_type = cur[info.name]
    for name, src in renamed.items():
        info = graph.value_info.add()
        info.CopyFrom(outputs[name])
        info.name = src
        info.type.tensor_type.elem_type = TensorProto.FLOAT16


def _node_precision(node: onnx.NodeProto, floats: list[int], cur: dict[str, int], consts: set[str],
                    keep_fp32: set[str]) -> int | None:
    """FLOAT16 / FLOAT for a node with float inputs, None for nodes without float inputs."""
    from onnx import TensorProto

    if not floats:
        return None
    if node.op_type in FP16_COMPUTE_OPS:
        return TensorProto.FLOAT if node.name in keep_fp32 else TensorProto.FLOAT16
    if node.op_type in FP16_FOLLOW_OPS and node.name not in keep_fp32:
        acts = [node.input[i] for i in floats if node.input[i] not in consts]
        if acts and all(cur.get(a) == TensorProto.FLOAT16 for a in acts):
            return TensorProto.FLOAT16
    return TensorProto.FLOAT


# --- task-driven fp16 (``--fp16 --guard``) ----------------------------------------------------------
# Nodes the guard may keep fp32: the ones that compute on activations (not shape plumbing or casts).
TASK_GUARD_CANDIDATE_OPS = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "ArgMax", "ReduceMax", "ReduceMean",
    "ReduceL2", "Sigmoid", "Softmax", "Clip", OP_NAME,
})
ALWAYS_FP32_REASON = "Cast(to=float) of integer keypoint cells (onnxconverter-common issue #320)"


class Fp16Builder:
    """``builder(float_nodes)`` returns the fp16 ONNX bytes with ``float_nodes`` (and the float Casts) fp32.

    Args:
        fp32: the exported fp32 model (with its CoordinateTransfer function).
    """

    def __init__(self, fp32: onnx.ModelProto) -> None:
        from onnx import TensorProto
        from onnxconverter_common.float16 import DEFAULT_OP_BLOCK_LIST

        self.fp32 = fp32
        self.op_types = {n.name: n.op_type for n in fp32.graph.node}
        self.policy = {n.name: ALWAYS_FP32_REASON for n in fp32.graph.node if n.op_type == "Cast"
                       and any(a.name == "to" and a.i == TensorProto.FLOAT for a in n.attribute)}
        self.op_block_list = sorted(DEFAULT_OP_BLOCK_LIST)
        self.candidates = [n.name for n in fp32.graph.node
                           if (n.op_type in TASK_GUARD_CANDIDATE_OPS and (n.domain in ("", "ai.onnx") or
                                                                      (n.domain == OP_DOMAIN and n.op_type == OP_NAME)))
                           and n.op_type not in DEFAULT_OP_BLOCK_LIST and n.name not in self.policy]

    def convert(self, float_nodes: frozenset[str]) -> onnx.ModelProto:
        """The fp16 model with ``float_nodes`` kept fp32."""
        import onnx
        from onnxconverter_common.float16 import convert_float_to_float16

        unknown = sorted(set(float_nodes) - set(self.op_types))
        if unknown:
            raise ExportError(f"fp16: no node(s) {unknown[:5]} in the model")
        model = onnx.ModelProto()
        model.CopyFrom(self.fp32)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # "the float32 number 1e-12 will be truncated to 1e-07" etc.
                return convert_float_to_float16(model, keep_io_types=True,
                                                node_block_list=sorted(set(self.policy) | set(float_nodes)))
        except Exception as exc:  # the converter raises plain exceptions of many types
            raise ExportError(f"fp16: onnxconverter-common's convert_float_to_float16 failed: "
                              f"{str(exc).strip().splitlines()[0][:400] or type(exc).__name__}") from exc

    def __call__(self, float_nodes: frozenset[str]) -> bytes:
        return self.convert(float_nodes).SerializeToString()


def fp32_node_names(model: onnx.ModelProto) -> list[str]:
    """Nodes of ``model`` that compute in fp32 (a float32 output) among the guard's candidate op types."""
    import onnx
    from onnx import TensorProto

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.output) if v.type.HasField("tensor_type")}
    return [n.name for n in model.graph.node if n.op_type in TASK_GUARD_CANDIDATE_OPS
            and any(types.get(o) == TensorProto.FLOAT for o in n.output)]
