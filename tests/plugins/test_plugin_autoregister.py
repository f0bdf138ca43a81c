"""libfgdeploy_plugins.so loaded by a plain dlopen, as Triton's TensorRT backend loads `plugins=` libraries.

Needs nvcc and TensorRT headers (TENSORRT_INCLUDE_DIR), not TensorRT's libraries: a fake libnvinfer with the
real soname (tests/plugins/fake_nvinfer.cpp) stands in for the one a server has loaded, and records what the
plugin library registers. Without FGDEPLOY_PLUGIN_AUTOREGISTER=1 it registers nothing (TensorRT's loadLibrary
path, which calls getCreators, must not find the creator registered already).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fgdeploy.native.build import build_plugin_library, tensorrt_header_version

HERE = Path(__file__).resolve().parent
CUDA_INCLUDE = Path("/usr/local/cuda/include")


@pytest.fixture(scope="module")
def binaries(trt_include: Path, nvcc: Path, tmp_path_factory) -> tuple[Path, Path, Path]:
    gxx = shutil.which("g++") or shutil.which("c++")
    if gxx is None:
        pytest.skip("no host C++ compiler (g++/c++) for the plugin registration check")
    out = tmp_path_factory.mktemp("autoregister")
    major = (tensorrt_header_version(trt_include) or "10").split(".")[0]
    fake = out / f"libnvinfer.so.{major}"
    common = [gxx, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-isystem", str(trt_include), "-isystem",
              str(CUDA_INCLUDE)]
    for cmd in ([*common, "-shared", "-fPIC", str(HERE / "fake_nvinfer.cpp"), f"-Wl,-soname,{fake.name}", "-o",
                 str(fake)],
                [*common, str(HERE / "autoregister_harness.cpp"), "-o", str(out / "harness"), "-ldl"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
    return build_plugin_library(trt_include, archs=["80"]), fake, out / "harness"


def _run(harness: Path, nvinfer: str, library: Path, autoregister: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "FGDEPLOY_PLUGIN_AUTOREGISTER"}
    if autoregister is not None:
        env["FGDEPLOY_PLUGIN_AUTOREGISTER"] = autoregister
    return subprocess.run([str(harness), nvinfer, str(library)], capture_output=True, text=True, timeout=60, env=env)


def test_dlopen_registers_the_creator_only_when_asked(binaries):
    library, fake, harness = binaries
    asked = _run(harness, str(fake), library, "1")
    assert asked.returncode == 0, asked.stdout + asked.stderr
    assert asked.stdout.strip() == "REGISTERED CoordinateTransfer/1/fgdeploy as fgdeploy;"
    for value in (None, "0"):   # default: loadLibrary (getCreators) stays the only way
        plain = _run(harness, str(fake), library, value)
        assert plain.returncode == 0 and plain.stdout.strip() == "REGISTERED", plain.stdout + plain.stderr


def test_without_tensorrt_loaded_it_says_so_and_does_not_crash(binaries):
    library, _, harness = binaries
    alone = _run(harness, "-", library, "1")
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert "no libnvinfer is loaded in this process" in alone.stderr and "not LD_PRELOAD" in alone.stderr
