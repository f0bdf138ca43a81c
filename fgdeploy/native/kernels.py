"""ctypes access to the CoordinateTransfer CUDA kernel (``libfgdeploy_ct_kernels``), no TensorRT needed.

``load_kernel_library()`` builds the library with nvcc if needed (``fgdeploy.native.build``) and returns a
``KernelLibrary``: ``forward`` runs the kernel on torch CUDA tensors (current stream), ``forward_host``
runs the kernel's per-element code on the CPU on numpy arrays. ``compare_to_reference`` states the
kernel's numerical contract (also in plugins/coordinate_transfer/README.md).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fgdeploy.native.build import PluginBuildError, build_kernel_library

if TYPE_CHECKING:
    import torch

KERNEL_ABI_VERSION = 2  # must equal kABI_VERSION in coordTransferCapi.cpp
_DTYPE_CODES = {"float32": 0, "float16": 1}  # kDTYPE_* in coordTransferCapi.cpp


class KernelLibrary:
    """ctypes view of ``libfgdeploy_ct_kernels``; ``forward`` runs the CUDA kernel on torch tensors."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            lib = ctypes.CDLL(str(self.path))
        except OSError as exc:
            raise PluginBuildError(f"cannot load kernel library {self.path}: {exc}; rebuild it with "
                                   "fgdeploy.native.build.build_kernel_library(force=True)") from exc
        i64, i32, vp = ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p
        lib.fgdeploy_ct_abi_version.restype = i32
        lib.fgdeploy_ct_abi_version.argtypes = []
        lib.fgdeploy_ct_error_string.restype = ctypes.c_char_p
        lib.fgdeploy_ct_error_string.argtypes = [i32]
        lib.fgdeploy_ct_check_args.restype = ctypes.c_char_p
        lib.fgdeploy_ct_check_args.argtypes = [vp, vp, vp, *[i64] * 7, i32, i32]
        lib.fgdeploy_ct_forward.restype = i32
        lib.fgdeploy_ct_forward.argtypes = [i32, vp, vp, vp, *[i64] * 7, i32, i32, vp, i32]
        lib.fgdeploy_ct_forward_host.restype = i32
        lib.fgdeploy_ct_forward_host.argtypes = [i32, vp, vp, vp, *[i64] * 7, i32, i32]
        version = lib.fgdeploy_ct_abi_version()
        if version != KERNEL_ABI_VERSION:
            raise PluginBuildError(f"kernel library {self.path} has C ABI version {version}, this fgdeploy expects "
                                   f"{KERNEL_ABI_VERSION}; rebuild it")
        self._lib = lib

    def error_string(self, code: int) -> str:
        """CUDA's name for a cudaError_t value."""
        return (self._lib.fgdeploy_ct_error_string(code) or b"?").decode()

    def check_args(self, heatmaps: int, features: int, output: int, dims: Sequence[int], window: int,
                   mode: int) -> str | None:
        """The launcher's own argument check (no CUDA call): None when valid, else the reason.

        Args:
            heatmaps, features, output: device addresses (0 = null).
            dims: (N, P, C, Hh, Wh, Hf, Wf).
        """
        reason = self._lib.fgdeploy_ct_check_args(heatmaps, features, output, *dims, window, mode)
        return reason.decode() if reason else None

    def launch(self, dtype: str, heatmaps: int, features: int, output: int, dims: Sequence[int], window: int,
               mode: int, stream: int = 0, device: int = -1) -> int:
        """Enqueue the kernel on raw device addresses; returns the cudaError_t value (0 = success).

        ``device`` (>= 0) is made current for the launch and restored; -1 keeps the current device.
        """
        if dtype not in _DTYPE_CODES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPE_CODES)}, got {dtype!r}")
        return int(self._lib.fgdeploy_ct_forward(_DTYPE_CODES[dtype], heatmaps, features, output, *dims, window,
                                                 mode, stream or None, device))

    def forward_host(self, heatmaps: Any, features: Any, window: int = 3, mode: int = 0) -> Any:
        """Run the kernel's per-element code on the CPU on numpy arrays (no GPU needed; for tests).

        Args:
            heatmaps: (N, P, Hh, Wh) float32 or float16 array; features: (N, C, Hf, Wf), same dtype.

        Returns:
            (N, P, C) array of the features' dtype.

        Raises:
            ValueError: bad shapes/dtypes, or the launcher's argument check failed (its reason).
        """
        import numpy as np

        heat, feat = np.ascontiguousarray(heatmaps), np.ascontiguousarray(features)
        if heat.ndim != 4 or feat.ndim != 4 or heat.shape[0] != feat.shape[0]:
            raise ValueError(f"expected (N, P, Hh, Wh) and (N, C, Hf, Wf) arrays, got {heat.shape} and {feat.shape}")
        if heat.dtype != feat.dtype or heat.dtype.name not in _DTYPE_CODES:
            raise ValueError(f"both arrays must be float32 or float16, got {heat.dtype} and {feat.dtype}")
        out = np.empty((heat.shape[0], heat.shape[1], feat.shape[1]), dtype=feat.dtype)
        dims = (heat.shape[0], heat.shape[1], feat.shape[1], *heat.shape[2:], *feat.shape[2:])
        ptrs = (heat.ctypes.data, feat.ctypes.data, out.ctypes.data)
        code = self._lib.fgdeploy_ct_forward_host(_DTYPE_CODES[heat.dtype.name], *ptrs, *dims, window, mode)
        if code != 0:
            raise ValueError(f"CoordinateTransfer host path failed: {self.check_args(*ptrs, dims, window, mode)}")
        return out

    def forward(self, heatmaps: torch.Tensor, features: torch.Tensor, window: int = 3, mode: int = 0,
                out: torch.Tensor | None = None) -> torch.Tensor:
        """Run the kernel on the current torch CUDA stream (asynchronously, like a torch op).

        Args:
            heatmaps: (N, P, Hh, Wh) CUDA tensor, float32 or float16.
            features: (N, C, Hf, Wf) CUDA tensor of the same dtype and device.
            window, mode: as in docs/method.md 4a.
            out: optional contiguous (N, P, C) output tensor.

        Returns:
            (N, P, C) pooled features, dtype of ``features``.

        Raises:
            ValueError: bad shapes, dtypes or devices; RuntimeError: the launch failed (CUDA's message).
        """
        import torch

        if heatmaps.dim() != 4 or features.dim() != 4 or heatmaps.shape[0] != features.shape[0]:
            raise ValueError(f"expected heatmaps (N, P, Hh, Wh) and features (N, C, Hf, Wf) with one N, got "
                             f"{tuple(heatmaps.shape)} and {tuple(features.shape)}")
        if heatmaps.dtype != features.dtype or str(features.dtype).replace("torch.", "") not in _DTYPE_CODES:
            raise ValueError(f"heatmaps and features must both be float32 or float16, got {heatmaps.dtype} "
                             f"and {features.dtype}")
        if not (heatmaps.is_cuda and features.is_cuda) or heatmaps.device != features.device:
            raise ValueError(f"both tensors must be on one CUDA device, got {heatmaps.device} and {features.device}")
        n, p = heatmaps.shape[:2]
        c = features.shape[1]
        heat, feat = heatmaps.contiguous(), features.contiguous()
        if out is None:
            out = torch.empty((n, p, c), dtype=features.dtype, device=features.device)
        elif tuple(out.shape) != (n, p, c) or out.dtype != features.dtype or not out.is_contiguous():
            raise ValueError(f"out must be a contiguous {features.dtype} tensor of shape {(n, p, c)}")
        dims = (n, p, c, *heat.shape[2:], *feat.shape[2:])
        stream = torch.cuda.current_stream(features.device).cuda_stream
        code = self.launch(str(features.dtype).replace("torch.", ""), heat.data_ptr(), feat.data_ptr(),
                           out.data_ptr(), dims, window, mode, stream, features.device.index or 0)
        if code != 0:
            reason = self.check_args(heat.data_ptr(), feat.data_ptr(), out.data_ptr(), dims, window, mode)
            raise RuntimeError(f"CoordinateTransfer kernel failed: {self.error_string(code)} (cudaError {code})"
                               + (f": {reason}" if reason else ""))
        return out


def load_kernel_library(path: str | Path | None = None, build: bool = True,
                        archs: Sequence[str] | None = None) -> KernelLibrary:
    """Load the kernel library at ``path``, or build (or reuse) one for ``archs`` first.

    Raises:
        PluginBuildError: nothing to load and ``build`` is False, or the build/load failed.
    """
    if path is None:
        if not build:
            raise PluginBuildError("no kernel library path given and build=False")
        path = build_kernel_library(archs=archs)
    return KernelLibrary(path)


AVERAGE_REL_TOL = 1e-6  # average mode: |out - exact| <= 1e-6 * mean |x| over the window (+ 1 fp16 ulp in fp16)


def compare_to_reference(out: Any, exact: Any, scale: Any, dtype: str, mode: int) -> dict[str, Any]:
    """Check an op result against the float64 reference under the kernel's documented tolerances.

    Args:
        out: (N, P, C) result of the kernel (or torch op) in ``dtype``.
        exact: float64 reference computed from the same (already rounded) inputs cast to float64.
        scale: float64 reference of ``|features|`` in average mode (the mean magnitude in each window),
            which makes the bound meaningful where the mean itself is near zero. Unused for max mode.
        dtype: "float32" or "float16".
        mode: 0 (max: must be exact) or 1 (average).

    Returns:
        ``passed``, ``exact_match``, ``max_abs_err`` and ``max_err_ratio`` (largest error / allowed error).
    """
    import numpy as np

    got = np.asarray(out, dtype=np.float64)
    ref = np.asarray(exact, dtype=np.float64)
    diff = np.abs(got - ref)
    if mode == 0:
        allowed = np.zeros_like(ref)
    else:
        allowed = AVERAGE_REL_TOL * np.abs(np.asarray(scale, dtype=np.float64))
        if dtype == "float16":  # rounding the fp32 mean to fp16: half an ulp; allow one
            allowed = allowed + np.spacing(np.abs(ref).astype(np.float16)).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(allowed > 0, diff / np.where(allowed > 0, allowed, 1.0), np.where(diff > 0, np.inf, 0.0))
    return {
        "passed": bool(np.all(diff <= allowed)),
        "exact_match": bool(np.all(diff == 0)),
        "max_abs_err": float(diff.max(initial=0.0)),
        "max_err_ratio": float(ratio.max(initial=0.0)),
    }
