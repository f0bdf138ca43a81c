"""Cell mapping between input pixels and score/feature grids (docs/method.md sections 2 and 4a).

Coordinates are continuous: u in [0, W), v in [0, H); pixel k covers [k, k+1).
Every map tiles the S x S model input uniformly. These NumPy functions are the single
definition; torch code mirrors them and is tested against them.
"""

from __future__ import annotations

import numpy as np


def point_to_cell(uv: np.ndarray, grid_hw: tuple[int, int], size: int) -> np.ndarray:
    """Cell (i, j) holding each input-pixel point.

    Args:
        uv: (..., 2) points (u, v) in input pixels of the S x S image.
        grid_hw: (H, W) of the grid.
        size: S, the model input side.

    Returns:
        (..., 2) int64 array of (i, j) = (row, column), clamped into the grid.
    """
    uv = np.asarray(uv, dtype=np.float64)
    h, w = grid_hw
    j = np.clip(np.floor(uv[..., 0] * w / size), 0, w - 1)
    i = np.clip(np.floor(uv[..., 1] * h / size), 0, h - 1)
    return np.stack([i, j], axis=-1).astype(np.int64)


def cell_to_point(ij: np.ndarray, grid_hw: tuple[int, int], size: int) -> np.ndarray:
    """Input-pixel centre (u, v) of each cell (i, j); inverse of `point_to_cell` up to the cell."""
    ij = np.asarray(ij, dtype=np.float64)
    h, w = grid_hw
    u = (ij[..., 1] + 0.5) * size / w
    v = (ij[..., 0] + 0.5) * size / h
    return np.stack([u, v], axis=-1)


def heatmap_cell_to_feature_cell(
    ij: np.ndarray, heatmap_hw: tuple[int, int], feature_hw: tuple[int, int]
) -> np.ndarray:
    """Centre cell on the feature grid of a heatmap cell, in integer arithmetic (docs/method.md 4a).

    cy = ((2 i + 1) Hf) div (2 Hh), cx likewise, clamped to the feature grid.
    """
    ij = np.asarray(ij, dtype=np.int64)
    hh, wh = heatmap_hw
    hf, wf = feature_hw
    cy = np.clip(((2 * ij[..., 0] + 1) * hf) // (2 * hh), 0, hf - 1)
    cx = np.clip(((2 * ij[..., 1] + 1) * wf) // (2 * wh), 0, wf - 1)
    return np.stack([cy, cx], axis=-1)
