"""Heads of PoseNormalizedNet: keypoint scores, holistic vector, and the fused linear classifier."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fgdeploy.errors import ConfigError
from fgdeploy.models.compact_bilinear import CompactBilinearRM


class KeypointHead(nn.Module):
    """1x1 score convs with P outputs on one or more taps, fused coarse to fine (FCN style).

    With one tap this is the paper's head (score conv on fc7). With several, each coarser score map is
    upsampled bilinearly (fixed, no parameters) to the next tap's grid and added to that tap's scores,
    as FCN-16s/8s; the output lives on the last tap's grid.

    Args:
        in_channels: channels of each tap, coarse to fine.
        grids: (H, W) of each tap at the model input size, coarse to fine (non-decreasing).
        num_parts: P.
    """

    def __init__(self, in_channels: Sequence[int], grids: Sequence[tuple[int, int]], num_parts: int) -> None:
        super().__init__()
        if len(in_channels) != len(grids) or not grids:
            raise ConfigError(f"keypoint head: {len(in_channels)} channel counts for {len(grids)} grids")
        for coarse, fine in zip(grids, grids[1:]):
            if fine[0] < coarse[0] or fine[1] < coarse[1]:
                raise ConfigError(f"localization.score_layers must go coarse to fine; grid {fine} follows {coarse}")
        self.grids = tuple(tuple(g) for g in grids)
        convs = [nn.Conv2d(c, num_parts, 1) for c in in_channels]
        hh, wh = self.grids[-1]
        for i, conv in enumerate(convs):
            nn.init.normal_(conv.weight, 0.0, 0.01)
            # Prior of one positive cell per map (as focal-loss init): sigmoid(bias) = 1 / (Hh * Wh),
            # so the summed BCE starts near its floor instead of ~0.69 per cell.
            if conv.bias is not None:
                nn.init.constant_(conv.bias, -math.log(hh * wh - 1) if i == 0 and hh * wh > 1 else 0.0)
        self.score = nn.ModuleList(convs)

    @property
    def output_size(self) -> tuple[int, int]:
        """(Hh, Wh) of the heatmaps."""
        return self.grids[-1]  # type: ignore[return-value]

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Args: feats, one (N, C_t, H_t, W_t) per tap, coarse to fine. Returns: (N, P, Hh, Wh) logits."""
        out = self.score[0](feats[0])
        for conv, feat, hw in zip(self.score[1:], feats[1:], self.grids[1:]):
            out = F.interpolate(out, size=hw, mode="bilinear", align_corners=False) + conv(feat)
        return out


class HolisticHead(nn.Module):
    """Holistic image vector from one trunk map: global average pooling or compact bilinear (RM).

    Args:
        kind: "global_avg" / "fc7" (global average of the map) or "cbp" (CompactBilinearRM).
        in_channels: C of the map.
        cbp_dim: output dim of compact bilinear pooling.
        cbp_seed: seed of its fixed projections.
    """

    def __init__(self, kind: str, in_channels: int, cbp_dim: int = 5000, cbp_seed: int = 0) -> None:
        super().__init__()
        self.kind = kind
        self.cbp: nn.Module | None = None
        if kind == "cbp":
            self.cbp = CompactBilinearRM(in_channels, cbp_dim, cbp_seed)
            self.out_dim = cbp_dim
        elif kind in ("global_avg", "fc7"):
            self.out_dim = in_channels
        else:
            raise ConfigError(f"holistic head: unknown kind {kind!r}; use global_avg, fc7 or cbp")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (N, C, H, W). Returns: (N, D)."""
        if self.cbp is not None:
            return self.cbp(x)
        return x.mean(dim=(2, 3))


class FusedClassifier(nn.Module):
    """Each block L2-normalised (times ``scale``), concatenated [parts ; holistic ; extra...], dropout, one linear
    layer.

    Args:
        part_dim: P * C of the stacked part features (0 without parts).
        holistic_dim: D of the holistic vector (0 without it).
        num_classes: K.
        dropout: dropout probability on the concatenated vector in training.
        scale: constant multiplying each unit-norm block. Defaults to 1.
        extra_dims: dims of further blocks appended in order (the head and body part-net features).
    """

    def __init__(self, part_dim: int, holistic_dim: int, num_classes: int, dropout: float,
                 scale: float = 1.0, extra_dims: Sequence[int] = ()) -> None:
        super().__init__()
        if part_dim + holistic_dim < 1:
            raise ConfigError("classifier: needs part features, a holistic vector, or both")
        self.part_dim = part_dim
        self.holistic_dim = holistic_dim
        self.extra_dims = tuple(int(d) for d in extra_dims)
        self.scale = float(scale)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(part_dim + holistic_dim + sum(self.extra_dims), num_classes)
        nn.init.normal_(self.fc.weight, 0.0, 0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, parts: torch.Tensor | None, holistic: torch.Tensor | None,
                extra: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """Args: parts (N, P, C) or None, holistic (N, D) or None, extra: one (N, D_i) per ``extra_dims``.
        Returns: (N, K) logits."""
        # Norms in float32: in fp16 the sum of squares of a 7,680-d block overflows (inf -> NaN logits, seen on H200).
        if len(extra) != len(self.extra_dims):
            raise ValueError(f"classifier: {len(extra)} extra feature blocks given, {len(self.extra_dims)} expected")
        blocks = []
        if parts is not None:
            blocks.append(_unit_norm(parts.flatten(1)))  # (N, P*C) unit norm (zero if all parts hidden)
        if holistic is not None:
            blocks.append(_unit_norm(holistic))
        blocks.extend(_unit_norm(x) for x in extra)
        x = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)
        if self.scale != 1.0:
            x = x * self.scale
        return self.fc(self.drop(x))


def _unit_norm(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise rows of (N, D) in float32, returned in x's dtype."""
    return F.normalize(x.float(), dim=1).to(x.dtype)
