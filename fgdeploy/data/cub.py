"""CUB-200-2011 reader: the real dataset layout, strictly validated, yielding `Sample` items (torch-free)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np

from fgdeploy.data.cub_format import IMAGES, CubAnnotations, Problems, parse_annotations
from fgdeploy.data.images import read_image
from fgdeploy.data.sample import Sample, identity_affine
from fgdeploy.errors import DatasetError

logger = logging.getLogger(__name__)

Split = Literal["train", "test", "all"]
SPLITS: tuple[str, ...] = ("train", "test", "all")


def resolve_root(root: str | Path) -> Path:
    """The folder holding images.txt: ``root`` itself or ``root/CUB_200_2011`` (the archive's layout)."""
    root = Path(root)
    if not (root / IMAGES).exists() and (root / "CUB_200_2011" / IMAGES).exists():
        return root / "CUB_200_2011"
    return root


def load_annotations(root: str | Path, check_files: bool = True, problems: Problems | None = None
                     ) -> CubAnnotations:
    """Parse and cross-check every annotation file of a CUB-format dataset.

    Args:
        root: dataset root (or its parent holding ``CUB_200_2011/``).
        check_files: also check that every image file in images.txt exists.
        problems: collects every problem found (for reports); the first is raised either way.

    Raises:
        DatasetError: a file is missing or malformed, or ids do not match across files. The message
            names the file and line, e.g. ``.../parts/part_locs.txt:1203: expected 5 fields ...``.
    """
    root = resolve_root(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder does not exist; give the folder holding images.txt "
                           "(make one with `fgdeploy data synth OUT_DIR`)")
    problems = problems if problems is not None else Problems(root)
    ann = parse_annotations(root, problems)
    if ann is not None and check_files:
        for line, rel in zip(ann.image_lines, ann.paths):
            image = root / "images" / rel
            if not image.is_file():
                what = "is a folder, not an image file" if image.is_dir() else "does not exist"
                problems.at(IMAGES, line, f"image file {image} {what}")
    problems.raise_if_any()
    assert ann is not None  # no problems means parse_annotations returned annotations
    return ann


def keypoints_from_cub(xy: np.ndarray, visible: np.ndarray, height: int, width: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """CUB part locations -> continuous (u, v) = (x - 0.5, y - 0.5); outside the image -> invisible, zeros.

    Args:
        xy: (P, 2) CUB x, y. visible: (P,) bool. height, width: image size.

    Returns:
        (P, 2) float32 keypoints and (P,) bool visibility.
    """
    uv = np.asarray(xy, dtype=np.float64) - 0.5
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)
    vis = np.asarray(visible, dtype=bool) & inside
    return np.where(vis[:, None], uv, 0.0).astype(np.float32), vis


def box_from_cub(box: np.ndarray) -> np.ndarray:
    """CUB x, y, width, height (1-based) -> continuous [x0, y0, x1, y1] = [x-1, y-1, x-1+w, y-1+h]."""
    x, y, w, h = (float(v) for v in box)
    return np.array([x - 1.0, y - 1.0, x - 1.0 + w, y - 1.0 + h], dtype=np.float32)


class CubDataset:
    """A split of a CUB-200-2011-format dataset; ``dataset[i]`` is a `Sample` (image decoded on access).

    Attributes:
        root: the folder holding images.txt.
        split: "train", "test" or "all".
        class_names: class names by 0-based label ("001.Black_footed_Albatross", ...).
        part_names: part names in parts.txt order ("back", "beak", ...), == fgdeploy.tensors.PART_NAMES.
        image_ids: CUB image ids of this split, in images.txt order.
        annotations: every annotation of the whole dataset (all splits).
    """

    def __init__(self, root: str | Path, split: Split = "train", validate: bool = True) -> None:
        """Read the annotations.

        Args:
            root: dataset root (or its parent holding ``CUB_200_2011/``).
            split: which images to serve.
            validate: also check that every image file exists (annotation files are always checked).

        Raises:
            DatasetError: see `load_annotations`; also for an unknown ``split``.
        """
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}; use one of {list(SPLITS)}")
        self.annotations = load_annotations(root, check_files=validate)
        self.root = self.annotations.root
        self.split = split
        ann = self.annotations
        mask = np.ones(len(ann.image_ids), dtype=bool) if split == "all" else (ann.is_train == (split == "train"))
        self._rows = np.nonzero(mask)[0]
        self.class_names: list[str] = list(ann.class_names)
        self.part_names: list[str] = list(ann.part_names)
        self.image_ids: list[int] = [int(ann.image_ids[r]) for r in self._rows]
        logger.info("%s: %d %s images, %d classes", self.root, len(self._rows), split, len(self.class_names))

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 0-based labels of this split, without decoding images."""
        return self.annotations.labels[self._rows]

    def image_path(self, index: int) -> Path:
        """Absolute path of item ``index``'s image file."""
        return self.root / "images" / self.annotations.paths[int(self._rows[index])]

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} {self.split} images")
        row = self._rows[index]
        ann = self.annotations
        image = read_image(self.root / "images" / ann.paths[row])
        height, width = image.shape[:2]
        keypoints, visible = keypoints_from_cub(ann.part_xy[row], ann.part_visible[row], height, width)
        return Sample(image=image, keypoints=keypoints, visible=visible, bbox=box_from_cub(ann.boxes[row]),
                      label=int(ann.labels[row]), image_id=int(ann.image_ids[row]), path=ann.paths[row],
                      orig_size=(height, width), affine=identity_affine())
