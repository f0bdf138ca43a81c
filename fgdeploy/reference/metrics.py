"""PCK, the keypoint localisation metric (docs/method.md section 12; Long, Zhang, Darrell, NIPS 2014).

A predicted keypoint is correct when ||pred - gt||_2 <= alpha * max(w, h) of the GT bird box. Only
GT-visible keypoints count. NumPy only; ``fgdeploy.evaluate`` uses this one definition.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["pck", "mean_pck", "pck_correct"]


def _check(pred_uv: np.ndarray, gt_uv: np.ndarray, visible: np.ndarray, bbox: np.ndarray) -> None:
    if pred_uv.shape != gt_uv.shape or pred_uv.ndim != 3 or pred_uv.shape[-1] != 2:
        raise ValueError(f"pck: pred_uv {pred_uv.shape} and gt_uv {gt_uv.shape} must both be (N, P, 2)")
    if visible.shape != gt_uv.shape[:2]:
        raise ValueError(f"pck: visible must be (N, P) = {gt_uv.shape[:2]}, got {visible.shape}")
    if bbox.shape != (gt_uv.shape[0], 4):
        raise ValueError(f"pck: bbox must be (N, 4) [x0, y0, x1, y1], got {bbox.shape}")


def pck_correct(
    pred_uv: np.ndarray, gt_uv: np.ndarray, bbox: np.ndarray, alphas: Sequence[float]
) -> np.ndarray:
    """(A, N, P) bool: prediction within alpha * max(w, h) of the GT (visibility not applied)."""
    pred_uv, gt_uv, bbox = (np.asarray(a, dtype=np.float64) for a in (pred_uv, gt_uv, bbox))
    dist = np.linalg.norm(pred_uv - gt_uv, axis=-1)  # (N, P)
    size = np.maximum(bbox[:, 2] - bbox[:, 0], bbox[:, 3] - bbox[:, 1])  # (N,)
    thresholds = np.asarray(alphas, dtype=np.float64)[:, None] * size[None, :]  # (A, N)
    return dist[None, :, :] <= thresholds[:, :, None]


def pck(
    pred_uv: np.ndarray,
    gt_uv: np.ndarray,
    visible: np.ndarray,
    bbox: np.ndarray,
    alphas: Sequence[float] = (0.02, 0.04, 0.06, 0.08, 0.10),
) -> np.ndarray:
    """Per-part PCK.

    Args:
        pred_uv: (N, P, 2) predicted (u, v).
        gt_uv: (N, P, 2) ground truth (u, v), same pixel frame as ``pred_uv`` and ``bbox``.
        visible: (N, P) GT visibility; invisible keypoints are ignored.
        bbox: (N, 4) GT bird box [x0, y0, x1, y1]; the normaliser is max(x1 - x0, y1 - y0).
        alphas: thresholds as fractions of the normaliser. Defaults to 0.02 ... 0.10.

    Returns:
        (A, P) float64 fraction of visible keypoints that are correct; NaN for a part never visible.
    """
    pred_uv, gt_uv, bbox = (np.asarray(a, dtype=np.float64) for a in (pred_uv, gt_uv, bbox))
    visible = np.asarray(visible).astype(bool)
    _check(pred_uv, gt_uv, visible, bbox)
    correct = pck_correct(pred_uv, gt_uv, bbox, alphas) & visible[None]  # (A, N, P)
    counts = visible.sum(axis=0)  # (P,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, correct.sum(axis=1) / counts, np.nan)


def mean_pck(table: np.ndarray) -> np.ndarray:
    """(A,) macro mean over parts of a ``pck`` table, skipping parts that were never visible (NaN)."""
    table = np.asarray(table, dtype=np.float64)
    valid = np.isfinite(table)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(valid.any(axis=1), np.where(valid, table, 0.0).sum(axis=1) / valid.sum(axis=1), np.nan)
