"""Expose the CoordinateTransfer inputs/outputs of a model as extra outputs, to locate divergence.

Parity compares the final outputs; when a check fails it reruns a few images with these extra
outputs (``debug.ct<k>.heatmaps`` = the k-th CoordinateTransfer node's heatmaps input,
``debug.ct<k>.part_features`` = its output) on both sides to say whether the runs already differ
in the heatmaps, only in the pooled part features, or only in the logits. The torch runner captures
the same tensors from the k-th call of the custom op.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fgdeploy.tensors import OP_DOMAIN, OP_NAME

if TYPE_CHECKING:
    import onnx

DEBUG_PREFIX = "debug."


def debug_heatmaps_name(k: int) -> str:
    """Name of the heatmaps input of the k-th CoordinateTransfer (0-based, graph/call order)."""
    return f"{DEBUG_PREFIX}ct{k}.heatmaps"


def debug_part_features_name(k: int) -> str:
    """Name of the pooled part features output of the k-th CoordinateTransfer."""
    return f"{DEBUG_PREFIX}ct{k}.part_features"


def coordinate_transfer_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The ``fgdeploy::CoordinateTransfer`` nodes of the main graph, in graph order."""
    return [n for n in model.graph.node if n.op_type == OP_NAME and n.domain == OP_DOMAIN]


def coordinate_transfer_tensors(model: onnx.ModelProto) -> list[list[str]]:
    """[heatmaps input, pooled output] tensor names of each CoordinateTransfer, in graph order.

    From the nodes of a default export (``coordinate_transfer_nodes``), or from the ``portable`` metadata of an
    inlined one (the inliner keeps the names of a call's inputs and outputs); empty when neither says.
    """
    import json

    from fgdeploy.export.portable import PORTABLE_KEY

    nodes = coordinate_transfer_nodes(model)
    if nodes:
        return [[n.input[0], n.output[0]] for n in nodes]
    props = {p.key: p.value for p in model.metadata_props}
    try:
        recorded = json.loads(props.get(PORTABLE_KEY, "{}")) or {}
    except ValueError:
        return []
    return [list(pair) for pair in recorded.get("coordinate_transfer_tensors", []) if len(pair) == 2]


def add_debug_outputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Copy of ``model`` whose graph also outputs each CoordinateTransfer's heatmaps and result.

    Default and portable exports alike (``coordinate_transfer_tensors``). The extra outputs are added through
    Identity nodes named as above, so the original tensors and every optimisation around them stay as they are.

    Returns:
        (new model, names of the added outputs).
    """
    import onnx
    from onnx import helper

    from fgdeploy.export.precision.graph import elem_types

    new = onnx.ModelProto()
    new.CopyFrom(model)
    pairs = coordinate_transfer_tensors(new)
    if not pairs:
        return new, []
    types = elem_types(new)   # best effort: unknown types fall back to float
    added: list[str] = []
    for k, (heatmaps, pooled) in enumerate(pairs):
        for source, name in ((heatmaps, debug_heatmaps_name(k)), (pooled, debug_part_features_name(k))):
            new.graph.node.append(helper.make_node("Identity", [source], [name], name=f"{name}.identity"))
            new.graph.output.append(helper.make_tensor_value_info(name, types.get(source, onnx.TensorProto.FLOAT),
                                                                  None))
            added.append(name)
    return new, added
