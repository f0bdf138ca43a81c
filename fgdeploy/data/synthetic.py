"""synth-birds: write a complete CUB-200-2011-format dataset of drawn birds (no download needed).

Image ``i`` (0-based, ordered by class) depends only on (seed, i), so generation can run in parallel
and resume: an interrupted run continues where it stopped (images already on disk are kept and their
annotations recomputed without drawing). Every file is written atomically. See `synth_classes` for how
classes are designed and `synth_bird` for the bird model and keypoint visibility.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from fgdeploy.data.cub_format import CubAnnotations, write_annotations
from fgdeploy.data.images import encode_image
from fgdeploy.data.synth_classes import MAX_CLASSES, SLOTS, SynthClass, design_classes
from fgdeploy.data.synth_scene import make_scene
from fgdeploy.errors import ConfigError, DatasetError
from fgdeploy.fileio import atomic_write_bytes, atomic_write_text
from fgdeploy.tensors import PART_NAMES

logger = logging.getLogger(__name__)

T = TypeVar("T")
Progress = Callable[[Iterable[Any], int], Iterable[Any]]
MANIFEST = "synth_birds.json"
PREVIEW = "preview.png"
GENERATOR_VERSION = 1
JPEG_QUALITY = 90


@dataclass(frozen=True)
class SynthConfig:
    """What a synth-birds dataset is made from; equal configs give identical files."""

    classes: int = 20            # 1..200; class k is the same bird design in every dataset
    images_per_class: int = 30   # about half train, half test
    size: int = 256              # long side of every image in pixels (short side 66-100 % of it)
    seed: int = 0                # decides poses, colours, backgrounds

    def validate(self) -> None:
        """Raises ConfigError naming the bad value."""
        if not 1 <= self.classes <= MAX_CLASSES:
            raise ConfigError(f"classes must be 1..{MAX_CLASSES}, got {self.classes}")
        if self.images_per_class < 1:
            raise ConfigError(f"images_per_class must be >= 1, got {self.images_per_class}")
        if not 64 <= self.size <= 4096:
            raise ConfigError(f"size must be 64..4096 pixels, got {self.size} (birds need room for their details)")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")


def image_path(cls: SynthClass, index_in_class: int, image_id: int) -> str:
    """CUB-style relative path: ``001.Synth_bird_01a/Synth_Bird_01a_0001_1.jpg``."""
    tag = cls.name.split("Synth_bird_", 1)[-1]
    return f"{cls.name}/Synth_Bird_{tag}_{index_in_class + 1:04d}_{image_id}.jpg"


def generate_synth_birds(out_dir: str | Path, classes: int = 20, images_per_class: int = 30, size: int = 256,
                         seed: int = 0, preview: bool = False, progress: Progress | None = None,
                         workers: int = 1) -> Path:
    """Write a synth-birds dataset in CUB-200-2011 layout under ``out_dir``.

    Args:
        out_dir: a new or empty folder, or one holding an unfinished run with the same settings.
        classes, images_per_class, size, seed: see `SynthConfig`.
        preview: also write ``preview.png``, a contact sheet with keypoints drawn.
        progress: wraps the image iterator to show progress, called as ``progress(iterable, total)``.
        workers: processes drawing images (results do not depend on it).

    Returns:
        The dataset root (``out_dir``).

    Raises:
        ConfigError: a setting is out of range.
        DatasetError: ``out_dir`` holds other files or a dataset made with other settings.
    """
    config = SynthConfig(classes, images_per_class, size, seed)
    config.validate()
    root = Path(out_dir)
    class_list = design_classes(classes)
    _claim_folder(root, config)
    _write_manifest(root, config, class_list, complete=False)
    total = classes * images_per_class
    jobs = [(config, class_list[i // images_per_class], i, str(root)) for i in range(total)]
    results = _run(jobs, workers)
    if progress is not None:
        results = iter(progress(results, total))
    rows = sorted(results, key=lambda r: r[0])
    write_annotations(_annotations(root, config, class_list, rows))
    _write_manifest(root, config, class_list, complete=True)
    logger.debug("wrote %d synth-birds images (%d classes) to %s", total, classes, root)
    if preview:
        from fgdeploy.data.preview import write_preview

        write_preview(root, root / PREVIEW)
    return root


Row = tuple[int, np.ndarray, np.ndarray, np.ndarray]  # (index, keypoints (P, 2), visible (P,), box (4,))


def _make_image(job: tuple[SynthConfig, SynthClass, int, str]) -> Row:
    """Draw and save image ``index`` unless it is already on disk; return its annotation."""
    config, cls, index, root = job
    target = Path(root) / "images" / image_path(cls, index % config.images_per_class, index + 1)
    exists = target.is_file()
    image, ann = make_scene(cls, config.size, config.seed, index, draw=not exists)
    if image is not None:
        atomic_write_bytes(target, encode_image(image, ".jpg", JPEG_QUALITY))
    return index, ann.keypoints, ann.visible, ann.bbox


def _run(jobs: list[tuple[SynthConfig, SynthClass, int, str]], workers: int) -> Iterator[Row]:
    if workers <= 1:
        yield from map(_make_image, jobs)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:  # spawn: safe even if torch is loaded
        yield from pool.imap_unordered(_make_image, jobs, chunksize=8)


def _annotations(root: Path, config: SynthConfig, class_list: list[SynthClass], rows: list[Row]
                 ) -> CubAnnotations:
    n, per = len(rows), config.images_per_class
    labels = np.arange(n) // per
    keypoints = np.stack([r[1] for r in rows])
    visible = np.stack([r[2] for r in rows])
    boxes = np.stack([r[3] for r in rows])
    return CubAnnotations(
        root=root, image_ids=np.arange(1, n + 1), labels=labels,
        paths=[image_path(class_list[labels[i]], i % per, i + 1) for i in range(n)],
        is_train=(np.arange(n) % per) % 2 == 0,
        boxes=np.stack([boxes[:, 0] + 1, boxes[:, 1] + 1, boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1),
        part_xy=np.where(visible[..., None], keypoints + 0.5, 0.0), part_visible=visible,
        class_names=[c.name for c in class_list], part_names=list(PART_NAMES), image_lines=list(range(1, n + 1)))


def _claim_folder(root: Path, config: SynthConfig) -> None:
    """Accept a new/empty folder or an earlier run with the same settings; refuse anything else."""
    if not root.exists():
        return
    if not root.is_dir():
        raise DatasetError(f"{root} exists and is not a folder; choose a new output folder")
    manifest = root / MANIFEST
    if manifest.is_file():
        try:
            old = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{manifest}: unreadable ({exc}); delete the folder and generate again") from exc
        mine = _settings(config)
        theirs = {k: old.get(k) for k in mine}
        if theirs != mine:
            raise DatasetError(f"{root} holds a synth-birds set made with {theirs}, not {mine}; use another "
                               "folder or delete this one")
        logger.info("%s: resuming an earlier run with the same settings", root)
        return
    if any(root.iterdir()):
        raise DatasetError(f"{root} is not empty and holds no {MANIFEST}; choose a new or empty folder so no "
                           "files are overwritten")


def _settings(config: SynthConfig) -> dict[str, Any]:
    return {"generator_version": GENERATOR_VERSION, **asdict(config)}


def _write_manifest(root: Path, config: SynthConfig, class_list: list[SynthClass], complete: bool) -> None:
    data = {
        "generator": "fgdeploy synth-birds", **_settings(config), "complete": complete,
        "images": config.classes * config.images_per_class,
        "classes_detail": [{"name": c.name, "beak_shape": c.beak_shape, **dict(zip(SLOTS, c.colours))}
                           for c in class_list],
    }
    atomic_write_text(root / MANIFEST, json.dumps(data, indent=1) + "\n")
