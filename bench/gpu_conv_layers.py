"""Per-layer convolution timing of a model config: which convolutions hold the fast path back.

    python bench/gpu_conv_layers.py --out gpu_conv_layers.json                 # paper config, CUDA, batch 64
    python bench/gpu_conv_layers.py --device cpu --config demo --batch 2 --iters 2 --out /tmp/conv.json

The H200 kernel profile of the fastest path (``bench/results/h200-2026-11-26/gpu_speed.json``) spends 9 % of
its time in one cuDNN fallback kernel (``..._indexed_wo_smem_..._aligna2``) that the whole-model profile
cannot tie to a layer. This script runs every ``nn.Conv2d`` of the model alone, on its real input shape, in
the fast path's precision and layout (fp16 + channels_last on CUDA, cuDNN autotune on), and reports time,
TFLOP/s and share per layer, plus the first (3-channel) convolution with its input channels zero-padded
to 4, 8 and 16 (same output), so the next device session can see whether padding fixes it.

Timing: CUDA events on a GPU (median of ``--iters`` calls after warm-up), wall clock on CPU. Writes JSON
atomically to --out.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from fgdeploy.fileio import atomic_write_json  # noqa: E402


@dataclass
class ConvShape:
    """One convolution as the model calls it."""

    name: str
    input_shape: tuple[int, int, int, int]    # N, C, H, W
    output_shape: tuple[int, int, int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int

    @property
    def flops(self) -> float:
        """Multiply-adds x 2 of the forward pass."""
        n, cout, hout, wout = self.output_shape
        cin = self.input_shape[1]
        return 2.0 * n * cout * hout * wout * (cin // self.groups) * self.kernel[0] * self.kernel[1]


def record_convs(model: nn.Module, images: torch.Tensor) -> list[tuple[ConvShape, nn.Conv2d]]:
    """Run the model once and note every Conv2d call's input and output shape, in call order."""
    seen: list[tuple[ConvShape, nn.Conv2d]] = []
    names = {module: name for name, module in model.named_modules()}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        assert isinstance(module, nn.Conv2d)
        seen.append((ConvShape(names[module], tuple(inputs[0].shape), tuple(output.shape),  # type: ignore[arg-type]
                               tuple(module.kernel_size), tuple(module.stride),  # type: ignore[arg-type]
                               tuple(module.padding), module.groups), module))  # type: ignore[arg-type]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def time_call(call: Callable[[], Any], iters: int, cuda: bool) -> float:
    """Median ms per call after two warm-up calls (``fgdeploy.bench.time_calls``: CUDA events on a GPU)."""
    from fgdeploy.bench import time_calls

    return statistics.median(time_calls(call, iters, warmup=2, cuda=cuda)[0])


def conv_call(shape: ConvShape, conv: nn.Conv2d, dtype: torch.dtype, device: torch.device, channels_last: bool,
              pad_to: int | None = None) -> tuple[Callable[[], torch.Tensor], torch.Tensor, torch.Tensor]:
    """A closure running ``conv`` alone on a random input of its recorded shape; also returns input and weight.

    ``pad_to``: zero-pad the input channels (and the weight's) to this many; the output is unchanged.
    """
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape.input_shape, device=device, dtype=dtype)
    w = conv.weight.detach().to(device=device, dtype=dtype)
    if pad_to and pad_to > x.shape[1]:
        x = F.pad(x, (0, 0, 0, 0, 0, pad_to - x.shape[1]))
        w = F.pad(w, (0, 0, 0, 0, 0, pad_to - w.shape[1]))
    x, w = x.contiguous(memory_format=fmt), w.contiguous(memory_format=fmt)
    b = conv.bias.detach().to(device=device, dtype=dtype) if conv.bias is not None else None

    def call() -> torch.Tensor:
        return F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)

    return call, x, w


def profile(config: str, batch: int, device: torch.device, iters: int, classes: int = 200) -> dict[str, Any]:
    """Per-layer times of ``config`` at ``batch``; see the module docstring."""
    from fgdeploy.models import create_model, load_model_config

    cuda = device.type == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    cfg = load_model_config(config)
    torch.manual_seed(0)
    model = create_model(cfg, classes).eval().to(device)
    images = torch.rand(batch, 3, cfg.input_size, cfg.input_size, device=device)
    convs = record_convs(model, images)
    if cuda:
        torch.backends.cudnn.benchmark = True
    layers = []
    with torch.no_grad():
        for shape, conv in convs:
            call, _, _ = conv_call(shape, conv, dtype, device, channels_last=cuda)
            ms = time_call(call, iters, cuda)
            layers.append({**asdict(shape), "ms": round(ms, 4), "tflops": round(shape.flops / ms / 1e9, 1)})
        first_shape, first_conv = convs[0]
        padded = {}
        for pad_to in (first_shape.input_shape[1], 4, 8, 16):
            call, _, _ = conv_call(first_shape, first_conv, dtype, device, channels_last=cuda, pad_to=pad_to)
            padded[str(pad_to)] = round(time_call(call, iters, cuda), 4)
    total = sum(layer["ms"] for layer in layers)
    for layer in layers:
        layer["share"] = round(layer["ms"] / total, 4) if total else 0.0
    return {"config": config, "batch": batch, "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if cuda else None, "torch": torch.__version__,
            "dtype": str(dtype).replace("torch.", ""), "channels_last": cuda, "iters": iters,
            "total_conv_ms": round(total, 3), "total_gflop": round(sum(s.flops for s, _ in convs) / 1e9, 1),
            "first_conv_padded_ms": padded,
            "layers": sorted(layers, key=lambda layer: -layer["ms"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_conv_layers.json"))
    parser.add_argument("--config", default="cub_vgg16_fc7")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU: pass --device cpu for a (slow) CPU run", file=sys.stderr)
        return 2
    result = profile(args.config, args.batch, device, args.iters)
    atomic_write_json(args.out, result)
    print(f"{result['config']} batch {result['batch']} on {result['gpu'] or result['device']}: "
          f"{result['total_conv_ms']:.2f} ms in {len(result['layers'])} convolutions ({result['total_gflop']} GFLOP)")
    for layer in result["layers"][:8]:
        print(f"  {layer['name']:<40} {str(layer['input_shape']):<22} {layer['ms']:8.3f} ms "
              f"{layer['tflops']:7.1f} TFLOP/s {100 * layer['share']:5.1f} %")
    print(f"  first conv with input channels padded: {result['first_conv_padded_ms']} (ms)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
