"""Task-driven FP16: everything fp16 that can be, fp32 only where the guard's task metrics need it.

The conversion is onnxconverter-common's ``convert_float_to_float16`` (graph input and outputs stay
float32, ``keep_io_types``; its default op block list keeps ops without fp16 kernels, e.g. Resize, in
fp32) with a node block list: the nodes the guard (``fgdeploy.export.guard``) keeps fp32. Compare the
fixed policy of ``fgdeploy.export.fp16`` (``export --fp16`` without ``--guard``), which keeps the
heatmap head, decode, pooling and classifier fp32 whatever the task metrics say.

The exporter's graph casts the keypoint cell indices (int64) to float with Cast(to=FLOAT) nodes.
onnxconverter-common 1.15-1.16 retypes such a Cast's output to float16 without changing its ``to``
attribute, and ONNX Runtime then refuses the model ("Type (tensor(float16)) of output arg ... does not
match expected type (tensor(float))"; onnxconverter-common issue #320, fix proposed in PR #326). Those
Casts are therefore on the block list always: they move integers, not activations, so no fp16 compute
is lost.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

from fgdeploy.errors import ExportError
from fgdeploy.tensors import OP_DOMAIN, OP_NAME

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

# Nodes the guard may keep fp32: the ones that compute on activations (not shape plumbing or casts).
GUARD_CANDIDATE_OPS = frozenset({
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
                           if (n.op_type in GUARD_CANDIDATE_OPS and (n.domain in ("", "ai.onnx") or
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
    return [n.name for n in model.graph.node if n.op_type in GUARD_CANDIDATE_OPS
            and any(types.get(o) == TensorProto.FLOAT for o in n.output)]
