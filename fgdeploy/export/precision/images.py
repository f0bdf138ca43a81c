"""Images for INT8 calibration and for the precision guard, decoded exactly like ``fgdeploy infer``.

A source is a CUB-format dataset (a folder holding images.txt, e.g. synth-birds) or a plain folder of
images (searched recursively, as ``fgdeploy infer`` does). Calibration reads a dataset's train split;
the guard (``fgdeploy.export.precision.guard``) holds out its test split (``guard_source``). Every image goes through
``fgdeploy.inference.local.decode_one`` (the project's decoder, anisotropic resize to S x S) and becomes model
input as ``RunnerPredictor.prepare`` makes it (RGB / 255, NCHW float32).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

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
    extra: dict[str, str] = field(default_factory=dict)

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


def calibration_batches(images: ImageSet, batch: int = 8) -> Iterator[np.ndarray]:
    """Model-input batches of ``images``."""
    for start in range(0, len(images), batch):
        yield images.model_input(start, start + batch)


def calibration_reader(images: ImageSet, input_name: str, batch: int = 8):  # type: ignore[no-untyped-def]
    """An ``onnxruntime.quantization.CalibrationDataReader`` feeding ``images`` in batches."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._batches = calibration_batches(images, batch)

        def get_next(self) -> dict[str, np.ndarray] | None:
            nxt = next(self._batches, None)
            return None if nxt is None else {input_name: nxt}

    return Reader()


def guard_source(source: Path | None, calibration: Path | None, size: int, n: int) -> ImageSource | None:
    """The guard's images: ``source`` (a CUB-format dataset's test split with ground truth, or a folder of
    images), else the ``calibration`` dataset's test split; None when there is neither. ``n`` images at most,
    spread over the split or folder.

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
        images = DatasetImages(source, "test", size, n)
        if len(images) == 0:
            raise ConfigError(f"guard: {source} has no test images; give --guard a folder of held-out images")
        return images
    held_out = load_image_set(source, size, n, "all", minimum=1, what="guard")
    return ArrayImages(held_out.model_input(), description=held_out.description)
