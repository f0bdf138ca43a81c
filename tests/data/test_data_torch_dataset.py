"""The torch adapter: batch dict shapes, dtypes, ranges, and mapping predictions back to the file."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from fgdeploy.data.cub import CubDataset
from fgdeploy.data.torch_dataset import BATCH_KEYS, TorchSampleDataset, collate_samples, make_loader
from fgdeploy.data.transforms import EvalTransform, TrainAugment, apply_affine, invert_affine, to_tensor_batch


def test_collate_gives_the_documented_batch(cub_root: Path) -> None:
    dataset = CubDataset(cub_root, "all")
    batch = collate_samples([EvalTransform(40)(s) for s in dataset])
    assert tuple(batch) == BATCH_KEYS
    assert batch["images"].shape == (6, 3, 40, 40) and batch["images"].dtype == torch.float32
    assert 0.0 <= float(batch["images"].min()) and float(batch["images"].max()) <= 1.0
    assert batch["keypoints"].shape == (6, 15, 2) and batch["visible"].shape == (6, 15)
    assert batch["visible"].dtype == torch.float32 and set(batch["visible"].unique().tolist()) <= {0.0, 1.0}
    assert batch["labels"].tolist() == [0, 0, 1, 1, 2, 2] and batch["labels"].dtype == torch.int64
    assert batch["bbox"].shape == (6, 4) and batch["affine"].shape == (6, 2, 3)
    assert batch["orig_size"].tolist() == [[30, 40], [24, 32], [20, 30], [16, 24], [8, 16], [20, 20]]
    assert batch["image_ids"].tolist() == [1, 2, 3, 4, 5, 6]


def test_images_are_rgb_channels_first_scaled_to_unit_range(cub_root: Path) -> None:
    sample = EvalTransform(40)(CubDataset(cub_root, "train")[1])  # image 3: flat (200, 120, 40) RGB
    batch = to_tensor_batch([sample])
    np.testing.assert_allclose(batch["images"][0, :, 20, 20].numpy(), np.array([200, 120, 40]) / 255, atol=1e-6)


def test_predictions_map_back_to_original_pixels(cub_root: Path) -> None:
    dataset = CubDataset(cub_root, "all")
    batch = collate_samples([EvalTransform(64)(s) for s in dataset])
    for n, sample in enumerate(dataset):
        affine = batch["affine"][n].double().numpy()
        vis = batch["visible"][n].bool().numpy()
        back = apply_affine(invert_affine(affine), batch["keypoints"][n].double().numpy()[vis])
        np.testing.assert_allclose(back, sample.keypoints[vis], atol=1e-3)


def test_collate_refuses_mixed_sizes(cub_root: Path) -> None:
    dataset = CubDataset(cub_root, "all")
    with pytest.raises(ValueError, match="different shapes"):
        collate_samples([dataset[0], dataset[1]])


def test_loader_augments_reproducibly_under_a_seed(cub_root: Path) -> None:
    dataset = CubDataset(cub_root, "all")
    def first_batch() -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        return next(iter(make_loader(dataset, TrainAugment(32), batch_size=6, shuffle=True, seed=1)))
    a, b = first_batch(), first_batch()
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"])
    torch.manual_seed(1)
    c = next(iter(make_loader(dataset, TrainAugment(32), batch_size=6, shuffle=True, seed=1)))
    assert torch.equal(a["labels"], c["labels"]) and not torch.equal(a["affine"], c["affine"])


def test_dataset_without_transform_returns_samples(cub_root: Path) -> None:
    dataset = CubDataset(cub_root, "test")
    wrapped = TorchSampleDataset(dataset)
    assert len(wrapped) == 3 and wrapped[2].image_id == dataset[2].image_id


def test_loader_workers_start_after_the_parent_used_opencv_threads(cub_root: Path) -> None:
    """Forked workers must not hang when the parent's OpenCV pool threads were idle-waiting at the fork."""
    script = textwrap.dedent(f"""
        import time, cv2, numpy as np
        from fgdeploy.data.cub import CubDataset
        from fgdeploy.data.torch_dataset import make_loader
        from fgdeploy.data.transforms import TrainAugment
        cv2.setNumThreads(2)
        big = np.random.default_rng(0).integers(0, 256, (2000, 2000, 3), dtype=np.uint8)
        for _ in range(3):
            cv2.resize(big, (500, 500), interpolation=cv2.INTER_AREA)  # starts OpenCV's pool threads
        time.sleep(0.5)                                                # ... which now wait on their condvar
        loader = make_loader(CubDataset({str(cub_root)!r}, "all"), TrainAugment(32), batch_size=3,
                             shuffle=False, num_workers=2, seed=0)
        print(sum(int(b["images"].shape[0]) for b in loader))
    """)
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("DataLoader workers hung after the parent used OpenCV threads")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "6"
