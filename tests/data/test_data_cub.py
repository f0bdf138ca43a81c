"""The CUB-200-2011 reader on the hand-written fixture: values, conventions, and file:line errors."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cub_fixture import IMAGE_SIZES

from fgdeploy.data.cub import CubDataset, load_annotations
from fgdeploy.errors import DatasetError, ImageError
from fgdeploy.tensors import PART_NAMES

EditLine = Callable[[Path, int, "str | None"], None]


def test_reader_splits_and_class_names(cub_root: Path) -> None:
    train, test, every = (CubDataset(cub_root, s) for s in ("train", "test", "all"))
    assert (len(train), len(test), len(every)) == (3, 3, 6)
    assert train.image_ids == [1, 3, 5] and test.image_ids == [2, 4, 6]
    assert train.class_names == ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    assert train.part_names == list(PART_NAMES)  # "left eye" in parts.txt is read as "left_eye"
    assert [s.label for s in test] == [0, 1, 2]


def test_item_converts_cub_coordinates_to_continuous_pixels(cub_root: Path) -> None:
    sample = CubDataset(cub_root, "train")[0]  # image 1, 40 x 30
    assert sample.image.shape == (30, 40, 3) and sample.orig_size == (30, 40)
    assert sample.path == "001.Black_footed_Albatross/Black_Footed_Albatross_0001_1.jpg"
    # right eye written as x=31.5 y=8.5 (1-based pixel centres): u = x - 0.5
    np.testing.assert_allclose(sample.keypoints[PART_NAMES.index("right_eye")], [31.0, 8.0])
    np.testing.assert_allclose(sample.keypoints[PART_NAMES.index("back")], [19.5, 7.5])
    # box "3.0 2.0 30.0 24.0" -> [x-1, y-1, x-1+w, y-1+h]
    np.testing.assert_allclose(sample.bbox, [2.0, 1.0, 32.0, 25.0])
    assert sample.keypoints.dtype == np.float32 and sample.visible.dtype == bool


def test_part_marked_invisible_is_invisible_with_zero_coordinates(cub_root: Path) -> None:
    sample = CubDataset(cub_root, "train")[0]
    beak = PART_NAMES.index("beak")
    assert not sample.visible[beak] and np.all(sample.keypoints[beak] == 0)
    assert sample.visible.sum() == 14


def test_keypoint_outside_the_image_is_read_as_invisible(cub_root: Path) -> None:
    sample = CubDataset(cub_root, "test")[0]  # image 2: tail written at x=100 in a 32-wide image
    tail = PART_NAMES.index("tail")
    assert not sample.visible[tail] and np.all(sample.keypoints[tail] == 0)
    assert sample.visible.sum() == 14


def test_every_item_decodes_to_its_size(cub_root: Path) -> None:
    dataset = CubDataset(cub_root, "all")
    for sample in dataset:
        assert sample.image.shape == (*IMAGE_SIZES[sample.image_id], 3) and sample.image.dtype == np.uint8


def test_windows_and_unix_line_endings_read_the_same(cub_root: Path) -> None:
    before = load_annotations(cub_root)
    for path in cub_root.rglob("*.txt"):
        path.write_bytes(path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    after = load_annotations(cub_root)
    assert after.class_names == before.class_names and after.paths == before.paths
    np.testing.assert_array_equal(after.part_xy, before.part_xy)
    np.testing.assert_array_equal(after.boxes, before.boxes)


def test_archive_parent_folder_is_accepted(tmp_path: Path) -> None:
    from cub_fixture import build_cub_fixture

    build_cub_fixture(tmp_path / "CUB_200_2011")
    assert len(CubDataset(tmp_path, "all")) == 6


def test_unknown_split_is_rejected(cub_root: Path) -> None:
    with pytest.raises(DatasetError, match="unknown split 'val'"):
        CubDataset(cub_root, "val")  # type: ignore[arg-type]


# (file, line, replacement or None to delete, expected message after "<root>/")
MALFORMED = [
    ("parts/part_locs.txt", 3, "1 3 21.0 22.0",
     "parts/part_locs.txt:3: expected 5 fields <image_id> <part_id> <x> <y> <visible>, got 4"),
    ("parts/part_locs.txt", 4, "1 4 15.0 18.0 2", "parts/part_locs.txt:4: <visible> must be 0 or 1, got '2'"),
    ("parts/part_locs.txt", 5, "1 5 13.0 four 1", "parts/part_locs.txt:5: <y> must be a number, got 'four'"),
    ("parts/part_locs.txt", 6, "1 16 10.0 5.0 1", "parts/part_locs.txt:6: part id 16 is not in parts/parts.txt"),
    ("parts/part_locs.txt", 7, "1 1 13.0 7.0 1", "parts/part_locs.txt:7: duplicate line for image 1 part 1 "
                                                  "(first on line 1)"),
    ("parts/part_locs.txt", 8, "9 8 18.0 27.0 1", "parts/part_locs.txt:8: image id 9 is not in images.txt"),
    ("parts/part_locs.txt", 9, None, "parts/part_locs.txt: 1 (image id/part) pair(s) have no line"),
    ("images.txt", 2, "2", "images.txt:2: expected 2 fields <image_id> <path>, got 1"),
    ("images.txt", 3, "2 002.Laysan_Albatross/x.png", "images.txt:3: duplicate image id 2 (first on line 2)"),
    ("images.txt", 4, "4 002.Laysan_Albatross/missing.png", "images.txt:4: image file "),
    ("images.txt", 5, "0 003.Sooty_Albatross/Sooty_Albatross_0001_5.jpg",
     "images.txt:5: <image_id> must be >= 1 (ids are 1-based), got '0'"),
    ("classes.txt", 1, "x 001.Black_footed_Albatross", "classes.txt:1: <class_id> must be an integer, got 'x'"),
    ("classes.txt", 2, "3 002.Laysan_Albatross", "classes.txt:2: class ids must run 1..K in order; got 3"),
    ("image_class_labels.txt", 2, "2 9", "image_class_labels.txt:2: class id 9 is not in classes.txt (ids 1..3)"),
    ("image_class_labels.txt", 3, "33 2", "image_class_labels.txt:3: image id 33 is not in images.txt"),
    ("train_test_split.txt", 4, "4 2", "train_test_split.txt:4: <is_training_image> must be 0 or 1, got '2'"),
    ("train_test_split.txt", 6, None, "train_test_split.txt: 1 image id(s) listed in images.txt has no line "
                                      "here: 6"),
    ("bounding_boxes.txt", 1, "1 a 2.0 30.0 24.0", "bounding_boxes.txt:1: <x> must be a number, got 'a'"),
    ("bounding_boxes.txt", 2, "2 1.0 1.0 0.0 15.0", "bounding_boxes.txt:2: <width> and <height> must be > 0"),
    ("bounding_boxes.txt", 3, "3 2.0 3.0 25.0 14.0 7", "bounding_boxes.txt:3: expected 5 fields <image_id> <x> <y> "
                                                       "<width> <height>, got 6"),
    ("parts/parts.txt", 7, "7 left foot", "parts/parts.txt: parts are ["),
]


@pytest.mark.parametrize("name, line, text, message", MALFORMED, ids=[f"{m[0]}:{m[1]}" for m in MALFORMED])
def test_malformed_line_error_names_file_and_line(cub_root: Path, edit_line: EditLine, name: str, line: int,
                                                  text: str | None, message: str) -> None:
    edit_line(cub_root / name, line, text)
    with pytest.raises(DatasetError, match=re.escape(f"{cub_root}/{message}")):
        CubDataset(cub_root, "all")


@pytest.mark.parametrize("name", ["images.txt", "classes.txt", "image_class_labels.txt", "train_test_split.txt",
                                  "bounding_boxes.txt", "parts/parts.txt", "parts/part_locs.txt"])
def test_missing_annotation_file_is_named(cub_root: Path, name: str) -> None:
    (cub_root / name).unlink()
    with pytest.raises(DatasetError, match=re.escape(f"{cub_root}/{name}: missing file (expected lines <")):
        CubDataset(cub_root)


def test_empty_file_is_reported(cub_root: Path) -> None:
    (cub_root / "bounding_boxes.txt").write_bytes(b"\r\n")
    with pytest.raises(DatasetError, match="bounding_boxes.txt: file has no lines"):
        CubDataset(cub_root)


def test_non_utf8_line_is_reported_with_its_number(cub_root: Path) -> None:
    path = cub_root / "classes.txt"
    path.write_bytes(path.read_bytes().replace(b"Laysan", b"La\xffsan"))
    with pytest.raises(DatasetError, match=r"classes.txt:2: line is not valid UTF-8"):
        CubDataset(cub_root)


def test_error_says_how_many_more_problems_there_are(cub_root: Path, edit_line: EditLine) -> None:
    edit_line(cub_root / "image_class_labels.txt", 1, "1")
    edit_line(cub_root / "image_class_labels.txt", 2, "2")
    with pytest.raises(DatasetError, match=r"image_class_labels.txt:1: .* \(and 1 more problem;"):
        CubDataset(cub_root)


def test_missing_root_says_how_to_make_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dataset folder does not exist.*fgdeploy data synth"):
        CubDataset(tmp_path / "nope")


def test_unreadable_image_raises_image_error_naming_it(cub_root: Path) -> None:
    dataset = CubDataset(cub_root, "test")
    dataset.image_path(1).write_bytes(b"garbage")
    with pytest.raises(ImageError, match=re.escape(str(dataset.image_path(1)))):
        dataset[1]
