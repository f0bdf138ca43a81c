"""Compact bilinear pooling by Random Maclaurin projection (docs/method.md section 10).

phi(x) = (W1 x) * (W2 x) / sqrt(d) with fixed Rademacher W1, W2 (d x c), so <phi(x), phi(y)> estimates
<x, y>^2 without bias. The pooled descriptor sums phi over all locations, then applies the signed square
root and L2 normalisation. The NumPy oracle is ``fgdeploy.reference.compact_bilinear``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CompactBilinearRM", "rademacher"]

SIGNED_SQRT_EPS = 1e-12  # inside the square root: finite gradient at 0
L2_EPS = 1e-12  # lower bound of the norm in the L2 normalisation (as F.normalize)


def rademacher(rows: int, cols: int, seed: int) -> Tensor:
    """A (rows, cols) float32 matrix of i.i.d. +-1 entries drawn from a seeded CPU torch.Generator."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    return torch.randint(0, 2, (rows, cols), generator=gen, dtype=torch.int64).to(torch.float32) * 2 - 1


class CompactBilinearRM(nn.Module):
    """Random Maclaurin compact bilinear pooling: (N, C, H, W) -> (N, dim), signed sqrt + L2.

    Args:
        in_channels: c, channels of the input feature map.
        dim: d, output dimension (paper: about 5k; default config 5000).
        seed: seed of the projections. They are fixed (not learned) and saved as buffers in the state dict.
    """

    w1: Tensor  # (d, C) buffer, +-1
    w2: Tensor

    def __init__(self, in_channels: int, dim: int = 5000, seed: int = 0) -> None:
        super().__init__()
        if in_channels < 1 or dim < 1:
            raise ValueError(f"CompactBilinearRM: in_channels ({in_channels}) and dim ({dim}) must be >= 1")
        self.in_channels = int(in_channels)
        self.dim = int(dim)
        self.seed = int(seed)
        self.register_buffer("w1", rademacher(dim, in_channels, seed))
        self.register_buffer("w2", rademacher(dim, in_channels, seed + 1))

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, dim={self.dim}, seed={self.seed}"

    def random_maclaurin(self, x: Tensor) -> Tensor:
        """phi of individual vectors: (M, C) -> (M, d), no pooling or normalisation."""
        return (x @ self.w1.t()) * (x @ self.w2.t()) / math.sqrt(self.dim)

    def sum_pooled(self, x: Tensor) -> Tensor:
        """Sum of phi over all locations of (N, C, H, W) -> (N, d), before normalisation."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"CompactBilinearRM: expected input (N, {self.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        n, c, h, w = x.shape
        flat = x.reshape(n, c, h * w)  # (N, C, HW)
        if h * w > c:
            # sum_s (w1k . x_s)(w2k . x_s) = w1k^T G w2k with the Gram matrix G = X X^T (N, C, C):
            # cheaper than projecting every location when HW > C.
            gram = flat @ flat.transpose(1, 2)  # (N, C, C)
            pooled = ((self.w1 @ gram) * self.w2).sum(dim=-1)  # (N, d)
        else:
            y1 = self.w1 @ flat  # (N, d, HW), a 1x1 conv
            y2 = self.w2 @ flat
            pooled = (y1 * y2).sum(dim=-1)
        return pooled / math.sqrt(self.dim)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, d): sum-pooled RM features, signed square root, L2 normalised."""
        y = self.sum_pooled(x)
        y = torch.sign(y) * torch.sqrt(torch.abs(y) + SIGNED_SQRT_EPS)
        return F.normalize(y, p=2.0, dim=1, eps=L2_EPS)
