"""`fgdeploy serve` end to end: one server per module (a subprocess: its own local Ray instance, 2 CPUs, loopback).

Must show: the endpoint's answers equal local `infer` records on a folder with bad files (bad ones -> 4xx JSON,
the server still answering afterwards); 64 concurrent requests all answered, with batching (mean batch > 1);
`parity` against the live endpoint passes, and fails (exit 1, naming the disagreement) for another model; the
replica's process SIGKILLed under load -> Ray Serve replaces it and the server answers again within 30 s, every
request answered or failed with an error (none hangs); SIGTERM -> the requests in flight are answered and the
server exits 0. Every request and wait has a timeout, and the module runs under a time limit.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install -e '.[serve]'")

from fgdeploy.cli import cli                                                   # noqa: E402
from fgdeploy.inference.results import read_results                           # noqa: E402
from fgdeploy.serving.api import BATCH_SIZE_HEADER                             # noqa: E402
from fgdeploy.serving.client import EndpointClient, EndpointError               # noqa: E402
from test_infer import BAD, GOOD, _tiny_config, make_mixed_folder   # noqa: E402
from test_infer_ray import _children, time_limit                                # noqa: E402

REQUEST_TIMEOUT_S = 30


@dataclass
class Server:
    url: str
    port: int
    proc: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-4000:]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(server: Server, timeout_s: float) -> None:
    client = EndpointClient(server.url, timeout_s=5)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.proc.poll() is None, f"the server exited ({server.proc.returncode}):\n{server.output()}"
        with contextlib.suppress(OSError, EndpointError):
            client.health()
            return
        time.sleep(0.25)
    raise AssertionError(f"the server was not healthy within {timeout_s} s:\n{server.output()}")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """A small synth-birds set (4 classes): files with ground truth for `parity --data`."""
    from fgdeploy.data.synthetic import generate_synth_birds

    return generate_synth_birds(tmp_path_factory.mktemp("serve_synth") / "synth", classes=4, images_per_class=3,
                                size=96)


@pytest.fixture(scope="module")
def models(tmp_path_factory, synth) -> dict[str, Path]:
    """The served model (tiny, ONNX, named with the synth set's classes) and another training of the same
    architecture (other weights)."""
    import torch

    from fgdeploy.checkpoint import CheckpointMeta, save_checkpoint
    from fgdeploy.data.cub import CubDataset
    from fgdeploy.export.exporter import export_checkpoint
    from fgdeploy.models import create_model

    folder = tmp_path_factory.mktemp("serve_models")
    cfg, names = _tiny_config(48), CubDataset(synth, "all").class_names
    for name, seed in (("tiny.pt", 0), ("other.pt", 1)):
        torch.manual_seed(seed)
        save_checkpoint(folder / name, create_model(cfg, len(names)), CheckpointMeta.for_config(cfg, names))
    export_checkpoint(folder / "tiny.pt", folder / "tiny.onnx")
    return {"served": folder / "tiny.onnx", "other": folder / "other.pt", "class_names": names}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_mixed_folder(tmp_path_factory.mktemp("serve_images") / "imgs")


@pytest.fixture(scope="module")
def server(tmp_path_factory, models) -> Iterator[Server]:
    """`fgdeploy serve` on a free loopback port; stopped (SIGTERM, then SIGKILL) when the module ends."""
    log = tmp_path_factory.mktemp("serve_log") / "serve.log"
    port = _free_port()
    args = [sys.executable, "-m", "fgdeploy", "serve", str(models["served"]), "--port", str(port), "--cpus", "2",
            "--max-bytes", "1000000", "--topk", "3"]
    with open(log, "wb") as sink:
        proc = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT)
    srv = Server(f"http://127.0.0.1:{port}", port, proc, log)
    try:
        _wait_healthy(srv, 180)
        yield srv
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def test_answers_equal_local_infer_records_and_bad_files_get_4xx(server, models, images, tmp_path):
    out = tmp_path / "local.jsonl"
    with time_limit(180):
        result = CliRunner().invoke(cli, ["infer", str(images), "--model", str(models["served"]), "--out", str(out),
                                          "--topk", "3", "--batch", "4"])
        assert result.exit_code == 0, result.output
        local = {Path(r["path"]).relative_to(images).as_posix(): r for r in read_results(out)}
        client = EndpointClient(server.url, timeout_s=REQUEST_TIMEOUT_S)
        for name in [*BAD, *GOOD]:   # the bad files first: the server must go on answering after them
            data = (images / name).read_bytes()
            if name in BAD:
                with pytest.raises(EndpointError) as refused:
                    client.predict(data)
                assert refused.value.status in (400, 422), (name, str(refused.value))
                reason = "empty body" if name == "zero.jpg" else BAD[name]   # as infer's errors file says, or 0 bytes
                assert reason in str(refused.value), (name, str(refused.value))
                continue
            answer = client.predict(data)
            model = answer.pop("model")
            assert answer == {k: v for k, v in local[name].items() if k != "path"}, name
            assert model["name"] == "ort-cpu-fp32" and model["source_checkpoint"] == "tiny.pt"
        for body, status in ((b"", 400), (b"\xff\xd8" + bytes(1_000_000), 413)):   # empty; over --max-bytes
            with pytest.raises(EndpointError) as refused:
                client.predict(body)
            assert refused.value.status == status, str(refused.value)
        assert len(client.predict((images / "plain.jpg").read_bytes(), topk=1)["top"]) == 1
        described = client.model()
    assert described["class_names"] == models["class_names"] and described["input_size"] == 48
    assert described["model"]["precision"] == "fp32" and len(described["model"]["source_sha256"]) == 64


def test_64_concurrent_requests_all_answered_and_batched(server, images):
    """64 clients at once; X-Fgdeploy-Batch-Size says how many requests shared each one's model call."""
    import http.client

    files = [(images / name).read_bytes() for name in GOOD]
    start = threading.Barrier(64, timeout=REQUEST_TIMEOUT_S)

    def one(k: int) -> tuple[int, int]:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=REQUEST_TIMEOUT_S)
        try:
            start.wait()
            connection.request("POST", "/v1/predict", body=files[k % len(files)])
            response = connection.getresponse()
            json.loads(response.read())
            return response.status, int(response.getheader(BATCH_SIZE_HEADER) or 0)
        finally:
            connection.close()

    with time_limit(120), ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(one, range(64)))
    assert [status for status, _ in answers] == [200] * 64
    sizes = [size for _, size in answers]
    mean_batch = len(sizes) / sum(1 / s for s in sizes)   # each model call of b requests is counted once
    assert mean_batch > 1, sizes


def test_parity_against_the_live_endpoint_passes_and_fails_for_another_model(server, models, images, synth,
                                                                             tmp_path):
    with time_limit(180):
        same = CliRunner().invoke(cli, ["parity", "--ref", f"onnx:{models['served']}", "--test", server.url,
                                        "--images", str(images), "--out", str(tmp_path / "same.json")])
        truth = CliRunner().invoke(cli, ["parity", "--ref", f"torch:{str(models['served'])[:-5]}.pt", "--test",
                                         server.url, "--data", str(synth), "--split", "all"])
        other = CliRunner().invoke(cli, ["parity", "--ref", f"torch:{models['other']}", "--test", server.url,
                                         "--images", str(images)])
    assert same.exit_code == 0, same.output
    assert "RESULT: PASS" in same.output and f"the same files refused ({len(BAD)} by both" in same.output
    report = json.loads((tmp_path / "same.json").read_text(encoding="utf-8"))
    assert report["passed"] and report["n_images"] == len(GOOD) and report["task"]["top1_agreement"] == 1.0
    assert truth.exit_code == 0, truth.output        # the checkpoint the served export was made from
    assert "12 of 12 all images" in truth.output and "accuracy: ref" in truth.output and "PCK@0.1: ref" in truth.output
    assert "keypoints in the same cell" in truth.output
    assert other.exit_code == 1, other.output
    assert "RESULT: FAIL" in other.output and "FAIL  top-1 agreement" in other.output
    assert "class flip: image" in other.output or "keypoint flip: image" in other.output
    assert "different trainings" in other.output   # the two record other source checkpoints


def _replicas(server: Server) -> list[int]:
    def cmdline(pid: int) -> str:
        with contextlib.suppress(OSError):
            return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        return ""
    return [p for p in _children(server.proc.pid) if "ServeReplica:fgdeploy" in cmdline(p)]


def test_replica_killed_under_load_is_replaced_and_no_request_hangs(server, images):
    data = (images / "plain.jpg").read_bytes()
    (replica,) = _replicas(server)
    outcomes: list[tuple[float, float, str]] = []   # (sent, finished, "ok" | "error ..." | "timeout")
    stop = threading.Event()

    def load() -> None:
        client = EndpointClient(server.url, timeout_s=REQUEST_TIMEOUT_S)
        while not stop.is_set():
            sent = time.monotonic()
            try:
                client.predict(data)
                outcome = "ok"
            except (TimeoutError, socket.timeout):
                outcome = "timeout"
            except (EndpointError, OSError) as exc:
                outcome = f"error {exc}"
            outcomes.append((sent, time.monotonic(), outcome))
            if outcome != "ok":
                time.sleep(0.25)   # retry, without hammering the proxy while the new replica starts

    with time_limit(120):
        threads = [threading.Thread(target=load, daemon=True) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        killed_at = time.monotonic()
        os.kill(replica, signal.SIGKILL)
        while time.monotonic() < killed_at + 30:
            if any(o == "ok" and sent > killed_at + 0.5 for sent, _, o in outcomes):
                break
            time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join(REQUEST_TIMEOUT_S + 5)
    assert not any(t.is_alive() for t in threads)
    after = [(sent, done, o) for sent, done, o in outcomes if sent > killed_at + 0.5]
    recovered = [done - killed_at for _, done, o in after if o == "ok"]
    assert recovered and min(recovered) <= 30, outcomes[-20:]
    assert not [o for o in outcomes if o[2] == "timeout"], "a request hung"
    assert all(done - sent < REQUEST_TIMEOUT_S for sent, done, _ in outcomes)
    assert any(o == "ok" for sent, _, o in outcomes if sent < killed_at)   # it was under load before
    new = _replicas(server)
    assert new and replica not in new
    failed = {o for _, _, o in outcomes if o != "ok"}
    assert all(o.startswith("error HTTP 5") for o in failed), failed   # a clear server error, not a dropped socket


def _big_jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    image = cv2.resize(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), (2400, 1800))
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return data.tobytes()


def test_serve_refuses_a_port_in_use_and_torch_flags_for_onnx(models):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = CliRunner().invoke(cli, ["serve", str(models["served"]), "--port", str(port)])
    assert busy.exit_code == 1 and f"cannot listen on 127.0.0.1:{port}" in busy.output and "--port" in busy.output
    flags = CliRunner().invoke(cli, ["serve", str(models["served"]), "--channels-last"])
    assert flags.exit_code == 2 and "--channels-last: for the torch backend" in flags.output


# keep this test last: it stops the module's server
def test_sigterm_answers_the_requests_in_flight_and_exits_0(server):
    """12 large photos (slow to decode) are sent, then SIGTERM: each is answered 200 (some after the signal),
    and the server exits 0."""
    import http.client

    _wait_healthy(server, 60)   # (the previous test killed its replica)
    bodies = [_big_jpeg(k) for k in range(12)]
    sent = threading.Barrier(len(bodies) + 1, timeout=REQUEST_TIMEOUT_S)

    def one(body: bytes) -> tuple[int, float]:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=REQUEST_TIMEOUT_S)
        try:
            connection.request("POST", "/v1/predict", body=body)
            sent.wait()
            response = connection.getresponse()
            response.read()
            return response.status, time.monotonic()
        finally:
            connection.close()

    with time_limit(120), ThreadPoolExecutor(len(bodies)) as pool:
        answers = pool.map(one, bodies)
        sent.wait()
        time.sleep(0.2)              # the requests reach the replica (decoding them all takes longer)
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        results = list(answers)
        code = server.proc.wait(90)
    assert [status for status, _ in results] == [200] * len(bodies), server.output()
    assert max(done for _, done in results) > signalled, "no request was still in flight at SIGTERM"
    assert code == 0, server.output()
    assert "SIGTERM received" in server.output() and "stopped" in server.output()
