"""CPU benchmark of `fgdeploy infer --ray` against local `fgdeploy infer`: throughput and driver memory. Writes JSON.

1. Throughput: the demo model (random weights) exported to ONNX (ONNX Runtime on CPU), CUB-like JPEGs
   (500x375; larger jobs are symlinks to 500 of them under distinct names), the same images, model, batch and
   top-k for both. Every run is a fresh process, as a user's command is: local `infer` and `infer --ray` (a
   local Ray instance with all cores) alternate --repeats times per job size (--images, e.g. 2000,20000) and
   the medians are kept. Compared: end-to-end img/s as each run reports it (images / seconds from the first
   image sent to decoding until OUT is written; for Ray that includes starting the model actors), and the same
   with the whole call's wall time (adds the Ray instance, model probe, model load). From two job sizes, each
   mode's time is fitted as fixed + images / steady rate: Ray's fixed cost and steady-state ratio say how
   the ratio changes with the job's size. Also recorded: CPU time per image of each run's whole process tree
   (for Ray: driver, GCS, raylet, workers, sampled so that actors that end count too), which bounds img/s
   when the cores are the limit. --compare-threads times --ray with N ONNX Runtime threads per actor too.
   Target: Ray / local >= 0.8. --address HOST:PORT runs the --ray side on a running cluster instead (e.g. a
   loopback `ray start --head` on this machine): what a run costs once Ray is up;
   CPU time is then that of the whole machine (/proc/stat) for both modes, so run it on an idle machine.
2. Driver peak RSS: `infer --ray` over 500 and over 5,000 images (symlinks to 500 JPEGs under distinct
   names), each in a fresh process with a small-width model: the peak RSS of the driver during the run
   (VmHWM after resetting it once Ray is up), and the process's ru_maxrss. Target: 5,000 <= 1.2 x 500.

Usage:
  python bench/bench_ray.py --out bench/results/<machine-date>/bench_ray.json
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
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _tree_ticks(root: int) -> dict[int, int]:
    """CPU clock ticks (user + system, own + reaped children) of each living process in ``root``'s tree (/proc)."""
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stats[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, f in stats.items() if int(f[1]) == parent and p not in tree]
        tree.update(kids)
        frontier += kids
    # fields after the name: state ppid ... utime(11) stime(12) cutime(13) cstime(14), 0-based from state
    return {p: sum(int(stats[p][i]) for i in (11, 12, 13, 14)) for p in tree if p in stats}


class MachineCpuMeter:
    """CPU seconds used by the whole machine while the meter runs (/proc/stat, all CPUs, busy time): for runs on
    a cluster started outside this process tree. Includes whatever else runs: use on an idle machine."""

    def __enter__(self) -> "MachineCpuMeter":
        self._start = self._busy_ticks()
        return self

    @staticmethod
    def _busy_ticks() -> int:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(fields) - fields[3] - fields[4]   # all but idle and iowait

    def seconds(self) -> float:
        return (self._busy_ticks() - self._start) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc: object) -> None:
        pass


def cpu_meter(args: argparse.Namespace) -> "TreeCpuMeter | MachineCpuMeter":
    """The process tree's CPU time, or the machine's when --ray runs on a cluster outside the tree."""
    return MachineCpuMeter() if args.address else TreeCpuMeter()


class TreeCpuMeter:
    """CPU seconds used by this process and all its descendants while the meter runs (Linux /proc): for Ray, the
    driver plus the instance it started (GCS, raylet, task and actor workers). Sampled every ``interval`` s,
    so that processes that end during the run (the run kills its actors when it is done, and the raylet
    does not account for its reaped workers) count with their last sample: at most ``interval`` s of theirs
    is missed."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval, self.root = interval, os.getpid()
        self._last: dict[int, int] = {}
        self._start: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "TreeCpuMeter":
        self._start = _tree_ticks(self.root)
        self._last = dict(self._start)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._last.update(_tree_ticks(self.root))

    def seconds(self) -> float:
        """CPU seconds since the meter started (call inside the ``with``, before the processes of interest end)."""
        self._last.update(_tree_ticks(self.root))
        used = sum(t - self._start.get(p, 0) for p, t in self._last.items())
        return used / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def child(args: argparse.Namespace) -> None:
    """One run (``--child local|ray``) over the list file; prints its numbers as JSON on stdout."""
    from bench_infer import _reset_peak_rss, _status_kib

    from fgdeploy.inference.local import InferOptions, discover_images, run_inference
    from fgdeploy.inference.predictors import open_predictor
    from fgdeploy.inference.ray_cluster import ClusterOptions, ray_session
    from fgdeploy.inference.ray_scoring import ModelSpec, run_ray_inference

    t0 = time.perf_counter()
    paths = discover_images(args.list)
    options = InferOptions(batch=args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.csv"
        result: dict[str, Any] = {"mode": args.child, "images": len(paths)}
        if args.child == "local":
            with open_predictor(args.model, "ort", device="cpu", batch=args.batch) as loaded:
                result["startup_s"] = time.perf_counter() - t0
                with cpu_meter(args) as cpu:
                    report = run_inference(paths, loaded.predictor, out, options=options, model_id="bench")
                    result["cpu_s"] = cpu.seconds()
        else:
            with ray_session(ClusterOptions(address=args.address or None, cpus=args.cpus)):
                result["startup_s"] = time.perf_counter() - t0
                before = _status_kib("VmRSS")
                reset = _reset_peak_rss()   # the run's peak, not that of imports and ray.init
                spec = ModelSpec(str(args.model), "ort", batch=args.batch, threads=args.threads or None)
                with cpu_meter(args) as cpu:
                    report = run_ray_inference(paths, spec, out, options=options, model_id="bench")
                    result["cpu_s"] = cpu.seconds()
                result.update({"rss_before_run_kib": before, "run_peak_rss_kib": _status_kib("VmHWM") if reset
                               else None})
    result["cpu_ms_per_image"] = round(1e3 * result["cpu_s"] / len(paths), 3)
    result.update({"scored": report.scored, "failed": report.failed, "run_seconds": round(report.seconds, 2),
                   "images_per_s": round(report.images_per_s, 2), "wall_s": round(time.perf_counter() - t0, 2),
                   "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss})
    print(json.dumps(result))


def run_child(mode: str, listing: Path, model: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``mode``: local, ray (the default: one model thread per actor) or ray-threads-N (N ONNX Runtime threads)."""
    threads = int(mode.rsplit("-", 1)[1]) if mode.startswith("ray-threads-") else 0
    cpus = args.cpus + max(0, threads - 1)   # N threads reserve N CPUs: declare the extra ones (same cores)
    cmd = [sys.executable, __file__, "--child", mode.split("-")[0], "--list", str(listing), "--model", str(model),
           "--batch", str(args.batch), "--cpus", str(cpus), "--threads", str(threads), "--address", args.address]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def link_list(folder: Path, real: list[Path], count: int) -> Path:
    """A list file of ``count`` distinct paths: symlinks cycling over ``real``."""
    links = folder / "links"
    links.mkdir(exist_ok=True)
    names = []
    for k in range(count):
        link = links / f"img_{k:05d}.jpg"
        if not link.exists():
            link.symlink_to(real[k % len(real)])
        names.append(str(link))
    listing = folder / f"list_{count}.txt"
    listing.write_text("\n".join(names) + "\n")
    return listing


def throughput(model: Path, listing: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Alternating runs of each mode over one job (``listing``); medians and the Ray / local ratio."""
    modes = ["local", "ray", *(f"ray-threads-{n}" for n in args.compare_threads)]
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for _ in range(args.repeats):
        for mode in modes:
            runs[mode].append(run_child(mode, listing, model, args))
            r = runs[mode][-1]
            print(f"{r['images']} images, {mode:13s}: {r['images_per_s']:.1f} img/s over the run, wall {r['wall_s']:.1f} s "
                  f"(start-up {r['startup_s']:.1f} s), {r['cpu_ms_per_image']:.2f} CPU ms/image", file=sys.stderr)
    keys = ("images_per_s", "wall_s", "startup_s", "cpu_ms_per_image")
    med = {m: {k: statistics.median(r[k] for r in runs[m]) for k in keys} for m in runs}
    ratio = med["ray"]["images_per_s"] / med["local"]["images_per_s"]
    cpu_ratio = med["local"]["cpu_ms_per_image"] / med["ray"]["cpu_ms_per_image"]
    return {"images": runs["local"][0]["images"], "batch": args.batch, "cpus": args.cpus,
            "local_images_per_s": med["local"]["images_per_s"], "ray_images_per_s": med["ray"]["images_per_s"],
            "ratio": round(ratio, 3), "target": 0.8, "passed": ratio >= 0.8,
            "wall_s": {m: med[m]["wall_s"] for m in med}, "startup_s": {m: med[m]["startup_s"] for m in med},
            "ratio_including_startup": round(med["local"]["wall_s"] / med["ray"]["wall_s"], 3),
            # CPU time per image of the whole process tree: what bounds img/s when the cores are the limit,
            # whatever else runs on the machine (a loaded machine gives Ray's extra processes a larger share)
            "images_per_s": {m: med[m]["images_per_s"] for m in med},
            "cpu_ms_per_image": {m: med[m]["cpu_ms_per_image"] for m in med},
            "cpu_cost_ratio_local_over_ray": round(cpu_ratio, 3), "runs": runs}


def stage_costs(model: Path, folder: Path, batch: int) -> dict[str, float]:
    """CPU ms per image of each stage on one thread (what a CPU actor does per image): decode + resize
    (``decode_one``), and the model (ONNX Runtime, one thread, batches of ``batch``) on the decoded images."""
    from fgdeploy.inference.local import decode_one, single_threaded_cv2
    from fgdeploy.inference.predictors import open_predictor

    paths = [str(p) for p in sorted(folder.glob("*.jpg"))]
    with open_predictor(model, "ort", device="cpu", batch=batch, threads=1) as loaded:
        predictor = loaded.predictor
        with single_threaded_cv2():
            start = time.process_time()
            images = [decode_one(p, predictor.input_size).image for p in paths]
            decode_s = time.process_time() - start
        start = time.process_time()
        for i in range(0, len(images), batch):
            predictor.predict(predictor.prepare(images[i:i + batch]), len(images[i:i + batch]))
        model_s = time.process_time() - start
    return {"images": len(paths), "decode_ms_per_image": round(1e3 * decode_s / len(paths), 3),
            "model_ms_per_image_1_thread": round(1e3 * model_s / len(paths), 3)}


def fit_sizes(by_size: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each mode's run time as fixed + images / steady rate, from the smallest and largest job (medians)."""
    (n1, a), (n2, b) = sorted(((int(n), t) for n, t in by_size.items()))[::len(by_size) - 1]
    fit: dict[str, Any] = {}
    for mode in a["images_per_s"]:
        t1, t2 = n1 / a["images_per_s"][mode], n2 / b["images_per_s"][mode]
        rate = (n2 - n1) / (t2 - t1)
        fit[mode] = {"steady_images_per_s": round(rate, 1), "fixed_s": round(t1 - n1 / rate, 2)}
    fit["steady_ratio"] = round(fit["ray"]["steady_images_per_s"] / fit["local"]["steady_images_per_s"], 3)
    fit["from_sizes"] = [n1, n2]
    return fit


def peak_rss(model: Path, folder: Path, counts: list[int], args: argparse.Namespace) -> dict[str, Any]:
    from bench_infer import rss_growth

    real = sorted(folder.glob("*.jpg"))
    out: dict[str, Any] = {}
    for n in counts:
        res = run_child("ray", link_list(folder, real, n), model, args)
        print(f"{n} images: driver peak RSS {(res['run_peak_rss_kib'] or 0) / 1024:.1f} MiB during the run, "
              f"{res['max_rss_kib'] / 1024:.1f} MiB process, {res['run_seconds']} s", file=sys.stderr)
        out[str(n)] = res
    return rss_growth(out, counts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/bench_ray.json"))
    parser.add_argument("--images", type=lambda v: [int(n) for n in v.split(",") if n], default=[2000, 20000],
                        help="job sizes (images) of the throughput part, comma-separated")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs of the local Ray instance")
    parser.add_argument("--address", default="", help="run --ray on this running cluster (HOST:PORT) instead of a "
                        "local instance per run; CPU time is then the machine's")
    parser.add_argument("--rss-counts", default="500,5000", help="image counts of the RSS runs ('' to skip)")
    parser.add_argument("--compare-threads", type=lambda v: [int(n) for n in v.split(",") if n], default=[],
                        help="also time --ray with these ONNX Runtime threads per actor (default one)")
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=["local", "ray"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--list", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    from bench_infer import model_for_backend, save_model
    from gpu_speed import make_jpegs

    from fgdeploy.bench import environment
    from fgdeploy.fileio import atomic_write_json

    import ray

    payload: dict[str, Any] = {"environment": {**environment(), "ray": ray.__version__},
                               "load_average_at_start": os.getloadavg(),
                               "args": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="fgdeploy-bench-ray-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "images").mkdir()
        make_jpegs(tmp_path / "images", min(*args.images, 500))
        model = model_for_backend(save_model(tmp_path / "model.pt", "demo", small=False), "ort")
        real = sorted((tmp_path / "images").glob("*.jpg"))
        payload["stage_costs"] = stage_costs(model, tmp_path / "images", args.batch)
        print(f"one thread: decode {payload['stage_costs']['decode_ms_per_image']} ms, model "
              f"{payload['stage_costs']['model_ms_per_image_1_thread']} ms per image", file=sys.stderr)
        payload["throughput"] = {str(n): throughput(model, link_list(tmp_path / "images", real, n), args)
                                 for n in args.images}
        if len(args.images) > 1:
            payload["fit"] = fit_sizes(payload["throughput"])
        counts = [int(c) for c in args.rss_counts.split(",") if c.strip()]
        if counts:
            (tmp_path / "rss").mkdir()
            make_jpegs(tmp_path / "rss", min(counts), seed=1)
            small = model_for_backend(save_model(tmp_path / "small.pt", "demo", small=True), "ort")
            payload["rss"] = peak_rss(small, tmp_path / "rss", counts, args)
    payload["load_average_at_end"] = os.getloadavg()
    atomic_write_json(args.out, payload)
    r = payload.get("rss")
    for t in payload["throughput"].values():
        print(f"{t['images']} images: --ray / local end-to-end {t['ratio']:.3f} ({t['ray_images_per_s']:.1f} / "
              f"{t['local_images_per_s']:.1f} img/s, batch {t['batch']}); including start-up "
              f"{t['ratio_including_startup']:.3f}; CPU ms per image local {t['cpu_ms_per_image']['local']:.2f}, "
              f"ray {t['cpu_ms_per_image']['ray']:.2f}")
    if "fit" in payload:
        f = payload["fit"]
        print(f"fitted: steady --ray / local {f['steady_ratio']:.3f} ({f['ray']['steady_images_per_s']} / "
              f"{f['local']['steady_images_per_s']} img/s), fixed cost ray {f['ray']['fixed_s']} s, "
              f"local {f['local']['fixed_s']} s")
    if r:
        print(f"driver peak RSS {max(counts)} vs {min(counts)} images: {r['ratio']:.3f}x")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
