"""One dataset item, as every reader, transform and generator passes it around."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def identity_affine() -> np.ndarray:
    """The 2x3 identity map (continuous pixel coordinates)."""
    return np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=np.float64)


@dataclass
class Sample:
    """An image with its class, box and part keypoints.

    Coordinates are continuous pixels: u in [0, W), v in [0, H); pixel k covers [k, k+1)
    (docs/method.md section 2). CUB values convert as u = x_cub - 0.5.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        keypoints: (P, 2) float32 (u, v); zeros where ``visible`` is False.
        visible: (P,) bool; a keypoint outside the image is invisible.
        bbox: (4,) float32 [x0, y0, x1, y1] in continuous pixels.
        label: 0-based class index (CUB class id - 1).
        image_id: the CUB image id.
        path: image path relative to ``<root>/images``.
        orig_size: (H, W) of the image as read from disk, before any transform.
        affine: (2, 3) float64 map from original-image to current-image continuous coordinates
            (identity after reading); with `orig_size` it maps predictions back to the file's pixels.
    """

    image: np.ndarray
    keypoints: np.ndarray
    visible: np.ndarray
    bbox: np.ndarray
    label: int
    image_id: int
    path: str
    orig_size: tuple[int, int] = (0, 0)
    affine: np.ndarray = field(default_factory=identity_affine)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the current image."""
        return int(self.image.shape[0]), int(self.image.shape[1])
