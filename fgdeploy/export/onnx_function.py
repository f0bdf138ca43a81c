"""ONNX form of the CoordinateTransfer op (docs/method.md 4a, docs/onnx.md).

- ``coordinate_transfer_function(opset)``: a ``FunctionProto`` (domain ``fgdeploy``, name
  ``CoordinateTransfer``, inputs heatmaps/features, output pooled, attributes window/mode referenced from
  the body) computing the contract with standard ONNX ops only, so ONNX Runtime (which inlines local
  functions) and ``onnx.reference`` run an exported model without any custom-op library.
- ``register_coordinate_transfer_schema()``: registers the op's ``OpSchema`` (idempotent) so onnxscript
  can emit the node during export, with type/shape inference (N, P, C).
- ``make_coordinate_transfer_model(...)``: a one-node test model carrying the function.

Body outline: ArgMax (first maximum) over the flattened heatmap; integer centre cy = ((2 i + 1) Hf) div
(2 Hh); window rows/columns from Range, validity masks, indices clipped into the grid; one GatherElements
over all parts and window cells; then (If on ``mode``) a masked max, or a float32 masked sum divided by the
number of valid cells. Works for any k, Hh, Wh, Hf, Wf and a dynamic batch.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, FunctionProto, ModelProto, TensorProto, helper

from fgdeploy.tensors import MODE_MAX, OP_DOMAIN, OP_NAME, OP_VERSION, PLUGIN_NAMESPACE

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_OPSET", "SUPPORTED_OPSETS", "coordinate_transfer_function", "register_coordinate_transfer_schema",
    "make_coordinate_transfer_model",
]

DEFAULT_OPSET = 18
SUPPORTED_OPSETS = range(17, 22)  # checked by tests: 17 ... 21
IR_VERSION = 10


class _Body:
    """Collects the nodes of a function body; value names are unique within the function."""

    def __init__(self, opset: int, prefix: str = "") -> None:
        self.opset = opset
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        self._count += 1
        name = out or f"{self.prefix}t{self._count}_{op_type.lower()}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], **attrs))
        return name

    def const(self, value: int | float | list[int], dtype: int = TensorProto.INT64) -> str:
        arr = np.asarray(value, dtype=helper.tensor_dtype_to_np_dtype(dtype))
        self._count += 1
        name = f"{self.prefix}c{self._count}"
        self.nodes.append(helper.make_node("Constant", [], [name], value=helper.make_tensor(
            name + "_v", dtype, arr.shape, arr.reshape(-1).tolist())))
        return name

    def attr_int(self, attribute: str) -> str:
        """Int64 scalar holding the function attribute ``attribute`` (Constant with value_int ref)."""
        ref = AttributeProto()
        ref.name, ref.ref_attr_name, ref.type = "value_int", attribute, AttributeProto.INT
        node = helper.make_node("Constant", [], [f"attr_{attribute}"])
        node.attribute.append(ref)
        self.nodes.append(node)
        return f"attr_{attribute}"


def _reduce(body: _Body, op_type: str, x: str, axis: int, out: str | None = None) -> str:
    """ReduceMax/ReduceSum over one axis (keepdims=0) in the opset's form (axes input: Max from 18, Sum 13)."""
    if body.opset >= 18 or op_type == "ReduceSum":
        return body.op(op_type, x, body.const([axis]), out=out, keepdims=0)
    return body.op(op_type, x, out=out, axes=[axis], keepdims=0)


def _branch(name: str, body: _Body, output: str) -> onnx.GraphProto:
    """An If branch graph from the nodes collected in ``body`` (outer values are referenced by name)."""
    return helper.make_graph(body.nodes, name, [], [helper.make_value_info(output, onnx.TypeProto())])


def coordinate_transfer_function(opset: int = DEFAULT_OPSET) -> FunctionProto:
    """The ``fgdeploy::CoordinateTransfer`` FunctionProto for ONNX opset ``opset`` (17 ... 21).

    Args:
        opset: ONNX (default domain) opset of the body; it must equal the model's. Defaults to 18.

    Returns:
        The function; attributes ``window`` (default 3) and ``mode`` (default 0).
    """
    if opset not in SUPPORTED_OPSETS:
        raise ValueError(f"CoordinateTransfer function: opset {opset} not supported; use one of "
                         f"{list(SUPPORTED_OPSETS)}")
    b = _Body(opset)
    zero, one, two = b.const(0), b.const(1), b.const(2)
    k, mode = b.attr_int("window"), b.attr_int("mode")
    hs, fs = b.op("Shape", "heatmaps"), b.op("Shape", "features")
    p_1d = b.op("Slice", hs, b.const([1]), b.const([2]))  # [P]
    hh, wh = b.op("Gather", hs, b.const(2)), b.op("Gather", hs, b.const(3))  # scalars
    hf, wf = b.op("Gather", fs, b.const(2)), b.op("Gather", fs, b.const(3))
    hf_last, wf_last = b.op("Sub", hf, one), b.op("Sub", wf, one)

    # First maximum over the flattened map (exact in float32 for float16 inputs).
    flat_h = b.op("Reshape", b.op("Cast", "heatmaps", to=TensorProto.FLOAT), b.const([0, 0, -1]))
    am = b.op("ArgMax", flat_h, axis=2, keepdims=0, select_last_index=0)  # (N, P) int64
    i = b.op("Div", am, wh)
    j = b.op("Sub", am, b.op("Mul", i, wh))

    def centre(idx: str, heat_size: str, feat_size: str, last: str) -> str:
        num = b.op("Mul", b.op("Add", b.op("Mul", idx, two), one), feat_size)
        return b.op("Clip", b.op("Div", num, b.op("Mul", heat_size, two)), zero, last)

    cy, cx = centre(i, hh, hf, hf_last), centre(j, wh, wf, wf_last)
    r = b.op("Div", k, two)
    offsets = b.op("Range", b.op("Neg", r), b.op("Add", r, one), one)  # (k,)
    last_axis = b.const([-1])
    rows = b.op("Add", b.op("Unsqueeze", cy, last_axis), offsets)  # (N, P, k)
    cols = b.op("Add", b.op("Unsqueeze", cx, last_axis), offsets)

    def inside(v: str, last: str) -> str:
        return b.op("And", b.op("GreaterOrEqual", v, zero), b.op("LessOrEqual", v, last))

    second_last = b.const([-2])
    valid = b.op("And", b.op("Unsqueeze", inside(rows, hf_last), last_axis),
                 b.op("Unsqueeze", inside(cols, wf_last), second_last))  # (N, P, k, k)
    index = b.op("Add", b.op("Mul", b.op("Unsqueeze", b.op("Clip", rows, zero, hf_last), last_axis), wf),
                 b.op("Unsqueeze", b.op("Clip", cols, zero, wf_last), second_last))  # (N, P, k, k)

    # One gather of every window cell of every part from the flattened features: (N, C, P * k * k).
    # (A 1-D Gather with absolute offsets n C Hf Wf + c Hf Wf + cell; onnx.reference's GatherElements
    # is limited to 64 positions along the axis.)
    index = b.op("Reshape", index, b.const([0, 1, -1]))  # (N, 1, P k k)
    plane = b.op("Mul", hf, wf)
    n_scalar = b.op("Gather", fs, b.const(0))
    c_scalar = b.op("Gather", fs, b.const(1))
    batch_offset = b.op("Mul", b.op("Range", zero, n_scalar, one), b.op("Mul", c_scalar, plane))  # (N,)
    chan_offset = b.op("Mul", b.op("Range", zero, c_scalar, one), plane)  # (C,)
    offset = b.op("Add", b.op("Reshape", batch_offset, b.const([-1, 1, 1])),
                  b.op("Reshape", chan_offset, b.const([1, -1, 1])))  # (N, C, 1)
    flat_f = b.op("Reshape", "features", b.const([-1]))
    gathered = b.op("Gather", flat_f, b.op("Add", offset, index), axis=0)
    gathered = b.op("Reshape", gathered, b.op("Concat", b.const([0, 0]), p_1d, b.const([-1]), axis=0))
    cells = b.op("Cast", gathered, to=TensorProto.FLOAT)  # (N, C, P, k*k); float32 accumulation
    mask = b.op("Reshape", valid, b.op("Concat", b.const([0, 1]), p_1d, b.const([-1]), axis=0))  # (N, 1, P, kk)

    then_b = _Body(opset, "max_")  # mode 0: max over valid cells
    masked = then_b.op("Where", mask, cells, then_b.const(float("-inf"), TensorProto.FLOAT))
    _reduce(then_b, "ReduceMax", masked, 3, out="pooled_max")
    else_b = _Body(opset, "mean_")  # mode 1: mean over valid cells
    total = _reduce(else_b, "ReduceSum", else_b.op("Where", mask, cells, else_b.const(0.0, TensorProto.FLOAT)), 3)
    count = _reduce(else_b, "ReduceSum", else_b.op("Cast", mask, to=TensorProto.FLOAT), 3)
    else_b.op("Div", total, count, out="pooled_mean")
    is_max = b.op("Equal", mode, b.const(MODE_MAX))
    pooled = b.op("If", is_max, then_branch=_branch("max_pool", then_b, "pooled_max"),
                  else_branch=_branch("average_pool", else_b, "pooled_mean"))  # (N, C, P) float32
    pooled = b.op("CastLike", pooled, "features")
    b.op("Transpose", pooled, perm=[0, 2, 1], out="pooled")
    return helper.make_function(
        OP_DOMAIN, OP_NAME, ["heatmaps", "features"], ["pooled"], b.nodes,
        [helper.make_opsetid("", opset)], attributes=[],
        attribute_protos=[helper.make_attribute("window", 3), helper.make_attribute("mode", MODE_MAX)],
        doc_string="fgdeploy CoordinateTransfer (docs/method.md 4a) in standard ONNX ops")


def _infer_coordinate_transfer(ctx: onnx.defs.InferenceContext) -> None:  # type: ignore[name-defined]
    """Type/shape inference of the node: pooled (N, P, C) in the dtype of ``features``."""
    heat, feat = ctx.get_input_type(0), ctx.get_input_type(1)
    if heat is None or feat is None or not feat.HasField("tensor_type"):
        return
    out = onnx.TypeProto()
    out.tensor_type.elem_type = feat.tensor_type.elem_type
    hshape, fshape = heat.tensor_type.shape, feat.tensor_type.shape
    if heat.tensor_type.HasField("shape") and feat.tensor_type.HasField("shape") \
            and len(hshape.dim) == 4 and len(fshape.dim) == 4:
        for dim in (hshape.dim[0], hshape.dim[1], fshape.dim[1]):
            out.tensor_type.shape.dim.add().CopyFrom(dim)
    ctx.set_output_type(0, out)


def coordinate_transfer_schema() -> onnx.defs.OpSchema:
    """The ``fgdeploy::CoordinateTransfer`` (version 1) OpSchema (docs/onnx.md: the exporter needs it to emit the node)."""
    schema_cls = onnx.defs.OpSchema
    attr_type = schema_cls.AttrType
    schema = schema_cls(
        OP_NAME, OP_DOMAIN, 1,
        "Pools features around each heatmap's first argmax (fgdeploy docs/method.md 4a).",
        inputs=[schema_cls.FormalParameter("heatmaps", "T", "(N, P, Hh, Wh)"),
                schema_cls.FormalParameter("features", "T", "(N, C, Hf, Wf)")],
        outputs=[schema_cls.FormalParameter("pooled", "T", "(N, P, C)")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float32 or float16")],
        attributes=[
            schema_cls.Attribute("window", attr_type.INT, "odd window side k >= 1 (default 3)", required=False),
            schema_cls.Attribute("mode", attr_type.INT, "0 = max, 1 = average (default 0)", required=False),
            schema_cls.Attribute("plugin_namespace", attr_type.STRING, "TensorRT plugin namespace",
                                 required=False),
            schema_cls.Attribute("plugin_version", attr_type.STRING, "TensorRT plugin version", required=False),
        ],
    )
    if hasattr(schema, "set_type_and_shape_inference_function"):
        schema.set_type_and_shape_inference_function(_infer_coordinate_transfer)
    return schema


def register_coordinate_transfer_schema() -> bool:
    """Register the OpSchema once per process (onnxscript needs it to emit the node).

    Returns:
        True if this call registered it, False if it was already registered.
    """
    if onnx.defs.has(OP_NAME, OP_DOMAIN):
        return False
    onnx.defs.register_schema(coordinate_transfer_schema())
    logger.debug("registered ONNX schema %s::%s", OP_DOMAIN, OP_NAME)
    return True


def make_coordinate_transfer_model(
    window: int = 3,
    mode: int = MODE_MAX,
    dtype: int = TensorProto.FLOAT,
    opset: int = DEFAULT_OPSET,
    plugin_attributes: bool = True,
    set_attributes: bool = True,
) -> ModelProto:
    """A one-node model: inputs heatmaps (N, P, Hh, Wh) and features (N, C, Hf, Wf), output pooled (N, P, C).

    Args:
        window, mode: the node's attributes.
        dtype: ``TensorProto.FLOAT`` or ``TensorProto.FLOAT16`` for both inputs and the output.
        opset: ONNX opset of the model and the function body. Defaults to 18.
        plugin_attributes: also set ``plugin_namespace``/``plugin_version`` (read by TensorRT's parser).
        set_attributes: False leaves window/mode unset, so the function's defaults (3, max) apply.

    Returns:
        A checked ModelProto with the function in ``model.functions``; every dimension is symbolic.
    """
    attrs: dict[str, Any] = {"window": int(window), "mode": int(mode)} if set_attributes else {}
    if plugin_attributes:
        attrs.update(plugin_namespace=PLUGIN_NAMESPACE, plugin_version=OP_VERSION)
    node = helper.make_node(OP_NAME, ["heatmaps", "features"], ["pooled"], domain=OP_DOMAIN, **attrs)
    graph = helper.make_graph(
        [node], "coordinate_transfer",
        [helper.make_tensor_value_info("heatmaps", dtype, ["N", "P", "Hh", "Wh"]),
         helper.make_tensor_value_info("features", dtype, ["N", "C", "Hf", "Wf"])],
        [helper.make_tensor_value_info("pooled", dtype, ["N", "P", "C"])])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(OP_DOMAIN, 1)],
        functions=[coordinate_transfer_function(opset)], ir_version=IR_VERSION, producer_name="fgdeploy")
    onnx.checker.check_model(model, full_check=True)
    return model
