"""PoseNormalizedNet: keypoint heatmaps -> coordinate transfer -> [parts ; holistic] -> FC (docs/method.md 1-6).

Paper default: two separate trunks, a localization net (backbone + 1x1 score convs, P heatmaps) and a
classification net whose ``transfer_layer`` map is pooled around each keypoint by the custom op
``torch.ops.fgdeploy.coordinate_transfer`` (one graph node). ``shared_backbone: true`` uses one trunk
for both. Mean/std normalisation is a buffer inside the model, so exported models take RGB in [0, 1].
The forward has no data-dependent Python control flow: it traces and exports.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from fgdeploy.errors import ConfigError
from fgdeploy.models.backbone import Backbone
from fgdeploy.models.config import ModelConfig
from fgdeploy.models.heads import FusedClassifier, HolisticHead, KeypointHead
from fgdeploy.models.keypoints import decode_keypoints
from fgdeploy.models.part_nets import PartNets
from fgdeploy.models.registry import create_backbone
from fgdeploy.ops import coordinate_transfer
from fgdeploy.tensors import (
    OUTPUT_HEATMAPS, OUTPUT_KEYPOINT_SCORES, OUTPUT_KEYPOINTS, OUTPUT_LOGITS, OUTPUT_PART_BOXES,
)

logger = logging.getLogger(__name__)

PARAMETER_GROUPS = ("keypoint_score", "localization", "classification", "classifier", "part_nets",
                    "part_classifier")


class PoseNormalizedNet(nn.Module):
    """The full model for one ``ModelConfig`` and ``num_classes``.

    Attributes:
        loc_net: localization trunk (also the classification trunk when ``shared_backbone``).
        cls_net: classification trunk, or None when shared.
        keypoint_head: 1x1 score conv(s) -> (N, P, Hh, Wh) logits.
        holistic: holistic branch, or None for holistic "none".
        part_nets: head/body part networks (docs/method.md 7), or None without ``part_nets`` in the config.
        classifier: L2 per block, concat, dropout, FC.
    """

    mean: torch.Tensor  # (1, 3, 1, 1) buffer
    std: torch.Tensor  # (1, 3, 1, 1) buffer

    def __init__(self, cfg: ModelConfig, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        self.config = cfg
        loc, cls = cfg.localization, cfg.classification
        self._score_layers = tuple(loc.score_layers)
        self._transfer_layer = cls.transfer_layer if cls.use_parts else None
        self._holistic_layer = cls.holistic_source
        cls_layers = [n for n in (self._transfer_layer, self._holistic_layer) if n is not None]

        if cfg.shared_backbone:
            self.loc_net: Backbone = create_backbone(loc.backbone, [*self._score_layers, *cls_layers],
                                                     loc.backbone_options)
            self.cls_net: Backbone | None = None
        else:
            self.loc_net = create_backbone(loc.backbone, self._score_layers, loc.backbone_options)
            self.cls_net = create_backbone(cls.backbone, cls_layers, cls.backbone_options)
        trunk = self.classification_trunk

        size = cfg.input_size
        self.keypoint_head = KeypointHead(
            [self.loc_net.info(n).num_chs for n in self._score_layers],
            [self.loc_net.feature_hw(n, size) for n in self._score_layers],
            cfg.num_parts,
        )
        self.holistic: HolisticHead | None = None
        if self._holistic_layer is not None:
            self.holistic = HolisticHead(cls.holistic, trunk.info(self._holistic_layer).num_chs,
                                         cls.cbp_dim, cls.cbp_seed)
        part_dim = cfg.num_parts * trunk.info(self._transfer_layer).num_chs if self._transfer_layer else 0
        self.part_nets: PartNets | None = None
        if cfg.part_nets is not None:
            self.part_nets = PartNets(cfg.part_nets, num_classes, size, cls.feature_scale)
        self.classifier = FusedClassifier(part_dim, self.holistic.out_dim if self.holistic else 0,
                                          num_classes, cls.dropout, cls.feature_scale,
                                          self.part_nets.out_dims if self.part_nets is not None else ())
        self.register_buffer("mean", torch.tensor(cfg.mean, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.std, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.num_classes = num_classes

    # --- shapes and parameter groups --------------------------------------------------------------
    @property
    def classification_trunk(self) -> Backbone:
        """The trunk the parts and holistic vector come from (``loc_net`` when shared)."""
        return self.loc_net if self.cls_net is None else self.cls_net

    @property
    def input_size(self) -> int:
        """S of the S x S input."""
        return self.config.input_size

    @property
    def heatmap_size(self) -> tuple[int, int]:
        """(Hh, Wh) of the heatmaps (and of the one-hot training targets)."""
        return self.keypoint_head.output_size

    @property
    def transfer_feature_size(self) -> tuple[int, int] | None:
        """(Hf, Wf) of the map the parts are pooled from, or None without parts."""
        if self._transfer_layer is None:
            return None
        return self.classification_trunk.feature_hw(self._transfer_layer, self.input_size)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Disjoint parameter groups covering every parameter, for the training stages.

        keypoint_score: the 1x1 score conv(s); localization: the localization trunk (the shared trunk when
        ``shared_backbone``); classification: the classification trunk (empty when shared); classifier: the
        final FC plus any learned holistic parameters; part_nets: the head/body trunks; part_classifier: the
        part nets' own classifiers and feature heads (the last two empty without part nets).
        """
        classifier = list(self.classifier.parameters())
        if self.holistic is not None:
            classifier += list(self.holistic.parameters())
        parts = self.part_nets
        return {
            "keypoint_score": list(self.keypoint_head.parameters()),
            "localization": list(self.loc_net.parameters()),
            "classification": list(self.cls_net.parameters()) if self.cls_net is not None else [],
            "classifier": classifier,
            "part_nets": parts.trunk_parameters() if parts is not None else [],
            "part_classifier": parts.head_parameters() if parts is not None else [],
        }

    # --- forward ----------------------------------------------------------------------------------
    def forward(
        self,
        images: torch.Tensor,
        part_heatmaps: torch.Tensor | None = None,
        part_visible: torch.Tensor | None = None,
        part_keypoints: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run both nets (and the part nets, when the config has them).

        Args:
            images: (N, 3, S, S) float RGB in [0, 1].
            part_heatmaps: (N, P, Hh', Wh') one-hot ground-truth maps (all zero for invisible parts); when
                given they choose the pooled locations instead of the predicted heatmaps.
            part_visible: (N, P) 0/1 ground-truth visibility multiplying the part features; defaults to
                "map is not all zero" when ``part_heatmaps`` is given.
            part_keypoints: (N, P, 2) ground-truth keypoints (input pixels) the head/body boxes are built from,
                with ``part_visible``; None = from the predicted keypoints and visibility (test).

        Returns:
            {"logits": (N, K), "keypoints": (N, P, 2) (u, v) input pixels of the argmax cell centre,
             "keypoint_scores": (N, P) sigmoid(max logit), "heatmaps": (N, P, Hh, Wh) logits}, and with part
            nets "part_boxes": (N, 2, 4) head and body boxes [x0, y0, x1, y1] in input pixels.
        """
        x = self._normalise(images)
        loc_feats = self.loc_net(x)
        cls_feats = loc_feats if self.cls_net is None else self.cls_net(x)
        out = self._keypoint_outputs(loc_feats)

        parts = None
        if self._transfer_layer is not None:
            parts = self._part_features(cls_feats[self._transfer_layer], out[OUTPUT_HEATMAPS],
                                        out[OUTPUT_KEYPOINT_SCORES], part_heatmaps, part_visible)
        holistic = self.holistic(cls_feats[self._holistic_layer]) if self.holistic is not None else None
        extra: list[torch.Tensor] = []
        if self.part_nets is not None:
            boxes = self.part_boxes(out, part_keypoints, part_visible)
            extra = self.part_nets.features(x, boxes)
            out[OUTPUT_PART_BOXES] = boxes
        return {OUTPUT_LOGITS: self.classifier(parts, holistic, extra), **out}

    def part_boxes(self, keypoint_outputs: dict[str, torch.Tensor], part_keypoints: torch.Tensor | None = None,
                   part_visible: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 2, 4) head/body boxes: from ground-truth keypoints when given, else from the predicted keypoints
        and visibility (max sigmoid >= the config's visibility threshold)."""
        if self.part_nets is None:
            raise ConfigError(f"model {self.config.name!r} has no part nets; its config sets no part_nets")
        if part_keypoints is not None:
            if part_visible is None:
                raise ValueError("part_keypoints needs part_visible (N, P) as well")
            return self.part_nets.boxes(part_keypoints, part_visible)
        visible = keypoint_outputs[OUTPUT_KEYPOINT_SCORES] >= self.config.visibility_threshold
        return self.part_nets.boxes(keypoint_outputs[OUTPUT_KEYPOINTS], visible)

    def part_net_logits(self, images: torch.Tensor, part_keypoints: torch.Tensor,
                        part_visible: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each part net's own logits on crops of the ground-truth boxes (fine-tuning the part nets alone).

        Args:
            images: (N, 3, S, S) float RGB in [0, 1].
            part_keypoints: (N, P, 2) ground-truth keypoints, input pixels.
            part_visible: (N, P) 0/1 ground-truth visibility.

        Returns:
            {"head": (N, K), "body": (N, K)}.
        """
        if self.part_nets is None:
            raise ConfigError(f"model {self.config.name!r} has no part nets; its config sets no part_nets")
        x = self._normalise(images)
        return self.part_nets.logits(x, self.part_nets.boxes(part_keypoints, part_visible))

    def localize(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the localization net only (half the cost of ``forward`` for keypoint-only training stages).

        Args:
            images: (N, 3, S, S) float RGB in [0, 1].

        Returns:
            {"keypoints", "keypoint_scores", "heatmaps"}, equal to those of ``forward``.
        """
        return self._keypoint_outputs(self.loc_net(self._normalise(images)))

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        s = self.input_size
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] != s or images.shape[3] != s:
            raise ValueError(f"images must be (N, 3, {s}, {s}) RGB in [0, 1], got {tuple(images.shape)}")
        return (images - self.mean) / self.std

    def _keypoint_outputs(self, loc_feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        heatmaps = self.keypoint_head([loc_feats[n] for n in self._score_layers])  # (N, P, Hh, Wh)
        keypoints, scores = decode_keypoints(heatmaps, self.input_size)
        return {OUTPUT_KEYPOINTS: keypoints, OUTPUT_KEYPOINT_SCORES: scores, OUTPUT_HEATMAPS: heatmaps}

    def _part_features(
        self,
        features: torch.Tensor,
        heatmaps: torch.Tensor,
        scores: torch.Tensor,
        part_heatmaps: torch.Tensor | None,
        part_visible: torch.Tensor | None,
    ) -> torch.Tensor:
        """(N, P, C) pooled part features, zeroed for invisible parts (docs/method.md section 4)."""
        cls = self.config.classification
        visible: torch.Tensor | None
        if part_heatmaps is not None:  # training on ground-truth locations
            if part_heatmaps.shape[:2] != heatmaps.shape[:2]:
                raise ValueError(f"part_heatmaps must be (N, P, H, W) = {tuple(heatmaps.shape)}, "
                                 f"got {tuple(part_heatmaps.shape)}")
            pooled = coordinate_transfer(part_heatmaps.to(features.dtype), features, cls.window, cls.mode_id)
            visible = part_visible if part_visible is not None else part_heatmaps.flatten(2).amax(dim=-1) > 0
        else:  # predicted locations (test, stage 4); the op passes no gradient to the heatmaps
            pooled = coordinate_transfer(heatmaps.detach().to(features.dtype), features, cls.window, cls.mode_id)
            visible = scores >= self.config.visibility_threshold if self.config.zero_invisible_parts else None
        if visible is not None:
            pooled = pooled * visible.to(pooled.dtype).unsqueeze(-1)
        return pooled


def create_model(cfg: ModelConfig, num_classes: int, weights: str | Path | None = None) -> PoseNormalizedNet:
    """Build a PoseNormalizedNet, randomly initialised or with pretrained trunk weights.

    Args:
        cfg: the model config (``load_model_config``).
        num_classes: K.
        weights: local file of pretrained trunk weights, loaded into every trunk, the part nets' included (VGG:
            a torchvision VGG-16 state dict such as vgg16-397923af.pth). None = random init. Not a fgdeploy checkpoint:
            use ``fgdeploy.checkpoint.load_checkpoint`` for those.

    Raises:
        ConfigError: invalid config; CheckpointError: the weights file is unreadable or does not fit.
    """
    model = PoseNormalizedNet(cfg, num_classes)
    if weights is not None:
        for trunk in (model.loc_net, model.cls_net):
            if trunk is not None:
                trunk.load_pretrained(weights)
        if model.part_nets is not None:
            model.part_nets.load_pretrained(weights)
        logger.info("initialised trunks of %s from %s", cfg.name, weights)
    return model
