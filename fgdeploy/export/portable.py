"""Portable ONNX: the ``fgdeploy::CoordinateTransfer`` node replaced by its function body (standard ops only).

A default export carries the op as one custom-domain node plus a model-local ONNX function (docs/onnx.md). The
ONNX standard allows that, and ONNX Runtime and ``onnx.reference`` run it, but other runtimes and converters
do not: OpenVINO 2026.4 crashes (segmentation fault) in ``Core.read_model`` on such a file, and onnx2tf,
coremltools or TensorRT without our plugin want plain standard ops. ``make_portable`` inlines every local
function with onnx's own inliner (``onnx.inliner.inline_local_functions``), drops the ``fgdeploy`` opset
import, checks that no node of another domain is left, and records in the metadata that it did so
(key ``portable``) plus the tensor names around each inlined CoordinateTransfer, so ``fgdeploy parity`` can
still expose the op's input and output on a portable file. The numbers are those of the function body,
which ONNX Runtime runs for the default export too, so outputs are identical in ONNX Runtime.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fgdeploy.errors import ExportError
from fgdeploy.export.debug_outputs import coordinate_transfer_tensors

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

PORTABLE_KEY = "portable"  # metadata key (JSON): how the file was made portable; absent on default exports
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})  # domains every ONNX runtime implements


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph``, including those in subgraphs (If/Loop/Scan bodies)."""
    from onnx import AttributeProto

    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield from _nodes(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _nodes(sub)


def custom_domain_nodes(model: onnx.ModelProto) -> list[str]:
    """``domain::op_type`` of every node (subgraphs too) outside the standard ONNX domains, sorted, unique."""
    return sorted({f"{n.domain}::{n.op_type}" for n in _nodes(model.graph) if n.domain not in STANDARD_DOMAINS})


def is_portable(model: onnx.ModelProto) -> bool:
    """True when ``model`` has no local function and no node outside the standard ONNX domains."""
    return not model.functions and not custom_domain_nodes(model)


def make_portable(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every local function inlined and only standard-domain nodes left.

    Args:
        model: an fgdeploy export (fp32, fp16 or int8), or any ONNX model.

    Returns:
        The portable model (checked with ``onnx.checker`` in full), metadata ``portable`` added; a model that is
        portable already comes back unchanged except for that key.

    Raises:
        ExportError: nodes of a custom domain remain that no local function defines (a library's custom op).
    """
    import json

    import onnx
    import onnx.inliner
    from onnx import helper

    pairs = coordinate_transfer_tensors(model)
    inlined_ops = sorted({f"{f.domain}::{f.name}" for f in model.functions})
    portable = onnx.inliner.inline_local_functions(model) if model.functions else _copy(model)
    left = custom_domain_nodes(portable)
    if left:
        raise ExportError(f"cannot make the model portable: node(s) {', '.join(left)} are custom ops that no local "
                          "function in the file defines; only fgdeploy's own op can be inlined")
    del portable.functions[:]
    used = {n.domain for n in _nodes(portable.graph)}
    keep = [o for o in portable.opset_import if o.domain in STANDARD_DOMAINS or o.domain in used]
    del portable.opset_import[:]
    portable.opset_import.extend(keep)
    props = {p.key: p.value for p in portable.metadata_props}
    props[PORTABLE_KEY] = json.dumps({
        "inlined": inlined_ops,
        "by": f"onnx.inliner.inline_local_functions (onnx {onnx.__version__})",
        "coordinate_transfer_tensors": pairs,
    }, sort_keys=True)
    helper.set_model_props(portable, props)
    try:
        onnx.checker.check_model(portable, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the inlined (portable) model fails onnx.checker: {str(exc).strip()[:600]}") from exc
    logger.debug("portable: inlined %s (%d nodes now)", inlined_ops or "nothing", len(portable.graph.node))
    return portable


def portable_summary(model: onnx.ModelProto) -> dict[str, Any]:
    """Counts for the export's report: nodes, local functions, custom-domain nodes, opset domains."""
    return {"nodes": len(model.graph.node), "functions": len(model.functions),
            "custom_domain_nodes": custom_domain_nodes(model),
            "domains": sorted({o.domain or "ai.onnx" for o in model.opset_import})}


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnx

    new = onnx.ModelProto()
    new.CopyFrom(model)
    return new
