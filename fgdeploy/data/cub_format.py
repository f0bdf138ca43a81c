"""The CUB-200-2011 annotation files: strict parsing (with file:line messages) and writing.

Layout under a dataset root (docs/method.md section 11)::

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

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fgdeploy.errors import DatasetError
from fgdeploy.fileio import atomic_write_text
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
        if len(self.messages) >= self.limit:
            self.count += 1
            return
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


@dataclass
class Table:
    """The good lines of one annotation file, as columns (lines with a problem are left out)."""

    lines: np.ndarray          # (R,) int64 line numbers
    columns: list[np.ndarray]  # one per field: int64, float64 or str (object) arrays

    def __len__(self) -> int:
        return len(self.lines)


def read_table(root: Path, name: str, problems: Problems) -> Table:
    """Parse ``<root>/<name>`` by its `FORMATS` entry; bad lines are recorded in ``problems`` and skipped.

    Columns are converted with NumPy in one go (CUB's part_locs.txt has 176,820 lines); a column that
    does not convert is scanned token by token to name the first bad lines.
    """
    path = root / name
    fields = [f.rstrip("*") for f in FORMATS[name]]
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        problems.at(name, None, f"missing file (expected lines {format_of(name)}); is {root} the root of a "
                                "CUB-200-2011-format dataset?")
        return Table(np.zeros(0, np.int64), [np.zeros(0) for _ in fields])
    except OSError as exc:
        problems.at(name, None, f"cannot read file ({exc.strerror}); check its permissions")
        return Table(np.zeros(0, np.int64), [np.zeros(0) for _ in fields])
    numbers, texts = _lines(raw, name, problems)
    maxsplit = len(fields) - 1 if FORMATS[name][-1].endswith("*") else -1
    tokens = [t.split(None, maxsplit) for t in texts]
    ok = np.array([len(t) == len(fields) for t in tokens], dtype=bool)
    for k in np.flatnonzero(~ok):
        problems.at(name, int(numbers[k]), f"expected {len(fields)} fields {format_of(name)}, got {len(tokens[k])}")
    good = [t for t, keep in zip(tokens, ok) if keep]
    raw_columns = [np.array(c, dtype=object) for c in zip(*good)] if good else [np.zeros(0, object)] * len(fields)
    lines = np.asarray(numbers, dtype=np.int64)[ok]
    valid = np.ones(len(lines), dtype=bool)
    columns = [_convert(field, column, lines, valid, name, problems) for field, column in zip(fields, raw_columns)]
    if not len(numbers) and not problems.count:
        problems.at(name, None, f"file has no lines; expected lines {format_of(name)}")
    return Table(lines[valid], [c[valid] for c in columns])


def _lines(raw: bytes, name: str, problems: Problems) -> tuple[list[int], list[str]]:
    """(line numbers, texts) of the non-blank lines; CRLF endings and a UTF-8 BOM are accepted."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        all_lines = raw.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        all_lines = []
        for number, line in enumerate(raw.split(b"\n"), start=1):
            try:
                all_lines.append(line.decode("utf-8"))
            except UnicodeDecodeError:
                problems.at(name, number, "line is not valid UTF-8 text; re-save the file as UTF-8")
                all_lines.append("")
    numbers = [n for n, text in enumerate(all_lines, start=1) if text.strip()]
    return numbers, [all_lines[n - 1].rstrip("\r") for n in numbers]


def _convert(field: str, column: np.ndarray, lines: np.ndarray, valid: np.ndarray, name: str,
             problems: Problems) -> np.ndarray:
    """Convert one column; lines that fail are reported (once per line) and cleared in ``valid``."""
    def fail(rows: np.ndarray, message: Callable[[str], str]) -> None:
        for k in rows:
            if valid[k]:
                problems.at(name, int(lines[k]), message(str(column[k])))
                valid[k] = False

    if field in _INT_FIELDS:
        values, bad = _to_numbers(column, np.int64, int)
        fail(bad, lambda t: f"<{field}> must be an integer, got {t!r}")
        if field in _FLAG_FIELDS:
            fail(np.flatnonzero((values != 0) & (values != 1)), lambda t: f"<{field}> must be 0 or 1, got {t!r}")
        if field.endswith("_id"):
            fail(np.flatnonzero(values < 1), lambda t: f"<{field}> must be >= 1 (ids are 1-based), got {t!r}")
        return values
    if field in _FLOAT_FIELDS:
        values, bad = _to_numbers(column, np.float64, float)
        fail(bad, lambda t: f"<{field}> must be a number, got {t!r}")
        fail(np.flatnonzero(~np.isfinite(values)), lambda t: f"<{field}> must be a finite number, got {t!r}")
        return values
    return np.array([str(t).strip() for t in column], dtype=object)


def _to_numbers(column: np.ndarray, dtype: type, parse: Callable[[str], object]) -> tuple[np.ndarray, np.ndarray]:
    """(values, indices that did not parse) - vectorised, falling back to a scan only on failure."""
    try:
        return np.array(list(map(parse, column)), dtype=dtype), np.zeros(0, np.int64)
    except (ValueError, OverflowError):
        values: np.ndarray = np.zeros(len(column), dtype=dtype)
        bad: list[int] = []
        for k, token in enumerate(column):
            try:
                values[k] = parse(str(token))
            except (ValueError, OverflowError):
                bad.append(k)
        return values, np.array(bad, dtype=np.int64)


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
    image_ids, image_lines, paths = _unique_ids(tables[IMAGES], IMAGES, "image id", problems)
    class_names = _numbered_names(tables[CLASSES], CLASSES, "class", problems)
    part_names = [normalise_part_name(n) for n in _numbered_names(tables[PARTS], PARTS, "part", problems)]
    if part_names and tuple(part_names) != PART_NAMES:
        problems.at(PARTS, None, f"parts are {part_names}; fgdeploy needs the 15 CUB parts in this order: "
                                 f"{list(PART_NAMES)}")
    labels_table, split_table, boxes_table = tables[LABELS], tables[SPLIT], tables[BOXES]
    label_rows = _rows_per_image(labels_table, LABELS, image_ids, problems)
    split_rows = _rows_per_image(split_table, SPLIT, image_ids, problems)
    box_rows = _rows_per_image(boxes_table, BOXES, image_ids, problems)
    class_ids = labels_table.columns[1]
    for k in np.flatnonzero((class_ids < 1) | (class_ids > len(class_names))):
        problems.at(LABELS, int(labels_table.lines[k]), f"class id {class_ids[k]} is not in {CLASSES} "
                                                        f"(ids 1..{len(class_names)})")
    boxes = np.stack(boxes_table.columns[1:], axis=1).astype(np.float64)
    for k in np.flatnonzero((boxes[:, 2] <= 0) | (boxes[:, 3] <= 0)):
        problems.at(BOXES, int(boxes_table.lines[k]), f"<width> and <height> must be > 0, got "
                                                      f"{boxes[k, 2]:g} {boxes[k, 3]:g}")
    part_xy, part_visible = _part_locs(tables[PART_LOCS], image_ids, part_names, problems)
    if problems.count:
        return None
    return CubAnnotations(
        root=root, image_ids=image_ids, paths=paths, labels=class_ids[label_rows] - 1,
        is_train=split_table.columns[1][split_rows] == 1, boxes=boxes[box_rows], part_xy=part_xy,
        part_visible=part_visible, class_names=class_names, part_names=part_names,
        image_lines=[int(n) for n in image_lines])


def _unique_ids(table: Table, name: str, what: str, problems: Problems) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(ids, line numbers, second-field values) of a file whose first field is a unique id."""
    first: dict[int, int] = {}
    for k, key in enumerate(table.columns[0].tolist()):
        if key in first:
            problems.at(name, int(table.lines[k]), f"duplicate {what} {key} (first on line "
                                                   f"{table.lines[first[key]]})")
        else:
            first[key] = k
    rows = np.array(list(first.values()), dtype=np.int64)
    return table.columns[0][rows], table.lines[rows], [str(v) for v in table.columns[1][rows]]


def _numbered_names(table: Table, name: str, what: str, problems: Problems) -> list[str]:
    """Names of a file whose ids must run 1, 2, ..., K in order."""
    names: list[str] = []
    for line, key, value in zip(table.lines.tolist(), table.columns[0].tolist(), table.columns[1]):
        if key != len(names) + 1:
            problems.at(name, line, f"{what} ids must run 1..K in order; got {key} where {len(names) + 1} "
                                    "was expected")
            return names
        names.append(str(value))
    return names


def _image_index(ids: np.ndarray, image_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position of each id in ``image_ids`` (images.txt order) and whether it is there at all."""
    if not len(image_ids):
        return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
    order = np.argsort(image_ids, kind="stable")
    pos = np.minimum(np.searchsorted(image_ids[order], ids), len(image_ids) - 1)
    return order[pos], image_ids[order][pos] == ids


def _rows_per_image(table: Table, name: str, image_ids: np.ndarray, problems: Problems) -> np.ndarray:
    """For each image (images.txt order) the row of ``table`` that describes it; reports unknown,
    duplicate and missing ids."""
    index, known = _image_index(table.columns[0], image_ids)
    for k in np.flatnonzero(~known):
        problems.at(name, int(table.lines[k]), f"image id {table.columns[0][k]} is not in {IMAGES}")
    rows = np.full(len(image_ids), -1, dtype=np.int64)
    for k in np.flatnonzero(known):
        if rows[index[k]] >= 0:
            problems.at(name, int(table.lines[k]), f"duplicate image id {table.columns[0][k]} (first on line "
                                                   f"{table.lines[rows[index[k]]]})")
        else:
            rows[index[k]] = k
    _report_missing(name, image_ids[rows < 0].tolist(), problems, "has no line")
    return rows


def _report_missing(name: str, missing: list[int], problems: Problems, what: str) -> None:
    if missing:
        shown = ", ".join(str(i) for i in missing[:10]) + (", ..." if len(missing) > 10 else "")
        problems.at(name, None, f"{len(missing)} image id(s) listed in {IMAGES} {what} here: {shown}")


def _part_locs(table: Table, image_ids: np.ndarray, part_names: list[str], problems: Problems
               ) -> tuple[np.ndarray, np.ndarray]:
    """(N, P, 2) part coordinates and (N, P) visibility; reports unknown, duplicate and missing lines."""
    n, p = len(image_ids), len(part_names)
    ids, parts = table.columns[0], table.columns[1]
    index, known = _image_index(ids, image_ids)
    for k in np.flatnonzero(~known):
        problems.at(PART_LOCS, int(table.lines[k]), f"image id {ids[k]} is not in {IMAGES}")
    bad_part = known & ((parts < 1) | (parts > p))
    for k in np.flatnonzero(bad_part):
        problems.at(PART_LOCS, int(table.lines[k]), f"part id {parts[k]} is not in {PARTS} (ids 1..{p})")
    rows = np.flatnonzero(known & ~bad_part)
    flat = index[rows] * p + parts[rows] - 1
    order = np.argsort(flat, kind="stable")
    repeat = np.zeros(len(rows), dtype=bool)
    repeat[order[1:]] = flat[order[1:]] == flat[order[:-1]]
    first_row = np.full(n * p, -1, dtype=np.int64)
    first_row[flat[~repeat]] = rows[~repeat]
    for k in np.flatnonzero(repeat):
        row = rows[k]
        problems.at(PART_LOCS, int(table.lines[row]), f"duplicate line for image {ids[row]} part {parts[row]} "
                                                      f"(first on line {table.lines[first_row[flat[k]]]})")
    present = first_row >= 0
    part_xy = np.zeros((n * p, 2), dtype=np.float64)
    part_visible = np.zeros(n * p, dtype=bool)
    part_xy[present] = np.stack([table.columns[2], table.columns[3]], axis=1)[first_row[present]]
    part_visible[present] = table.columns[4][first_row[present]] == 1
    missing = [f"{image_ids[f // p]}/{part_names[f % p]}" for f in np.flatnonzero(~present)[:10]]
    if missing:
        count = int((~present).sum())
        shown = ", ".join(missing) + (", ..." if count > 10 else "")
        problems.at(PART_LOCS, None, f"{count} (image id/part) pair(s) have no line; every image needs "
                                     f"one line per part: {shown}")
    return part_xy.reshape(n, p, 2), part_visible.reshape(n, p)


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
