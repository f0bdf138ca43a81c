"""Inference backends behind one runner interface (``fgdeploy.backends.base.Runner``).

``open_runner`` is the one place mapping a backend name to its runner class. Backend modules are
imported only when a runner of that kind is opened, so importing this package pulls in neither
onnxruntime nor tensorrt (nor torch).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fgdeploy.backends.base import Runner, RunnerError, TensorSpec
from fgdeploy.errors import BackendUnavailable, ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "BACKENDS", "BACKEND_ALIASES", "Runner", "RunnerError", "TensorSpec", "available_backends",
    "open_runner", "random_feeds", "warm_up",
]


# name -> (module, class, python packages the backend needs). Read-only after import.
BACKENDS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "torch": ("fgdeploy.backends.torch_runner", "TorchRunner", ("torch",)),
    "ort": ("fgdeploy.backends.ort_runner", "OrtRunner", ("onnxruntime",)),
    "trt": ("fgdeploy.backends.trt_runner", "TrtRunner", ("tensorrt",)),
    "openvino": ("fgdeploy.backends.openvino_runner", "OpenVinoRunner", ("openvino",)),
}
# What to install for a backend whose package is missing (the error says it; also the runners' own errors and doctor).
INSTALL_HINTS: dict[str, str] = {
    "openvino": "pip install 'fgdeploy[openvino]' (or pip install openvino)",
    "trt": "pip install 'fgdeploy[trt]' where NVIDIA's index is reachable (TensorRT 10.7+; it needs an NVIDIA GPU), "
           "or the wheel for your CUDA major, e.g. `pip install tensorrt-cu13` (or tensorrt-cu12), or a TensorRT "
           "tarball with its lib/ on LD_LIBRARY_PATH and its python wheel installed",
}
# Other spellings accepted by open_runner and the CLI ("onnx:model.onnx" means ONNX Runtime).
BACKEND_ALIASES: dict[str, str] = {"onnx": "ort", "onnxruntime": "ort", "pytorch": "torch", "tensorrt": "trt",
                                   "ov": "openvino"}


def _canonical(kind: str) -> str:
    kind = kind.strip().lower()
    kind = BACKEND_ALIASES.get(kind, kind)
    if kind not in BACKENDS:
        valid = sorted(set(BACKENDS) | set(BACKEND_ALIASES))
        raise ConfigError(f"unknown backend {kind!r}; valid backends: {', '.join(valid)}")
    return kind


def available_backends() -> list[str]:
    """Backend names whose Python packages are installed here (not whether a GPU is present)."""
    return [
        name for name, (_, _, packages) in BACKENDS.items()
        if all(importlib.util.find_spec(p) is not None for p in packages)
    ]


def open_runner(
    kind: str,
    artifact: Any,
    *,
    device: str | None = None,
    fp16: bool | None = None,
    providers: Sequence[str] | None = None,
    **options: Any,
) -> Runner:
    """Create (but do not activate) a runner of backend ``kind`` for ``artifact``.

    Args:
        kind: "torch", "ort" (alias "onnx"), "trt", "openvino" (alias "ov") or any name registered in ``BACKENDS``.
        artifact: what the backend runs: an ``nn.Module`` or checkpoint path (torch), an .onnx path or
            bytes (ort, openvino), an engine path (trt).
        device: "cpu", "cuda" or "cuda:K"; for openvino "cpu", "gpu", "npu" or an OpenVINO device name.
            Defaults to "cpu" (ort: chosen from ``providers``).
        fp16: run in half precision (torch). ONNX/TensorRT artifacts carry their own precision; asking
            for fp16 on an fp32 ONNX is an error raised on activation. Defaults to None (as stored).
        providers: ONNX Runtime execution providers ("cpu", "cuda", "tensorrt" or full EP names).
        **options: passed on to the runner class (e.g. ``debug=True``, ``threads=2``).

    Returns:
        An inactive runner; use it as a context manager.

    Raises:
        ConfigError: unknown backend name.
        BackendUnavailable: the backend's Python package is not installed.
    """
    name = _canonical(kind)
    module_name, class_name, packages = BACKENDS[name]
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        hint = f": {INSTALL_HINTS[name]}" if name in INSTALL_HINTS else ""
        raise BackendUnavailable(
            f"backend {name!r} needs the Python package(s) {', '.join(missing)}, which are not installed here"
            f"{hint}; installed backends: {', '.join(available_backends())}"
        )
    cls = getattr(importlib.import_module(module_name), class_name)
    kwargs: dict[str, Any] = dict(options)
    if device is not None:
        kwargs["device"] = device
    if fp16 is not None:
        kwargs["fp16"] = fp16
    if providers is not None:
        kwargs["providers"] = list(providers)
    if isinstance(artifact, str):
        artifact = Path(artifact)
    logger.debug("opening %s runner %s.%s with %s", name, module_name, class_name, sorted(kwargs))
    runner: Runner = cls(artifact, **kwargs)
    return runner


def random_feeds(specs: dict[str, TensorSpec], batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Uniform [0, 1) inputs matching ``specs``, dynamic dims (-1) set to ``batch`` (first) or 1."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, spec in specs.items():
        shape = [d if d not in (-1, None) else (batch if i == 0 else 1) for i, d in enumerate(spec.shape)]
        feeds[name] = rng.random(shape, dtype=np.float32).astype(spec.dtype)
    return feeds


def warm_up(runner: Runner, batch: int = 1, iterations: int = 2) -> None:
    """Run ``iterations`` random batches so lazy initialisation is not timed or compared."""
    feeds = random_feeds(runner.input_specs(), batch=batch)
    for _ in range(iterations):
        runner.infer(feeds)
