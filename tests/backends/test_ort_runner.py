"""ONNX Runtime runner on tiny hand-built models."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fgdeploy.backends.base import RunnerError
from fgdeploy.backends.ort_runner import OrtRunner, resolve_providers
from fgdeploy.errors import BackendUnavailable
from fgdeploy.export.debug_outputs import add_debug_outputs, debug_heatmaps_name, debug_part_features_name

from .conftest import expected_logits, tiny_classifier


def test_ort_runner_runs_dynamic_batch_and_matches_numpy(tiny_onnx):
    rng = np.random.default_rng(0)
    with OrtRunner(tiny_onnx, threads=1) as runner:
        spec = runner.input_specs()["images"]
        assert spec.shape == (-1, 3, 4, 4) and spec.dtype == np.float32
        for batch in (1, 3):
            images = rng.random((batch, 3, 4, 4), dtype=np.float32)
            out = runner.infer({"images": images})
            assert sorted(out) == ["logits", "scores"]
            np.testing.assert_allclose(out["logits"], expected_logits(images), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(out["scores"], 1 / (1 + np.exp(-out["logits"])), rtol=1e-5)
    assert runner.name == "ort-cpu-fp32"


def test_ort_runner_spin_false_lets_idle_threads_sleep(tiny_onnx):
    entry = "session.intra_op.allow_spinning"
    with OrtRunner(tiny_onnx, threads=2, spin=False) as quiet, OrtRunner(tiny_onnx, threads=2) as default:
        assert quiet._session.get_session_options().get_session_config_entry(entry) == "0"
        with pytest.raises(RuntimeError, match="does not have configuration"):   # ONNX Runtime's default: spin
            default._session.get_session_options().get_session_config_entry(entry)
        x = np.random.default_rng(0).random((1, 3, 4, 4), np.float32)
        np.testing.assert_array_equal(quiet.infer({"images": x})["logits"], default.infer({"images": x})["logits"])


def test_ort_runner_decodes_metadata(tiny_onnx):
    with OrtRunner(tiny_onnx) as runner:
        meta = runner.metadata()
    assert meta["class_names"] == ["c0", "c1", "c2", "c3", "c4"]
    assert meta["input_size"] == 4 and meta["precision"] == "fp32"


def test_ort_runner_accepts_model_bytes():
    model = tiny_classifier()
    images = np.random.default_rng(1).random((2, 3, 4, 4), dtype=np.float32)
    with OrtRunner(model.SerializeToString()) as runner:
        np.testing.assert_allclose(runner.infer({"images": images})["logits"], expected_logits(images), rtol=1e-5)


def test_ort_runner_corrupt_file_gives_clear_error(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07this is not a protobuf" * 10)
    with pytest.raises(RunnerError, match=r"cannot load the model.*corrupt or not an ONNX model"):
        OrtRunner(path).activate()
    with pytest.raises(RunnerError, match=r"broken\.onnx: not an ONNX file"):   # debug parses it first
        OrtRunner(path, debug=True).activate()


def test_ort_runner_truncated_model_gives_clear_error(tmp_path, tiny_onnx):
    path = tmp_path / "truncated.onnx"
    path.write_bytes(tiny_onnx.read_bytes()[: len(tiny_onnx.read_bytes()) // 2])
    with pytest.raises(RunnerError, match="re-export it"):
        OrtRunner(path).activate()


def test_ort_runner_missing_file_names_it(tmp_path):
    with pytest.raises(RunnerError, match=r"nope\.onnx does not exist"):
        OrtRunner(tmp_path / "nope.onnx").activate()


def test_ort_runner_missing_provider_lists_available(tiny_onnx):
    with pytest.raises(BackendUnavailable, match=r"provider\(s\) NoSuchExecutionProvider are not installed.*"   # no list
                                                 r"available providers are: .*CPUExecutionProvider\)"):  # reprs (#10)
        OrtRunner(tiny_onnx, providers=["NoSuchExecutionProvider"]).activate()


def test_resolve_providers_aliases_and_cpu_fallback():
    assert resolve_providers(["cuda"], None) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(None, "cuda:1") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(["TRT", "cpu"], None) == ["TensorrtExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(None, None) == ["CPUExecutionProvider"]


def test_ort_runner_precision_mismatch_is_an_error(tiny_onnx):
    with pytest.raises(RunnerError, match="fp16 requested but the model is fp32"):
        OrtRunner(tiny_onnx, fp16=True).activate()


def test_ort_runner_validates_feeds(tiny_onnx):
    with OrtRunner(tiny_onnx) as runner, pytest.raises(RunnerError, match="expected dtype float32"):
        runner.infer({"images": np.ones((1, 3, 4, 4), np.float64)})


def _model_with_custom_node() -> onnx.ModelProto:
    """A graph with one fgdeploy::CoordinateTransfer node and a (toy) local function body."""
    body = [
        helper.make_node("ReduceMax", ["features", "axes"], ["m"], keepdims=0),  # (N, C)
        helper.make_node("Unsqueeze", ["m", "one"], ["m1"]),  # (N, 1, C)
        helper.make_node("ReduceMax", ["heatmaps", "axes"], ["h"], keepdims=0),  # (N, P)
        helper.make_node("Unsqueeze", ["h", "two"], ["h1"]),  # (N, P, 1)
        helper.make_node("Mul", ["h1", "m1"], ["pooled"]),  # (N, P, C)
    ]
    consts = [
        helper.make_node("Constant", [], ["axes"], value=helper.make_tensor("a", TensorProto.INT64, [2], [2, 3])),
        helper.make_node("Constant", [], ["one"], value=helper.make_tensor("o", TensorProto.INT64, [1], [1])),
        helper.make_node("Constant", [], ["two"], value=helper.make_tensor("t", TensorProto.INT64, [1], [2])),
    ]
    fn = helper.make_function("fgdeploy", "CoordinateTransfer", ["heatmaps", "features"], ["pooled"],
                              consts + body, [helper.make_opsetid("", 18)], attributes=["window", "mode"])
    graph = helper.make_graph(
        [helper.make_node("Relu", ["images"], ["feat"]),
         helper.make_node("Neg", ["images"], ["heat"]),
         helper.make_node("CoordinateTransfer", ["heat", "feat"], ["parts"], domain="fgdeploy", window=3, mode=0,
                          plugin_namespace="fgdeploy", plugin_version="1"),
         helper.make_node("ReduceSum", ["parts", "ax1"], ["logits"], keepdims=0)],
        "ct", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [onnx.numpy_helper.from_array(np.array([1], np.int64), "ax1")])
    model = helper.make_model(graph, functions=[fn], ir_version=10,
                              opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("fgdeploy", 1)])
    return model


def test_add_debug_outputs_exposes_coordinate_transfer_tensors():
    model, added = add_debug_outputs(_model_with_custom_node())
    assert added == [debug_heatmaps_name(0), debug_part_features_name(0)]
    images = np.random.default_rng(2).standard_normal((2, 3, 4, 4)).astype(np.float32)
    with OrtRunner(_model_with_custom_node().SerializeToString(), debug=True) as runner:
        out = runner.infer({"images": images})
    np.testing.assert_allclose(out[debug_heatmaps_name(0)], -images)
    expected = (-images).max(axis=(2, 3))[:, :, None] * np.maximum(images, 0).max(axis=(2, 3))[:, None, :]
    np.testing.assert_allclose(out[debug_part_features_name(0)], expected, rtol=1e-6)
    np.testing.assert_allclose(out["logits"], expected.sum(axis=1), rtol=1e-5)
    assert len([o for o in model.graph.output]) == 3
