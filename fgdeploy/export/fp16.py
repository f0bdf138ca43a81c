"""FP32 -> mixed FP16 ONNX: the precision lives in the graph (TensorRT 11 builds strongly typed only).

Policy (what runs in fp16 and what is kept in fp32):

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
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fgdeploy.tensors import OP_DOMAIN, OP_NAME

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

FP16_COMPUTE_OPS = frozenset({"Conv", "ConvTranspose"})
# Ops that may run in fp16 when all their activation (non-constant) float inputs are fp16.
FP16_FOLLOW_OPS = frozenset({
    "Relu", "LeakyRelu", "MaxPool", "AveragePool", "Add", "Sub", "Mul", "Concat", "Reshape", "Flatten",
    "Transpose", "Identity", "Resize", "Slice", "Squeeze", "Unsqueeze", "Split", "Pad", "Expand", "Clip",
    "Dropout", "BatchNormalization",
})
# Float inputs that must keep their own type (not the op's T): {op: input indices to convert}.
TYPED_INPUTS: dict[str, tuple[int, ...]] = {"Resize": (0,), "Pad": (0, 2), "Reshape": (0,), "Expand": (0,),
                                            "Slice": (0,), "Squeeze": (0,), "Unsqueeze": (0,), "Split": (0,)}
# Ops that accept any input type unchanged (no cast needed on their inputs).
TYPE_AGNOSTIC_OPS = frozenset({"Shape", "Size", "Cast", "CastLike"})

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
    orig_types = _elem_types(new)
    inits = {i.name: i for i in graph.initializer}
    consts = {n.output[0] for n in graph.node if n.op_type == "Constant"} | set(inits)
    keep_fp32 = _heatmap_head(graph, orig_types)
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
            convert = TYPED_INPUTS.get(node.op_type, tuple(floats))
            for i in floats:
                if i in convert and cur.get(node.input[i]) != target:
                    node.input[i] = cast(node.input[i], target)
        (fp16_counts if target == TensorProto.FLOAT16 else fp32_counts)[_label(node)] += 1
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


def _heatmap_head(graph: onnx.GraphProto, types: dict[str, int]) -> set[str]:
    """Names of the nodes between the trunk features and the heatmaps: walk back from every
    CoordinateTransfer heatmaps input and every ArgMax input along float data inputs (never into
    shape computations), stopping after the first conv met on each path (the score convs)."""
    from onnx import TensorProto

    producer = {out: n for n in graph.node for out in n.output}
    starts = [n.input[0] for n in graph.node if (n.op_type == OP_NAME and n.domain == OP_DOMAIN)
              or n.op_type == "ArgMax"]
    head: set[str] = set()
    stack = list(starts)
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen or name not in producer:
            continue
        seen.add(name)
        node = producer[name]
        head.add(node.name)
        if node.op_type in FP16_COMPUTE_OPS or node.op_type in TYPE_AGNOSTIC_OPS:
            continue  # a score conv (its input is trunk features), or a cast from elsewhere
        data = TYPED_INPUTS.get(node.op_type, tuple(range(len(node.input))))
        stack.extend(node.input[i] for i in data
                     if i < len(node.input) and node.input[i] and types.get(node.input[i]) == TensorProto.FLOAT)
    return head


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {i.name: i.data_type for i in g.initializer}
    for info in list(g.input) + list(g.output) + list(g.value_info):
        if info.type.HasField("tensor_type"):
            types[info.name] = info.type.tensor_type.elem_type
    for node in g.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def _label(node: onnx.NodeProto) -> str:
    return f"{node.domain}::{node.op_type}" if node.domain else node.op_type
