"""The TensorRT plugin sources against real TensorRT headers (TENSORRT_INCLUDE_DIR), without TensorRT libraries.

- g++ -fsyntax-only of every plugin source (all IPluginV3 overrides must match the headers' pure virtuals);
- a negative control: the same check fails when an override (enqueue) is removed;
- the plugin library built with nvcc is driven through getCreators by tests/plugins/plugin_harness.cpp
  (creator identity, field validation, serialization round trip, types, formats).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from fgdeploy.native.build import PLUGIN_DIR, build_plugin_library, tensorrt_header_version

HERE = Path(__file__).resolve().parent
PLUGIN_CPP = ("coordinate_transfer/coordTransferPlugin.cpp", "fgdeployPlugins.cpp", "common/pluginLogger.cpp")
CUDA_INCLUDE = Path("/usr/local/cuda/include")


def _gxx() -> str:
    gxx = shutil.which("g++") or shutil.which("c++")
    if gxx is None:
        pytest.skip("no host C++ compiler (g++/c++) for the TensorRT header checks")
    return gxx


def _syntax_cmd(gxx: str, trt_include: Path, source: Path) -> list[str]:
    # -isystem: the TensorRT headers' own deprecation warnings must not trip -Werror.
    return [gxx, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-isystem", str(trt_include),
            "-isystem", str(CUDA_INCLUDE), str(source)]


@pytest.mark.parametrize("rel", PLUGIN_CPP)
def test_plugin_source_compiles_against_tensorrt_headers(trt_include: Path, rel: str) -> None:
    proc = subprocess.run(_syntax_cmd(_gxx(), trt_include, PLUGIN_DIR / rel), capture_output=True, text=True,
                          timeout=300)
    version = tensorrt_header_version(trt_include)
    assert proc.returncode == 0, f"{rel} vs TensorRT {version} headers:\n{proc.stderr[-4000:]}"


def test_header_check_fails_when_an_override_is_missing(trt_include: Path, tmp_path: Path) -> None:
    copy = tmp_path / "plugins"
    shutil.copytree(PLUGIN_DIR, copy, ignore=shutil.ignore_patterns("build"))
    header = copy / "coordinate_transfer" / "coordTransferPlugin.h"
    text = header.read_text()
    start = text.index("    int32_t enqueue(")
    header.write_text(text[:start] + text[text.index("override;", start) + len("override;\n"):])
    source = copy / "coordinate_transfer" / "coordTransferPlugin.cpp"
    text = source.read_text()
    start = text.index("int32_t CoordTransferPlugin::enqueue(")
    source.write_text(text[:start] + text[text.index("IPluginV3* CoordTransferPlugin::attachToContext"):])
    proc = subprocess.run(_syntax_cmd(_gxx(), trt_include, source), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "abstract" in proc.stderr


def test_plugin_library_behaves_through_get_creators(trt_include: Path, nvcc: Path, tmp_path: Path) -> None:
    library = build_plugin_library(trt_include, archs=["80"])
    exports = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True).stdout
    assert " T getCreators" in exports and " T setLoggerFinder" in exports
    needed = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True).stdout
    assert "libnvinfer" not in needed and "libcudart" not in needed  # loadable without linking TensorRT
    harness = tmp_path / "plugin_harness"
    build = subprocess.run([_gxx(), "-std=c++17", "-Wall", "-Wextra", "-Werror", "-isystem", str(trt_include),
                            "-isystem", str(CUDA_INCLUDE), str(HERE / "plugin_harness.cpp"), "-o", str(harness),
                            "-ldl"], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([str(harness), str(library)], capture_output=True, text=True, timeout=120)
    failures = [line for line in run.stdout.splitlines() if line.startswith("FAIL")]
    assert run.returncode == 0 and not failures, run.stdout + run.stderr
    assert run.stdout.count("PASS") >= 40
