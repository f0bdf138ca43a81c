"""Connecting to Ray: a cluster named by address (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``, RAY_ADDRESS) or a
local instance started for one run. Shared by every fgdeploy command that runs on Ray (``infer --ray``).

What it adds to ``ray.init``: a one-line error naming the fix when Ray is missing, when a cluster refuses the
connection for want of its token, or when nothing answers at the address (after ``CONNECT_ATTEMPTS`` tries
instead of Ray's ~13 minutes); Ray's routine console lines kept off stderr unless verbose; and a local instance
that listens on 127.0.0.1 only, sends no usage statistics, runs no dashboard and uses the CPUs it is given; it is
shut down when the run ends.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fgdeploy.errors import FgdeployError

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install ray (from a checkout: pip install -e '.[ray]')"
INSTALL_HINTS = {   # a Ray library a command needs -> (what the error says, how to install it)
    "ray.serve": ("fgdeploy serve needs Ray Serve", "pip install 'ray[serve]' (from a checkout: pip install -e "
                                                    "'.[serve]')"),
}
LOCAL_ADDRESSES = ("", "local")         # --ray with no address: start a local instance
# The one line Ray's C++ core prints at ray.init because quiet_ray_logs set its level ("Set ray log level from
# environment variable RAY_BACKEND_LOG_LEVEL to 3"): kept off the console unless -v.
RAY_LOG_LEVEL_NOTE = "Set ray log level from environment variable"
# The line Ray's GCS client repeats once a second while a connection is refused ("Failed to get cluster ID from
# GCS server: Unauthenticated: ..."): ray_session's error says what is wrong instead (-v shows them).
RAY_GCS_RETRY_NOTE = "Failed to get cluster ID from GCS server"
# Joining a cluster, ray.init tries to reach its GCS 20 times by default, ~40 s each when nothing answers: a
# mistyped address would hang for ~13 minutes. Ray reads the number of tries from this variable (a user's own
# setting wins): 2 tries, ~85 s to a clear error (measured); a refused token fails within seconds.
CONNECT_ATTEMPTS_VARIABLE = "RAY_gcs_server_port_wait_time_s"
CONNECT_ATTEMPTS = 2


@dataclass(frozen=True)
class ClusterOptions:
    """Which Ray to use and how loud it may be."""

    address: str | None = None      # None/"": RAY_ADDRESS if set, else a local instance; "local"; auto, ray://h:p, h:p
    cpus: int | None = None         # local instance: logical CPUs (None: all cores)
    object_store_bytes: int | None = None   # local instance: object store size (None: Ray's default)
    verbose: bool = False           # Ray's own log lines (else only its errors reach the console)


def import_ray(needs: str | None = None) -> Any:
    """The ``ray`` module, and the Ray library a command needs (``needs``: "ray.serve"; None: Ray alone).

    Raises:
        FgdeployError: Ray (or that library) is not installed, saying what to install.
    """
    try:
        import ray
    except ImportError as exc:
        broken = f" ({exc})" if exc.name != "ray" else ""   # installed, but a dependency is not
        raise FgdeployError(f"--ray needs Ray, which is not installed here{broken}: {INSTALL_HINT}") from None
    if needs:
        try:
            importlib.import_module(needs)   # Ray Serve comes with the ray[serve] extra only
        except ImportError as exc:
            broken = f" ({exc})" if exc.name != needs else ""
            what, hint = INSTALL_HINTS[needs]
            raise FgdeployError(f"{what}, which is not installed here{broken}: {hint}") from None
    return ray


@contextlib.contextmanager
def ray_session(options: ClusterOptions = ClusterOptions(), needs: str | None = None) -> Iterator[Any]:
    """Connect to Ray for one run and disconnect at the end; yields the ``ray`` module (``needs``: a Ray library
    the run uses, see ``import_ray``).

    A session that is already open (a notebook's, a test's) is used as it is and left open. Otherwise
    ``options.address`` (or RAY_ADDRESS) names a cluster to join; with neither, a local instance is started:
    loopback only, no usage statistics, no dashboard, ``options.cpus`` CPUs.

    Raises:
        FgdeployError: Ray is missing, or the cluster cannot be reached.
    """
    ray = import_ray(needs)
    if ray.is_initialized():
        yield ray
        return
    address = target_address(options)
    if not options.verbose:
        quiet_ray_logs()
    log_level = logging.INFO if options.verbose else logging.ERROR
    try:
        quiet = without_stderr_lines(RAY_LOG_LEVEL_NOTE, RAY_GCS_RETRY_NOTE)
        with contextlib.nullcontext() if options.verbose else quiet:
            if address in LOCAL_ADDRESSES:
                start_local_instance(ray, options.cpus, options.object_store_bytes, log_level)
            else:
                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
                logger.info("joining the Ray cluster at %s", address)
                with environment_default(CONNECT_ATTEMPTS_VARIABLE, str(CONNECT_ATTEMPTS)):
                    ray.init(address=address, logging_level=log_level, log_to_driver=options.verbose)
    except ConnectionError as exc:
        if refused_for_missing_token(exc):
            raise FgdeployError(
                f"the Ray cluster at {address!r} refused the connection for want of its token (recent Ray starts "
                "clusters with token authentication on, and sends no token to an address given explicitly unless "
                "told to): set RAY_AUTH_MODE=token and make the cluster's token available here "
                "(~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH; `ray get-auth-token` on the head "
                "prints it), or use --ray auto on a cluster node") from None
        attempts = os.environ.get(CONNECT_ATTEMPTS_VARIABLE, str(CONNECT_ATTEMPTS))
        raise FgdeployError(f"cannot reach the Ray cluster at {address!r} ({first_line(exc)}, {attempts} attempts; "
                            f"{CONNECT_ATTEMPTS_VARIABLE}=N tries N times); start it with `ray start --head` or "
                            "pass its address (auto, ray://HOST:10001, HOST:6379)") from None
    try:
        with contextlib.nullcontext() if options.verbose else cluster_notices_to_log():
            yield ray
    finally:
        ray.shutdown()


@contextlib.contextmanager
def cluster_notices_to_log() -> Iterator[None]:
    """Send the notices Ray prints to the driver's stdout for the cluster ("(raylet) A worker died or was killed
    ...", a node's raylet ending: 10-40 lines each) to this module's debug log while the block runs. Callers report
    what those events mean for their work in a line of their own (``ray_dispatch``: one per dead worker).

    Ray's driver prints them from a background thread through ``ray._private.worker.print_to_stdstream`` (Ray 2.60,
    private); if that is not there, nothing changes.
    """
    try:
        from ray._private import worker
        original = worker.print_to_stdstream
    except (ImportError, AttributeError):
        yield
        return

    def print_to_stdstream(data: dict[str, Any], ignore_prefix: bool) -> None:
        if data.get("pid") != "raylet":
            original(data, ignore_prefix)
        elif logger.isEnabledFor(logging.DEBUG):
            logger.debug("ray: %s", " | ".join(line.strip() for line in data.get("lines", ()))[:2000])

    worker.print_to_stdstream = print_to_stdstream
    try:
        yield
    finally:
        worker.print_to_stdstream = original


@contextlib.contextmanager
def environment_default(name: str, value: str) -> Iterator[None]:
    """``name`` set to ``value`` in the environment while the block runs, unless the user set it already."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


def target_address(options: ClusterOptions) -> str:
    """Where to run: ``options.address``; with none given, RAY_ADDRESS if set, else "local" (a new instance)."""
    return options.address or os.environ.get("RAY_ADDRESS") or "local"


def quiet_ray_logs() -> None:
    """Keep Ray's routine log lines (advice on settings, the C++ core's notes) off the console: errors still come
    through, as exceptions. ``-v`` leaves them on."""
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")   # the driver's C++ core worker, read at ray.init
    logging.getLogger("ray").setLevel(logging.ERROR)


@contextlib.contextmanager
def without_stderr_lines(*markers: str) -> Iterator[None]:
    """Write to stderr (the file descriptor: C++ code writes there too) all but the lines containing one of
    ``markers`` while the block runs; the other lines follow when it ends."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().splitlines(keepends=True)
                    if not any(marker.encode() in line for marker in markers)]
            if kept:
                sys.stderr.buffer.write(b"".join(kept))
                sys.stderr.flush()


def start_local_instance(ray: Any, cpus: int | None = None, object_store_bytes: int | None = None,
                         log_level: int = logging.WARNING) -> None:
    """``ray.init`` of a one-machine instance that talks to nobody else.

    127.0.0.1 as the node address makes Ray's servers listen on loopback only. Ray turns a given 127.0.0.1
    into the machine's outward address unless its single-machine mode is on (the mode macOS and Windows run
    in, switched by RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read when Ray is imported); it is set both ways here
    so that an already imported Ray obeys too. Usage statistics and the dashboard are off.
    """
    from ray._private import ray_constants

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    context = ray.init(address="local", num_cpus=cpus or os.cpu_count() or 1, include_dashboard=False,
                       _node_ip_address="127.0.0.1", object_store_memory=object_store_bytes,
                       logging_level=log_level, log_to_driver=log_level <= logging.INFO)
    node_ip = context.address_info.get("node_ip_address")
    if node_ip != "127.0.0.1":
        logger.warning("the local Ray instance runs on %s, not loopback only", node_ip)


def cluster_device(ray: Any, device: str, each: str) -> tuple[str, int, int]:
    """Resolve ``device`` against the cluster: "auto" is cuda when the cluster has GPUs, else cpu.

    Args:
        ray: the connected ``ray`` module.
        device: "auto", "cpu" or "cuda" (one GPU per worker: "cuda:K" is refused).
        each: what gets a GPU of its own, for the error message ("each actor", "each replica").

    Returns:
        (device, the cluster's GPUs, the cluster's CPUs).

    Raises:
        FgdeployError: "cuda:K", or cuda on a cluster without GPUs.
    """
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    resolved = device if device != "auto" else ("cuda" if gpus else "cpu")
    if resolved.startswith("cuda:"):
        raise FgdeployError(f"--device {device}: with Ray {each} gets a GPU of its own; pass --device cuda")
    if resolved == "cuda" and not gpus:
        raise FgdeployError("--device cuda: the Ray cluster has no GPUs (ray status lists its resources); pass "
                            "--device cpu or join a cluster with GPUs")
    return resolved, gpus, cpus


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def error_causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions behind it (``__cause__``, ``__context__``), depth first, each once. A Ray error
    around what a task raised (``.cause``; it may subclass that error too) is replaced by what it carries."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        inner = getattr(e, "cause", None)
        if isinstance(inner, BaseException):
            stack.append(inner)
        else:
            yield e
            stack += [e.__cause__, e.__context__]


def refused_for_missing_token(exc: BaseException) -> bool:
    """Whether a failed connection was the cluster refusing a missing or wrong token (Ray's AuthenticationError
    somewhere in the chain of causes; ray.init itself only says "Failed to connect")."""
    return any(type(e).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(e) for e in error_causes(exc))


def fgdeploy_cause(exc: BaseException) -> FgdeployError | None:
    """The FgdeployError a Ray error carries (raised in a task or actor), if any."""
    return next((e for e in error_causes(exc) if isinstance(e, FgdeployError)), None)


@contextlib.contextmanager
def loopback_cluster(worker_nodes: int = 2, cpus_per_node: int = 1, workdir: str | Path | None = None,
                     environment: Mapping[str, str] | None = None) -> Iterator[Any]:
    """A head and ``worker_nodes`` Ray nodes on this machine, for tests and benchmarks of multi-node behaviour;
    yields the ``ray.cluster_utils.Cluster`` (``.address`` to join, ``.worker_nodes``, ``.remove_node(node)``).

    Each node is its own raylet, object store and set of worker processes, listening on 127.0.0.1 only (as
    ``start_local_instance``), with its files under a private temporary folder (RAY_TMPDIR: the machine's
    ``/tmp/ray`` and the address ``ray start`` leaves there are not touched). The nodes are started in ``workdir``
    (so their workers' working directory is not the caller's) with ``environment`` added to theirs, and check each
    other's health every 0.5 s (a removed node is noticed within ~2 s). Everything is shut down at the end.
    """
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    ray_tmp = tempfile.mkdtemp(prefix="fgr", dir="/tmp")   # short: Ray's socket paths must fit 107 bytes
    values = {"RAY_TMPDIR": ray_tmp, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
              **(environment or {})}
    saved_env = {k: os.environ.get(k) for k in values}
    saved_mode, saved_cwd = ray_constants.ENABLE_RAY_CLUSTER, os.getcwd()
    health = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_timeout_ms": 500,
              "health_check_failure_threshold": 3}
    cluster = None
    os.environ.update(values)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        os.chdir(workdir or ray_tmp)
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": cpus_per_node, "node_ip_address": "127.0.0.1", "include_dashboard": False,
            "_system_config": health})
        for _ in range(worker_nodes):
            cluster.add_node(num_cpus=cpus_per_node, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes(timeout=60)
        os.chdir(saved_cwd)
        yield cluster
    finally:
        os.chdir(saved_cwd)
        try:
            if cluster is not None:
                cluster.shutdown()
        finally:
            ray_constants.ENABLE_RAY_CLUSTER = saved_mode
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            shutil.rmtree(ray_tmp, ignore_errors=True)


def driver_env() -> dict[str, str]:
    """The environment for a driver process that joins a ``loopback_cluster`` by address, as a user's shell would
    start it: this process's, less the FGDEPLOY_TEST_ hooks (for the nodes' workers only) and RAY_ADDRESS, with
    Ray's single-machine mode off as the nodes have it (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FGDEPLOY_TEST_") and k != "RAY_ADDRESS"}
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    return env
