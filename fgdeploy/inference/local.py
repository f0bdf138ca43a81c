"""Batch inference over many images: discover, decode in parallel, run a runner, write results safely.

Pipeline (memory stays flat however many images there are):

    paths --(thread pool, K workers: decode + resize)--> bounded window of futures
          --(assembler thread: batches of B good images, uint8 -> model input)--> Queue(maxsize=2)
          --(caller's thread: predictor, top-k, keypoints to original pixels)--> journal (fsync per batch)

OpenCV releases the GIL while decoding and resizing, so threads decode in parallel while the
runner computes. Results go to a JSONL journal (``OUT.partial.jsonl``) that is flushed and fsync'd
after every batch; a killed run keeps every finished image, and ``resume=True`` skips them (a torn
last line is cut off first, so each image is scored exactly once). When all images are done the
journal is rendered to ``OUT`` (CSV or JSONL) and the errors file by temp file + ``os.replace``.

Keypoints are written in the original image's continuous pixel coordinates (pixel k covers
[k, k+1); docs/method.md section 2): the model input is an anisotropic warp to S x S, so
x = u' * W / S and y = v' * H / S, where W x H is the image as stored (EXIF orientation not applied).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fgdeploy.errors import FgdeployError, ImageError
from fgdeploy.inference.batch_records import check_fixed_batch
from fgdeploy.inference.results import (
    Journal, ResultWriter, check_same_run, errors_path_for, journal_path_for, key_of, read_errors, read_results,
    read_run_record, render_outputs, run_record_path,
)
from fgdeploy.inference.predictors import Predictor, default_workers
from fgdeploy.tensors import PART_NAMES
from fgdeploy.text import plural

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
# exit codes of `fgdeploy infer` (1 = fgdeploy error, 2 = bad option, as for every command)
EXIT_OK = 0            # finished; some images may have failed (see the errors file)
EXIT_ALL_FAILED = 3    # every image this run tried failed to decode
# Images with more pixels are refused (from the header, before decoding): 2**28, a 16384 x 16384 image, 768 MiB
# decoded as RGB (twice that while converting). Real photos pass (a 200 MP phone photo is 16320 x 12240, 2.0e8);
# decompression bombs (a few KB of PNG or JPEG declaring 50000 x 50000) do not.
DEFAULT_MAX_PIXELS = 1 << 28


# --------------------------------------------------------------------------------------------
# discovery
def discover_images(source: str | Path) -> list[str]:
    """Image paths named by ``source``.

    Args:
        source: a folder (searched recursively; files with an image extension, any case, sorted by
            path; other files skipped), a single image file, a glob pattern (``**`` allowed; sorted),
            or a text file listing one path per line (blank lines and ``#`` comments skipped;
            relative paths are relative to the list's folder; order kept, duplicates dropped).

    Raises:
        ImageError: nothing matches, or the source does not exist.
    """
    text = str(source)
    path = Path(source)
    if path.is_dir():
        found = []
        for root, dirs, files in os.walk(path):
            dirs.sort()
            found += [os.path.join(root, f) for f in files if Path(f).suffix.lower() in IMAGE_EXTENSIONS]
        paths = sorted(found)
    elif path.is_file():
        paths = [text] if path.suffix.lower() in IMAGE_EXTENSIONS else _read_path_list(path)
    elif any(c in text for c in "*?["):
        paths = sorted(p for p in glob.glob(text, recursive=True)
                       if Path(p).suffix.lower() in IMAGE_EXTENSIONS and os.path.isfile(p))
    else:
        raise ImageError(f"image source {text!r} does not exist: give a folder, an image, a glob "
                         f"('photos/**/*.jpg') or a text file listing paths")
    if not paths:
        raise ImageError(f"no images found in {text!r} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return paths


def _read_path_list(list_file: Path) -> list[str]:
    """Paths listed in a text file, one per line, relative ones taken from the list's folder."""
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ImageError(f"cannot read {str(list_file)!r} as a list of image paths (one per line, UTF-8): "
                         f"{exc}") from exc
    paths: dict[str, None] = {}
    for line in lines:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            paths.setdefault(entry if os.path.isabs(entry) else os.path.join(list_file.parent, entry))
    return list(paths)


# --------------------------------------------------------------------------------------------
# decoding
@dataclass
class Decoded:
    """One image after the worker: resized model input, or why it failed."""

    path: str
    image: np.ndarray | None = None        # (S, S, 3) uint8 RGB
    size_hw: tuple[int, int] = (0, 0)      # original (H, W) as decoded
    original: np.ndarray | None = None     # (H, W, 3) uint8 RGB, kept only for --save-vis
    error: str | None = None               # why the file cannot be used (without the path)


def read_rgb(path: str) -> np.ndarray:
    """Decode ``path`` to (H, W, 3) uint8 RGB with the project's decoder; refuse empty and truncated files.

    Grayscale, palette, alpha, 16-bit and CMYK files are converted (``fgdeploy.data.images``); EXIF
    orientation is not applied, so coordinates refer to the pixels as stored, like the dataset reader's.

    Raises:
        ImageError: missing/unreadable, zero bytes, truncated JPEG, not decodable; names the path.
    """
    return read_rgb_sized(path)[0]


def read_rgb_sized(path: str, reduce_to: tuple[int, int] | None = None,
                   max_pixels: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """`read_rgb`, plus the file's own (H, W); with ``reduce_to`` = (H, W), a JPEG at least twice that size
    is decoded at 1/2, 1/4 or 1/8 scale (``fgdeploy.data.images.decode_image``). ``max_pixels``: larger
    images are refused, from the header before decoding where it is read (``check_pixels``).

    Raises:
        ImageError: as `read_rgb`; or the image has more than ``max_pixels`` pixels.
    """
    from fgdeploy.data.images import read_bytes

    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise ImageError(f"{path}: cannot read image file ({exc.strerror or type(exc).__name__})") from exc
    if size == 0:
        raise ImageError(f"{path}: empty file (0 bytes); replace or remove it")
    return decode_rgb_sized(read_bytes(path), path, reduce_to, max_pixels)


def decode_rgb_sized(data: np.ndarray | bytes, name: str, reduce_to: tuple[int, int] | None = None,
                     max_pixels: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """`read_rgb_sized` of a file's bytes held in memory (``name`` stands for the file in messages).

    Raises:
        ImageError: empty, truncated JPEG, not decodable, decodes to an empty image, more than ``max_pixels``.
    """
    from fgdeploy.data.images import TooManyPixelsError, decode_image, probe_image_bytes

    data = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    truncated = ImageError(f"{name}: truncated JPEG ({data.size} bytes, no end-of-image marker)")
    try:
        image, info, _ = decode_image(data, name, reduce_to, max_pixels)
    except TooManyPixelsError:
        raise
    except ImageError:
        if data.size and probe_image_bytes(data).truncated:   # say why the decoder gave up
            raise truncated from None
        raise
    if info.truncated:                    # decoded, but the missing part would be filled with grey
        raise truncated
    if image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"{name}: decodes to an empty image (shape {image.shape})")
    return image, (info.height or image.shape[0], info.width or image.shape[1])


def resize_input(image: np.ndarray, size: int) -> np.ndarray:
    """Anisotropic resize of an (H, W, 3) image to (size, size, 3): the pixels of eval's `resize_to_input`."""
    from fgdeploy.data.transforms import resize_image

    return resize_image(image, (size, size))


def decode_one(path: str, size: int, keep_original: bool = False, fast_decode: bool = False,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Decoded:
    """Decode and resize one file; never raises for a bad file (the reason goes in ``error``).

    ``fast_decode``: a large JPEG is decoded at a reduced scale first (`read_rgb_sized`); not combined
    with ``keep_original``, which needs the full image. ``max_pixels``: larger images are refused (None: no limit).
    """
    reduce_to = (size, size) if fast_decode and not keep_original else None
    return _decode_resized(path, lambda: read_rgb_sized(path, reduce_to, max_pixels=max_pixels), size, keep_original)


def decode_bytes(data: bytes, name: str, size: int, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Decoded:
    """`decode_one` of an encoded image held in memory (a request's body): the same full decoder, resize, pixel
    limit and reasons; ``name`` stands for the file in ``path`` and is cut from the reason."""
    return _decode_resized(name, lambda: decode_rgb_sized(data, name, None, max_pixels), size, False)


def _decode_resized(path: str, read: Callable[[], tuple[np.ndarray, tuple[int, int]]], size: int,
                    keep_original: bool) -> Decoded:
    try:
        image, size_hw = read()
        resized = resize_input(image, size)
        return Decoded(path, resized, size_hw, image if keep_original else None)
    except (ImageError, OSError) as exc:
        message = str(exc)
        return Decoded(path, error=message[len(path) + 2:] if message.startswith(f"{path}: ") else message)
    except Exception as exc:  # noqa: BLE001 - a decoder failure on one file must not stop the run
        logger.debug("unexpected error decoding %s", path, exc_info=True)
        return Decoded(path, error=f"cannot decode ({type(exc).__name__}: {exc})")


# --------------------------------------------------------------------------------------------
# the run
@dataclass(frozen=True)
class InferOptions:
    """How to run a folder."""

    batch: int = 64                 # good images per predictor call (the last batch may be smaller)
    workers: int = 0                # decode threads; 0 = default_workers(predictor)
    topk: int = 5                   # classes written per image
    resume: bool = False            # continue OUT.partial.jsonl (or an existing OUT), skipping scored images
    save_vis: Path | None = None    # folder for copies of the images with keypoints and top-1 drawn
    queue_batches: int = 2          # prepared batches waiting for the predictor (bounds memory)
    fast_decode: bool = False       # JPEGs >= 2x the input: DCT-domain 1/2, 1/4, 1/8 decode (not with save_vis)
    max_pixels: int | None = DEFAULT_MAX_PIXELS   # larger images are refused from their header (None/0: no limit)


@dataclass
class InferReport:
    """What a run did; ``exit_code`` is the CLI's exit status."""

    total: int                      # images named by the source
    scored: int                     # images with results in ``out`` (this run and resumed ones)
    failed: int                     # images in the errors file
    skipped: int                    # already scored when the run started (--resume)
    attempted: int                  # images this run decoded or tried to
    seconds: float                  # wall time of this run's pipeline
    out: Path
    errors_file: Path
    vis_dir: Path | None = None
    errors: list[tuple[str, str]] = field(default_factory=list)   # (path, reason) for this run
    worker_deaths: int = 0          # --ray: workers that died during the run (their blocks were sent again)

    @property
    def images_per_s(self) -> float:
        return self.attempted / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0 unless every image this run tried failed (then 3)."""
        return EXIT_ALL_FAILED if self.attempted and len(self.errors) == self.attempted else EXIT_OK

    def summary_lines(self, max_errors: int = 10) -> list[str]:
        scored_here = self.skipped + self.attempted - len(self.errors)   # of the images given to this run
        lines = [f"scored {scored_here}/{plural(self.total, 'image')} ({self.skipped} from a previous run), "
                 f"failed {len(self.errors)}; {self.attempted} this run in {self.seconds:.1f} s "
                 f"= {self.images_per_s:.1f} img/s",
                 f"results: {self.out} ({plural(self.scored, 'image')})",
                 f"errors:  {self.errors_file} ({plural(self.failed, 'image')})"]
        lines += [f"images with keypoints: {self.vis_dir}"] if self.vis_dir else []
        lines += [f"workers died {plural(self.worker_deaths, 'time')} (a lost node, an out-of-memory kill or a file "
                  "that crashes the decoder); their images were sent again"] if self.worker_deaths else []
        lines += [f"  {p}: {r}" for p, r in self.errors[:max_errors]]
        lines += [f"  ... and {len(self.errors) - max_errors} more"] if len(self.errors) > max_errors else []
        return lines


_DONE = object()


def iterate_batches(paths: Sequence[str], predictor: Predictor, options: InferOptions,
                    keep_original: bool = False) -> Iterator[tuple[list[Decoded], Any, int]]:
    """Yield (items, prepared input of the good items, number of good items), in ``paths`` order.

    Decoding runs on a thread pool with at most ``batch + 4 * workers`` images in flight; an
    assembler thread stacks and prepares batches into a queue of ``queue_batches``. Stopping the
    iteration early (or an exception in the caller) stops both.
    """
    workers = options.workers or default_workers(predictor)
    window_size = options.batch + 4 * workers
    q: queue.Queue[Any] = queue.Queue(maxsize=max(1, options.queue_batches))
    stop = threading.Event()

    def put(item: Any) -> None:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def emit(pending: list[Decoded]) -> None:
        good = [d.image for d in pending if d.image is not None]
        put((pending, predictor.prepare(good) if good else None, len(good)))

    def produce() -> None:
        pool = ThreadPoolExecutor(workers, thread_name_prefix="fgdeploy-decode")
        try:
            window: deque[Future[Decoded]] = deque()
            it = iter(paths)
            pending: list[Decoded] = []
            n_good = 0
            while True:
                while len(window) < window_size and (p := next(it, None)) is not None:
                    window.append(pool.submit(decode_one, p, predictor.input_size, keep_original,
                                              options.fast_decode, options.max_pixels))
                if not window or stop.is_set():
                    break
                pending.append(window.popleft().result())
                n_good += pending[-1].error is None
                if n_good == options.batch or len(pending) >= 4 * options.batch:  # many bad files: flush them
                    emit(pending)
                    pending, n_good = [], 0
            if pending and not stop.is_set():
                emit(pending)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put(exc)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            put(_DONE)

    thread = threading.Thread(target=produce, name="fgdeploy-assembler", daemon=True)
    # The decode threads are the parallelism: OpenCV's own threads inside each resize only contend with them
    # (2-core dev box, measured with the earlier warpAffine: 4.6 ms per 500x500 single-threaded vs 7.1 ms
    # with cv2's 2 threads).
    with single_threaded_cv2() if workers > 1 else contextlib.nullcontext():
        thread.start()
        try:
            while (item := q.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    q.get(timeout=0.1)
                except queue.Empty:
                    pass
            thread.join()


@contextlib.contextmanager
def single_threaded_cv2() -> Iterator[None]:
    """OpenCV on one thread inside the block (outputs do not depend on it); the previous count is restored."""
    import cv2

    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


def run_inference(paths: Sequence[str], predictor: Predictor, out: str | Path, *,
                  class_names: Sequence[str] | None = None, part_names: Sequence[str] | None = None,
                  options: InferOptions = InferOptions(), model_id: str = "", visibility_threshold: float = 0.5,
                  on_start: Callable[[int], None] | None = None,
                  on_progress: Callable[[int], None] | None = None) -> InferReport:
    """Score ``paths`` with ``predictor`` and write ``out`` (.csv or .jsonl) plus its errors file.

    Args:
        paths: images, e.g. from ``discover_images``.
        predictor: a ``RunnerPredictor`` or the torch fast path's predictor.
        out: results file; the journal ``OUT.partial.jsonl`` lives beside it until the run ends.
        class_names, part_names: labels for the outputs (defaults: "class_<i>", CUB part names).
        options: batch, workers, top-k, resume, save_vis.
        model_id: identifies the model in the journal; resuming with another model is refused.
        visibility_threshold: ``--save-vis`` draws parts scoring below it hollow (the model's calibrated value).
        on_start: called once with the number of images this run will process (after --resume skips).
        on_progress: called with the number of images finished after every batch.

    Raises:
        FgdeployError: a journal exists but ``resume`` is off; ``resume`` of a run with another model,
            options or working directory; a batch larger than a static-batch model takes.
    """
    check_fixed_batch(getattr(predictor, "fixed_batch", None), options.batch)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    journal = Journal(journal_path_for(out))
    header = run_header(paths, model_id, options)
    scored = open_journal(journal, header, out, options.resume)
    todo = [p for p in paths if key_of(p, header["cwd"]) not in scored]
    report = InferReport(total=len(paths), scored=0, failed=0, skipped=len(paths) - len(todo), attempted=0,
                         seconds=0.0, out=out, errors_file=errors_path_for(out), vis_dir=options.save_vis)
    if on_start:
        on_start(len(todo))
    writer = ResultWriter(journal, predictor.input_size, options.topk, class_names, part_names,
                          options.save_vis, on_progress, visibility_threshold)
    start = time.perf_counter()
    launch = getattr(predictor, "launch", None)   # asynchronous predictors: keep one batch in flight
    collect: Any = getattr(predictor, "collect", None)
    launch = launch if collect is not None else None
    inflight: tuple[list[Decoded], Any] | None = None
    try:
        for items, prepared, n_good in iterate_batches(todo, predictor, options, options.save_vis is not None):
            if launch is None:
                writer.put(items, predictor.predict(prepared, n_good) if n_good else {})
                continue
            handle = launch(prepared, n_good) if n_good else None   # batch i+1 queued on the device ...
            if inflight is not None:                                # ... before waiting for batch i
                writer.put(inflight[0], collect(inflight[1]) if inflight[1] is not None else {})
            inflight = (items, handle)
        if inflight is not None:
            writer.put(inflight[0], collect(inflight[1]) if inflight[1] is not None else {})
    finally:
        try:
            writer.close()
        finally:
            journal.close()
            report.seconds = time.perf_counter() - start
    report.errors, report.attempted = writer.errors, writer.attempted
    report.scored, report.failed = render_outputs(journal, out, options.topk, writer.part_names or PART_NAMES)
    journal.path.unlink()
    return report


def run_header(paths: Sequence[str], model_id: str, options: InferOptions) -> dict[str, Any]:
    """What the journal and the run record say about a run; ``--resume`` refuses a run whose header differs
    (``check_same_run``). Local and Ray runs write the same header, so either can finish the other's run."""
    return {"model": model_id, "topk": options.topk, "cwd": os.getcwd(), "fast_decode": options.fast_decode,
            "relative_paths": any(not os.path.isabs(p) for p in paths)}


def open_journal(journal: Journal, header: dict[str, Any], out: Path, resume: bool) -> set[str]:
    """Start or reopen the run's journal; returns the keys of images already scored.

    With ``resume`` and a finished ``out`` (no journal), its results are carried over after checking
    its run record: same model and options, same working directory.
    """
    if journal.path.exists():
        if not resume:
            raise FgdeployError(f"{journal.path} holds an unfinished run: pass --resume to continue it, "
                                f"or delete it to start over")
        return journal.reopen(header)
    previous: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    if resume and out.exists():   # a finished run: keep its results (and errors), score only new images
        check_same_run(run_record_path(out), read_run_record(out), header)
        previous, failures = read_results(out), read_errors(errors_path_for(out))
    journal.start(header)
    journal.append(previous + failures)   # a failed image is tried again if it is given again
    return {key_of(r["path"], header["cwd"]) for r in previous}


def model_identity(model: str | Path) -> str:
    """What a journal records as "the model": resolved path, size and modification time (no hashing of
    multi-GB files), so resuming after the file was replaced by a retrained one is refused."""
    path = Path(model).resolve()
    stat = path.stat()
    return f"{path} ({stat.st_size} bytes, mtime_ns {stat.st_mtime_ns})"
