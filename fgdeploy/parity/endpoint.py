"""Parity of a live endpoint (`fgdeploy parity --ref KIND:MODEL --test http://HOST:PORT`).

The check a user runs after deploying: every image file is sent, as its bytes, to the server, and also scored
here by local `infer`'s path (its decoder, resize, model runner and per-batch records) with the --ref model.
Both sides give records in the image's own pixels, asked with every class's probability (``topk`` = the class
count); they are compared at task level by parity's own code and thresholds:

- outputs: class probabilities and keypoint scores within the precision's tolerance; keypoints and head/body
  boxes (image pixels) reported;
- task: top-1 agreement (a flip between classes the reference scores within the tolerance is a near-tie, the
  margin taken from log-probabilities, i.e. logit differences), keypoints in the same heatmap cell (mapped back to
  input pixels: u = x S / W), head/body box IoU, accuracy and PCK when a dataset gives ground truth;
- the same files refused: a file local `infer` cannot use must get a 4xx, and a file it scores must be answered.

Requests go out ``concurrency`` at a time, so the server batches them (an answer must not depend on its batch).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fgdeploy.errors import FgdeployError
from fgdeploy.inference.batch_records import BOX_KEYS
from fgdeploy.parity.compare import build_checks, compare_output, compare_tasks
from fgdeploy.parity.report import Check, GroundTruth, ParityReport, default_thresholds
from fgdeploy.parity.run import ParityConfig, RunnerFactory, loosest_precision, with_ref_heatmaps
from fgdeploy.parity.sources import ImageSource, spread_picks
from fgdeploy.tensors import OUTPUT_KEYPOINT_SCORES, OUTPUT_KEYPOINTS, OUTPUT_LOGITS, OUTPUT_PART_BOXES

logger = logging.getLogger(__name__)

PROBABILITIES = "class probabilities"
KEYPOINTS_IMAGE_PX = "keypoints (image px)"
BOXES_IMAGE_PX = "part_boxes (image px)"
MIN_PROBABILITY = 1e-12   # log of a probability the record rounded to 0


@dataclass
class ImageFiles:
    """The files to compare on, with optional ground truth (CUB-format: original pixels; labels, ids)."""

    paths: list[str]
    description: str
    labels: np.ndarray | None = None
    image_ids: np.ndarray | None = None
    keypoints_xy: np.ndarray | None = None   # (N, P, 2) CUB part x, y (1-based pixel centres)
    visible: np.ndarray | None = None
    boxes_xywh: np.ndarray | None = None     # (N, 4) CUB x, y, width, height
    class_names: list[str] = field(default_factory=list)


def dataset_files(root: str | Path, split: str, n: int | None) -> ImageFiles:
    """``n`` files of a CUB-format dataset split, spread evenly (as ``DatasetImages`` picks them), with truth."""
    from fgdeploy.data.cub import CubDataset

    dataset = CubDataset(root, split)  # type: ignore[arg-type]
    total = len(dataset)
    picks = spread_picks(total, n)
    ann = dataset.annotations
    row_of = {int(image_id): row for row, image_id in enumerate(ann.image_ids)}
    rows = np.array([row_of[dataset.image_ids[int(i)]] for i in picks], np.int64)
    return ImageFiles([str(dataset.image_path(int(i))) for i in picks],
                      f"{len(picks)} of {total} {split} images of {dataset.root}", labels=ann.labels[rows],
                      image_ids=ann.image_ids[rows], keypoints_xy=ann.part_xy[rows], visible=ann.part_visible[rows],
                      boxes_xywh=ann.boxes[rows], class_names=list(dataset.class_names))


def folder_files(source: str, n: int | None) -> ImageFiles:
    """The images `infer` would score from ``source`` (folder, file, glob, list), the first ``n``."""
    from fgdeploy.inference.local import discover_images

    paths = discover_images(source)
    picked = paths[:n] if n else paths
    return ImageFiles(picked, f"{len(picked)} of {len(paths)} images of {source}")


@dataclass
class EndpointParity:
    """A parity report of an endpoint, plus the files behind its image indices and notes for the user."""

    report: ParityReport
    paths: list[str]                       # report index i -> file (the files both sides scored)
    refused: list[tuple[str, str, str]]    # (file, local reason or "", endpoint's error or "") where they differ
    notes: list[str]


class FileImages(ImageSource):
    """Files decoded and resized as local `infer` does (model input, float in [0, 1]): the reference's heatmaps
    for near-tie checks are computed on exactly what its records came from."""

    def __init__(self, paths: Sequence[str], size: int) -> None:
        self.paths, self.size = list(paths), size
        self.truth = GroundTruth()
        self.description = f"{len(self.paths)} files"

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, indices: Sequence[int]) -> np.ndarray:
        from fgdeploy.inference.local import decode_one

        images = []
        for i in indices:
            decoded = decode_one(self.paths[int(i)], self.size)
            if decoded.image is None:
                raise FgdeployError(f"{decoded.path}: {decoded.error}")
            images.append(decoded.image)
        batch = np.stack(images).transpose(0, 3, 1, 2).astype(np.float32)
        return batch / np.float32(255.0)


def run_endpoint_parity(ref: tuple[str, str], url: str, files: ImageFiles, *, device: str = "auto",
                        ref_fp16: bool = False, ref_runner: RunnerFactory | None = None,
                        config: ParityConfig | None = None, concurrency: int = 8, timeout_s: float = 60.0,
                        progress: Callable[[int], None] | None = None) -> EndpointParity:
    """Send ``files`` to the server at ``url`` and compare its answers with local `infer`'s on the same files.

    Args:
        ref: (backend, model path) of the reference, scored with ``open_predictor`` as `infer` does.
        url: http://HOST:PORT of a running `fgdeploy serve`.
        files: the image files (and optional ground truth).
        device, ref_fp16: the reference's device and torch precision.
        ref_runner: the reference as a runner factory (``debug -> Runner``), used for its heatmaps where a
            keypoint moved (near-tie check); None: no near-tie check for keypoints.
        config: batch size, precision, tolerances.
        concurrency: requests in flight at once.
        timeout_s: per request.
        progress: called with the number of files done (each side counts).

    Raises:
        FgdeployError: the server cannot be reached, or serves a model of another input size or classes.
    """
    from fgdeploy.inference.predictors import open_predictor
    from fgdeploy.serving.api import model_id
    from fgdeploy.serving.client import EndpointClient

    config = config or ParityConfig()
    client = EndpointClient(url, timeout_s)
    try:
        served = client.model()
    except OSError as exc:
        raise FgdeployError(f"cannot reach {url} ({exc}); is `fgdeploy serve` running there?") from None
    with open_predictor(ref[1], ref[0], device=device, fp16=ref_fp16, batch=config.batch_size) as loaded:
        size = int(loaded.predictor.input_size)
        ref_id = model_id(loaded.name, loaded.recorded or {}, ref[1], ref_fp16)
        notes = _check_same_model(loaded, ref[1], ref_id["source_sha256"], served, size)
        if files.class_names and loaded.class_names and files.class_names != list(loaded.class_names):
            raise FgdeployError(f"{files.description}: the dataset's {len(files.class_names)} classes differ from the "
                                f"{len(loaded.class_names)} the model was trained on; check parity on the same dataset")
        classes = len(served.get("class_names") or loaded.class_names)
        ref_entries = _local_entries(loaded, files.paths, size, classes, config.batch_size, progress)
        ref_name = loaded.name
        heatmap_size = loaded.heatmap_size or served.get("heatmap_size")
    test_entries = _endpoint_entries(client, files.paths, classes, concurrency, progress)

    both = [i for i, (r, t) in enumerate(zip(ref_entries, test_entries)) if "error" not in r and "error" not in t]
    refused = [(files.paths[i], r.get("error", ""), t.get("error", "")) for i, (r, t)
               in enumerate(zip(ref_entries, test_entries)) if ("error" in r) != ("error" in t)]
    refused_alike = sum("error" in r and "error" in t for r, t in zip(ref_entries, test_entries))
    if not both:
        raise FgdeployError(f"no file was scored by both sides ({len(files.paths)} sent; {refused_alike} refused by "
                            f"both, {len(refused)} by one): nothing to compare")
    precision = config.precision or loosest_precision(ref_id, served.get("model") or {})
    thresholds = config.thresholds or default_thresholds(precision, config.atol, config.rtol)
    ref_out = _arrays([ref_entries[i] for i in both], size, classes)
    test_out = _arrays([test_entries[i] for i in both], size, classes)
    outputs = [compare_output(PROBABILITIES, ref_out["probs"], test_out["probs"], thresholds.tolerance),
               compare_output(OUTPUT_KEYPOINT_SCORES, ref_out[OUTPUT_KEYPOINT_SCORES],
                              test_out[OUTPUT_KEYPOINT_SCORES], thresholds.tolerance),
               compare_output(KEYPOINTS_IMAGE_PX, ref_out["keypoints_px"], test_out["keypoints_px"],
                              thresholds.tolerance, judged=False)]
    if (OUTPUT_PART_BOXES in ref_out) != (OUTPUT_PART_BOXES in test_out):
        raise FgdeployError(f"{'--ref' if OUTPUT_PART_BOXES in ref_out else 'the endpoint'} answers with head/body "
                            "boxes and the other does not: they are not the same model")
    if OUTPUT_PART_BOXES in ref_out:
        outputs.append(compare_output(BOXES_IMAGE_PX, ref_out[OUTPUT_PART_BOXES], test_out[OUTPUT_PART_BOXES],
                                      thresholds.tolerance, judged=False))
    part_names = [k["part"] for k in ref_entries[both[0]]["keypoints"]]
    heatmap_hw = (int(heatmap_size[0]), int(heatmap_size[1])) if heatmap_size else None
    ref_task = {k: ref_out[k] for k in (OUTPUT_LOGITS, OUTPUT_KEYPOINTS, OUTPUT_KEYPOINT_SCORES, OUTPUT_PART_BOXES)
                if k in ref_out}
    test_task = {k: test_out[k] for k in ref_task}
    good_paths = [files.paths[i] for i in both]
    if heatmap_hw is not None and ref_runner is not None:
        ref_task = with_ref_heatmaps(ref_runner, ref_task, test_task, FileImages(good_paths, size), heatmap_hw,
                                     size, config.batch_size)
    if heatmap_hw is None:   # no heatmap grid to compare cells on: classes only (keypoints are still reported)
        ref_task, test_task = {OUTPUT_LOGITS: ref_task[OUTPUT_LOGITS]}, {OUTPUT_LOGITS: test_task[OUTPUT_LOGITS]}
    truth = _truth(files, both, ref_entries, size)
    task = compare_tasks(ref_task, test_task, input_size=size, heatmap_hw=heatmap_hw or (1, 1),
                         part_names=part_names, truth=truth, tie_tolerance=thresholds.tolerance,
                         box_iou=thresholds.box_iou)
    checks = build_checks(outputs, task, None, thresholds)
    checks.append(Check(f"the same files refused ({refused_alike} by both; {len(refused)} by one side only)",
                        float(len(refused)), 0.0, "<=", not refused))
    served_name = (served.get("model") or {}).get("name", "?")
    report = ParityReport(ref=f"{ref_name} (local infer path)", test=f"{url} ({served_name})", precision=precision,
                          n_images=len(both), data=files.description, thresholds=dataclasses.asdict(thresholds),
                          outputs=outputs, task=task, batch=None, checks=checks)
    return EndpointParity(report, good_paths, refused, notes)


def _check_same_model(loaded: Any, ref_file: str, ref_source: str, served: dict[str, Any], size: int) -> list[str]:
    """Refuse an endpoint whose model takes another input size or has other classes; notes when it records
    another source checkpoint than --ref's ``ref_source`` sha256 (a different model: parity will likely fail, and
    this says why)."""
    if int(served.get("input_size") or 0) != size:
        raise FgdeployError(f"the endpoint's model takes {served.get('input_size')} px images, --ref {size} px: not "
                            "the same model; serve the export of --ref, or compare with the model the server runs")
    names, ours = list(served.get("class_names") or []), list(loaded.class_names)
    if ours and names and names != ours:
        other = "other class names" if len(names) == len(ours) else f"{len(names)} classes, --ref {len(ours)}"
        raise FgdeployError(f"the endpoint's model has {other}: not the same model; serve the export of --ref")
    served_source = str((served.get("model") or {}).get("source_sha256") or "")
    if ref_source and served_source and ref_source != served_source:
        return [f"the endpoint serves a model made from checkpoint sha256 {served_source[:12]}, --ref {ref_file} comes "
                f"from {ref_source[:12]}: they are different trainings, so their answers need not agree"]
    return []


def _local_entries(loaded: Any, paths: Sequence[str], size: int, topk: int, batch: int,
                   progress: Callable[[int], None] | None) -> list[dict[str, Any]]:
    """Local `infer`'s records (or failures) for ``paths``: its decoder and resize, its per-batch code."""
    from fgdeploy.inference.batch_records import RecordMaker
    from fgdeploy.inference.local import decode_one, single_threaded_cv2

    maker = RecordMaker(size, topk, loaded.class_names, loaded.part_names)
    entries: list[dict[str, Any]] = []
    with ThreadPoolExecutor(4, thread_name_prefix="fgdeploy-parity-decode") as pool, single_threaded_cv2():
        for start in range(0, len(paths), batch):
            items = list(pool.map(lambda p: decode_one(p, size), paths[start:start + batch]))
            entries += maker.score(loaded.predictor, items)
            if progress is not None:
                progress(len(items))
    return entries


def _endpoint_entries(client: Any, paths: Sequence[str], topk: int, concurrency: int,
                      progress: Callable[[int], None] | None) -> list[dict[str, Any]]:
    """The endpoint's answers for ``paths`` (each file's bytes as the body), or ``{"path", "error"}``."""
    from fgdeploy.serving.client import EndpointError

    def send(path: str) -> dict[str, Any]:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            return {"path": path, "error": f"not sent: cannot read the file ({exc.strerror or exc})"}
        try:
            entry = {"path": path, **client.predict(data, topk=topk)}
        except EndpointError as exc:
            entry = {"path": path, "error": str(exc), "status": exc.status}
        except OSError as exc:
            entry = {"path": path, "error": f"no answer ({type(exc).__name__}: {exc})"}
        if progress is not None:
            progress(1)
        return entry

    with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="fgdeploy-parity-send") as pool:
        return list(pool.map(send, paths))


def _arrays(entries: Sequence[dict[str, Any]], size: int, classes: int) -> dict[str, np.ndarray]:
    """Records -> arrays: probabilities by class (N, K), log-probabilities as logits, keypoints in image and in
    model-input pixels, scores, boxes (image pixels; IoU does not change under the per-axis scale)."""
    n, parts = len(entries), len(entries[0]["keypoints"])
    probs = np.zeros((n, classes))
    kp = np.zeros((n, parts, 2))
    scores = np.zeros((n, parts))
    scale = np.zeros((n, 1, 2))
    for i, e in enumerate(entries):
        for t in e["top"]:
            probs[i, int(t["label"])] = float(t["prob"])
        kp[i] = [[k["x"], k["y"]] for k in e["keypoints"]]
        scores[i] = [k["score"] for k in e["keypoints"]]
        scale[i, 0] = (size / e["width"], size / e["height"])
    out = {"probs": probs, OUTPUT_LOGITS: np.log(np.maximum(probs, MIN_PROBABILITY)), "keypoints_px": kp,
           OUTPUT_KEYPOINTS: kp * scale, OUTPUT_KEYPOINT_SCORES: scores}
    if all("boxes" in e for e in entries):
        out[OUTPUT_PART_BOXES] = np.array([[[b[k] for k in BOX_KEYS] for b in e["boxes"]]
                                           for e in entries], np.float64)
    return out


def _truth(files: ImageFiles, rows: Sequence[int], entries: Sequence[dict[str, Any]], size: int) -> GroundTruth:
    """Ground truth of the compared files in original pixels, with each image's resize as its affine."""
    if files.labels is None:
        return GroundTruth()
    from fgdeploy.data.cub import box_from_cub, keypoints_from_cub

    idx = np.asarray(rows, np.int64)
    kps, vis, boxes, affines = [], [], [], []
    for i in rows:
        h, w = entries[i]["height"], entries[i]["width"]
        uv, v = keypoints_from_cub(files.keypoints_xy[i], files.visible[i], h, w)  # type: ignore[index]
        kps.append(uv)
        vis.append(v)
        boxes.append(box_from_cub(files.boxes_xywh[i]))  # type: ignore[index]
        affines.append([[size / w, 0.0, 0.0], [0.0, size / h, 0.0]])
    return GroundTruth(labels=np.asarray(files.labels)[idx], keypoints=np.stack(kps), visible=np.stack(vis),
                       bbox=np.stack(boxes), affine=np.asarray(affines, np.float64),
                       image_ids=None if files.image_ids is None else np.asarray(files.image_ids)[idx])
