"""CPU benchmark of `fgdeploy infer`: pipeline efficiency and memory flatness. Writes JSON.

1. Throughput: the demo model (random weights) on CUB-like JPEGs (500x375). Model-only = `fgdeploy
   bench` (`bench_model`: the predictor on a prepared batch); end-to-end = `run_inference` over the
   folder (decode threads, batching, results journal) through the same predictor, same batch. Each is
   measured --repeats times, alternating, and the median is kept. Target: end-to-end >= 85 % of
   model-only. Also recorded: the CPU time per image of the model (one thread) and of each preprocessing
   stage (decode, resize, prepare; one thread), and the ceiling they leave on this machine's cores,
   cores / (model + preprocessing) img/s: with no GPU, decoding and the model share the cores, so a model
   that needs little more CPU per image than a JPEG decode cannot reach the target however well they overlap.
   The ceiling assumes the model's work divides over the cores; where the model-only run does not speed up
   with threads (compare ``model_only_process`` with ``model_one_thread``), it is loose.
2. ``--fast-decode`` on photo-sized JPEGs (default 2048x1536): end-to-end img/s with and without it.
3. Peak RSS: `run_inference` over 500 and over 5,000 images, each in a fresh subprocess: the peak RSS
   of the run itself (VmHWM after resetting it once the model is loaded; ru_maxrss of the whole
   process is recorded too).
   The 5,000 are symlinks to the 500 JPEGs under distinct names (the pipeline sees 5,000 different
   paths; the disk and page cache stay small). A small-width model at the demo input size keeps it
   quick (the model's memory is constant anyway). Target: RSS(5,000) <= 1.2 x RSS(500).

Usage:
  python bench/bench_infer.py --out runs/bench/bench_infer.json              # torch backend
  python bench/bench_infer.py --backend ort --out runs/bench/bench_infer_ort.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def save_model(path: Path, config: str, small: bool, classes: int = 20) -> Path:
    """A random-weight checkpoint of ``config`` (``small``: narrow widths, same input size)."""
    import torch

    from fgdeploy.checkpoint import CheckpointMeta, save_checkpoint
    from fgdeploy.models import create_model, load_model_config, with_backbone_options

    cfg = load_model_config(config)
    if small:
        cfg = with_backbone_options(cfg, {"widths": [4, 8, 8, 16, 16], "depth": 1})
    torch.manual_seed(0)
    meta = CheckpointMeta.for_config(cfg, [f"c{i}" for i in range(classes)])
    save_checkpoint(path, create_model(cfg, classes), meta)
    return path


def model_for_backend(ckpt: Path, backend: str) -> Path:
    if backend != "ort":
        return ckpt
    from fgdeploy.export.exporter import export_checkpoint

    onnx_path = ckpt.with_suffix(".onnx")
    export_checkpoint(ckpt, onnx_path)
    return onnx_path


def _cpu_ms_per_image(run: Any, images: int) -> tuple[Any, float]:
    """``run()``'s result and the process CPU time it used per image (all threads), in ms."""
    start = time.process_time()
    result = run()
    return result, 1e3 * (time.process_time() - start) / images


def fast_decode_photos(model: Path, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """End-to-end img/s on photo-sized JPEGs with and without ``--fast-decode`` (same predictor, alternating)."""
    from fgdeploy.bench import bench_end_to_end
    from fgdeploy.inference.predictors import open_predictor

    runs: dict[str, list[float]] = {"full_decode": [], "fast_decode": []}
    with open_predictor(model, args.backend, device="cpu", batch=args.batch, threads=args.threads) as loaded:
        for _ in range(args.repeats):
            for key, fast in (("full_decode", False), ("fast_decode", True)):
                runs[key].append(bench_end_to_end(loaded.predictor, loaded.name, folder, args.batch,
                                                  workers=args.workers, fast_decode=fast).images_per_s)
            print(f"photos {args.photo_size}: full decode {runs['full_decode'][-1]:.1f} img/s, fast decode "
                  f"{runs['fast_decode'][-1]:.1f} img/s", file=sys.stderr)
    full, fast = (statistics.median(runs[k]) for k in ("full_decode", "fast_decode"))
    return {"photo_size": args.photo_size, "images": args.photos, "end_to_end_images_per_s_full_decode": full,
            "end_to_end_images_per_s_fast_decode": fast, "speedup": round(fast / full, 2), "runs": runs}


def stage_costs(images: Path, predictor: Any, batch: int) -> dict[str, float]:
    """CPU ms per image of each preprocessing stage of `fgdeploy infer`: decode, resize (one OpenCV thread),
    and the predictor's own ``prepare`` of a batch."""
    from fgdeploy.inference.local import read_rgb, resize_input, single_threaded_cv2

    paths = sorted(str(p) for p in images.glob("*.jpg"))[:64]
    with single_threaded_cv2():
        t0 = time.process_time()
        decoded = [read_rgb(p) for p in paths]
        t1 = time.process_time()
        resized = [resize_input(image, predictor.input_size) for image in decoded]
        t2 = time.process_time()
        for k in range(0, len(resized), batch):
            predictor.prepare(resized[k:k + batch])
        t3 = time.process_time()
    n = len(paths)
    return {"decode_ms": 1e3 * (t1 - t0) / n, "resize_ms": 1e3 * (t2 - t1) / n, "prepare_ms": 1e3 * (t3 - t2) / n}


def throughput(model: Path, images: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Model-only vs end-to-end img/s (medians of alternating repeats) and the CPU time each spends per image.

    On a CPU-only machine decoding and the model share the cores, so end-to-end cannot beat
    ``cores / (model CPU ms + preprocessing CPU ms)`` per image however well the two overlap; that ceiling is
    reported next to the target. Every repeat measures all four (model-only, end-to-end, the model on one
    thread, the preprocessing stages) back to back, so a machine whose speed drifts is compared with itself.
    """
    import torch

    from fgdeploy.bench import bench_end_to_end, bench_model
    from fgdeploy.inference.predictors import open_predictor

    runs: dict[str, list[float]] = {"model_only": [], "end_to_end": [], "model_one_thread_ms": [], "ceiling": [],
                                    "model_only_process_ms": [], "end_to_end_process_ms": []}
    stage_runs: list[dict[str, float]] = []
    with open_predictor(model, args.backend, device="cpu", batch=args.batch, threads=args.threads) as loaded, \
            open_predictor(model, args.backend, device="cpu", batch=args.batch, threads=1) as single:
        size = loaded.predictor.input_size
        for _ in range(args.repeats):
            result, cpu = _cpu_ms_per_image(lambda: bench_model(loaded.predictor, loaded.name, args.batch, args.iters,
                                                                2), (args.iters + 2) * args.batch)
            runs["model_only"].append(result.images_per_s)
            runs["model_only_process_ms"].append(cpu)
            result, cpu = _cpu_ms_per_image(
                lambda: bench_end_to_end(loaded.predictor, loaded.name, images, args.batch, workers=args.workers),
                args.images)
            runs["end_to_end"].append(result.images_per_s)
            runs["end_to_end_process_ms"].append(cpu)
            # The model's work per image on one thread (a thread pool's spin-waiting would count as CPU time).
            threads = torch.get_num_threads()
            torch.set_num_threads(1)   # the torch backend's threads; an ORT session has its own setting
            try:
                one = bench_model(single.predictor, single.name, args.batch, args.iters, 2).images_per_s
            finally:
                torch.set_num_threads(threads)
            runs["model_one_thread_ms"].append(1e3 / one)
            stage_runs.append(stage_costs(images, loaded.predictor, args.batch))
            runs["ceiling"].append((os.cpu_count() or 1) * 1e3 / (1e3 / one + sum(stage_runs[-1].values())))
            print(f"model-only {runs['model_only'][-1]:.1f} img/s, end-to-end {runs['end_to_end'][-1]:.1f} img/s, "
                  f"ceiling {runs['ceiling'][-1]:.1f} img/s", file=sys.stderr)
        name = loaded.name
    med = {k: statistics.median(v) for k, v in runs.items()}
    stages = {k: statistics.median(r[k] for r in stage_runs) for k in stage_runs[0]}
    m, e, ceiling = med["model_only"], med["end_to_end"], med["ceiling"]
    return {"backend": name, "batch": args.batch, "images": args.images, "input_size": size,
            "model_only_images_per_s": m, "end_to_end_images_per_s": e, "ratio": round(e / m, 3),
            "target": 0.85, "passed": e / m >= 0.85,
            "cpu_ms_per_image": {"model_one_thread": round(med["model_one_thread_ms"], 3),
                                 "model_only_process": round(med["model_only_process_ms"], 3),
                                 "end_to_end_process": round(med["end_to_end_process_ms"], 3),
                                 **{k: round(v, 3) for k, v in stages.items()}},
            "cores": os.cpu_count() or 1, "ceiling_images_per_s": round(ceiling, 1),
            "ceiling_ratio": round(ceiling / m, 3), "end_to_end_over_ceiling": round(e / ceiling, 3), "runs": runs}


def rss_child(args: argparse.Namespace) -> None:
    """Run inference over the list; print peak RSS (KiB) as JSON on stdout."""
    from fgdeploy.inference.local import InferOptions, discover_images, run_inference
    from fgdeploy.inference.predictors import open_predictor

    paths = discover_images(args.rss_child)
    with tempfile.TemporaryDirectory() as tmp, \
            open_predictor(args.model, args.backend, device="cpu", batch=args.batch, threads=args.threads) as m:
        before = _status_kib("VmRSS")
        reset = _reset_peak_rss()   # so VmHWM is the peak of the run, not of imports and model loading
        t0 = time.perf_counter()
        report = run_inference(paths, m.predictor, Path(tmp) / "r.csv", options=InferOptions(batch=args.batch,
                               workers=args.workers), model_id="bench")
        seconds = time.perf_counter() - t0
        run_peak = _status_kib("VmHWM") if reset else None
    print(json.dumps({"images": len(paths), "scored": report.scored, "seconds": round(seconds, 1),
                      "rss_before_run_kib": before, "run_peak_rss_kib": run_peak,
                      "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def _status_kib(field: str) -> int | None:
    """A memory field of /proc/self/status (Linux), in KiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss(model: Path, folder: Path, counts: list[int], args: argparse.Namespace) -> dict[str, Any]:
    real = sorted(folder.glob("*.jpg"))
    links = folder / "links"
    links.mkdir(exist_ok=True)
    out: dict[str, Any] = {}
    for n in counts:
        listing = folder / f"list_{n}.txt"
        names = []
        for k in range(n):
            link = links / f"img_{k:05d}.jpg"
            if not link.exists():
                link.symlink_to(real[k % len(real)])
            names.append(str(link))
        listing.write_text("\n".join(names) + "\n")
        cmd = [sys.executable, __file__, "--rss-child", str(listing), "--model", str(model), "--backend",
               args.backend, "--batch", str(args.batch), "--workers", str(args.workers)]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        print(f"{n} images: peak RSS {res['max_rss_kib'] / 1024:.1f} MiB (process), "
              f"{(res['run_peak_rss_kib'] or 0) / 1024:.1f} MiB (during the run) in {res['seconds']} s", file=sys.stderr)
        out[str(n)] = res
    return rss_growth(out, counts)


def rss_growth(out: dict[str, Any], counts: list[int], target: float = 1.2) -> dict[str, Any]:
    """``out`` (per-count child results) plus the peak-RSS ratio of the largest to the smallest count."""
    key = "run_peak_rss_kib" if all(out[str(c)]["run_peak_rss_kib"] for c in counts) else "max_rss_kib"
    small, large = (out[str(c)][key] for c in (min(counts), max(counts)))
    out.update({"compared": key, "ratio": round(large / small, 3), "target": target, "passed": large / small <= target})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/bench_infer.json"))
    parser.add_argument("--config", default="demo", help="model config for the throughput part")
    parser.add_argument("--backend", choices=["torch", "ort"], default="torch")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--images", type=int, default=256, help="JPEGs for the throughput part")
    parser.add_argument("--iters", type=int, default=10, help="timed model-only calls per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (torch: torch threads)")
    parser.add_argument("--workers", type=int, default=0, help="decode threads (0: auto)")
    parser.add_argument("--rss-counts", default="500,5000", help="image counts of the RSS runs ('' to skip)")
    parser.add_argument("--photos", type=int, default=64, help="photo-sized JPEGs for the --fast-decode part (0: skip)")
    parser.add_argument("--photo-size", default="2048x1536", help="their size, WxH")
    parser.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.rss_child:
        rss_child(args)
        return 0
    from fgdeploy.bench import environment
    from gpu_speed import make_jpegs

    payload: dict[str, Any] = {"environment": environment(), "args": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="fgdeploy-bench-infer-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "images").mkdir()
        make_jpegs(tmp_path / "images", args.images)
        model = model_for_backend(save_model(tmp_path / "model.pt", args.config, small=False), args.backend)
        payload["throughput"] = throughput(model, tmp_path / "images", args)
        if args.photos:
            (tmp_path / "photos").mkdir()
            width, height = (int(v) for v in args.photo_size.lower().split("x"))
            make_jpegs(tmp_path / "photos", args.photos, seed=100, size=(width, height))
            payload["fast_decode"] = fast_decode_photos(model, tmp_path / "photos", args)
        counts = [int(c) for c in args.rss_counts.split(",") if c.strip()]
        if counts:
            (tmp_path / "rss").mkdir()
            make_jpegs(tmp_path / "rss", min(counts), seed=1)
            small = model_for_backend(save_model(tmp_path / "small.pt", args.config, small=True), args.backend)
            payload["rss"] = peak_rss(small, tmp_path / "rss", counts, args)
    from fgdeploy.fileio import atomic_write_json

    atomic_write_json(args.out, payload)
    t, r = payload["throughput"], payload.get("rss")
    print(f"end-to-end / model-only: {100 * t['ratio']:.1f} % ({t['end_to_end_images_per_s']:.1f} / "
          f"{t['model_only_images_per_s']:.1f} img/s, {t['backend']}, batch {t['batch']})")
    costs = t["cpu_ms_per_image"]
    print(f"CPU ms per image: model {costs['model_one_thread']:.2f}, decode {costs['decode_ms']:.2f}, resize "
          f"{costs['resize_ms']:.2f}, prepare {costs['prepare_ms']:.2f} => ceiling on {t['cores']} cores "
          f"{t['ceiling_images_per_s']:.1f} img/s ({100 * t['ceiling_ratio']:.1f} % of model-only); end-to-end "
          f"reaches {100 * t['end_to_end_over_ceiling']:.1f} % of it")
    if "fast_decode" in payload:
        f = payload["fast_decode"]
        print(f"{f['photo_size']} photos end-to-end: full decode {f['end_to_end_images_per_s_full_decode']:.1f} img/s, "
              f"--fast-decode {f['end_to_end_images_per_s_fast_decode']:.1f} img/s ({f['speedup']:.2f}x)")
    if r:
        print(f"peak RSS {max(counts)} vs {min(counts)} images: {r['ratio']:.3f}x")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
