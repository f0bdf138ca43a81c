"""Fixtures for the native-code tests: nvcc, TensorRT headers, the built kernel library.

Skips here are expected on most machines (no GPU, no TensorRT); their reasons are printed at the end
of the run so a reader sees *why* the GPU/TensorRT checks did not run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fgdeploy.native.kernels import KernelLibrary, load_kernel_library
from fgdeploy.native.build import ENV_TRT_INCLUDE, find_nvcc, local_gpu_arch

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def nvcc() -> Path:
    path = find_nvcc()
    if path is None:
        pytest.skip("nvcc not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin): CUDA compile checks skipped")
    return path


@pytest.fixture(scope="session")
def trt_include() -> Path:
    value = os.environ.get(ENV_TRT_INCLUDE)
    if not value:
        pytest.skip(f"{ENV_TRT_INCLUDE} not set: TensorRT plugin compile checks skipped (point it at the include/ "
                    "directory of TensorRT 10.x or 11.x headers)")
    path = Path(value)
    if not (path / "NvInferRuntime.h").is_file():
        pytest.fail(f"{ENV_TRT_INCLUDE}={value} has no NvInferRuntime.h")
    return path


@pytest.fixture(scope="session")
def kernel_lib(nvcc: Path) -> KernelLibrary:
    """The ctypes kernel library, built once (cached by source hash) for the local GPU or sm_80."""
    return load_kernel_library(archs=[local_gpu_arch() or "80"])


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # type: ignore[no-untyped-def]
    reasons = set()
    for report in terminalreporter.stats.get("skipped", []):
        if "tests/plugins/" in str(getattr(report, "nodeid", "")) or "plugins" in str(report.location[0]):
            longrepr = report.longrepr
            reasons.add(longrepr[2] if isinstance(longrepr, tuple) else str(longrepr))
    if reasons:
        terminalreporter.write_sep("-", "plugins/TensorRT checks skipped")
        for reason in sorted(reasons):
            terminalreporter.write_line(f"  {reason.removeprefix('Skipped: ')}")
