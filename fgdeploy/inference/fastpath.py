"""Fast PyTorch inference without TensorRT: fp16, channels_last, cuDNN autotune, torch.compile, CUDA graphs.

``optimize_for_inference`` wraps a ``PoseNormalizedNet`` into a callable that takes a batch, does the
input conversion on the device (uint8 NHWC -> float in [0, 1] -> model dtype/layout) and returns the
model's outputs. Every option is a flag, so each can be measured on its own (``bench/gpu_speed.py``).
The CoordinateTransfer custom op has a fake (meta) kernel and a vectorised torch implementation, so
``torch.compile(fullgraph=True)`` traces the whole model without a graph break.

``TorchFastPredictor`` puts that callable behind ``fgdeploy.inference.local``'s predictor interface: batches
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

from fgdeploy.errors import ConfigError, cuda_unavailable
from fgdeploy.tensors import MODEL_OUTPUTS, OUTPUT_HEATMAPS, OUTPUT_KEYPOINT_SCORES, OUTPUT_LOGITS

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
    split_streams: bool = False         # the two trunks as separate graphs on two CUDA streams
    pad_input: bool = False             # conv1_1 on 8 zero-padded input channels (needs split_streams)
    conv_relu: bool = False             # cuDNN conv with fused bias+ReLU for (Conv2d, ReLU) pairs

    @property
    def label(self) -> str:
        """Short name for reports, e.g. "fp16-cl-max-autotune-graphs"."""
        parts = ["fp16" if self.fp16 else "fp32"] + (["cl"] if self.channels_last else [])
        parts += [self.compile_mode] if self.compile_mode != "none" else ["eager"]
        parts += [n for n, on in (("streams", self.split_streams), ("pad8", self.pad_input),
                                  ("convrelu", self.conv_relu)) if on]
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
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        out = self.model(_unit_images(images, self.dtype).contiguous(memory_format=fmt))
        return {k: out[k] for k in self.outputs}


def _unit_images(images: Tensor, dtype: torch.dtype) -> Tensor:
    """uint8 (N, S, S, 3) as decoded, or float (N, 3, S, S) -> (N, 3, S, S) in [0, 1] in ``dtype``."""
    if images.dtype == torch.uint8:
        images = images.permute(0, 3, 1, 2).float() / 255.0
    return images.to(dtype)


def optimize_for_inference(
    model: nn.Module, device: str | torch.device, fp16: bool = False, channels_last: bool = False,
    compile_mode: str | None = None, cuda_graphs: bool = False, *, cudnn_benchmark: bool = True,
    compile_backend: str = "inductor", outputs: Sequence[str] = MODEL_OUTPUTS,
    split_streams: bool = False, pad_input: bool = False, conv_relu: bool = False,
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
        split_streams: run the two trunks as separate graphs on two CUDA streams (``SplitInference``).
        pad_input: zero-pad the input to 8 channels and conv1_1's weights to match (exact; needs
            ``split_streams``), so cuDNN runs the first conv with aligned NHWC tensor-core kernels.
        conv_relu: replace (Conv2d, ReLU) pairs by one cuDNN conv with a bias+ReLU epilogue, removing a
            full read+write of each such activation.

    Returns:
        ``fn(images)``: ``images`` is (N, 3, S, S) float in [0, 1] or (N, S, S, 3) uint8 RGB, on any
        device; outputs are tensors on ``device`` in the model's dtype, owned by the caller.

    Raises:
        ConfigError: unknown compile mode, or CUDA graphs / CUDA device asked for without CUDA.
    """
    fn = build_inference_fn(model, device, fp16, channels_last, compile_mode, compile_backend, outputs, cuda_graphs,
                            split_streams=split_streams, pad_input=pad_input, conv_relu=conv_relu)
    if cuda_graphs:
        fn = CudaGraphed(fn)
    return with_cudnn_benchmark(fn, cudnn_benchmark and torch.device(device).type == "cuda")


def build_inference_fn(model: nn.Module, device: str | torch.device, fp16: bool = False,
                       channels_last: bool = False, compile_mode: str | None = None,
                       compile_backend: str = "inductor", outputs: Sequence[str] = MODEL_OUTPUTS,
                       cuda_graphs: bool = False, *, split_streams: bool = False, pad_input: bool = False,
                       conv_relu: bool = False) -> InferFn:
    """The converted (and compiled) module, without CUDA graphs or cuDNN flags; see ``optimize_for_inference``.

    ``cuda_graphs`` only selects the no-graph variant of inductor modes that capture graphs
    themselves, so ``CudaGraphed`` can wrap the result.
    """
    device = torch.device(device)
    mode = compile_mode or "none"
    if mode not in COMPILE_MODES:
        raise ConfigError(f"compile mode {mode!r} is not one of {list(COMPILE_MODES)}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(cuda_unavailable(str(device)))
    if cuda_graphs and device.type != "cuda":
        raise ConfigError("cuda_graphs needs a CUDA device; drop --cuda-graphs or use --device cuda")
    dtype = torch.float16 if fp16 else torch.float32
    model = model.eval().to(device=device, dtype=dtype)
    if pad_input and not split_streams:
        raise ConfigError("pad_input needs split_streams (the padded input bypasses the model's own normalisation)")
    if split_streams and not splittable(model):
        raise ConfigError("split_streams needs a PoseNormalizedNet with two separate trunks (shared_backbone: false)")
    trunks = [t for t in (getattr(model, "loc_net", None), getattr(model, "cls_net", None)) if t is not None]
    padded = all(pad_first_conv(t) for t in trunks) if pad_input else False
    if pad_input and not padded:
        raise ConfigError("pad_input: the trunks' first layer is not a 3-channel features[0] conv")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if conv_relu:
        fused = sum(fuse_conv_relu(t, channels_last) for t in trunks)
        logger.info("fused %d conv+ReLU pairs", fused)
    compile_fn = None
    if mode != "none":
        if cuda_graphs:
            mode = _INDUCTOR_GRAPH_MODES.get(mode, mode)
        inductor_mode = None if mode == "default" or compile_backend != "inductor" else mode

        def compile_fn(m: nn.Module) -> Any:
            return torch.compile(m, mode=inductor_mode, fullgraph=True, dynamic=False, backend=compile_backend)
    if split_streams:
        return SplitInference(model, dtype, channels_last, outputs, _PAD_CHANNELS if padded else 0, compile_fn,
                              device)
    fn: Any = _InferenceModule(model, dtype, channels_last, outputs).eval()
    return compile_fn(fn) if compile_fn is not None else fn


# --------------------------------------------------------------------------------------------
# split forward: the two trunks as separate graphs on two CUDA streams (+ exact graph rewrites)
_PAD_CHANNELS = 8   # conv1_1 input channels after padding: 16-byte NHWC fp16 rows for tensor-core kernels


@torch.library.custom_op("fgdeploy::conv2d_relu", mutates_args=())
def conv2d_relu(x: Tensor, weight: Tensor, bias: Tensor, padding: int, channels_last: bool) -> Tensor:
    """relu(conv2d(x, weight, bias, stride 1, ``padding``)); on CUDA one cuDNN kernel (bias + ReLU epilogue)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if x.is_cuda:
        out = torch.cudnn_convolution_relu(x.contiguous(memory_format=fmt), weight.contiguous(memory_format=fmt),
                                           bias, [1, 1], [padding, padding], [1, 1], 1)
    else:
        out = torch.relu(torch.nn.functional.conv2d(x, weight, bias, padding=padding))
    return out.contiguous(memory_format=fmt)


@conv2d_relu.register_fake
def _conv2d_relu_fake(x: Tensor, weight: Tensor, bias: Tensor, padding: int, channels_last: bool) -> Tensor:
    n, _, h, w = x.shape
    k_out, _, kh, kw = weight.shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.new_empty((n, k_out, h + 2 * padding - kh + 1, w + 2 * padding - kw + 1)).contiguous(memory_format=fmt)


class ConvReLU(nn.Module):
    """A stride-1 ``Conv2d`` followed by ReLU as one ``fgdeploy::conv2d_relu`` call (same weights)."""

    def __init__(self, conv: nn.Conv2d, channels_last: bool) -> None:
        super().__init__()
        if conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1 or conv.bias is None \
                or conv.padding[0] != conv.padding[1] or isinstance(conv.padding, str):
            raise ConfigError(f"ConvReLU: unsupported conv {conv}")
        self.weight, self.bias = conv.weight, conv.bias
        self.padding = int(conv.padding[0])
        self.channels_last = channels_last

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.fgdeploy.conv2d_relu(x, self.weight, self.bias, self.padding, self.channels_last)


def fuse_conv_relu(trunk: nn.Module, channels_last: bool) -> int:
    """Replace every (stride-1 Conv2d, ReLU) pair inside ``nn.Sequential`` children by ``ConvReLU``
    (an identity in its place keeps module indices); returns how many pairs were fused."""
    fused = 0
    for seq in [m for m in trunk.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, act = seq[i], seq[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(act, nn.ReLU) and conv.stride == (1, 1) \
                    and conv.groups == 1 and conv.bias is not None and not isinstance(conv.padding, str):
                seq[i], seq[i + 1] = ConvReLU(conv, channels_last), nn.Identity()
                fused += 1
    return fused


def pad_first_conv(trunk: nn.Module, channels: int = _PAD_CHANNELS) -> bool:
    """Give the trunk's first conv (``features[0]``, 3 input channels) ``channels`` inputs, the extra
    weights zero; the input must then carry ``channels - 3`` zero channels (exact: they add 0)."""
    features = getattr(trunk, "features", None)
    first = features[0] if isinstance(features, nn.Sequential) and len(features) else None
    if not isinstance(first, nn.Conv2d) or first.in_channels != 3 or first.groups != 1:
        return False
    conv = nn.Conv2d(channels, first.out_channels, first.kernel_size, first.stride, first.padding,  # type: ignore[arg-type]
                     first.dilation, 1, first.bias is not None).to(first.weight)  # type: ignore[arg-type]
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :3] = first.weight
        if first.bias is not None:
            conv.bias.copy_(first.bias)  # type: ignore[union-attr]
    features[0] = conv  # type: ignore[index]
    return True


def _model_input(images: Tensor, model: Any, dtype: torch.dtype, channels_last: bool, pad_to: int) -> Tensor:
    """uint8 NHWC (or float NCHW in [0, 1]) -> normalised model input, zero-padded to ``pad_to`` channels."""
    x = (_unit_images(images, dtype) - model.mean) / model.std   # as PoseNormalizedNet._normalise
    if pad_to > x.shape[1]:
        x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad_to - x.shape[1]))
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class _TrunkPart(nn.Module):
    """Input conversion (uint8/float -> normalised, optionally padded, model dtype and layout) before a trunk."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, channels_last: bool, pad_to: int) -> None:
        super().__init__()
        self.model, self.dtype, self.channels_last, self.pad_to = model, dtype, channels_last, pad_to

    def _input(self, images: Tensor) -> Tensor:
        return _model_input(images, self.model, self.dtype, self.channels_last, self.pad_to)


class _LocalizationPart(_TrunkPart):
    """Localization trunk + keypoint head: heatmaps, keypoints, scores."""

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        model: Any = self.model
        return model._keypoint_outputs(model.loc_net(self._input(images)))  # type: ignore[no-any-return]


class _ClassificationPart(_TrunkPart):
    """Classification trunk: (transfer-layer map, holistic map) as a dict."""

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        model: Any = self.model
        return model.cls_net(self._input(images))  # type: ignore[no-any-return]


class _HeadPart(nn.Module):
    """Coordinate transfer + holistic head + classifier on the two trunks' outputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, loc: dict[str, Tensor], feats: dict[str, Tensor]) -> Tensor:
        m: Any = self.model
        parts = None
        if m._transfer_layer is not None:
            parts = m._part_features(feats[m._transfer_layer], loc[OUTPUT_HEATMAPS], loc[OUTPUT_KEYPOINT_SCORES],
                                     None, None)
        holistic = m.holistic(feats[m._holistic_layer]) if m.holistic is not None else None
        return m.classifier(parts, holistic)


def splittable(model: nn.Module) -> bool:
    """Whether ``model`` is a PoseNormalizedNet with two separate trunks (what the split forward needs)."""
    return all(hasattr(model, a) for a in ("loc_net", "cls_net", "_keypoint_outputs", "_part_features",
                                           "classifier", "mean", "std")) and model.cls_net is not None


class SplitInference:
    """The model as three graphs: localization part and classification part (independent until the
    coordinate transfer) on two CUDA streams, then the head part on the caller's stream.

    Same outputs as ``PoseNormalizedNet.forward`` at test time (up to the rounding of the precision used).
    Each part is compiled on its own when ``compile_mode`` is set. The stream fork/join is plain
    ``wait_stream``, so ``CudaGraphed`` captures both branches into one graph (they run concurrently on
    replay). On CPU the parts run one after the other.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype, channels_last: bool, outputs: Sequence[str],
                 pad_to: int, compile_fn: Callable[[nn.Module], Any] | None, device: torch.device) -> None:
        self.loc = _LocalizationPart(model, dtype, channels_last, pad_to).eval()
        self.cls = _ClassificationPart(model, dtype, channels_last, pad_to).eval()
        self.head = _HeadPart(model).eval()
        self.parts: tuple[Any, Any, Any] = (self.loc, self.cls, self.head)
        if compile_fn is not None:
            self.parts = (compile_fn(self.loc), compile_fn(self.cls), compile_fn(self.head))
        self.outputs = tuple(outputs)
        self._side = torch.cuda.Stream(device) if device.type == "cuda" else None

    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        loc_fn, cls_fn, head_fn = self.parts
        if self._side is None or not images.is_cuda:
            feats, loc = cls_fn(images), loc_fn(images)
        else:
            main = torch.cuda.current_stream(images.device)
            self._side.wait_stream(main)              # fork: the side stream sees the input
            with torch.cuda.stream(self._side):
                feats = cls_fn(images)
            loc = loc_fn(images)
            main.wait_stream(self._side)              # join before the head reads the features
            for t in feats.values():
                t.record_stream(main)
        out = {**loc, OUTPUT_LOGITS: head_fn(loc, feats)}
        return {k: out[k] for k in self.outputs}


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
    """``fgdeploy.inference.local`` predictor over ``optimize_for_inference``: uint8 batches, converted on the device.

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
                compile_backend=options.compile_backend, split_streams=options.split_streams,
                pad_input=options.pad_input, conv_relu=options.conv_relu)
        self.fn = fn
        self.pad_to = batch if (options.compile_mode != "none" or options.cuda_graphs) else None
        self.on_gpu = self.device.type == "cuda"   # fgdeploy.inference.predictors.default_workers: decode on every core
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
        return self.collect(self.launch(prepared, count))

    def launch(self, prepared: Tensor | _OnDevice, count: int) -> Any:
        """Start the model on a prepared batch; on CUDA returns at once (outputs copied to pinned host
        memory asynchronously), so ``fgdeploy.inference.local`` can queue batch i+1 before it waits for batch i."""
        if isinstance(prepared, _OnDevice):
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(prepared.ready)
            prepared.tensor.record_stream(stream)   # allocated on the copy stream, used on this one
            images = prepared.tensor
        else:
            images = prepared.to(self.device)
        out = self.fn(images)
        if self.device.type != "cuda":
            return {k: v[:count].float().cpu().numpy() for k, v in out.items()}
        host = {}
        for k, v in out.items():
            src = v[:count].float()
            host[k] = torch.empty(src.shape, dtype=src.dtype, pin_memory=True)
            host[k].copy_(src, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))
        return host, done

    def collect(self, handle: Any) -> dict[str, np.ndarray]:
        """Wait for a ``launch`` and return its outputs as host arrays."""
        if isinstance(handle, dict):
            return handle
        host, done = handle
        done.synchronize()
        return {k: v.numpy() for k, v in host.items()}

    def warm_up(self, batch: int, iterations: int = 2) -> None:
        """Run random batches so compilation/autotuning/graph capture are not timed."""
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (batch, self.input_size, self.input_size, 3), dtype=np.uint8)
        for _ in range(iterations):
            self.predict(self.prepare(list(images)), batch)
