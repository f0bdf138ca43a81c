"""PyTorch eager runner: an ``nn.Module`` or an fgdeploy checkpoint, CPU/GPU, fp32/fp16.

The model is called as ``model(images)`` and must return a dict of named tensors (the
``PoseNormalizedNet`` contract). Inputs are float32 RGB in [0, 1] (like the ONNX export, whose
fp16 variant also takes float32 and casts inside); floating outputs come back as float32 numpy.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fgdeploy.backends.base import Runner, RunnerError, TensorSpec
from fgdeploy.errors import BackendUnavailable, cuda_unavailable
from fgdeploy.tensors import INPUT_IMAGES, OP_DOMAIN

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

_CT_SCHEMA_NAME = f"{OP_DOMAIN}::coordinate_transfer"  # torch.ops.fgdeploy.coordinate_transfer


class TorchRunner(Runner):
    """Runs a PyTorch model in eager mode.

    Args:
        model: an ``nn.Module`` (left as it is: converted copies are made for fp16/GPU, and its
            train/eval mode is restored on deactivation), or the path of an fgdeploy checkpoint.
        device: "cpu", "cuda" or "cuda:K". Defaults to "cpu".
        fp16: run the model in half precision. Defaults to False.
        outputs: output names to return. Defaults to every tensor the model returns.
        debug: also return each CoordinateTransfer call's heatmaps input and result
            (names from ``fgdeploy.export.debug_outputs``), for divergence localisation.
        name: label for reports. Defaults to "torch-<device>-<precision>".
    """

    def __init__(
        self,
        model: Any,
        *,
        device: str | None = None,
        fp16: bool | None = None,
        outputs: Sequence[str] | None = None,
        debug: bool = False,
        name: str | None = None,
    ) -> None:
        self.source = Path(model) if isinstance(model, str) else model
        self.device = device or "cpu"
        self.fp16 = bool(fp16)
        self.outputs = list(outputs) if outputs is not None else None
        self.debug = debug
        precision = "fp16" if self.fp16 else "fp32"
        super().__init__(name or f"torch-{self.device.split(':')[0]}-{precision}")
        self._model: Any = None
        self._was_training: bool | None = None
        self._meta: dict[str, Any] = {}

    # --- Runner implementation --------------------------------------------------------------------
    def _activate(self) -> None:
        torch = _import_torch()
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable(cuda_unavailable(self.device))
        if isinstance(self.source, Path):
            from fgdeploy.checkpoint import load_checkpoint, resolve_checkpoint

            self.source = resolve_checkpoint(self.source)   # a run folder: its best.pt
            model, meta = load_checkpoint(self.source)
            self._meta = _checkpoint_metadata(meta, self.source)
        elif isinstance(self.source, torch.nn.Module):
            model = self.source
            if self.fp16 or self.device != "cpu":
                model = copy.deepcopy(model)  # leave the caller's module as it is
            else:
                self._was_training = model.training
        else:
            raise RunnerError(
                f"torch runner needs an nn.Module or a checkpoint path, got {type(self.source).__name__}"
            )
        model = model.to(self.device)
        if self.fp16:
            model = model.half()
        self._model = model.eval()
        self._meta.update(_module_metadata(model))
        self._meta["precision"] = "fp16" if self.fp16 else "fp32"

    def _deactivate(self) -> None:
        if self._was_training is not None and isinstance(self.source, _import_torch().nn.Module):
            self.source.train(self._was_training)
        self._model = None
        self._was_training = None
        if self.device.startswith("cuda"):
            _import_torch().cuda.empty_cache()

    def _input_specs(self) -> dict[str, TensorSpec]:
        size = self._meta.get("input_size")
        shape = (-1, 3, int(size), int(size)) if size else (-1, 3, -1, -1)
        return {INPUT_IMAGES: TensorSpec(INPUT_IMAGES, np.dtype(np.float32), shape)}

    def _metadata(self) -> dict[str, Any]:
        return dict(self._meta)

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = _import_torch()
        dtype = torch.float16 if self.fp16 else torch.float32
        images = torch.from_numpy(np.ascontiguousarray(feeds[INPUT_IMAGES])).to(self.device, dtype)
        capture = CoordinateTransferCapture() if self.debug else None
        with torch.inference_mode():
            if capture is not None:
                with capture:
                    result = self._model(images)
            else:
                result = self._model(images)
            if self.device.startswith("cuda"):
                torch.cuda.synchronize(self.device)
        if not isinstance(result, Mapping):
            raise RunnerError(f"{self.name}: the model must return a dict of named tensors, got {type(result).__name__}")
        names = self.outputs if self.outputs is not None else list(result)
        unknown = [n for n in names if n not in result]
        if unknown:
            raise RunnerError(f"{self.name}: model has no output(s) {unknown}; it returns {sorted(result)}")
        out = {n: _to_numpy(result[n]) for n in names}
        if capture is not None:
            out.update({k: _to_numpy(v) for k, v in capture.tensors().items()})
        return out


class CoordinateTransferCapture:
    """Records the heatmaps input and the output of every ``fgdeploy`` custom-op call, in call order."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        records: list[tuple[Any, Any]] = []

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
                out = func(*args, **(kwargs or {}))
                if func._schema.name == _CT_SCHEMA_NAME:
                    records.append((args[0].detach().clone(), out.detach().clone()))
                return out

        self._mode = _Mode()
        self._records = records

    def __enter__(self) -> CoordinateTransferCapture:
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._mode.__exit__(*exc)

    def tensors(self) -> dict[str, Any]:
        from fgdeploy.export.debug_outputs import debug_heatmaps_name, debug_part_features_name

        out: dict[str, Any] = {}
        for k, (heatmaps, pooled) in enumerate(self._records):
            out[debug_heatmaps_name(k)] = heatmaps
            out[debug_part_features_name(k)] = pooled
        return out


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a dependency
        raise BackendUnavailable("PyTorch is not installed: pip install torch") from exc
    return torch


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach()
    if tensor.is_floating_point():
        tensor = tensor.float()
    return tensor.cpu().numpy().copy()


def _module_metadata(model: Any) -> dict[str, Any]:
    """What the module itself can tell: input and heatmap size, config."""
    meta: dict[str, Any] = {}
    for attr in ("input_size", "heatmap_size"):
        try:
            value = getattr(model, attr)
        except Exception:  # a property that needs more than the module has
            continue
        if value is not None:
            meta[attr] = list(value) if isinstance(value, tuple) else value
    return meta


def _checkpoint_metadata(meta: Any, path: Path) -> dict[str, Any]:
    """CheckpointMeta -> the same keys the ONNX export records."""
    import dataclasses

    is_instance = dataclasses.is_dataclass(meta) and not isinstance(meta, type)
    values = dataclasses.asdict(meta) if is_instance else dict(vars(meta))
    out = {k: values[k] for k in ("class_names", "part_names", "input_size", "stage", "epoch",
                                 "fgdeploy_version", "model_config") if k in values}
    if "mean" in values and "std" in values:
        out["normalisation"] = {"mean": list(values["mean"]), "std": list(values["std"]), "applied": "in_graph"}
    if values.get("sha256"):
        out["source_sha256"] = values["sha256"]
    out["source_checkpoint"] = path.name
    return out
