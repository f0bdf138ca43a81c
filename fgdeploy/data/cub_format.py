"""The CUB-200-2011 annotation files: strict parsing (with file:line messages) and writing.

Layout under a dataset root (method.md section 11)::

    images.txt               <image_id> <path>              (path relative to images/)
    classes.txt              <class_id> <class_name>
    image_class_labels.txt   <image_id> <class_id>
    train_test_split.txt     <image_id> <is_training_image>
    bounding_boxes.txt       <image_id> <x> <y> <width> <height>
    parts/parts.txt          <part_id> <part_name>
    parts/part_locs.txt      <image_id> <part_id> <x> <y> <visible>

Every id is 1-based. Lines may end in CRLF; blank lines are skipped. Part names may be written with
spaces ("left eye") and are normalised to the ``fgdeploy.tensors.PART_NAMES`` spelling ("left_eye").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fgdeploy.data.fileio import atomic_write_text
from fgdeploy.errors import DatasetError
from fgdeploy.tensors import PART_NAMES

IMAGES = "images.txt"
CLASSES = "classes.txt"
LABELS = "image_class_labels.txt"
SPLIT = "train_test_split.txt"
BOXES = "bounding_boxes.txt"
PARTS = "parts/parts.txt"
PART_LOCS = "parts/part_locs.txt"

# file -> field names; a trailing "*" marks a last field that may contain spaces.
FORMATS: dict[str, tuple[str, ...]] = {
    IMAGES: ("image_id", "path*"),
    CLASSES: ("class_id", "class_name*"),
    LABELS: ("image_id", "class_id"),
    SPLIT: ("image_id", "is_training_image"),
    BOXES: ("image_id", "x", "y", "width", "height"),
    PARTS: ("part_id", "part_name*"),
    PART_LOCS: ("image_id", "part_id", "x", "y", "visible"),
}
_INT_FIELDS = {"image_id", "class_id", "part_id", "is_training_image", "visible"}
_FLOAT_FIELDS = {"x", "y", "width", "height"}
_FLAG_FIELDS = {"is_training_image", "visible"}


def format_of(name: str) -> str:
    """The field list of a file as error messages show it: ``<image_id> <part_id> <x> <y> <visible>``."""
    return " ".join(f"<{f.rstrip('*')}>" for f in FORMATS[name])


class Problems:
    """Collects dataset problems (``file:line: what``) and raises them as one `DatasetError`."""

    def __init__(self, root: Path, limit: int = 200) -> None:
        self.root = root
        self.limit = limit
        self.messages: list[str] = []
        self.count = 0

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.messages) < self.limit:
            self.messages.append(message)

    def at(self, name: str, line: int | None, message: str) -> None:
        """Record ``<root>/<name>:<line>: <message>`` (no line number when ``line`` is None)."""
        where = str(self.root / name) + (f":{line}" if line is not None else "")
        self.add(f"{where}: {message}")

    def raise_if_any(self) -> None:
        """Raise the first problem as a `DatasetError`, saying how many more there are."""
        if not self.count:
            return
        more = self.count - 1
        tail = (f" (and {more} more problem{'s' if more > 1 else ''}; `fgdeploy data check {self.root}` "
                "lists them)") if more else ""
        raise DatasetError(self.messages[0] + tail)


Row = tuple[int, tuple[int | float | str, ...]]  # (line number, parsed fields)


def read_table(root: Path, name: str, problems: Problems) -> list[Row]:
    """Parse ``<root>/<name>`` by its `FORMATS` entry; bad lines are recorded in ``problems`` and skipped."""
    path = root / name
    fields = FORMATS[name]
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        problems.at(name, None, f"missing file (expected lines {format_of(name)}); is {root} the root of a "
                                "CUB-200-2011-format dataset?")
        return []
    except OSError as exc:
        problems.at(name, None, f"cannot read file ({exc.strerror}); check its permissions")
        return []
    rows: list[Row] = []
    for number, text in _lines(raw, name, problems):
        parsed = _parse_line(text, fields)
        if isinstance(parsed, str):
            problems.at(name, number, parsed)
        else:
            rows.append((number, parsed))
    if not rows and not problems.count:
        problems.at(name, None, f"file has no lines; expected lines {format_of(name)}")
    return rows


def _lines(raw: bytes, name: str, problems: Problems) -> Iterator[tuple[int, str]]:
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            text = line.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError:
            problems.at(name, number, "line is not valid UTF-8 text; re-save the file as UTF-8")
            continue
        if text.strip():
            yield number, text


def _parse_line(text: str, fields: tuple[str, ...]) -> tuple[int | float | str, ...] | str:
    """Parsed values, or an error message (without the ``file:line:`` prefix)."""
    rest = fields[-1].endswith("*")
    tokens = text.split(maxsplit=len(fields) - 1) if rest else text.split()
    if len(tokens) != len(fields):
        shown = " ".join(f"<{f.rstrip('*')}>" for f in fields)
        return f"expected {len(fields)} fields {shown}, got {len(tokens)}"
    values: list[int | float | str] = []
    for field, token in zip(fields, tokens):
        field = field.rstrip("*")
        if field in _INT_FIELDS:
            try:
                number = int(token)
            except ValueError:
                return f"<{field}> must be an integer, got {token!r}"
            if field in _FLAG_FIELDS and number not in (0, 1):
                return f"<{field}> must be 0 or 1, got {token!r}"
            if field.endswith("_id") and number < 1:
                return f"<{field}> must be >= 1 (ids are 1-based), got {token!r}"
            values.append(number)
        elif field in _FLOAT_FIELDS:
            try:
                value = float(token)
            except ValueError:
                return f"<{field}> must be a number, got {token!r}"
            if not math.isfinite(value):
                return f"<{field}> must be a finite number, got {token!r}"
            values.append(value)
        else:
            values.append(token.strip())
    return tuple(values)


@dataclass
class CubAnnotations:
    """Every annotation of a CUB-format dataset, in images.txt order (N images, P parts, K classes).

    Coordinates are stored as written in the files (CUB pixels); `fgdeploy.data.cub` converts them.
    """

    root: Path
    image_ids: np.ndarray      # (N,) int64
    paths: list[str]           # relative to <root>/images
    labels: np.ndarray         # (N,) int64, 0-based
    is_train: np.ndarray       # (N,) bool
    boxes: np.ndarray          # (N, 4) float64 x, y, width, height
    part_xy: np.ndarray        # (N, P, 2) float64 x, y (0, 0 where invisible)
    part_visible: np.ndarray   # (N, P) bool
    class_names: list[str]
    part_names: list[str]
    image_lines: list[int]     # line of each image in images.txt (for messages)


def normalise_part_name(name: str) -> str:
    """"left eye" -> "left_eye"."""
    return "_".join(name.strip().lower().split())


def parse_annotations(root: Path, problems: Problems) -> CubAnnotations | None:
    """Read and cross-check all annotation files; None if any problem was recorded."""
    tables = {name: read_table(root, name, problems) for name in FORMATS}
    if problems.count:
        return None
    images = _unique_ids(tables[IMAGES], IMAGES, "image id", problems)
    class_names = _numbered_names(tables[CLASSES], CLASSES, "class", problems)
    part_names = [normalise_part_name(str(n)) for n in _numbered_names(tables[PARTS], PARTS, "part", problems)]
    if part_names and tuple(part_names) != PART_NAMES:
        problems.at(PARTS, None, f"parts are {part_names}; fgdeploy needs the 15 CUB parts in this order: "
                                 f"{list(PART_NAMES)}")
    index = {image_id: i for i, image_id in enumerate(images)}
    n, p = len(images), len(part_names)
    labels = _per_image(tables[LABELS], LABELS, index, problems, lambda v, where: _class_index(
        int(v[1]), len(class_names), where, problems))
    split = _per_image(tables[SPLIT], SPLIT, index, problems, lambda v, where: int(v[1]) == 1)
    boxes = _per_image(tables[BOXES], BOXES, index, problems, lambda v, where: _box(v, where, problems))
    part_xy = np.zeros((n, p, 2), dtype=np.float64)
    part_visible = np.zeros((n, p), dtype=bool)
    _part_locs(tables[PART_LOCS], index, part_names, part_xy, part_visible, problems)
    if problems.count:
        return None
    return CubAnnotations(
        root=root, image_ids=np.array(list(images), dtype=np.int64),
        paths=[str(images[i][1]) for i in images], labels=np.array(labels, dtype=np.int64),
        is_train=np.array(split, dtype=bool), boxes=np.array(boxes, dtype=np.float64).reshape(n, 4),
        part_xy=part_xy, part_visible=part_visible, class_names=[str(c) for c in class_names],
        part_names=part_names, image_lines=[images[i][0] for i in images])


def _unique_ids(rows: list[Row], name: str, what: str, problems: Problems) -> dict[int, tuple[int, str]]:
    """id -> (line, value) for two-field files whose first field is a unique id."""
    seen: dict[int, tuple[int, str]] = {}
    for line, values in rows:
        key = int(values[0])
        if key in seen:
            problems.at(name, line, f"duplicate {what} {key} (first on line {seen[key][0]})")
        else:
            seen[key] = (line, str(values[1]))
    return seen


def _numbered_names(rows: list[Row], name: str, what: str, problems: Problems) -> list[str]:
    """Names of a file whose ids must run 1, 2, ..., K in order."""
    names: list[str] = []
    for line, values in rows:
        expected = len(names) + 1
        if int(values[0]) != expected:
            problems.at(name, line, f"{what} ids must run 1..K in order; got {values[0]} where {expected} "
                                    "was expected")
            return names
        names.append(str(values[1]))
    return names


def _per_image(rows: list[Row], name: str, index: dict[int, int], problems: Problems,
               convert: Callable[[tuple[int | float | str, ...], int], object]) -> list[object]:
    """One value per image (images.txt order) from a file keyed by image id; reports unknown/missing ids."""
    out: list[object] = [None] * len(index)
    first_line: dict[int, int] = {}
    for line, values in rows:
        image_id = int(values[0])
        if image_id not in index:
            problems.at(name, line, f"image id {image_id} is not in {IMAGES}")
        elif image_id in first_line:
            problems.at(name, line, f"duplicate image id {image_id} (first on line {first_line[image_id]})")
        else:
            first_line[image_id] = line
            out[index[image_id]] = convert(values, line)
    _report_missing(name, [i for i in index if i not in first_line], problems, "has no line")
    return out


def _report_missing(name: str, missing: list[int], problems: Problems, what: str) -> None:
    if missing:
        shown = ", ".join(str(i) for i in missing[:10]) + (", ..." if len(missing) > 10 else "")
        problems.at(name, None, f"{len(missing)} image id(s) listed in {IMAGES} {what} here: {shown}")


def _class_index(class_id: int, num_classes: int, line: int, problems: Problems) -> int:
    if not 1 <= class_id <= num_classes:
        problems.at(LABELS, line, f"class id {class_id} is not in {CLASSES} (ids 1..{num_classes})")
    return class_id - 1


def _box(values: tuple[int | float | str, ...], line: int, problems: Problems) -> tuple[float, ...]:
    x, y, w, h = (float(v) for v in values[1:])
    if w <= 0 or h <= 0:
        problems.at(BOXES, line, f"<width> and <height> must be > 0, got {values[3]} {values[4]}")
    return x, y, w, h


def _part_locs(rows: list[Row], index: dict[int, int], part_names: list[str], part_xy: np.ndarray,
               part_visible: np.ndarray, problems: Problems) -> None:
    seen = np.zeros(part_visible.shape, dtype=np.int64)  # line number of each (image, part); 0 = none yet
    for line, values in rows:
        image_id, part_id = int(values[0]), int(values[1])
        if image_id not in index:
            problems.at(PART_LOCS, line, f"image id {image_id} is not in {IMAGES}")
            continue
        if not 1 <= part_id <= len(part_names):
            problems.at(PART_LOCS, line, f"part id {part_id} is not in {PARTS} (ids 1..{len(part_names)})")
            continue
        i, p = index[image_id], part_id - 1
        if seen[i, p]:
            problems.at(PART_LOCS, line, f"duplicate line for image {image_id} part {part_id} "
                                         f"(first on line {seen[i, p]})")
            continue
        seen[i, p] = line
        part_xy[i, p] = (float(values[2]), float(values[3]))
        part_visible[i, p] = int(values[4]) == 1
    ids = list(index)
    missing = [f"{ids[i]}/{part_names[p]}" for i, p in zip(*np.nonzero(seen == 0))]
    if missing:
        shown = ", ".join(missing[:10]) + (", ..." if len(missing) > 10 else "")
        problems.at(PART_LOCS, None, f"{len(missing)} (image id/part) pair(s) have no line; every image needs "
                                     f"one line per part: {shown}")


def write_annotations(ann: CubAnnotations) -> None:
    """Write the seven annotation files of ``ann`` under ``ann.root`` (each file atomically)."""
    root = ann.root
    ids = [int(i) for i in ann.image_ids]
    atomic_write_text(root / IMAGES, "".join(f"{i} {p}\n" for i, p in zip(ids, ann.paths)))
    atomic_write_text(root / CLASSES, "".join(f"{k + 1} {n}\n" for k, n in enumerate(ann.class_names)))
    atomic_write_text(root / LABELS, "".join(f"{i} {int(c) + 1}\n" for i, c in zip(ids, ann.labels)))
    atomic_write_text(root / SPLIT, "".join(f"{i} {int(t)}\n" for i, t in zip(ids, ann.is_train)))
    atomic_write_text(root / BOXES, "".join(
        f"{i} {_num(b[0])} {_num(b[1])} {_num(b[2])} {_num(b[3])}\n" for i, b in zip(ids, ann.boxes)))
    atomic_write_text(root / PARTS, "".join(
        f"{k + 1} {n.replace('_', ' ')}\n" for k, n in enumerate(ann.part_names)))
    lines = []
    for n, image_id in enumerate(ids):
        for p in range(len(ann.part_names)):
            vis = bool(ann.part_visible[n, p])
            x, y = ann.part_xy[n, p] if vis else (0.0, 0.0)
            lines.append(f"{image_id} {p + 1} {_num(x)} {_num(y)} {int(vis)}\n")
    atomic_write_text(root / PART_LOCS, "".join(lines))


def _num(value: float) -> str:
    """CUB-style number: at least one decimal, at most two."""
    text = f"{float(value):.2f}".rstrip("0")
    return text + "0" if text.endswith(".") else text
