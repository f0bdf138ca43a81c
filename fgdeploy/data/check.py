"""Validate a CUB-format dataset (real or synthetic) and summarise it (`fgdeploy data check`).

A dataset is *usable* when every annotation file parses and agrees with the others and every image
decodes. Odd but usable things (grayscale/CMYK/alpha/16-bit files, keypoints outside their image, image
folders that do not match the class) are counted and listed as warnings.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fgdeploy.data.cub import load_annotations, resolve_root
from fgdeploy.data.cub_format import IMAGES, PART_LOCS, CubAnnotations, Problems
from fgdeploy.data.images import ImageInfo, probe_image, read_image_with_info
from fgdeploy.errors import DatasetError, ImageError

Progress = Callable[[Iterable[Any], int], Iterable[Any]]
MAX_LISTED = 20


@dataclass
class CheckReport:
    """The result of `check_dataset`; ``ok`` decides the exit code."""

    root: str
    ok: bool = True
    errors: list[str] = field(default_factory=list)       # first MAX_LISTED; error_count has the total
    error_count: int = 0
    warnings: list[str] = field(default_factory=list)
    images: dict[str, int] = field(default_factory=dict)  # total / train / test
    classes: int = 0
    images_per_class: dict[str, int] = field(default_factory=dict)
    parts: list[str] = field(default_factory=list)
    visibility: dict[str, float] = field(default_factory=dict)  # fraction of images with the part visible
    image_files: dict[str, int] = field(default_factory=dict)   # file kind -> count
    image_size: dict[str, int] = field(default_factory=dict)
    keypoints_outside_image: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        """A human-readable summary."""
        lines = [f"dataset: {self.root}"]
        if self.images:
            per = self.images_per_class
            lines += [f"images: {self.images['total']} (train {self.images['train']}, test {self.images['test']}) "
                      f"in {self.classes} classes ({per.get('min', 0)}..{per.get('max', 0)} per class), "
                      f"{len(self.parts)} parts"]
        if self.image_size:
            s = self.image_size
            lines.append(f"image size: width {s['min_width']}..{s['max_width']}, "
                         f"height {s['min_height']}..{s['max_height']}")
        if self.image_files:
            lines.append("image files: " + ", ".join(f"{k} {v}" for k, v in sorted(self.image_files.items())))
        if self.visibility:
            lines.append("part visibility: " + ", ".join(f"{k} {v:.2f}" for k, v in self.visibility.items()))
        lines += [f"warning: {w}" for w in self.warnings]
        lines += [f"error: {e}" for e in self.errors]
        if self.error_count > len(self.errors):
            lines.append(f"... and {self.error_count - len(self.errors)} more errors")
        count = f"{self.error_count} error{'' if self.error_count == 1 else 's'}"
        lines.append("usable" if self.ok else f"NOT usable: {count}; fix the lines named above and check again")
        return "\n".join(lines)

    def raise_if_unusable(self) -> None:
        """Raise the first error as a `DatasetError` (the CLI then exits with status 1)."""
        if not self.ok:
            more = f" (and {self.error_count - 1} more)" if self.error_count > 1 else ""
            raise DatasetError(self.errors[0] + more)


def check_dataset(root: str | Path, decode: bool = True, progress: Progress | None = None) -> CheckReport:
    """Validate annotations and images of the dataset at ``root``.

    Args:
        decode: decode every image (finds corrupt pixel data); False reads image headers only.
        progress: wraps the per-image loop, called as ``progress(iterable, total)``.
    """
    root = resolve_root(root)
    report = CheckReport(root=str(root))
    problems = Problems(root, limit=MAX_LISTED)
    try:
        ann = load_annotations(root, check_files=True, problems=problems)
    except DatasetError:
        report.ok, report.errors, report.error_count = False, problems.messages, problems.count
        return report
    _summarise(report, ann)
    _check_images(report, ann, decode, progress)
    return report


def _summarise(report: CheckReport, ann: CubAnnotations) -> None:
    n = len(ann.image_ids)
    report.images = {"total": n, "train": int(ann.is_train.sum()), "test": int(n - ann.is_train.sum())}
    report.classes = len(ann.class_names)
    counts = np.bincount(ann.labels, minlength=len(ann.class_names))
    report.images_per_class = {"min": int(counts.min()), "max": int(counts.max())}
    report.parts = list(ann.part_names)
    rates = ann.part_visible.mean(axis=0) if n else np.zeros(len(ann.part_names))
    report.visibility = {name: round(float(r), 4) for name, r in zip(ann.part_names, rates)}
    empty = [ann.class_names[k] for k in np.nonzero(counts == 0)[0]]
    if empty:
        report.warnings.append(f"{len(empty)} class(es) have no images: {', '.join(empty[:5])}")
    folders = [i for i, p in enumerate(ann.paths) if "/" in p and p.split("/", 1)[0] != ann.class_names[ann.labels[i]]]
    if folders:
        i = folders[0]
        report.warnings.append(f"{len(folders)} image(s) lie in a folder other than their class name, e.g. "
                               f"{IMAGES}:{ann.image_lines[i]} {ann.paths[i]} has class "
                               f"{ann.class_names[ann.labels[i]]}")


def _check_images(report: CheckReport, ann: CubAnnotations, decode: bool, progress: Progress | None) -> None:
    kinds: Counter[str] = Counter()
    sizes = np.zeros((len(ann.paths), 2), dtype=np.int64)
    outside: list[str] = []
    rows: Iterable[int] = range(len(ann.paths))
    if progress is not None:
        rows = progress(rows, len(ann.paths))
    for i in rows:
        path = ann.root / "images" / ann.paths[i]
        try:
            info = read_image_with_info(path)[1] if decode else probe_image(path)
        except ImageError as exc:
            report.ok = False
            report.error_count += 1
            if len(report.errors) < MAX_LISTED:
                report.errors.append(f"{ann.root / IMAGES}:{ann.image_lines[i]}: {exc}")
            continue
        kinds[_kind(info)] += 1
        sizes[i] = (info.width, info.height)
        outside += _outside(ann, i, info.width, info.height)
    report.image_files = dict(kinds)
    if len(sizes):
        report.image_size = {"min_width": int(sizes[:, 0].min()), "max_width": int(sizes[:, 0].max()),
                             "min_height": int(sizes[:, 1].min()), "max_height": int(sizes[:, 1].max())}
    odd = {k: v for k, v in kinds.items() if k != "rgb"}
    if odd:
        report.warnings.append("image files converted to RGB on reading: "
                               + ", ".join(f"{v} {k}" for k, v in sorted(odd.items())))
    report.keypoints_outside_image = len(outside)
    if outside:
        report.warnings.append(f"{len(outside)} visible keypoint(s) lie outside their image and are read as "
                               f"invisible, e.g. {'; '.join(outside[:3])}")


def _kind(info: ImageInfo) -> str:
    kind = info.mode if info.mode != "other" else f"{info.format}"
    if info.bit_depth == 16:
        kind += "-16bit"
    if info.truncated:
        kind += "-truncated"
    return kind


def _outside(ann: CubAnnotations, i: int, width: int, height: int) -> list[str]:
    if width <= 0 or height <= 0:
        return []
    uv = ann.part_xy[i] - 0.5
    bad = ann.part_visible[i] & ((uv[:, 0] < 0) | (uv[:, 0] >= width) | (uv[:, 1] < 0) | (uv[:, 1] >= height))
    return [f"{PART_LOCS} image {ann.image_ids[i]} {ann.part_names[p]} at ({ann.part_xy[i, p, 0]:g}, "
            f"{ann.part_xy[i, p, 1]:g}) in a {width}x{height} image" for p in np.nonzero(bad)[0]]
