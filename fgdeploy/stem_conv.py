"""The first convolution of a VGG trunk (3x3, stride 1, pad 1, 3 input channels) + bias + ReLU as one Triton kernel.

cuDNN has no tensor-core NHWC kernel for 3 input channels: on the H200 its fallback
(``..._indexed_wo_smem_..._aligna2``) takes 2.1 ms per trunk at batch 64 x 500x500, 11 % of the fast path's
kernel time, for 1.3 % of its FLOPs. Here each program gathers the 3x3x3 neighbourhoods of ``BLOCK_M``
pixels (27 values, zero-padded to K = 32) from the input, multiplies them with the (32, C_out) weight
matrix on tensor cores (fp32 accumulation), adds the bias, applies ReLU and writes the pixels' C_out
outputs, which are contiguous in NHWC: the kernel is bound by writing its output.

``fgdeploy::stem_conv_relu`` is a custom op (with a fake kernel, so ``torch.compile(fullgraph=True)``
keeps it in the graph); on CPU, or without Triton, it is ``relu(conv2d(...))``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fgdeploy.errors import ConfigError

K_PADDED = 32          # 3 x 3 x 3 = 27 patch values, padded to a tensor-core K
BLOCK_M = 128          # pixels per program

try:  # Triton ships with CUDA builds of torch; CPU-only installs run the reference path
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None


def triton_available() -> bool:
    """Whether the Triton kernel can be used (Triton importable)."""
    return triton is not None


if triton is not None:

    @triton.jit
    def _stem_conv_relu_kernel(x_ptr, w_ptr, b_ptr, out_ptr, total, height, width,
                               sxn, sxc, sxh, sxw, son, soc, soh, sow,
                               C_OUT: tl.constexpr, BLOCK: tl.constexpr, K: tl.constexpr,
                               IEEE: tl.constexpr):
        pid = tl.program_id(0)
        m = pid * BLOCK + tl.arange(0, BLOCK)                 # flat pixel index n * H * W + h * W + w
        hw = height * width
        n = m // hw
        h = (m % hw) // width
        w = m % width
        k = tl.arange(0, K)                                   # patch index (dy * 3 + dx) * 3 + c
        tap = k // 3
        c = k % 3
        dy = tap // 3 - 1
        dx = tap % 3 - 1
        hh = h[:, None] + dy[None, :]
        ww = w[:, None] + dx[None, :]
        valid = (m[:, None] < total) & (k[None, :] < 27) & (hh >= 0) & (hh < height) & (ww >= 0) & (ww < width)
        a = tl.load(x_ptr + n[:, None] * sxn + c[None, :] * sxc + hh * sxh + ww * sxw, mask=valid, other=0.0)
        o = tl.arange(0, C_OUT)
        wt = tl.load(w_ptr + k[:, None] * C_OUT + o[None, :])   # (K, C_OUT), rows >= 27 are zero
        if IEEE:
            acc = tl.dot(a, wt, input_precision="ieee")
        else:
            acc = tl.dot(a, wt)
        acc = acc + tl.load(b_ptr + o).to(tl.float32)[None, :]
        acc = tl.maximum(acc, 0.0)
        out = out_ptr + n[:, None] * son + o[None, :] * soc + h[:, None] * soh + w[:, None] * sow
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m[:, None] < total)


def patch_weight(weight: Tensor) -> Tensor:
    """(C_out, 3, 3, 3) conv weight -> (32, C_out): row (dy * 3 + dx) * 3 + c, zero rows 27..31."""
    c_out = weight.shape[0]
    rows = weight.permute(2, 3, 1, 0).reshape(27, c_out)
    return torch.cat([rows, rows.new_zeros(K_PADDED - 27, c_out)]).contiguous()


@torch.library.custom_op("fgdeploy::stem_conv_relu", mutates_args=())
def stem_conv_relu(x: Tensor, weight: Tensor, bias: Tensor, channels_last: bool) -> Tensor:
    """relu(conv2d(x, weight, bias, padding=1)) for a (C_out, 3, 3, 3) weight; the Triton kernel on CUDA."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    n, _, h, w = x.shape
    c_out = weight.shape[0]
    if not (x.is_cuda and triton_available()):
        return torch.relu(torch.nn.functional.conv2d(x, weight, bias, padding=1)).contiguous(memory_format=fmt)
    out = torch.empty((n, c_out, h, w), device=x.device, dtype=x.dtype).contiguous(memory_format=fmt)
    launch(x, patch_weight(weight), bias, out)
    return out


@stem_conv_relu.register_fake
def _stem_conv_relu_fake(x: Tensor, weight: Tensor, bias: Tensor, channels_last: bool) -> Tensor:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    n, _, h, w = x.shape
    return x.new_empty((n, weight.shape[0], h, w)).contiguous(memory_format=fmt)


def launch(x: Tensor, patch_w: Tensor, bias: Tensor, out: Tensor) -> None:
    """Run the kernel: ``x`` (N, 3, H, W) any strides, ``patch_w`` from ``patch_weight``, into ``out``."""
    if triton is None:
        raise ConfigError("the Triton stem kernel needs Triton (pip install triton, or a CUDA build of torch)")
    n, _, h, w = x.shape
    c_out = patch_w.shape[1]
    if c_out & (c_out - 1) or c_out < 16:
        raise ConfigError(f"stem conv: {c_out} output channels; the Triton kernel needs a power of two >= 16")
    total = n * h * w
    grid = (triton.cdiv(total, BLOCK_M),)
    _stem_conv_relu_kernel[grid](x, patch_w.to(x.dtype), bias, out, total, h, w, *x.stride(), *out.stride(),
                                 C_OUT=c_out, BLOCK=BLOCK_M, K=K_PADDED, IEEE=x.dtype == torch.float32,
                                 num_warps=4)


class StemConvReLU(nn.Module):
    """A 3x3 stride-1 pad-1 conv on 3 channels followed by ReLU, as one ``fgdeploy::stem_conv_relu`` call."""

    def __init__(self, conv: nn.Conv2d, channels_last: bool) -> None:
        super().__init__()
        if conv.in_channels != 3 or conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1) \
                or conv.dilation != (1, 1) or conv.groups != 1 or conv.bias is None:
            raise ConfigError(f"StemConvReLU: unsupported conv {conv}")
        self.weight, self.bias = conv.weight, conv.bias
        self.channels_last = channels_last

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.fgdeploy.stem_conv_relu(x, self.weight, self.bias, self.channels_last)


def fuse_stem(trunk: nn.Module, channels_last: bool) -> bool:
    """Replace the trunk's ``features[0]`` conv and ``features[1]`` ReLU by ``StemConvReLU`` (+ an identity,
    keeping module indices). False when the trunk does not start that way."""
    features = getattr(trunk, "features", None)
    if not isinstance(features, nn.Sequential) or len(features) < 2 or not isinstance(features[1], nn.ReLU):
        return False
    first = features[0]
    if not isinstance(first, nn.Conv2d) or first.in_channels != 3 or first.kernel_size != (3, 3) \
            or first.stride != (1, 1) or first.padding != (1, 1) or first.groups != 1 or first.bias is None:
        return False
    features[0], features[1] = StemConvReLU(first, channels_last), nn.Identity()
    return True
