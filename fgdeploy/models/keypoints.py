"""Keypoint decoding in torch: argmax cell (first maximum) -> cell centre in input pixels.

Mirrors ``fgdeploy.geometry.cell_to_point`` (docs/method.md sections 2 and 4a) and is tested
against it. Only static shapes and tensor ops: exportable, no data-dependent Python.
"""

from __future__ import annotations

import torch


def heatmap_argmax(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row, column and value of each map's maximum (first maximum in row-major order on ties).

    Args:
        heatmaps: (N, P, H, W) logits.

    Returns:
        (rows (N, P) int64, cols (N, P) int64, max values (N, P)).
    """
    n, p, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, p, h * w)
    index = flat.argmax(dim=-1)  # torch.argmax returns the first maximal index
    value = flat.amax(dim=-1)
    return index // w, index % w, value


def cell_to_point(rows: torch.Tensor, cols: torch.Tensor, grid_hw: tuple[int, int], size: int) -> torch.Tensor:
    """Input-pixel centre (u, v) of cells: u = (j + 0.5) S / W, v = (i + 0.5) S / H.

    Args:
        rows, cols: (...) integer cell indices i, j.
        grid_hw: (H, W) of the grid.
        size: S, the model input side.

    Returns:
        (..., 2) float32 (u, v).
    """
    h, w = grid_hw
    u = (cols.to(torch.float32) + 0.5) * (size / w)
    v = (rows.to(torch.float32) + 0.5) * (size / h)
    return torch.stack([u, v], dim=-1)


def decode_keypoints(heatmaps: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints and scores from heatmap logits.

    Args:
        heatmaps: (N, P, H, W) logits tiling the S x S input.
        size: S.

    Returns:
        keypoints (N, P, 2) float32 (u, v) of the argmax cell centre, and
        scores (N, P) = sigmoid(max logit), in the heatmaps' dtype.
    """
    rows, cols, value = heatmap_argmax(heatmaps)
    keypoints = cell_to_point(rows, cols, (heatmaps.shape[-2], heatmaps.shape[-1]), size)
    return keypoints, torch.sigmoid(value)
