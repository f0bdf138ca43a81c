"""GPU speed of the paper model (cub_vgg16_fc7, 500x500, random weights), every fast-path option side by side.

One run, one GPU (H100/H200; torch >= 2.4 with CUDA, triton; no TensorRT, no network):

  variant                           what it is
  fp32-eager                        fp32, NCHW, TF32 off, cuDNN heuristics            (reference: 121 img/s on H200)
  fp16-cl-eager                     fp16 weights+activations, channels_last           (reference: 820)
  fp16-cl-compile                   + torch.compile(fullgraph=True), default mode     (reference: 1305)
  fp16-cl-eager+bench               + cudnn.benchmark (fgdeploy turns it on by default)
  fp16-cl-eager+bench+graphs        + one CUDA graph per batch size
  fp16-cl-compile+bench             compiled + cudnn.benchmark
  fp16-cl-compile+bench+graphs      compiled + cudnn.benchmark + CUDA graphs
  fp16-cl-max-autotune+bench+graphs compile mode max-autotune-no-cudagraphs (+ our graphs), if time allows
  fp16-cl-compile+convrelu+graphs   + cuDNN conv with fused bias+ReLU epilogue for every (conv, ReLU) pair
  with --all-variants also:
  fp16-cl-compile+streams+graphs    the two trunks compiled as separate graphs on two CUDA streams, one graph
  ...+streams+pad8+graphs           + conv1_1 on 8 zero-padded input channels (exact; aligned NHWC kernels)
  ...+streams+pad8+convrelu+graphs  + the fused conv+ReLU

Each variant runs under its own try/except (an error is recorded, the run goes on). Correctness: each
variant's outputs on one fixed uint8 batch are compared with fp32 eager's (top-1 agreement, keypoints equal,
max |logit diff|, keypoint max px diff) under "correctness"; a variant counts for "fgdeploy_fastest" only if
its top-1 and keypoint agreement are at least fp16-cl-eager's minus 10 points. "profile" lists the top CUDA
kernels of one fp16-cl-compile call (where the time goes), "profile_fastest" those of the fastest variant
(its compiled callable without the CUDA graph, so the profiler sees each kernel).

All variants take the batch as uint8 (N, 500, 500, 3) already on the GPU (as `fgdeploy infer` hands it
over) and convert it inside the timed call (one fused pass, < 0.5 % of the time). Each (variant, batch)
is warmed up (compilation, autotuning, capture; timed separately as ``setup_s``), then every call is
timed with CUDA events; img/s = batch / median latency. "fgdeploy-fastest" is the best fgdeploy
option set per batch; its ratio to fp16-cl-compile is the target (>= 1.3x).

End-to-end: JPEGs (CUB-like 500x375) are generated into a temp folder and scored by
`fgdeploy.inference.local.run_inference` with the fastest option set at the largest batch (decode threads,
pinned uint8 batches copied ahead on a side stream, results journaled); compared with the model-only
throughput of the same predictor (target >= 90 %). "input_pipeline_images_per_s" is the same pipeline
with no model (decode, resize, pinned batch, copy to the GPU): the ceiling the CPU side sets.

A time budget (--budget-s, default 270 s) skips optional steps that would not fit; skipped steps are
listed in the JSON.

Usage (on the GPU machine, from the repository root):
  python bench/gpu_speed.py --out gpu_speed.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

REFERENCE_H200 = {"fp32-eager": 121.0, "fp16-cl-eager": 820.0, "fp16-cl-compile": 1305.0}
NEW_VARIANTS = {  # name -> build_inference_fn keyword arguments (all compiled, fp16, channels_last, + graphs)
    "fp16-cl-compile+convrelu+graphs": {"conv_relu": True},
}
# Measured on the H200 and dropped from the default run (bench/results/h200-2026-11-26*/): streams, pad8 and
# streams+pad8+convrelu (2026-11-26 afternoon: 1252 / 1247 / 1432 img/s at b64, vs 1437 for convrelu);
# conv1_1 as im2col + 1x1 conv (1443 vs 1472) and as a Triton kernel (1375 vs 1453; code in commit 9b4f1e4).
OPTIONAL_VARIANTS = {
    "fp16-cl-compile+streams+graphs": {"split_streams": True},
    "fp16-cl-compile+streams+pad8+graphs": {"split_streams": True, "pad_input": True},
    "fp16-cl-compile+streams+pad8+convrelu+graphs": {"split_streams": True, "pad_input": True, "conv_relu": True},
}
CLI_FLAGS = {"conv_relu": "--fuse-conv-relu"}
FLAGS = {  # how to get each fast-path variant from the CLI (cudnn.benchmark is fgdeploy's default on GPU)
    "fp16-cl-eager+bench": "--fp16 --channels-last",
    "fp16-cl-eager+bench+graphs": "--fp16 --channels-last --cuda-graphs",
    "fp16-cl-compile+bench": "--fp16 --channels-last --compile default",
    "fp16-cl-compile+bench+graphs": "--fp16 --channels-last --compile default --cuda-graphs",
    "fp16-cl-max-autotune+bench+graphs": "--fp16 --channels-last --compile max-autotune --cuda-graphs",
    **{name: "--fp16 --channels-last --compile default --cuda-graphs " + " ".join(CLI_FLAGS[k] for k in kw)
       if all(k in CLI_FLAGS for k in kw) else
       "python: FastPathOptions(fp16=True, channels_last=True, compile_mode='default', cuda_graphs=True, "
       + ", ".join(f"{k}=True" for k in kw) + ")" for name, kw in {**NEW_VARIANTS, **OPTIONAL_VARIANTS}.items()},
}
FASTPATH_VARIANTS = tuple(FLAGS)   # fgdeploy option sets; the other variants are baselines


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """Set TF32 for matmul and cuDNN, restoring the previous values."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def time_variant(fn: Callable[[torch.Tensor], Any], images: torch.Tensor, iters: int, warmup: int) -> dict[str, Any]:
    """Warm up (setup_s), then time ``iters`` calls with CUDA events (CPU: perf_counter); img/s from the median."""
    from fgdeploy.bench import time_calls

    cuda = images.is_cuda
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn(images)
    if cuda:
        torch.cuda.synchronize()
    setup_s = time.perf_counter() - t0
    times, _ = time_calls(lambda: fn(images), iters, 0, cuda)
    lat = np.asarray(times)
    batch = images.shape[0]
    return {"batch": batch, "iters": iters, "setup_s": round(setup_s, 2),
            "p50_ms": round(float(np.median(lat)), 3), "p90_ms": round(float(np.percentile(lat, 90)), 3),
            "min_ms": round(float(lat.min()), 3), "images_per_s": round(batch * 1000.0 / float(np.median(lat)), 1)}


class Budget:
    def __init__(self, seconds: float) -> None:
        self.start, self.seconds = time.perf_counter(), seconds

    @property
    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)


def make_jpegs(folder: Path, count: int, seed: int = 0, size: tuple[int, int] | None = None) -> Path:
    """CUB-like JPEGs: smooth random colour fields at 500x375 (a quarter portrait), with fine noise;
    ``size`` = (W, H): all of that size instead (e.g. camera photos)."""
    import cv2

    def one(k: int) -> None:
        rng = np.random.default_rng(seed + k)
        h, w = (size[1], size[0]) if size else (500, 375) if k % 4 == 0 else (375, 500)
        small = rng.integers(0, 256, (h // 25, w // 25, 3), dtype=np.uint8)
        image = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        image = np.clip(image.astype(np.int16) + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"{k:05d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])

    with ThreadPoolExecutor(os.cpu_count() or 4) as pool:
        list(pool.map(one, range(count)))
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_speed.json"), help="JSON results path")
    parser.add_argument("--config", default="cub_vgg16_fc7", help="model config (models/<name>.yaml)")
    parser.add_argument("--batches", default="32,64", help="batch sizes, comma-separated")
    parser.add_argument("--iters", type=int, default=20, help="timed calls per (variant, batch)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first (compile, autotune, capture)")
    parser.add_argument("--budget-s", type=float, default=270.0, help="skip optional steps past this")
    parser.add_argument("--images", type=int, default=4096, help="JPEGs for the end-to-end run (0: skip)")
    parser.add_argument("--workers", type=int, default=0, help="decode threads (0: fgdeploy infer's default)")
    parser.add_argument("--all-variants", action="store_true", help="also the split-stream and padded-input "
                        "variants (measured slower than convrelu+graphs on the H200)")
    parser.add_argument("--max-autotune", action="store_true", help="also time compile mode max-autotune "
                        "(on the H200: 86 s of compiling for 1237 img/s at b64, vs 1218 for compile+graphs "
                        "and 1437 for convrelu)")
    parser.add_argument("--device", default="cuda", help="cuda (the measurement) or cpu (a smoke test of the "
                        "script with a small --config; CUDA-graph variants are skipped)")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_speed.py needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    cuda = args.device.startswith("cuda")

    from fgdeploy.inference.fastpath import CudaGraphed, build_inference_fn, with_cudnn_benchmark
    from fgdeploy.models import create_model, load_model_config

    budget = Budget(args.budget_s)
    batches = [int(b) for b in args.batches.split(",")]
    cfg = load_model_config(args.config)
    size = cfg.input_size
    torch.manual_seed(0)
    base = create_model(cfg, 200).eval()
    inputs = {b: torch.randint(0, 256, (b, size, size, 3), dtype=torch.uint8, device=args.device) for b in batches}
    results: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    compile_s: dict[str, float] = {}

    errors: dict[str, str] = {}
    correctness: dict[str, dict[str, Any]] = {}
    check_batch = max(batches)
    reference: dict[str, np.ndarray] = {}

    def run(name: str, fn: Callable[[torch.Tensor], Any], iters: int | None = None) -> None:
        if not cuda and "graphs" in name:
            skipped.append(f"{name} (CUDA only)")
            return
        try:
            per: dict[str, Any] = {}
            for b in batches:
                r = time_variant(fn, inputs[b], iters or args.iters, args.warmup)
                per[str(b)] = r
                log(f"{name:36s} batch {b:3d}: {r['images_per_s']:8.1f} img/s (p50 {r['p50_ms']:.2f} ms, "
                    f"setup {r['setup_s']:.1f} s)")
            results[name] = per
            out = {k: v.float().cpu().numpy() for k, v in fn(inputs[check_batch]).items()}
            if not reference:
                reference.update(out)
            correctness[name] = compare_outputs(out, reference)
            log(f"{name:36s} vs fp32 eager: {correctness[name]}")
        except Exception as exc:  # noqa: BLE001 - one failing variant must not end the run
            errors[name] = f"{type(exc).__name__}: {exc}"[:2000]
            log(f"{name}: FAILED {errors[name][:300]}")
            free()

    def build(**kw: Any) -> Callable[[torch.Tensor], Any]:
        return build_inference_fn(copy.deepcopy(base), args.device, **kw)

    def free() -> None:
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()

    gpu = torch.cuda.get_device_name() if cuda else "cpu (smoke test)"
    log(f"{gpu}, torch {torch.__version__}, model {cfg.name} at {size}x{size}")
    with tf32(False):
        run("fp32-eager", with_cudnn_benchmark(build(), False), iters=max(5, args.iters // 4))
    free()
    eager = build(fp16=True, channels_last=True)
    run("fp16-cl-eager", with_cudnn_benchmark(eager, False))
    run("fp16-cl-eager+bench", with_cudnn_benchmark(eager, True))
    run("fp16-cl-eager+bench+graphs", with_cudnn_benchmark(CudaGraphed(eager) if cuda else eager, True))
    del eager
    free()
    t0 = time.perf_counter()
    compiled = build(fp16=True, channels_last=True, compile_mode="default")
    run("fp16-cl-compile", with_cudnn_benchmark(compiled, False))
    compile_s["default"] = round(time.perf_counter() - t0, 1)
    run("fp16-cl-compile+bench", with_cudnn_benchmark(compiled, True))
    run("fp16-cl-compile+bench+graphs", with_cudnn_benchmark(CudaGraphed(compiled) if cuda else compiled, True))
    profile = profile_kernels(with_cudnn_benchmark(compiled, True), inputs[check_batch]) if cuda else None
    free()

    best: dict[str, Any] = {}   # the fastest new variant so far: name, its compiled callable, graphed callable
    for name, kw in {**NEW_VARIANTS, **(OPTIONAL_VARIANTS if args.all_variants else {})}.items():
        if budget.left < 1.5 * compile_s["default"] + 20:
            skipped.append(f"{name} (no time left)")
            continue
        try:
            t0 = time.perf_counter()
            fn = build(fp16=True, channels_last=True, compile_mode="default", cuda_graphs=cuda, **kw)
        except Exception as exc:  # noqa: BLE001
            errors[name] = f"build: {type(exc).__name__}: {exc}"[:2000]
            log(f"{name}: FAILED to build: {errors[name][:300]}")
            continue
        graphed = with_cudnn_benchmark(CudaGraphed(fn) if cuda else fn, True)
        run(name, graphed)
        compile_s[name] = round(time.perf_counter() - t0, 1)
        top = str(max(batches))
        if name in results and _correct(name, correctness) and (
                not best or results[name][top]["images_per_s"] > results[best["name"]][top]["images_per_s"]):
            best = {"name": name, "compiled": fn, "graphed": graphed}
        del fn, graphed
        free()
    profile_fastest = None
    if best and cuda:
        profile_fastest = {"variant": best["name"],
                           **profile_kernels(with_cudnn_benchmark(best["compiled"], True), inputs[check_batch])}

    e2e = None
    if args.images > 0 and budget.left > 60:
        try:
            e2e = end_to_end(best.get("name", "fp16-cl-compile+bench+graphs"),
                             best.get("graphed") or with_cudnn_benchmark(CudaGraphed(compiled) if cuda else compiled,
                                                                         True), cfg, args, batches)
        except ImportError as exc:  # e.g. no opencv on the GPU machine: keep the model-only numbers
            skipped.append(f"end-to-end ({exc})")
        except Exception as exc:  # noqa: BLE001
            errors["end-to-end"] = f"{type(exc).__name__}: {exc}"[:2000]
            log(f"end-to-end: FAILED {errors['end-to-end'][:300]}")
    else:
        skipped.append("end-to-end (no images or no time left)")
    del compiled
    best.clear()
    free()

    estimate = 2.5 * compile_s["default"]
    if cuda and not args.max_autotune:
        skipped.append("fp16-cl-max-autotune+bench+graphs (not asked: --max-autotune)")
    elif cuda and budget.left > estimate:
        import torch._inductor.config as inductor_config

        if hasattr(inductor_config, "max_autotune_conv_backends"):
            inductor_config.max_autotune_conv_backends = "ATEN"  # cuDNN convs; Triton conv templates cost minutes
        t0 = time.perf_counter()
        tuned = build(fp16=True, channels_last=True, compile_mode="max-autotune", cuda_graphs=True)
        run("fp16-cl-max-autotune+bench+graphs", with_cudnn_benchmark(CudaGraphed(tuned), True))
        compile_s["max-autotune"] = round(time.perf_counter() - t0, 1)
        del tuned
        free()
    elif cuda:
        skipped.append(f"fp16-cl-max-autotune+bench+graphs (needs ~{estimate:.0f} s, {budget.left:.0f} s left)")
    fastest = best_fastpath(results, batches, correctness)
    summary = write_report(args, cfg, results, fastest, e2e, skipped, compile_s, budget,
                           {"correctness": correctness, "errors": errors, "profile": profile,
                            "profile_fastest": profile_fastest})
    print(summary)
    return 0


def compare_outputs(out: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, Any]:
    """Agreement of one variant's outputs with the fp32 eager reference on the same batch."""
    top1 = float(np.mean(out["logits"].argmax(1) == ref["logits"].argmax(1)))
    kp_equal = float(np.mean(np.all(out["keypoints"] == ref["keypoints"], axis=-1)))
    return {"top1_agreement": round(top1, 4), "keypoints_equal": round(kp_equal, 4),
            "keypoints_max_px": round(float(np.abs(out["keypoints"] - ref["keypoints"]).max()), 2),
            "logits_max_abs": float(np.abs(out["logits"] - ref["logits"]).max()),
            "logits_ref_std": float(ref["logits"].std()),
            "scores_max_abs": round(float(np.abs(out["keypoint_scores"] - ref["keypoint_scores"]).max()), 5)}


def _correct(name: str, correctness: dict[str, dict[str, Any]]) -> bool:
    """A variant agrees with fp32 eager about as well as plain fp16 eager does (10 points slack: random
    weights give near-ties, so fp16 variants differ among themselves; a broken variant is near 0)."""
    base, got = correctness.get("fp16-cl-eager"), correctness.get(name)
    if base is None or got is None:
        return got is not None or base is None
    return all(got[k] >= base[k] - 0.10 for k in ("top1_agreement", "keypoints_equal"))


def best_fastpath(results: dict[str, dict[str, Any]], batches: list[int],
                  correctness: dict[str, dict[str, Any]] | None = None) -> dict[str, str]:
    """Per batch, the fgdeploy variant with the most img/s (among those whose outputs check out)."""
    ok = [v for v in FASTPATH_VARIANTS if v in results and (correctness is None or _correct(v, correctness))]
    ok = ok or [v for v in FASTPATH_VARIANTS if v in results]
    return {str(b): max(ok, key=lambda v: results[v][str(b)]["images_per_s"]) for b in batches}


def profile_kernels(fn: Callable[[torch.Tensor], Any], images: torch.Tensor, top: int = 25) -> dict[str, Any]:
    """CUDA kernel time of one call of ``fn``, grouped by kernel name (top ``top``), with the total."""
    try:
        from torch.profiler import ProfilerActivity, profile

        fn(images)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn(images)
            torch.cuda.synchronize()
        rows: dict[str, list[float]] = {}
        for e in prof.events():
            if e.device_type.name == "CUDA":
                r = rows.setdefault(e.name[:160], [0.0, 0])
                r[0] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
                r[1] += 1
        total = sum(r[0] for r in rows.values())
        best = sorted(rows.items(), key=lambda kv: -kv[1][0])[:top]
        return {"batch": images.shape[0], "total_kernel_ms": round(total / 1000.0, 3),
                "top": [{"kernel": k, "ms": round(v[0] / 1000.0, 3), "calls": v[1],
                         "share": round(v[0] / total, 4) if total else 0.0} for k, v in best]}
    except Exception as exc:  # noqa: BLE001 - diagnostics only
        return {"error": f"{type(exc).__name__}: {exc}"}


def end_to_end(name: str, fn: Callable[[torch.Tensor], Any], cfg: Any, args: argparse.Namespace,
               batches: list[int]) -> dict[str, Any]:
    """`run_inference` over generated JPEGs with ``fn`` (variant ``name``, CUDA-graphed) vs the same predictor
    model-only, plus the input pipeline alone (no model): the CPU side's ceiling."""
    from fgdeploy.bench import bench_end_to_end, bench_model
    from fgdeploy.inference.fastpath import FastPathOptions, TorchFastPredictor
    from fgdeploy.inference.local import InferOptions, discover_images, iterate_batches
    from fgdeploy.inference.predictors import default_workers

    batch = max(batches)
    predictor = TorchFastPredictor(None, args.device, FastPathOptions(cuda_graphs=True), cfg.input_size, batch, fn=fn)
    workers = args.workers or default_workers(predictor)   # what `fgdeploy infer` uses by default
    with tempfile.TemporaryDirectory(prefix="fgdeploy-gpu-e2e-") as tmp:
        t0 = time.perf_counter()
        folder = make_jpegs(Path(tmp), args.images)
        log(f"generated {args.images} JPEGs in {time.perf_counter() - t0:.1f} s")
        model_only = bench_model(predictor, name, batch, iters=args.iters, warmup=args.warmup)
        t0 = time.perf_counter()
        count = 0
        for _, prepared, good in iterate_batches(discover_images(folder), predictor,
                                                 InferOptions(batch=batch, workers=workers)):
            count += good
            if hasattr(prepared, "ready"):
                prepared.ready.synchronize()
        pipeline = count / (time.perf_counter() - t0)
        e2e = bench_end_to_end(predictor, name, folder, batch, workers=workers)
    ratio = e2e.images_per_s / model_only.images_per_s
    log(f"end-to-end {e2e.images_per_s:.1f} img/s vs model-only {model_only.images_per_s:.1f} img/s "
        f"({100 * ratio:.1f} %) with {name}, batch {batch}; input pipeline alone {pipeline:.1f} img/s")
    return {"variant": name, "batch": batch, "images": args.images, "workers": workers,
            "model_only_images_per_s": model_only.images_per_s, "end_to_end_images_per_s": e2e.images_per_s,
            "input_pipeline_images_per_s": round(pipeline, 1),
            "ratio": round(ratio, 3), "target": 0.9, "passed": ratio >= 0.9}


def write_report(args: argparse.Namespace, cfg: Any, results: dict[str, Any], fastest: dict[str, str],
                 e2e: dict[str, Any] | None, skipped: list[str], compile_s: dict[str, float], budget: Budget,
                 extra: dict[str, Any] | None = None) -> str:
    batches = sorted(int(b) for b in next(iter(results.values())))
    fast = {}
    for b in batches:
        best = fastest[str(b)]
        ips = results[best][str(b)]["images_per_s"]
        base = results["fp16-cl-compile"][str(b)]["images_per_s"]
        fast[str(b)] = {"variant": best, "flags": FLAGS[best], "images_per_s": ips,
                        "vs_torch_compile": round(ips / base, 3), "target": 1.3, "passed": ips / base >= 1.3}
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    cuda = args.device.startswith("cuda")
    payload = {
        "environment": {"gpu": torch.cuda.get_device_name() if cuda else "cpu (smoke test)",
                        "torch": torch.__version__, "cuda": torch.version.cuda,
                        "cudnn": torch.backends.cudnn.version() if cuda else None, "triton": triton_version,
                        "python": platform.python_version(), "cpu_count": os.cpu_count()},
        "model": {"config": cfg.name, "input_size": cfg.input_size, "weights": "random (seed 0)", "classes": 200},
        "input": "uint8 (N, S, S, 3) on the GPU, converted inside the timed call",
        "reference_h200_images_per_s": REFERENCE_H200,
        "results": results, "fgdeploy_fastest": fast, "end_to_end": e2e, "compile_s": compile_s,
        "skipped": skipped, "total_s": round(budget.seconds - budget.left, 1), **(extra or {}),
    }
    from fgdeploy.fileio import atomic_write_json

    atomic_write_json(args.out, payload)
    lines = [f"{'variant':36s} " + " ".join(f"{'b' + str(b) + ' img/s':>12s}" for b in batches)]
    for name, per in results.items():
        lines.append(f"{name:36s} " + " ".join(f"{per[str(b)]['images_per_s']:12.1f}" for b in batches))
    for b in batches:
        f = fast[str(b)]
        lines.append(f"batch {b}: fastest {f['variant']} = {f['vs_torch_compile']:.2f}x torch.compile "
                     f"({'PASS' if f['passed'] else 'below'} 1.3x); flags: {f['flags']}")
    if e2e:
        lines.append(f"end-to-end / model-only = {100 * e2e['ratio']:.1f} % ({'PASS' if e2e['passed'] else 'below'} 90 %)")
    for name, err in (extra or {}).get("errors", {}).items():
        lines.append(f"FAILED {name}: {err[:200]}")
    lines.append(f"total {payload['total_s']} s; skipped: {skipped or 'nothing'}; JSON: {args.out}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
