"""`fgdeploy serve`'s HTTP handling without a Ray cluster: a ModelReplica driven in-process with ASGI requests.

Shows: health is 503 until the model is loaded and warmed up (a predict sent meanwhile waits, then answers);
a model that cannot be loaded gives 503 with the reason; bad requests get 4xx JSON that says what is wrong
(empty, undecodable, truncated, zero-size, pickled, oversized bodies; a form upload; bad topk; wrong method and
path) and the replica answers the next good request; concurrent requests share model calls (serve.batch);
answers equal the records of local infer's per-batch code on the same files.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install -e '.[serve]'")

from fgdeploy.serving.api import BATCH_SIZE_HEADER, ServeConfig   # noqa: E402
from fgdeploy.serving.replica import ModelReplica                 # noqa: E402
from test_infer import BAD, GOOD, _tiny_onnx, make_mixed_folder   # noqa: E402


@pytest.fixture(autouse=True)
def outside_a_replica(monkeypatch):
    """serve.batch's queue asks the replica context for max_ongoing_requests (only to warn); there is none here."""
    from ray.serve import batching

    monkeypatch.setattr(batching._BatchQueue, "_warn_if_max_batch_size_exceeds_max_ongoing_requests",
                        lambda self: None)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    return _tiny_onnx(tmp_path_factory.mktemp("serve_api_model"))


def _request(method: str, path: str, body: bytes = b"", query: str = "", headers: dict[str, str] | None = None,
             chunk: int = 0):
    from starlette.requests import Request

    heads = {"content-length": str(len(body)), **(headers or {})}
    scope = {"type": "http", "method": method, "path": path, "query_string": query.encode(), "root_path": "",
             "scheme": "http", "server": ("127.0.0.1", 8000), "headers": [(k.encode(), v.encode())
                                                                       for k, v in heads.items() if v is not None]}
    parts = [body[i:i + chunk] for i in range(0, len(body), chunk)] if chunk and body else [body]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return Request(scope, receive)


async def _call(replica, *args, **kwargs) -> tuple[int, dict, dict]:
    response = await asyncio.wait_for(replica(_request(*args, **kwargs)), timeout=60)
    return response.status_code, json.loads(response.body), dict(response.headers)


class GatedReplica(ModelReplica):
    """A ModelReplica whose loading waits for ``gate`` (so a test sees it before it is ready)."""

    gate = threading.Event()

    def _load(self) -> None:
        assert self.gate.wait(60)
        super()._load()


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header says ``width`` x ``height`` pixels, with no pixel data (0 x 8: a zero-size image;
    a huge one: what a decompression bomb's header says)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_health_is_503_until_loaded_and_a_waiting_predict_then_answers(tiny_onnx, tmp_path):
    image = make_mixed_folder(tmp_path / "imgs") / "plain.jpg"

    async def scenario():
        replica = GatedReplica(ServeConfig(str(tiny_onnx), max_batch=4))
        status, body, _ = await _call(replica, "GET", "/v1/health")
        assert (status, body) == (503, {"status": "loading"})
        waiting = asyncio.ensure_future(_call(replica, "POST", "/v1/predict", image.read_bytes()))
        await asyncio.sleep(0.3)
        assert not waiting.done()                       # waits for the model instead of failing
        GatedReplica.gate.set()
        status, answer, _ = await waiting
        assert status == 200 and answer["width"] == GOOD["plain.jpg"][1]
        status, body, _ = await _call(replica, "GET", "/v1/health")
        assert status == 200 and body["status"] == "ok" and body["model"]["name"] == "ort-cpu-fp32"

    asyncio.run(scenario())


def test_a_model_that_cannot_load_is_503_with_the_reason(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")

    async def scenario():
        replica = ModelReplica(ServeConfig(str(broken)))
        for _ in range(200):
            status, body, _ = await _call(replica, "GET", "/v1/health")
            if body.get("status") != "loading":
                break
            await asyncio.sleep(0.05)
        assert status == 503 and body["status"] == "failed" and "broken.onnx" in body["error"]
        status, body, _ = await _call(replica, "POST", "/v1/predict", b"\xff\xd8")
        assert status == 503 and "could not be loaded" in body["error"]

    asyncio.run(scenario())


def test_bad_requests_get_4xx_json_and_the_replica_goes_on(tiny_onnx, tmp_path):
    folder = make_mixed_folder(tmp_path / "imgs")
    good = (folder / "plain.jpg").read_bytes()
    cases = [  # (request args, status, words of the error)
        (("POST", "/v1/predict", b""), 400, "empty body"),
        (("POST", "/v1/predict", (folder / "noise.png").read_bytes()), 422, "not a decodable image"),
        (("POST", "/v1/predict", (folder / "truncated.jpg").read_bytes()), 422, "truncated JPEG"),
        (("POST", "/v1/predict", (folder / "text_renamed.jpg").read_bytes()), 422, "not a decodable image"),
        (("POST", "/v1/predict", _png_header(0, 8)), 422, "not a usable image"),
        (("POST", "/v1/predict", _png_header(30000, 30000)), 422, "900 Mpx) is more than --max-pixels 1000000"),
        (("POST", "/v1/predict", pickle.dumps(np.zeros((8, 8, 3), np.uint8))), 422, "not a usable image"),
        (("POST", "/v1/predict", b"x" * 5000), 413, "over this server's limit of 4096 bytes"),
        (("POST", "/v1/predict", b"x" * 5000, "", {"content-length": None}, 1000), 413, "limit of 4096"),  # chunked
        (("POST", "/v1/predict", good, "", {"content-type": "multipart/form-data; boundary=x"}), 415, "not a form"),
        (("POST", "/v1/predict", good, "topk=0"), 400, "topk='0'"),
        (("POST", "/v1/predict", good, "topk=two"), 400, "whole number"),
        (("GET", "/v1/predict"), 405, "takes POST"),
        (("POST", "/v1/health"), 405, "takes GET"),
        (("GET", "/predict"), 404, "POST /v1/predict"),
    ]

    async def scenario():
        replica = ModelReplica(ServeConfig(str(tiny_onnx), max_bytes=4096, max_pixels=1_000_000, topk=2))
        for args, status, words in cases:
            got, body, _ = await _call(replica, *args)
            assert (got, list(body)) == (status, ["error"]), (args[:2], got, body)
            assert words in body["error"], (args[:2], body)
        got, body, _ = await _call(replica, "POST", "/v1/predict", good, "topk=9")   # still answering
        assert got == 200 and len(body["top"]) == 4                                  # 4 classes: all of them
        got, body, _ = await _call(replica, "POST", "/v1/predict", good)
        assert got == 200 and len(body["top"]) == 2                                  # the server's --topk

    asyncio.run(scenario())


def test_concurrent_requests_share_model_calls_and_equal_local_infer_records(tiny_onnx, tmp_path):
    from fgdeploy.inference.batch_records import RecordMaker
    from fgdeploy.inference.local import decode_one
    from fgdeploy.inference.predictors import open_predictor

    folder = make_mixed_folder(tmp_path / "imgs")
    files = sorted(folder / name for name in GOOD)
    with open_predictor(tiny_onnx, "ort", device="cpu") as loaded:
        maker = RecordMaker(loaded.predictor.input_size, 3, loaded.class_names, loaded.part_names)
        local = maker.score(loaded.predictor, [decode_one(str(p), loaded.predictor.input_size) for p in files])

    async def scenario():
        replica = ModelReplica(ServeConfig(str(tiny_onnx), max_batch=8, batch_wait_ms=50, topk=3))
        await _call(replica, "GET", "/v1/model")                       # waits until loaded
        return await asyncio.gather(*[_call(replica, "POST", "/v1/predict", p.read_bytes()) for p in files * 2])

    answers = asyncio.run(scenario())
    sizes = [int(headers[BATCH_SIZE_HEADER.lower()]) for _, _, headers in answers]
    assert all(status == 200 for status, _, _ in answers)
    assert max(sizes) == 8 and len(answers) / sum(1 / s for s in sizes) > 1   # mean batch size over model calls
    for record, (_, answer, _) in zip(local * 2, answers):
        model = answer.pop("model")
        assert answer == {k: v for k, v in record.items() if k != "path"}
        assert model["precision"] == "fp32" and model["source_checkpoint"] == "tiny.pt"
    assert not set(BAD) & {p.name for p in files}


def test_serve_without_ray_serve_is_a_one_line_error_naming_the_extra(tiny_onnx, monkeypatch):
    import sys

    from click.testing import CliRunner

    from fgdeploy.cli import cli

    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setitem(sys.modules, "ray.serve", None)    # `import ray.serve` now fails as if it were not installed
    result = CliRunner().invoke(cli, ["serve", str(tiny_onnx), "--port", str(port)])
    assert result.exit_code == 1, result.output
    assert "fgdeploy serve needs Ray Serve" in result.output and "pip install 'ray[serve]'" in result.output
    assert len(result.output.strip().splitlines()) == 1
