"""The HTTP API of `fgdeploy serve`, independent of Ray: paths, settings, request checks and JSON answers.

    POST /v1/predict[?topk=K]   body: one encoded image (JPEG, PNG, WebP, BMP, TIFF: what `infer` decodes)
        200 {"width", "height", "top", "keypoints", ["boxes"], "model"}: one `infer` record (without ``path``:
            the client knows what it sent) and the model's id; header X-Fgdeploy-Batch-Size: the number of
            requests that shared this model call
        400 empty body or bad topk; 413 body over --max-bytes; 415 a form upload (multipart) instead of the
        image's bytes; 422 the body is not a usable image (undecodable, truncated, zero-size, over --max-pixels:
        refused from its header before decoding); 503 the model
        is not loaded; 500 the model failed. Every error is JSON {"error": "..."} saying what to do.
    GET /v1/health    200 {"status": "ok", "model"} once the model is loaded and answered a warm-up request;
                      503 {"status": "loading"} before, or {"status": "failed", "error"} if it cannot load
    GET /v1/model     200: class and part names, input size, precision, source checkpoint, backend, batching

Nothing a client sends is unpickled or executed: the body is handed to the image decoder as bytes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from fgdeploy.inference.batch_records import clamp_topk

PREDICT_PATH = "/v1/predict"
HEALTH_PATH = "/v1/health"
MODEL_PATH = "/v1/model"
ROUTES = {PREDICT_PATH: "POST", HEALTH_PATH: "GET", MODEL_PATH: "GET"}
BATCH_SIZE_HEADER = "X-Fgdeploy-Batch-Size"
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
BODY_NAME = "request body"      # stands for the file in the decoder's messages


@dataclass(frozen=True)
class ServeConfig:
    """What every replica opens and how it answers (pickled to the replicas: plain values only).

    Args:
        model: checkpoint, .onnx or .engine; every node running a replica must read it under this path.
        backend, device, fp16, threads, fast: as for `infer` (``open_predictor``); device is resolved
            ("cpu", "cuda") before deploying.
        max_batch: requests per model call at most (``serve.batch``).
        batch_wait_ms: how long a model call waits for more requests once one is there.
        max_bytes: the largest body accepted.
        max_pixels: images with more pixels are refused from their header, before decoding (as `infer`).
        topk: classes per answer unless the request says ``?topk=K``.
        load_timeout_s: how long a request waits for a replica that is still loading its model.
    """

    model: str
    backend: str = "auto"
    device: str = "cpu"
    fp16: bool = False
    threads: int | None = None
    fast: Any = None
    max_batch: int = 16
    batch_wait_ms: float = 5.0
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int | None = 1 << 28     # = infer's default (``DEFAULT_MAX_PIXELS``); None: no limit
    topk: int = 5
    load_timeout_s: float = 300.0


class ClientError(Exception):
    """A request the server refuses: the HTTP status and a message saying what is wrong and what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_json(message: str) -> bytes:
    """The body of every error answer."""
    return json.dumps({"error": message}, ensure_ascii=False).encode("utf-8")


def check_route(path: str, method: str) -> None:
    """Refuse an unknown path (404) or the wrong method for a known one (405)."""
    if path not in ROUTES:
        listed = ", ".join(f"{m} {p}" for p, m in ROUTES.items())
        raise ClientError(404, f"no endpoint {path}: this server answers {listed}")
    if method != ROUTES[path] and not (method == "HEAD" and ROUTES[path] == "GET"):
        raise ClientError(405, f"{path} takes {ROUTES[path]}, not {method}")


def request_topk(query: Mapping[str, str], default: int, classes: int) -> int:
    """``?topk=K`` (a whole number >= 1; more than the model's classes lists them all), else ``default``."""
    text = query.get("topk")
    if text is None:
        return clamp_topk(default, classes)
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ClientError(400, f"topk={text!r}: give a whole number >= 1 (classes per answer)")
    return clamp_topk(value, classes)


def check_headers(headers: Mapping[str, str], max_bytes: int) -> None:
    """Refuse what the headers already show to be wrong: a form upload, a declared size over ``max_bytes``."""
    content_type = headers.get("content-type", "").lower()
    if content_type.startswith("multipart/"):   # (curl --data-binary says x-www-form-urlencoded: the bytes are fine)
        raise ClientError(415, f"{content_type.split(';')[0]}: send the image file's bytes as the body, not a form "
                               "(curl --data-binary @photo.jpg, not -F)")
    length = headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > max_bytes:
        raise ClientError(413, too_large(int(length), max_bytes))


def too_large(size: int | None, max_bytes: int) -> str:
    got = "more" if size is None else f"{size}"
    return (f"the body is {got} bytes, over this server's limit of {max_bytes} bytes (--max-bytes): send a smaller "
            "image (the model sees it at its input size anyway)")


async def read_body(chunks: AsyncIterator[bytes], max_bytes: int) -> bytes:
    """The body, read chunk by chunk and refused (413) as soon as it passes ``max_bytes``; refused (400) if empty."""
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise ClientError(413, too_large(None, max_bytes))
        parts.append(chunk)
    if size == 0:
        raise ClientError(400, "empty body: send one image file's bytes as the body "
                               "(curl --data-binary @photo.jpg http://HOST:PORT/v1/predict)")
    return b"".join(parts)


def unusable_image(reason: str) -> ClientError:
    """422 for a body the decoder refused (``reason``: the decoder's, as `infer` writes it to its errors file)."""
    return ClientError(422, f"the body is not a usable image: {reason} (send the bytes of a JPEG, PNG, WebP, BMP "
                            "or TIFF file)")


def answer(entry: Mapping[str, Any], model_id: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON of a 200 answer: the record without ``path``, plus the model's id."""
    return {**{k: v for k, v in entry.items() if k != "path"}, "model": dict(model_id)}


def model_id(name: str, recorded: Mapping[str, Any], model_file: str, fp16: bool) -> dict[str, Any]:
    """What identifies the served model in every answer: runtime name, precision, source checkpoint's sha256.

    ``recorded``: an export's metadata (its precision and source); empty for a checkpoint, whose own sha256
    is taken.
    """
    from pathlib import Path

    from fgdeploy.fileio import file_sha256

    if recorded:
        precision = str(recorded.get("precision") or "fp32")
        source = str(recorded.get("source_sha256") or "")
        checkpoint = str(recorded.get("source_checkpoint") or "")
    else:
        precision = "fp16" if fp16 else "fp32"
        source, checkpoint = file_sha256(model_file), Path(model_file).name
    return {"name": name, "file": Path(model_file).name, "precision": precision,
            "source_checkpoint": checkpoint, "source_sha256": source}
