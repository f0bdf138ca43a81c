"""The CoordinateTransfer ONNX function body vs the NumPy reference, in ONNX Runtime and onnx.reference."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
import pytest
from onnx import TensorProto
from onnx.reference import ReferenceEvaluator

from fgdeploy.export.onnx_function import (
    coordinate_transfer_function,
    make_coordinate_transfer_model,
    register_coordinate_transfer_schema,
)
from fgdeploy.reference.coordinate_transfer import coordinate_transfer, make_coordinate_transfer_inputs

# (batch, parts, heatmap (Hh, Wh), channels, features (Hf, Wf))
SHAPES = [
    (1, 15, (10, 10), 4, (32, 32)),  # paper grid, batch 1
    (7, 15, (9, 7), 3, (4, 5)),  # heatmap finer than the features
    (7, 5, (3, 4), 3, (8, 11)),  # heatmap coarser
    (2, 15, (6, 6), 2, (1, 2)),  # windows wider than the feature grid
]
DTYPES = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16}


def _ort(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _check(got: np.ndarray, ref: np.ndarray, mode: int) -> None:
    assert got.dtype == ref.dtype and got.shape == ref.shape
    if mode == 0:  # a max selects an input value: exact
        np.testing.assert_array_equal(got, ref)
    else:  # float32 accumulation vs float64: at most one rounding step of the output dtype
        rtol = 1e-3 if ref.dtype == np.float16 else 1e-6
        np.testing.assert_allclose(got.astype(np.float64), ref.astype(np.float64), rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype", list(DTYPES), ids=["float32", "float16"])
@pytest.mark.parametrize("mode", [0, 1])
@pytest.mark.parametrize("window", [1, 3, 5])
def test_onnx_function_matches_reference_in_ort_and_reference_evaluator(window, mode, dtype):
    model = make_coordinate_transfer_model(window, mode, dtype)
    session, evaluator = _ort(model), ReferenceEvaluator(model)
    rng = np.random.default_rng(100 * window + 10 * mode + dtype)
    for n, p, heat_hw, c, feat_hw in SHAPES:  # one session: the batch and every size are dynamic
        for ties in (False, True):
            heat, feats = make_coordinate_transfer_inputs(rng, n, p, heat_hw, c, feat_hw, DTYPES[dtype],
                                                          feature_ties=ties)
            ref = coordinate_transfer(heat, feats, window, mode)
            feeds = {"heatmaps": heat, "features": feats}
            _check(session.run(None, feeds)[0], ref, mode)
            _check(evaluator.run(None, feeds)[0], ref, mode)


@pytest.mark.parametrize("opset", [17, 18, 19, 20, 21])
def test_onnx_function_body_works_for_opsets_17_to_21_after_inlining(opset):
    rng = np.random.default_rng(opset)
    heat, feats = make_coordinate_transfer_inputs(rng, 7, 15, (9, 7), 3, (4, 5), np.float32)
    for mode in (0, 1):
        model = make_coordinate_transfer_model(3, mode, TensorProto.FLOAT, opset=opset)
        inlined = onnx.inliner.inline_local_functions(model)
        assert not inlined.functions and all(node.domain == "" for node in inlined.graph.node)
        assert any(node.op_type == "ArgMax" for node in inlined.graph.node)
        ref = coordinate_transfer(heat, feats, 3, mode)
        _check(_ort(inlined).run(None, {"heatmaps": heat, "features": feats})[0], ref, mode)


def test_onnx_function_structure_and_attribute_references():
    fn = coordinate_transfer_function(18)
    assert (fn.domain, fn.name) == ("fgdeploy", "CoordinateTransfer")
    assert list(fn.input) == ["heatmaps", "features"] and list(fn.output) == ["pooled"]
    assert {a.name: onnx.helper.get_attribute_value(a) for a in fn.attribute_proto} == {"window": 3, "mode": 0}
    refs = {a.ref_attr_name for node in fn.node for a in node.attribute if a.ref_attr_name}
    assert refs == {"window", "mode"}
    (argmax,) = [node for node in fn.node if node.op_type == "ArgMax"]
    assert {a.name: onnx.helper.get_attribute_value(a) for a in argmax.attribute}["select_last_index"] == 0
    assert [(o.domain, o.version) for o in fn.opset_import] == [("", 18)]
    with pytest.raises(ValueError, match="opset 16 not supported"):
        coordinate_transfer_function(16)


def test_onnx_function_defaults_apply_when_the_node_omits_attributes():
    rng = np.random.default_rng(3)
    heat, feats = make_coordinate_transfer_inputs(rng, 2, 15, (5, 5), 3, (7, 7), np.float32)
    model = make_coordinate_transfer_model(set_attributes=False, plugin_attributes=False)
    got = _ort(model).run(None, {"heatmaps": heat, "features": feats})[0]
    np.testing.assert_array_equal(got, coordinate_transfer(heat, feats, 3, 0))


def test_schema_registration_is_idempotent_and_infers_the_output_shape():
    register_coordinate_transfer_schema()
    assert register_coordinate_transfer_schema() is False
    schema = onnx.defs.get_schema("CoordinateTransfer", 1, "fgdeploy")
    assert set(schema.attributes) == {"window", "mode", "plugin_namespace", "plugin_version"}
    model = onnx.parser.parse_model(
        '<ir_version: 10, opset_import: ["" : 18, "fgdeploy" : 1]>\n'
        'g (float16[N, 15, 10, 10] h, float16[N, 512, 32, 32] f) => (y) {\n'
        '  y = fgdeploy.CoordinateTransfer<window = 3, mode = 0>(h, f)\n}')
    (out,) = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph.output
    assert out.type.tensor_type.elem_type == TensorProto.FLOAT16
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["N", 15, 512]


def test_one_node_model_passes_full_check_with_plugin_attributes():
    register_coordinate_transfer_schema()
    model = make_coordinate_transfer_model(5, 1, TensorProto.FLOAT16)
    onnx.checker.check_model(model, full_check=True)
    (node,) = model.graph.node
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"window": 5, "mode": 1, "plugin_namespace": b"fgdeploy", "plugin_version": b"1"}
