"""NumPy reference of compact bilinear pooling by Random Maclaurin projection (docs/method.md 10).

phi(x_s) = (W1 x_s) * (W2 x_s) / sqrt(d) per location s; y = sum_s phi(x_s);
z = normalize(sign(y) sqrt(|y| + EPS_SQRT)), dividing by max(||.||_2, EPS_L2).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fgdeploy.reference.base import Layer, Shape
from fgdeploy.reference.registry import register

__all__ = ["CompactBilinearRM", "rademacher", "random_maclaurin", "EPS_SQRT", "EPS_L2"]

EPS_SQRT = 1e-12  # inside the signed square root (finite gradient at 0)
EPS_L2 = 1e-12  # lower bound of the L2 norm


def rademacher(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """(rows, cols) float64 matrix of i.i.d. +-1 entries."""
    return rng.integers(0, 2, size=(rows, cols)).astype(np.float64) * 2.0 - 1.0


def random_maclaurin(x: np.ndarray, w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    """phi of vectors: (M, c) -> (M, d), an unbiased estimate of <x, y>^2 via <phi(x), phi(y)>."""
    return (x @ w1.T) * (x @ w2.T) / np.sqrt(w1.shape[0])


@register("CompactBilinearRM")
class CompactBilinearRM(Layer):
    """bottom: features (N, C, H, W); top: (N, d) sum-pooled RM features, signed sqrt, L2 normalised.

    Args:
        w1, w2: (d, C) projection matrices (entries +-1), e.g. the torch module's ``w1``/``w2`` buffers.
    """

    def __init__(self, w1: np.ndarray, w2: np.ndarray) -> None:
        super().__init__()
        self.w1 = np.asarray(w1, dtype=np.float64)
        self.w2 = np.asarray(w2, dtype=np.float64)
        if self.w1.ndim != 2 or self.w1.shape != self.w2.shape:
            raise ValueError(f"CompactBilinearRM: w1 {self.w1.shape} and w2 {self.w2.shape} must both be (d, C)")

    def _setup(self, shapes: list[Shape]) -> list[Shape]:
        (x,) = shapes
        if len(x) != 4 or x[1] != self.w1.shape[1]:
            raise ValueError(f"CompactBilinearRM: expected input (N, {self.w1.shape[1]}, H, W), got {x}")
        return [(x[0], self.w1.shape[0])]

    def _project(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, c = x.shape[:2]
        flat = np.asarray(x, dtype=np.float64).reshape(n, c, -1)  # (N, C, HW)
        return np.einsum("dc,ncs->nds", self.w1, flat), np.einsum("dc,ncs->nds", self.w2, flat)

    def forward(self, bottoms: Sequence[np.ndarray]) -> list[np.ndarray]:
        self._ensure_setup(bottoms)
        u1, u2 = self._project(bottoms[0])
        y = (u1 * u2).sum(axis=2) / np.sqrt(self.w1.shape[0])  # (N, d)
        s = np.sign(y) * np.sqrt(np.abs(y) + EPS_SQRT)
        norm = np.maximum(np.linalg.norm(s, axis=1, keepdims=True), EPS_L2)
        return [s / norm]

    def backward(self, top_diffs: Sequence[np.ndarray], bottoms: Sequence[np.ndarray]) -> list[np.ndarray | None]:
        self._ensure_setup(bottoms)
        x = bottoms[0]
        d = self.w1.shape[0]
        u1, u2 = self._project(x)
        y = (u1 * u2).sum(axis=2) / np.sqrt(d)
        s = np.sign(y) * np.sqrt(np.abs(y) + EPS_SQRT)
        raw_norm = np.linalg.norm(s, axis=1, keepdims=True)
        dz = np.asarray(top_diffs[0], dtype=np.float64)
        # z = s / max(||s||, eps): through the clamp only when the norm is above eps.
        norm = np.maximum(raw_norm, EPS_L2)
        z = s / norm
        ds = np.where(raw_norm > EPS_L2, (dz - z * (z * dz).sum(axis=1, keepdims=True)) / norm, dz / norm)
        dy = ds * np.sign(y) ** 2 / (2.0 * np.sqrt(np.abs(y) + EPS_SQRT))
        du1 = dy[:, :, None] * u2 / np.sqrt(d)  # (N, d, HW)
        du2 = dy[:, :, None] * u1 / np.sqrt(d)
        dx = np.einsum("dc,nds->ncs", self.w1, du1) + np.einsum("dc,nds->ncs", self.w2, du2)
        return [dx.reshape(x.shape)]
