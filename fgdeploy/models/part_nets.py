"""Head and body part networks (docs/method.md 7, the paper's 85.92 % system): boxes, crops, trunks, features.

``PartNets`` turns keypoints into head/body boxes (``fgdeploy.ops.part_boxes``), crops each box out of the
normalised model input by bilinear sampling (``fgdeploy.ops.part_crop``: one GridSample node in ONNX), runs
each crop through its own trunk and pools a feature (average of a map, or compact bilinear). Each part net
also has its own linear classifier, used only to fine-tune it alone on ground-truth-box crops (training
stage 0); the full model appends the part features to its classifier input instead.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fgdeploy.models.backbone import Backbone
from fgdeploy.models.config import PartNetsConfig
from fgdeploy.models.heads import FusedClassifier, HolisticHead
from fgdeploy.models.registry import create_backbone
from fgdeploy.ops.part_boxes import part_boxes
from fgdeploy.ops.part_crop import crop_box
from fgdeploy.reference.part_boxes import PART_BOX_NAMES, part_set_indices


class PartNet(nn.Module):
    """One part's trunk, feature head and own classifier.

    Args:
        cfg: the part-nets config.
        num_classes: K of the part net's own classifier.
        cbp_seed: seed of its compact bilinear projections.
        feature_scale: constant multiplying its unit-norm feature before its classifier.
    """

    def __init__(self, cfg: PartNetsConfig, num_classes: int, cbp_seed: int, feature_scale: float) -> None:
        super().__init__()
        self.crop_size = cfg.crop_size
        self.layer = cfg.source_layer
        self.trunk: Backbone = create_backbone(cfg.backbone, [self.layer], cfg.backbone_options)
        self.feature = HolisticHead(cfg.feature, self.trunk.info(self.layer).num_chs, cfg.cbp_dim, cbp_seed)
        self.classifier = FusedClassifier(0, self.feature.out_dim, num_classes, cfg.dropout, feature_scale)

    @property
    def out_dim(self) -> int:
        return self.feature.out_dim

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """Args: crops (N, 3, c, c) normalised. Returns: (N, D) part feature (not yet normalised)."""
        return self.feature(self.trunk(crops)[self.layer])


class PartNets(nn.Module):
    """The head and body nets and the box rule that feeds them.

    Args:
        cfg: the part-nets config.
        num_classes: K.
        input_size: S of the S x S model input the boxes live in.
        feature_scale: the classifier's block scale (``ClassificationConfig.feature_scale``).
    """

    def __init__(self, cfg: PartNetsConfig, num_classes: int, input_size: int, feature_scale: float = 1.0) -> None:
        super().__init__()
        self.config = cfg
        self.input_size = input_size
        self.sets = part_set_indices()
        self.nets = nn.ModuleDict({name: PartNet(cfg, num_classes, cfg.cbp_seed + k, feature_scale)
                                   for k, name in enumerate(PART_BOX_NAMES)})

    @property
    def out_dims(self) -> list[int]:
        """Feature dims, head then body."""
        return [net.out_dim for net in self.nets.values()]

    def boxes(self, keypoints: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """(N, 2, 4) head/body boxes in input pixels from (N, P, 2) keypoints and (N, P) visibility."""
        s = self.input_size
        return part_boxes(keypoints, visible, (s, s), self.sets, self.config.padding, self.config.min_side)

    def features(self, images: torch.Tensor, boxes: torch.Tensor) -> list[torch.Tensor]:
        """Part features [(N, D_head), (N, D_body)] of normalised ``images`` (N, 3, S, S) for ``boxes``."""
        return [net(crop_box(images, boxes[:, k], net.crop_size)) for k, net in enumerate(self.nets.values())]

    def logits(self, images: torch.Tensor, boxes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each part net's own class logits {"head": (N, K), "body": (N, K)} (fine-tuning alone)."""
        feats = self.features(images, boxes)
        return {name: net.classifier(None, f) for (name, net), f in zip(self.nets.items(), feats)}

    def trunk_parameters(self) -> list[nn.Parameter]:
        return [p for net in self.nets.values() for p in net.trunk.parameters()]

    def head_parameters(self) -> list[nn.Parameter]:
        """Feature heads (learned compact-bilinear projections, if any) and the part nets' own classifiers."""
        return [p for net in self.nets.values() for m in (net.feature, net.classifier) for p in m.parameters()]

    def load_pretrained(self, path: str | Path) -> None:
        """Initialise both trunks from a backbone weights file (e.g. torchvision VGG-16, by key names)."""
        for net in self.nets.values():
            net.trunk.load_pretrained(path)
