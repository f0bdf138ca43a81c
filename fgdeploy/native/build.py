"""Build, locate and load fgdeploy's native libraries (sources in ``plugins/``).

Two libraries come from the same CUDA kernel source:

- the **kernel library** (``libfgdeploy_ct_kernels``): the CoordinateTransfer launcher behind a C ABI,
  loaded with ctypes (``fgdeploy.native.kernels``). It needs only nvcc and a CUDA GPU, no TensorRT, so the
  kernel is testable against the torch op and the NumPy reference anywhere;
- the **TensorRT plugin library** (``libfgdeploy_plugins``): the IPluginV3 plugin; compiling it needs
  the TensorRT headers (``TENSORRT_INCLUDE_DIR``) but not the TensorRT libraries.

Builds call nvcc directly (CMake is not needed; ``plugins/CMakeLists.txt`` builds the same files).
Outputs go to ``plugins/build/nvcc/`` (or ``$FGDEPLOY_PLUGIN_BUILD_DIR``) under a name that carries a
hash of the sources, flags and nvcc version, so a stale library is never picked up.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fgdeploy.errors import FgdeployError
from fgdeploy.fileio import current_umask, file_sha256

logger = logging.getLogger(__name__)

PLUGIN_DIR = Path(__file__).resolve().parents[2] / "plugins"
KERNEL_SOURCES: tuple[str, ...] = (
    "coordinate_transfer/coordTransferKernel.cu",
    "coordinate_transfer/coordTransferCapi.cpp",
)
PLUGIN_SOURCES: tuple[str, ...] = (
    "coordinate_transfer/coordTransferKernel.cu",
    "coordinate_transfer/coordTransferPlugin.cpp",
    "common/pluginLogger.cpp",
    "fgdeployPlugins.cpp",
)
HEADERS: tuple[str, ...] = (
    "coordinate_transfer/coordTransferKernel.h",
    "coordinate_transfer/coordTransferPlugin.h",
    "common/pluginLogger.h",
)
DEFAULT_ARCHS: tuple[str, ...] = ("80", "90")  # A100, H100/H200; PTX of the last one is embedded too
ENV_BUILD_DIR = "FGDEPLOY_PLUGIN_BUILD_DIR"
ENV_PLUGIN_LIB = "FGDEPLOY_PLUGIN_LIB"
ENV_TRT_INCLUDE = "TENSORRT_INCLUDE_DIR"
NVCC_TIMEOUT_S = 600
_TRT_INCLUDE_GUESSES = ("/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu",
                        "/usr/local/tensorrt/include", "/opt/tensorrt/include", "/usr/include")


class PluginBuildError(FgdeployError):
    """nvcc is missing, a native library failed to compile, or a built library cannot be loaded."""


# --- toolchain ------------------------------------------------------------------------------------
def find_nvcc() -> Path | None:
    """nvcc from PATH, $CUDA_HOME/bin or /usr/local/cuda/bin, or None."""
    found = shutil.which("nvcc")
    candidates = [found] if found else []
    candidates += [str(Path(os.environ[v]) / "bin" / "nvcc") for v in ("CUDA_HOME", "CUDA_PATH") if v in os.environ]
    candidates.append("/usr/local/cuda/bin/nvcc")
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    return None


def nvcc_version(nvcc: Path) -> str:
    """The 'release X.Y, VX.Y.Z' part of ``nvcc --version``."""
    out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, timeout=60).stdout
    lines = [line for line in out.splitlines() if "release" in line]
    return lines[-1].split("release", 1)[1].strip() if lines else out.strip().splitlines()[-1]


def find_tensorrt_include(explicit: str | Path | None = None) -> Path | None:
    """Directory holding ``NvInferRuntime.h``: ``explicit``, $TENSORRT_INCLUDE_DIR, then usual places."""
    candidates = [explicit] if explicit else []
    if os.environ.get(ENV_TRT_INCLUDE):
        candidates.append(os.environ[ENV_TRT_INCLUDE])
    if not explicit:
        candidates += list(_TRT_INCLUDE_GUESSES)
    for c in candidates:
        if c and (Path(c) / "NvInferRuntime.h").is_file():
            return Path(c)
    return None


def gencode_flags(archs: Sequence[str]) -> list[str]:
    """nvcc flags for SM versions like "80", "90" (PTX of the last one too, for newer GPUs), or "native"."""
    if list(archs) == ["native"]:
        return ["-arch=native"]
    clean = [a.replace("sm_", "").replace(".", "") for a in archs]
    if not clean or not all(a.isdigit() for a in clean):
        raise PluginBuildError(f"CUDA architectures must look like '80' or 'sm_90' (or 'native'), got {list(archs)}")
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in clean]
    flags.append(f"-gencode=arch=compute_{clean[-1]},code=compute_{clean[-1]}")
    return flags


def local_gpu_arch(device: int = 0) -> str | None:
    """SM version of a local CUDA GPU as seen by torch ("90" for H100), or None without one."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return f"{major}{minor}"


# --- building -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildSpec:
    """What to compile into one shared library."""

    name: str                 # library stem, e.g. "libfgdeploy_ct_kernels"
    sources: tuple[str, ...]  # relative to PLUGIN_DIR
    flags: tuple[str, ...]    # extra nvcc flags (include dirs, gencode)


def nvcc_command(nvcc: Path, spec: BuildSpec, output: Path, plugin_dir: Path = PLUGIN_DIR) -> list[str]:
    """The nvcc command line that builds ``spec`` into ``output`` (statically linked cudart)."""
    return [
        str(nvcc), "-std=c++17", "-O3", "-shared", "-Xcompiler=-fPIC,-fvisibility=hidden,-Wall,-Wextra",
        "-I", str(plugin_dir), *spec.flags, "-o", str(output), *(str(plugin_dir / s) for s in spec.sources),
    ]


def _digest(spec: BuildSpec, nvcc: Path, plugin_dir: Path) -> str:
    h = hashlib.sha256()
    for rel in (*spec.sources, *HEADERS):
        h.update(rel.encode())
        h.update((plugin_dir / rel).read_bytes())
    h.update("\0".join(spec.flags).encode())
    h.update(nvcc_version(nvcc).encode())
    return h.hexdigest()[:16]


def build_dir() -> Path:
    """Where built libraries go: $FGDEPLOY_PLUGIN_BUILD_DIR or plugins/build/nvcc."""
    return Path(os.environ.get(ENV_BUILD_DIR) or PLUGIN_DIR / "build" / "nvcc")


def _build(spec: BuildSpec, out_dir: Path | None, force: bool) -> Path:
    nvcc = find_nvcc()
    if nvcc is None:
        raise PluginBuildError("nvcc not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin); install the CUDA "
                               "toolkit or put nvcc on PATH")
    missing = [s for s in (*spec.sources, *HEADERS) if not (PLUGIN_DIR / s).is_file()]
    if missing:
        raise PluginBuildError(f"plugin sources {missing} not found under {PLUGIN_DIR}; the native sources ship "
                               "with a source checkout (pip install -e .), not with a wheel")
    out_dir = Path(out_dir) if out_dir else build_dir()
    output = out_dir / f"{spec.name}-{_digest(spec, nvcc, PLUGIN_DIR)}.so"
    if output.is_file() and not force:
        logger.debug("reusing %s", output)
        return output
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.name}-", suffix=".so", dir=out_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    cmd = nvcc_command(nvcc, spec, tmp)
    logger.info("building %s: %s", output.name, " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=NVCC_TIMEOUT_S)
        if proc.returncode != 0:
            raise PluginBuildError(f"nvcc failed (exit {proc.returncode}) building {output.name}:\n"
                                   f"{(proc.stderr or proc.stdout)[-4000:]}\ncommand: {' '.join(cmd)}")
        os.chmod(tmp, 0o777 & ~current_umask())   # a shared library: readable and executable as the umask allows
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return output


def kernel_build_spec(archs: Sequence[str] | None = None) -> BuildSpec:
    """Spec of the ctypes kernel library for ``archs`` (default: the local GPU, else DEFAULT_ARCHS)."""
    if archs is None:
        local = local_gpu_arch()
        archs = [local] if local else list(DEFAULT_ARCHS)
    return BuildSpec("libfgdeploy_ct_kernels", KERNEL_SOURCES, tuple(gencode_flags(archs)))


def tensorrt_header_version(include: str | Path) -> str | None:
    """"MAJOR.MINOR.PATCH" from ``NvInferVersion.h`` in ``include``, or None."""
    path = Path(include) / "NvInferVersion.h"
    if not path.is_file():
        return None
    values: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "#define":
            values[parts[1]] = parts[2]
    found = []
    for part in ("MAJOR", "MINOR", "PATCH"):
        value = values.get(f"NV_TENSORRT_{part}", "")
        value = values.get(value, value)  # 10.8+ define NV_TENSORRT_MAJOR as TRT_MAJOR_ENTERPRISE
        if not value.isdigit():
            return None
        found.append(value)
    return ".".join(found)


def plugin_build_spec(tensorrt_include: str | Path, archs: Sequence[str] | None = None) -> BuildSpec:
    """Spec of the TensorRT plugin library; the TensorRT headers go in as -isystem (their own warnings)."""
    include = Path(tensorrt_include)
    version = tensorrt_header_version(include) or "unknown"
    # The version is part of the name (find_plugin_library matches it) and of the hashed flags.
    flags = ["-isystem", str(include), *gencode_flags(archs or DEFAULT_ARCHS)]
    return BuildSpec(f"libfgdeploy_plugins-trt{version}", PLUGIN_SOURCES,
                     (*flags, f"-DFGDEPLOY_TRT={version}", "-ldl"))   # dlopen: FGDEPLOY_PLUGIN_AUTOREGISTER


def build_kernel_library(out_dir: str | Path | None = None, archs: Sequence[str] | None = None,
                         force: bool = False) -> Path:
    """Compile (or reuse) the ctypes kernel library; returns its path.

    Raises:
        PluginBuildError: nvcc missing or compilation failed (the message holds nvcc's output).
    """
    return _build(kernel_build_spec(archs), Path(out_dir) if out_dir else None, force)


def build_plugin_library(tensorrt_include: str | Path | None = None, out_dir: str | Path | None = None,
                         archs: Sequence[str] | None = None, force: bool = False) -> Path:
    """Compile (or reuse) the TensorRT plugin library against the headers in ``tensorrt_include``.

    Raises:
        PluginBuildError: no TensorRT headers found, nvcc missing or compilation failed.
    """
    include = find_tensorrt_include(tensorrt_include)
    if include is None:
        raise PluginBuildError(
            f"TensorRT headers (NvInferRuntime.h) not found{f' in {tensorrt_include}' if tensorrt_include else ''}; "
            f"set {ENV_TRT_INCLUDE} to the include/ directory of a TensorRT tarball or of "
            "github.com/NVIDIA/TensorRT at the tag of your TensorRT version (pip wheels ship no headers)")
    return _build(plugin_build_spec(include, archs), Path(out_dir) if out_dir else None, force)


def find_plugin_library(explicit: str | Path | None = None, tensorrt_version: str | None = None) -> Path | None:
    """The TensorRT plugin library to load, or None.

    Order: ``explicit``, $FGDEPLOY_PLUGIN_LIB, the CMake build (plugins/build/libfgdeploy_plugins.so), then
    the newest nvcc build, preferring one built against headers of ``tensorrt_version``'s major.minor.
    """
    for candidate in (explicit, os.environ.get(ENV_PLUGIN_LIB)):
        if candidate:
            path = Path(candidate)
            if not path.is_file():
                raise PluginBuildError(f"plugin library {path} does not exist; build it (see plugins/README.md)")
            return path
    cmake_build = PLUGIN_DIR / "build" / "libfgdeploy_plugins.so"
    if cmake_build.is_file():
        return cmake_build
    built = sorted(build_dir().glob("libfgdeploy_plugins-*.so"), key=lambda p: p.stat().st_mtime)
    if tensorrt_version:
        major_minor = ".".join(tensorrt_version.split(".")[:2])
        matching = [p for p in built if p.name.startswith(f"libfgdeploy_plugins-trt{major_minor}.")]
        built = matching or built
    return built[-1] if built else None


def describe_library(path: str | Path) -> dict[str, Any]:
    """Path, size and sha256 of a built library (for sidecars and ``fgdeploy doctor``)."""
    p = Path(path)
    return {"path": str(p.resolve()), "bytes": p.stat().st_size, "sha256": file_sha256(p)}
