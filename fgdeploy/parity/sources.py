"""Images to compare on: random noise, arrays in memory, or a CUB-format dataset split with ground truth."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np

from fgdeploy.parity.report import GroundTruth


class ImageSource:
    """Model-input images to compare on, loadable by index, plus optional ground truth."""

    description = "images"
    truth: GroundTruth
    files: list[Path] = []     # the image files, when the images come from files (digests: overlap checks)
    root: Path | None = None   # the dataset or folder they come from

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, indices: Sequence[int]) -> np.ndarray:
        """(len(indices), 3, S, S) float32 RGB in [0, 1]."""
        raise NotImplementedError


class RandomImages(ImageSource):
    """Seeded uniform-noise images (no ground truth): numeric parity without a dataset."""

    def __init__(self, n: int, size: int, seed: int = 0) -> None:
        self.n, self.size, self.seed = n, size, seed
        self.truth = GroundTruth()
        self.description = f"{n} random images {size}x{size} (seed {seed})"

    def __len__(self) -> int:
        return self.n

    def load(self, indices: Sequence[int]) -> np.ndarray:
        out = np.empty((len(indices), 3, self.size, self.size), np.float32)
        for row, i in enumerate(indices):
            out[row] = np.random.default_rng([self.seed, int(i)]).random((3, self.size, self.size), np.float32)
        return out


class ArrayImages(ImageSource):
    """Images already in memory, (N, 3, S, S) float32 in [0, 1]."""

    def __init__(self, images: np.ndarray, truth: GroundTruth | None = None, description: str = "",
                 files: Sequence[str | Path] = ()) -> None:
        self.images = np.asarray(images, np.float32)
        self.files = [Path(f) for f in files]
        self.truth = truth or GroundTruth()
        self.description = description or f"{len(self.images)} given images"

    def __len__(self) -> int:
        return len(self.images)

    def load(self, indices: Sequence[int]) -> np.ndarray:
        return self.images[np.asarray(indices, dtype=np.int64)]


def spread_picks(total: int, n: int | None) -> np.ndarray:
    """Indices of ``n`` of ``total`` items spread evenly, first and last included (all when None or larger)."""
    count = total if n is None else max(0, min(n, total))
    if not count:
        return np.zeros(0, np.int64)
    return np.unique(np.linspace(0, total - 1, count).round().astype(np.int64))


class DatasetImages(ImageSource):
    """Images of a CUB-format dataset split, warped like ``fgdeploy eval`` (EvalTransform), with ground truth.

    Args:
        root: dataset root (a synth-birds folder or CUB_200_2011).
        split: "train", "test" or "all".
        size: model input side S.
        n: number of images, spread evenly over the split (all when None or larger).
        ids: only these CUB image ids of the split (in the split's order), e.g. one half of the test split;
            None: the whole split.
        selection: what ``ids`` are, for the description (e.g. "the half the guard did not use").
    """

    def __init__(self, root: str | Path, split: str, size: int, n: int | None = None,
                 ids: Collection[int] | None = None, selection: str = "") -> None:
        from fgdeploy.data.cub import CubDataset
        from fgdeploy.data.transforms import EvalTransform

        dataset = CubDataset(root, split)  # type: ignore[arg-type]
        total = len(dataset)
        allowed = set(ids) if ids is not None else None
        pool = np.asarray([i for i, image_id in enumerate(dataset.image_ids)
                           if allowed is None or image_id in allowed], np.int64)
        picks = pool[spread_picks(len(pool), n)]
        self.files = [dataset.image_path(int(i)) for i in picks]
        transform = EvalTransform(size)
        images, labels, image_ids, kps, vis, boxes, affines = [], [], [], [], [], [], []
        for index in picks:
            raw = dataset[int(index)]
            warped = transform(raw, None)
            images.append(warped.image)
            labels.append(raw.label)
            image_ids.append(raw.image_id)
            kps.append(np.asarray(raw.keypoints, np.float64))
            vis.append(np.asarray(raw.visible, bool))
            boxes.append(np.asarray(raw.bbox, np.float64))
            affines.append(np.asarray(warped.affine, np.float64)[:2])
        self._images = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
        self.truth = GroundTruth(labels=np.asarray(labels, np.int64), keypoints=np.stack(kps) if kps else None,
                                 visible=np.stack(vis) if vis else None, bbox=np.stack(boxes) if boxes else None,
                                 affine=np.stack(affines) if affines else None, image_ids=np.asarray(image_ids, np.int64))
        self.class_names = list(dataset.class_names)
        self.root = Path(dataset.root)
        of = f"{len(picks)} of {total} {split} images of {dataset.root}"
        self.description = f"{of} ({selection})" if selection else of

    def __len__(self) -> int:
        return len(self._images)

    def load(self, indices: Sequence[int]) -> np.ndarray:
        batch = self._images[np.asarray(indices, dtype=np.int64)]  # (n, S, S, 3) uint8
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)
