"""Training throughput of the trainer's own step (``fgdeploy.train.trainer.train_one_epoch``).

Each measured step is the real one: forward for the stage, loss, backward, SGD step, LR schedule, and on
CUDA autocast + GradScaler. Inputs are one random batch reused (the model's cost does not depend on pixel
values), so the number is model + optimizer throughput, not data loading.

CPU (default): the demo config, stages 2 (localization net), 3 (classification on GT parts) and 4 (all).
CUDA: the paper config at its 500 x 500 input, stage 4 (everything trains), fp32 vs AMP (float16) +
channels_last in the same run, so the two numbers come from the same card.

Usage:
  python bench/bench_train.py --config demo --threads 2 --batch 16 --out runs/bench/bench_train_cpu.json
  python bench/bench_train.py --device cuda --config cub_vgg16_fc7 --iters 20 --out bench_train_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from fgdeploy.fileio import atomic_write_bytes
from fgdeploy.models import create_model, load_model_config
from fgdeploy.train.config import StageConfig, TrainConfig
from fgdeploy.train.stages import STAGES, build_optimizer, build_scheduler
from fgdeploy.train.trainer import HeatmapView, StepContext, TrainState, train_one_epoch


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="model config (default: demo on CPU, cub_vgg16_fc7 on CUDA)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 16 on CPU, 8 on CUDA)")
    p.add_argument("--iters", type=int, default=None, help="timed steps per mode (default 10 CPU, 20 CUDA)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (cudnn autotuning, allocator)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--stages", default=None, help="comma list of stages (default 2,3,4 on CPU, 4 on CUDA)")
    p.add_argument("--num-classes", type=int, default=200)
    p.add_argument("--out", type=Path, required=True, help="JSON result file")
    return p.parse_args()


def random_batch(n: int, size: int, parts: int, classes: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    batch = {"images": torch.rand(n, 3, size, size, generator=g),
             "keypoints": torch.rand(n, parts, 2, generator=g) * size,
             "visible": (torch.rand(n, parts, generator=g) > 0.15).float(),
             "labels": torch.randint(0, classes, (n,), generator=g)}
    return {k: v.to(device) for k, v in batch.items()}


def measure(cfg: Any, stage_no: int, args: argparse.Namespace, device: torch.device, amp: bool,
            channels_last: bool) -> dict[str, Any]:
    """Images/s of ``iters`` trainer steps (after ``warmup``) for one stage and precision mode."""
    torch.manual_seed(0)
    model = create_model(cfg, args.num_classes).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    stage = STAGES[stage_no]
    tcfg = TrainConfig(batch_size=args.batch, amp=amp, channels_last=channels_last)
    scfg = StageConfig(epochs=1, lr=1e-4, head_lr=1e-3)
    optimizer = build_optimizer(model, stage, scfg, tcfg)
    total = args.warmup + args.iters
    scheduler = build_scheduler(optimizer, scfg, total)
    use_amp = amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    runner = model if stage.classification_loss else HeatmapView(model)
    hw = model.heatmap_size
    ctx = StepContext(runner, optimizer, scheduler, scaler, stage, tcfg, device, (hw[0], hw[1]),
                      model.input_size, use_amp)
    batch = random_batch(args.batch, cfg.input_size, cfg.num_parts, args.num_classes, device)

    def run(steps: int) -> float:
        state = TrainState(stage=stage_no)
        _sync(device)
        start = time.perf_counter()
        train_one_epoch(ctx, iter([batch] * steps), state, steps, show_progress=False)
        _sync(device)
        return time.perf_counter() - start

    run(args.warmup)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = run(args.iters)
    out = {"stage": stage_no, "amp": use_amp, "channels_last": channels_last, "batch": args.batch,
           "iters": args.iters, "seconds": round(seconds, 3),
           "images_per_s": round(args.batch * args.iters / seconds, 2),
           "ms_per_step": round(1000 * seconds / args.iters, 2)}
    if device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    del model, optimizer, ctx
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    args.config = args.config or ("cub_vgg16_fc7" if cuda else "demo")
    args.batch = args.batch or (8 if cuda else 16)
    args.iters = args.iters or (20 if cuda else 10)
    stages = [int(s) for s in (args.stages or ("4" if cuda else "2,3,4")).split(",")]
    torch.set_num_threads(args.threads)
    if cuda:
        torch.backends.cudnn.benchmark = True
    cfg = load_model_config(args.config)
    modes = [(False, False), (True, True)] if cuda else [(False, False)]
    results = []
    for stage_no in stages:
        for amp, channels_last in modes:
            res = measure(cfg, stage_no, args, device, amp, channels_last)
            results.append(res)
            print(f"stage {stage_no} {'amp+channels_last' if amp else 'fp32'}: {res['images_per_s']:.1f} img/s "
                  f"({res['ms_per_step']:.1f} ms/step, batch {args.batch})", flush=True)
    report: dict[str, Any] = {
        "what": "training images/s of the trainer's step (forward, loss, backward, SGD step, schedule)",
        "config": args.config, "input_size": cfg.input_size, "device": str(device), "results": results,
        "machine": {"threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__, "load_avg": list(os.getloadavg())},
    }
    if cuda:
        report["machine"]["gpu"] = torch.cuda.get_device_name(device)
        report["machine"]["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        report["machine"]["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
        by_mode = {(r["stage"], r["amp"]): r["images_per_s"] for r in results}
        report["amp_speedup"] = {str(s): round(by_mode[(s, True)] / by_mode[(s, False)], 2) for s in stages}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, (json.dumps(report, indent=2) + "\n").encode())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
