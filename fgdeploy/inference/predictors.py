"""Predictors: what runs a batch of resized uint8 images for ``fgdeploy.inference.local``, and opening a model as one.

``open_predictor`` picks the backend from the model file (checkpoint -> the torch fast path, .onnx ->
ONNX Runtime, .engine -> TensorRT; .onnx on OpenVINO when asked) and returns a ``LoadedModel``: the predictor plus the class names,
part names and visibility threshold the artifact records.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fgdeploy.backends.base import image_input_spec
from fgdeploy.errors import FgdeployError
from fgdeploy.tensors import (
    INPUT_IMAGES, OUTPUT_KEYPOINT_SCORES, OUTPUT_KEYPOINTS, OUTPUT_LOGITS, OUTPUT_PART_BOXES,
)


class Predictor(Protocol):
    """Runs the model on batches of resized uint8 images."""

    input_size: int

    def prepare(self, images: Sequence[np.ndarray]) -> Any:
        """N (S, S, 3) uint8 RGB images -> whatever ``predict`` takes (runs on the assembler thread)."""

    def predict(self, prepared: Any, count: int) -> dict[str, np.ndarray]:
        """Outputs for the first ``count`` images: logits (N, K), keypoints (N, P, 2), scores (N, P).

        A predictor may also offer ``launch(prepared, count) -> handle`` and ``collect(handle) -> outputs``
        (predict = collect of launch); ``run_inference`` then launches batch i+1 before collecting batch i.
        It may also say ``on_gpu = True`` (the default decode-thread count then uses every core).
        """


def default_workers(predictor: Any) -> int:
    """Decode threads when none are asked for: every CPU core when the model runs on a GPU (on the H200
    machine 16 threads decoded, resized and uploaded 2,512 CUB-size JPEGs/s against the fp16 fast path's
    ~1,450 img/s, so 8 would likely fall short); else min(8, cores), since a CPU model needs the cores itself."""
    cores = os.cpu_count() or 1
    return cores if getattr(predictor, "on_gpu", False) else min(8, cores)


class RunnerPredictor:
    """A ``Runner`` behind the predictor interface: float input in [0, 1], NCHW, padded to a fixed batch."""

    def __init__(self, runner: Any, input_size: int | None = None) -> None:
        spec = image_input_spec(runner)
        self.runner = runner
        self.dtype = np.dtype(spec.dtype)
        self.fixed_batch = spec.shape[0] if spec.shape[0] not in (-1, None) else None
        size = spec.shape[-1] if spec.shape[-1] not in (-1, None) else None
        size = size or input_size or runner.metadata().get("input_size")
        if not size:
            raise FgdeployError(f"runner {runner.name}: input size unknown (dynamic input shape and no "
                                f"'input_size' in its metadata); pass the input size explicitly")
        self.input_size = int(size)
        self.on_gpu = str(getattr(runner, "device", "cpu")).startswith("cuda")

    def prepare(self, images: Sequence[np.ndarray]) -> np.ndarray:
        n = len(images)
        batch = np.empty((max(n, self.fixed_batch or 0), 3, self.input_size, self.input_size), np.float32)
        for i, image in enumerate(images):
            batch[i] = image.transpose(2, 0, 1)
        batch[n:] = batch[n - 1]   # a static-batch engine: pad with the last image
        batch /= 255.0             # as the training collate does (float32 division)
        return batch.astype(self.dtype, copy=False)

    def predict(self, prepared: np.ndarray, count: int) -> dict[str, np.ndarray]:
        outputs = self.runner.infer({INPUT_IMAGES: prepared})
        needed = (OUTPUT_LOGITS, OUTPUT_KEYPOINTS, OUTPUT_KEYPOINT_SCORES)
        if missing := [k for k in needed if k not in outputs]:
            raise FgdeployError(f"{self.runner.name}: the model has no output(s) {missing} (it has {sorted(outputs)}), "
                                "so it is not an fgdeploy model; export one with `fgdeploy export`")
        optional = [k for k in (OUTPUT_PART_BOXES,) if k in outputs]   # head/body boxes of part-net models
        return {k: np.asarray(outputs[k])[:count] for k in (*needed, *optional)}


BACKEND_BY_SUFFIX = {".onnx": "ort", ".engine": "trt", ".plan": "trt", ".trt": "trt"}  # anything else: torch


@dataclass
class LoadedModel:
    """An opened model: the predictor plus the labels its artifact records."""

    predictor: Predictor
    name: str                       # e.g. "ort-cpu-fp32", "torch-cuda-fp16-cl-max-autotune"
    class_names: list[str]
    part_names: list[str]
    visibility_threshold: float = 0.5   # keypoint score below which a part counts as not visible
    recorded: dict[str, Any] | None = None   # an export's metadata (source checkpoint, ...); None for torch
    heatmap_size: tuple[int, int] | None = None   # (Hh, Wh) of the keypoint heatmaps, when known


def resolve_backend(model: str | Path, backend: str = "auto") -> str:
    """The backend for ``model``: ``backend`` unless "auto", else from the suffix (.onnx -> ort, .engine -> trt),
    and for another suffix from the file's first bytes (an ONNX model named model.bin -> ort); else torch."""
    from fgdeploy.checkpoint import sniff_model_kind

    if backend != "auto":
        return backend
    suffix = Path(model).suffix.lower()
    if suffix in BACKEND_BY_SUFFIX:
        return BACKEND_BY_SUFFIX[suffix]
    return "ort" if suffix not in (".pt", ".pth") and sniff_model_kind(model) == "ort" else "torch"


def resolve_device(backend: str, device: str = "auto") -> str:
    """"auto" -> "cuda" when the backend can use a GPU here, else "cpu" (OpenVINO: always "cpu", its CPU device).

    Raises:
        ConfigError: an OpenVINO device name (gpu, npu) for another backend.
    """
    from fgdeploy.backends.openvino_runner import is_openvino_device
    from fgdeploy.errors import ConfigError

    if backend == "openvino":
        return "cpu" if device == "auto" else device
    if is_openvino_device(device):
        raise ConfigError(f"--device {device} is an OpenVINO device: use it with --backend openvino (an NVIDIA GPU is "
                          "--device cuda)")
    if device != "auto":
        return device
    if backend == "ort":
        import onnxruntime  # type: ignore[import-untyped]

        return "cuda" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _heatmap_size(net: Any) -> tuple[int, int] | None:
    size = getattr(net, "heatmap_size", None)
    return (int(size[0]), int(size[1])) if size else None


@contextlib.contextmanager
def open_predictor(model: str | Path, backend: str = "auto", *, device: str = "auto", fp16: bool = False,
                   batch: int | None = 64, fast: Any = None, threads: int | None = None,
                   spin: bool = True) -> Iterator[LoadedModel]:
    """Open ``model`` for ``run_inference``; the runner is deactivated on exit.

    Args:
        model: checkpoint (torch), .onnx (ort, openvino) or .engine (trt).
        backend: "auto", "torch", "ort", "trt" or "openvino" (see ``resolve_backend``; auto never picks openvino).
        device: "auto", "cpu", "cuda" or "cuda:K"; openvino: "cpu", "gpu", "npu" (OpenVINO device names).
        fp16: torch: run in half precision; ort/trt: the artifact must be an fp16 export.
        batch: the run's batch size (the torch fast path pads to it when compiled or graphed; None: no padding).
        fast: ``fgdeploy.inference.fastpath.FastPathOptions`` for the torch backend (fp16 is taken from ``fp16``).
        threads: CPU threads for ONNX Runtime or OpenVINO (None: its default).
        spin: ONNX Runtime's idle threads spin-wait for the next call (its default); False: they sleep (a server,
            whose calls come apart and whose cores also serve HTTP and decoding).
    """
    kind = resolve_backend(model, backend)
    device = resolve_device(kind, device)
    if kind == "torch":
        from dataclasses import replace

        from fgdeploy.checkpoint import load_checkpoint
        from fgdeploy.inference.fastpath import FastPathOptions, TorchFastPredictor

        net, meta = load_checkpoint(model)
        options = replace(fast or FastPathOptions(), fp16=fp16)
        predictor = TorchFastPredictor(net, device, options, meta.input_size, batch)
        if batch and predictor.pad_to:   # compile / capture now, before the decode threads start
            predictor.warm_up(batch, iterations=1)
        yield LoadedModel(predictor, f"torch-{device.split(':')[0]}-{options.label}", list(meta.class_names),
                          list(meta.part_names), float(net.config.visibility_threshold),
                          heatmap_size=_heatmap_size(net))
        return
    from fgdeploy.backends import open_runner

    extra: dict[str, Any] = {"threads": threads} if threads and kind in ("ort", "openvino") else {}
    if not spin and kind == "ort":
        extra["spin"] = False
    with open_runner(kind, str(model), device=device, fp16=fp16 or None, **extra) as runner:
        recorded = runner.metadata()
        threshold = (recorded.get("model_config") or {}).get("visibility_threshold", 0.5)
        heat = recorded.get("heatmap_size")
        yield LoadedModel(RunnerPredictor(runner), runner.name, list(recorded.get("class_names") or []),
                          list(recorded.get("part_names") or []), float(threshold), dict(recorded),
                          (int(heat[0]), int(heat[1])) if heat else None)
