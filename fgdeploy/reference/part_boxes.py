"""Head and body boxes from keypoints, their IoU and PCP (docs/method.md sections 7 and 12 (a)); NumPy only.

The box rule (docs/method.md 7): the tight box around the VISIBLE keypoints of the part's set, each side moved out
by ``padding`` (15 %) of the box's width (left/right) or height (top/bottom), clipped to the image; a side
shorter than ``min_side`` (32 px, or the image side if smaller) is widened to it about the box centre, the
centre shifted so the box stays inside the image; with no visible keypoint of the set, the whole image.
Coordinates are continuous pixels, boxes [x0, y0, x1, y1] (docs/method.md 2).

This is the oracle: written per box with plain loops; ``fgdeploy.ops.part_boxes`` is the batched torch
version tested against it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fgdeploy.tensors import PART_NAMES

HEAD_PARTS: tuple[str, ...] = ("beak", "crown", "forehead", "left_eye", "right_eye", "nape", "throat")
BODY_PARTS: tuple[str, ...] = ("back", "breast", "belly", "left_wing", "right_wing", "tail")  # legs excluded
PART_BOX_NAMES: tuple[str, ...] = ("head", "body")
BOX_PADDING = 0.15
MIN_BOX_SIDE = 32.0
PCP_IOU = 0.5

__all__ = ["BODY_PARTS", "BOX_PADDING", "HEAD_PARTS", "MIN_BOX_SIDE", "PART_BOX_NAMES", "PCP_IOU",
           "box_iou", "part_box", "part_boxes", "part_set_indices", "pcp"]


def part_set_indices(part_names: Sequence[str] = PART_NAMES) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(head indices, body indices) into ``part_names`` (0-based keypoint channels).

    Raises:
        ValueError: a part of a set is missing from ``part_names``.
    """
    names = list(part_names)
    missing = [p for p in (*HEAD_PARTS, *BODY_PARTS) if p not in names]
    if missing:
        raise ValueError(f"part boxes need the CUB parts {missing}, which the part names {names} lack")
    return tuple(names.index(p) for p in HEAD_PARTS), tuple(names.index(p) for p in BODY_PARTS)


def part_box(keypoints: np.ndarray, visible: np.ndarray, indices: Sequence[int], image_hw: Sequence[float],
             padding: float = BOX_PADDING, min_side: float = MIN_BOX_SIDE) -> np.ndarray:
    """The box of one part set in one image.

    Args:
        keypoints: (P, 2) (u, v).
        visible: (P,) bool or 0/1.
        indices: keypoint channels of the set (e.g. ``part_set_indices()[0]`` for the head).
        image_hw: (H, W) of the image the keypoints are in.
        padding: fraction of the tight box's side added on each side.
        min_side: smallest box side in pixels (capped at the image side).

    Returns:
        (4,) float64 [x0, y0, x1, y1].
    """
    height, width = float(image_hw[0]), float(image_hw[1])
    points = [np.asarray(keypoints[i], np.float64) for i in indices if bool(visible[i])]
    if not points:
        return np.array([0.0, 0.0, width, height])
    lows, highs = [], []
    for axis, size in ((0, width), (1, height)):
        lo = min(p[axis] for p in points)
        hi = max(p[axis] for p in points)
        extent = hi - lo
        lo, hi = max(0.0, lo - padding * extent), min(size, hi + padding * extent)
        side = min(min_side, size)
        if hi - lo < side:
            centre = min(max((lo + hi) / 2, side / 2), size - side / 2)
            lo, hi = centre - side / 2, centre + side / 2
        lows.append(lo)
        highs.append(hi)
    box = [lows[0], lows[1], highs[0], highs[1]]
    return np.asarray(box, np.float64)


def part_boxes(keypoints: np.ndarray, visible: np.ndarray, image_hw: Sequence[float] | np.ndarray,
               part_names: Sequence[str] = PART_NAMES, padding: float = BOX_PADDING,
               min_side: float = MIN_BOX_SIDE) -> np.ndarray:
    """Head and body boxes of a batch.

    Args:
        keypoints: (N, P, 2) (u, v).
        visible: (N, P) bool or 0/1.
        image_hw: (H, W) shared by every image, or (N, 2) one per image.
        part_names: names of the P keypoint channels.
        padding, min_side: see ``part_box``.

    Returns:
        (N, 2, 4) float64, [head, body] x [x0, y0, x1, y1].
    """
    keypoints = np.asarray(keypoints, np.float64)
    visible = np.asarray(visible)
    if keypoints.ndim != 3 or keypoints.shape[-1] != 2 or visible.shape != keypoints.shape[:2]:
        raise ValueError(f"part_boxes: keypoints must be (N, P, 2) and visible (N, P), got {keypoints.shape} "
                         f"and {visible.shape}")
    sizes = np.broadcast_to(np.asarray(image_hw, np.float64), (len(keypoints), 2))
    sets = part_set_indices(part_names)
    return np.stack([np.stack([part_box(kp, vis, idx, hw, padding, min_side) for idx in sets])
                     for kp, vis, hw in zip(keypoints, visible, sizes)]) if len(keypoints) else np.zeros((0, 2, 4))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of boxes [x0, y0, x1, y1] of broadcastable shapes (..., 4); 0 when both are empty."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0.0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0.0, None)
    inter = iw * ih
    area_a = np.clip(a[..., 2] - a[..., 0], 0.0, None) * np.clip(a[..., 3] - a[..., 1], 0.0, None)
    area_b = np.clip(b[..., 2] - b[..., 0], 0.0, None) * np.clip(b[..., 3] - b[..., 1], 0.0, None)
    union = area_a + area_b - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def pcp(pred_boxes: np.ndarray, gt_boxes: np.ndarray, threshold: float = PCP_IOU) -> np.ndarray:
    """Head/body PCP (docs/method.md 12 (a)): fraction of images whose predicted box has IoU >= ``threshold``.

    Args:
        pred_boxes, gt_boxes: (N, B, 4) in the same pixel frame.

    Returns:
        (B,) float64; NaN for an empty batch.
    """
    pred_boxes, gt_boxes = np.asarray(pred_boxes, np.float64), np.asarray(gt_boxes, np.float64)
    if pred_boxes.shape != gt_boxes.shape or pred_boxes.ndim != 3 or pred_boxes.shape[-1] != 4:
        raise ValueError(f"pcp: boxes must both be (N, B, 4), got {pred_boxes.shape} and {gt_boxes.shape}")
    if not len(pred_boxes):
        return np.full(pred_boxes.shape[1], np.nan)
    return (box_iou(pred_boxes, gt_boxes) >= threshold).mean(axis=0)
