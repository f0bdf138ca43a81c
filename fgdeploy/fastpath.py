"""Fast PyTorch inference without TensorRT: fp16, channels_last, cuDNN autotune, torch.compile, CUDA graphs.

``optimize_for_inference`` wraps a ``PoseNormalizedNet`` into a callable that takes a batch, does the
input conversion on the device (uint8 NHWC -> float in [0, 1] -> model dtype/layout) and returns the
model's outputs. Every option is a flag, so each can be measured on its own (``bench/gpu_speed.py``).
The CoordinateTransfer custom op has a fake (meta) kernel and a vectorised torch implementation, so
``torch.compile(fullgraph=True)`` traces the whole model without a graph break.

``TorchFastPredictor`` puts that callable behind ``fgdeploy.infer``'s predictor interface: batches
travel to the GPU as pinned uint8 (4x fewer bytes than float32) and are padded to one shape when a
compiled or graphed callable would otherwise recompile or recapture for the last partial batch.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fgdeploy.errors import ConfigError
from fgdeploy.tensors import MODEL_OUTPUTS

logger = logging.getLogger(__name__)

# torch.compile modes; "none" = eager. "reduce-overhead" and "max-autotune" use inductor's own CUDA graphs.
COMPILE_MODES: tuple[str, ...] = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_INDUCTOR_GRAPH_MODES = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}

InferFn = Callable[[Tensor], dict[str, Tensor]]


@dataclass(frozen=True)
class FastPathOptions:
    """Which speed-ups to apply (each off by default, so the plain path is the reference)."""

    fp16: bool = False                  # weights and activations in float16
    channels_last: bool = False         # NHWC memory format for convolutions
    compile_mode: str = "none"          # one of COMPILE_MODES
    cuda_graphs: bool = False           # capture one CUDA graph per input shape and replay it
    cudnn_benchmark: bool = True        # let cuDNN time its convolution algorithms (GPU only)
    compile_backend: str = "inductor"   # torch.compile backend ("aot_eager" checks tracing without codegen)

    @property
    def label(self) -> str:
        """Short name for reports, e.g. "fp16-cl-max-autotune-graphs"."""
        parts = ["fp16" if self.fp16 else "fp32"] + (["cl"] if self.channels_last else [])
        parts += [self.compile_mode] if self.compile_mode != "none" else ["eager"]
        return "-".join(parts + (["graphs"] if self.cuda_graphs else []))


class _InferenceModule(nn.Module):
    """Input conversion + model + output selection, as one module so compile sees (and fuses) all of it."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, channels_last: bool, outputs: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype
        self.channels_last = channels_last
        self.outputs = tuple(outputs)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        if images.dtype == torch.uint8:           # (N, S, S, 3) as decoded -> (N, 3, S, S) in [0, 1]
            images = images.permute(0, 3, 1, 2).float() / 255.0
        images = images.to(self.dtype)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        out = self.model(images.contiguous(memory_format=fmt))
        return {k: out[k] for k in self.outputs}


def optimize_for_inference(
    model: nn.Module, device: str | torch.device, fp16: bool = False, channels_last: bool = False,
    compile_mode: str | None = None, cuda_graphs: bool = False, *, cudnn_benchmark: bool = True,
    compile_backend: str = "inductor", outputs: Sequence[str] = MODEL_OUTPUTS,
) -> InferFn:
    """Prepare ``model`` for fast inference and return ``fn(images) -> {name: tensor}``.

    Args:
        model: a ``PoseNormalizedNet`` (or any module returning a dict with ``outputs``); it is moved
            to ``device`` and converted in place (pass a copy to keep the original).
        device: "cpu", "cuda", "cuda:K".
        fp16: convert weights to float16 (activations follow).
        channels_last: NHWC weights and activations.
        compile_mode: None/"none" (eager) or a ``torch.compile`` mode (``COMPILE_MODES``); compiled with
            ``fullgraph=True, dynamic=False``, so a graph break is an error, not a silent slowdown.
        cuda_graphs: capture and replay one CUDA graph per input shape (CUDA only). With the inductor
            modes that capture graphs themselves, their no-graph variant is compiled and captured here.
        cudnn_benchmark: run with ``torch.backends.cudnn.benchmark`` on (set per call, then restored).
        compile_backend: ``torch.compile`` backend.
        outputs: output names to return.

    Returns:
        ``fn(images)``: ``images`` is (N, 3, S, S) float in [0, 1] or (N, S, S, 3) uint8 RGB, on any
        device; outputs are tensors on ``device`` in the model's dtype, owned by the caller.

    Raises:
        ConfigError: unknown compile mode, or CUDA graphs / CUDA device asked for without CUDA.
    """
    fn = build_inference_fn(model, device, fp16, channels_last, compile_mode, compile_backend, outputs, cuda_graphs)
    if cuda_graphs:
        fn = CudaGraphed(fn)
    return with_cudnn_benchmark(fn, cudnn_benchmark and torch.device(device).type == "cuda")


def build_inference_fn(model: nn.Module, device: str | torch.device, fp16: bool = False,
                       channels_last: bool = False, compile_mode: str | None = None,
                       compile_backend: str = "inductor", outputs: Sequence[str] = MODEL_OUTPUTS,
                       cuda_graphs: bool = False) -> InferFn:
    """The converted (and compiled) module, without CUDA graphs or cuDNN flags; see ``optimize_for_inference``.

    ``cuda_graphs`` only selects the no-graph variant of inductor modes that capture graphs
    themselves, so ``CudaGraphed`` can wrap the result.
    """
    device = torch.device(device)
    mode = compile_mode or "none"
    if mode not in COMPILE_MODES:
        raise ConfigError(f"compile mode {mode!r} is not one of {list(COMPILE_MODES)}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device} requested but CUDA is not available here; use device 'cpu'")
    if cuda_graphs and device.type != "cuda":
        raise ConfigError("cuda_graphs needs a CUDA device; drop --cuda-graphs or use --device cuda")
    dtype = torch.float16 if fp16 else torch.float32
    model = model.eval().to(device=device, dtype=dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    fn: Any = _InferenceModule(model, dtype, channels_last, outputs).eval()
    if mode != "none":
        if cuda_graphs:
            mode = _INDUCTOR_GRAPH_MODES.get(mode, mode)
        inductor_mode = None if mode == "default" or compile_backend != "inductor" else mode
        fn = torch.compile(fn, mode=inductor_mode, fullgraph=True, dynamic=False, backend=compile_backend)
    return fn


def with_cudnn_benchmark(fn: InferFn, benchmark: bool) -> InferFn:
    """``fn`` called under ``torch.no_grad()`` with cuDNN autotuning on (if ``benchmark``) for the call."""
    def run(images: Tensor) -> dict[str, Tensor]:
        with torch.no_grad(), _cudnn_benchmark(benchmark):
            return fn(images)

    return run


@contextlib.contextmanager
def _cudnn_benchmark(on: bool) -> Iterator[None]:
    """Turn cuDNN autotuning on for the call and restore the previous setting."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on or previous
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


class CudaGraphed:
    """Replays a captured CUDA graph of ``fn`` per (shape, dtype, device) of the input.

    The first call for a shape warms ``fn`` up on a side stream (cuDNN autotuning, compilation),
    then captures it; later calls copy the input into the static buffer and replay. Outputs are
    cloned, so a later replay does not overwrite what the caller holds. All graphs share one pool.
    """

    def __init__(self, fn: InferFn, warmup: int = 3) -> None:
        self.fn = fn
        self.warmup = warmup
        self._graphs: dict[tuple[Any, ...], tuple[Tensor, Any, dict[str, Tensor]]] = {}
        self._pool: Any = None

    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        key = (tuple(images.shape), images.dtype, images.device)
        if key not in self._graphs:
            self._graphs[key] = self._capture(images)
        static_in, graph, static_out = self._graphs[key]
        static_in.copy_(images, non_blocking=True)
        graph.replay()
        return {k: v.clone() for k, v in static_out.items()}

    def _capture(self, images: Tensor) -> tuple[Tensor, Any, dict[str, Tensor]]:
        static_in = images.clone()
        side = torch.cuda.Stream(device=images.device)
        side.wait_stream(torch.cuda.current_stream(images.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(static_in)
        torch.cuda.current_stream(images.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        # thread_local: decode/copy threads of the infer pipeline may use CUDA while this thread captures
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            static_out = self.fn(static_in)
        logger.info("captured a CUDA graph for input %s %s", tuple(images.shape), images.dtype)
        return static_in, graph, static_out


@dataclass
class _OnDevice:
    """A batch copied to the GPU on the copy stream; ``ready`` fires when the copy is done."""

    tensor: Tensor
    ready: Any


class TorchFastPredictor:
    """``fgdeploy.infer`` predictor over ``optimize_for_inference``: uint8 batches, converted on the device.

    On CUDA, ``prepare`` (the assembler thread) fills a pinned uint8 buffer and starts its copy to
    the GPU on a side stream, so the copy of batch i+1 overlaps the compute of batch i; ``predict``
    waits for that copy, runs the model and returns host arrays.

    Args:
        model: the ``PoseNormalizedNet`` (converted in place).
        device: "cpu" or "cuda[:K]".
        options: the speed-ups.
        input_size: S, the model input side.
        batch: the pipeline's batch size; with compile or CUDA graphs a smaller last batch is padded
            to it so no new shape is compiled or captured. None: never pad (benchmarks of several sizes).
        fn: an already optimized callable to use instead of building one from ``model``/``options``.
    """

    def __init__(self, model: nn.Module | None, device: str, options: FastPathOptions, input_size: int,
                 batch: int | None, fn: InferFn | None = None) -> None:
        self.device = torch.device(device)
        self.input_size = int(input_size)
        if fn is None:
            if model is None:
                raise ConfigError("TorchFastPredictor needs a model or an optimized callable")
            fn = optimize_for_inference(
                model, self.device, options.fp16, options.channels_last, options.compile_mode,
                options.cuda_graphs, cudnn_benchmark=options.cudnn_benchmark,
                compile_backend=options.compile_backend)
        self.fn = fn
        self.pad_to = batch if (options.compile_mode != "none" or options.cuda_graphs) else None
        self._copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def prepare(self, images: Sequence[np.ndarray]) -> Tensor | _OnDevice:
        """N (S, S, 3) uint8 images -> one (pinned) uint8 tensor, padded if needed; on CUDA, sent ahead."""
        n = len(images)
        total = max(n, self.pad_to or 0)
        cuda = self._copy_stream is not None
        buffer = torch.empty((total, self.input_size, self.input_size, 3), dtype=torch.uint8, pin_memory=cuda)
        host = buffer.numpy()
        for i, image in enumerate(images):
            host[i] = image
        host[n:] = host[n - 1]
        if not cuda:
            return buffer
        with torch.cuda.stream(self._copy_stream):
            on_device = buffer.to(self.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self._copy_stream)
        return _OnDevice(on_device, ready)

    def predict(self, prepared: Tensor | _OnDevice, count: int) -> dict[str, np.ndarray]:
        if isinstance(prepared, _OnDevice):
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(prepared.ready)
            prepared.tensor.record_stream(stream)   # allocated on the copy stream, used on this one
            images = prepared.tensor
        else:
            images = prepared.to(self.device)
        out = self.fn(images)
        return {k: v[:count].float().cpu().numpy() for k, v in out.items()}

    def warm_up(self, batch: int, iterations: int = 2) -> None:
        """Run random batches so compilation/autotuning/graph capture are not timed."""
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (batch, self.input_size, self.input_size, 3), dtype=np.uint8)
        for _ in range(iterations):
            self.predict(self.prepare(list(images)), batch)
