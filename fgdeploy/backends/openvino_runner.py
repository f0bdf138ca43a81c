"""OpenVINO runner: an fgdeploy ONNX export on Intel CPUs, integrated GPUs and NPUs (``pip install openvino``).

OpenVINO reads standard ONNX ops only: a default export (custom ``fgdeploy::CoordinateTransfer`` node plus its
local function) crashes OpenVINO 2026.4's reader with a segmentation fault. So ``activate`` never hands it such
a graph: a default export is made portable in memory first (``fgdeploy.export.portable``, the function body
inlined with onnx's inliner); a ``fgdeploy export --portable`` file goes in as it is.

Precision: OpenVINO computes in its device's preferred type unless told otherwise (bf16 on CPUs with AVX-512
BF16 or AMX, f16 on GPUs), which moves keypoints and logits away from the exported model. The runner asks for
f32 inference (``INFERENCE_PRECISION_HINT``) unless ``inference_precision`` says otherwise, so an fp32 export
gives fp32 results, as ONNX Runtime does; an fp16 or int8 export still runs what its graph holds.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fgdeploy.backends import INSTALL_HINTS
from fgdeploy.backends.base import RunnerError, TensorSpec
from fgdeploy.backends.onnx_file import OnnxFileRunner, first_line
from fgdeploy.errors import BackendUnavailable

logger = logging.getLogger(__name__)

DEVICE_ALIASES = {"auto": "CPU", "cpu": "CPU"}   # fgdeploy's --device spellings -> OpenVINO device names
PRECISIONS = ("f32", "bf16", "f16")              # values of ``inference_precision``


def is_openvino_device(device: str) -> bool:
    """True for a device name only OpenVINO has (gpu, npu, GPU.1, ...: Intel devices), which fgdeploy's other
    backends refuse (an NVIDIA GPU is ``cuda``)."""
    return device.lower().startswith(("gpu", "npu"))


def openvino_device(device: str | None) -> str:
    """OpenVINO's device name for an fgdeploy ``--device``: auto/cpu -> CPU; GPU, GPU.1, NPU, ... as given
    (upper case). CUDA names are refused: OpenVINO runs on Intel devices (and any x86/ARM CPU)."""
    if not device:
        return "CPU"
    name = DEVICE_ALIASES.get(device.strip().lower(), device.strip().upper())
    if name.startswith("CUDA"):
        raise RunnerError(f"--device {device}: OpenVINO does not run on CUDA GPUs; use --device cpu, gpu or npu "
                          "(Intel devices), or --backend ort/trt for an NVIDIA GPU")
    return name


class OpenVinoRunner(OnnxFileRunner):
    """Runs an fgdeploy .onnx file (default or ``--portable`` export, or its bytes) with OpenVINO.

    Args:
        model: path of the .onnx file, or its bytes.
        device: fgdeploy or OpenVINO device name: "cpu" (default), "gpu", "GPU.1", "npu", ... (see
            ``openvino_device``); it must be in ``openvino.Core().available_devices``.
        fp16: if given, the precision recorded in the model must match it (checked on activation).
        threads: CPU inference threads (``INFERENCE_NUM_THREADS``). Defaults to OpenVINO's choice.
        inference_precision: "f32" (default: what the exported graph says), "bf16" or "f16" (faster on hardware
            that has them, results move further from the export), or None for OpenVINO's device default.
        debug: also output each CoordinateTransfer's heatmaps input and result (as ``OrtRunner``).
        name: label for reports. Defaults to "ov-<device>-<precision>".
    """

    def __init__(self, model: str | Path | bytes, *, device: str | None = None, fp16: bool | None = None,
                 threads: int | None = None, inference_precision: str | None = "f32", debug: bool = False,
                 name: str | None = None) -> None:
        if inference_precision is not None and inference_precision not in PRECISIONS:
            raise RunnerError(f"inference_precision {inference_precision!r}: use one of {', '.join(PRECISIONS)} or "
                              "None (OpenVINO's default)")
        self.device = openvino_device(device)
        self.inference_precision = inference_precision
        super().__init__(model, fp16=fp16, threads=threads, debug=debug, name=name,
                         default_name=f"ov-{self.device.lower()}")
        self._compiled: Any = None
        self._request: Any = None
        self._graph_outputs: list[str] = []
        self.converted_on_the_fly = False   # True when a default export was made portable in memory

    # --- Runner implementation --------------------------------------------------------------------
    def _activate(self) -> None:
        ov = import_openvino()
        core = ov.Core()
        available = list(core.available_devices)
        base = self.device.split(".", 1)[0]
        if self.device not in available and base not in {d.split(".", 1)[0] for d in available}:
            raise BackendUnavailable(f"OpenVINO device {self.device} is not available here (available: "
                                     f"{', '.join(available) or 'none'}); use --device cpu, or install the device's "
                                     "driver")
        proto = self._model_proto()
        from fgdeploy.export.metadata import decode_metadata

        self._meta = decode_metadata({p.key: p.value for p in proto.metadata_props})
        self._check_precision()
        data = self._portable_bytes(proto)
        try:
            model = core.read_model(io.BytesIO(data))
            compiled = core.compile_model(model, self.device, self._config(ov))
        except Exception as exc:  # openvino raises RuntimeError subclasses with long multi-line texts
            raise RunnerError(f"{self._label()}: OpenVINO cannot load the model: {first_line(exc)}") from exc
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._specs = {}
        for port in compiled.inputs:
            shape = tuple(d.get_length() if d.is_static else -1 for d in port.get_partial_shape())
            self._specs[port.get_any_name()] = TensorSpec(port.get_any_name(), _numpy_dtype(port.get_element_type()),
                                                          shape)
        self._output_names = _output_names(compiled.outputs, self._graph_outputs)
        if self._explicit_name is None:
            suffix = "" if self.inference_precision == "f32" else f"-exec-{self.inference_precision or 'default'}"
            self.name = f"ov-{self.device.lower()}-{self._meta.get('precision', 'fp32')}{suffix}"
        logger.debug("%s: compiled %s on %s (%s)", self.name, self._label(), self.device,
                     "made portable in memory" if self.converted_on_the_fly else "portable file")

    def _deactivate(self) -> None:
        self._request = None
        self._compiled = None

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            self._request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
        except Exception as exc:
            raise RunnerError(f"{self.name}: inference failed: {first_line(exc)}") from exc
        return {name: np.array(self._request.get_output_tensor(i).data, copy=True)
                for i, name in enumerate(self._output_names)}

    # --- helpers ----------------------------------------------------------------------------------
    def _portable_bytes(self, proto: Any) -> bytes:
        """The graph OpenVINO gets: standard ops only (never a custom-domain node: its reader crashes on them)."""
        from fgdeploy.export.debug_outputs import add_debug_outputs
        from fgdeploy.export.portable import is_portable, make_portable

        if not is_portable(proto):
            self.converted_on_the_fly = True
            logger.info("%s: not a portable export; inlining its CoordinateTransfer function for OpenVINO (export "
                        "with --portable to skip this step)", self._label())
            proto = make_portable(proto)
        if self.debug:   # after inlining: the portable metadata names the op's tensors
            proto, added = add_debug_outputs(proto)
            logger.debug("%s: debug outputs %s", self._label(), added)
        self._graph_outputs = [o.name for o in proto.graph.output]
        return proto.SerializeToString()

    def _config(self, ov: Any) -> dict[str, Any]:
        import openvino.properties as props
        import openvino.properties.hint as hints

        config: dict[str, Any] = {hints.performance_mode: hints.PerformanceMode.LATENCY}
        if self.inference_precision is not None and self.device.startswith(("CPU", "GPU")):
            config[hints.inference_precision] = getattr(ov.Type, self.inference_precision)
        if self.threads and self.device.startswith("CPU"):
            config[props.inference_num_threads] = int(self.threads)
        return config


def import_openvino() -> Any:
    """The ``openvino`` module, or BackendUnavailable saying what to install."""
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailable("the OpenVINO backend needs the openvino package: "
                                 f"{INSTALL_HINTS['openvino']}") from exc
    return openvino


def _output_names(ports: Any, graph_outputs: list[str]) -> list[str]:
    """The ONNX output name of each compiled output port. OpenVINO merges an Identity's output into its source
    tensor, so a port can carry several names (``get_any_name`` may return the inner one): take the name the ONNX
    graph lists as an output."""
    names = []
    for port in ports:
        known = [n for n in graph_outputs if n in port.get_names() and n not in names]
        names.append(known[0] if known else port.get_any_name())
    return names


def _numpy_dtype(element_type: Any) -> np.dtype:
    try:
        return np.dtype(element_type.to_dtype())
    except Exception as exc:  # types without a numpy equivalent (bf16, ...)
        raise RunnerError(f"model input of OpenVINO type {element_type} has no numpy equivalent") from exc
