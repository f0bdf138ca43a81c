"""CPU benchmark of `fgdeploy serve`: closed-loop HTTP clients against the model server and against a no-op server
with the same HTTP path and batching (Ray Serve's own ceiling here), plus offline `infer` of the same model, in one
run. Writes JSON.

What runs, one at a time on the same machine (nothing else of this script runs meanwhile):
1. Offline: `infer`'s pipeline (run_inference, ONNX Runtime, batch 16, default decode threads and ORT threads) over
   the same JPEGs, repeated to --offline-images: img/s as `infer` reports it.
2. Servers, each a fresh process with its own local Ray instance (--cpus CPUs), started like a user starts them:
   - model, --max-batch 16 (`python -m fgdeploy serve MODEL --max-batch 16`);
   - model, --max-batch 1;
   - constant: this script's ConstantReplica, an fgdeploy HttpReplica (the same request checks, body reading,
     decode-thread hop, serve.batch batching and JSON answer as the model's replica) whose batch returns a fixed
     record of the same size instead of decoding and running the model.
   For each, closed-loop clients at each --concurrency (1, 4, 16, 64): C coroutines of one aiohttp client (one
   process, one event loop), each sending the next JPEG's bytes as soon as its previous answer arrived; --warmup
   seconds unmeasured, then --duration seconds measured. Recorded: requests/s completed in the window, latency
   p50/p90/p99 of requests sent and answered in it, errors, mean server batch size (X-Fgdeploy-Batch-Size: each
   model call of b requests counted once: n / sum(1/b)), and the CPU time of the load generator, of the server's
   process tree and of the whole machine (/proc/stat) in the window: the load generator's share of the machine.
3. Ratios: model@16 / constant at concurrency 16 (target >= 0.8), model@16 at 16 / offline img/s, --max-batch 16 /
   1 per concurrency.

Images: synth-birds (`fgdeploy data synth`'s generator, --classes x --per-class JPEGs of --image-size px). Model: the
demo config with random weights (20 classes), exported to ONNX. Run it on an idle machine.

Usage:
  python bench/bench_serve.py --out bench/results/cpu-<date>/bench_serve.json
  python bench/bench_serve.py --duration 3 --warmup 1 --concurrency 1,16 --out /tmp/smoke.json   # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fgdeploy.serving.api import BATCH_SIZE_HEADER, PREDICT_PATH, ServeConfig   # noqa: E402
from fgdeploy.serving.replica import HttpReplica, Job                           # noqa: E402


class ConstantReplica(HttpReplica):
    """The no-op server: fgdeploy's HTTP handling and batching, a batch answered with one fixed record (the size of
    a demo model's: 5 classes, 15 keypoints) instead of decoding and running a model."""

    def __init__(self, config: ServeConfig) -> None:
        super().__init__(config)
        self.identity = {"name": "constant", "file": "", "precision": "fp32", "source_checkpoint": "",
                         "source_sha256": "0" * 64}
        self.record = {"width": 256, "height": 256,
                       "top": [{"label": k, "class": f"c{k}", "prob": 0.123456} for k in range(5)],
                       "keypoints": [{"part": f"part_{p}", "x": 123.456, "y": 78.901, "score": 0.987654}
                                     for p in range(15)]}
        self.classes = 20
        self.ready.set()

    def prepare(self, body: bytes) -> Any:
        return len(body)

    def run_batch(self, jobs: list[Job]) -> list[dict[str, Any]]:
        return [self.record for _ in jobs]

    def describe(self) -> dict[str, Any]:
        return {"model": self.identity, "input_size": 0, "class_names": [], "part_names": []}


# --------------------------------------------------------------------------------------------
# CPU time
def machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def tree_cpu_by_role(root: int) -> dict[str, float]:
    """CPU seconds (user + system) of the living processes in ``root``'s tree, summed by role: Ray Serve's HTTP
    proxy, the replica(s), everything else (the serve command, Ray's GCS, raylet, controller, agents)."""
    from bench_ray import _tree_ticks

    ticks = _tree_ticks(root)
    out = {"proxy": 0.0, "replicas": 0.0, "other": 0.0}
    for pid, n in ticks.items():
        try:
            name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            name = ""
        role = "proxy" if "ProxyActor" in name else "replicas" if "ServeReplica" in name else "other"
        out[role] += n / os.sysconf("SC_CLK_TCK")
    return out


# --------------------------------------------------------------------------------------------
# the load generator
async def closed_loop(url: str, bodies: list[bytes], concurrency: int, warmup_s: float, duration_s: float,
                      server_pid: int) -> dict[str, Any]:
    """``concurrency`` clients, each sending its next body as soon as its answer arrived; stats of the window."""
    import aiohttp

    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    batch_sizes: list[int] = []
    completed = errors = 0
    start = loop.time()
    window = (start + warmup_s, start + warmup_s + duration_s)
    cpu: dict[str, tuple[float, dict[str, float], float]] = {}

    async def client(k: int, session: aiohttp.ClientSession) -> None:
        nonlocal completed, errors
        i = k
        while loop.time() < window[1]:
            body = bodies[i % len(bodies)]
            i += concurrency
            sent = loop.time()
            try:
                async with session.post(url, data=body, headers={"Content-Type": "image/jpeg"}) as response:
                    await response.read()
                    ok, size = response.status == 200, int(response.headers.get(BATCH_SIZE_HEADER, 0))
            except (aiohttp.ClientError, asyncio.TimeoutError):
                ok, size = False, 0
            done = loop.time()
            if window[0] <= done <= window[1]:
                completed += ok
                errors += not ok
                if ok and sent >= window[0]:
                    latencies.append(done - sent)
                    batch_sizes.append(size)

    async def meter() -> None:
        await asyncio.sleep(max(0.0, window[0] - loop.time()))
        cpu["start"] = (time.process_time(), tree_cpu_by_role(server_pid), machine_busy_s())
        await asyncio.sleep(max(0.0, window[1] - loop.time()))
        cpu["end"] = (time.process_time(), tree_cpu_by_role(server_pid), machine_busy_s())

    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(meter(), *[client(k, session) for k in range(concurrency)])
    import numpy as np

    lat_ms = np.asarray(latencies) * 1000.0
    (gen0, srv0, all0), (gen1, srv1, all1) = cpu["start"], cpu["end"]
    busy = max(all1 - all0, 1e-9)
    server = {role: srv1[role] - srv0[role] for role in srv1}
    per_request = {role: round(1000.0 * v / max(completed, 1), 3) for role, v in server.items()}
    per_request["load_generator"] = round(1000.0 * (gen1 - gen0) / max(completed, 1), 3)
    return {
        "concurrency": concurrency, "requests_per_s": round(completed / duration_s, 2), "errors": errors,
        "latency_ms": {q: round(float(np.percentile(lat_ms, p)), 2) if len(lat_ms) else None
                       for q, p in (("p50", 50), ("p90", 90), ("p99", 99))},
        "mean_batch_size": round(len(batch_sizes) / sum(1.0 / b for b in batch_sizes), 2)
        if batch_sizes and all(batch_sizes) else None,
        "cpu_s": {"load_generator": round(gen1 - gen0, 3), "server_tree": round(sum(server.values()), 3),
                  "machine_busy": round(busy, 3), "machine_capacity": round(duration_s * (os.cpu_count() or 1), 3)},
        "cpu_ms_per_request": per_request,
        "load_generator_share_of_busy_cpu": round((gen1 - gen0) / busy, 4),
    }


# --------------------------------------------------------------------------------------------
# servers
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(kind: str, model: Path, max_batch: int, port: int, args: argparse.Namespace,
                 log: Path) -> subprocess.Popen:
    common = ["--port", str(port), "--max-batch", str(max_batch), "--batch-wait-ms", str(args.batch_wait_ms),
              "--cpus", str(args.cpus)]
    if kind == "model":
        cmd = [sys.executable, "-m", "fgdeploy", "serve", str(model), *common]
    else:
        cmd = [sys.executable, __file__, "--child-constant", *common]
    with open(log, "ab") as sink:
        return subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float, log: Path) -> None:
    from fgdeploy.serving.client import EndpointClient, EndpointError

    client = EndpointClient(url, timeout_s=5)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            client.health()
            return
        except (OSError, EndpointError):
            time.sleep(0.5)
    raise RuntimeError(f"{url} not healthy within {timeout_s} s: {log.read_text()[-2000:]}")


def stop_server(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def measure_server(kind: str, model: Path, max_batch: int, bodies: list[bytes], args: argparse.Namespace,
                   log: Path) -> dict[str, Any]:
    port = free_port()
    proc = start_server(kind, model, max_batch, port, args, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, 300, log)
        points = []
        for c in args.concurrency:
            point = asyncio.run(closed_loop(url + PREDICT_PATH, bodies, c, args.warmup, args.duration, proc.pid))
            points.append(point)
            print(f"  {kind} max-batch {max_batch} c={c}: {point['requests_per_s']} req/s, p50 "
                  f"{point['latency_ms']['p50']} ms, p99 {point['latency_ms']['p99']} ms, mean batch "
                  f"{point['mean_batch_size']}, errors {point['errors']}, load generator "
                  f"{100 * point['load_generator_share_of_busy_cpu']:.1f}% of busy CPU", file=sys.stderr)
    finally:
        code = stop_server(proc)
    return {"server": kind, "max_batch": max_batch, "exit_code_after_sigterm": code,
            "by_concurrency": {str(p["concurrency"]): p for p in points}}


def child_constant(args: argparse.Namespace) -> None:
    """The no-op server (run as a child process): serve_forever with ConstantReplica."""
    from fgdeploy.inference.ray_cluster import ClusterOptions
    from fgdeploy.serving.server import ServerOptions, serve_forever

    config = ServeConfig(model="constant", max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms)
    serve_forever(config, ServerOptions(port=args.port, ray=ClusterOptions(address="local", cpus=args.cpus)),
                  deployment=ConstantReplica)


# --------------------------------------------------------------------------------------------
# the model's own work per image
def model_work(model: Path, bodies: list[bytes], threads: int = 1) -> dict[str, Any]:
    """CPU ms per image of what a replica does besides HTTP: decode + resize (``decode_bytes``) and the model call
    with records (``RecordMaker.score``), one thread, at batch 1 and 16, as the replica runs them."""
    import cv2

    from fgdeploy.inference.batch_records import RecordMaker
    from fgdeploy.inference.local import decode_bytes
    from fgdeploy.inference.predictors import open_predictor

    cv2.setNumThreads(1)
    with open_predictor(model, "ort", device="cpu", threads=threads, spin=False) as loaded:
        size = loaded.predictor.input_size
        [decode_bytes(b, "body", size) for b in bodies[:4]]   # warm-up
        start = time.process_time()
        items = [decode_bytes(b, "body", size) for b in bodies]
        decode_ms = 1000.0 * (time.process_time() - start) / len(bodies)
        maker = RecordMaker(size, 5, loaded.class_names, loaded.part_names)
        out = {"decode_resize_ms": round(decode_ms, 3), "model_threads": threads}
        for batch in (1, 16):
            maker.score(loaded.predictor, items[:batch])
            start = time.process_time()
            for k in range(0, len(items) - batch + 1, batch):
                maker.score(loaded.predictor, items[k:k + batch])
            done = (len(items) // batch) * batch
            out[f"model_and_records_ms_batch_{batch}"] = round(1000.0 * (time.process_time() - start) / done, 3)
    return out


# --------------------------------------------------------------------------------------------
# offline infer
def offline_infer(model: Path, paths: list[str], count: int, batch: int, work: Path) -> dict[str, Any]:
    """`infer`'s pipeline over ``count`` images (the JPEGs repeated): img/s as `infer` reports it."""
    from fgdeploy.inference.local import InferOptions, run_inference
    from fgdeploy.inference.predictors import open_predictor

    listing = (paths * (count // len(paths) + 1))[:count]
    with open_predictor(model, "ort", device="cpu", batch=batch) as loaded:
        report = run_inference(listing, loaded.predictor, work / "offline.jsonl", class_names=loaded.class_names,
                               part_names=loaded.part_names, options=InferOptions(batch=batch, topk=5),
                               model_id="bench")
        name = loaded.name
    return {"backend": name, "images": report.attempted, "seconds": round(report.seconds, 3),
            "images_per_s": round(report.images_per_s, 2), "batch": batch}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/bench_serve.json"))
    parser.add_argument("--concurrency", type=lambda v: [int(n) for n in v.split(",") if n], default=[1, 4, 16, 64])
    parser.add_argument("--max-batches", type=lambda v: [int(n) for n in v.split(",") if n], default=[16, 1],
                        help="the model server's --max-batch values (the constant server uses the first)")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds per point before measuring")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per point")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs of each server's Ray instance")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=256, help="synth-birds image side (the demo's default)")
    parser.add_argument("--offline-images", type=int, default=1000)
    parser.add_argument("--child-constant", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--max-batch", type=int, default=16, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_constant:
        child_constant(args)
        return 0
    from bench_infer import model_for_backend, save_model

    import ray

    from fgdeploy.bench import environment
    from fgdeploy.data.synthetic import generate_synth_birds
    from fgdeploy.fileio import atomic_write_json
    from fgdeploy.inference.local import discover_images

    payload: dict[str, Any] = {"environment": {**environment(), "ray": ray.__version__},   # CPU model and flags
                               "load_average_at_start": os.getloadavg(),
                               "args": {k: str(v) for k, v in vars(args).items() if k not in ("port", "max_batch")}}
    with tempfile.TemporaryDirectory(prefix="fgdeploy-bench-serve-") as tmp:
        work = Path(tmp)
        root = generate_synth_birds(work / "synth", classes=args.classes, images_per_class=args.per_class,
                                    size=args.image_size, workers=os.cpu_count() or 1)
        paths = discover_images(root / "images")
        bodies = [Path(p).read_bytes() for p in paths]
        payload["images"] = {"source": f"synth-birds {args.classes} classes x {args.per_class}, {args.image_size} px",
                             "files": len(paths), "mean_bytes": round(sum(map(len, bodies)) / len(bodies))}
        model = model_for_backend(save_model(work / "model.pt", "demo", small=False, classes=20), "ort")
        payload["model_work_cpu_ms_per_image"] = model_work(model, bodies)
        print(f"model work per image: {payload['model_work_cpu_ms_per_image']}", file=sys.stderr)
        print("offline infer ...", file=sys.stderr)
        payload["offline_infer"] = offline_infer(model, paths, args.offline_images, 16, work)
        print(f"  {payload['offline_infer']['images_per_s']} img/s", file=sys.stderr)
        runs = []
        log = work / "servers.log"
        for max_batch in args.max_batches:
            print(f"model server, --max-batch {max_batch} ...", file=sys.stderr)
            runs.append(measure_server("model", model, max_batch, bodies, args, log))
        print(f"constant server, --max-batch {args.max_batches[0]} ...", file=sys.stderr)
        runs.append(measure_server("constant", model, args.max_batches[0], bodies, args, log))
        payload["runs"] = runs
    payload["summary"] = summarise(payload, args)
    payload["load_average_at_end"] = os.getloadavg()
    atomic_write_json(args.out, payload)
    print(json.dumps(payload["summary"], indent=2))
    print(f"wrote {args.out}")
    return 0


def summarise(payload: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The ratios the issue asks for, from this run's numbers."""
    runs = payload["runs"]
    model = {r["max_batch"]: r["by_concurrency"] for r in runs if r["server"] == "model"}
    constant = next(r["by_concurrency"] for r in runs if r["server"] == "constant")
    main_batch = args.max_batches[0]
    out: dict[str, Any] = {"offline_infer_images_per_s": payload["offline_infer"]["images_per_s"]}
    for c in map(str, args.concurrency):
        m, k = model[main_batch][c], constant[c]
        row = {"model_requests_per_s": m["requests_per_s"], "constant_requests_per_s": k["requests_per_s"],
               "model_over_constant": round(m["requests_per_s"] / k["requests_per_s"], 3) if k["requests_per_s"] else None,
               "model_over_offline_infer": round(m["requests_per_s"] / payload["offline_infer"]["images_per_s"], 3),
               "p99_ms": m["latency_ms"]["p99"], "mean_batch_size": m["mean_batch_size"],
               "load_generator_share_of_busy_cpu": m["load_generator_share_of_busy_cpu"]}
        for other in args.max_batches[1:]:
            o = model[other][c]
            row[f"max_batch_{other}_requests_per_s"] = o["requests_per_s"]
            row[f"max_batch_{main_batch}_over_{other}"] = round(m["requests_per_s"] / o["requests_per_s"], 3) \
                if o["requests_per_s"] else None
        out[f"concurrency_{c}"] = row
    if "16" in map(str, args.concurrency):
        k = constant["16"]["cpu_ms_per_request"]
        framework = sum(v for role, v in k.items())   # the constant server's CPU per request, client included
        work = payload["model_work_cpu_ms_per_image"]
        model_ms = work["decode_resize_ms"] + work[f"model_and_records_ms_batch_{16 if main_batch > 1 else 1}"]
        out["cpu_bound_estimate_at_16"] = {
            "constant_cpu_ms_per_request": round(framework, 3), "model_work_cpu_ms_per_image": round(model_ms, 3),
            "best_model_over_constant": round(framework / (framework + model_ms), 3),
            "note": "if the cores are the limit, the model server needs the constant's CPU per request plus the "
                    "model's own work, so model/constant cannot exceed framework / (framework + work)"}
        ratio = out["concurrency_16"]["model_over_constant"]
        out["target_model_over_constant_at_16"] = {"value": ratio, "target": 0.8,
                                                   "met": ratio is not None and ratio >= 0.8}
    return out


if __name__ == "__main__":
    sys.exit(main())
