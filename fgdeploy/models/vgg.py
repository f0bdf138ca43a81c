"""VGG-16 cast fully convolutional, as in the paper (docs/method.md sections 2-3).

Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015; FCN form after Long, Shelhamer & Darrell, CVPR 2015.

- Max pools use ``ceil_mode=True`` (Caffe): 500 -> 250 -> 125 -> 63 -> 32 -> 16.
- fc6 is a 7x7 conv with no padding (16 - 7 + 1 = 10), fc7 a 1x1 conv: a 500x500 input
  gives the paper's 10x10x4096 fc7 map. ``fc6_padding=3`` keeps fc7 at the pool5 grid (16x16
  at 500) for FCN-8s-style fusion.
- ``features`` keeps torchvision's module indices, so a torchvision state dict
  (``features.N.weight``; ``classifier.0`` / ``classifier.3`` reshaped into fc6 / fc7) loads
  by key name from a local file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from fgdeploy.models.backbone import Backbone, FeatureInfo
from fgdeploy.models.registry import register_backbone
from fgdeploy.models.state_dict import WeightTarget, copy_weights, read_state_dict

# Conv widths per block of VGG-16 (configuration "D").
VGG16_BLOCKS: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def _bias(conv: nn.Conv2d) -> torch.Tensor:
    """The bias of a conv built with bias=True (every VGG conv)."""
    if conv.bias is None:
        raise RuntimeError(f"{conv} has no bias")
    return conv.bias


def _feature_info(blocks: Sequence[Sequence[int]], fc_width: int) -> tuple[FeatureInfo, ...]:
    infos = []
    for b, widths in enumerate(blocks):
        stride = 2**b
        infos.append(FeatureInfo(f"conv{b + 1}_{len(widths)}", widths[-1], stride))
        infos.append(FeatureInfo(f"pool{b + 1}", widths[-1], stride * 2))
    final = 2 ** len(blocks)
    infos += [FeatureInfo("fc6", fc_width, final), FeatureInfo("fc7", fc_width, final)]
    return tuple(infos)


class VGG16FCN(Backbone):
    """VGG-16 with fc6/fc7 as convolutions; taps are the block ReLU outputs, pools, fc6 and fc7.

    Args:
        out_layers: taps to return, from ``conv1_2, pool1, ..., conv5_3, pool5, fc6, fc7``.
        blocks: conv widths per block (VGG-16's by default; smaller for tests).
        fc_width: channels of fc6/fc7 (4096 for VGG-16).
        fc6_padding: padding of the 7x7 fc6 conv (0 = paper geometry; 3 keeps the pool5 grid).
        fc_dropout: dropout after fc6 and fc7 ReLUs in training, as torchvision's classifier.
    """

    def __init__(
        self,
        out_layers: Sequence[str],
        blocks: Sequence[Sequence[int]] = VGG16_BLOCKS,
        fc_width: int = 4096,
        fc6_padding: int = 0,
        fc_dropout: float = 0.5,
    ) -> None:
        self.feature_info = _feature_info(blocks, fc_width)
        super().__init__(out_layers)
        self.fc6_padding = fc6_padding
        names = [f.name for f in self.feature_info]
        needed = names[: names.index(self.last_layer) + 1]

        layers: list[nn.Module] = []
        self._taps: dict[int, str] = {}  # index in `features` -> tap name (its output)
        in_ch = 3
        for b, widths in enumerate(blocks):
            for width in widths:
                layers += [nn.Conv2d(in_ch, width, 3, padding=1), nn.ReLU(inplace=True)]
                in_ch = width
            self._taps[len(layers) - 1] = f"conv{b + 1}_{len(widths)}"
            if f"conv{b + 1}_{len(widths)}" == self.last_layer:
                break
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            self._taps[len(layers) - 1] = f"pool{b + 1}"
            if f"pool{b + 1}" == self.last_layer:
                break
        self.features = nn.Sequential(*layers)
        self.fc6: nn.Conv2d | None = None
        self.fc7: nn.Conv2d | None = None
        if "fc6" in needed:
            self.fc6 = nn.Conv2d(in_ch, fc_width, 7, padding=fc6_padding)
        if "fc7" in needed:
            self.fc7 = nn.Conv2d(fc_width, fc_width, 1)
        self.drop = nn.Dropout(fc_dropout)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's VGG init: Kaiming (fan_out) for convs, N(0, 0.01) for the fc layers.
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(_bias(m))
        for fc in (self.fc6, self.fc7):
            if fc is not None:
                nn.init.normal_(fc.weight, 0.0, 0.01)
                nn.init.zeros_(_bias(fc))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Args: x (N, 3, S, S). Returns: {tap: (N, C, H, W)} for ``out_layers``."""
        out: dict[str, torch.Tensor] = {}
        for idx, layer in enumerate(self.features):
            x = layer(x)
            name = self._taps.get(idx)
            if name is not None and name in self.out_layers:
                out[name] = x
        if self.fc6 is not None:
            x = self.drop(torch.relu(self.fc6(x)))  # (N, 4096, 10, 10) at 500 with no padding
            if "fc6" in self.out_layers:
                out["fc6"] = x
        if self.fc7 is not None:
            x = self.drop(torch.relu(self.fc7(x)))
            if "fc7" in self.out_layers:
                out["fc7"] = x
        return out

    def feature_hw(self, name: str, input_size: int) -> tuple[int, int]:
        """Grid of tap ``name``: convs keep the size, ceil-mode pools halve rounding up, fc6 is 7x7."""
        self.info(name)
        h = input_size
        for f in self.feature_info:
            if f.name.startswith("pool"):
                h = (h + 1) // 2
            elif f.name == "fc6":
                h = h + 2 * self.fc6_padding - 6
            if f.name == name:
                break
        return h, h

    def torchvision_targets(self) -> dict[str, WeightTarget]:
        """Map torchvision VGG-16 state-dict keys to this module's tensors (only the layers built)."""
        targets: dict[str, WeightTarget] = {}
        for idx, layer in enumerate(self.features):
            if isinstance(layer, nn.Conv2d):
                targets[f"features.{idx}.weight"] = WeightTarget(layer.weight, f"features.{idx}.weight")
                targets[f"features.{idx}.bias"] = WeightTarget(_bias(layer), f"features.{idx}.bias")
        for key, fc, name in (("classifier.0", self.fc6, "fc6"), ("classifier.3", self.fc7, "fc7")):
            if fc is not None:
                targets[f"{key}.weight"] = WeightTarget(fc.weight, f"{name}.weight")
                targets[f"{key}.bias"] = WeightTarget(_bias(fc), f"{name}.bias")
        return targets

    def load_pretrained(self, path: str | Path) -> None:
        """Load a torchvision-format VGG-16 state dict (e.g. vgg16-397923af.pth) from a local file.

        Raises:
            CheckpointError: the file is unreadable, or keys are missing / have other shapes (all named).
        """
        copy_weights(read_state_dict(path), self.torchvision_targets(), f"weights file {path}")


@register_backbone
def vgg16(out_layers: Sequence[str], fc6_padding: int = 0, fc_dropout: float = 0.5) -> VGG16FCN:
    """VGG-16 (138M parameters with fc6/fc7), the paper's trunk for both nets."""
    return VGG16FCN(out_layers, VGG16_BLOCKS, 4096, fc6_padding, fc_dropout)


@register_backbone
def vgg16_tiny(out_layers: Sequence[str], fc6_padding: int = 0, fc_dropout: float = 0.5) -> VGG16FCN:
    """VGG-16 layout with 1/16 of the widths (fc 64): same geometry and key names, for tests."""
    blocks = tuple(tuple(w // 16 for w in widths) for widths in VGG16_BLOCKS)
    return VGG16FCN(out_layers, blocks, 64, fc6_padding, fc_dropout)
