"""Run `fgdeploy serve` in the foreground: Ray (a local instance or a running cluster), the deployment, a health
wait, and on Ctrl-C / SIGTERM a drain of the requests in flight before exiting.

On a local instance (the default) everything listens on 127.0.0.1 unless --host says otherwise, and Ray Serve
is shut down with the instance. On a cluster (--ray ADDRESS) the application is deployed into the cluster's
Serve instance (started if needed: an HTTP proxy on every node); requests go from a proxy to a replica and
never through this process, which only deploys, waits and, when stopped, deletes the application.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from fgdeploy.errors import FgdeployError
from fgdeploy.inference.ray_cluster import (
    LOCAL_ADDRESSES, ClusterOptions, cluster_device, first_line, ray_session, target_address,
)
from fgdeploy.serving.api import HEALTH_PATH, ServeConfig
from fgdeploy.serving.client import json_object

logger = logging.getLogger(__name__)

APP_NAME = "fgdeploy"
PROXY_READY_VARIABLE = "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"
PROXY_READY_S = 60
HEALTH_POLL_S = 0.25
MIN_ONGOING_REQUESTS = 64   # requests a replica takes at once (Ray Serve's default, 5, would cap batches at 5)


@dataclass(frozen=True)
class ServerOptions:
    """Where and how wide to serve."""

    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 0                   # 0: one per GPU of the cluster on CUDA, else 1
    ray: ClusterOptions = field(default_factory=lambda: ClusterOptions(address="local"))
    ready_timeout_s: float = 600.0      # model load + warm-up on every replica
    drain_timeout_s: float = 30.0       # how long requests in flight may take to finish when stopping


@dataclass
class Serving:
    """What is being served, for the ready message."""

    url: str
    replicas: int
    device: str
    threads: int | None
    model: dict[str, Any]


def serve_forever(config: ServeConfig, options: ServerOptions, on_ready: Callable[[Serving], None] | None = None,
                  stop: threading.Event | None = None, deployment: Any = None) -> None:
    """Serve ``config`` until Ctrl-C / SIGTERM (or ``stop`` is set), then drain and tear down.

    Args:
        config: the model and how it answers (device "auto" is resolved against the cluster).
        options: address, port, replicas, Ray.
        on_ready: called once every replica has loaded the model and answered its warm-up request.
        stop: an event that stops the server when set; None: SIGINT and SIGTERM do (``stop_on_signals``,
            installed once Ray is up, since Ray's core installs handlers of its own when it starts).
        deployment: the replica class (default ``ModelReplica``; the benchmark passes a constant one).

    Raises:
        FgdeployError: Ray unreachable, the port taken, too few CPUs/GPUs, the model failing to load.
    """
    local = target_address(options.ray) in LOCAL_ADDRESSES
    if local:
        check_port_free(options.host, options.port)
        # Ray Serve's controller kills an HTTP proxy that is not ready within 5 s; starting one (a new Python
        # process importing Serve and uvicorn) took longer on a busy 2-core machine. The local instance's
        # processes inherit this environment (a user's own setting wins).
        os.environ.setdefault(PROXY_READY_VARIABLE, str(PROXY_READY_S))
    with ray_session(options.ray, needs="ray.serve") as ray, \
            (contextlib.nullcontext(stop) if stop else stop_on_signals()) as stop:
        from ray import serve
        from ray.serve.exceptions import RayServeException

        if deployment is None:
            from fgdeploy.serving.replica import ModelReplica as deployment

        config, replicas, actor_options = placement(ray, config, options.replicas)
        url = f"http://{_connect_host(options.host)}:{options.port}"
        try:
            if not options.ray.verbose:   # Serve's own notes ("Started Serve", "Deploying app"): -v shows them
                logging.getLogger("ray.serve").setLevel(logging.ERROR)
            start_serve(serve, options.host, options.port, "HeadOnly" if local else "EveryNode")
            check_http_options(ray, options.host, options.port)
            app = serve.deployment(
                name="FgdeployModel", num_replicas=replicas, ray_actor_options=actor_options,
                max_ongoing_requests=max(MIN_ONGOING_REQUESTS, 4 * config.max_batch),
                graceful_shutdown_timeout_s=options.drain_timeout_s, graceful_shutdown_wait_loop_s=0.5,
                health_check_period_s=5.0)(deployment).bind(config)
            try:
                serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
            except (RuntimeError, RayServeException) as exc:   # a replica's constructor failed, ...
                raise FgdeployError(f"Ray Serve could not deploy the model: {first_line(exc)}"
                                    f"{_deployment_problem(serve)}") from None
            identity = wait_until_healthy(url, options.ready_timeout_s, stop)
            if not stop.is_set() and on_ready is not None:
                on_ready(Serving(url, replicas, config.device, config.threads, identity))
            while not stop.wait(0.5):
                pass
            logger.info("stopping: draining the requests in flight (up to %.0f s)", options.drain_timeout_s)
        finally:
            _tear_down(serve)


def start_serve(serve: Any, host: str, port: int, proxy_location: str) -> None:
    """``serve.start`` with its HTTP proxies on ``host:port``; a proxy that died while starting (Ray Serve's
    controller kills one that is slow to become ready, then starts another) is waited for, not an error.

    Raises:
        FgdeployError: Ray Serve could not be started.
    """
    import ray

    for attempt in (1, 2):
        try:
            serve.start(http_options={"host": host, "port": port}, proxy_location=proxy_location)
            return
        except (TimeoutError, ray.exceptions.RayError) as exc:
            if attempt == 2:
                raise FgdeployError(f"Ray Serve did not start ({first_line(exc)}); run with -v for Ray's logs") \
                    from None
            logger.debug("Ray Serve's HTTP proxy failed to start; its controller starts another", exc_info=True)


def _tear_down(serve: Any) -> None:
    """Delete the application: its replicas finish the requests they hold first (up to the deployment's
    graceful_shutdown_timeout_s). Ray Serve itself stays: a local instance's end stops it, and on a cluster it
    may serve other applications."""
    try:
        serve.delete(APP_NAME, _blocking=True)
    except Exception:  # noqa: BLE001 - stopping anyway; say why the drain may have been cut short
        logger.warning("could not delete the Serve application %r cleanly", APP_NAME, exc_info=True)


def _deployment_problem(serve: Any) -> str:
    """The last line of what Ray Serve recorded about the failed deployment (a replica's exception, e.g. a node
    whose Python has another fgdeploy), with advice; empty if it recorded nothing."""
    try:
        message = serve.status().applications[APP_NAME].deployments["FgdeployModel"].message
    except Exception:  # noqa: BLE001 - only to explain the failure better
        return ""
    lines = [line.strip() for line in str(message or "").splitlines() if line.strip()]
    if not lines:
        return ""
    return (f" ({lines[-1]}); every node that runs a replica needs the same Python, fgdeploy and Ray versions "
            "and the model file under the same path")


def check_http_options(ray: Any, host: str, port: int) -> None:
    """Refuse to go on when Ray Serve was already running on the cluster with its HTTP proxies elsewhere (it keeps
    its own options, and requests to --host/--port would find nothing).

    Raises:
        FgdeployError: naming where the cluster's proxies listen.
    """
    try:   # Ray Serve's controller knows its options (an internal API: skip the check if it moves)
        from ray.serve.context import _get_global_client

        running = ray.get(_get_global_client()._controller.get_http_config.remote(),  # type: ignore[union-attr]
                          timeout=30)
        where = (str(running.host), int(running.port))
    except Exception:  # noqa: BLE001
        logger.debug("cannot read Ray Serve's HTTP options", exc_info=True)
        return
    if where != (host, port):
        raise FgdeployError(f"Ray Serve already runs on this cluster with its HTTP proxies on {where[0]}:{where[1]}, "
                            f"not {host}:{port}; pass --host {where[0]} --port {where[1]} (or stop it there first: "
                            "`serve shutdown`)")


def placement(ray: Any, config: ServeConfig, replicas: int) -> tuple[ServeConfig, int, dict[str, Any]]:
    """Resolve device "auto" against the cluster (cuda when it has GPUs), the number of replicas (one per GPU on
    CUDA, else one) and what each replica reserves: a GPU and a CPU on CUDA; on CPU its model threads (default:
    the cluster's CPUs shared out among the replicas).

    Raises:
        FgdeployError: cuda asked for but the cluster has none, more replicas than GPUs or than CPUs.
    """
    device, gpus, cpus = cluster_device(ray, config.device, "each replica")
    replicas = replicas or (gpus if device == "cuda" else 1)
    if device == "cuda":
        if replicas > gpus:
            raise FgdeployError(f"--replicas {replicas}: the cluster has {gpus} GPUs and each replica takes one")
        return replace(config, device=device), replicas, {"num_gpus": 1, "num_cpus": 1}
    threads = config.threads or max(1, cpus // replicas)
    if replicas * threads > cpus:
        raise FgdeployError(f"{replicas} replica(s) of {threads} CPU thread(s) need {replicas * threads} CPUs; the "
                            f"Ray cluster has {cpus}: pass fewer --replicas or --threads")
    return replace(config, device=device, threads=threads), replicas, {"num_cpus": threads}


def check_port_free(host: str, port: int) -> None:
    """Refuse a port something else listens on, before starting Ray (whose proxy would fail out of sight)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as the server will: a just-closed port is free
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise FgdeployError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass another --port, or "
                                "stop what uses it") from None


def _connect_host(host: str) -> str:
    """Where a client on this machine reaches a server listening on ``host``."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def wait_until_healthy(url: str, timeout_s: float, stop: threading.Event | None = None) -> dict[str, Any]:
    """Poll GET /v1/health until it answers 200; returns the model's id.

    Raises:
        FgdeployError: the model failed to load (the replica's reason), or no answer within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
        try:
            with urllib.request.urlopen(url + HEALTH_PATH, timeout=5) as response:
                return dict(json.loads(response.read()).get("model") or {})
        except urllib.error.HTTPError as exc:
            payload = json_object(exc.read())
            if payload.get("status") == "failed":
                raise FgdeployError(f"the replica cannot load the model: {payload.get('error')}") from None
            last = f"HTTP {exc.code} {payload.get('status') or payload.get('error') or ''}".strip()
        except (OSError, ValueError) as exc:
            last = str(exc)
        time.sleep(HEALTH_POLL_S)
    if stop is not None and stop.is_set():
        return {}
    raise FgdeployError(f"{url}{HEALTH_PATH} did not answer 200 within {timeout_s:.0f} s ({last})")




@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by the first SIGINT (Ctrl-C) or SIGTERM while the block runs; a second one stops at once
    (KeyboardInterrupt). The previous handlers are restored afterwards."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        logger.info("%s received", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
