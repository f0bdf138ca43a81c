"""Scale-out batch scoring on Ray (`fgdeploy infer --ray`): a pool of model actors fed by the driver.

Pipeline:

    driver: discover_images -> paths not yet journaled -> (absolute path, name as given) -> blocks
      -> on GPUs: CPU tasks (``decode_paths``): ``decode_one`` per path, the local run's per-image code: S x S
         uint8 images, the sizes as stored, and the reason for each bad file; then the model actors
         (``ModelActor``; ``actors`` of them, one GPU each): the predictor on the good images, ``RecordMaker``;
         one journal line per image (a result or an error)
      -> on CPUs: the model actors decode their own blocks (the same ``decode_one`` per path) and run the model, one
         actor per CPU by default
      -> driver (``ray_dispatch.Dispatcher``): each block's lines, in block order; each image's first line is
         appended to the journal and fsync'd.

Paths: the driver sends each worker the image's absolute path (joined to the driver's working directory, which
a worker does not share: it runs where its node was started) and records the name the user gave in OUT, so a
relative folder, glob, list file or ``--resume`` works on a cluster as it does locally. The model file is sent
as an absolute path too.

Why the two shapes: a GPU actor must be fed, so decoding runs beside it in as many CPU tasks as the node
has CPUs to spare. A CPU actor decodes as fast as a decode task would, on the same kind of core; decoding
in separate tasks then only adds a pass of every image through the object store and a second scheduled
task per block, and leaves cores idle whenever the two stages' speeds differ (measured with the earlier Ray Data
pipeline on 2 cores, ``bench/bench_ray.py``, 2,000 images: decode tasks + one model actor 0.52x of local
``infer``'s img/s, two actors that decode 0.67x).

Where results are made durable, and why there: in the driver's journal (``OUT.partial.jsonl``), the same
file, format and fsync-per-batch as the local run. Everything Ray holds in flight belongs to the driver's job:
when the driver dies, its tasks, actors and objects go with it, so nothing only Ray holds can be resumed; what
the driver has fsync'd can. One writer also means no per-worker files to merge, no writable shared filesystem
needed on the workers and no half-written files from retried work, and ``--resume``, the errors file and the run
record are the local run's code (a run started locally can be finished with ``--ray`` and the other way round).
When a worker dies (a lost node, an out-of-memory kill, a decoder crash) the dispatcher sends its block again,
at most ``--max-retries`` times, then the block's images one by one, and reports the image that still kills its
worker in the errors file (``ray_dispatch`` says why the driver does this rather than Ray Data). The driver keeps
each image's first result (by ``key_of``), and ``render_outputs`` again keeps one row per image. The price: every
result passes through the driver (about 1.3 KB of JSON per image), and the driver's memory holds the path list
and the keys done, so very large listings are run as shards (README, "Scale out").

Connecting to the cluster (or starting a local instance) is ``fgdeploy.inference.ray_cluster``'s job.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fgdeploy.errors import FgdeployError
from fgdeploy.inference.local import (
    Decoded, InferOptions, InferReport, decode_one, open_journal, run_header, single_threaded_cv2,
)
from fgdeploy.inference.batch_records import RecordMaker, check_fixed_batch, clamp_topk, is_failure
from fgdeploy.inference.ray_cluster import ClusterOptions, cluster_device, fgdeploy_cause, first_line, ray_session
from fgdeploy.inference.ray_dispatch import Dispatcher
from fgdeploy.inference.results import Journal, errors_path_for, journal_path_for, key_of, render_outputs
from fgdeploy.tensors import PART_NAMES

logger = logging.getLogger(__name__)

# A decode task asks for this much memory plus twice its block of resized images (measured: a decode worker's
# process peaks near 120 MiB with 64 images of 160 px), so that Ray does not start more on a node than it holds.
DECODE_WORKER_MEMORY = 160 << 20
# Paths per block: a decode task's; for actors that decode, one actor call's: 16 batches, chosen from single
# runs on 2 cores (2,000 images, batch 16; not repeated; Ray Data pipeline): 256 paths per call 9.8 CPU ms per
# image over all processes, 128 paths 10.7, 64 paths 10.5 (first prototype); 512 paths left the first results
# ~11 s late. A block is also what a worker death costs (it is sent again whole), and a poison image's block
# is what is then scored one image at a time.
DECODE_BLOCK_BATCHES = 4
ACTOR_BLOCK_BATCHES = 16
DEFAULT_MAX_RETRIES = 3


@dataclass(frozen=True)
class ModelSpec:
    """What every model actor opens (``open_predictor``'s arguments); the model file must be readable there."""

    model: str
    backend: str = "auto"
    device: str = "auto"            # auto: cuda when the cluster has GPUs, else cpu
    fp16: bool = False
    batch: int = 64
    fast: Any = None                # fgdeploy.inference.fastpath.FastPathOptions (torch backend)
    threads: int | None = None      # model threads per CPU actor (ONNX Runtime; None: 1), each reserving a CPU


@dataclass(frozen=True)
class RayOptions(ClusterOptions):
    """Where (``ClusterOptions``) and how wide to run."""

    actors: int = 0                 # model actors; 0: one per GPU on CUDA, else one per ``threads`` CPUs
    decode_tasks: bool | None = None        # decode in CPU tasks feeding the actors (None: on GPUs only; CPU
                                            # actors decode their own images, measured faster on CPUs)
    max_retries: int = DEFAULT_MAX_RETRIES  # a block whose worker died is sent again this often, then its
                                            # images alone as often; an image still killing it is an error


@dataclass
class ModelInfo:
    """What the probe learnt from opening the model where the actors run."""

    name: str
    input_size: int
    fixed_batch: int | None
    on_gpu: bool
    classes: int                    # class names the model records (0: none recorded)
    stale_note: str | None = None   # an export no longer made from the checkpoint it names (stale_export_note)


# --------------------------------------------------------------------------------------------
# the work on the cluster
# Test hooks, read from the environment of the worker processes (a node's, set when it is started): a worker
# exits as a crashing decoder would when it meets a file of this name; a worker sleeps this long per image.
TEST_EXIT_ON_VARIABLE = "FGDEPLOY_TEST_EXIT_ON"
TEST_DECODE_SECONDS_VARIABLE = "FGDEPLOY_TEST_DECODE_SECONDS"


@dataclass(frozen=True)
class DecodeSpec:
    """How a worker decodes: the local run's ``decode_one`` arguments."""

    input_size: int
    fast_decode: bool = False
    max_pixels: int | None = None


def decode_paths(items: Sequence[tuple[str, str]], spec: DecodeSpec) -> dict[str, np.ndarray]:
    """A decode task: ``_decode_items`` packed as arrays (one object for the store: the images stacked) for
    ``ModelActor.score_decoded``; never raises for a bad file (its reason is kept)."""
    decoded = _decode_items(items, spec)
    blank = np.zeros((spec.input_size, spec.input_size, 3), np.uint8)
    return {"path": np.array([d.path for d in decoded], dtype=object),
            "image": np.stack([blank if d.image is None else d.image for d in decoded]),
            "height": np.array([d.size_hw[0] for d in decoded], np.int64),
            "width": np.array([d.size_hw[1] for d in decoded], np.int64),
            "error": np.array([d.error or "" for d in decoded], dtype=object)}


def _decode_items(items: Sequence[tuple[str, str]], spec: DecodeSpec) -> list[Decoded]:
    """``decode_one`` for each (path to read, name to record), named as recorded (a decode task's or a CPU
    actor's decoding)."""
    exit_on, delay = os.environ.get(TEST_EXIT_ON_VARIABLE), float(os.environ.get(TEST_DECODE_SECONDS_VARIABLE) or 0)
    decoded = []
    with single_threaded_cv2():   # one task per CPU is the parallelism
        for read_path, name in items:
            if exit_on and os.path.basename(read_path) == exit_on:
                os._exit(70)
            if delay:
                time.sleep(delay)
            d = decode_one(read_path, spec.input_size, False, spec.fast_decode, spec.max_pixels)
            d.path = name
            decoded.append(d)
    return decoded


def _open_model(spec: ModelSpec) -> tuple[contextlib.ExitStack, Any]:
    from fgdeploy.inference.predictors import open_predictor

    stack = contextlib.ExitStack()
    loaded = stack.enter_context(open_predictor(spec.model, spec.backend, device=spec.device, fp16=spec.fp16,
                                                batch=spec.batch, fast=spec.fast, threads=spec.threads))
    return stack, loaded


def probe_model(spec: ModelSpec) -> ModelInfo:
    """Open the model as an actor will (run as a Ray task where the actors run) and describe it."""
    from fgdeploy.export.metadata import stale_export_note

    stack, loaded = _open_model(spec)
    with stack:
        predictor = loaded.predictor
        return ModelInfo(loaded.name, int(predictor.input_size), getattr(predictor, "fixed_batch", None),
                         bool(getattr(predictor, "on_gpu", False)), len(loaded.class_names),
                         stale_export_note(spec.model, loaded.recorded or {}))


class ModelActor:
    """One model instance: turns blocks of images into journal lines (a result or an error each), ``batch``
    images per model call. ``decode``: how to decode blocks of paths (``score_paths``; CPU actors), as
    ``decode_paths`` would in a task; decoded blocks come to ``score_decoded``."""

    def __init__(self, spec: ModelSpec, topk: int, batch: int, decode: DecodeSpec | None = None) -> None:
        self._stack, loaded = _open_model(spec)
        self.predictor = loaded.predictor
        self.maker = RecordMaker(self.predictor.input_size, topk, loaded.class_names, loaded.part_names)
        self.batch, self.decode = batch, decode

    def ready(self) -> str:
        """The node this actor runs on, once its model is loaded."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def score_paths(self, items: Sequence[tuple[str, str]]) -> tuple[list[str], list[bool]]:
        """Decode and score (path to read, name to record) pairs, ``batch`` at a time."""
        assert self.decode is not None
        entries: list[dict[str, Any]] = []
        for i in range(0, len(items), self.batch):
            entries += self.maker.score(self.predictor, _decode_items(items[i:i + self.batch], self.decode))
        return _lines(entries)

    def score_decoded(self, batch: dict[str, np.ndarray]) -> tuple[list[str], list[bool]]:
        """Journal lines and failed flags for a block of ``decode_paths``'s output, in its order."""
        items = [Decoded(str(p), None if e else image, (int(h), int(w)), error=str(e) or None)
                 for p, image, h, w, e in zip(batch["path"], batch["image"], batch["height"], batch["width"],
                                              batch["error"])]
        entries: list[dict[str, Any]] = []
        for i in range(0, len(items), self.batch):   # the shared per-batch path, ``batch`` images per model call
            entries += self.maker.score(self.predictor, items[i:i + self.batch])
        return _lines(entries)


def _lines(entries: Sequence[dict[str, Any]]) -> tuple[list[str], list[bool]]:
    """Journal lines and failed flags of ``RecordMaker`` entries."""
    return [json.dumps(e, ensure_ascii=False) for e in entries], [is_failure(e) for e in entries]


# --------------------------------------------------------------------------------------------
# the run
def run_ray_inference(paths: Sequence[str], spec: ModelSpec, out: str | Path, *, options: InferOptions = InferOptions(),
                      ray_options: RayOptions = RayOptions(), model_id: str = "",
                      on_model: Callable[[ModelInfo, int], None] | None = None,
                      on_start: Callable[[int], None] | None = None,
                      on_progress: Callable[[int], None] | None = None) -> InferReport:
    """Score ``paths`` on a Ray cluster and write ``out``, its errors file and run record as ``run_inference`` does.

    Args:
        paths: images, e.g. from ``discover_images``; relative ones are taken from this process's working
            directory and sent to the workers as absolute paths (OUT records them as given); every node must
            read the files under those absolute paths.
        spec: the model and backend options each actor opens.
        out: results file (.csv or .jsonl); the journal ``OUT.partial.jsonl`` lives beside it until the end.
        options: batch, topk, resume, fast_decode as for the local run (``workers`` and ``save_vis`` unused).
        ray_options: cluster address, number of model actors, local instance size, retries after worker deaths.
        model_id: identifies the model in the journal; resuming with another model is refused.
        on_model: called with the probed model and the number of actors before the run starts.
        on_start, on_progress: as for ``run_inference``.

    Raises:
        FgdeployError: Ray missing or unreachable, the model cannot be opened on the cluster, an unfinished
            journal without ``resume``, a resume with another model or options, a batch too large for a
            static-batch model, or the run stopped (what was journaled is kept; ``--resume`` goes on).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    journal = Journal(journal_path_for(out))
    header = run_header(paths, model_id, options)
    if journal.path.exists() and not options.resume:
        open_journal(journal, header, out, resume=False)   # raises: say so before starting Ray
    spec = replace(spec, model=os.path.join(header["cwd"], spec.model))   # workers do not share our directory
    with ray_session(ray_options) as ray:
        spec, actors, decode_tasks = _placement(ray, spec, ray_options.actors, ray_options.decode_tasks)
        info = _probe(ray, spec)
        check_fixed_batch(info.fixed_batch, options.batch)
        if (clamped := clamp_topk(options.topk, info.classes)) != options.topk:   # all classes, as run locally
            options = replace(options, topk=clamped)
            header = run_header(paths, model_id, options)
        scored = open_journal(journal, header, out, options.resume)
        todo = [p for p in paths if key_of(p, header["cwd"]) not in scored]
        per_block = paths_per_block(decode_tasks, len(todo), options.batch, actors)
        actors = max(1, min(actors, -(-len(todo) // per_block)))   # no more actors than blocks
        if on_model:
            on_model(info, actors)
        report = InferReport(total=len(paths), scored=0, failed=0, skipped=len(paths) - len(todo), attempted=0,
                             seconds=0.0, out=out, errors_file=errors_path_for(out))
        if on_start:
            on_start(len(todo))
        start = time.perf_counter()
        sink = _JournalSink(journal, header["cwd"], scored, on_progress)
        items = [(os.path.join(header["cwd"], p), p) for p in todo]   # (path a worker reads, name OUT records)
        blocks = [items[i:i + per_block] for i in range(0, len(items), per_block)]
        dispatcher = _dispatcher(ray, spec, info, options, ray_options, actors, decode_tasks, per_block)
        try:
            for names, lines, failed in dispatcher.run(blocks):
                sink.write(names, lines, failed)
        except ray.exceptions.RayError as exc:
            cause = fgdeploy_cause(exc)
            raise cause or FgdeployError(f"the Ray run stopped: {first_line(exc)}; the images finished so far are "
                                         f"in {journal.path}: rerun with --resume to go on") from None
        except FgdeployError as exc:
            raise FgdeployError(f"{exc}; the images finished so far are in {journal.path}: rerun with --resume to "
                                "go on") from None
        finally:
            journal.close()
            report.seconds = time.perf_counter() - start
    report.errors, report.attempted = sink.errors(), sink.attempted
    report.worker_deaths = dispatcher.stats.deaths
    report.scored, report.failed = render_outputs(journal, out, options.topk, sink.part_names or PART_NAMES)
    journal.path.unlink()
    return report


def _placement(ray: Any, spec: ModelSpec, actors: int, decode_tasks: bool | None) -> tuple[ModelSpec, int, bool]:
    """Resolve device "auto" against the cluster (cuda when it has GPUs), the number of actors and whether
    decoding runs in tasks of its own (``decode_tasks`` None: on GPUs only)."""
    device, gpus, cpus = cluster_device(ray, spec.device, "each actor")
    spec = replace(spec, device=device, threads=spec.threads or (1 if device == "cpu" else None))
    decode_tasks = device == "cuda" if decode_tasks is None else decode_tasks
    per_actor = actor_cpus(spec)
    actors = actors or (gpus if device == "cuda" else max(1, (cpus - decode_tasks) // per_actor))
    if device == "cuda" and actors > gpus:
        raise FgdeployError(f"--actors {actors}: the cluster has {gpus} GPUs and each actor takes one")
    needed = actors * per_actor + decode_tasks
    if needed > cpus:
        what = f"{actors} model actor(s) of {per_actor} CPU(s)" + (" and one decode task" if decode_tasks else "")
        raise FgdeployError(f"{what} need {needed} CPUs; the Ray cluster has {cpus}: pass fewer --actors or "
                            "--threads (or more --cpus)")
    return spec, actors, decode_tasks


def actor_cpus(spec: ModelSpec) -> int:
    """CPUs a model actor reserves: its model threads on CPU (default 1: one actor per CPU, each decoding and
    running a single-threaded model, keeps every core busy without threads waiting on each other), one on a
    GPU (it prepares batches; decoding runs in separate tasks)."""
    return (spec.threads or 1) if spec.device == "cpu" else 1


def _probe(ray: Any, spec: ModelSpec) -> ModelInfo:
    """Open the model once where the actors will run: a bad model fails here, in one line, before any work."""
    task = ray.remote(probe_model).options(num_cpus=1, num_gpus=1 if spec.device == "cuda" else 0, max_retries=2)
    try:
        return ray.get(task.remote(spec))
    except ray.exceptions.RayError as exc:
        raise fgdeploy_cause(exc) or FgdeployError(f"cannot open {spec.model} on the Ray cluster: "
                                                    f"{first_line(exc)}") from None


def _dispatcher(ray: Any, spec: ModelSpec, info: ModelInfo, options: InferOptions, ray_options: RayOptions,
                actors: int, decode_tasks: bool, per_block: int) -> Dispatcher:
    """The model actors (and decode tasks) on the cluster, each death reported to the driver (no Ray retries)."""
    decode_spec = DecodeSpec(info.input_size, options.fast_decode, options.max_pixels or None)
    actor_class = ray.remote(ModelActor).options(num_cpus=actor_cpus(spec), num_gpus=1 if spec.device == "cuda" else 0,
                                                 max_restarts=0, max_task_retries=0)

    def new_actor() -> Any:
        return actor_class.remote(spec, options.topk, options.batch, None if decode_tasks else decode_spec)

    decode = None
    decoders = 0
    if decode_tasks:
        task = ray.remote(decode_paths).options(
            num_cpus=1, max_retries=0, memory=DECODE_WORKER_MEMORY + 2 * per_block * 3 * info.input_size ** 2)

        def decode(items: list[tuple[str, str]]) -> Any:
            return task.remote(items, decode_spec)

        decoders = max(1, int(ray.cluster_resources().get("CPU", 0)) - actors * actor_cpus(spec))
    return Dispatcher(ray, new_actor, actors, ray_options.max_retries, decode=decode, decoders=decoders)


def paths_per_block(decode_tasks: bool, images: int, batch: int, actors: int) -> int:
    """Paths per block: one decode task's (``DECODE_BLOCK_BATCHES`` batches); for actors that decode, one actor
    call's, ``ACTOR_BLOCK_BATCHES`` batches or fewer so that the blocks come in whole rounds of ``actors`` (no
    actor left idle while the last blocks finish)."""
    if decode_tasks:
        return DECODE_BLOCK_BATCHES * batch
    blocks = -(-images // (ACTOR_BLOCK_BATCHES * batch))
    blocks = max(1, -(-blocks // actors) * actors)   # whole rounds
    return max(1, -(-images // blocks))


class _JournalSink:
    """The driver's side: appends each image's first line to the journal (fsync'd) and counts."""

    def __init__(self, journal: Journal, cwd: str, already_scored: set[str],
                 on_progress: Callable[[int], None] | None) -> None:
        self.journal, self.cwd, self.on_progress = journal, cwd, on_progress
        self.scored = set(already_scored)             # keys with a result in the journal
        self.failed: dict[str, tuple[str, str]] = {}  # key -> (path, reason) of this run's failures
        self.attempted = 0
        self.part_names: list[str] = []

    def write(self, paths: Sequence[str], lines: Sequence[str], failed: Sequence[bool]) -> None:
        new, fresh = [], 0
        for path, line, bad in zip(paths, lines, failed):
            key = key_of(path, self.cwd)
            if key in self.scored or (bad and key in self.failed):
                continue                              # the image listed again (another spelling of its path)
            fresh += key not in self.failed
            if bad:
                self.failed[key] = (path, json.loads(line)["error"])
            else:
                self.scored.add(key)
                if not self.part_names:
                    self.part_names = [k["part"] for k in json.loads(line)["keypoints"]]
            new.append(line)
        self.journal.append_lines(new)
        self.attempted += fresh
        if self.on_progress and fresh:
            self.on_progress(fresh)

    def errors(self) -> list[tuple[str, str]]:
        """(path, reason) of the images this run could not score."""
        return [v for k, v in self.failed.items() if k not in self.scored]
