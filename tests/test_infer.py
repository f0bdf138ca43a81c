"""Batch inference: discovery, bad files, coordinates, batching, bounded memory, journal and resume, CLI.

Library tests use ``BrightSpotRunner`` (a fake runner whose answers are known from the pixels); CLI tests
use a tiny real model saved as a checkpoint. Image files that are "good" (decoded and scored): RGB,
grayscale, RGBA, 16-bit PNG (scaled to 8 bits), CMYK JPEG (converted), EXIF-rotated JPEG (scored in
stored pixel order), a unicode file name, upper-case extensions. "Bad" (errors file): zero bytes,
truncated JPEG, text renamed .jpg, random bytes renamed .png.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from fgdeploy.backends.base import Runner, TensorSpec
from fgdeploy.errors import FgdeployError, ImageError
from fgdeploy.inference.local import EXIT_ALL_FAILED, InferOptions, discover_images, run_inference
from fgdeploy.inference.predictors import RunnerPredictor
from fgdeploy.inference.batch_records import to_records
from fgdeploy.inference.results import Journal, errors_path_for, read_results

S = 32  # fake model input size


# --------------------------------------------------------------------------------------------
# image files
def _encode(image_rgb: np.ndarray, suffix: str) -> bytes:
    image = image_rgb[..., ::-1] if image_rgb.ndim == 3 else image_rgb
    ok, buf = cv2.imencode(suffix, np.ascontiguousarray(image))
    assert ok
    return buf.tobytes()


def _jpeg_segments(jpeg: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """(marker, payload) segments before the scan, and the entropy-coded scan data."""
    pos, segments = 2, []
    while True:
        marker = jpeg[pos + 1]
        length = struct.unpack(">H", jpeg[pos + 2:pos + 4])[0]
        if marker == 0xDA:
            return segments, jpeg[pos + 2 + length:jpeg.rfind(b"\xff\xd9")]
        segments.append((marker, jpeg[pos + 4:pos + 2 + length]))
        pos += 2 + length


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def cmyk_jpeg(cmyk: np.ndarray) -> bytes:
    """A 4-component Adobe CMYK baseline JPEG, one grayscale scan per component.

    Samples are stored inverted (as Photoshop writes them), so stored (C, M, Y, K) = (R, G, B, 255)
    decodes to the colour (R, G, B).
    """
    h, w, _ = cmyk.shape
    planes = [_jpeg_segments(_encode(np.ascontiguousarray(cmyk[:, :, c]), ".jpg")) for c in range(4)]
    header = planes[0][0]
    out = b"\xff\xd8" + _segment(0xEE, b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 0))
    out += b"".join(_segment(m, p) for m, p in header if m == 0xDB)
    out += _segment(0xC0, struct.pack(">BHHB", 8, h, w, 4) + b"".join(bytes([c + 1, 0x11, 0]) for c in range(4)))
    out += b"".join(_segment(m, p) for m, p in header if m == 0xC4)
    for c, (_, scan) in enumerate(planes):
        out += _segment(0xDA, bytes([1, c + 1, 0x00, 0, 63, 0])) + scan
    return out + b"\xff\xd9"


def exif_rotated_jpeg(image_rgb: np.ndarray, orientation: int = 6) -> bytes:
    """A JPEG whose EXIF orientation tag says "rotate" (viewers show it turned; pixels stored as given)."""
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    app1 = _segment(0xE1, b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd)
    jpeg = _encode(image_rgb, ".jpg")
    return jpeg[:2] + app1 + jpeg[2:]


def _bright_spot_image(h: int, w: int, spot_xy: tuple[int, int], color=(255, 255, 255), seed: int = 0) -> np.ndarray:
    """Dark noisy image with a 5x5 bright square whose top-left pixel is ``spot_xy``."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 40, (h, w, 3), dtype=np.uint8)
    x, y = spot_xy
    image[y:y + 5, x:x + 5] = color
    return image


GOOD = {  # name -> (H, W) as stored
    "plain.jpg": (48, 64), "UPPER.JPEG": (40, 40), "sub/grey.png": (30, 50), "sub/deep/deep16.png": (36, 52),
    "cmyk.jpg": (40, 56), "exif_rotated.jpg": (40, 60), "鳥の写真_ñ.png": (33, 47), "alpha.png": (28, 44),
    "bitmap.bmp": (24, 36), "pic.webp": (32, 32), "scan.tif": (30, 30),
}
BAD = {  # name -> words the reason must contain
    "zero.jpg": "empty file", "truncated.jpg": "truncated", "truncated_end.jpg": "truncated",
    "text_renamed.jpg": "not a decodable image",
    "noise.png": "not a decodable image",
}


def make_mixed_folder(root: Path) -> Path:
    """Write every GOOD and BAD file (plus non-image files that must be skipped) under ``root``."""
    rng = np.random.default_rng(1)
    for name, (h, w) in GOOD.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        rgb = _bright_spot_image(h, w, (w // 2, h // 3), seed=len(name))
        if name == "sub/grey.png":
            data = _encode(rgb[:, :, 0], ".png")
        elif name.endswith("deep16.png"):
            data = _encode(rgb.astype(np.uint16) * 257, ".png")
        elif name == "cmyk.jpg":
            data = cmyk_jpeg(np.dstack([rgb, np.full((h, w), 255, np.uint8)]))
        elif name == "exif_rotated.jpg":
            data = exif_rotated_jpeg(rgb)
        elif name == "alpha.png":
            ok, buf = cv2.imencode(".png", np.dstack([rgb[..., ::-1], np.full((h, w), 128, np.uint8)]))
            data = buf.tobytes()
        else:
            data = _encode(rgb, Path(name).suffix.lower())
        path.write_bytes(data)
    (root / "zero.jpg").write_bytes(b"")
    full = _encode(_bright_spot_image(64, 64, (5, 5)), ".jpg")
    (root / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (root / "truncated_end.jpg").write_bytes(full[:-2])    # decodable, but the end-of-image marker is gone
    (root / "text_renamed.jpg").write_text("this is a text file, not a JPEG\n")
    (root / "noise.png").write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    (root / "notes.txt").write_text("not an image: skipped")
    (root / "sub" / "labels.csv").write_text("a,b\n")
    return root


# --------------------------------------------------------------------------------------------
# fake runner
class BrightSpotRunner(Runner):
    """Keypoints: the centre of the brightest input pixel (all parts); logits: mean of R, G, B (x10)."""

    def __init__(self, size: int = S, fixed_batch: int | None = None) -> None:
        super().__init__("bright-spot")
        self.size = size
        self.fixed_batch = fixed_batch
        self.batches: list[int] = []

    def _activate(self) -> None:
        pass

    def _deactivate(self) -> None:
        pass

    def _input_specs(self) -> dict[str, TensorSpec]:
        return {"images": TensorSpec("images", np.dtype(np.float32), (self.fixed_batch or -1, 3, self.size, self.size))}

    def _metadata(self) -> dict:
        return {"class_names": ["red", "green", "blue"], "input_size": self.size}

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = feeds["images"]
        self.batches.append(len(images))
        flat = images.sum(axis=1).reshape(len(images), -1)
        i, j = np.divmod(flat.argmax(axis=1), self.size)
        kp = np.stack([j + 0.5, i + 0.5], axis=-1).astype(np.float32)
        return {"logits": images.mean(axis=(2, 3)) * 10,
                "keypoints": np.repeat(kp[:, None, :], 15, axis=1),
                "keypoint_scores": np.repeat(flat.max(axis=1, keepdims=True) / 3, 15, axis=1)}


def _run(paths, out, runner=None, model_id="fake", **options):
    runner = runner or BrightSpotRunner()
    with runner:
        return run_inference(paths, RunnerPredictor(runner), out, class_names=["red", "green", "blue"],
                             options=InferOptions(**{"batch": 4, "workers": 2, **options}), model_id=model_id)


# --------------------------------------------------------------------------------------------
# discovery
def test_discover_images_recursive_sorted_case_insensitive_skips_non_images(tmp_path):
    make_mixed_folder(tmp_path)
    found = [os.path.relpath(p, tmp_path) for p in discover_images(tmp_path)]
    expected = sorted(os.path.join(tmp_path, n) for n in list(GOOD) + list(BAD))
    assert [os.path.join(tmp_path, p) for p in found] == expected
    assert "notes.txt" not in found and not any(p.endswith(".csv") for p in found)


def test_discover_images_accepts_single_file_glob_and_list(tmp_path):
    make_mixed_folder(tmp_path)
    assert discover_images(tmp_path / "plain.jpg") == [str(tmp_path / "plain.jpg")]
    assert discover_images(str(tmp_path / "**" / "*.png")) == sorted(
        str(tmp_path / n) for n in list(GOOD) + list(BAD) if n.endswith(".png"))
    listing = tmp_path / "list.txt"
    listing.write_text("# my picks\nsub/grey.png\n\nplain.jpg\nsub/grey.png\n")
    assert discover_images(listing) == [str(tmp_path / "sub/grey.png"), str(tmp_path / "plain.jpg")]


def test_discover_images_missing_source_names_it(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        discover_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="no images found"):
        discover_images(tmp_path / "empty")


# --------------------------------------------------------------------------------------------
# results
def test_to_records_maps_keypoints_to_original_pixels_and_sorts_topk():
    from fgdeploy.inference.local import Decoded

    logits = np.array([[0.0, 2.0, 1.0], [3.0, 3.0, -1.0]], np.float32)
    kp = np.zeros((2, 15, 2), np.float32)
    kp[:, :, 0], kp[:, :, 1] = 16.0, 8.0         # input pixels of a 32 x 32 input
    outputs = {"logits": logits, "keypoints": kp, "keypoint_scores": np.full((2, 15), 0.7, np.float32)}
    items = [Decoded("a.jpg", size_hw=(100, 300)), Decoded("b.jpg", size_hw=(64, 32))]
    recs = to_records(outputs, items, 32, 2, ["x", "y", "z"], [f"p{i}" for i in range(15)])
    assert [t["class"] for t in recs[0]["top"]] == ["y", "z"]
    assert [t["label"] for t in recs[1]["top"]] == [0, 1]        # a tie keeps argmax's choice first
    probs = np.exp(logits[0]) / np.exp(logits[0]).sum()
    assert recs[0]["top"][0]["prob"] == pytest.approx(probs[1], abs=1e-6)
    assert (recs[0]["keypoints"][3]["x"], recs[0]["keypoints"][3]["y"]) == (150.0, 25.0)
    assert (recs[1]["keypoints"][0]["x"], recs[1]["keypoints"][0]["y"]) == (16.0, 16.0)


def test_infer_mixed_folder_scores_good_reports_bad(tmp_path):
    images = make_mixed_folder(tmp_path / "imgs")
    report = _run(discover_images(images), tmp_path / "out.jsonl")
    records = {os.path.relpath(r["path"], images): r for r in read_results(tmp_path / "out.jsonl")}
    assert sorted(records) == sorted(os.path.normpath(n) for n in GOOD)
    for name, (h, w) in GOOD.items():
        rec = records[os.path.normpath(name)]
        assert (rec["height"], rec["width"]) == (h, w), name        # stored size: EXIF not applied
        # the 5x5 spot spans [w//2, w//2 + 5) x [h//3, h//3 + 5); an input pixel is w/S x h/S original pixels
        kp = rec["keypoints"][0]
        assert w // 2 - w / S <= kp["x"] <= w // 2 + 5 + w / S, (name, kp)
        assert h // 3 - h / S <= kp["y"] <= h // 3 + 5 + h / S, (name, kp)
    errors = errors_path_for(tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    assert errors[0] == "path,reason" and len(errors) == 1 + len(BAD)
    reasons = {os.path.relpath(path, images): reason for path, reason in csv.reader(errors[1:])}
    assert {name: words in reasons[name] for name, words in BAD.items()} == {name: True for name in BAD}, reasons
    assert (report.scored, report.failed, report.exit_code) == (len(GOOD), len(BAD), 0)
    assert not (tmp_path / "out.jsonl.partial.jsonl").exists()


def test_infer_cmyk_and_16bit_colours_survive_decoding(tmp_path):
    red = np.zeros((20, 20, 3), np.uint8)
    red[..., 0] = 230
    (tmp_path / "red16.png").write_bytes(_encode(red.astype(np.uint16) * 257, ".png"))
    (tmp_path / "redcmyk.jpg").write_bytes(cmyk_jpeg(np.dstack([red, np.full((20, 20), 255, np.uint8)])))
    _run(discover_images(tmp_path), tmp_path / "out.csv")
    assert [r["top"][0]["class"] for r in read_results(tmp_path / "out.csv")] == ["red", "red"]


def test_infer_last_partial_batch_and_fixed_batch_runner(tmp_path):
    for k in range(7):
        (tmp_path / f"{k}.png").write_bytes(_encode(_bright_spot_image(20, 30, (3 * k, 2), seed=k), ".png"))
    paths = discover_images(tmp_path)
    dynamic, fixed = BrightSpotRunner(), BrightSpotRunner(fixed_batch=4)
    _run(paths, tmp_path / "a.jsonl", runner=dynamic, batch=3)
    _run(paths, tmp_path / "b.jsonl", runner=fixed, batch=4)
    assert dynamic.batches == [3, 3, 1] and fixed.batches == [4, 4]   # the last fixed batch is padded
    a, b = read_results(tmp_path / "a.jsonl"), read_results(tmp_path / "b.jsonl")
    assert [r["path"] for r in a] == paths and a == b
    with pytest.raises(FgdeployError, match="pass --batch 4 or less"):   # before any image is decoded
        _run(paths, tmp_path / "c.jsonl", runner=BrightSpotRunner(fixed_batch=4), batch=8)
    assert not (tmp_path / "c.jsonl.partial.jsonl").exists()


def test_infer_csv_and_jsonl_hold_the_same_results(tmp_path):
    make_mixed_folder(tmp_path / "imgs")
    paths = discover_images(tmp_path / "imgs")
    _run(paths, tmp_path / "r.csv", topk=2)
    _run(paths, tmp_path / "r.jsonl", topk=2)
    csv_recs, json_recs = read_results(tmp_path / "r.csv"), read_results(tmp_path / "r.jsonl")
    assert len(csv_recs) == len(GOOD) and csv_recs == json_recs


def test_infer_decoded_images_in_flight_stay_bounded(tmp_path, monkeypatch):
    """While the predictor is slow, the decoders run ahead by a bounded number of images, not all of them."""
    import fgdeploy.inference.local as infer_mod

    image = _encode(_bright_spot_image(16, 16, (1, 1)), ".png")
    for k in range(120):
        (tmp_path / f"{k:03d}.png").write_bytes(image)
    decoded = []
    real_decode = infer_mod.decode_one
    monkeypatch.setattr(infer_mod, "decode_one", lambda *a, **k: decoded.append(1) or real_decode(*a, **k))
    seen_when_predicting = []

    class SlowPredictor(RunnerPredictor):
        def predict(self, prepared, count):
            time.sleep(0.2)
            seen_when_predicting.append(len(decoded) - 4 * len(seen_when_predicting))  # not yet consumed
            return super().predict(prepared, count)

    with BrightSpotRunner() as runner:
        run_inference(discover_images(tmp_path), SlowPredictor(runner), tmp_path / "o.csv",
                      options=InferOptions(batch=4, workers=2, queue_batches=2))
    bound = 4 * 4 + (4 + 4 * 2) + 4   # batches: predicting + queued (2) + held by the assembler; window; slack
    assert len(seen_when_predicting) == 30 and max(seen_when_predicting) <= bound < 120


# --------------------------------------------------------------------------------------------
# journal and resume
def test_infer_refuses_unfinished_journal_without_resume(tmp_path):
    make_mixed_folder(tmp_path / "imgs")
    Journal(tmp_path / "out.csv.partial.jsonl").start({"model": "fake", "topk": 5, "cwd": os.getcwd()})
    with pytest.raises(FgdeployError, match="--resume"):
        _run(discover_images(tmp_path / "imgs"), tmp_path / "out.csv")


def test_infer_resume_refuses_another_model(tmp_path):
    make_mixed_folder(tmp_path / "imgs")
    Journal(tmp_path / "out.csv.partial.jsonl").start({"model": "other.onnx", "topk": 5, "cwd": os.getcwd()})
    with pytest.raises(FgdeployError, match="model='other.onnx'"):
        _run(discover_images(tmp_path / "imgs"), tmp_path / "out.csv", resume=True)


def test_infer_resume_after_torn_journal_scores_each_image_once(tmp_path):
    make_mixed_folder(tmp_path / "imgs")
    paths = discover_images(tmp_path / "imgs")
    full = _run(paths, tmp_path / "ref.jsonl")
    reference = read_results(tmp_path / "ref.jsonl")
    # a killed run: header, the first 3 results, then half of the 4th line
    journal = tmp_path / "out.jsonl.partial.jsonl"
    lines = [json.dumps({"journal": 1, "model": "fake", "topk": 5, "cwd": os.getcwd()})]
    lines += [json.dumps(r, ensure_ascii=False) for r in reference[:3]]
    journal.write_text("\n".join(lines) + "\n" + json.dumps(reference[3], ensure_ascii=False)[:40], encoding="utf-8")
    runner = BrightSpotRunner()
    report = _run(paths, tmp_path / "out.jsonl", runner=runner, resume=True)
    assert report.skipped == 3 and sum(runner.batches) == full.scored - 3
    assert read_results(tmp_path / "out.jsonl") == reference


def test_infer_resume_finished_run_scores_only_new_images(tmp_path):
    make_mixed_folder(tmp_path / "imgs")
    _run(discover_images(tmp_path / "imgs"), tmp_path / "out.csv")
    (tmp_path / "imgs" / "new.png").write_bytes(_encode(_bright_spot_image(20, 20, (4, 4)), ".png"))
    runner = BrightSpotRunner()
    report = _run(discover_images(tmp_path / "imgs"), tmp_path / "out.csv", runner=runner, resume=True)
    paths = [r["path"] for r in read_results(tmp_path / "out.csv")]
    assert runner.batches == [1] and report.skipped == len(GOOD)
    assert len(paths) == len(set(paths)) == len(GOOD) + 1


def test_infer_writes_a_run_record_naming_model_options_and_counts(tmp_path):
    make_mixed_folder(tmp_path / "imgs")
    report = _run(discover_images(tmp_path / "imgs"), tmp_path / "out.csv", topk=2)
    record = json.loads((tmp_path / "out.run.json").read_text(encoding="utf-8"))
    assert record["out"] == "out.csv" and record["model"] == "fake" and record["topk"] == 2
    assert (record["scored"], record["failed"]) == (report.scored, report.failed) == (len(GOOD), len(BAD))


@pytest.mark.parametrize("change, message", [({"model_id": "retrained"}, "model='fake'"),
                                             ({"topk": 3}, "topk=5")])
def test_infer_resume_refuses_to_extend_a_finished_run_of_another_model_or_topk(tmp_path, change, message):
    make_mixed_folder(tmp_path / "imgs")
    paths = discover_images(tmp_path / "imgs")
    _run(paths, tmp_path / "out.csv")
    before = (tmp_path / "out.csv").read_bytes()
    with pytest.raises(FgdeployError, match=message):
        _run(paths, tmp_path / "out.csv", resume=True, **change)
    assert (tmp_path / "out.csv").read_bytes() == before and not (tmp_path / "out.csv.partial.jsonl").exists()


def test_infer_resume_from_another_directory_needs_the_same_one_for_relative_paths(tmp_path, monkeypatch):
    make_mixed_folder(tmp_path / "a" / "imgs")
    (tmp_path / "b").mkdir()
    out = tmp_path / "out.csv"
    monkeypatch.chdir(tmp_path / "a")
    _run(discover_images("imgs"), out)
    monkeypatch.chdir(tmp_path / "b")
    with pytest.raises(FgdeployError, match=f"run the command from {re.escape(str(tmp_path / 'a'))}"):
        _run(discover_images("../a/imgs"), out, resume=True)
    monkeypatch.chdir(tmp_path / "a")   # from the original directory it works: nothing is scored twice
    runner = BrightSpotRunner()
    report = _run(discover_images("imgs"), out, runner=runner, resume=True)
    assert report.skipped == len(GOOD) and report.scored == len(GOOD) and sum(runner.batches) == 0


def test_infer_resume_from_another_directory_with_absolute_paths_is_fine(tmp_path, monkeypatch):
    make_mixed_folder(tmp_path / "imgs")
    paths = discover_images(tmp_path / "imgs")
    _run(paths, tmp_path / "out.csv")
    monkeypatch.chdir(tmp_path / "imgs")
    report = _run(paths, tmp_path / "out.csv", resume=True)
    assert report.skipped == len(GOOD) and report.scored == len(GOOD)


@pytest.mark.parametrize("content, record, message", [
    ("", None, "no run record"),
    ("", "valid", r"out.csv:1: not a results file"),
    ("path,width,height,top1_label,top1_class,top1_prob\nx.png,10,oops,1,a,0.5\n", "valid", r"out.csv:2: not a"),
])
def test_infer_resume_refuses_an_out_it_cannot_read_and_leaves_no_journal(tmp_path, content, record, message):
    make_mixed_folder(tmp_path / "imgs")
    paths = discover_images(tmp_path / "imgs")
    out = tmp_path / "out.csv"
    if record:
        _run(paths, out)   # a valid run record, then the results file is damaged
    out.write_text(content, encoding="utf-8")
    with pytest.raises(FgdeployError, match=message):
        _run(paths, out, resume=True)
    assert not (tmp_path / "out.csv.partial.jsonl").exists()


# --------------------------------------------------------------------------------------------
# CLI with a tiny real model
def _tiny_config(size: int):
    from fgdeploy.models import load_model_config, with_backbone_options

    return with_backbone_options(load_model_config("demo"), {"widths": [4, 8, 8, 16, 16], "depth": 1}, input_size=size)


def _tiny_checkpoint(path: Path, num_classes: int = 4, size: int = 48) -> Path:
    import torch

    from fgdeploy.checkpoint import CheckpointMeta, save_checkpoint
    from fgdeploy.models import create_model

    cfg = _tiny_config(size)
    torch.manual_seed(0)
    meta = CheckpointMeta.for_config(cfg, [f"bird_{i}" for i in range(num_classes)])
    save_checkpoint(path, create_model(cfg, num_classes), meta)
    return path


def _tiny_onnx(folder: Path) -> Path:
    """``_tiny_checkpoint`` exported to ONNX in ``folder`` (tiny.pt and tiny.onnx)."""
    from fgdeploy.export.exporter import export_checkpoint

    onnx_path = folder / "tiny.onnx"
    export_checkpoint(_tiny_checkpoint(folder / "tiny.pt"), onnx_path)
    return onnx_path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return _tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")


def test_cli_infer_mixed_folder_exit_0_with_errors_file(tmp_path, tiny_ckpt):
    from fgdeploy.cli import cli

    images = make_mixed_folder(tmp_path / "imgs")
    out = tmp_path / "res.csv"
    result = CliRunner().invoke(cli, ["infer", str(images), "--model", str(tiny_ckpt), "--out", str(out),
                                      "--batch", "4", "--topk", "3", "--save-vis", str(tmp_path / "vis")])
    assert result.exit_code == 0, result.output
    records = read_results(out)
    assert len(records) == len(GOOD) and all(len(r["top"]) == 3 and len(r["keypoints"]) == 15 for r in records)
    assert all(r["top"][0]["class"].startswith("bird_") for r in records)
    assert len(errors_path_for(out).read_text(encoding="utf-8").splitlines()) == 1 + len(BAD)
    assert f"scored {len(GOOD)}/{len(GOOD) + len(BAD)}" in result.output and f"failed {len(BAD)}" in result.output
    assert len(list((tmp_path / "vis").glob("*.png"))) == len(GOOD)


def test_cli_infer_takes_a_run_folder_and_q_after_the_command_silences_info(tmp_path, tiny_ckpt):
    """Issue 17 #4 (a run folder stands for its best.pt) and #11 (-q after the subcommand, info lines silenced)."""
    import shutil

    from fgdeploy.cli import cli

    run = tmp_path / "run1"
    run.mkdir()
    shutil.copy(tiny_ckpt, run / "best.pt")
    images = make_mixed_folder(tmp_path / "imgs")
    loud = CliRunner().invoke(cli, ["infer", str(images), "--model", str(run), "-o", str(tmp_path / "a.csv")])
    assert loud.exit_code == 0, loud.output
    assert f"model {run / 'best.pt'} on torch-cpu" in loud.output
    quiet = CliRunner().invoke(cli, ["infer", str(images), "--model", str(run), "-o", str(tmp_path / "b.csv"), "-q"])
    assert quiet.exit_code == 0, quiet.output
    assert "model " not in quiet.output and f"scored {len(GOOD)}" in quiet.output   # the result stays
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(cli, ["infer", str(images), "--model", str(empty)])
    assert result.exit_code == 1 and f"{empty} is a folder without best.pt or last.pt" in result.output


def test_cli_infer_all_bad_exits_3(tmp_path, tiny_ckpt):
    from fgdeploy.cli import cli

    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.png").write_text("nope")
    result = CliRunner().invoke(cli, ["infer", str(tmp_path), "--model", str(tiny_ckpt),
                                      "--out", str(tmp_path / "r.jsonl")])
    assert result.exit_code == EXIT_ALL_FAILED, result.output
    assert read_results(tmp_path / "r.jsonl") == []


def _direct_model(backend: str, ckpt: Path, tmp_path: Path):
    """(model file for the CLI, fn(x (1, 3, S, S) float32) -> outputs) calling the model without
    fgdeploy.inference.local."""
    import torch

    from fgdeploy.checkpoint import load_checkpoint

    if backend == "torch":
        model, _ = load_checkpoint(ckpt)
        model.eval()

        def run_torch(x):
            with torch.no_grad():
                return {k: v.numpy() for k, v in model(torch.from_numpy(x)).items()}

        return ckpt, run_torch
    import onnxruntime as ort

    from fgdeploy.export.exporter import export_checkpoint

    onnx_path = tmp_path / "tiny.onnx"
    export_checkpoint(ckpt, onnx_path)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return onnx_path, lambda x: dict(zip(names, session.run(None, {"images": x})))


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_cli_infer_matches_running_the_model_directly(tmp_path, tiny_ckpt, backend):
    """Same top-1, keypoints and scores as decoding, resizing and calling the model (or session) by hand."""
    from fgdeploy.cli import cli
    from fgdeploy.data.images import read_image
    from fgdeploy.data.sample import Sample
    from fgdeploy.data.transforms import resize_to_input

    model_file, direct_fn = _direct_model(backend, tiny_ckpt, tmp_path)
    images = make_mixed_folder(tmp_path / "imgs")
    out = tmp_path / "r.jsonl"
    result = CliRunner().invoke(cli, ["infer", str(images), "--model", str(model_file), "--out", str(out),
                                      "--batch", "3"])
    assert result.exit_code == 0, result.output
    records = read_results(out)
    assert len(records) == len(GOOD)
    size = 48
    for rec in records:
        image = read_image(rec["path"])
        h, w = image.shape[:2]
        sample = Sample(image, np.zeros((15, 2), np.float32), np.zeros(15, bool),
                        np.array([0, 0, w, h], np.float32), 0, 0, rec["path"])
        x = resize_to_input(sample, size).image.transpose(2, 0, 1)[None].astype(np.float32) / 255.0
        direct = direct_fn(np.ascontiguousarray(x))
        assert rec["top"][0]["label"] == int(direct["logits"][0].argmax()), rec["path"]
        kp = direct["keypoints"][0] * np.array([w / size, h / size])
        got = np.array([[k["x"], k["y"]] for k in rec["keypoints"]])
        np.testing.assert_allclose(got, kp, atol=2e-3, err_msg=rec["path"])
        np.testing.assert_allclose([k["score"] for k in rec["keypoints"]], direct["keypoint_scores"][0],
                                   atol=1e-5)


def test_cli_infer_sigkill_then_resume_scores_each_image_exactly_once(tmp_path, tiny_ckpt):
    """A subprocess runs the CLI (slowed after every journal write), is SIGKILLed after results were
    flushed, then ``--resume`` finishes: every image appears once."""
    src = tmp_path / "imgs"
    src.mkdir()
    for k in range(24):
        (src / f"img_{k:02d}.png").write_bytes(_encode(_bright_spot_image(30, 40, (k, 3), seed=k), ".png"))
    out, journal = tmp_path / "r.jsonl", tmp_path / "r.jsonl.partial.jsonl"
    args = ["infer", str(src), "--model", str(tiny_ckpt), "--out", str(out), "--batch", "2", "--workers", "1"]
    slowed = ("import sys, time, fgdeploy.inference.local as m\n"
              "real = m.Journal.append\n"
              "def append(self, records):\n"
              "    real(self, records)\n"
              "    time.sleep(0.3)\n"
              "m.Journal.append = append\n"
              "from fgdeploy.cli import cli\n"
              f"cli({args!r})\n")
    proc = subprocess.Popen([sys.executable, "-c", slowed], cwd=tmp_path, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_text(encoding="utf-8").count("\n") >= 1 + 4:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()[1].decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    done_before = journal.read_text(encoding="utf-8").count("\n") - 1
    assert 4 <= done_before < 24 and not out.exists()
    result = CliRunner().invoke(cli_group(), args + ["--resume"])
    assert result.exit_code == 0, result.output
    paths = [Path(r["path"]).name for r in read_results(out)]
    assert sorted(paths) == [f"img_{k:02d}.png" for k in range(24)]       # each image exactly once
    assert f"({done_before} from a previous run)" in result.output
    assert not journal.exists()


def cli_group():
    from fgdeploy.cli import cli

    return cli


# --------------------------------------------------------------------------------------------
# the torch fast path (fgdeploy.inference.fastpath)
def _tiny_model(size: int = 32):
    import torch

    from fgdeploy.models import create_model

    torch.manual_seed(0)
    return create_model(_tiny_config(size), 5).eval()


def test_fastpath_compile_fullgraph_traces_coordinate_transfer_and_pads_last_batch():
    """torch.compile(fullgraph=True) raises on any graph break, so this passing means the custom op
    stays in one graph; the compiled predictor pads 3 images to the batch of 4 and returns 3 rows."""
    import copy

    import torch

    from fgdeploy.inference.fastpath import FastPathOptions, TorchFastPredictor

    model = _tiny_model()
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        ref = model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0)
    torch._dynamo.reset()
    options = FastPathOptions(compile_mode="default", compile_backend="aot_eager")
    predictor = TorchFastPredictor(copy.deepcopy(model), "cpu", options, 32, batch=4)
    prepared = predictor.prepare(images)
    out = predictor.predict(prepared, 3)
    assert tuple(prepared.shape) == (4, 32, 32, 3)
    assert {k: v.shape[0] for k, v in out.items()} == {"logits": 3, "keypoints": 3, "keypoint_scores": 3}
    for name in out:
        np.testing.assert_allclose(out[name], ref[name].numpy(), atol=1e-5, err_msg=name)


def test_fastpath_uint8_nhwc_input_equals_float_nchw_input():
    import torch

    from fgdeploy.inference.fastpath import optimize_for_inference

    fn = optimize_for_inference(_tiny_model(), "cpu")
    u8 = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
    a, b = fn(u8), fn(u8.permute(0, 3, 1, 2).float() / 255.0)
    assert a["logits"].std() > 0
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, message", [
    ({"cuda_graphs": True}, "cuda_graphs needs a CUDA device"),
    ({"compile_mode": "fastest"}, "compile mode 'fastest' is not one of"),
])
def test_fastpath_rejects_bad_options(kwargs, message):
    from fgdeploy.errors import ConfigError
    from fgdeploy.inference.fastpath import optimize_for_inference

    with pytest.raises(ConfigError, match=message):
        optimize_for_inference(_tiny_model(), "cpu", **kwargs)


_NO_CUDA = "needs a CUDA GPU"


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason=_NO_CUDA)
@pytest.mark.parametrize("compile_mode", ["none", "default"])
def test_fastpath_cuda_fp16_channels_last_graphs_match_fp32_eager(compile_mode):
    import copy

    import torch

    from fgdeploy.inference.fastpath import FastPathOptions, TorchFastPredictor

    model = _tiny_model()
    images = list(np.random.default_rng(2).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8))
    ref = TorchFastPredictor(copy.deepcopy(model), "cpu", FastPathOptions(), 32, None)
    fast = TorchFastPredictor(copy.deepcopy(model), "cuda",
                              FastPathOptions(fp16=True, channels_last=True, compile_mode=compile_mode,
                                              cuda_graphs=True), 32, batch=8)
    want = ref.predict(ref.prepare(images), 5)
    for _ in range(2):   # the second call replays the captured graph
        got = fast.predict(fast.prepare(images), 5)
    assert torch.cuda.is_available() and got["logits"].shape == (5, 5)
    np.testing.assert_allclose(got["logits"], want["logits"], atol=5e-2, rtol=5e-2)
    np.testing.assert_allclose(got["keypoint_scores"], want["keypoint_scores"], atol=2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason=_NO_CUDA)
def test_cli_infer_cuda_fast_path_scores_mixed_folder(tmp_path, tiny_ckpt):
    from fgdeploy.cli import cli

    images = make_mixed_folder(tmp_path / "imgs")
    out = tmp_path / "r.csv"
    result = CliRunner().invoke(cli, ["infer", str(images), "--model", str(tiny_ckpt), "--out", str(out),
                                      "--device", "cuda", "--fp16", "--channels-last", "--compile", "default",
                                      "--cuda-graphs", "--batch", "4"])
    assert result.exit_code == 0, result.output
    assert len(read_results(out)) == len(GOOD) and "torch-cuda-fp16-cl-default-graphs" in result.output


# --------------------------------------------------------------------------------------------
# --fast-decode: JPEGs several times the input size decoded at 1/2, 1/4 or 1/8 scale
def _photo(h: int, w: int, square: tuple[int, int, int] | None = None, seed: int = 0) -> np.ndarray:
    """A smooth 'photo' (gradients + blurred noise); ``square`` = (x, y, side) painted white."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:h, 0:w]
    base = np.stack([u * 200 / w, v * 200 / h, (u + v) * 100 / (h + w)], -1)
    noise = cv2.GaussianBlur(rng.normal(0, 25, (h, w, 3)), (0, 0), 3)
    image = np.clip(base + noise + 20, 0, 235).astype(np.uint8)
    if square:
        x, y, side = square
        image[y:y + side, x:x + side] = 255
    return image


def test_jpeg_scale_factor_picks_the_largest_reduction_that_still_covers_the_input():
    from fgdeploy.data.images import ImageInfo, jpeg_scale_factor

    rgb = ImageInfo("jpeg", "rgb", 8, 1280, 960)
    assert jpeg_scale_factor(rgb, (160, 160)) == 4     # 1/8 would be 160x120
    assert jpeg_scale_factor(rgb, (100, 100)) == 8
    assert jpeg_scale_factor(rgb, (480, 500)) == 2
    assert jpeg_scale_factor(rgb, (500, 500)) == 1     # 1/2 would be 640x480
    assert jpeg_scale_factor(ImageInfo("jpeg", "rgb", 8, 1281, 961), (121, 161)) == 8  # ceil(1281/8) = 161
    for other in (ImageInfo("jpeg", "grayscale", 8, 1280, 960), ImageInfo("jpeg", "cmyk", 8, 1280, 960),
                  ImageInfo("jpeg", "rgb", 12, 1280, 960), ImageInfo("jpeg", "rgb", 8, 1280, 960, truncated=True),
                  ImageInfo("png", "rgb", 8, 1280, 960)):
        assert jpeg_scale_factor(other, (100, 100)) == 1, other


def test_read_image_reduced_is_close_to_area_resizing_the_full_decode(tmp_path):
    from fgdeploy.data.images import read_image_reduced, read_image_with_info

    path = tmp_path / "photo.jpg"
    path.write_bytes(_encode(_photo(960, 1280), ".jpg"))
    small, info, factor = read_image_reduced(path, (160, 160))
    full, _ = read_image_with_info(path)
    assert factor == 4 and small.shape == (240, 320, 3) and (info.height, info.width) == (960, 1280)
    diff = np.abs(small.astype(int) - cv2.resize(full, (320, 240), interpolation=cv2.INTER_AREA).astype(int))
    assert diff.mean() < 2.0 and np.percentile(diff, 99) <= 8, (diff.mean(), np.percentile(diff, 99))
    rotated = tmp_path / "rotated.jpg"   # EXIF orientation 6: pixels are still taken as stored
    rotated.write_bytes(exif_rotated_jpeg(_photo(480, 1280)))
    image, info, factor = read_image_reduced(rotated, (100, 100))
    assert factor == 4 and image.shape == (120, 320, 3) and (info.height, info.width) == (480, 1280)


def test_decode_one_fast_keeps_the_file_size_and_small_or_odd_files_unchanged(tmp_path):
    from fgdeploy.inference.local import decode_one

    big = tmp_path / "big.jpg"
    big.write_bytes(_encode(_photo(600, 800), ".jpg"))
    fast, slow = decode_one(str(big), 96, fast_decode=True), decode_one(str(big), 96)
    assert fast.error is None and fast.size_hw == slow.size_hw == (600, 800)
    diff = np.abs(fast.image.astype(int) - slow.image.astype(int))
    assert 0 < diff.mean() < 2.0
    for name, data in (("small.jpg", _encode(_photo(150, 180), ".jpg")),
                       ("cmyk.jpg", cmyk_jpeg(np.random.default_rng(1).integers(0, 256, (400, 400, 4), np.uint8))),
                       ("big.png", _encode(_photo(600, 800), ".png"))):
        (tmp_path / name).write_bytes(data)
        fast, slow = decode_one(str(tmp_path / name), 96, fast_decode=True), decode_one(str(tmp_path / name), 96)
        assert fast.size_hw == slow.size_hw and np.array_equal(fast.image, slow.image), name
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(_encode(_photo(600, 800), ".jpg")[:5000])
    assert "truncated" in decode_one(str(truncated), 96, fast_decode=True).error


def test_infer_fast_decode_maps_keypoints_to_the_file_and_resume_keeps_the_mode(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for k, (x, y) in enumerate([(100, 60), (900, 500), (500, 300)]):
        (folder / f"p{k}.jpg").write_bytes(_encode(_photo(768, 1024, square=(x, y, 64), seed=k), ".jpg"))
    paths = discover_images(folder)
    fast = read_results(_run(paths, tmp_path / "fast.csv", fast_decode=True).out)
    slow = read_results(_run(paths, tmp_path / "slow.csv").out)
    for f, s, (x, y) in zip(fast, slow, [(100, 60), (900, 500), (500, 300)]):
        assert (f["width"], f["height"]) == (1024, 768)
        fx, fy = f["keypoints"][0]["x"], f["keypoints"][0]["y"]
        assert x <= fx <= x + 64 and y <= fy <= y + 64, (fx, fy, x, y)   # inside the square, in file pixels
        assert abs(fx - s["keypoints"][0]["x"]) <= 1024 / S and abs(fy - s["keypoints"][0]["y"]) <= 768 / S
    Journal(tmp_path / "again.csv.partial.jsonl").start({"model": "fake", "topk": 5, "cwd": os.getcwd()})
    with pytest.raises(FgdeployError, match="fast_decode=False but this run has fast_decode=True"):
        _run(paths, tmp_path / "again.csv", resume=True, fast_decode=True)


def test_cli_infer_fast_decode_flag_scores_the_mixed_folder(tmp_path, tiny_ckpt):
    from fgdeploy.cli import cli

    images = make_mixed_folder(tmp_path / "imgs")
    (images / "large.jpg").write_bytes(_encode(_photo(400, 520), ".jpg"))   # decoded at 1/4 for a 48 px input
    out = tmp_path / "res.jsonl"
    result = CliRunner().invoke(cli, ["infer", str(images), "--model", str(tiny_ckpt), "--out", str(out),
                                      "--batch", "4", "--fast-decode"])
    assert result.exit_code == 0, result.output
    records = {Path(r["path"]).name: r for r in read_results(out)}
    assert len(records) == len(GOOD) + 1
    assert (records["large.jpg"]["width"], records["large.jpg"]["height"]) == (520, 400)
    assert all(0 <= k["x"] <= 520 and 0 <= k["y"] <= 400 for k in records["large.jpg"]["keypoints"])


def test_default_workers_use_every_core_only_for_a_gpu_model(monkeypatch):
    from types import SimpleNamespace

    from fgdeploy.inference.predictors import RunnerPredictor, default_workers

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert default_workers(SimpleNamespace(on_gpu=True)) == 16
    assert default_workers(SimpleNamespace(on_gpu=False)) == 8
    assert default_workers(SimpleNamespace()) == 8            # a predictor that says nothing: CPU
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert default_workers(SimpleNamespace(on_gpu=True)) == 2

    class FakeRunner:
        name = "trt-fp16"
        device = "cuda:0"

        def input_specs(self):
            return {"images": SimpleNamespace(dtype="float16", shape=(8, 3, 32, 32))}

    assert RunnerPredictor(FakeRunner()).on_gpu
    FakeRunner.device = "cpu"
    assert not RunnerPredictor(FakeRunner()).on_gpu


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_open_predictor_carries_the_models_visibility_threshold(tmp_path, backend):
    """--save-vis draws parts below the model's calibrated threshold hollow: it comes from the checkpoint
    config, or from the ONNX metadata's model_config."""
    import dataclasses

    from fgdeploy.checkpoint import load_checkpoint, save_checkpoint
    from fgdeploy.inference.predictors import open_predictor

    model, meta = load_checkpoint(_tiny_checkpoint(tmp_path / "t.pt"))
    model.config = dataclasses.replace(model.config, visibility_threshold=0.37)
    meta = dataclasses.replace(meta, model_config={**meta.model_config, "visibility_threshold": 0.37})
    save_checkpoint(tmp_path / "cal.pt", model, meta)
    model_file, _ = _direct_model(backend, tmp_path / "cal.pt", tmp_path)
    with open_predictor(model_file, device="cpu") as loaded:
        assert loaded.visibility_threshold == pytest.approx(0.37)


def test_cli_infer_with_an_onnx_model_that_is_not_an_fgdeploy_export_says_so(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10),
              tmp_path / "relu.onnx")
    images = make_mixed_folder(tmp_path / "imgs")
    result = CliRunner().invoke(cli_group(), ["infer", str(images), "--model", str(tmp_path / "relu.onnx"),
                                              "--out", str(tmp_path / "r.csv")])
    assert result.exit_code == 1 and "has no 'images' input (its inputs: ['x'])" in result.output, result.output
    assert "fgdeploy export" in result.output and not (tmp_path / "r.csv.partial.jsonl").exists()


def test_runner_predictor_names_missing_outputs():
    with BrightSpotRunner() as runner:
        predictor = RunnerPredictor(runner)
        runner._infer = lambda feeds: {"logits": np.zeros((1, 3), np.float32)}
        with pytest.raises(FgdeployError, match=r"no output\(s\) \['keypoints', 'keypoint_scores'\]"):
            size = predictor.input_size
            predictor.predict(predictor.prepare([np.zeros((size, size, 3), np.uint8)]), 1)


@pytest.mark.parametrize("line", ['{"bad json', '[1, 2]'])
def test_infer_resume_with_a_damaged_journal_names_its_line(tmp_path, line):
    make_mixed_folder(tmp_path / "imgs")
    (tmp_path / "out.csv.partial.jsonl").write_text(line + "\n", encoding="utf-8")
    with pytest.raises(FgdeployError, match=r"out.csv.partial.jsonl:1: damaged journal line"):
        _run(discover_images(tmp_path / "imgs"), tmp_path / "out.csv", resume=True)


def test_infer_extending_a_finished_run_keeps_earlier_errors_and_counts_this_runs_images(tmp_path):
    make_mixed_folder(tmp_path / "imgs")
    paths = discover_images(tmp_path / "imgs")
    _run(paths, tmp_path / "out.csv")
    good_only = [p for p in paths if Path(p).name in GOOD][:2]
    report = _run(good_only, tmp_path / "out.csv", resume=True)   # a smaller list: nothing new, nothing lost
    errors = list(csv.reader(open(tmp_path / "out.errors.csv", encoding="utf-8")))[1:]
    assert len(errors) == len(BAD) and report.failed == len(BAD) and report.scored == len(GOOD)
    assert report.summary_lines()[0].startswith("scored 2/2 images (2 from a previous run), failed 0")
    assert f"({len(GOOD)} images)" in report.summary_lines()[1]


def test_cli_infer_ctrl_c_keeps_finished_batches_exits_130_and_resume_finishes(tmp_path, tiny_ckpt, monkeypatch):
    import fgdeploy.inference.results as results

    images = make_mixed_folder(tmp_path / "imgs")
    out = tmp_path / "r.csv"
    args = ["infer", str(images), "--model", str(tiny_ckpt), "--out", str(out), "--batch", "2", "--workers", "1"]
    real, calls = results.Journal.append, []

    def append_then_interrupt(self, records):
        real(self, records)
        calls.append(len(records))
        if len(calls) == 3:   # header, two batches: then Ctrl-C
            raise KeyboardInterrupt

    monkeypatch.setattr(results.Journal, "append", append_then_interrupt)
    result = CliRunner().invoke(cli_group(), args)
    saved = sum(calls[1:])
    assert result.exit_code == 130 and f"interrupted: {saved} images are saved" in result.output, result.output
    assert "--resume" in result.output and not out.exists()
    monkeypatch.setattr(results.Journal, "append", real)
    result = CliRunner().invoke(cli_group(), args + ["--resume"])
    assert result.exit_code == 0, result.output
    paths = [r["path"] for r in read_results(out)]
    assert len(paths) == len(set(paths)) == len(GOOD)   # every good image once


def test_cli_infer_topk_above_the_class_count_writes_every_class_once(tmp_path, tiny_ckpt):
    images = make_mixed_folder(tmp_path / "imgs")
    out = tmp_path / "r.csv"
    result = CliRunner().invoke(cli_group(), ["infer", str(images), "--model", str(tiny_ckpt), "--out", str(out),
                                              "--topk", "9"])
    assert result.exit_code == 0 and "--topk 9: the model has 4 classes" in result.output, result.output
    header = next(csv.reader(open(out, encoding="utf-8")))
    assert sum(c.endswith("_label") for c in header) == 4
    assert all(len(r["top"]) == 4 for r in read_results(out))
