"""Tiny model config and a tiny CUB-format dataset for the trainer tests (seconds on 2 CPU cores)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from fgdeploy.models import ModelConfig, load_model_config, with_backbone_options
from fgdeploy.train.config import StageConfig, TrainConfig

TINY_WIDTHS = [4, 8, 8, 16, 16]


def tiny_model_config(input_size: int = 64, use_parts: bool = True) -> ModelConfig:
    """The demo layout (fusion head s32..s4 -> 16x16 heatmaps at 64 px, parts from s8) with tiny widths."""
    cfg = with_backbone_options(load_model_config("demo"), {"widths": TINY_WIDTHS, "depth": 1}, input_size)
    return dataclasses.replace(cfg, name="tiny",
                               classification=dataclasses.replace(cfg.classification, use_parts=use_parts))


def tiny_partnets_config(input_size: int = 64, end_to_end: bool = True) -> ModelConfig:
    """``demo_partnets`` with tiny widths: head/body nets on 16 px crops of a 64 px input."""
    cfg = with_backbone_options(load_model_config("demo_partnets"), {"widths": TINY_WIDTHS, "depth": 1}, input_size)
    assert cfg.part_nets is not None
    return dataclasses.replace(cfg, name="tiny_partnets",
                               part_nets=dataclasses.replace(cfg.part_nets, crop_size=16, end_to_end=end_to_end))


def tiny_train_config(epochs: int = 1, **overrides) -> TrainConfig:
    stage = StageConfig(epochs=epochs, lr=0.02, head_lr=0.05)
    fields = {"batch_size": 4, "checkpoint_every": 2, **{f"stage{n}": stage for n in (0, 1, 2, 3, 4)}}
    return TrainConfig(**(fields | overrides))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """3 classes x 12 images of 64 px (about half train, half test), drawn by the synth-birds generator."""
    from fgdeploy.data.synthetic import generate_synth_birds

    root = tmp_path_factory.mktemp("tiny-synth")
    return Path(generate_synth_birds(root / "birds", classes=3, images_per_class=12, size=64, seed=0))


@pytest.fixture(autouse=True)
def _one_thread():
    """Deterministic, light CPU runs."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
