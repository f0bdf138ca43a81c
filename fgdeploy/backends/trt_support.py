"""TensorRT pieces shared by the engine builder (``fgdeploy.export.tensorrt``) and ``TrtRunner``.

- ``import_tensorrt``: the only ``import tensorrt`` (lazy, with an install hint when missing);
- ``load_plugin_library``: registers ``libfgdeploy_plugins.so`` once per process;
- the engine **sidecar** (``<engine>.json``): what the engine was built with and for, written by the
  builder and compared with the machine by the runner (``compare_sidecar`` explains mismatches).

How the plugin library is found and loaded, and why once per process: ``docs/deploy.md`` (TensorRT).
"""

from __future__ import annotations

import ctypes
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from fgdeploy.backends import INSTALL_HINTS
from fgdeploy.errors import BackendUnavailable, FgdeployError
from fgdeploy.tensors import OP_NAME, OP_VERSION, PLUGIN_NAMESPACE

logger = logging.getLogger(__name__)

SIDECAR_FORMAT = "fgdeploy-trt-engine"
SIDECAR_VERSION = 1
INSTALL_HINT = INSTALL_HINTS["trt"]

# Plugin libraries registered in this process: path -> handle. TensorRT's plugin registry is itself
# process-wide and refuses to load a library twice, so this mirror of it must be process-wide too.
_LOADED_PLUGIN_LIBRARIES: dict[str, Any] = {}


class PluginLibraryError(FgdeployError):
    """The TensorRT plugin library is missing, fails to load, or lacks the CoordinateTransfer creator."""


def import_tensorrt() -> ModuleType:
    """Import and return the ``tensorrt`` module (callers then ``import tensorrt as trt`` for typing).

    Raises:
        BackendUnavailable: not installed, its libraries fail to load, or only type stubs are present.
    """
    try:
        import tensorrt  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise BackendUnavailable(f"TensorRT is not available ({exc}); {INSTALL_HINT}") from exc
    except OSError as exc:  # e.g. libnvinfer.so.10: cannot open shared object file
        raise BackendUnavailable(
            f"TensorRT is installed but its libraries fail to load ({exc}); {INSTALL_HINT}") from exc
    if not hasattr(tensorrt, "Builder"):  # `tensorrt-stubs` alone leaves an empty namespace package
        raise BackendUnavailable(f"the `tensorrt` module at {list(getattr(tensorrt, '__path__', []))} has no Builder "
                                 f"(type stubs only?); {INSTALL_HINT}")
    return tensorrt


def tensorrt_version() -> str:
    """Version string of the importable TensorRT ("10.13.0.35"); BackendUnavailable without one."""
    return str(import_tensorrt().__version__)


def tensorrt_major() -> int:
    """Major version of the importable TensorRT (10, 11, ...)."""
    return int(tensorrt_version().split(".")[0])


def load_plugin_library(path: str | Path) -> None:
    """Register the plugin library with TensorRT (once per process) and check its creator is there.

    Raises:
        PluginLibraryError: the file is missing, TensorRT cannot load it, or the creator
            ``fgdeploy::CoordinateTransfer`` version 1 is not registered afterwards.
    """
    import_tensorrt()
    import tensorrt as trt  # type: ignore[import-not-found,unused-ignore]

    resolved = str(Path(path).resolve())
    if resolved in _LOADED_PLUGIN_LIBRARIES:
        return
    if not Path(resolved).is_file():
        raise PluginLibraryError(f"plugin library {resolved} does not exist; build it (plugins/README.md)")
    registry = trt.get_plugin_registry()
    before = registry.get_creator(OP_NAME, OP_VERSION, PLUGIN_NAMESPACE)
    try:
        handle = registry.load_library(resolved)
    except Exception as exc:  # the binding may raise instead of returning None
        raise PluginLibraryError(f"TensorRT could not load the plugin library {resolved}: {exc}") from exc
    registered = registry.get_creator(OP_NAME, OP_VERSION, PLUGIN_NAMESPACE)
    if handle is None and before is None and registered is None:
        raise PluginLibraryError(
            f"TensorRT could not load the plugin library {resolved} (see the TensorRT log above); it must be built "
            f"against the headers of TensorRT {trt.__version__} and this CUDA major")
    if handle is None and before is None:   # FGDEPLOY_PLUGIN_AUTOREGISTER=1: the library registered itself on load
        logger.info("%s registered its creator when loaded (FGDEPLOY_PLUGIN_AUTOREGISTER=1)", resolved)
    elif handle is None:
        logger.warning("%s not loaded: a %s::%s creator was already registered in this process; using that one",
                       resolved, PLUGIN_NAMESPACE, OP_NAME)
    if registered is None:
        raise PluginLibraryError(f"{resolved} loaded but registers no {PLUGIN_NAMESPACE}::{OP_NAME} version "
                                 f"{OP_VERSION} creator; is it libfgdeploy_plugins.so?")
    _LOADED_PLUGIN_LIBRARIES[resolved] = handle
    logger.info("TensorRT plugin library %s registered", resolved)


def dims_tuple(dims: Any) -> tuple[int, ...]:
    """A ``trt.Dims`` (indexable, sized; -1 = dynamic) as a tuple of ints."""
    return tuple(int(dims[i]) for i in range(len(dims)))


# --- machine description ----------------------------------------------------------------------------
def cuda_driver_version() -> str | None:
    """CUDA driver API version ("13.0") from libcuda, or None without a driver."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
        value = ctypes.c_int(0)
        if libcuda.cuDriverGetVersion(ctypes.byref(value)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return f"{value.value // 1000}.{(value.value % 1000) // 10}"


def machine_info(device: int = 0) -> dict[str, Any]:
    """TensorRT/CUDA versions and the GPU (name, compute capability) of CUDA device ``device``."""
    try:
        trt_version: str | None = tensorrt_version()
    except BackendUnavailable:
        trt_version = None
    info: dict[str, Any] = {
        "tensorrt_version": trt_version,
        "cuda_runtime": None, "cuda_driver": cuda_driver_version(), "gpu_name": None, "compute_capability": None,
    }
    try:
        import torch
    except ImportError:
        return info
    info["cuda_runtime"] = torch.version.cuda
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device)
        info["gpu_name"] = torch.cuda.get_device_name(device)
        info["compute_capability"] = f"{major}.{minor}"
    return info


# --- the sidecar ------------------------------------------------------------------------------------
def sidecar_path(engine_path: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def read_sidecar(engine_path: str | Path) -> dict[str, Any] | None:
    """The engine's sidecar, or None when there is none.

    Raises:
        FgdeployError: the sidecar exists but is not an fgdeploy engine sidecar.
    """
    path = sidecar_path(engine_path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise FgdeployError(f"engine sidecar {path} is not valid JSON ({exc}); rebuild the engine") from exc
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise FgdeployError(f"{path} is not an fgdeploy engine sidecar (format != {SIDECAR_FORMAT!r}); rebuild")
    return data


@dataclass
class SidecarCheck:
    """Result of comparing a sidecar with this machine: errors stop loading, warnings are logged."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return not self.errors


def _sm(cc: Any) -> str:
    return f"sm_{str(cc).replace('.', '')}" if cc else "an unknown GPU"


def compare_sidecar(sidecar: Mapping[str, Any], machine: Mapping[str, Any],
                    plugin_sha256: str | None = None) -> SidecarCheck:
    """Compare what the engine was built with (``sidecar``) against ``machine`` (see ``machine_info``).

    Errors: another TensorRT version or GPU architecture (TensorRT refuses or misbehaves). Warnings:
    another GPU model of the same architecture, CUDA major, or plugin library build.
    """
    check = SidecarCheck()
    built, here = sidecar.get("machine", {}), machine
    rebuild = sidecar.get("rebuild_command") or "fgdeploy export CHECKPOINT --engine"
    trt_differs = built.get("tensorrt_version") != here.get("tensorrt_version")
    cc_differs = built.get("compute_capability") != here.get("compute_capability")
    if trt_differs or cc_differs:
        check.errors.append(
            f"engine built for {_sm(built.get('compute_capability'))} with TensorRT {built.get('tensorrt_version')}; "
            f"this machine is {_sm(here.get('compute_capability'))} with TensorRT {here.get('tensorrt_version')}: "
            f"rebuild with: {rebuild}")
    elif built.get("gpu_name") != here.get("gpu_name"):
        check.warnings.append(f"engine built on {built.get('gpu_name')}, running on {here.get('gpu_name')} (same "
                              f"{_sm(here.get('compute_capability'))}): works, but tactics were timed elsewhere; "
                              f"for best speed rebuild with: {rebuild}")
    major = [str(v).split(".")[0] if v else None for v in (built.get("cuda_runtime"), here.get("cuda_runtime"))]
    if None not in major and major[0] != major[1]:
        check.warnings.append(f"engine built with CUDA {built.get('cuda_runtime')}, torch here uses CUDA "
                              f"{here.get('cuda_runtime')}; the plugin library must match TensorRT's CUDA major")
    recorded = (sidecar.get("plugin_library") or {}).get("sha256")
    if recorded and plugin_sha256 and recorded != plugin_sha256:
        check.warnings.append("the plugin library differs from the one the engine was built with (sha256 "
                              f"{recorded[:12]} vs {plugin_sha256[:12]}); if the kernel changed, rebuild with: "
                              f"{rebuild}")
    return check
