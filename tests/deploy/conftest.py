"""One tiny demo-architecture checkpoint on tiny synth-birds, exported once per session in fp32, fp16 and int8.

Shared by the Triton, portable-ONNX and OpenVINO tests (each export is traced once: they are the slow part).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fgdeploy.checkpoint import CheckpointMeta, save_checkpoint
from fgdeploy.data.synthetic import generate_synth_birds
from fgdeploy.export.exporter import ExportOptions, export_checkpoint, reduce_exported
from fgdeploy.export.precision import CalibrationOptions, PrecisionOptions
from fgdeploy.models import create_model, load_model_config, with_backbone_options

SIZE = 64
MAX_BATCH = 8


@pytest.fixture(scope="session")
def synth(tmp_path_factory) -> Path:
    return generate_synth_birds(tmp_path_factory.mktemp("deploy-synth") / "birds", classes=3, images_per_class=8,
                                size=SIZE, seed=0)


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory, synth) -> Path:
    from fgdeploy.data.cub import CubDataset

    classes = list(CubDataset(synth, "train").class_names)   # parity checks the model's classes are the data's
    torch.manual_seed(0)
    cfg = with_backbone_options(load_model_config("demo"), {"widths": [4, 8, 8, 16, 16]}, input_size=SIZE)
    model = create_model(cfg, len(classes)).eval()
    with torch.no_grad():  # spread the logits so top-1 is not decided by near-ties
        model.classifier.fc.weight.mul_(20.0)
    path = tmp_path_factory.mktemp("deploy-ckpt") / "tiny.pt"
    save_checkpoint(path, model, CheckpointMeta.for_config(cfg, classes, stage=4, epoch=1))
    return path


@pytest.fixture(scope="session")
def exports(ckpt, synth, tmp_path_factory) -> dict[str, Path]:
    """precision -> ONNX export of ``ckpt`` (dynamic batch up to MAX_BATCH)."""
    folder = tmp_path_factory.mktemp("deploy-onnx")
    fp32 = folder / "tiny.onnx"
    export_checkpoint(ckpt, fp32, ExportOptions(max_batch=MAX_BATCH, verify_batches=(2,)))
    fp16 = folder / "tiny_fp16.onnx"
    export_checkpoint(ckpt, fp16, ExportOptions(PrecisionOptions("fp16"), max_batch=MAX_BATCH, verify_batches=(2,)))
    int8 = folder / "tiny_int8.onnx"
    reduce_exported(fp32, int8, ExportOptions(PrecisionOptions("int8", CalibrationOptions(synth, 8)),
                                              max_batch=MAX_BATCH))
    return {"fp32": fp32, "fp16": fp16, "int8": int8}
