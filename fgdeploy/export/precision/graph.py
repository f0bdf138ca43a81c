"""Graph analysis shared by the precision policies (fp16, int8) and the debug outputs.

Which tensors are float, who consumes what, which nodes form the keypoint heatmap head (the convs whose
outputs reach the heatmaps without another conv in between, their upsampling and fusion), which nodes
normalise the input, what lies downstream of a set of nodes, and the policy both reduced precisions share:
``float_policy``, the nodes that stay float and why.

- input normalisation (the graph input stays float32);
- the keypoint heatmap head, so the heatmap logits ArgMax reads keep float accumulation (rounding creates ties
  that move keypoints); the keypoint decode and scores; the CoordinateTransfer node, which pools at exactly the
  cell the keypoints output reports;
- the head/body crops (GridSample: their sampling grid comes from the predicted boxes);
- the reductions (holistic and part-net pooling, L2 normalisation) and the classifier (Gemm/MatMul): everything
  downstream of the heatmaps or of a pooling, except through a crop: what a crop samples is a fresh image,
  and the part net that reads it is reduced like the trunks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from fgdeploy.tensors import INPUT_IMAGES, OP_DOMAIN, OP_NAME

if TYPE_CHECKING:
    import onnx

CONV_OPS = frozenset({"Conv", "ConvTranspose"})
MATMUL_OPS = frozenset({"Gemm", "MatMul"})
# Nodes of these types, and everything downstream of them, stay float (decode, pooling, logits): the
# classifier and the compact bilinear projections (Gemm/MatMul) are float by policy.
FLOAT_OPS = frozenset({"ArgMax", "ReduceMax", "ReduceMean", "ReduceL2", "Sigmoid", "Softmax"}) | MATMUL_OPS
# The head/body crops: float, but what they crop is a fresh image for a part net.
CROP_OPS = frozenset({"GridSample"})

POLICY_REASONS = {
    "input": "input normalisation",
    "head": "keypoint heatmap head (heatmap logits before ArgMax)",
    "op": "CoordinateTransfer",
    "crop": "head/body crop (GridSample: its sampling grid comes from the predicted boxes)",
    "downstream": "keypoint decode, scores, boxes, pooling, reductions and classifier (downstream of the "
                  "heatmaps or of a pooling)",
}
# Ops whose output type does not follow their float inputs (shape reads, casts).
TYPE_AGNOSTIC_OPS = frozenset({"Shape", "Size", "Cast", "CastLike"})
# Inputs that carry the op's data (the others are shapes, scales, pads...): {op: input indices}.
DATA_INPUTS: dict[str, tuple[int, ...]] = {"Resize": (0,), "Pad": (0, 2), "Reshape": (0,), "Expand": (0,),
                                           "Slice": (0,), "Squeeze": (0,), "Unsqueeze": (0,), "Split": (0,)}


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type (``onnx.TensorProto`` enum) of every tensor whose type the model or shape inference tells:
    initializers, inputs, outputs, value_info and Constant outputs. Inference is best effort (a graph it
    cannot process keeps the types it records)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001  (onnx raises several types; the recorded types still serve)
        inferred = model
    graph = inferred.graph
    types = {init.name: init.data_type for init in graph.initializer}
    for info in list(graph.input) + list(graph.output) + list(graph.value_info):
        if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
            types[info.name] = info.type.tensor_type.elem_type
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it."""
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def is_coordinate_transfer(node: onnx.NodeProto) -> bool:
    return node.op_type == OP_NAME and node.domain == OP_DOMAIN


def heatmap_head(graph: onnx.GraphProto, types: dict[str, int]) -> set[str]:
    """Names of the nodes between the trunk features and the heatmaps: walk back from every
    CoordinateTransfer heatmaps input and every ArgMax input along float data inputs (never into
    shape computations), stopping after the first conv met on each path (the score convs)."""
    from onnx import TensorProto

    producer = {out: n for n in graph.node for out in n.output}
    starts = [n.input[0] for n in graph.node if is_coordinate_transfer(n) or n.op_type == "ArgMax"]
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
        if node.op_type in CONV_OPS or node.op_type in TYPE_AGNOSTIC_OPS:
            continue  # a score conv (its input is trunk features), or a cast from elsewhere
        data = DATA_INPUTS.get(node.op_type, tuple(range(len(node.input))))
        stack.extend(node.input[i] for i in data
                     if i < len(node.input) and node.input[i] and types.get(node.input[i]) == TensorProto.FLOAT)
    return head


def input_normalisation(graph: onnx.GraphProto, stop_ops: Iterable[str] = CONV_OPS) -> set[str]:
    """Nodes between the image input and the first ``stop_ops`` nodes (mean/std normalisation, shape reads)."""
    stop = frozenset(stop_ops)
    readers = consumers(graph)
    found: set[str] = set()
    stack = list(readers.get(INPUT_IMAGES, []))
    while stack:
        node = stack.pop()
        if node.name in found or node.op_type in stop:
            continue
        found.add(node.name)
        stack.extend(c for out in node.output for c in readers.get(out, []))
    return found


def downstream(graph: onnx.GraphProto, seeds: Iterable[onnx.NodeProto], stop_ops: Iterable[str] = ()) -> list[str]:
    """Names of ``seeds`` and every node that reads, directly or not, what they compute; a node of ``stop_ops``
    is reached but not walked through (what it computes starts afresh)."""
    stop = frozenset(stop_ops)
    readers = consumers(graph)
    stack = list(seeds)
    seen: dict[str, None] = {}
    while stack:
        node = stack.pop()
        if node.name in seen:
            continue
        seen[node.name] = None
        if node.op_type not in stop:
            stack.extend(c for out in node.output for c in readers.get(out, []))
    return list(seen)


def op_label(node: onnx.NodeProto) -> str:
    """``domain::Op`` for custom-domain nodes, ``Op`` otherwise."""
    return f"{node.domain}::{node.op_type}" if node.domain else node.op_type


def float_policy(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> why it stays float in a reduced-precision model (see the module docstring)."""
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
        elif node.op_type in CROP_OPS:
            policy[node.name] = POLICY_REASONS["crop"]
        elif node.op_type in FLOAT_OPS:
            seeds.append(node)
    for name in downstream(graph, seeds, stop_ops=CROP_OPS):
        policy.setdefault(name, POLICY_REASONS["downstream"])
    return policy
