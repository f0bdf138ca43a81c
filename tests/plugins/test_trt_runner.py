"""TrtRunner without TensorRT/GPU: sidecar checks and their messages, and clean failures when unavailable."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fgdeploy.backends import trt_support
from fgdeploy.backends.base import RunnerError
from fgdeploy.backends.trt_runner import TrtRunner, numpy_dtype
from fgdeploy.backends.trt_support import SIDECAR_FORMAT, compare_sidecar, read_sidecar
from fgdeploy.errors import BackendUnavailable, FgdeployError

from .fake_tensorrt import make_fake_tensorrt

REBUILD = "python -m fgdeploy.export.tensorrt /m/model.onnx --engine /m/model.engine --max-batch 32"
H100 = {"tensorrt_version": "10.13.0.35", "compute_capability": "9.0", "gpu_name": "NVIDIA H100 80GB HBM3",
        "cuda_runtime": "12.8"}


def _sidecar(**machine: Any) -> dict[str, Any]:
    return {"format": SIDECAR_FORMAT, "machine": {**H100, **machine}, "rebuild_command": REBUILD,
            "plugin_library": {"sha256": "a" * 64}, "precision": "fp16"}


def test_compare_sidecar_same_machine_is_clean() -> None:
    check = compare_sidecar(_sidecar(), H100, plugin_sha256="a" * 64)
    assert check and check.errors == [] and check.warnings == []


def test_compare_sidecar_explains_version_and_architecture_mismatch_with_rebuild_command() -> None:
    here = {**H100, "tensorrt_version": "11.4.0.106", "compute_capability": "8.0", "gpu_name": "NVIDIA A100"}
    check = compare_sidecar(_sidecar(), here)
    assert not check
    assert check.errors == [f"engine built for sm_90 with TensorRT 10.13.0.35; this machine is sm_80 with TensorRT "
                            f"11.4.0.106: rebuild with: {REBUILD}"]


@pytest.mark.parametrize("here, sha, expect", [
    ({"gpu_name": "NVIDIA H200"}, "a" * 64, "engine built on NVIDIA H100 80GB HBM3, running on NVIDIA H200"),
    ({"cuda_runtime": "13.0"}, "a" * 64, "built with CUDA 12.8, torch here uses CUDA 13.0"),
    ({}, "b" * 64, "plugin library differs from the one the engine was built with"),
])
def test_compare_sidecar_warns_on_soft_mismatches(here: dict[str, Any], sha: str, expect: str) -> None:
    check = compare_sidecar(_sidecar(), {**H100, **here}, plugin_sha256=sha)
    assert check and len(check.warnings) == 1 and expect in check.warnings[0]


def test_read_sidecar_missing_invalid_and_foreign(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    assert read_sidecar(engine) is None
    side = tmp_path / "m.engine.json"
    side.write_text("{not json")
    with pytest.raises(FgdeployError, match="not valid JSON"):
        read_sidecar(engine)
    side.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(FgdeployError, match="not an fgdeploy engine sidecar"):
        read_sidecar(engine)
    side.write_text(json.dumps(_sidecar()))
    assert read_sidecar(engine)["precision"] == "fp16"


def test_trt_runner_activation_reports_missing_tensorrt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    runner = TrtRunner(tmp_path / "m.engine")
    with pytest.raises(BackendUnavailable, match="TensorRT is not available"):
        runner.activate()
    assert not runner.is_active


def test_trt_runner_needs_a_cuda_device(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import torch

    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt())
    with pytest.raises(RunnerError, match="runs on a CUDA device, got device='cpu'"):
        TrtRunner(tmp_path / "m.engine", device="cpu").activate()
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="no CUDA GPU visible"):
            TrtRunner(tmp_path / "m.engine").activate()


def test_numpy_dtype_maps_tensorrt_types(monkeypatch: pytest.MonkeyPatch) -> None:
    trt = make_fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    assert numpy_dtype(trt.DataType.HALF) == np.float16 and numpy_dtype(trt.DataType.FLOAT) == np.float32
    assert numpy_dtype(trt.DataType.INT64) == np.int64


def test_trt_runner_batch_outside_profile_names_the_fix(tmp_path: Path) -> None:
    runner = TrtRunner(tmp_path / "m.engine")
    runner._batch_range = (1, 8)
    with pytest.raises(RunnerError, match=r"batch 16 of images is outside the engine's profile \[1, 8\].*"
                                          r"--max-batch 16"):
        runner._check_batch({"images": np.zeros((16, 3, 4, 4), np.float32)})


def test_machine_info_without_tensorrt_or_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    info = trt_support.machine_info()
    assert info["tensorrt_version"] is None
    assert set(info) == {"tensorrt_version", "cuda_runtime", "cuda_driver", "gpu_name", "compute_capability"}
