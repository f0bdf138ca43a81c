"""torch adapters: a Dataset that applies a transform per item, a collate function, and a loader factory.

A batch is a dict of tensors (N images, P parts, S = model input size)::

    images     (N, 3, S, S) float32 RGB in [0, 1] (no mean/std: the model normalises)
    keypoints  (N, P, 2)    float32 (u, v) in input pixels; 0 where invisible
    visible    (N, P)       float32 0/1
    labels     (N,)         int64 0-based class
    bbox       (N, 4)       float32 [x0, y0, x1, y1] in input pixels
    image_ids  (N,)         int64 CUB image id
    orig_size  (N, 2)       int64 (H, W) of the file as read
    affine     (N, 2, 3)    float32 original-image -> input map; ``invert_affine`` maps predictions back
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fgdeploy.data.sample import Sample

Transform = Callable[[Sample, np.random.Generator], Sample]
BATCH_KEYS: tuple[str, ...] = ("images", "keypoints", "visible", "labels", "bbox", "image_ids", "orig_size",
                               "affine")


class SampleSource(Protocol):
    """Anything indexable that yields `Sample` (a `CubDataset`, a list of samples)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


class TorchSampleDataset(Dataset[Sample]):
    """Wrap a sample source and apply ``transform`` (e.g. `TrainAugment`, `EvalTransform`) per item.

    The transform's random generator is seeded from torch's RNG, which the DataLoader seeds per worker and
    per epoch, so augmentation differs between workers and epochs yet repeats under ``torch.manual_seed``.
    """

    def __init__(self, source: SampleSource, transform: Transform | None = None) -> None:
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Sample:
        sample = self.source[index]
        if self.transform is None:
            return sample
        seed = int(torch.randint(0, 2**62, (1,)).item())
        return self.transform(sample, np.random.default_rng(seed))


def collate_samples(samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
    """Stack same-sized samples into the batch dict described in the module docstring.

    Raises:
        ValueError: images differ in size (apply a transform to a fixed input size first).
    """
    shapes = {s.image.shape for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"cannot batch images of different shapes {sorted(shapes)}; apply EvalTransform or "
                         "TrainAugment (fixed input size) before collating")
    nhwc = np.stack([s.image for s in samples])                                   # (N, S, S, 3) uint8
    images = np.empty((nhwc.shape[0], 3, *nhwc.shape[1:3]), dtype=np.float32)    # (N, 3, S, S)
    np.multiply(nhwc.transpose(0, 3, 1, 2), np.float32(1.0 / 255.0), out=images, casting="unsafe")
    return {
        "images": torch.from_numpy(images),
        "keypoints": torch.from_numpy(np.stack([s.keypoints for s in samples]).astype(np.float32)),
        "visible": torch.from_numpy(np.stack([s.visible for s in samples]).astype(np.float32)),
        "labels": torch.tensor([s.label for s in samples], dtype=torch.int64),
        "bbox": torch.from_numpy(np.stack([s.bbox for s in samples]).astype(np.float32)),
        "image_ids": torch.tensor([s.image_id for s in samples], dtype=torch.int64),
        "orig_size": torch.tensor([s.orig_size for s in samples], dtype=torch.int64),
        "affine": torch.from_numpy(np.stack([s.affine for s in samples]).astype(np.float32)),
    }


def worker_init(worker_id: int) -> None:
    """DataLoader workers: one torch thread each, so N workers use N cores, not N x cores.

    OpenCV's thread count is deliberately left alone: a forked worker inherits the parent's OpenCV thread
    pool state, and resizing it there (``cv2.setNumThreads``) destroys a condition variable the parent's
    pool threads were waiting on, which blocks forever (seen as a hung ``bench/bench_data.py``). OpenCV
    calls themselves are safe in the worker.
    """
    torch.set_num_threads(1)


def make_loader(source: SampleSource, transform: Transform | None, batch_size: int, shuffle: bool,
                num_workers: int = 0, seed: int | None = None, drop_last: bool = False
                ) -> DataLoader[Sample]:
    """A DataLoader over ``source`` with `collate_samples`; ``seed`` fixes shuffling and augmentation."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(TorchSampleDataset(source, transform), batch_size=batch_size, shuffle=shuffle,
                      num_workers=num_workers, collate_fn=collate_samples, generator=generator,
                      drop_last=drop_last, persistent_workers=num_workers > 0,
                      worker_init_fn=worker_init if num_workers > 0 else None)
