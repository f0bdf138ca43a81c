"""A PNG contact sheet of a CUB-format dataset with boxes and labelled keypoints, for people to look at."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from fgdeploy.data.cub import CubDataset
from fgdeploy.data.images import encode_image
from fgdeploy.data.sample import Sample
from fgdeploy.fileio import atomic_write_bytes
from fgdeploy.tensors import PART_NAMES
from fgdeploy.visualize import CUB_PART_LABELS

# Two-letter labels in PART_NAMES order (the ones infer --save-vis and eval grids draw).
PART_LABELS: tuple[str, ...] = tuple(CUB_PART_LABELS[name] for name in PART_NAMES)
_LEFT, _RIGHT, _MID = (0, 230, 255), (255, 40, 220), (255, 255, 255)   # RGB
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def write_preview(root: str | Path, out_path: str | Path, tiles: int = 24, tile_size: int = 320,
                  columns: int = 6) -> Path:
    """Draw up to ``tiles`` images (one per class first, then more) with keypoints; write a PNG atomically.

    Left parts are cyan, right parts magenta (the bird's own left/right), others white; the green box is
    the bird's bounding box. Returns ``out_path``.
    """
    dataset = CubDataset(root, split="all", validate=False)
    labels = dataset.labels
    order = [int(np.nonzero(labels == k)[0][0]) for k in range(len(dataset.class_names)) if (labels == k).any()]
    order += [i for i in range(len(dataset)) if i not in set(order)]
    order = order[:tiles]
    cells = [_tile(dataset[i], dataset.class_names, tile_size) for i in order]
    rows = -(-len(cells) // columns)
    cells += [np.zeros_like(cells[0])] * (rows * columns - len(cells))
    sheet = np.concatenate([np.concatenate(cells[r * columns:(r + 1) * columns], axis=1) for r in range(rows)])
    sheet = np.concatenate([sheet, _legend(sheet.shape[1])])
    atomic_write_bytes(out_path, encode_image(sheet, ".png"))
    return Path(out_path)


def _tile(sample: Sample, class_names: list[str], size: int) -> np.ndarray:
    height, width = sample.size
    scale = (size - 24) / max(height, width)
    image = cv2.resize(sample.image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    tile = np.full((size, size, 3), 24, dtype=np.uint8)
    tile[:image.shape[0], :image.shape[1]] = image
    x0, y0, x1, y1 = (sample.bbox * scale).round().astype(int)
    cv2.rectangle(tile, (int(x0), int(y0)), (int(x1), int(y1)), (60, 220, 60), 1, cv2.LINE_AA)
    for p, label in enumerate(PART_LABELS):
        if not sample.visible[p]:
            continue
        u, v = sample.keypoints[p] * scale
        colour = _LEFT if label in ("LE", "LL", "LW") else _RIGHT if label in ("RE", "RL", "RW") else _MID
        centre = (int(round(u)), int(round(v)))
        cv2.circle(tile, centre, 4, (0, 0, 0), -1, cv2.LINE_AA)
        cv2.circle(tile, centre, 3, colour, -1, cv2.LINE_AA)
        cv2.putText(tile, label, (centre[0] + 4, centre[1] - 3), _FONT, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(tile, label, (centre[0] + 4, centre[1] - 3), _FONT, 0.4, colour, 1, cv2.LINE_AA)
    caption = f"{class_names[sample.label]}  id {sample.image_id}"
    cv2.putText(tile, caption, (4, size - 7), _FONT, 0.42, (235, 235, 235), 1, cv2.LINE_AA)
    return tile


def _legend(width: int) -> np.ndarray:
    band = np.full((28, width, 3), 16, dtype=np.uint8)
    text = ("Bk back  Bq beak  By belly  Br breast  Cr crown  Fh forehead  Na nape  Ta tail  Th throat  |  "
            "cyan: LE/LL/LW left eye/leg/wing  magenta: RE/RL/RW right (the bird's own side)")
    cv2.putText(band, text, (6, 19), _FONT, 0.45, (230, 230, 230), 1, cv2.LINE_AA)
    return band
