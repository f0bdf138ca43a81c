"""Tiny hand-built ONNX models for the backend tests."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fgdeploy.export.metadata import encode_metadata

WEIGHT = np.random.default_rng(7).standard_normal((3, 5)).astype(np.float32)


def tiny_classifier(precision: str = "fp32") -> onnx.ModelProto:
    """images (N, 3, 4, 4) -> logits = mean over pixels @ W (3 x 5); scores = sigmoid(logits)."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["images", "axes"], ["pooled"], keepdims=0),
            helper.make_node("MatMul", ["pooled", "w"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["scores"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 5])],
        [numpy_helper.from_array(WEIGHT, "w"), numpy_helper.from_array(np.array([2, 3], np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    meta = encode_metadata({"class_names": [f"c{i}" for i in range(5)], "input_size": 4, "precision": precision})
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model, full_check=True)
    return model


def expected_logits(images: np.ndarray) -> np.ndarray:
    return images.mean(axis=(2, 3)) @ WEIGHT


@pytest.fixture
def tiny_onnx(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_classifier(), path)
    return path
