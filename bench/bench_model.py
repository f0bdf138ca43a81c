"""Benchmark the demo model on CPU: training throughput and the coordinate-transfer op's share of forward time.

Writes JSON (atomically) with:
  train_images_per_s     forward + backward (+ no optimizer step) in training mode on ground-truth parts,
                         loss = cross-entropy + keypoint BCE, at the config's input size
  eval_images_per_s      forward in eval mode (predicted parts), no grad
  op_share_of_forward    time inside the op / wall time of eval forwards (torch.profiler, same run)
  op_ms_per_batch        the op alone on the same heatmaps/features as the eval forward
  op_alone_over_forward  op_ms_per_batch / eval forward ms per batch (a cross-check)
  flops_per_image        from torch.utils.flop_counter (both nets, one image)

Usage:
  python bench/bench_model.py --config demo --threads 2 --batch 16 --out runs/bench/bench_model.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from fgdeploy.fileio import atomic_write_json
from fgdeploy.models import PoseNormalizedNet, create_model, load_model_config
from fgdeploy.models.losses import keypoint_bce_loss
from fgdeploy.ops import coordinate_transfer
from fgdeploy.tensors import OUTPUT_HEATMAPS, OUTPUT_LOGITS

OP_EVENT = "fgdeploy::coordinate_transfer"  # profiler event name of the custom op


def timed(fn: Callable[[], Any], repeats: int, warmup: int) -> float:
    """Median wall seconds of ``fn`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def random_targets(n: int, p: int, hw: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """One-hot (N, P, H, W) maps at random cells (every part visible)."""
    t = torch.zeros(n, p, hw[0] * hw[1])
    t.scatter_(2, torch.randint(0, hw[0] * hw[1], (n, p, 1), generator=gen), 1.0)
    return t.reshape(n, p, *hw)


def op_share_in_forward(step: Callable[[], None], repeats: int) -> float:
    """Fraction of the forward's wall time spent inside the op, from one profiled run of ``repeats`` steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        wall_us = (time.perf_counter() - start) * 1e6
    op_us = sum(e.cpu_time_total for e in prof.key_averages() if e.key == OP_EVENT)
    if op_us == 0:
        raise RuntimeError(f"profiler saw no {OP_EVENT} event; is the op still called by the model?")
    return op_us / wall_us


def capture_op_inputs(model: PoseNormalizedNet, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmaps and transfer-layer features of an eval forward (what the op sees at test time)."""
    with torch.no_grad():
        out = model(images)
        feats = model.classification_trunk((images - model.mean) / model.std)
    layer = model.config.classification.transfer_layer
    return out[OUTPUT_HEATMAPS].contiguous(), feats[layer].contiguous()


def run(config: str, batch: int, repeats: int, warmup: int, seed: int) -> dict[str, Any]:
    """Measure one config; returns the JSON record."""
    cfg = load_model_config(config)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = create_model(cfg, num_classes=20)
    s, p = cfg.input_size, cfg.num_parts
    images = torch.rand(batch, 3, s, s, generator=gen)
    labels = torch.randint(0, 20, (batch,), generator=gen)
    targets = random_targets(batch, p, model.heatmap_size, gen)
    visible = torch.ones(batch, p)

    model.train()

    def train_step() -> None:
        model.zero_grad(set_to_none=True)
        out = model(images, targets, visible)
        loss = F.cross_entropy(out[OUTPUT_LOGITS], labels) + keypoint_bce_loss(out[OUTPUT_HEATMAPS], targets)
        loss.backward()

    train_s = timed(train_step, repeats, warmup)

    model.eval()

    def eval_step() -> None:
        with torch.no_grad():
            model(images)

    eval_s = timed(eval_step, repeats, warmup)
    heatmaps, feats = capture_op_inputs(model, images)
    cls = cfg.classification

    def op_step() -> None:
        with torch.no_grad():
            coordinate_transfer(heatmaps, feats, cls.window, cls.mode_id)

    op_s = timed(op_step, repeats * 5, warmup)
    in_forward_share = op_share_in_forward(eval_step, repeats)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(images[:1])
    return {
        "config": config,
        "input_size": s,
        "batch": batch,
        "heatmap_size": list(model.heatmap_size),
        "transfer_feature_size": list(model.transfer_feature_size or ()),
        "parameters": sum(t.numel() for t in model.parameters()),
        "flops_per_image": counter.get_total_flops(),
        "train_images_per_s": batch / train_s,
        "eval_images_per_s": batch / eval_s,
        "eval_forward_ms_per_batch": eval_s * 1e3,
        "op_ms_per_batch": op_s * 1e3,
        "op_share_of_forward": in_forward_share,
        "op_alone_over_forward": op_s / eval_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo", help="model config name or YAML path (default: demo)")
    parser.add_argument("--batch", type=int, default=16, help="images per step (default: 16)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs, median reported (default: 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first (default: 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/bench_model.json"), help="JSON output file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    record = run(args.config, args.batch, args.repeats, args.warmup, args.seed)
    record.update({
        "threads": args.threads,
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    })
    atomic_write_json(args.out, record)
    print(json.dumps(record, indent=2))  # a script, not library code: stdout is its interface


if __name__ == "__main__":
    main()
