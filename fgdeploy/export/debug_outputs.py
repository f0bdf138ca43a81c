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


def add_debug_outputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Copy of ``model`` whose graph also outputs each CoordinateTransfer's heatmaps and result.

    The extra outputs are added through Identity nodes named as above, so the original tensors and
    every optimisation around them stay as they are.

    Returns:
        (new model, names of the added outputs).
    """
    import onnx
    from onnx import helper

    from fgdeploy.export.precision.graph import elem_types

    new = onnx.ModelProto()
    new.CopyFrom(model)
    types = elem_types(new)   # best effort: unknown types fall back to the features' type
    added: list[str] = []
    for k, node in enumerate(coordinate_transfer_nodes(new)):
        pairs = ((node.input[0], debug_heatmaps_name(k)), (node.output[0], debug_part_features_name(k)))
        features_type = types.get(node.input[1], onnx.TensorProto.FLOAT)
        for source, name in pairs:
            new.graph.node.append(helper.make_node("Identity", [source], [name], name=f"{name}.identity"))
            elem = types.get(source, features_type)
            new.graph.output.append(helper.make_tensor_value_info(name, elem, None))
            added.append(name)
    return new, added
