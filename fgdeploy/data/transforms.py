"""Transforms that move keypoints, visibility and box with the pixels (numpy/OpenCV; torch-free).

Every geometric transform is one 2x3 affine matrix ``A`` in continuous pixel coordinates
(u in [0, W), pixel k covers [k, k+1); docs/method.md section 2), applied by `warp_sample`: the only place
that does coordinate maths. It warps the image with ``cv2.warpAffine`` (after converting ``A`` to
OpenCV's pixel-centre convention), maps keypoints and box corners with the same ``A``, makes keypoints
that leave the image invisible (coordinates 0), and swaps left/right parts
(``fgdeploy.tensors.FLIP_PERMUTATION``) when ``A`` mirrors (negative determinant).

The test-time whole-image resize (`resize_to_input`, `EvalTransform`: eval, parity and infer all use it)
moves pixels with `resize_image` (``cv2.resize``, edges replicated) instead: the same sampling grid as
the warp at a fraction of the cost (500x375 -> 500x500: 0.5 ms vs 2.3 ms on one core).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np

from fgdeploy.data.sample import Sample
from fgdeploy.tensors import FLIP_PERMUTATION

_BORDER_VALUE = (0, 0, 0)


def affine_scale(sx: float, sy: float) -> np.ndarray:
    """u' = sx u, v' = sy v."""
    return np.array([[sx, 0.0, 0.0], [0.0, sy, 0.0]])


def affine_translate(tx: float, ty: float) -> np.ndarray:
    """u' = u + tx, v' = v + ty."""
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty]])


def affine_hflip(width: float) -> np.ndarray:
    """Horizontal mirror of an image ``width`` wide: u' = W - u."""
    return np.array([[-1.0, 0.0, width], [0.0, 1.0, 0.0]])


def affine_rotate(degrees: float, centre: tuple[float, float]) -> np.ndarray:
    """Rotation by ``degrees`` (counter-clockwise on screen) about ``centre`` (u, v)."""
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    cu, cv = centre
    return np.array([[c, s, cu - c * cu - s * cv], [-s, c, cv + s * cu - c * cv]])


def compose(*affines: np.ndarray) -> np.ndarray:
    """``compose(A, B, C)`` applies C first, then B, then A (matrix product order)."""
    out = np.eye(3)
    for a in affines:
        out = out @ np.vstack([a, [0.0, 0.0, 1.0]])
    return out[:2]


def invert_affine(affine: np.ndarray) -> np.ndarray:
    """The inverse map; use it with `apply_affine` to take predictions back to the original image."""
    return np.linalg.inv(np.vstack([affine, [0.0, 0.0, 1.0]]))[:2]


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (..., 2) points (u, v) through a 2x3 affine."""
    points = np.asarray(points, dtype=np.float64)
    return points @ affine[:, :2].T + affine[:, 2]


def to_cv2_matrix(affine: np.ndarray) -> np.ndarray:
    """Continuous-coordinate affine -> OpenCV's (pixel index = centre) convention: x = u - 0.5."""
    m = np.array(affine, dtype=np.float64)
    m[:, 2] = affine[:, :2] @ np.array([0.5, 0.5]) + affine[:, 2] - 0.5
    return m


def warp_image(image: np.ndarray, affine: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Warp pixels by ``affine`` into an ``out_hw`` image (bilinear; area-averaged first when shrinking >1.5x)."""
    height, width = image.shape[:2]
    sx, sy = np.hypot(affine[0, 0], affine[1, 0]), np.hypot(affine[0, 1], affine[1, 1])
    if min(sx, sy) < 2.0 / 3.0:  # bilinear alone would alias: area-resize to about the target scale first
        new_w, new_h = max(1, round(width * min(1.0, sx))), max(1, round(height * min(1.0, sy)))
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        affine = compose(affine, affine_scale(width / new_w, height / new_h))
    return cv2.warpAffine(image, to_cv2_matrix(affine), (out_hw[1], out_hw[0]), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=_BORDER_VALUE)


def resize_image(image: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Resize the whole image to ``out_hw`` (u' = u out_w / W, v' = v out_h / H, pixel-centre aligned).

    Same filters as `warp_image` for that map: axes shrinking by more than 1.5x are area-averaged to their
    final size (when one is, every shrinking axis is), then bilinear; borders replicate the edge pixels
    (the warp blends them with black when enlarging).
    """
    height, width = image.shape[:2]
    out_h, out_w = out_hw
    sx, sy = out_w / width, out_h / height
    if min(sx, sy) < 2.0 / 3.0:
        new_w, new_h = (out_w if sx < 1 else width), (out_h if sy < 1 else height)
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    if image.shape[:2] != (out_h, out_w):
        image = cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(image)


def warp_keypoints(keypoints: np.ndarray, visible: np.ndarray, affine: np.ndarray, out_hw: tuple[int, int]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Map (P, 2) keypoints; those outside [0, W) x [0, H) or invisible become invisible with (0, 0).

    Parts are swapped left/right when ``affine`` mirrors, so slot p always holds the bird's own part p.
    """
    uv = apply_affine(affine, keypoints)
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < out_hw[1]) & (uv[:, 1] >= 0) & (uv[:, 1] < out_hw[0])
    vis = np.asarray(visible, dtype=bool) & inside
    uv = np.where(vis[:, None], uv, 0.0).astype(np.float32)
    if np.linalg.det(affine[:, :2]) < 0:
        perm = list(FLIP_PERMUTATION)
        uv, vis = uv[perm], vis[perm]
    return uv, vis


def warp_box(box: np.ndarray, affine: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """The axis-aligned box around the mapped corners of [x0, y0, x1, y1], clipped to the image."""
    x0, y0, x1, y1 = (float(v) for v in box)
    corners = apply_affine(affine, np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]))
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    h, w = out_hw
    return np.array([np.clip(lo[0], 0, w), np.clip(lo[1], 0, h), np.clip(hi[0], 0, w), np.clip(hi[1], 0, h)],
                    dtype=np.float32)


def warp_sample(sample: Sample, affine: np.ndarray, out_hw: tuple[int, int],
                image: np.ndarray | None = None) -> Sample:
    """Apply ``affine`` to pixels, keypoints, visibility and box; record it in ``sample.affine``.

    ``image``: the already moved pixels, when a caller has a cheaper way to apply the same map.
    """
    keypoints, visible = warp_keypoints(sample.keypoints, sample.visible, affine, out_hw)
    image = warp_image(sample.image, affine, out_hw) if image is None else image
    return replace(sample, image=image, keypoints=keypoints, visible=visible,
                   bbox=warp_box(sample.bbox, affine, out_hw), affine=compose(affine, sample.affine))


def input_affine(sample: Sample, size: int, crop_to_bbox: bool = False) -> np.ndarray:
    """The anisotropic warp of the whole image (or of its box) onto size x size (docs/method.md section 2)."""
    if crop_to_bbox:
        x0, y0, x1, y1 = (float(v) for v in sample.bbox)
        return compose(affine_scale(size / max(x1 - x0, 1e-6), size / max(y1 - y0, 1e-6)),
                       affine_translate(-x0, -y0))
    height, width = sample.size
    return affine_scale(size / width, size / height)


def resize_to_input(sample: Sample, size: int) -> Sample:
    """Resize the whole image to size x size (u' = u S / W, v' = v S / H) with `resize_image`.

    Like `warp_sample` with ``input_affine(sample, size)`` (keypoints, box, ``affine`` identical), but the
    pixels come from ``cv2.resize``.
    """
    return warp_sample(sample, input_affine(sample, size), (size, size),
                       image=resize_image(sample.image, (size, size)))


@dataclass(frozen=True)
class EvalTransform:
    """Test-time transform: a plain warp to size x size (no randomness)."""

    size: int
    crop_to_bbox: bool = False   # ablation: warp the ground-truth box instead of the whole image

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        if not self.crop_to_bbox:
            return resize_to_input(sample, self.size)
        return warp_sample(sample, input_affine(sample, self.size, crop_to_bbox=True), (self.size, self.size))


@dataclass(frozen=True)
class TrainAugment:
    """Training augmentation (docs/method.md section 9), one warp per sample.

    Resize to s x s with s uniform in [scale[0] S, scale[1] S], optional rotation, a random S x S crop,
    horizontal flip with left/right part swap; then optional colour jitter (pixels only).
    """

    size: int
    flip_p: float = 0.5                       # probability of a horizontal flip
    scale: tuple[float, float] = (1.0, 1.15)  # s / S range of the resize before the crop
    rotate_degrees: float = 0.0               # max |rotation|; 0 = none (the paper's setting is unknown)
    colour_jitter: float = 0.0                # max relative change of brightness/contrast/saturation
    crop_to_bbox: bool = False                # ablation: start from the ground-truth box

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = rng if rng is not None else np.random.default_rng()
        return jitter_colour(warp_sample(sample, self.sample_affine(sample, rng), (self.size, self.size)),
                             self.colour_jitter, rng)

    def sample_affine(self, sample: Sample, rng: np.random.Generator) -> np.ndarray:
        """Draw the random affine for ``sample`` (continuous coordinates, image -> S x S input)."""
        big = self.size * float(rng.uniform(*self.scale))
        steps = [input_affine(sample, 1, self.crop_to_bbox)]  # onto the unit square, then to big x big
        steps.insert(0, affine_scale(big, big))
        if self.rotate_degrees > 0:
            steps.insert(0, affine_rotate(float(rng.uniform(-1, 1)) * self.rotate_degrees, (big / 2, big / 2)))
        steps.insert(0, affine_translate(-float(rng.uniform(0, big - self.size)),
                                         -float(rng.uniform(0, big - self.size))))
        if rng.random() < self.flip_p:
            steps.insert(0, affine_hflip(self.size))
        return compose(*steps)


def hflip(sample: Sample) -> Sample:
    """Mirror a sample left-right (u <- W - u) and swap left/right parts."""
    height, width = sample.size
    return warp_sample(sample, affine_hflip(width), (height, width))


def jitter_colour(sample: Sample, strength: float, rng: np.random.Generator) -> Sample:
    """Random brightness, contrast and saturation factors in [1 - strength, 1 + strength]; pixels only."""
    if strength <= 0:
        return sample
    b, c, s = (1.0 + strength * rng.uniform(-1, 1, size=3)).tolist()
    image = sample.image.astype(np.float32) * b
    gray = image.mean(axis=2, keepdims=True)
    image = gray + (image - gray) * s
    image = (image - image.mean()) * c + image.mean()
    return replace(sample, image=np.clip(image + 0.5, 0, 255).astype(np.uint8))


def to_tensor_batch(samples: Sequence[Sample]) -> dict[str, Any]:
    """Stack samples into torch tensors; see `fgdeploy.data.torch_dataset.collate_samples` (imports torch)."""
    from fgdeploy.data.torch_dataset import collate_samples

    return collate_samples(samples)


collate = to_tensor_batch
