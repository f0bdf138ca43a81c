"""Tiny model configs shared by the model tests (small widths, small inputs: fast on 2 CPU cores)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import torch

from fgdeploy.models import ModelConfig, load_model_config

TINY_WIDTHS = [4, 8, 8, 16, 16]
# torchvision vgg16 `features` indices of the 13 convs.
CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def _tiny_demo(input_size: int = 64, **overrides: Any) -> ModelConfig:
    """The demo layout (fusion head s32..s4, parts from s8) with tiny widths; keyword overrides
    ``classification``/``localization`` fields via dicts and top-level fields directly."""
    base = load_model_config("demo")
    loc = dataclasses.replace(base.localization, backbone_options={"widths": TINY_WIDTHS},
                              **overrides.pop("localization", {}))
    cls = dataclasses.replace(base.classification, backbone_options={"widths": TINY_WIDTHS},
                              **overrides.pop("classification", {}))
    return dataclasses.replace(base, input_size=input_size, localization=loc, classification=cls, **overrides)


@pytest.fixture
def tiny_cfg() -> Callable[..., ModelConfig]:
    return _tiny_demo


def _random_vgg_state_dict(blocks, fc_width: int, seed: int) -> dict[str, torch.Tensor]:
    """A random state dict with torchvision VGG-16 key names (including the 1000-way classifier.6)."""
    g = torch.Generator().manual_seed(seed)
    sd, in_ch = {}, 3
    widths = [w for block in blocks for w in block]
    for idx, width in zip(CONV_INDICES, widths):
        sd[f"features.{idx}.weight"] = torch.randn(width, in_ch, 3, 3, generator=g) * (2.0 / (9 * in_ch)) ** 0.5
        sd[f"features.{idx}.bias"] = torch.randn(width, generator=g) * 0.1
        in_ch = width
    sd["classifier.0.weight"] = torch.randn(fc_width, in_ch * 49, generator=g) * (2.0 / (in_ch * 49)) ** 0.5
    sd["classifier.0.bias"] = torch.randn(fc_width, generator=g) * 0.1
    sd["classifier.3.weight"] = torch.randn(fc_width, fc_width, generator=g) * (2.0 / fc_width) ** 0.5
    sd["classifier.3.bias"] = torch.randn(fc_width, generator=g) * 0.1
    sd["classifier.6.weight"] = torch.randn(1000, fc_width, generator=g)
    sd["classifier.6.bias"] = torch.randn(1000, generator=g)
    return sd


@pytest.fixture
def random_vgg_state_dict() -> Callable[..., dict[str, torch.Tensor]]:
    return _random_vgg_state_dict


@pytest.fixture(autouse=True)
def _single_torch_thread():
    """Tiny tensors gain nothing from threads, and on a shared 2-core machine spinning threads cost a lot."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
