"""``fgdeploy doctor``: what this machine can run (torch/CUDA, ONNX Runtime, OpenVINO, tritonclient, TensorRT, nvcc,
plugin libraries).

Always exits 0: it reports, it does not judge. ``--json`` prints the same rows as a JSON list.
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

import click

OK, MISSING, WARN, ERROR = "ok", "missing", "warn", "error"


@dataclass
class Check:
    """One row of the report."""

    component: str
    status: str  # ok | missing | warn | error
    detail: str


def _guard(component: str, fn: Callable[[], Check]) -> Check:
    """Run one probe; an unexpected exception becomes an error row instead of a crash."""
    try:
        return fn()
    except Exception as exc:  # a diagnostic tool must report, not fail
        return Check(component, ERROR, f"{type(exc).__name__}: {exc}")


def _torch() -> list[Check]:
    try:
        import torch
    except ImportError as exc:
        return [Check("torch", MISSING, str(exc)), Check("gpu", MISSING, "no torch to query CUDA")]
    rows = [Check("torch", OK, f"{torch.__version__} (CUDA build {torch.version.cuda or 'none: CPU-only build'})")]
    if not torch.cuda.is_available():
        return rows + [Check("gpu", MISSING, "no CUDA GPU visible to torch")]
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        rows.append(Check(f"gpu {i}", OK, f"{props.name}, sm_{props.major}{props.minor}, "
                                          f"{props.total_memory / 2**30:.1f} GiB"))
    return rows


def _cuda_driver() -> Check:
    from fgdeploy.backends.trt_support import cuda_driver_version

    version = cuda_driver_version()
    return Check("cuda driver", OK, version) if version else Check("cuda driver", MISSING, "libcuda.so.1 not found")


def _onnxruntime() -> Check:
    try:
        import onnxruntime as ort  # type: ignore[import-untyped,unused-ignore]
    except ImportError as exc:
        return Check("onnxruntime", MISSING, str(exc))
    return Check("onnxruntime", OK, f"{ort.__version__}; providers: {', '.join(ort.get_available_providers())}")


def _openvino() -> Check:
    from fgdeploy.backends.openvino_runner import import_openvino
    from fgdeploy.errors import BackendUnavailable

    try:
        ov = import_openvino()
    except BackendUnavailable as exc:
        return Check("openvino", MISSING, str(exc))
    return Check("openvino", OK, f"{ov.get_version()}; devices: {', '.join(ov.Core().available_devices) or 'none'}")


def _tritonclient() -> Check:
    from importlib.metadata import version

    from fgdeploy.deploy.triton import import_model_config
    from fgdeploy.errors import BackendUnavailable

    try:
        import_model_config()
    except BackendUnavailable as exc:
        return Check("tritonclient", MISSING, str(exc))
    return Check("tritonclient", OK, f"{version('tritonclient')} (model_config_pb2 imports)")


def _tensorrt() -> Check:
    from fgdeploy.backends.trt_support import import_tensorrt
    from fgdeploy.errors import BackendUnavailable

    try:
        trt = import_tensorrt()
    except BackendUnavailable as exc:
        return Check("tensorrt", MISSING, str(exc))
    return Check("tensorrt", OK, str(trt.__version__))


def _nvcc() -> Check:
    from fgdeploy.native.build import find_nvcc, nvcc_version

    nvcc = find_nvcc()
    if nvcc is None:
        return Check("nvcc", MISSING, "not on PATH, $CUDA_HOME/bin or /usr/local/cuda/bin: plugin libraries cannot "
                                      "be built here")
    return Check("nvcc", OK, f"{nvcc_version(nvcc)} ({nvcc})")


def _kernel_library(build: bool) -> Check:
    from fgdeploy.native.kernels import load_kernel_library
    from fgdeploy.native.build import PluginBuildError, build_dir, build_kernel_library

    name = "kernel library"
    try:
        if build:
            path = build_kernel_library()
        else:
            built = sorted(build_dir().glob("libfgdeploy_ct_kernels-*.so"), key=lambda p: p.stat().st_mtime)
            if not built:
                return Check(name, MISSING, "not built (run without --no-build to compile it)")
            path = built[-1]
        load_kernel_library(path)
    except PluginBuildError as exc:
        return Check(name, ERROR, str(exc).splitlines()[0])
    return Check(name, OK, f"builds and loads (ctypes): {path}")


def _tensorrt_headers() -> Check:
    from fgdeploy.native.build import ENV_TRT_INCLUDE, find_tensorrt_include, tensorrt_header_version

    include = find_tensorrt_include()
    if include is None:
        return Check("tensorrt headers", MISSING, f"NvInferRuntime.h not found; set {ENV_TRT_INCLUDE} to build "
                                                  "the plugin library")
    return Check("tensorrt headers", OK, f"{tensorrt_header_version(include) or '?'} in {include}")


def _plugin_library(build: bool) -> Check:
    from fgdeploy.backends.trt_support import import_tensorrt, load_plugin_library
    from fgdeploy.errors import FgdeployError
    from fgdeploy.native.build import build_plugin_library, find_plugin_library, find_tensorrt_include

    name = "trt plugin library"
    try:
        try:
            version: str | None = str(import_tensorrt().__version__)
        except FgdeployError:
            version = None
        path = find_plugin_library(tensorrt_version=version)
        if path is None and build and find_tensorrt_include() is not None:
            path = build_plugin_library()
        if path is None:
            return Check(name, MISSING, "not built: cmake -S plugins -B plugins/build -DTENSORRT_INCLUDE_DIR=... "
                                        "&& cmake --build plugins/build")
        if version is None:
            return Check(name, WARN, f"{path} (built; not loaded: TensorRT missing)")
        load_plugin_library(path)
    except FgdeployError as exc:
        return Check(name, ERROR, str(exc).splitlines()[0])
    return Check(name, OK, f"{path} loads; creator fgdeploy::CoordinateTransfer v1 registered")


def collect(build: bool = True) -> list[Check]:
    """All rows, in display order."""
    from fgdeploy import __version__

    rows = [Check("python", OK, f"{platform.python_version()} ({sys.executable})"), Check("fgdeploy", OK, __version__)]
    try:
        rows += _torch()
    except Exception as exc:  # a broken torch install must not hide the other rows
        rows.append(Check("torch", ERROR, f"{type(exc).__name__}: {exc}"))
    for component, probe in (("cuda driver", _cuda_driver), ("onnxruntime", _onnxruntime), ("openvino", _openvino),
                             ("tritonclient", _tritonclient), ("tensorrt", _tensorrt),
                             ("nvcc", _nvcc), ("kernel library", lambda: _kernel_library(build)),
                             ("tensorrt headers", _tensorrt_headers),
                             ("trt plugin library", lambda: _plugin_library(build))):
        rows.append(_guard(component, probe))
    return rows


def render(rows: list[Check]) -> str:
    """Aligned text table."""
    width = max(len(r.component) for r in rows)
    return "\n".join(f"{r.component:<{width}}  {r.status:<7}  {r.detail}" for r in rows)


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@click.option("--no-build", is_flag=True, help="Do not compile the native libraries (nvcc); only look for them.")
def command(as_json: bool, no_build: bool) -> None:
    """Report torch/CUDA, ONNX Runtime, OpenVINO, tritonclient, TensorRT, nvcc and plugin-library status (exit code
    0)."""
    rows = collect(build=not no_build)
    click.echo(json.dumps([asdict(r) for r in rows], indent=2) if as_json else render(rows))
