"""ONNX Runtime runner: CPU, CUDA and TensorRT execution providers.

The model's precision is whatever the ONNX holds (an fp16 export runs fp16). ``metadata()`` returns
the exporter's ``metadata_props`` decoded (see ``fgdeploy.export.metadata``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fgdeploy.backends.base import RunnerError, TensorSpec
from fgdeploy.backends.onnx_file import OnnxFileRunner, first_line
from fgdeploy.errors import BackendUnavailable, cuda_unavailable
from fgdeploy.text import listed, sentence

logger = logging.getLogger(__name__)

# Short names accepted for execution providers.
PROVIDER_ALIASES: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")

# ONNX Runtime type strings -> numpy dtypes, for the input specs.
_ORT_TYPES: dict[str, np.dtype] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(bool)": np.dtype(np.bool_),
}


def resolve_providers(providers: Sequence[str] | None, device: str | None) -> list[str]:
    """Full EP names in priority order; CPU is always appended as the fallback for unsupported nodes.

    Args:
        providers: names or aliases ("cpu", "cuda", "tensorrt"). Defaults to CUDA when ``device`` is
            "cuda[:K]", else CPU.
        device: "cpu", "cuda" or "cuda:K".
    """
    if not providers:
        providers = ["cuda"] if device and device.startswith("cuda") else ["cpu"]
    names = [PROVIDER_ALIASES.get(p.strip().lower(), p.strip()) for p in providers]
    if "CPUExecutionProvider" not in names:
        names.append("CPUExecutionProvider")
    return list(dict.fromkeys(names))


class OrtRunner(OnnxFileRunner):
    """Runs an .onnx file (or serialized bytes) with ONNX Runtime.

    Args:
        model: path of the .onnx file, or its bytes.
        providers: execution providers, see ``resolve_providers``. Asking for one that is not
            installed raises BackendUnavailable on activation, listing the installed ones.
        device: "cpu" or "cuda[:K]" (K = device id for the CUDA/TensorRT providers). Defaults to "cpu".
        fp16: if given, the precision recorded in the model must match it (checked on activation).
        threads: intra-op threads (CPU). Defaults to ONNX Runtime's choice.
        spin: idle intra-op threads spin, waiting for the next call (ONNX Runtime's default: the lowest latency
            when calls follow each other). False lets them sleep, so other work of the process (a server's HTTP
            handling and decoding) gets the cores between calls.
        debug: also output each CoordinateTransfer's heatmaps input and result
            (``fgdeploy.export.debug_outputs``), for divergence localisation.
        name: label for reports. Defaults to "ort-<provider>-<precision>".
    """

    def __init__(
        self,
        model: str | Path | bytes,
        *,
        providers: Sequence[str] | None = None,
        device: str | None = None,
        fp16: bool | None = None,
        threads: int | None = None,
        spin: bool = True,
        debug: bool = False,
        name: str | None = None,
    ) -> None:
        self.device = device or "cpu"
        self.providers = resolve_providers(providers, self.device)
        self.spin = spin
        short = self.providers[0].replace("ExecutionProvider", "").lower()
        super().__init__(model, fp16=fp16, threads=threads, debug=debug, name=name, default_name=f"ort-{short}")
        self._session: Any = None

    # --- Runner implementation --------------------------------------------------------------------
    def _activate(self) -> None:
        ort = _import_onnxruntime()
        installed = ort.get_available_providers()
        missing = [p for p in self.providers if p not in installed]
        if missing and self.device.startswith("cuda") and "CUDAExecutionProvider" not in installed:
            raise BackendUnavailable(cuda_unavailable(self.device, " for ONNX Runtime (install onnxruntime-gpu)"))
        if missing:
            raise BackendUnavailable(
                f"ONNX Runtime execution provider(s) {', '.join(missing)} are not installed here (available providers "
                f"are: {', '.join(installed)}); install onnxruntime-gpu for CUDA/TensorRT, or use the CPU provider")
        model_bytes = self._load_bytes()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            options.intra_op_num_threads = int(self.threads)
            options.inter_op_num_threads = 1
        if not self.spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(model_bytes, sess_options=options, providers=self._provider_list())
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise RunnerError(
                f"{self._label()}: ONNX Runtime cannot load the model: {sentence(first_line(exc))} "
                "The file is corrupt or not an ONNX model; re-export it with `fgdeploy export`."
            ) from exc
        dropped = [p for p in self.providers if p not in session.get_providers()]
        if dropped:
            raise BackendUnavailable(
                f"{self._label()}: execution provider(s) {listed(dropped)} are installed but failed to start "
                f"(no GPU, or missing CUDA/TensorRT libraries); session has {session.get_providers()}"
            )
        from fgdeploy.export.metadata import decode_metadata

        self._meta = decode_metadata(session.get_modelmeta().custom_metadata_map)
        self._check_precision()
        self._session = session
        self._specs = {i.name: _spec(i) for i in session.get_inputs()}
        self._output_names = [o.name for o in session.get_outputs()]
        if self._explicit_name is None:
            self.name = f"{self.name}-{self._meta.get('precision', 'fp32')}"
        logger.debug("%s: loaded %s with %s", self.name, self._label(), session.get_providers())

    def _deactivate(self) -> None:
        self._session = None

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            arrays = self._session.run(self._output_names, {k: np.ascontiguousarray(v) for k, v in feeds.items()})
        except Exception as exc:
            raise RunnerError(f"{self.name}: inference failed: {first_line(exc)}") from exc
        return dict(zip(self._output_names, arrays))

    # --- helpers ----------------------------------------------------------------------------------
    def _load_bytes(self) -> bytes:
        if not self.debug:
            return self._model_bytes()
        from fgdeploy.export.debug_outputs import add_debug_outputs  # default and --portable exports

        proto, added = add_debug_outputs(self._model_proto())
        logger.debug("%s: debug outputs %s", self._label(), added)
        return proto.SerializeToString()

    def _provider_list(self) -> list[Any]:
        device_id = int(self.device.split(":", 1)[1]) if self.device.startswith("cuda:") else 0
        return [(p, {"device_id": device_id}) if p in _GPU_PROVIDERS else p for p in self.providers]


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - onnxruntime is a dependency
        raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime") from exc
    return onnxruntime


def _spec(node_arg: Any) -> TensorSpec:
    dtype = _ORT_TYPES.get(node_arg.type)
    if dtype is None:
        raise RunnerError(f"input {node_arg.name} has unsupported type {node_arg.type}")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (node_arg.shape or []))
    return TensorSpec(node_arg.name, dtype, shape)
