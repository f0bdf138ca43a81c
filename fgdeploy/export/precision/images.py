"""Images for INT8 calibration and for the precision guard, decoded exactly like ``fgdeploy infer``.

A source is a CUB-format dataset (a folder holding images.txt, e.g. synth-birds) or a plain folder of
images (searched recursively, as ``fgdeploy infer`` does). Calibration reads a dataset's train split
(decoded through ``fgdeploy.inference.local.decode_one``, the project's decoder, anisotropic resize to S x S,
and made model input as ``RunnerPredictor.prepare`` makes it: RGB / 255, NCHW float32).

What decides is never what verifies: the guard (``fgdeploy.export.precision.guard``) chooses on one half of the
test split (every other image, ``guard_and_parity_halves``), and ``fgdeploy parity`` checks by default on the other
half. The model's metadata records the guard's images (ids and content digests, ``GuardImages``), so parity
can say when the images it is given include the guard's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fgdeploy.errors import ConfigError, ImageError

if TYPE_CHECKING:
    from fgdeploy.parity.sources import ImageSource

logger = logging.getLogger(__name__)

MIN_CALIBRATION_IMAGES = 8   # fewer give activation ranges that depend on which images happened to be picked
DEFAULT_CALIBRATION_IMAGES = 64


@dataclass
class ImageSet:
    """Decoded model-input images of one source, in a fixed order."""

    images: np.ndarray               # (N, S, S, 3) uint8 RGB, resized like `fgdeploy infer`
    paths: list[str]
    description: str
    labels: np.ndarray | None = None  # (N,) class ids when the source is a CUB-format split

    def __len__(self) -> int:
        return len(self.images)

    def model_input(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """(n, 3, S, S) float32 in [0, 1], the way ``RunnerPredictor.prepare`` feeds a runner."""
        batch = self.images[start:stop].transpose(0, 3, 1, 2).astype(np.float32)
        batch /= 255.0
        return batch


def is_cub_dataset(source: str | Path) -> bool:
    """Whether ``source`` is a CUB-format dataset (holds images.txt, or CUB_200_2011/images.txt)."""
    from fgdeploy.data.cub import resolve_root

    return (resolve_root(source) / "images.txt").is_file()


def source_paths(source: str | Path, split: str) -> tuple[list[str], np.ndarray | None, str]:
    """(image paths, labels or None, description) of ``source``; ``split`` applies to CUB-format datasets.

    Raises:
        ImageError: ``source`` does not exist or holds no images.
        DatasetError: a CUB-format dataset's annotation files are malformed.
    """
    from fgdeploy.inference.local import discover_images

    if is_cub_dataset(source):
        from fgdeploy.data.cub import CubDataset

        dataset = CubDataset(source, split)  # type: ignore[arg-type]
        if len(dataset) == 0:
            raise ImageError(f"{source}: the CUB-format dataset has no {split} images")
        paths = [str(dataset.image_path(i)) for i in range(len(dataset))]
        return paths, np.asarray(dataset.labels), f"{split} split of {dataset.root}"
    if Path(source).is_file():
        raise ImageError(f"{source}: give a folder of images or a CUB-format dataset, not a file")
    return discover_images(source), None, f"images in {source}"


def spread(count: int, n: int | None) -> np.ndarray:
    """Indices of ``n`` items spread evenly over ``count`` (all when ``n`` is None or larger)."""
    take = count if n is None else max(0, min(n, count))
    return np.unique(np.linspace(0, count - 1, take).round().astype(np.int64)) if take else np.zeros(0, np.int64)


def load_image_set(source: str | Path, size: int, n: int | None, split: str, minimum: int = 1,
                   what: str = "calibration") -> ImageSet:
    """Decode ``n`` images of ``source`` (spread over it) to model input size ``size``.

    Args:
        source: CUB-format dataset or folder of images.
        size: model input side S.
        n: images to use; None: all.
        split: the dataset split ("train", "test", "all") when ``source`` is CUB-format.
        minimum: fewer usable images than this is an error.
        what: "calibration" or "guard", for messages.

    Raises:
        ImageError: no images, fewer than ``minimum``, or a file that cannot be decoded (named, with
            the count of bad files: calibration must not silently depend on which files happened to load).
    """
    from fgdeploy.inference.local import decode_one

    paths, labels, description = source_paths(source, split)
    picks = spread(len(paths), n)
    if len(picks) < minimum:
        raise ImageError(f"{what} images: {source} has {len(paths)} usable image(s) ({description}), "
                         f"at least {minimum} are needed; add images or point to a larger folder")
    decoded = [decode_one(paths[int(i)], size) for i in picks]
    bad = [d for d in decoded if d.image is None]
    if bad:
        raise ImageError(f"{what} image {bad[0].path}: {bad[0].error} ({len(bad)} of {len(decoded)} picked files "
                         "cannot be decoded); remove or replace them")
    images = np.stack([d.image for d in decoded if d.image is not None]).astype(np.uint8, copy=False)
    chosen = labels[picks] if labels is not None else None
    logger.info("%s: %d images (%s)", what, len(images), description)
    return ImageSet(images, [d.path for d in decoded], f"{len(images)} of {len(paths)} {description}", chosen)


def calibration_ranges(count: int, batch: int = 8) -> list[tuple[int, int]]:
    """(start, end) of the calibration batches of ``count`` images, all of one size: the largest divisor of the
    count up to ``batch`` (ONNX Runtime's histogram calibrators, percentile and entropy, fail on a smaller last
    batch)."""
    size = next(b for b in range(max(1, min(batch, count or 1)), 0, -1) if count % b == 0)
    return [(start, start + size) for start in range(0, count, size)]


def calibration_reader(images: ImageSet, input_name: str, batch: int = 8):  # type: ignore[no-untyped-def]
    """An ``onnxruntime.quantization.CalibrationDataReader`` feeding ``images`` in batches, each made into model
    input only when ORT asks for it (one float batch at a time); ``len`` and ``set_range`` (in batches) let ORT's
    strided MinMax calibration reduce the ranges batch by batch."""
    from onnxruntime.quantization import CalibrationDataReader

    ranges = calibration_ranges(len(images), batch)

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.set_range(0, len(ranges))

        def __len__(self) -> int:
            return len(ranges)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._ranges = iter(ranges[start_index:end_index])

        def get_next(self) -> dict[str, np.ndarray] | None:
            nxt = next(self._ranges, None)
            return None if nxt is None else {input_name: images.model_input(*nxt)}

    return Reader()


GUARD_SELECTION = "the guard's half: every other test image"
HELD_OUT_SELECTION = "the test images the guard did not use"


def guard_and_parity_halves(root: str | Path) -> tuple[list[int], list[int]]:
    """(the guard's image ids, parity's image ids) of a CUB-format dataset's test split: every other image in
    images.txt order, positions 0, 2, 4, ... for the guard and 1, 3, 5, ... for parity, so both halves cover
    every class (CUB lists its images class by class) and never share an image."""
    from fgdeploy.data.cub import CubDataset

    ids = list(CubDataset(root, "test", validate=False).image_ids)   # type: ignore[arg-type]
    return ids[0::2], ids[1::2]


def guard_source(source: Path | None, calibration: Path | None, size: int, n: int) -> ImageSource | None:
    """The guard's images: ``source`` (a CUB-format dataset: the guard's half of its test split, with ground
    truth; or a folder of images), else the guard's half of the ``calibration`` dataset's test split; None when
    there is neither. ``n`` images at most, spread over the half or folder.

    Raises:
        ConfigError: a CUB-format ``source`` without test images.
        ImageError: a folder without usable images, or an image that cannot be decoded.
    """
    from fgdeploy.parity.sources import ArrayImages, DatasetImages

    if source is None:
        if calibration is None or not is_cub_dataset(calibration):
            return None
        source = calibration
    if is_cub_dataset(source):
        guard_ids, _ = guard_and_parity_halves(source)
        if not guard_ids:
            raise ConfigError(f"guard: {source} has no test images; give --guard a folder of held-out images")
        return DatasetImages(source, "test", size, n, ids=guard_ids, selection=GUARD_SELECTION)
    held_out = load_image_set(source, size, n, "all", minimum=1, what="guard")
    images = ArrayImages(held_out.model_input(), description=held_out.description, files=held_out.paths)
    images.root = Path(source)
    return images


def file_digests(files: Iterable[str | Path]) -> list[str]:
    """Short content digests (first 16 hex digits of sha256) of image files: the same image, wherever it lies."""
    from fgdeploy.fileio import file_sha256

    return [file_sha256(f)[:16] for f in files]


@dataclass(frozen=True)
class GuardImages:
    """The images a guard chose on, as its model's metadata records them (``precision_guard``)."""

    source: str                      # the dataset or folder
    ids: list[int] | None            # CUB image ids (None: a plain folder)
    digests: list[str]               # ``file_digests`` of the files

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> GuardImages | None:
        """From a model's decoded metadata; None when no guard ran (or an older fgdeploy wrote it)."""
        guard = meta.get("precision_guard") or {}
        if not isinstance(guard, dict) or not guard.get("image_digests"):
            return None
        ids = guard.get("image_ids")
        return cls(str(guard.get("source") or ""), [int(i) for i in ids] if ids else None,
                   [str(d) for d in guard["image_digests"]])

    def overlap(self, files: Iterable[str | Path]) -> int:
        """How many of ``files`` are images the guard chose on."""
        chosen = set(self.digests)
        return sum(d in chosen for d in file_digests(files))

    def held_out_ids(self, root: str | Path) -> list[int] | None:
        """The test images of the CUB-format dataset ``root`` the guard did not use, when the guard ran on
        ``root``; None when its images came from elsewhere (then the whole test split is held out)."""
        from fgdeploy.data.cub import CubDataset, resolve_root

        if self.ids is None or not self.source or not is_cub_dataset(self.source) \
                or resolve_root(self.source).resolve() != resolve_root(root).resolve():
            return None
        used = set(self.ids)
        return [i for i in CubDataset(root, "test", validate=False).image_ids if i not in used]  # type: ignore[arg-type]


def held_out_images(root: str | Path, size: int, meta: Mapping[str, Any], n: int | None = None) -> tuple[Any, bool]:
    """Parity's images for a model: the test split of the CUB-format dataset ``root``, less the images the model's
    guard chose on when it chose on ``root`` (its metadata says; ``GuardImages``); ``n`` of them spread evenly
    (None: all). Returns (the ``DatasetImages``, whether the guard's images were left out)."""
    from fgdeploy.parity import DatasetImages

    guard = GuardImages.from_metadata(meta)
    ids = guard.held_out_ids(root) if guard is not None else None
    images = DatasetImages(root, "test", size, n, ids=ids, selection=HELD_OUT_SELECTION if ids else "")
    return images, ids is not None
