"""A small fully convolutional backbone that trains on 2 CPU cores in minutes (demo and tests).

Plain 3x3 conv-BN-ReLU stages, each halving the grid with a stride-2 conv (padding 1, so a
grid of side h becomes ceil(h/2)). At 160 px: stem 80x80, s4 40x40, s8 20x20, s16 10x10,
s32 5x5; the s32 taps see the whole 160 px frame (receptive field 183 px). With the default
widths one such trunk costs about 0.15 GFLOP per 160 px image. BatchNorm folds into the convs
on export.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from fgdeploy.errors import ConfigError
from fgdeploy.models.backbone import Backbone, FeatureInfo
from fgdeploy.models.registry import register_backbone
from fgdeploy.models.state_dict import WeightTarget, copy_weights, read_state_dict

STAGE_NAMES: tuple[str, ...] = ("stem", "s4", "s8", "s16", "s32")


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class SmallNet(Backbone):
    """Five stages (stem, s4, s8, s16, s32) of stride-2 conv followed by ``depth - 1`` 3x3 convs.

    Args:
        out_layers: taps to return, from ``stem, s4, s8, s16, s32`` (stage outputs, after ReLU).
        widths: channels of the five stages.
        depth: convs per stage after the stem (the first one has stride 2).
    """

    def __init__(self, out_layers: Sequence[str], widths: Sequence[int] = (16, 32, 64, 128, 128), depth: int = 2):
        if len(widths) != len(STAGE_NAMES) or min(widths) < 1:
            raise ConfigError(f"small backbone: widths must be {len(STAGE_NAMES)} positive ints, got {list(widths)}")
        if depth < 1:
            raise ConfigError(f"small backbone: depth must be >= 1, got {depth}")
        self.feature_info = tuple(FeatureInfo(n, w, 2 ** (i + 1)) for i, (n, w) in enumerate(zip(STAGE_NAMES, widths)))
        super().__init__(out_layers)
        stages: list[nn.Module] = []
        in_ch = 3
        for name, width in zip(STAGE_NAMES, widths):
            convs = [_conv_bn_relu(in_ch, width, 2)]
            if name != "stem":
                convs += [_conv_bn_relu(width, width, 1) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*convs))
            in_ch = width
            if name == self.last_layer:
                break
        self.stages = nn.ModuleList(stages)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Args: x (N, 3, S, S). Returns: {tap: (N, C, ceil(S / stride), ...)} for ``out_layers``."""
        out: dict[str, torch.Tensor] = {}
        for name, stage in zip(STAGE_NAMES, self.stages):
            x = stage(x)
            if name in self.out_layers:
                out[name] = x
        return out

    def feature_hw(self, name: str, input_size: int) -> tuple[int, int]:
        """Each stride-2 conv (k3, p1) maps a side h to ceil(h / 2)."""
        self.info(name)
        h = input_size
        for stage in STAGE_NAMES:
            h = (h + 1) // 2
            if stage == name:
                break
        return h, h

    def load_pretrained(self, path: str | Path) -> None:
        """Load this backbone's own state dict (keys ``stages.*``, as saved by ``state_dict()``)."""
        own = self.state_dict(keep_vars=True)
        targets = {k: WeightTarget(v, k) for k, v in own.items() if not k.endswith("num_batches_tracked")}
        copy_weights(read_state_dict(path), targets, f"weights file {path}")


@register_backbone
def small(out_layers: Sequence[str], widths: Sequence[int] = (16, 32, 64, 128, 128), depth: int = 2) -> SmallNet:
    """The demo backbone: about 0.15 GFLOP at 160 px with the default widths."""
    return SmallNet(out_layers, tuple(widths), depth)
