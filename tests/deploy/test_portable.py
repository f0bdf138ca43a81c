"""Portable ONNX: the CoordinateTransfer function inlined; standard ops only; same outputs as the default export."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper

from fgdeploy.backends.ort_runner import OrtRunner
from fgdeploy.errors import ExportError
from fgdeploy.export.debug_outputs import add_debug_outputs, coordinate_transfer_tensors
from fgdeploy.export.portable import PORTABLE_KEY, STANDARD_DOMAINS, custom_domain_nodes, is_portable, make_portable

from .conftest import SIZE


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)


@pytest.fixture(scope="module")
def portable(exports, tmp_path_factory):
    folder = tmp_path_factory.mktemp("portable")
    out = {}
    for precision, path in exports.items():
        out[precision] = folder / f"{path.stem}_portable.onnx"
        onnx.save(make_portable(onnx.load(str(path))), out[precision])
    return out


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(3).random((n, 3, SIZE, SIZE), dtype=np.float32)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_portable_has_no_custom_domain_node_and_no_local_function(exports, portable, precision):
    default = onnx.load(str(exports[precision]))
    model = onnx.load(str(portable[precision]))
    assert custom_domain_nodes(default) == ["fgdeploy::CoordinateTransfer"] and not is_portable(default)
    assert not model.functions
    assert {n.domain for n in _all_nodes(model.graph)} <= STANDARD_DOMAINS   # If branches included
    assert {o.domain for o in model.opset_import} <= STANDARD_DOMAINS and is_portable(model)
    onnx.checker.check_model(model, full_check=True)
    recorded = json.loads({p.key: p.value for p in model.metadata_props}[PORTABLE_KEY])
    assert recorded["inlined"] == ["fgdeploy::CoordinateTransfer"] and "onnx.inliner" in recorded["by"]
    assert recorded["coordinate_transfer_tensors"] == coordinate_transfer_tensors(default)
    # everything else the exporter recorded is still there
    old = {p.key: p.value for p in default.metadata_props}
    assert {p.key: p.value for p in model.metadata_props if p.key != PORTABLE_KEY} == old


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_portable_gives_the_default_exports_outputs_in_onnx_runtime(exports, portable, precision):
    images = _images(3)
    with OrtRunner(exports[precision]) as ref, OrtRunner(portable[precision]) as test:
        want, got = ref.infer({"images": images}), test.infer({"images": images})
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-5, err_msg=name)


def test_portable_fp32_in_onnx_reference_matches_the_default_export(exports, portable):
    from onnx.reference import ReferenceEvaluator

    images = _images(2)
    want = ReferenceEvaluator(onnx.load(str(exports["fp32"]))).run(None, {"images": images})
    got = ReferenceEvaluator(onnx.load(str(portable["fp32"]))).run(None, {"images": images})
    with OrtRunner(exports["fp32"]) as ort:
        ort_out = ort.infer({"images": images})
    for name, a, b in zip(("logits", "keypoints", "keypoint_scores"), want, got):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(b, ort_out[name], rtol=0, atol=1e-5, err_msg=name)


def test_debug_outputs_of_a_portable_file_are_the_ops_input_and_output(exports, portable):
    images = _images(2)
    with OrtRunner(exports["fp32"], debug=True) as ref, OrtRunner(portable["fp32"], debug=True) as test:
        want, got = ref.infer({"images": images}), test.infer({"images": images})
    assert {"debug.ct0.heatmaps", "debug.ct0.part_features"} <= set(got)
    for name in ("debug.ct0.heatmaps", "debug.ct0.part_features"):
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-5)
    assert add_debug_outputs(onnx.load(str(portable["fp32"])))[1] == ["debug.ct0.heatmaps",
                                                                       "debug.ct0.part_features"]


def test_a_custom_op_without_a_function_cannot_be_made_portable():
    node = helper.make_node("Mystery", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)])
    with pytest.raises(ExportError, match="com.example::Mystery are custom ops that no local function"):
        make_portable(model)
