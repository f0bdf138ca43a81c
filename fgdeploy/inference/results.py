"""Results of batch inference: the fsync'd journal, CSV/JSONL output, the errors file, drawings.

Records (one per image) are made by ``fgdeploy.inference.batch_records``: ``path``, ``width``, ``height``,
``top``, ``keypoints`` and, for part-net models, ``boxes`` (CSV columns ``head_x0`` ... ``body_y1``). The
journal (``OUT.partial.jsonl``) is a header line then one JSON record (or ``{"path", "error"}``) per line,
appended and fsync'd per batch; ``render_outputs`` turns it into ``OUT`` (.csv: one row per image; .jsonl: one
record per line), ``<stem>.errors.csv`` and the run record ``<stem>.run.json`` (model, options, counts;
``--resume`` checks it before extending a finished ``OUT``), each atomically.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import queue
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fgdeploy.errors import FgdeployError
from fgdeploy.fileio import atomic_open, atomic_write_json
from fgdeploy.inference.batch_records import BOX_KEYS, RecordMaker, is_failure

logger = logging.getLogger(__name__)

JOURNAL_VERSION = 1


def key_of(path: str, cwd: str) -> str:
    """The identity of an image path across runs: absolute (relative to ``cwd``) and normalised."""
    return os.path.normcase(os.path.normpath(os.path.join(cwd, path)))


class Journal:
    """Append-only JSONL record of finished images; the first line is a header naming the run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = None

    def start(self, header: dict[str, Any]) -> None:
        """Create a new journal (refusing to overwrite one) with ``header`` as its first line."""
        self._file = open(self.path, "x", encoding="utf-8")
        self.append([{"journal": JOURNAL_VERSION, **header}])

    def reopen(self, header: dict[str, Any]) -> set[str]:
        """Open an existing journal for appending; returns the keys of the images scored (failed ones are retried).

        A torn last line (the process died while writing it) is cut off, so its image is redone.

        Raises:
            FgdeployError: the journal was written for another model, top-k or decode mode.
        """
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            logger.info("%s: dropping a torn last line (%d bytes)", self.path, len(data) - end)
        lines = data[:end].decode("utf-8", errors="replace").splitlines()
        old = self._parse(lines[0], 1) if lines else {}
        check_same_run(self.path, old, header)
        cwd = header["cwd"]
        records = (self._parse(line, number) for number, line in enumerate(lines[1:], 2))
        scored = {key_of(rec["path"], cwd) for rec in records if "error" not in rec}
        self._file = open(self.path, "r+", encoding="utf-8")
        self._file.truncate(end)
        self._file.seek(end)
        return scored

    def _parse(self, line: str, number: int) -> dict[str, Any]:
        try:
            rec = json.loads(line)
        except ValueError as exc:
            rec = exc
        if not isinstance(rec, dict) or (number > 1 and "path" not in rec):
            raise FgdeployError(f"{self.path}:{number}: damaged journal line ({str(rec)[:80]}); delete the journal "
                                "to start over (or fix that line)")
        return rec

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Write records as one block, then flush and fsync so they survive a kill."""
        self.append_lines([json.dumps(r, ensure_ascii=False) for r in records])

    def append_lines(self, lines: Sequence[str]) -> None:
        """``append`` for records already serialised (one JSON object per string, no newline)."""
        if lines:
            self._file.write("".join(line + "\n" for line in lines))
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def read(self) -> Iterator[dict[str, Any]]:
        """Records after the header, in the order written."""
        with open(self.path, encoding="utf-8") as f:
            next(f, None)
            for line in f:
                if line.endswith("\n"):
                    yield json.loads(line)


def check_same_run(source: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Refuse to add this run's results to ``source`` (a journal or run record) written by a different run.

    Compared: the model (path, size, modification time), top-k, decode mode, and the working
    directory when either run named images by relative paths (resolved from it, so the same image
    must get the same key).

    Raises:
        FgdeployError: naming the first difference and what to do.
    """
    for name, default in (("model", None), ("topk", None), ("fast_decode", False), ("cwd", None)):
        was, now = old.get(name, default), new.get(name, default)
        if was == now:
            continue
        if name == "cwd":
            if not (old.get("relative_paths", True) or new.get("relative_paths", True)):
                continue   # every image path is absolute: the same image has the same key from anywhere
            raise FgdeployError(f"{source} was written by a run started in {was}, but this run is in {now}; "
                                f"run the command from {was} (relative image paths are resolved from it)")
        raise FgdeployError(f"{source} was written with {name}={was!r} but this run has {name}={now!r}; resume "
                            "with the same model and options, or write to a new --out")


JOURNAL_SUFFIX = ".partial.jsonl"


def journal_path_for(out: Path) -> Path:
    """The journal of an unfinished run writing ``out``: ``OUT.partial.jsonl`` beside it."""
    return out.with_name(out.name + JOURNAL_SUFFIX)


def errors_path_for(out: Path) -> Path:
    """Where the errors of a run writing ``out`` go: ``<stem>.errors.csv`` beside it."""
    return out.with_name(out.stem + ".errors.csv")


def run_record_path(out: Path) -> Path:
    """The record of the run that wrote ``out`` (model, options, counts): ``<stem>.run.json`` beside it."""
    return out.with_name(out.stem + ".run.json")


def read_run_record(out: Path) -> dict[str, Any]:
    """The run record of a finished ``out``, needed to extend it with ``--resume``.

    Raises:
        FgdeployError: the record is missing, unreadable or describes another output file.
    """
    path = run_record_path(out)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FgdeployError(f"{out} has no run record ({path.name}), so it cannot be checked that it holds this "
                            "model's results; write to a new --out, or delete it to start over") from None
    except (OSError, ValueError) as exc:
        raise FgdeployError(f"{path}: unreadable run record ({exc}); delete {out} and it to start over") from None
    if not isinstance(record, dict) or record.get("out") != out.name:
        raise FgdeployError(f"{path} describes {record.get('out') if isinstance(record, dict) else '?'}, not "
                            f"{out.name}; write to a new --out")
    return record


def _csv_header(topk: int, part_names: Sequence[str], box_names: Sequence[str] = ()) -> list[str]:
    cols = ["path", "width", "height"]
    cols += [f"top{i}_{f}" for i in range(1, topk + 1) for f in ("label", "class", "prob")]
    return cols + [f"{p}_{f}" for p in part_names for f in ("x", "y", "score")] + \
        [f"{b}_{k}" for b in box_names for k in BOX_KEYS]


def _csv_row(rec: dict[str, Any], topk: int) -> list[Any]:
    row: list[Any] = [rec["path"], rec["width"], rec["height"]]
    for i in range(topk):
        t = rec["top"][i] if i < len(rec["top"]) else {"label": "", "class": "", "prob": ""}
        row += [t["label"], t["class"], t["prob"]]
    return row + [v for k in rec["keypoints"] for v in (k["x"], k["y"], k["score"])] + \
        [b[k] for b in rec.get("boxes", ()) for k in BOX_KEYS]


def render_outputs(journal: Journal, out: Path, topk: int, part_names: Sequence[str]) -> tuple[int, int]:
    """Write ``out`` (CSV or JSONL by suffix), its errors file and its run record from the journal, atomically.

    Each path appears once: its first result, else its latest error. Returns (scored, failed).
    """
    with open(journal.path, encoding="utf-8") as f:
        header = json.loads(f.readline())
    seen: set[str] = set()
    errors: dict[str, tuple[str, str]] = {}
    first = next((rec for rec in journal.read() if "error" not in rec), {})
    box_names = [b["part"] for b in first.get("boxes", ())]   # part-net models add head/body box columns
    with atomic_open(out, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f) if is_csv(out) else None
        if writer:
            writer.writerow(_csv_header(topk, part_names, box_names))
        for rec in journal.read():
            key = key_of(rec["path"], header["cwd"])
            if "error" in rec:
                errors[key] = (rec["path"], rec["error"])
            elif key not in seen:
                seen.add(key)
                writer.writerow(_csv_row(rec, topk)) if writer else f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        failed = [v for k, v in errors.items() if k not in seen]
        with atomic_open(errors_path_for(out), "w", encoding="utf-8", newline="") as g:
            csv.writer(g).writerows([("path", "reason"), *failed])
    run = {k: v for k, v in header.items() if k != "journal"}
    atomic_write_json(run_record_path(out), {"out": out.name, **run, "scored": len(seen), "failed": len(failed),
                                             "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return len(seen), len(failed)


def is_csv(out: Path) -> bool:
    """Results go to CSV for a .csv name, else JSONL (the CLI accepts only .csv and .jsonl)."""
    return out.suffix.lower() == ".csv"


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Read a results file written by ``run_inference`` (CSV or JSONL) back into record dicts.

    Raises:
        FgdeployError: the file is empty or not in the format ``run_inference`` writes (file and line).
    """
    path = Path(path)
    line = 0
    try:
        with open(path, encoding="utf-8", newline="") as f:
            if not is_csv(path):
                records = []
                for line, text in enumerate(f, 1):
                    if text.strip():
                        records.append(_json_record(text))
                return records
            rows = csv.reader(f)
            header = next(rows, None)
            line = 1
            if not header or header[:3] != ["path", "width", "height"]:
                raise ValueError("expected a header starting path,width,height")
            topk = sum(1 for c in header if c.endswith("_label"))
            parts = [c[:-2] for c in header[3 + 3 * topk:] if c.endswith("_x")]
            boxes = [c[:-3] for c in header if c.endswith("_x0")]
            records = []
            for line, row in enumerate(rows, 2):
                records.append(_csv_record(row, topk, parts, boxes))
            return records
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        raise FgdeployError(f"{path}:{line}: not a results file written by fgdeploy infer ({exc}); write to a new "
                            "--out, or delete it to start over") from None


def read_errors(path: Path) -> list[dict[str, str]]:
    """The ``{"path", "error"}`` records of an errors file (none if it is missing)."""
    if not path.exists():
        return []
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    return [{"path": row[0], "error": row[1]} for row in rows[1:] if len(row) >= 2]


def _json_record(text: str) -> dict[str, Any]:
    rec = json.loads(text)
    if not isinstance(rec, dict) or not {"path", "top", "keypoints"} <= rec.keys():
        raise ValueError("expected an object with path, top and keypoints")
    return rec


def _csv_record(row: list[str], topk: int, parts: Sequence[str], boxes: Sequence[str] = ()) -> dict[str, Any]:
    top = [{"label": int(row[3 + 3 * i]), "class": row[4 + 3 * i], "prob": float(row[5 + 3 * i])}
           for i in range(topk) if row[3 + 3 * i] != ""]
    base = 3 + 3 * topk
    kps = [{"part": p, "x": float(row[base + 3 * j]), "y": float(row[base + 3 * j + 1]),
            "score": float(row[base + 3 * j + 2])} for j, p in enumerate(parts)]
    rec = {"path": row[0], "width": int(row[1]), "height": int(row[2]), "top": top, "keypoints": kps}
    base += 3 * len(parts)
    if boxes:
        rec["boxes"] = [{"part": b, **{k: float(row[base + 4 * j + i]) for i, k in enumerate(BOX_KEYS)}}
                        for j, b in enumerate(boxes)]
    return rec


class ResultWriter:
    """Turns predictor outputs into records (``RecordMaker``) and journals them on a background thread.

    The caller's thread can then start the next batch on the device while this one is converted,
    written and fsync'd. ``put`` re-raises an error of the writer thread; ``close`` writes what is
    queued, stops the thread and re-raises its error, if any.
    """

    def __init__(self, journal: Journal, input_size: int, topk: int, class_names: Sequence[str] | None,
                 part_names: Sequence[str] | None, vis_dir: Path | None = None,
                 on_progress: Callable[[int], None] | None = None, visibility_threshold: float = 0.5) -> None:
        self.journal = journal
        self.maker = RecordMaker(input_size, topk, class_names, part_names)
        self.vis_dir = vis_dir
        self.visibility_threshold = visibility_threshold
        self.on_progress = on_progress
        self.errors: list[tuple[str, str]] = []   # (path, reason) of this run's failures
        self.attempted = 0                         # images handled (scored or failed)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fgdeploy-writer", daemon=True)
        self._thread.start()

    def put(self, items: Sequence[Any], outputs: dict[str, np.ndarray]) -> None:
        """Queue one batch: ``items`` (decoded, good and failed) and the outputs of the good ones."""
        while True:
            if self._error is not None:
                raise self._error
            try:
                self._queue.put((items, outputs), timeout=0.1)
                return
            except queue.Full:
                continue

    @property
    def part_names(self) -> list[str]:
        """The part names written (the model's, else the defaults once a batch was scored)."""
        return self.maker.part_names

    def close(self) -> None:
        """Write everything queued, then stop; re-raise the writer's error."""
        while self._thread.is_alive():
            try:
                self._queue.put(None, timeout=0.1)
                break
            except queue.Full:
                continue
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                self._write(*job)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                self._error = exc
                return

    def _write(self, items: Sequence[Any], outputs: dict[str, np.ndarray]) -> None:
        entries = self.maker.entries(items, outputs)
        self.journal.append(entries)
        self.errors += [(e["path"], e["error"]) for e in entries if is_failure(e)]
        self.attempted += len(items)
        if self.vis_dir is not None:
            scored = [(d, e) for d, e in zip(items, entries) if not is_failure(e)]
            if scored:
                save_visualisations([d for d, _ in scored], [e for _, e in scored], self.vis_dir,
                                    self.visibility_threshold)
        if self.on_progress:
            self.on_progress(len(items))


VIS_MIN_SIDE = 480   # --save-vis draws smaller images enlarged to this long side, so labels and legend fit


def save_visualisations(items: Sequence[Any], records: Sequence[dict[str, Any]], folder: Path,
                        visibility_threshold: float = 0.5) -> None:
    """Draw keypoints (hollow when the score is below the model's visibility threshold), part names, head/body
    boxes (part-net models) and the top-1 class; write ``folder/<name>.png``."""
    from fgdeploy.visualize import (
        draw_boxes, draw_caption, draw_keypoints, enlarge_for_display, legend, save_image, text_scale,
    )

    for item, rec in zip(items, records):
        kps = np.array([[k["x"], k["y"]] for k in rec["keypoints"]], dtype=np.float64)
        hollow = np.array([k["score"] < visibility_threshold for k in rec["keypoints"]])
        names = [k["part"] for k in rec["keypoints"]]
        image, kps = enlarge_for_display(item.original, kps, VIS_MIN_SIDE)
        canvas = image
        if rec.get("boxes"):   # box corners scale like keypoints
            corners = np.array([[b[k] for k in BOX_KEYS] for b in rec["boxes"]], np.float64).reshape(-1, 2)
            _, corners = enlarge_for_display(item.original, corners, VIS_MIN_SIDE)
            canvas = draw_boxes(canvas, corners.reshape(-1, 4), [b["part"] for b in rec["boxes"]])
        canvas = draw_keypoints(canvas, kps, part_names=names, labels=True, hollow=hollow)
        canvas = draw_caption(canvas, f"{rec['top'][0]['class']}  p={rec['top'][0]['prob']:.2f}")
        canvas = np.concatenate([canvas, legend(canvas.shape[1], names, text_scale(image.shape))])
        save_image(folder / f"{Path(item.path).stem}_{zlib.crc32(item.path.encode()):08x}.png", canvas)
