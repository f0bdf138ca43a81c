"""Head and body boxes from keypoints in torch: batched, no data-dependent Python control flow (exports to ONNX).

The rule is docs/method.md section 7, as in the NumPy reference ``fgdeploy.reference.part_boxes`` (the oracle
this is tested against): tight box around the visible keypoints of the set, +``padding`` per side, clipped,
each side at least ``min_side`` (widened about the centre, kept inside the image), the whole image when no
keypoint of the set is visible. Computed in float32 whatever the keypoints' dtype (fp16 rounding of a
500 px coordinate is 0.25 px).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fgdeploy.reference.part_boxes import BOX_PADDING, MIN_BOX_SIDE

__all__ = ["part_boxes"]


def part_boxes(keypoints: torch.Tensor, visible: torch.Tensor, image_hw: tuple[int, int],
               sets: Sequence[Sequence[int]], padding: float = BOX_PADDING,
               min_side: float = MIN_BOX_SIDE) -> torch.Tensor:
    """Boxes of the keypoint ``sets`` (head, body) for a batch of images of one size.

    Args:
        keypoints: (N, P, 2) (u, v) in image pixels; not differentiated (boxes are constants downstream).
        visible: (N, P) bool or 0/1.
        image_hw: (H, W) of the images.
        sets: keypoint channels of each box (``fgdeploy.reference.part_boxes.part_set_indices()``).
        padding: fraction of the tight box's side added on each side.
        min_side: smallest box side in pixels (capped at the image side).

    Returns:
        (N, len(sets), 4) float32 boxes [x0, y0, x1, y1].
    """
    kp = keypoints.detach().float()
    vis = visible.detach() > 0.5 if visible.dtype != torch.bool else visible.detach()
    height, width = float(image_hw[0]), float(image_hw[1])
    size = kp.new_tensor([width, height])                                  # (2,) per axis u, v
    side = kp.new_tensor([min(min_side, width), min(min_side, height)])
    boxes = []
    for indices in sets:
        pts = kp[:, list(indices)]                                         # (N, k, 2)
        seen = vis[:, list(indices)].unsqueeze(-1)                         # (N, k, 1)
        any_seen = seen.any(dim=1)                                         # (N, 1)
        lo = torch.where(seen, pts, torch.full_like(pts, float("inf"))).amin(dim=1)   # (N, 2)
        hi = torch.where(seen, pts, torch.full_like(pts, float("-inf"))).amax(dim=1)
        lo = torch.where(any_seen, lo, torch.zeros_like(lo))               # none visible: the whole image
        hi = torch.where(any_seen, hi, size.expand_as(hi))
        extent = hi - lo
        lo = torch.clamp(lo - padding * extent, min=0.0)
        hi = torch.minimum(hi + padding * extent, size)
        short = (hi - lo) < side
        centre = torch.minimum(torch.maximum((lo + hi) / 2, side / 2), size - side / 2)
        lo = torch.where(short, centre - side / 2, lo)
        hi = torch.where(short, centre + side / 2, hi)
        boxes.append(torch.cat([lo, hi], dim=-1))                          # (N, 4)
    return torch.stack(boxes, dim=1)
