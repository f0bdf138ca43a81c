"""Training data for the trainer: stratified train/val split, keyed augmentation, per-epoch batch lists.

Reproducible and resumable by construction: the batch order of (stage, epoch) is a permutation drawn from
``seed`` alone, and each item's augmentation generator is seeded from (seed, stage, epoch, image index).
So skipping the first k batches of an epoch (resume) or changing the number of DataLoader workers does not
change any sample a step sees.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fgdeploy.data.sample import Sample
from fgdeploy.data.torch_dataset import collate_samples
from fgdeploy.train.distributed import DistInfo, shard_indices

log = logging.getLogger(__name__)

ItemKey = tuple[int, tuple[int, int, int]]  # (dataset index, (seed, stage, epoch))


class KeyedAugmentDataset(Dataset):
    """``dataset[(index, (seed, stage, epoch))]`` -> transformed Sample, augmentation seeded by the key."""

    def __init__(self, source: Any, transform: Any) -> None:
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: ItemKey) -> Sample:
        index, (seed, stage, epoch) = key
        rng = np.random.default_rng([seed, stage, epoch, index])
        return self.transform(self.source[index], rng)


@dataclass(frozen=True)
class GroundTruth:
    """Original-image annotations of one item (for PCK in the file's pixels)."""

    keypoints: np.ndarray   # (P, 2)
    visible: np.ndarray     # (P,) bool
    bbox: np.ndarray        # (4,)


class EvalItems(Dataset):
    """``dataset[index]`` -> (EvalTransform'ed Sample, its original-image GroundTruth)."""

    def __init__(self, source: Any, transform: Any) -> None:
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[Sample, GroundTruth]:
        raw = self.source[index]
        gt = GroundTruth(np.asarray(raw.keypoints, np.float64), np.asarray(raw.visible, bool),
                         np.asarray(raw.bbox, np.float64))
        return self.transform(raw, None), gt


def collate_items(items: Sequence[Sample | tuple[Sample, GroundTruth]]) -> dict[str, torch.Tensor]:
    """``collate_samples`` batch; eval items add orig_keypoints (N,P,2), orig_visible (N,P), orig_bbox (N,4)."""
    pairs = [item for item in items if isinstance(item, tuple)]
    if not pairs:
        return collate_samples([item for item in items if isinstance(item, Sample)])
    batch = collate_samples([s for s, _ in pairs])
    batch["orig_keypoints"] = torch.from_numpy(np.stack([g.keypoints for _, g in pairs]))
    batch["orig_visible"] = torch.from_numpy(np.stack([g.visible for _, g in pairs]))
    batch["orig_bbox"] = torch.from_numpy(np.stack([g.bbox for _, g in pairs]))
    batch["affine"] = batch["affine"].double()
    return batch


@dataclass
class TrainData:
    """What ``fit`` trains and validates on."""

    train_dataset: KeyedAugmentDataset   # keyed by (index, (seed, stage, epoch))
    eval_dataset: EvalItems              # same source, no augmentation
    train_indices: list[int]
    val_indices: list[int]
    class_names: list[str]
    part_names: list[str]
    eval_batch_size: int = 32


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Hold out ``fraction`` of each class (at least 1 image of classes with >= 2) for validation.

    Returns:
        (train indices, val indices), each sorted.
    """
    rng = np.random.default_rng([seed, 0x5EED])
    train: list[int] = []
    val: list[int] = []
    if fraction <= 0:
        return list(range(len(labels))), []
    for k in np.unique(labels):
        members = np.flatnonzero(labels == k)
        rng.shuffle(members)
        n_val = int(round(fraction * len(members)))
        n_val = max(1, n_val) if len(members) >= 2 else 0
        val.extend(int(i) for i in members[:n_val])
        train.extend(int(i) for i in members[n_val:])
    return sorted(train), sorted(val)


def epoch_batches(indices: Sequence[int], batch_size: int, seed: int, stage: int, epoch: int,
                  info: DistInfo) -> list[list[ItemKey]]:
    """This process's batches of (stage, epoch): shuffled with (seed, stage, epoch), full batches only."""
    order = np.random.default_rng([seed, stage, epoch]).permutation(np.asarray(indices, np.int64)).tolist()
    mine = shard_indices(order, info)
    n = len(mine) // batch_size
    key = (int(seed), int(stage), int(epoch))
    return [[(int(i), key) for i in mine[b * batch_size:(b + 1) * batch_size]] for b in range(n)]


def make_loader(dataset: Dataset, batches: list[list[ItemKey]], workers: int) -> DataLoader:
    """A DataLoader yielding exactly ``batches`` in order (no shuffling of its own).

    It gets its own generator: a DataLoader otherwise draws its workers' base seed from the global torch RNG
    each epoch, which would shift the dropout stream of a resumed run by one draw.
    """
    from fgdeploy.data.torch_dataset import worker_init

    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate_items,
                      pin_memory=torch.cuda.is_available(), persistent_workers=False,
                      generator=torch.Generator().manual_seed(0),
                      worker_init_fn=worker_init if workers > 0 else None)   # one torch thread per worker


def build_train_data(root: str | Path, input_size: int, seed: int, val_fraction: float, augment: bool = True,
                     eval_batch_size: int = 32) -> TrainData:
    """Read the train split of a CUB-format dataset and hold out a stratified validation part.

    Raises:
        DatasetError: the folder is not a valid CUB-format dataset.
    """
    from fgdeploy.data.cub import CubDataset
    from fgdeploy.data.transforms import EvalTransform, TrainAugment

    source = CubDataset(root, "train")
    train_idx, val_idx = stratified_split(np.asarray(source.labels), val_fraction, seed)
    transform = TrainAugment(input_size) if augment else EvalTransform(input_size)
    log.info("data %s: %d train / %d validation images, %d classes", source.root, len(train_idx), len(val_idx),
             len(source.class_names))
    return TrainData(KeyedAugmentDataset(source, transform), EvalItems(source, EvalTransform(input_size)),
                     train_idx, val_idx, list(source.class_names), list(source.part_names), eval_batch_size)
