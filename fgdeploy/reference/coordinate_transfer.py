"""NumPy reference of the CoordinateTransfer op (docs/method.md section 4a), written for clarity, not speed.

Also ``make_coordinate_transfer_inputs``: random test inputs with planted heatmap ties, maxima on every
border and optional feature ties, shared by the torch, ONNX, CUDA and TensorRT parity tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fgdeploy.geometry import heatmap_cell_to_feature_cell
from fgdeploy.reference.base import Layer, Shape
from fgdeploy.reference.registry import register
from fgdeploy.tensors import MODE_AVERAGE, MODE_MAX

__all__ = ["CoordinateTransfer", "coordinate_transfer", "make_coordinate_transfer_inputs", "window_bounds"]


def window_bounds(
    heatmap: np.ndarray, feature_hw: tuple[int, int], window: int
) -> tuple[int, int, int, int]:
    """Clipped window [r0, r1) x [c0, c1) on the feature grid for one (Hh, Wh) heatmap.

    The centre is the first maximum in row-major order (``np.argmax`` of the flattened map), mapped with
    the integer rule cy = ((2 i + 1) Hf) div (2 Hh) (``fgdeploy.geometry.heatmap_cell_to_feature_cell``).
    """
    hh, wh = heatmap.shape
    hf, wf = feature_hw
    flat = int(np.argmax(heatmap.reshape(-1)))
    i, j = divmod(flat, wh)
    cy, cx = (int(v) for v in heatmap_cell_to_feature_cell(np.array([i, j]), (hh, wh), (hf, wf)))
    r = window // 2
    return max(cy - r, 0), min(cy + r, hf - 1) + 1, max(cx - r, 0), min(cx + r, wf - 1) + 1


@register("CoordinateTransfer")
class CoordinateTransfer(Layer):
    """bottoms: heatmaps (N, P, Hh, Wh), features (N, C, Hf, Wf); top: pooled (N, P, C).

    Args:
        window: odd window side k >= 1. Defaults to 3.
        mode: 0 = max, 1 = average over the valid (in-grid) window cells. Defaults to 0.
    """

    num_bottoms = 2

    def __init__(self, window: int = 3, mode: int = MODE_MAX) -> None:
        super().__init__()
        if int(window) != window or window < 1 or window % 2 == 0:
            raise ValueError(f"CoordinateTransfer: window must be an odd int >= 1, got {window!r}")
        if mode not in (MODE_MAX, MODE_AVERAGE):
            raise ValueError(f"CoordinateTransfer: mode must be {MODE_MAX} (max) or {MODE_AVERAGE} (average), "
                             f"got {mode!r}")
        self.window = int(window)
        self.mode = int(mode)

    def _setup(self, shapes: list[Shape]) -> list[Shape]:
        heat, feat = shapes
        if len(heat) != 4 or len(feat) != 4:
            raise ValueError(f"CoordinateTransfer: heatmaps and features must be 4-D, got {heat} and {feat}")
        if heat[0] != feat[0]:
            raise ValueError(f"CoordinateTransfer: batch sizes differ: heatmaps {heat} vs features {feat}")
        if min(heat[2:] + feat[2:]) < 1:
            raise ValueError(f"CoordinateTransfer: empty spatial size in {heat} or {feat}")
        return [(heat[0], heat[1], feat[1])]

    def forward(self, bottoms: Sequence[np.ndarray]) -> list[np.ndarray]:
        self._ensure_setup(bottoms)
        heat, feat = bottoms
        n, p = heat.shape[:2]
        c, hf, wf = feat.shape[1:]
        out = np.zeros((n, p, c), dtype=np.float64)
        for b in range(n):
            for q in range(p):
                r0, r1, c0, c1 = window_bounds(heat[b, q], (hf, wf), self.window)
                cells = feat[b, :, r0:r1, c0:c1].reshape(c, -1).astype(np.float64)  # (C, valid cells)
                out[b, q] = cells.max(axis=1) if self.mode == MODE_MAX else cells.sum(axis=1) / cells.shape[1]
        return [out.astype(feat.dtype)]

    def backward(self, top_diffs: Sequence[np.ndarray], bottoms: Sequence[np.ndarray]) -> list[np.ndarray | None]:
        self._ensure_setup(bottoms)
        heat, feat = bottoms
        (top,) = top_diffs
        n, p = heat.shape[:2]
        c, hf, wf = feat.shape[1:]
        grad = np.zeros((n, c, hf, wf), dtype=np.float64)
        channels = np.arange(c)
        for b in range(n):
            for q in range(p):
                r0, r1, c0, c1 = window_bounds(heat[b, q], (hf, wf), self.window)
                g = top[b, q].astype(np.float64)
                if self.mode == MODE_MAX:
                    cells = feat[b, :, r0:r1, c0:c1].reshape(c, -1)
                    first = np.argmax(cells, axis=1)  # first maximum in row-major window order
                    rows, cols = r0 + first // (c1 - c0), c0 + first % (c1 - c0)
                    np.add.at(grad[b], (channels, rows, cols), g)
                else:
                    grad[b, :, r0:r1, c0:c1] += (g / ((r1 - r0) * (c1 - c0)))[:, None, None]
        return [None, grad.astype(feat.dtype)]


def coordinate_transfer(heatmaps: np.ndarray, features: np.ndarray, window: int = 3, mode: int = 0) -> np.ndarray:
    """Functional form of the reference forward: (N, P, Hh, Wh), (N, C, Hf, Wf) -> (N, P, C)."""
    return CoordinateTransfer(window, mode).forward([heatmaps, features])[0]


def make_coordinate_transfer_inputs(
    rng: np.random.Generator,
    batch: int,
    parts: int,
    heatmap_hw: tuple[int, int],
    channels: int,
    feature_hw: tuple[int, int],
    dtype: np.dtype | type = np.float64,
    feature_ties: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Random op inputs (never zeros) that exercise the contract's corner cases.

    Part maps cycle through: plain random; maximum planted in each of the 4 corners; on a random point of
    each edge; and 2-3 tied maxima at random cells (the first in row-major order must win, and one tie
    sits on a border). With ``feature_ties``, features are rounded to a coarse grid so that window maxima
    tie often (max-mode gradients must go to the first one).

    Returns:
        heatmaps (N, P, Hh, Wh) and features (N, C, Hf, Wf) in ``dtype``.
    """
    hh, wh = heatmap_hw
    heat = rng.standard_normal((batch, parts, hh, wh))
    kinds = ["random", "tl", "tr", "bl", "br", "top", "bottom", "left", "right", "tie"]
    for b in range(batch):
        for q in range(parts):
            kind = kinds[(b * parts + q) % len(kinds)]
            m = heat[b, q]
            peak = m.max() + 1.0 + rng.random()
            if kind == "random":
                continue
            cells = {
                "tl": [(0, 0)], "tr": [(0, wh - 1)], "bl": [(hh - 1, 0)], "br": [(hh - 1, wh - 1)],
                "top": [(0, int(rng.integers(wh)))], "bottom": [(hh - 1, int(rng.integers(wh)))],
                "left": [(int(rng.integers(hh)), 0)], "right": [(int(rng.integers(hh)), wh - 1)],
            }.get(kind)
            if cells is None:  # ties: random cells plus one on the last row
                count = int(rng.integers(2, 4))
                cells = [(int(rng.integers(hh)), int(rng.integers(wh))) for _ in range(count - 1)]
                cells.append((hh - 1, int(rng.integers(wh))))
            for i, j in cells:
                m[i, j] = peak
    feat = rng.standard_normal((batch, channels) + tuple(feature_hw))
    if feature_ties:
        feat = np.round(feat * 2.0) / 2.0
        feat[feat == 0] = 0.25  # keep inputs non-zero
    return heat.astype(dtype), feat.astype(dtype)
