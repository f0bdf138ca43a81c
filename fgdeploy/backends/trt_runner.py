"""TensorRT runner: a serialized engine (from ``fgdeploy.export.tensorrt``) run with torch CUDA buffers.

``activate`` checks the engine's sidecar against this machine (TensorRT version, GPU architecture;
mismatches raise with the rebuild command), loads the plugin library once per process, deserializes
the engine and creates one execution context and one CUDA stream. ``infer`` binds tensors by name and
runs ``execute_async_v3``; it returns host arrays keyed by the engine's tensor names.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fgdeploy.backends.base import Runner, RunnerError, TensorSpec
from fgdeploy.backends.trt_support import (
    compare_sidecar, dims_tuple, import_tensorrt, load_plugin_library, machine_info, read_sidecar, sidecar_path,
)
from fgdeploy.errors import BackendUnavailable
from fgdeploy.fileio import file_sha256

if TYPE_CHECKING:  # annotations only; the real import is lazy, in activate()
    import tensorrt as trt  # type: ignore[import-not-found,unused-ignore]

logger = logging.getLogger(__name__)

# TensorRT DataType member name -> numpy dtype (members are looked up by name: the enum is lazy).
_NUMPY_DTYPES: dict[str, np.dtype] = {
    "FLOAT": np.dtype(np.float32), "HALF": np.dtype(np.float16), "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64), "INT8": np.dtype(np.int8), "UINT8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}


def numpy_dtype(dtype: trt.DataType) -> np.dtype:
    """numpy dtype of a ``trt.DataType``; RunnerError for types fgdeploy never uses (BF16, FP8, ...)."""
    import tensorrt as trt  # type: ignore[import-not-found,unused-ignore]

    for name, np_dtype in _NUMPY_DTYPES.items():
        if getattr(trt.DataType, name, None) == dtype:
            return np_dtype
    raise RunnerError(f"engine tensor type {dtype} has no numpy equivalent here")


class TrtRunner(Runner):
    """Runs a TensorRT engine file on one CUDA device.

    Args:
        engine: path of the plan file written by ``build_engine`` (its sidecar ``<engine>.json`` next to it).
        device: "cuda" or "cuda:K". Defaults to "cuda".
        fp16: if given, the precision recorded in the sidecar must match it.
        plugin_library: libfgdeploy_plugins.so; default: the sidecar's path if it exists, else
            ``fgdeploy.native.build.find_plugin_library``.
        strict: raise on sidecar mismatches (TensorRT version, GPU architecture) instead of warning.
        name: label for reports. Defaults to "trt-<precision>".
    """

    def __init__(self, engine: str | Path, *, device: str | None = None, fp16: bool | None = None,
                 plugin_library: str | Path | None = None, strict: bool = True, name: str | None = None) -> None:
        self.engine_path = Path(engine)
        self.device = device or "cuda"
        self.fp16 = fp16
        self.plugin_library = Path(plugin_library) if plugin_library else None
        self.strict = strict
        self._explicit_name = name
        super().__init__(name or "trt")
        self._sidecar: dict[str, Any] = {}
        self._engine: trt.ICudaEngine | None = None
        self._context: trt.IExecutionContext | None = None
        self._stream: Any = None  # torch.cuda.Stream
        self._trt_version: str | None = None
        self._specs: dict[str, TensorSpec] = {}
        self._outputs: list[str] = []
        self._batch_range: tuple[int, int] | None = None

    # --- Runner implementation ------------------------------------------------------------------------
    def _activate(self) -> None:
        import_tensorrt()
        import tensorrt as trt  # type: ignore[import-not-found,unused-ignore]

        torch = _import_torch_cuda(self.device)
        device_index = torch.device(self.device).index or 0
        self._trt_version = str(trt.__version__)
        if not self.engine_path.is_file():
            raise RunnerError(f"engine {self.engine_path} does not exist; build it with `fgdeploy export CHECKPOINT "
                              "--engine` or `python -m fgdeploy.export.tensorrt MODEL.onnx`")
        self._sidecar = self._check_sidecar(device_index)
        plugin = self._plugin_library_path()
        if plugin is not None:
            load_plugin_library(plugin)
        with torch.cuda.device(device_index):
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            if engine is None:
                raise RunnerError(f"TensorRT {trt.__version__} cannot deserialize {self.engine_path} (see its log): "
                                  f"wrong TensorRT version or GPU, or plugin library not loaded; "
                                  f"rebuild with: {self._sidecar.get('rebuild_command', 'fgdeploy export --engine')}")
            context = engine.create_execution_context()
            if context is None:
                raise RunnerError(f"{self.engine_path}: cannot create an execution context (out of GPU memory?)")
            self._stream = torch.cuda.Stream(device=device_index)
        self._engine, self._context = engine, context
        self._read_io(engine)
        if self._explicit_name is None:
            self.name = f"trt-{self._sidecar.get('precision', 'fp32')}"
        logger.info("%s: loaded %s on %s", self.name, self.engine_path, self.device)

    def _deactivate(self) -> None:
        self._context = self._engine = self._stream = None
        self._specs, self._outputs = {}, []

    def _input_specs(self) -> dict[str, TensorSpec]:
        return dict(self._specs)

    def _metadata(self) -> dict[str, Any]:
        meta = dict(self._sidecar.get("metadata") or {})
        for key in ("class_names", "part_names", "precision", "preprocessing", "profile"):
            if self._sidecar.get(key) is not None:
                meta[key] = self._sidecar[key]
        return meta

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        self._check_batch(feeds)
        ctx, engine = self._context, self._engine
        assert ctx is not None and engine is not None, "checked by Runner.infer"
        with torch.cuda.stream(self._stream):
            inputs = {n: torch.from_numpy(np.ascontiguousarray(a)).to(self.device, non_blocking=False)
                      for n, a in feeds.items()}
            for n, t in inputs.items():
                if not ctx.set_input_shape(n, tuple(t.shape)):
                    raise RunnerError(f"{self.name}: TensorRT rejected shape {tuple(t.shape)} for input {n}")
                ctx.set_tensor_address(n, t.data_ptr())
            outputs = {}
            for n in self._outputs:
                shape = dims_tuple(ctx.get_tensor_shape(n))
                dtype = getattr(torch, numpy_dtype(engine.get_tensor_dtype(n)).name)
                outputs[n] = torch.empty(shape, dtype=dtype, device=self.device)
                ctx.set_tensor_address(n, outputs[n].data_ptr())
            if not ctx.execute_async_v3(self._stream.cuda_stream):
                raise RunnerError(f"{self.name}: execute_async_v3 failed (see the TensorRT log)")
            self._stream.synchronize()
        return {n: t.cpu().numpy() for n, t in outputs.items()}

    # --- helpers ----------------------------------------------------------------------------------------
    def _check_sidecar(self, device_index: int) -> dict[str, Any]:
        sidecar = read_sidecar(self.engine_path)
        if sidecar is None:
            logger.warning("%s has no sidecar %s: cannot check TensorRT/GPU compatibility; metadata is empty",
                           self.engine_path, sidecar_path(self.engine_path))
            return {}
        plugin = self._plugin_library_path(sidecar)
        check = compare_sidecar(sidecar, machine_info(device_index), file_sha256(plugin) if plugin else None)
        for warning in check.warnings:
            logger.warning("%s: %s", self.engine_path, warning)
        if check.errors:
            message = f"{self.engine_path}: " + "; ".join(check.errors)
            if self.strict:
                raise RunnerError(message)
            logger.warning("%s (strict=False: trying anyway)", message)
        if self.fp16 is not None and sidecar.get("precision") != ("fp16" if self.fp16 else "fp32"):
            raise RunnerError(f"{self.engine_path}: {'fp16' if self.fp16 else 'fp32'} requested but the engine is "
                              f"{sidecar.get('precision')}; build it from an ONNX of that precision")
        return sidecar

    def _plugin_library_path(self, sidecar: Mapping[str, Any] | None = None) -> Path | None:
        if self.plugin_library is not None:
            return self.plugin_library
        recorded = ((sidecar if sidecar is not None else self._sidecar).get("plugin_library") or {}).get("path")
        if recorded and Path(recorded).is_file():
            return Path(recorded)
        from fgdeploy.native.build import find_plugin_library

        return find_plugin_library(tensorrt_version=self._trt_version)

    def _read_io(self, engine: trt.ICudaEngine) -> None:
        import tensorrt as trt  # type: ignore[import-not-found,unused-ignore]

        self._specs, self._outputs = {}, []
        for i in range(engine.num_io_tensors):
            n = engine.get_tensor_name(i)
            if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT:
                shape = dims_tuple(engine.get_tensor_shape(n))
                self._specs[n] = TensorSpec(n, numpy_dtype(engine.get_tensor_dtype(n)), shape)
                lo, _, hi = engine.get_tensor_profile_shape(n, 0)
                self._batch_range = (int(lo[0]), int(hi[0]))
            else:
                self._outputs.append(n)

    def _check_batch(self, feeds: Mapping[str, np.ndarray]) -> None:
        if self._batch_range is None:
            return
        lo, hi = self._batch_range
        for n, a in feeds.items():
            if not lo <= a.shape[0] <= hi:
                raise RunnerError(f"{self.name}: batch {a.shape[0]} of {n} is outside the engine's profile "
                                  f"[{lo}, {hi}]; "
                                  f"split the batch or rebuild with --max-batch {a.shape[0]}")


def _import_torch_cuda(device: str) -> Any:
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailable("the TensorRT runner uses torch CUDA tensors as buffers; install torch") from exc
    if not device.startswith("cuda"):
        raise RunnerError(f"the TensorRT runner runs on a CUDA device, got device={device!r}")
    if not torch.cuda.is_available():
        raise BackendUnavailable(f"no CUDA GPU visible to torch {torch.__version__} (CUDA {torch.version.cuda}); "
                                 "TensorRT needs one")
    return torch
