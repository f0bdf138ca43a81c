"""Bilinear crop of a box of the input, resized to a square, with standard ops only (ONNX GridSample).

``crop_box`` builds the sampling grid with elementwise arithmetic (no AffineGrid node) and samples with
``F.grid_sample`` (bilinear, align_corners=False, padding_mode="border"), which the dynamo exporter writes as
one ONNX GridSample (opset >= 16) node; TensorRT's ONNX parser supports GridSample in FP32/FP16 since 8.5
(onnx-tensorrt docs/operators.md). NumPy reference: ``fgdeploy.reference.part_crop``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["crop_box", "crop_grid"]


def crop_grid(boxes: torch.Tensor, image_hw: tuple[int, int], size: int) -> torch.Tensor:
    """(N, size, size, 2) grid_sample coordinates of the output pixel centres of each box.

    With align_corners=False, normalised x = 2 u / W - 1 for a continuous coordinate u (docs/method.md 2), and output
    pixel j of the crop sits at u = x0 + (j + 0.5) (x1 - x0) / size. Float64 boxes give a float64 grid (tests),
    others float32.
    """
    height, width = float(image_hw[0]), float(image_hw[1])
    dtype = torch.float64 if boxes.dtype == torch.float64 else torch.float32
    steps = (torch.arange(size, device=boxes.device, dtype=dtype) + 0.5) / size             # (size,)
    b = boxes.to(dtype)
    u = b[:, 0:1] + steps * (b[:, 2:3] - b[:, 0:1])                                          # (N, size)
    v = b[:, 1:2] + steps * (b[:, 3:4] - b[:, 1:2])
    gx = (2.0 / width) * u - 1.0
    gy = (2.0 / height) * v - 1.0
    n = boxes.shape[0]
    return torch.stack([gx.unsqueeze(1).expand(n, size, size), gy.unsqueeze(2).expand(n, size, size)], dim=-1)


def crop_box(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop ``boxes`` out of ``images`` and resize each to ``size`` x ``size`` by bilinear sampling.

    Args:
        images: (N, C, H, W) float (float32 or float16).
        boxes: (N, 4) [x0, y0, x1, y1] in continuous pixels of ``images``.
        size: side of the output.

    Returns:
        (N, C, size, size), dtype of ``images``; differentiable with respect to ``images`` only.
    """
    grid = crop_grid(boxes.detach(), (images.shape[2], images.shape[3]), size).to(images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
