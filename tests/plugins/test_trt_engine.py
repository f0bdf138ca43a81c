"""Real TensorRT: build engines from a one-node CoordinateTransfer ONNX and run them with TrtRunner.

Skipped unless TensorRT (with its libraries), a CUDA GPU and the plugin library (TENSORRT_INCLUDE_DIR or
FGDEPLOY_PLUGIN_LIB) are all available. The plugin engine and the inlined-function engine must both
match the NumPy reference (max exact; average within the documented tolerance).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from fgdeploy.backends.trt_support import import_tensorrt
from fgdeploy.errors import BackendUnavailable
from fgdeploy.native.kernels import compare_to_reference

SHAPES = {"heatmaps": (15, 10, 10), "features": (64, 32, 32)}


def _available() -> str | None:
    try:
        import_tensorrt()
    except BackendUnavailable as exc:
        return str(exc)
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU"
    from fgdeploy.native.build import find_plugin_library, find_tensorrt_include

    if find_plugin_library() is None and find_tensorrt_include() is None:
        return "no plugin library and no TensorRT headers to build one"
    return None


REASON = _available()
pytestmark = [pytest.mark.trt, pytest.mark.gpu, pytest.mark.skipif(REASON is not None,
                                                                   reason=f"TensorRT engine tests skipped: {REASON}")]


def _model(path: Path, mode: int, fp16: bool, plugin_attributes: bool) -> Path:
    from fgdeploy.export.onnx_function import make_coordinate_transfer_model

    model = make_coordinate_transfer_model(window=3, mode=mode, dtype=onnx.TensorProto.FLOAT16 if fp16 else
                                           onnx.TensorProto.FLOAT, plugin_attributes=plugin_attributes)
    for value in model.graph.input:  # fixed non-batch dims: the engine profile varies the batch only
        for dim, size in zip(value.type.tensor_type.shape.dim[1:], SHAPES[value.name]):
            dim.dim_value = size
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("fp16", [False, True])
@pytest.mark.parametrize("mode", [0, 1])
@pytest.mark.parametrize("plugin_attributes", [True, False])
def test_trt_engine_matches_reference(tmp_path: Path, mode: int, fp16: bool, plugin_attributes: bool) -> None:
    from fgdeploy.backends.trt_runner import TrtRunner
    from fgdeploy.export.tensorrt import EngineBuildConfig, build_engine
    from fgdeploy.reference.coordinate_transfer import coordinate_transfer, make_coordinate_transfer_inputs

    onnx_path = _model(tmp_path / "ct.onnx", mode, fp16, plugin_attributes)
    cfg = EngineBuildConfig(min_batch=1, opt_batch=4, max_batch=8, workspace_mib=256,
                            require_plugin=plugin_attributes)
    report = build_engine(onnx_path, tmp_path / "ct.engine", cfg)
    if plugin_attributes:
        assert report.op_path == "plugin" and len(report.plugin_layers) == 1
    dtype = np.float16 if fp16 else np.float32
    heat, feat = make_coordinate_transfer_inputs(np.random.default_rng(mode), 5, 15, (10, 10), 64, (32, 32), dtype)
    feat[feat == 0] = 0.5
    with TrtRunner(tmp_path / "ct.engine") as runner:
        out = runner.infer({"heatmaps": heat, "features": feat})["pooled"]
    heat64, feat64 = heat.astype(np.float64), feat.astype(np.float64)
    scale = coordinate_transfer(heat64, np.abs(feat64), 3, 1)
    result = compare_to_reference(out, coordinate_transfer(heat64, feat64, 3, mode), scale, np.dtype(dtype).name, mode)
    assert result["passed"], (report.op_path, result)


def test_trt_int8_engine_from_a_tensorrt_target_export_agrees_with_onnx_runtime(tmp_path: Path) -> None:
    """`fgdeploy export --int8 --int8-target tensorrt` gives a QDQ ONNX TensorRT builds as explicit quantization
    (strongly typed, no precision flags); its answers match ONNX Runtime's on the same int8 graph."""
    import torch

    from fgdeploy.backends.ort_runner import OrtRunner
    from fgdeploy.backends.trt_runner import TrtRunner
    from fgdeploy.checkpoint import CheckpointMeta, save_checkpoint
    from fgdeploy.data.synthetic import generate_synth_birds
    from fgdeploy.export.precision.int8 import Int8Settings
    from fgdeploy.export.exporter import ExportOptions, export_checkpoint, reduce_exported
    from fgdeploy.export.precision import CalibrationOptions, PrecisionOptions
    from fgdeploy.export.tensorrt import EngineBuildConfig, build_engine
    from fgdeploy.models import create_model, load_model_config, with_backbone_options

    data = tmp_path / "birds"
    generate_synth_birds(data, classes=3, images_per_class=8, size=64, seed=0)
    cfg = with_backbone_options(load_model_config("demo"), {"widths": [8, 8, 16, 16, 16]}, input_size=64)
    torch.manual_seed(0)
    classes = ["001.a", "002.b", "003.c"]
    save_checkpoint(tmp_path / "m.pt", create_model(cfg, 3).eval(), CheckpointMeta.for_config(cfg, classes))
    export_checkpoint(tmp_path / "m.pt", tmp_path / "m.onnx", ExportOptions(verify_batches=(2,)))
    settings = Int8Settings.for_target("tensorrt")
    reduce_exported(tmp_path / "m.onnx", tmp_path / "m_int8.onnx",
                    ExportOptions(precision=PrecisionOptions("int8", CalibrationOptions(data, settings=settings))))
    report = build_engine(tmp_path / "m_int8.onnx", tmp_path / "m_int8.engine",
                          EngineBuildConfig(min_batch=1, opt_batch=4, max_batch=8, workspace_mib=512))
    assert report.precision == "int8" and report.sidecar["metadata"]["quantization"]["target"] == "tensorrt"
    images = np.random.default_rng(0).random((4, 3, 64, 64), dtype=np.float32)
    with TrtRunner(tmp_path / "m_int8.engine") as trt_runner, OrtRunner(tmp_path / "m_int8.onnx") as ort_runner:
        got, want = trt_runner.infer({"images": images}), ort_runner.infer({"images": images})
    span = float(np.ptp(want["logits"])) or 1.0
    assert np.abs(got["logits"] - want["logits"]).max() < 0.1 * span   # same int8 graph, other kernels
