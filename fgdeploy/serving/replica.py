"""The Ray Serve deployment of `fgdeploy serve`: HTTP handling, server-side batching and the model.

A request's way through a replica (one Ray actor; Ray Serve's HTTP proxy hands it the request):

    checks (route, headers, size) -> body -> decode + resize in a thread (``decode_bytes``: `infer`'s decoder
    and resize) -> ``serve.batch`` gathers up to --max-batch decoded images, waiting at most --batch-wait-ms
    -> one model call in the model thread (``RecordMaker.score``: `infer`'s per-batch code) -> JSON

The event loop only moves bytes: decoding runs on a pool of threads (OpenCV releases the GIL) and the model
on one thread of its own, so requests keep arriving (and batching up) while a batch runs. The model is
loaded on a thread when the replica starts, then answers a warm-up request through the same path; until then
GET /v1/health answers 503 and a predict waits (up to ``load_timeout_s``) instead of failing.

``HttpReplica`` holds the HTTP side; ``ModelReplica`` adds the model. The benchmark's constant replica
(``bench/bench_serve.py``) is an ``HttpReplica`` too, so both are measured through the same code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from fgdeploy.serving.api import (
    BATCH_SIZE_HEADER, BODY_NAME, HEALTH_PATH, MODEL_PATH, ClientError, ServeConfig, answer, check_headers,
    check_route, error_json, model_id, read_body, request_topk, unusable_image,
)

logger = logging.getLogger(__name__)

JSON = "application/json"
WAIT_POLL_S = 0.05      # how often a request waiting for the model to load looks again


@dataclass
class Job:
    """One request inside a batch: its decoded image (or raw body, for a replica that does not decode) and top-k."""

    item: Any
    topk: int


class HttpReplica:
    """The HTTP side of a replica: routes, checks, errors as JSON, batching; subclasses answer the batches.

    Subclasses set ``ready`` (a threading.Event) once they can answer, implement ``prepare`` (body -> a batch
    item, on a decode thread; raises ClientError for a body it cannot use), ``run_batch`` (jobs -> one answer
    entry per job, or ``{"status", "error"}``; on the model thread) and ``describe`` (GET /v1/model).
    """

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.ready = threading.Event()
        self.failure: str | None = None          # why the model could not be loaded
        self.identity: dict[str, Any] = {}       # model_id(...) once loaded
        self.classes = 0                         # class count once loaded (0: unknown)
        self._decode_pool = ThreadPoolExecutor(os.cpu_count() or 1,
                                               thread_name_prefix="fgdeploy-decode")
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="fgdeploy-model")
        # a batch queue of this replica's own, sized by the config (serve.batch on the class would share one
        # queue, and its sizes, among all instances of a process)
        self._batched = serve.batch(max_batch_size=config.max_batch,
                                    batch_wait_timeout_s=config.batch_wait_ms / 1000.0)(self._run_jobs)

    # -- the subclass's part --------------------------------------------------------------------------------
    def prepare(self, body: bytes) -> Any:
        raise NotImplementedError

    def run_batch(self, jobs: list[Job]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    # -- HTTP ---------------------------------------------------------------------------------------------
    async def __call__(self, request: Request) -> Response:
        path = request.url.path.rstrip("/") or "/"
        try:
            check_route(path, request.method)
            if path == HEALTH_PATH:
                return self._health()
            if path == MODEL_PATH:
                await self._wait_until_loaded()
                return _json(200, self.describe())
            return await self._predict(request)
        except ClientError as exc:
            return Response(error_json(exc.message), exc.status, media_type=JSON)

    def _health(self) -> Response:
        if self.failure is not None:
            return _json(503, {"status": "failed", "error": self.failure})
        if not self.ready.is_set():
            return _json(503, {"status": "loading"})
        return _json(200, {"status": "ok", "model": self.identity})

    async def _predict(self, request: Request) -> Response:
        check_headers(request.headers, self.config.max_bytes)
        body = await read_body(request.stream(), self.config.max_bytes)
        await self._wait_until_loaded()
        topk = request_topk(request.query_params, self.config.topk, self.classes)
        loop = asyncio.get_running_loop()
        item = await loop.run_in_executor(self._decode_pool, self.prepare, body)
        entry, batch_size = await self._batched(Job(item, topk))
        if "error" in entry:
            raise ClientError(entry["status"], entry["error"])
        return Response(json.dumps(answer(entry, self.identity), ensure_ascii=False).encode("utf-8"), 200,
                        media_type=JSON, headers={BATCH_SIZE_HEADER: str(batch_size)})

    async def _wait_until_loaded(self) -> None:
        deadline = time.monotonic() + self.config.load_timeout_s
        while not self.ready.is_set():
            if self.failure is not None:
                raise ClientError(503, f"the model could not be loaded: {self.failure}")
            if time.monotonic() > deadline:
                raise ClientError(503, f"the model is still loading after {self.config.load_timeout_s:.0f} s; "
                                       "retry later (GET /v1/health says when it is ready)")
            await asyncio.sleep(WAIT_POLL_S)

    async def _run_jobs(self, jobs: list[Job]) -> list[tuple[dict[str, Any], int]]:
        """One batch (``serve.batch`` gathered it): its answers, each with the batch's size."""
        loop = asyncio.get_running_loop()
        try:
            entries = await loop.run_in_executor(self._model_thread, self.run_batch, jobs)
        except Exception as exc:  # noqa: BLE001 - the batch's requests get a 500 each; the replica keeps serving
            logger.exception("the model failed on a batch of %d", len(jobs))
            entries = [{"status": 500, "error": f"the model failed on this request's batch ({type(exc).__name__}: "
                                                f"{exc}); see the server's log"}] * len(jobs)
        return [(entry, len(jobs)) for entry in entries]


def _json(status: int, payload: dict[str, Any]) -> Response:
    return Response(json.dumps(payload, ensure_ascii=False).encode("utf-8"), status, media_type=JSON)


class ModelReplica(HttpReplica):
    """The served model: loaded on a thread at start, warmed up through the request path, then batches of
    decoded images -> `infer` records."""

    def __init__(self, config: ServeConfig) -> None:
        import cv2

        from fgdeploy.cpu import prefer_passive_wait

        prefer_passive_wait()   # torch's OpenMP threads sleep when idle (before torch is imported), as in `train`
        cv2.setNumThreads(1)    # the decode threads are the parallelism (as in `infer`)
        super().__init__(config)
        self._stack: Any = None
        self.loaded: Any = None
        self.maker: Any = None
        self.part_boxes = False                  # the model answers with head/body boxes (part nets)
        threading.Thread(target=self._load, name="fgdeploy-load", daemon=True).start()

    def _load(self) -> None:
        import contextlib

        from fgdeploy.inference.batch_records import RecordMaker, check_fixed_batch
        from fgdeploy.inference.predictors import open_predictor

        c = self.config
        try:
            self._stack = contextlib.ExitStack()
            self.loaded = self._stack.enter_context(open_predictor(   # idle model threads sleep: the cores are shared
                c.model, c.backend, device=c.device, fp16=c.fp16, batch=c.max_batch, fast=c.fast, threads=c.threads,
                spin=False))
            predictor = self.loaded.predictor
            check_fixed_batch(getattr(predictor, "fixed_batch", None), c.max_batch, "--max-batch")
            self.maker = RecordMaker(predictor.input_size, c.topk, self.loaded.class_names, self.loaded.part_names)
            self.identity = model_id(self.loaded.name, self.loaded.recorded or {}, c.model, c.fp16)
            self._warm_up()
            self.classes = len(self.maker.class_names)   # the model's names, else the defaults the warm-up set
        except Exception as exc:  # noqa: BLE001 - reported by /v1/health and to every request
            logger.exception("cannot load %s", c.model)
            self.failure = f"{type(exc).__name__}: {exc}" if not str(exc).startswith(c.model) else str(exc)
            return
        logger.info("%s loaded (%s); serving", c.model, self.loaded.name)
        self.ready.set()

    def _warm_up(self) -> None:
        """One request's work before the first request: decode a JPEG, one model call, records."""
        from fgdeploy.data.images import encode_image

        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
        (entry,) = self.run_batch([Job(self.prepare(encode_image(image, ".jpg")), self.config.topk)])
        self.part_boxes = "boxes" in entry

    def prepare(self, body: bytes) -> Any:
        """`infer`'s decode and resize of one file, on the body's bytes; 422 for what `infer` lists as bad."""
        from fgdeploy.inference.local import decode_bytes

        decoded = decode_bytes(body, BODY_NAME, self.loaded.predictor.input_size, max_pixels=self.config.max_pixels)
        if decoded.error is not None:
            raise unusable_image(decoded.error)
        return decoded

    def run_batch(self, jobs: list[Job]) -> list[dict[str, Any]]:
        """Records of ``prepare``'s items (all decoded: a bad body never reaches a batch), one model call."""
        entries = self.maker.score(self.loaded.predictor, [job.item for job in jobs], max(job.topk for job in jobs))
        return [{**entry, "top": entry["top"][:job.topk]} for job, entry in zip(jobs, entries)]

    def describe(self) -> dict[str, Any]:
        c, loaded = self.config, self.loaded
        return {"model": self.identity, "backend": loaded.name, "device": c.device,
                "input_size": int(loaded.predictor.input_size),
                "class_names": self.maker.class_names, "part_names": self.maker.part_names,
                "heatmap_size": list(loaded.heatmap_size) if loaded.heatmap_size else None,
                "part_boxes": self.part_boxes,
                "max_batch": c.max_batch, "batch_wait_ms": c.batch_wait_ms, "max_bytes": c.max_bytes,
                "max_pixels": c.max_pixels,
                "default_topk": c.topk}
