"""The backbone contract: named feature taps with known channels, stride and spatial size.

A backbone is built for a fixed set of ``out_layers`` (its taps). It stops computing after
the deepest tap, so a classification trunk that only needs ReLU(conv5_3) never runs fc6/fc7.
``feature_info`` (timm-style) describes every tap the architecture offers; heads read it to
size their convolutions, and ``feature_hw`` gives each tap's grid at a given input size
analytically, so no dry run is needed and the model stays shape-static for export.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fgdeploy.errors import ConfigError


@dataclass(frozen=True)
class FeatureInfo:
    """One tap of a backbone.

    Attributes:
        name: tap name used in configs, e.g. "conv5_3" (a ReLU output) or "pool4".
        num_chs: channels C of the tap.
        reduction: nominal stride in input pixels (the true grid may differ by ceil-mode rounding).
    """

    name: str
    num_chs: int
    reduction: int


class Backbone(nn.Module, abc.ABC):
    """Base class of every registered backbone.

    Subclasses set ``feature_info`` (all taps in forward order), build only the layers up to the
    deepest requested tap, and implement ``forward`` returning ``{tap name: (N, C, H, W)}`` for
    ``out_layers`` and ``feature_hw``.
    """

    feature_info: tuple[FeatureInfo, ...] = ()

    def __init__(self, out_layers: Sequence[str]) -> None:
        super().__init__()
        names = [f.name for f in self.feature_info]
        if not out_layers:
            raise ConfigError(f"{type(self).__name__}: no output layers requested; choose from {names}")
        unknown = [n for n in out_layers if n not in names]
        if unknown:
            raise ConfigError(f"{type(self).__name__}: unknown layer(s) {unknown}; valid layers: {names}")
        # Keep forward order, drop duplicates.
        self.out_layers: tuple[str, ...] = tuple(n for n in names if n in set(out_layers))
        self.last_layer: str = self.out_layers[-1]

    def info(self, name: str) -> FeatureInfo:
        """FeatureInfo of tap ``name`` (ConfigError listing the valid names if unknown)."""
        for f in self.feature_info:
            if f.name == name:
                return f
        raise ConfigError(
            f"{type(self).__name__}: unknown layer {name!r}; valid layers: {[f.name for f in self.feature_info]}"
        )

    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Args: x (N, 3, S, S) normalised images. Returns: {tap: (N, C, H, W)} for ``out_layers``."""

    @abc.abstractmethod
    def feature_hw(self, name: str, input_size: int) -> tuple[int, int]:
        """(H, W) of tap ``name`` for an S x S input."""

    def load_pretrained(self, path: str | Path) -> None:
        """Load weights from a local file. Backbones that support it override this.

        Raises:
            ConfigError: this backbone has no pretrained-weights format.
        """
        raise ConfigError(f"{type(self).__name__} cannot load pretrained weights ({path}); remove the weights path")
