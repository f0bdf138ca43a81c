"""open_runner: name -> runner class, lazily; errors for unknown or missing backends."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import fgdeploy.backends as backends
from fgdeploy.backends import available_backends, open_runner, random_feeds, warm_up
from fgdeploy.errors import BackendUnavailable, ConfigError


def test_open_runner_maps_aliases_to_classes(tiny_onnx):
    runner = open_runner("onnx", str(tiny_onnx), providers=["cpu"], threads=1)
    assert type(runner).__name__ == "OrtRunner" and not runner.is_active
    with runner:
        warm_up(runner, batch=2)
        assert runner.last_latency_ms is not None
    assert type(open_runner("pytorch", object())).__name__ == "TorchRunner"


def test_open_runner_unknown_backend_lists_valid():
    with pytest.raises(ConfigError, match=r"unknown backend 'tensorflow'; valid backends: onnx, onnxruntime, openvino, ort, ov, pytorch, tensorrt, torch, trt$"):
        open_runner("tensorflow", "x")


def test_open_runner_missing_package_is_backend_unavailable(monkeypatch):
    monkeypatch.setitem(backends.BACKENDS, "fake", ("fgdeploy.backends.fake", "Fake", ("no_such_pkg_xyz",)))
    assert "fake" not in available_backends()
    with pytest.raises(BackendUnavailable, match=r"no_such_pkg_xyz.*not installed"):
        open_runner("fake", "x")


def test_available_backends_lists_installed_ones():
    assert {"torch", "ort"} <= set(available_backends())


def test_random_feeds_follow_specs():
    from fgdeploy.backends.base import TensorSpec

    feeds = random_feeds({"images": TensorSpec("images", np.dtype(np.float16), (-1, 3, 2, 2))}, batch=4)
    assert feeds["images"].shape == (4, 3, 2, 2) and feeds["images"].dtype == np.float16
    assert feeds["images"].std() > 0


def test_importing_backends_pulls_in_no_runtime():
    code = ("import sys, fgdeploy.backends; "
            "print(any(m in sys.modules for m in ('onnxruntime', 'tensorrt', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
