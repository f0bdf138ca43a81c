"""Head/body boxes and the part crop: NumPy reference on hand-made cases, and torch vs the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fgdeploy.ops.part_boxes import part_boxes as torch_part_boxes
from fgdeploy.ops.part_crop import crop_box
from fgdeploy.reference import create_layer
from fgdeploy.reference.part_boxes import (
    BODY_PARTS, HEAD_PARTS, box_iou, part_boxes, part_set_indices, pcp,
)
from fgdeploy.tensors import NUM_PARTS, PART_NAMES

torch.set_num_threads(2)
HEAD, BODY = part_set_indices()


def _kp(points: dict[str, tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    kp = np.zeros((1, NUM_PARTS, 2))
    vis = np.zeros((1, NUM_PARTS), bool)
    for name, uv in points.items():
        kp[0, PART_NAMES.index(name)] = uv
        vis[0, PART_NAMES.index(name)] = True
    return kp, vis


def _torch_boxes(kp, vis, hw, **kw):
    sets = part_set_indices()
    return torch_part_boxes(torch.from_numpy(kp), torch.from_numpy(vis), hw, sets, **kw).double().numpy()


def test_part_sets_follow_method_md_and_exclude_legs():
    assert [PART_NAMES[i] for i in HEAD] == list(HEAD_PARTS)
    assert [PART_NAMES[i] for i in BODY] == list(BODY_PARTS)
    assert not {"left_leg", "right_leg"} & {PART_NAMES[i] for i in (*HEAD, *BODY)}
    with pytest.raises(ValueError, match="beak"):
        part_set_indices([n for n in PART_NAMES if n != "beak"])


def test_reference_box_rule_hand_computed():
    # head: beak (100, 50), crown (140, 30) -> tight 40 x 20 -> +15 %: 6 px left/right, 3 px top/bottom
    # -> 52 x 26, too short: widened to 32 about its centre v = 40
    # body: back (50, 100) only -> a point -> 32 x 32 about it; none of the legs counts
    kp, vis = _kp({"beak": (100, 50), "crown": (140, 30), "back": (50, 100), "left_leg": (5, 5)})
    boxes = part_boxes(kp, vis, (200, 300))
    np.testing.assert_allclose(boxes[0, 0], [94, 24, 146, 56])
    np.testing.assert_allclose(boxes[0, 1], [34, 84, 66, 116])


def test_all_invisible_gives_the_whole_image():
    kp = np.random.default_rng(0).uniform(0, 100, (2, NUM_PARTS, 2))
    vis = np.zeros((2, NUM_PARTS), bool)
    vis[1, PART_NAMES.index("left_leg")] = True   # a leg alone makes no box
    for boxes in (part_boxes(kp, vis, (120, 80)), _torch_boxes(kp, vis, (120, 80))):
        np.testing.assert_array_equal(boxes, np.tile([0, 0, 80, 120], (2, 2, 1)))


def test_boxes_at_borders_are_clipped_and_min_size_boxes_stay_inside():
    # head: a point in the top-left corner -> 32 x 32 box pushed inside: [0, 0, 32, 32]
    # body: spans to the right/bottom edge, padding clipped at W, H
    kp, vis = _kp({"throat": (1.0, 2.0), "back": (60, 70), "tail": (99.5, 119.0)})
    ref = part_boxes(kp, vis, (120, 100))
    np.testing.assert_allclose(ref[0, 0], [0, 0, 32, 32])
    np.testing.assert_allclose(ref[0, 1], [60 - 0.15 * 39.5, 70 - 0.15 * 49, 100, 120])
    np.testing.assert_allclose(_torch_boxes(kp, vis, (120, 100)), ref, atol=1e-12)


def test_min_side_applies_per_axis_and_is_capped_by_the_image():
    # a horizontal line of head points: wide enough in u, 0 tall in v -> height widened to min_side
    kp, vis = _kp({"left_eye": (10, 50), "right_eye": (90, 50)})
    ref = part_boxes(kp, vis, (20, 100), min_side=32)   # image only 20 px tall -> side capped at 20
    np.testing.assert_allclose(ref[0, 0], [0, 0, 100, 20])
    ref = part_boxes(kp, vis, (200, 100), min_side=32)
    np.testing.assert_allclose(ref[0, 0], [0, 34, 100, 66])
    np.testing.assert_allclose(_torch_boxes(kp, vis, (200, 100), min_side=32), ref)


@pytest.mark.parametrize("seed", range(5))
def test_torch_boxes_match_reference_on_random_batches(seed):
    rng = np.random.default_rng(seed)
    n, (h, w) = 64, (160, 224)
    kp = np.stack([rng.uniform(-3, w + 3, (n, NUM_PARTS)), rng.uniform(-3, h + 3, (n, NUM_PARTS))], -1)
    kp[: n // 4] = np.clip(kp[: n // 4] * 0.1, 0, None)   # tight clusters -> min-size cases
    vis = rng.random((n, NUM_PARTS)) < rng.choice([0.05, 0.3, 0.9], (n, 1))
    ref = part_boxes(kp, vis, (h, w))
    got = _torch_boxes(kp, vis, (h, w))
    np.testing.assert_allclose(got, ref, atol=1e-4)   # float32 inside the torch version
    assert (got[..., 2] - got[..., 0] >= 32 - 1e-4).all() and (got[..., 3] - got[..., 1] >= 32 - 1e-4).all()
    assert (got[..., :2] >= 0).all() and (got[..., 2] <= w).all() and (got[..., 3] <= h).all()


def test_torch_boxes_take_float16_keypoints_and_float_visibility():
    rng = np.random.default_rng(3)
    kp = rng.uniform(0, 160, (8, NUM_PARTS, 2))
    vis = (rng.random((8, NUM_PARTS)) < 0.5)
    got = torch_part_boxes(torch.from_numpy(kp).half(), torch.from_numpy(vis).float(), (160, 160),
                           part_set_indices())
    ref = part_boxes(kp.astype(np.float16).astype(np.float64), vis, (160, 160))
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-4)


def test_iou_and_pcp():
    a = np.array([0, 0, 10, 10.0])
    assert box_iou(a, a) == pytest.approx(1.0)
    assert box_iou(a, np.array([5, 0, 15, 10.0])) == pytest.approx(50 / 150)
    assert box_iou(a, np.array([20, 20, 30, 30.0])) == 0.0
    pred = np.array([[a, a], [a, [5, 0, 15, 10]]], float)
    gt = np.array([[a, [0, 0, 10, 20]], [a, a]], float)
    np.testing.assert_allclose(pcp(pred, gt), [1.0, 0.5])   # body: IoU 0.5 (counts) and 1/3 (does not)


# --- the crop --------------------------------------------------------------------------------------------
def _random_boxes(rng, n, h, w):
    """Boxes inside, touching every border, thinner than a pixel, and larger than the crop."""
    x0 = rng.uniform(0, w - 1, n)
    y0 = rng.uniform(0, h - 1, n)
    boxes = np.stack([x0, y0, rng.uniform(x0 + 0.3, w), rng.uniform(y0 + 0.3, h)], -1)
    boxes[0] = [0, 0, w, h]
    boxes[1] = [w - 2.2, h - 1.7, w, h]
    boxes[2] = [0, 3.3, 0.6, 4.0]
    return boxes


@pytest.mark.parametrize("size", [7, 16])
def test_crop_matches_reference_forward_and_backward_float64(size):
    rng = np.random.default_rng(size)
    images = rng.standard_normal((6, 3, 13, 17))
    boxes = _random_boxes(rng, 6, 13, 17)
    layer = create_layer("PartCrop", size=size)
    (ref,) = layer.forward([images, boxes])
    top = rng.standard_normal(ref.shape)
    ref_grad = layer.backward([top], [images, boxes])[0]
    x = torch.from_numpy(images).requires_grad_(True)
    out = crop_box(x, torch.from_numpy(boxes), size)
    out.backward(torch.from_numpy(top))
    np.testing.assert_allclose(out.detach().numpy(), ref, atol=1e-10)
    np.testing.assert_allclose(x.grad.numpy(), ref_grad, atol=1e-10)


def test_crop_of_the_whole_image_at_its_own_size_is_the_image():
    images = np.random.default_rng(1).standard_normal((2, 3, 9, 9))
    boxes = np.tile([0.0, 0.0, 9.0, 9.0], (2, 1))
    np.testing.assert_allclose(crop_box(torch.from_numpy(images), torch.from_numpy(boxes), 9).numpy(), images,
                               atol=1e-6)
    (ref,) = create_layer("PartCrop", size=9).forward([images, boxes])
    np.testing.assert_allclose(ref, images, atol=1e-12)


def _smooth_images(rng, n, c, h, w):
    """Random images made of a few low-frequency waves (slopes up to ~0.6 per pixel), like photos at crop scale."""
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    out = np.zeros((n, c, h, w))
    for _ in range(4):
        fx, fy = rng.uniform(-3, 3, (2, n, c, 1, 1))
        phase = rng.uniform(0, 2 * np.pi, (n, c, 1, 1))
        out += 0.5 * np.sin(2 * np.pi * (fx * xx / w + fy * yy / h) + phase)
    return out


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 5e-5), (torch.float16, 2e-2)])
def test_crop_float32_and_float16_match_reference(dtype, atol):
    """Float32 on noise (any image); float16 on smooth random images: its grid coordinates carry ~0.01-0.03 px
    of rounding at 40 px, which on pixel noise (slopes of 4 per pixel) alone would be 0.1."""
    rng = np.random.default_rng(7)
    images = rng.uniform(-2, 2, (4, 3, 40, 40)) if dtype == torch.float32 else _smooth_images(rng, 4, 3, 40, 40)
    boxes = _random_boxes(rng, 4, 40, 40)
    (ref,) = create_layer("PartCrop", size=24).forward([images, boxes])
    got = crop_box(torch.from_numpy(images).to(dtype), torch.from_numpy(boxes).float(), 24)
    assert got.dtype == dtype
    np.testing.assert_allclose(got.double().numpy(), ref, atol=atol)
