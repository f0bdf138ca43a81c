"""FP32 -> FP16 ONNX: the precision lives in the graph (TensorRT 11 builds strongly typed only).

One converter, onnxconverter-common's ``convert_float_to_float16`` (graph input and outputs stay float32,
``keep_io_types``; its default op block list keeps ops without fp16 kernels, e.g. Resize, in fp32; Cast nodes
at every fp32/fp16 boundary), with a node block list that says what stays fp32. Two policies choose the list:

- fixed (``export --fp16``, ``convert_to_mixed_fp16``): the shared policy
  ``fgdeploy.export.precision.graph.float_policy`` (input normalisation, keypoint heatmap head, decode and scores,
  CoordinateTransfer, head/body crops, poolings, normalisations, classifier); every conv outside it is fp16: the
  trunks' and the part nets'.
- task-driven (``export --fp16 --guard``, ``Fp16Builder``): everything fp16 that can be, and fp32 only the
  nodes the guard (``fgdeploy.export.precision.guard``) needs.

Always fp32: the exporter's graph casts the keypoint cell indices (int64) to float with Cast(to=FLOAT) nodes;
onnxconverter-common 1.15-1.16 retypes such a Cast's output to float16 without changing its ``to`` attribute,
and ONNX Runtime then refuses the model ("Type (tensor(float16)) of output arg ... does not match expected type
(tensor(float))"; onnxconverter-common issue #320, fix proposed in PR #326). Those Casts move integers, not
activations, so no fp16 compute is lost.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fgdeploy.errors import ExportError
from fgdeploy.export.precision.graph import elem_types, float_policy, is_coordinate_transfer, op_label
from fgdeploy.tensors import OP_NAME

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

# Nodes the guard may keep fp32: the ones that compute on activations (not shape plumbing or casts).
TASK_GUARD_CANDIDATE_OPS = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "ArgMax", "ReduceMax", "ReduceMean",
    "ReduceL2", "Sigmoid", "Softmax", "Clip", OP_NAME,
})
ALWAYS_FP32_REASON = "Cast(to=float) of integer keypoint cells (onnxconverter-common issue #320)"
CONVERTER_REASON = "ops without fp16 kernels in onnxconverter-common's default op block list (e.g. Resize)"


@dataclass
class Fp16Summary:
    """What the conversion did: compute nodes by precision and op type, casts inserted, what stays fp32 and why."""

    fp16_nodes: dict[str, int] = field(default_factory=dict)
    fp32_nodes: dict[str, int] = field(default_factory=dict)
    casts_inserted: int = 0
    kept_fp32: list[str] = field(default_factory=list)


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
        self.candidates = [n.name for n in fp32.graph.node
                           if n.op_type in TASK_GUARD_CANDIDATE_OPS
                           and (n.domain in ("", "ai.onnx") or is_coordinate_transfer(n))
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
                converted = convert_float_to_float16(model, keep_io_types=True,
                                                     node_block_list=sorted(set(self.policy) | set(float_nodes)))
        except Exception as exc:  # the converter raises plain exceptions of many types
            raise ExportError(f"fp16: onnxconverter-common's convert_float_to_float16 failed: "
                              f"{str(exc).strip().splitlines()[0][:400] or type(exc).__name__}") from exc
        keep_blocked_nodes_fp32(converted, self.fp32)
        return converted

    def __call__(self, float_nodes: frozenset[str]) -> bytes:
        return self.convert(float_nodes).SerializeToString()


def convert_to_mixed_fp16(model: onnx.ModelProto) -> tuple[onnx.ModelProto, Fp16Summary]:
    """The fixed fp16 policy: an fp16 copy of the fp32 ``model`` with ``float_policy``'s nodes kept fp32."""
    policy = float_policy(model)
    converted = Fp16Builder(model).convert(frozenset(policy))

    fp16, fp32 = precision_counts(converted)
    casts = sum(n.op_type == "Cast" for n in converted.graph.node) - sum(n.op_type == "Cast" for n in model.graph.node)
    kept = [*dict.fromkeys(policy.values()), ALWAYS_FP32_REASON, CONVERTER_REASON, "graph input and outputs float32"]
    logger.info("fp16: %d nodes fp16, %d fp32, %d casts", sum(fp16.values()), sum(fp32.values()), casts)
    return converted, Fp16Summary(fp16, fp32, casts, kept)


def keep_blocked_nodes_fp32(converted: onnx.ModelProto, original: onnx.ModelProto) -> int:
    """Undo what onnxconverter-common 1.16 rounds to fp16 although the block list keeps it fp32; returns the number
    of casts undone. Measured on the fixed policy of a part-net model (36 convs, 4 outputs), the converter:

    - rounded 55 fp32 constants of blocked nodes (input mean/std, the heatmap head's weights, thresholds) to fp16
      and cast them back: it collects the blocked nodes' initializers after rewiring their inputs to casts;
    - left 78 fp32 -> fp16 -> fp32 round trips between blocked nodes (e.g. every heatmap-head conv output):
      its cast clean-up compares a Cast's ``to`` with 16/32 instead of the TensorProto codes 10/1;
    - gave the graph fp16 outputs where a blocked node produces one (all 4 there; ``keep_io_types`` ignored),
      and, for the part-net model, an invalid graph (a blocked GreaterOrEqual reading fp16 and fp32).

    Fixes, in place: such a constant is read from an fp32 copy of the original; a round trip's readers read the
    fp32 tensor; an fp16 graph output becomes float32 (an fp16 Cast of an fp32 tensor becomes an Identity, any
    other fp16 producer gets a Cast to float). Casts and constants nothing reads any more are removed.
    """
    from onnx import TensorProto

    graph = converted.graph
    types = elem_types(converted)
    producer = {out: n for n in graph.node for out in n.output}
    inits = {i.name: i for i in graph.initializer}
    originals = {i.name: i for i in original.graph.initializer if i.data_type == TensorProto.FLOAT}
    outputs = {o.name: o for o in graph.output}
    undone = 0

    alias: dict[str, str] = {}   # a Cast's output -> the tensor its readers read instead

    def identity(node: onnx.NodeProto, source: str) -> None:
        node.op_type, node.input[:] = "Identity", [source]   # kept only where it makes a graph output
        del node.attribute[:]
        alias[node.output[0]] = source

    for node in list(graph.node):
        if node.op_type != "Cast":
            continue
        to, src = _cast_to(node), node.input[0]
        upstream = producer.get(src)
        if to == TensorProto.FLOAT and src in inits and inits[src].data_type == TensorProto.FLOAT16 \
                and src in originals:
            if f"{src}__fp32" not in inits:
                copy = graph.initializer.add()
                copy.CopyFrom(originals[src])
                copy.name = f"{src}__fp32"
                inits[copy.name] = copy
            identity(node, f"{src}__fp32")
        elif to == TensorProto.FLOAT and upstream is not None and upstream.op_type == "Cast" \
                and _cast_to(upstream) == TensorProto.FLOAT16 and types.get(upstream.input[0]) == TensorProto.FLOAT:
            identity(node, upstream.input[0])
        elif to == TensorProto.FLOAT16 and node.output[0] in outputs and types.get(src) == TensorProto.FLOAT:
            identity(node, src)
        else:
            continue
        undone += 1

    def resolve(name: str) -> str:
        while name in alias and name not in outputs:
            name = alias[name]
        return name

    for node in graph.node:
        node.input[:] = [resolve(i) for i in node.input]
    for node in [n for n in graph.node if n.op_type == "Identity" and n.output[0] in alias and n.output[0] not in outputs]:
        graph.node.remove(node)
    for name, output in outputs.items():
        if output.type.tensor_type.elem_type == TensorProto.FLOAT16:
            fp16 = producer[name] if name in producer else None
            if fp16 is not None and fp16.op_type != "Identity":
                fp16.output[list(fp16.output).index(name)] = f"{name}__fp16"
                for reader in graph.node:
                    reader.input[:] = [f"{name}__fp16" if i == name else i for i in reader.input]
                graph.node.append(_cast(f"{name}__fp16", name, TensorProto.FLOAT))
            output.type.tensor_type.elem_type = TensorProto.FLOAT
    _retype(converted)
    _drop_unused(converted)
    return undone


def _cast_to(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "to"), 0)


def _cast(source: str, out: str, to: int) -> onnx.NodeProto:
    from onnx import helper

    return helper.make_node("Cast", [source], [out], to=to, name=f"{out}__cast")


def _retype(model: onnx.ModelProto) -> None:
    """Set each Identity's value_info type to its input's (an Identity made of a Cast keeps the Cast's)."""
    types = elem_types(model)
    identity_out = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity"}
    for info in model.graph.value_info:
        source = identity_out.get(info.name)
        if source is not None and source in types and info.type.HasField("tensor_type"):
            info.type.tensor_type.elem_type = types[source]


def _drop_unused(model: onnx.ModelProto) -> None:
    """Remove Cast nodes and initializers nothing reads any more."""
    graph = model.graph
    while True:
        read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type == "Cast" and not any(o in read for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    read = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def precision_counts(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, int]]:
    """(fp16, fp32) node counts by op type: nodes with a float16 / float32 output, casts and shape reads left out."""
    from onnx import TensorProto

    types = elem_types(model)
    fp16: Counter[str] = Counter()
    fp32: Counter[str] = Counter()
    for node in model.graph.node:
        if node.op_type in ("Cast", "Shape", "Constant"):
            continue
        outs = {types.get(o) for o in node.output}
        if TensorProto.FLOAT16 in outs:
            fp16[op_label(node)] += 1
        elif TensorProto.FLOAT in outs:
            fp32[op_label(node)] += 1
    return dict(sorted(fp16.items())), dict(sorted(fp32.items()))


def fp32_node_names(model: onnx.ModelProto) -> list[str]:
    """Nodes of ``model`` that compute in fp32 (a float32 output) among the guard's candidate op types."""
    from onnx import TensorProto

    types = elem_types(model)
    return [n.name for n in model.graph.node if n.op_type in TASK_GUARD_CANDIDATE_OPS
            and any(types.get(o) == TensorProto.FLOAT for o in n.output)]
