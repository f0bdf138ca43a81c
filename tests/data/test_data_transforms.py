"""Transforms move pixels, keypoints, visibility and box together; flips swap left/right parts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fgdeploy.data.cub import CubDataset
from fgdeploy.data.sample import Sample
from fgdeploy.data.transforms import (EvalTransform, TrainAugment, affine_hflip, affine_rotate, affine_scale,
                                      affine_translate, apply_affine, compose, hflip, invert_affine,
                                      jitter_colour, resize_image, resize_to_input, warp_image,
                                      warp_sample)
from fgdeploy.tensors import FLIP_PERMUTATION, NUM_PARTS, PART_NAMES

P = {name: i for i, name in enumerate(PART_NAMES)}


def _blob_sample(height: int, width: int, centre: tuple[float, float], sigma: float) -> Sample:
    """A Gaussian blob centred at continuous (u, v), with keypoint 0 on it and random other keypoints."""
    v, u = np.mgrid[0:height, 0:width] + 0.5  # pixel centres
    blob = 250 * np.exp(-((u - centre[0]) ** 2 + (v - centre[1]) ** 2) / (2 * sigma**2))
    rng = np.random.default_rng(3)
    keypoints = np.column_stack([rng.uniform(0, width, NUM_PARTS), rng.uniform(0, height, NUM_PARTS)])
    keypoints[0] = centre
    return Sample(image=np.repeat(blob[..., None], 3, axis=2).astype(np.uint8),
                  keypoints=keypoints.astype(np.float32), visible=np.ones(NUM_PARTS, dtype=bool),
                  bbox=np.array([2.0, 3.0, width - 4.0, height - 5.0], np.float32), label=1, image_id=7,
                  path="x.jpg", orig_size=(height, width))


def _centroid(image: np.ndarray) -> np.ndarray:
    weight = image[..., 0].astype(np.float64)
    v, u = np.mgrid[0:image.shape[0], 0:image.shape[1]] + 0.5
    return np.array([(weight * u).sum(), (weight * v).sum()]) / weight.sum()


@pytest.mark.parametrize("name, affine, out_hw", [
    ("upscale", affine_scale(2.5, 1.7), (170, 250)),
    ("shrink (area pre-resize)", affine_scale(0.4, 0.45), (45, 40)),
    ("rotate", affine_rotate(23.0, (50.0, 50.0)), (100, 100)),
    ("flip", affine_hflip(100), (100, 100)),
    ("crop", compose(affine_translate(-17.3, -9.6), affine_scale(1.3, 1.1)), (80, 90)),
    ("flip+rotate+scale", compose(affine_hflip(120), affine_rotate(-31.0, (60, 55)), affine_scale(1.2, 1.1)),
     (110, 120)),
])
def test_warp_moves_pixels_and_keypoints_together(name: str, affine: np.ndarray, out_hw: tuple[int, int]) -> None:
    sample = _blob_sample(100, 100, (41.3, 57.8), sigma=6.0)
    out = warp_sample(sample, affine, out_hw)
    expected = apply_affine(affine, np.array([41.3, 57.8]))
    blob_keypoint = out.keypoints[0] if np.linalg.det(affine[:, :2]) > 0 else out.keypoints[FLIP_PERMUTATION[0]]
    np.testing.assert_allclose(blob_keypoint, expected, atol=1e-4)
    np.testing.assert_allclose(_centroid(out.image), expected, atol=0.15)  # half a pixel off would fail
    assert out.image.shape == (*out_hw, 3)


def test_flip_puts_left_eye_where_right_eye_was_mirrored(cub_root: Path) -> None:
    sample = CubDataset(cub_root, "train")[0]  # 40 x 30; right eye at (31, 8), left eye at (12.5, 6.5)
    flipped = hflip(sample)
    np.testing.assert_allclose(flipped.keypoints[P["left_eye"]], [40 - 31.0, 8.0])
    np.testing.assert_allclose(flipped.keypoints[P["right_eye"]], [40 - 12.5, 6.5])
    for left, right in (("left_leg", "right_leg"), ("left_wing", "right_wing")):
        np.testing.assert_allclose(flipped.keypoints[P[left]], [40 - sample.keypoints[P[right]][0],
                                                                sample.keypoints[P[right]][1]])
    np.testing.assert_allclose(flipped.keypoints[P["back"]], [40 - 19.5, 7.5])  # centre parts: mirrored only
    assert not flipped.visible[P["beak"]] and np.all(flipped.keypoints[P["beak"]] == 0)
    np.testing.assert_array_equal(flipped.image, sample.image[:, ::-1])
    np.testing.assert_allclose(flipped.bbox, [40 - 32.0, 1.0, 40 - 2.0, 25.0])


def test_flip_swaps_visibility_and_twice_is_identity(cub_root: Path) -> None:
    sample = CubDataset(cub_root, "train")[0]
    sample.visible[P["left_wing"]] = False
    sample.keypoints[P["left_wing"]] = 0
    once = hflip(sample)
    assert not once.visible[P["right_wing"]] and once.visible[P["left_wing"]]
    twice = hflip(once)
    np.testing.assert_allclose(twice.keypoints, sample.keypoints, atol=1e-5)
    np.testing.assert_array_equal(twice.visible, sample.visible)
    np.testing.assert_array_equal(twice.image, sample.image)
    np.testing.assert_allclose(twice.affine, np.eye(3)[:2], atol=1e-12)


def test_keypoints_leaving_the_image_become_invisible_with_zeros() -> None:
    sample = _blob_sample(50, 60, (30.0, 25.0), sigma=3.0)
    sample.keypoints[1] = (5.0, 10.0)    # will leave on the left
    sample.keypoints[2] = (55.0, 45.0)   # stays
    out = warp_sample(sample, affine_translate(-10.0, 0.0), (50, 60))
    assert not out.visible[1] and np.all(out.keypoints[1] == 0)
    assert out.visible[2]
    np.testing.assert_allclose(out.keypoints[2], [45.0, 45.0])


def test_resize_to_input_scales_each_axis(cub_root: Path) -> None:
    sample = CubDataset(cub_root, "train")[0]  # W 40, H 30
    out = resize_to_input(sample, 64)
    assert out.image.shape == (64, 64, 3)
    vis = sample.visible
    np.testing.assert_allclose(out.keypoints[vis], sample.keypoints[vis] * [64 / 40, 64 / 30], rtol=1e-5)
    np.testing.assert_allclose(out.bbox, sample.bbox * np.array([64 / 40, 64 / 30, 64 / 40, 64 / 30]), rtol=1e-5)


@pytest.mark.parametrize("src_hw,out_hw", [((375, 500), (160, 160)), ((375, 500), (500, 500)),
                                           ((300, 90), (128, 128)), ((61, 47), (61, 47))])
def test_resize_image_samples_like_the_warp_of_the_same_map(src_hw: tuple[int, int],
                                                            out_hw: tuple[int, int]) -> None:
    """Pixels agree with warp_image(affine_scale) up to OpenCV rounding; only enlarged edges may differ."""
    image = np.random.default_rng(4).integers(0, 256, (*src_hw, 3), dtype=np.uint8)
    image = np.ascontiguousarray(np.cumsum(image, axis=1) % 256, dtype=np.uint8)  # structure, not just noise
    affine = affine_scale(out_hw[1] / src_hw[1], out_hw[0] / src_hw[0])
    fast, warped = resize_image(image, out_hw).astype(int), warp_image(image, affine, out_hw).astype(int)
    assert fast.shape == warped.shape == (*out_hw, 3)
    interior = np.abs(fast - warped)[1:-1, 1:-1]
    assert interior.max() <= 2, interior.max()
    assert np.mean(interior > 0) < 0.1
    if out_hw[0] <= src_hw[0] and out_hw[1] <= src_hw[1]:   # shrinking: no border samples, same pixels
        assert np.abs(fast - warped).max() <= 1


def test_resize_to_input_moves_coordinates_like_warp_sample() -> None:
    sample = _blob_sample(50, 70, (30.0, 25.0), sigma=4.0)
    fast, warped = resize_to_input(sample, 32), warp_sample(sample, affine_scale(32 / 70, 32 / 50), (32, 32))
    np.testing.assert_array_equal(fast.keypoints, warped.keypoints)
    np.testing.assert_array_equal(fast.visible, warped.visible)
    np.testing.assert_array_equal(fast.bbox, warped.bbox)
    np.testing.assert_array_equal(fast.affine, warped.affine)
    assert EvalTransform(32)(sample).image.tobytes() == fast.image.tobytes()


def test_eval_transform_records_the_map_back_to_the_file(cub_root: Path) -> None:
    for sample in CubDataset(cub_root, "all"):
        out = EvalTransform(48)(sample)
        assert out.orig_size == sample.size
        back = apply_affine(invert_affine(out.affine), out.keypoints[out.visible])
        np.testing.assert_allclose(back, sample.keypoints[out.visible], atol=1e-4)


def test_train_augment_is_seeded_and_keeps_the_input_size(cub_root: Path) -> None:
    sample = CubDataset(cub_root, "train")[0]
    augment = TrainAugment(56)
    a = augment(sample, np.random.default_rng(5))
    b = augment(sample, np.random.default_rng(5))
    c = augment(sample, np.random.default_rng(6))
    assert a.image.shape == (56, 56, 3)
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(a.affine, c.affine)
    inside = a.keypoints[a.visible]
    assert np.all((inside >= 0) & (inside < 56))


def test_train_augment_scale_and_crop_stay_in_range(cub_root: Path) -> None:
    sample = CubDataset(cub_root, "train")[0]  # W 40, H 30
    augment = TrainAugment(56, flip_p=0.0)
    rng = np.random.default_rng(0)
    for _ in range(50):
        affine = augment.sample_affine(sample, rng)
        sx, sy = affine[0, 0] * 40 / 56, affine[1, 1] * 30 / 56
        assert 1.0 - 1e-9 <= sx <= 1.15 + 1e-9 and abs(sx - sy) < 1e-9  # s x s resize, s in [S, 1.15 S]
        corners = apply_affine(affine, np.array([[0.0, 0.0], [40.0, 30.0]]))
        assert np.all(corners[0] <= 1e-9) and np.all(corners[1] >= 56 - 1e-9)  # crop inside the image


def test_train_augment_flip_swaps_parts(cub_root: Path) -> None:
    sample = CubDataset(cub_root, "train")[0]
    out = TrainAugment(40, flip_p=1.0, scale=(1.0, 1.0))(sample, np.random.default_rng(0))
    # scale 1: the image is only warped anisotropically to 40 x 40 and mirrored
    np.testing.assert_allclose(out.keypoints[P["left_eye"]], [40 - 31.0, 8.0 * 40 / 30], atol=1e-4)


def test_colour_jitter_changes_pixels_only(cub_root: Path) -> None:
    sample = EvalTransform(32)(CubDataset(cub_root, "train")[0])
    out = jitter_colour(sample, 0.4, np.random.default_rng(1))
    assert not np.array_equal(out.image, sample.image) and out.image.dtype == np.uint8
    np.testing.assert_array_equal(out.keypoints, sample.keypoints)
    assert jitter_colour(sample, 0.0, np.random.default_rng(1)) is sample
