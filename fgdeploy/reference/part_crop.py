"""NumPy reference of the part crop: a box of the image resampled bilinearly to a size x size grid.

Output pixel (i, j) of an ``size`` x ``size`` crop of box [x0, y0, x1, y1] samples the image at the continuous
point u = x0 + (j + 0.5) (x1 - x0) / size, v = y0 + (i + 0.5) (y1 - y0) / size (docs/method.md 2: pixel k covers
[k, k + 1), its centre is k + 0.5). Bilinear weights use the pixel centres; a point within half a pixel
of the border takes the border pixel (``grid_sample``'s padding_mode="border", align_corners=False).
The gradient goes to the image only (the box is a constant, as the keypoints it comes from).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fgdeploy.reference.base import Layer, Shape
from fgdeploy.reference.registry import register

__all__ = ["PartCrop", "bilinear_taps", "crop_box"]


def bilinear_taps(coord: float, size: int) -> tuple[int, int, float, float]:
    """(i0, i1, w0, w1): the two pixel indices a continuous coordinate interpolates and their weights."""
    x = min(max(coord - 0.5, 0.0), size - 1.0)   # pixel-centre index, clamped to the border pixels
    i0 = int(np.floor(x))
    i1 = min(i0 + 1, size - 1)
    w1 = x - i0
    return i0, i1, 1.0 - w1, w1


def crop_box(image: np.ndarray, box: Sequence[float], size: int) -> np.ndarray:
    """(C, H, W) image, box [x0, y0, x1, y1] -> (C, size, size) float64 bilinear crop."""
    c, height, width = image.shape
    x0, y0, x1, y1 = (float(v) for v in box)
    out = np.zeros((c, size, size), np.float64)
    img = image.astype(np.float64)
    for i in range(size):
        r0, r1, a0, a1 = bilinear_taps(y0 + (i + 0.5) * (y1 - y0) / size, height)
        for j in range(size):
            q0, q1, b0, b1 = bilinear_taps(x0 + (j + 0.5) * (x1 - x0) / size, width)
            out[:, i, j] = (a0 * (b0 * img[:, r0, q0] + b1 * img[:, r0, q1])
                            + a1 * (b0 * img[:, r1, q0] + b1 * img[:, r1, q1]))
    return out


@register("PartCrop")
class PartCrop(Layer):
    """bottoms: images (N, C, H, W), boxes (N, 4) [x0, y0, x1, y1] in image pixels; top: (N, C, size, size).

    Args:
        size: side of the square crop.
    """

    num_bottoms = 2

    def __init__(self, size: int = 64) -> None:
        super().__init__()
        if int(size) != size or size < 1:
            raise ValueError(f"PartCrop: size must be an int >= 1, got {size!r}")
        self.size = int(size)

    def _setup(self, shapes: list[Shape]) -> list[Shape]:
        images, boxes = shapes
        if len(images) != 4 or boxes != (images[0], 4):
            raise ValueError(f"PartCrop: images must be (N, C, H, W) and boxes (N, 4), got {images} and {boxes}")
        return [(images[0], images[1], self.size, self.size)]

    def forward(self, bottoms: Sequence[np.ndarray]) -> list[np.ndarray]:
        self._ensure_setup(bottoms)
        images, boxes = bottoms
        return [np.stack([crop_box(img, box, self.size) for img, box in zip(images, boxes)]).astype(images.dtype)]

    def backward(self, top_diffs: Sequence[np.ndarray], bottoms: Sequence[np.ndarray]) -> list[np.ndarray | None]:
        """Each output's gradient goes to its (up to) four source pixels with the bilinear weights."""
        self._ensure_setup(bottoms)
        images, boxes = bottoms
        (top,) = top_diffs
        n, c, height, width = images.shape
        grad = np.zeros(images.shape, np.float64)
        s = self.size
        for b in range(n):
            x0, y0, x1, y1 = (float(v) for v in boxes[b])
            for i in range(s):
                r0, r1, a0, a1 = bilinear_taps(y0 + (i + 0.5) * (y1 - y0) / s, height)
                for j in range(s):
                    q0, q1, b0, b1 = bilinear_taps(x0 + (j + 0.5) * (x1 - x0) / s, width)
                    g = top[b, :, i, j].astype(np.float64)
                    grad[b, :, r0, q0] += a0 * b0 * g
                    grad[b, :, r0, q1] += a0 * b1 * g
                    grad[b, :, r1, q0] += a1 * b0 * g
                    grad[b, :, r1, q1] += a1 * b1 * g
        return [grad.astype(images.dtype), None]
