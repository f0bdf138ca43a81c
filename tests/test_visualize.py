"""Keypoint drawing: colours at the right pixels, hidden parts not drawn, inputs untouched, PNG output."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fgdeploy.visualize import draw_caption, draw_keypoints, make_grid, part_colors, save_image, side_by_side


def _image() -> np.ndarray:
    return np.random.default_rng(0).integers(60, 120, (80, 100, 3), dtype=np.uint8)


def test_draw_keypoints_colours_the_keypoint_pixel_and_skips_hidden_parts():
    image = _image()
    before = image.copy()
    kp = np.array([[20.5, 30.5], [70.5, 50.5]])  # continuous (u, v): pixel centres (20, 30) and (70, 50)
    out = draw_keypoints(image, kp, visible=np.array([True, False]), radius=3)
    np.testing.assert_array_equal(image, before)  # input untouched
    assert tuple(out[30, 20]) == part_colors(2)[0]
    np.testing.assert_array_equal(out[45:56, 65:76], image[45:56, 65:76])  # hidden part: nothing drawn


def test_draw_keypoints_hollow_ring_leaves_centre():
    image = _image()
    out = draw_keypoints(image, np.array([[50.5, 40.5]]), hollow=np.array([True]), radius=6)
    np.testing.assert_array_equal(out[40, 50], image[40, 50])
    assert (out[40, 44:58] != image[40, 44:58]).any()


def test_grid_and_captions_layout_and_png_roundtrip(tmp_path):
    tile = side_by_side(draw_caption(_image(), "GT: a"), draw_caption(_image(), "pred: b"), gap=4)
    assert tile.shape[1] == 2 * 100 + 4 and tile.shape[0] > 80
    grid = make_grid([tile] * 3, cols=2, gap=8)
    assert grid.shape == (2 * tile.shape[0] + 3 * 8, 2 * tile.shape[1] + 3 * 8, 3)
    path = save_image(tmp_path / "g.png", grid)
    back = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(back, grid)


# issue 17 #15: text scales with the picture; parts are labelled with short names and a legend
def test_part_labels_are_short_unique_and_cub_ones_match_the_preview():
    from fgdeploy.data.preview import PART_LABELS
    from fgdeploy.tensors import PART_NAMES
    from fgdeploy.visualize import part_labels

    assert part_labels(PART_NAMES) == list(PART_LABELS)
    assert part_labels(["left_fin", "left_foot", "tail"]) == ["LF", "LF2", "Ta"]


def test_caption_and_labels_grow_together_with_the_image():
    from fgdeploy.visualize import text_scale

    small, big = np.zeros((256, 256, 3), np.uint8), np.zeros((1536, 1536, 3), np.uint8)
    assert text_scale((1536, 1024)) == pytest.approx(3 * text_scale((512, 300)), rel=0.01)
    assert text_scale(small.shape) == 0.35   # readable floor
    band_small = draw_caption(small, "003.Bird p=0.5").shape[0] - 256
    band_big = draw_caption(big, "003.Bird p=0.5").shape[0] - 1536
    assert band_big > 2.5 * band_small   # the header used to stay at scale 0.6 (same band) while labels grew


def test_legend_names_every_part_in_its_colour_and_wraps():
    from fgdeploy.tensors import PART_NAMES
    from fgdeploy.visualize import legend

    wide, narrow = legend(2000, PART_NAMES), legend(250, PART_NAMES)
    assert wide.shape[1] == 2000 and narrow.shape[1] == 250 and narrow.shape[0] > 3 * wide.shape[0]
    for color in part_colors(len(PART_NAMES)):
        assert (np.abs(wide.astype(int) - color).sum(-1) < 30).any(), color
