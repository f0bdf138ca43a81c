"""Does letting cuDNN time every algorithm help the fastest path? One process per setting (cuDNN's choice is
cached per shape for the life of a process), e.g.:

    for limit in 10 0; do python bench/gpu_cudnn_limit.py --limit $limit --out limit_$limit.json; done

Times fp16 + channels_last + torch.compile + fused conv+ReLU + CUDA graphs (the fastest measured option set)
on the paper config with ``torch.backends.cudnn.benchmark_limit`` = --limit (PyTorch's default is 10; 0 = try
all), CUDA events, median of --iters calls per batch.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, required=True, help="torch.backends.cudnn.benchmark_limit")
    parser.add_argument("--batches", default="32,64")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    from gpu_speed import time_variant  # type: ignore[import-not-found]

    from fgdeploy.inference.fastpath import CudaGraphed, build_inference_fn, with_cudnn_benchmark
    from fgdeploy.models import create_model, load_model_config

    torch.backends.cudnn.benchmark_limit = args.limit
    cfg = load_model_config("cub_vgg16_fc7")
    torch.manual_seed(0)
    model = create_model(cfg, 200).eval()
    fn = with_cudnn_benchmark(CudaGraphed(build_inference_fn(
        copy.deepcopy(model), "cuda", fp16=True, channels_last=True, compile_mode="default", cuda_graphs=True,
        conv_relu=True)), True)
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "benchmark_limit": args.limit,
              "variant": "fp16-cl-compile+convrelu+graphs", "results": {}}
    for b in (int(x) for x in args.batches.split(",")):
        images = torch.randint(0, 256, (b, cfg.input_size, cfg.input_size, 3), dtype=torch.uint8, device="cuda")
        r = time_variant(fn, images, args.iters, 3)
        result["results"][str(b)] = r
        print(f"benchmark_limit {args.limit} batch {b}: {r['images_per_s']:.1f} img/s (p50 {r['p50_ms']:.2f} ms, "
              f"setup {r['setup_s']:.1f} s)", flush=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
