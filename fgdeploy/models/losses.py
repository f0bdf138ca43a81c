"""Keypoint targets and the pixelwise sigmoid cross-entropy loss (docs/method.md section 3).

Targets: one positive cell per visible keypoint, the cell holding it (j = min(Wh-1, floor(u Wh / S)),
i likewise, the one mapping of docs/method.md 2/4a); an invisible keypoint's map is all zero.
Loss: sum over cells, mean over N * P. The NumPy oracle is ``fgdeploy.reference.keypoint_loss``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["keypoint_targets", "keypoint_bce_loss"]


def keypoint_targets(
    keypoints_uv: Tensor,
    visible: Tensor,
    heatmap_hw: tuple[int, int],
    input_size: int,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """One-hot heatmap targets.

    Args:
        keypoints_uv: (N, P, 2) keypoints (u, v) in input pixels of the S x S model input.
        visible: (N, P) visibility (bool or 0/1).
        heatmap_hw: (Hh, Wh) of the heatmap grid.
        input_size: S, the model input side in pixels.
        dtype: floating dtype of the result. Defaults to float32.

    Returns:
        (N, P, Hh, Wh) tensor: 1 at the keypoint's cell for visible parts, 0 elsewhere.

    Raises:
        ValueError: shapes do not match or sizes are not positive.
    """
    if keypoints_uv.dim() != 3 or keypoints_uv.shape[-1] != 2:
        raise ValueError(f"keypoint_targets: keypoints_uv must be (N, P, 2), got {tuple(keypoints_uv.shape)}")
    if tuple(visible.shape) != tuple(keypoints_uv.shape[:2]):
        raise ValueError(f"keypoint_targets: visible must be (N, P) = {tuple(keypoints_uv.shape[:2])}, "
                         f"got {tuple(visible.shape)}")
    hh, wh = int(heatmap_hw[0]), int(heatmap_hw[1])
    if hh < 1 or wh < 1 or input_size < 1:
        raise ValueError(f"keypoint_targets: heatmap_hw {heatmap_hw} and input_size {input_size} must be positive")
    n, p, _ = keypoints_uv.shape
    # float64 so the cell boundaries match fgdeploy.geometry.point_to_cell exactly.
    uv = keypoints_uv.detach().to(torch.float64)
    j = torch.floor(uv[..., 0] * wh / input_size).clamp(0, wh - 1).long()
    i = torch.floor(uv[..., 1] * hh / input_size).clamp(0, hh - 1).long()
    flat = i * wh + j  # (N, P)
    on = (visible != 0).to(dtype)
    targets = torch.zeros(n, p, hh * wh, dtype=dtype, device=keypoints_uv.device)
    targets = targets.scatter(2, flat.unsqueeze(-1), on.unsqueeze(-1))
    return targets.reshape(n, p, hh, wh)


def keypoint_bce_loss(logits: Tensor, targets: Tensor, pos_weight: float | None = None) -> Tensor:
    """Pixelwise sigmoid cross-entropy, summed over cells and averaged over images x parts.

    Args:
        logits: (N, P, Hh, Wh) raw scores.
        targets: (N, P, Hh, Wh) targets in [0, 1] (``keypoint_targets``).
        pos_weight: optional weight of the positive term (an ablation, docs/method.md 3). Defaults to None (1).

    Returns:
        Scalar loss in the dtype of ``logits``.
    """
    if logits.shape != targets.shape or logits.dim() != 4:
        raise ValueError(f"keypoint_bce_loss: logits {tuple(logits.shape)} and targets {tuple(targets.shape)} "
                         f"must both be (N, P, Hh, Wh)")
    weight = None
    if pos_weight is not None:
        weight = torch.tensor(float(pos_weight), dtype=logits.dtype, device=logits.device)
    total = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="sum",
                                               pos_weight=weight)
    return total / (logits.shape[0] * logits.shape[1])
