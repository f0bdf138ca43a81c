"""Benchmark the data path: synth-birds generation, and reading + augmenting at 500 x 500 (JSON out).

Usage::

    python bench/bench_data.py --out bench/results/data.json [--workers 2] [--images-per-class 20]

Measures (one process unless stated):
  * synth generation images/s at 256 px and at 500 px (one core);
  * reader + TrainAugment(500) + collate images/s through a torch DataLoader with ``--workers`` workers,
    and with 0 workers for reference; and the per-stage cost (decode, augment, collate) in ms/image.
Target (issue 2): >= 100 images/s with 2 workers at 500 x 500, so data loading does not limit CPU training.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_IMAGES_PER_S = 100.0


def _synth_rate(root: Path, classes: int, images_per_class: int, size: int) -> float:
    from fgdeploy.data.synthetic import generate_synth_birds

    start = time.perf_counter()
    generate_synth_birds(root, classes=classes, images_per_class=images_per_class, size=size, seed=0)
    return classes * images_per_class / (time.perf_counter() - start)


def _loader_rate(root: Path, size: int, workers: int, batch_size: int, epochs: int) -> float:
    import torch

    from fgdeploy.data.cub import CubDataset
    from fgdeploy.data.torch_dataset import make_loader
    from fgdeploy.data.transforms import TrainAugment

    dataset = CubDataset(root, "all")
    loader = make_loader(dataset, TrainAugment(size), batch_size=batch_size, shuffle=True, num_workers=workers,
                         seed=0)
    iterator = iter(loader)
    next(iterator)  # start-up (worker spawn, first decode) is not steady state
    count, start = 0, time.perf_counter()
    for epoch in range(epochs):
        for batch in (iterator if epoch == 0 else loader):
            count += int(batch["images"].shape[0])
            assert batch["images"].dtype == torch.float32
    return count / (time.perf_counter() - start)


def _stage_costs(root: Path, size: int, n: int) -> dict[str, float]:
    import numpy as np

    from fgdeploy.data.cub import CubDataset
    from fgdeploy.data.torch_dataset import collate_samples
    from fgdeploy.data.transforms import TrainAugment

    dataset = CubDataset(root, "all")
    rng = np.random.default_rng(0)
    augment = TrainAugment(size)
    wall, cpu = [time.perf_counter()], [time.process_time()]

    def mark() -> None:
        wall.append(time.perf_counter())
        cpu.append(time.process_time())

    samples = [dataset[i % len(dataset)] for i in range(n)]
    mark()
    warped = [augment(s, rng) for s in samples]
    mark()
    for k in range(0, n, 16):
        collate_samples(warped[k:k + 16])
    mark()
    out = {}
    for i, stage in enumerate(("decode", "augment", "collate")):
        out[f"{stage}_ms"] = 1e3 * (wall[i + 1] - wall[i]) / n
        out[f"{stage}_cpu_ms"] = 1e3 * (cpu[i + 1] - cpu[i]) / n  # CPU time: what an idle core would need
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        small, large = Path(tmp) / "s256", Path(tmp) / "s500"
        synth_256 = _synth_rate(small, args.classes, args.images_per_class, 256)
        synth_500 = _synth_rate(large, args.classes, args.images_per_class, 500)
        loader = _loader_rate(large, 500, args.workers, args.batch_size, args.epochs)
        loader_0 = _loader_rate(large, 500, 0, args.batch_size, 1)
        stages = _stage_costs(large, 500, 64)
    return {
        "benchmark": "data", "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                         "python": sys.version.split()[0], "torch": torch.__version__},
        "synth": {"images": args.classes * args.images_per_class, "images_per_s_256px": round(synth_256, 1),
                  "images_per_s_500px": round(synth_500, 1), "processes": 1},
        "loader_500px": {"workers": args.workers, "batch_size": args.batch_size,
                         "images_per_s": round(loader, 1), "images_per_s_0_workers": round(loader_0, 1),
                         "per_image_ms": {k: round(v, 2) for k, v in stages.items()}},
        # Throughput one idle core could sustain, from CPU time (wall time suffers on a shared machine).
        "cpu_bound_images_per_s_per_core": round(1e3 / sum(v for k, v in stages.items() if "cpu" in k), 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "target_images_per_s": TARGET_IMAGES_PER_S, "meets_target": loader >= TARGET_IMAGES_PER_S,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="write the JSON here (also printed)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--images-per-class", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    text = json.dumps(run(args), indent=1)
    print(text)
    if args.out:
        from fgdeploy.fileio import atomic_write_text

        atomic_write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
