"""Decoding every kind of image file to RGB uint8, and errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cub_fixture import CMYK_RGB, IMAGE_SIZES, PALETTE

from fgdeploy.data.images import probe_image, read_image, read_image_with_info
from fgdeploy.errors import ImageError


def _path(root: Path, image_id: int) -> Path:
    rel = (root / "images.txt").read_text().splitlines()[image_id - 1].split(" ", 1)[1]
    return root / "images" / rel


@pytest.mark.parametrize("image_id, mode", [(1, "rgb"), (2, "grayscale"), (3, "rgba"), (4, "palette"),
                                            (5, "cmyk"), (6, "rgb")])
def test_read_image_returns_rgb_uint8_for_each_file_kind(cub_root: Path, image_id: int, mode: str) -> None:
    image, info = read_image_with_info(_path(cub_root, image_id))
    assert image.dtype == np.uint8 and image.shape == (*IMAGE_SIZES[image_id], 3)
    assert info.mode == mode
    assert (info.height, info.width) == IMAGE_SIZES[image_id]


def test_grayscale_is_replicated_to_three_equal_channels(cub_root: Path) -> None:
    image = read_image(_path(cub_root, 2))
    assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])
    assert image.std() > 10  # the random content survived


def test_alpha_is_dropped_and_channels_are_rgb_ordered(cub_root: Path) -> None:
    image = read_image(_path(cub_root, 3))  # written as BGRA (40, 120, 200, alpha)
    assert np.array_equal(image[0, 0], [200, 120, 40])


def test_palette_png_is_expanded(cub_root: Path) -> None:
    image = read_image(_path(cub_root, 4))
    assert [tuple(image[0, k]) for k in range(3)] == PALETTE


def test_cmyk_jpeg_is_converted_to_rgb(cub_root: Path) -> None:
    image = read_image(_path(cub_root, 5))
    assert np.abs(image.astype(int) - np.array(CMYK_RGB)).max() <= 2


def test_sixteen_bit_png_is_scaled_to_eight_bits(cub_root: Path) -> None:
    image, info = read_image_with_info(_path(cub_root, 6))  # written as BGR (1000, 30000, 65535)
    assert info.bit_depth == 16
    assert np.array_equal(image[0, 0], [255, 117, 4])


def test_rgb_jpeg_matches_what_was_encoded(cub_root: Path) -> None:
    import cv2

    path = _path(cub_root, 1)
    expected = cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1]
    assert np.array_equal(read_image(path), expected)


def test_probe_reads_header_without_decoding(cub_root: Path) -> None:
    info = probe_image(_path(cub_root, 5))
    assert (info.format, info.mode, info.width, info.height) == ("jpeg", "cmyk", 16, 8)


def test_corrupt_file_error_names_the_path(tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ImageError, match=r"broken\.jpg: not a decodable image"):
        read_image(bad)


def test_missing_file_error_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"nothere\.png: cannot read image file"):
        read_image(tmp_path / "nothere.png")


def test_truncated_jpeg_is_flagged(cub_root: Path, tmp_path: Path) -> None:
    data = _path(cub_root, 1).read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) - 40])
    assert probe_image(cut).truncated and not probe_image(_path(cub_root, 1)).truncated
