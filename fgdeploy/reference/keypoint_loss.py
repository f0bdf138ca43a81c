"""NumPy reference of the keypoint targets and the pixelwise sigmoid cross-entropy loss (docs/method.md 3).

L = (1 / (N P)) sum_{n,p,i,j} [ w t softplus(-z) + (1 - t) softplus(z) ],  softplus(z) = log(1 + e^z),
which equals -[w t log s(z) + (1 - t) log(1 - s(z))]; w = pos_weight (1 by default).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fgdeploy.geometry import point_to_cell
from fgdeploy.reference.base import Layer, Shape
from fgdeploy.reference.registry import register

__all__ = ["KeypointSigmoidCrossEntropy", "keypoint_targets", "softplus", "sigmoid"]


def softplus(z: np.ndarray) -> np.ndarray:
    """log(1 + exp(z)) without overflow."""
    return np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)) without overflow."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def keypoint_targets(
    keypoints_uv: np.ndarray, visible: np.ndarray, heatmap_hw: tuple[int, int], input_size: int
) -> np.ndarray:
    """One-hot targets (N, P, Hh, Wh) float64: 1 at each visible keypoint's cell (``point_to_cell``)."""
    keypoints_uv = np.asarray(keypoints_uv, dtype=np.float64)
    n, p = keypoints_uv.shape[:2]
    hh, wh = heatmap_hw
    ij = point_to_cell(keypoints_uv, (hh, wh), input_size)
    out = np.zeros((n, p, hh, wh), dtype=np.float64)
    for b in range(n):
        for q in range(p):
            if visible[b, q]:
                out[b, q, ij[b, q, 0], ij[b, q, 1]] = 1.0
    return out


@register("KeypointSigmoidCrossEntropy")
class KeypointSigmoidCrossEntropy(Layer):
    """bottoms: logits (N, P, H, W), targets (N, P, H, W); top: scalar loss (shape ()).

    Args:
        pos_weight: weight of the positive term. Defaults to None (1.0).
    """

    num_bottoms = 2

    def __init__(self, pos_weight: float | None = None) -> None:
        super().__init__()
        self.pos_weight = 1.0 if pos_weight is None else float(pos_weight)

    def _setup(self, shapes: list[Shape]) -> list[Shape]:
        logits, targets = shapes
        if logits != targets or len(logits) != 4:
            raise ValueError(f"KeypointSigmoidCrossEntropy: logits {logits} and targets {targets} must both be "
                             f"(N, P, H, W)")
        return [()]

    def forward(self, bottoms: Sequence[np.ndarray]) -> list[np.ndarray]:
        self._ensure_setup(bottoms)
        z, t = (np.asarray(b, dtype=np.float64) for b in bottoms)
        per_cell = self.pos_weight * t * softplus(-z) + (1.0 - t) * softplus(z)
        return [np.asarray(per_cell.sum() / (z.shape[0] * z.shape[1]))]

    def backward(self, top_diffs: Sequence[np.ndarray], bottoms: Sequence[np.ndarray]) -> list[np.ndarray | None]:
        self._ensure_setup(bottoms)
        z, t = (np.asarray(b, dtype=np.float64) for b in bottoms)
        scale = float(np.asarray(top_diffs[0])) / (z.shape[0] * z.shape[1])
        dz = -self.pos_weight * t * sigmoid(-z) + (1.0 - t) * sigmoid(z)
        return [dz * scale, None]
