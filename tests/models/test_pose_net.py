"""PoseNormalizedNet behaviour: outputs, ground-truth vs predicted parts, visibility, gradients, groups."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from fgdeploy.models import PARAMETER_GROUPS, ModelConfig, PoseNormalizedNet, create_model
from fgdeploy.models.config import ClassificationConfig, LocalizationConfig
from fgdeploy.models.keypoints import cell_to_point
from fgdeploy.models.losses import keypoint_bce_loss, keypoint_targets
from fgdeploy.tensors import OUTPUT_HEATMAPS, OUTPUT_KEYPOINT_SCORES, OUTPUT_KEYPOINTS, OUTPUT_LOGITS

P = 15


def one_hot_targets(cells: torch.Tensor, visible: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Targets (losses.keypoint_targets) for keypoints at the centres of flat cells ``cells`` (N, P) of a 64 px input."""
    uv = cell_to_point(cells // hw[1], cells % hw[1], hw, 64)
    return keypoint_targets(uv, visible, hw, 64)


def make(cfg, k: int = 5, seed: int = 0) -> PoseNormalizedNet:
    torch.manual_seed(seed)
    return create_model(cfg, num_classes=k)


def test_outputs_have_contract_names_and_shapes(tiny_cfg):
    model = make(tiny_cfg()).eval()
    images = torch.rand(3, 3, 64, 64)
    out = model(images)
    assert set(out) == {OUTPUT_LOGITS, OUTPUT_KEYPOINTS, OUTPUT_KEYPOINT_SCORES, OUTPUT_HEATMAPS}
    assert model.heatmap_size == (16, 16)
    assert out[OUTPUT_LOGITS].shape == (3, 5)
    assert out[OUTPUT_HEATMAPS].shape == (3, P, 16, 16)
    assert out[OUTPUT_KEYPOINTS].shape == (3, P, 2)
    kp = out[OUTPUT_KEYPOINTS]
    assert kp.min() >= 2.0 and kp.max() <= 62.0  # cell centres of 4 px cells
    torch.testing.assert_close(out[OUTPUT_KEYPOINT_SCORES], torch.sigmoid(out[OUTPUT_HEATMAPS].flatten(2).amax(-1)))


def test_localize_equals_the_keypoint_outputs_of_forward(tiny_cfg):
    model = make(tiny_cfg()).eval()
    images = torch.rand(2, 3, 64, 64)
    full, loc = model(images), model.localize(images)
    assert set(loc) == {OUTPUT_KEYPOINTS, OUTPUT_KEYPOINT_SCORES, OUTPUT_HEATMAPS}
    for name, value in loc.items():
        torch.testing.assert_close(value, full[name])


def test_wrong_input_size_is_a_clear_error(tiny_cfg):
    with pytest.raises(ValueError, match=r"images must be \(N, 3, 64, 64\).*got \(1, 3, 60, 60\)"):
        make(tiny_cfg())(torch.rand(1, 3, 60, 60))


def test_normalisation_is_inside_the_model(tiny_cfg):
    cfg = tiny_cfg()
    a = make(cfg).eval()
    b = make(dataclasses.replace(cfg, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))).eval()
    b.load_state_dict({k: v for k, v in a.state_dict().items() if k not in ("mean", "std")}, strict=False)
    images = torch.rand(2, 3, 64, 64)
    mean, std = torch.tensor(cfg.mean).view(1, 3, 1, 1), torch.tensor(cfg.std).view(1, 3, 1, 1)
    torch.testing.assert_close(a(images)[OUTPUT_LOGITS], b((images - mean) / std)[OUTPUT_LOGITS])
    assert {"mean", "std"} <= set(a.state_dict())


@pytest.mark.parametrize("overrides", [
    {},
    {"shared_backbone": True},
    {"classification": {"use_parts": False}},
    {"classification": {"holistic": "none"}},
    {"localization": {"score_layers": ("s16",)}},
])
def test_parameter_groups_are_disjoint_and_cover_all_parameters(tiny_cfg, overrides):
    model = make(tiny_cfg(**overrides))
    groups = model.parameter_groups()
    assert tuple(groups) == PARAMETER_GROUPS
    ids = [id(p) for params in groups.values() for p in params]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    assert {id(p) for p in groups["keypoint_score"]} == {id(p) for p in model.keypoint_head.parameters()}
    assert {id(p) for p in groups["classifier"]} >= {id(p) for p in model.classifier.fc.parameters()}
    if overrides.get("shared_backbone"):
        assert groups["classification"] == [] and model.cls_net is None


def test_ground_truth_parts_use_target_locations_and_visibility(tiny_cfg):
    model = make(tiny_cfg()).eval()
    images = torch.rand(2, 3, 64, 64)
    g = torch.Generator().manual_seed(3)
    cells = torch.randint(0, 256, (2, P), generator=g)
    visible = torch.ones(2, P)
    visible[0, 4] = 0.0
    base = model(images, one_hot_targets(cells, visible, (16, 16)), visible)[OUTPUT_LOGITS]

    moved_hidden = cells.clone()
    moved_hidden[0, 4] = (cells[0, 4] + 136) % 256  # far away: a different feature window
    same = model(images, one_hot_targets(moved_hidden, visible, (16, 16)), visible)[OUTPUT_LOGITS]
    torch.testing.assert_close(same, base)  # an invisible part contributes nothing

    moved_visible = cells.clone()
    moved_visible[0, 2] = (cells[0, 2] + 136) % 256
    diff = model(images, one_hot_targets(moved_visible, visible, (16, 16)), visible)[OUTPUT_LOGITS]
    assert (diff[0] - base[0]).abs().max() > 1e-6  # a visible part's location matters
    torch.testing.assert_close(diff[1], base[1])
    # Without part_visible the all-zero maps define visibility.
    torch.testing.assert_close(model(images, one_hot_targets(cells, visible, (16, 16)))[OUTPUT_LOGITS], base)


def test_predicted_parts_are_zeroed_below_the_visibility_threshold(tiny_cfg):
    images = torch.rand(2, 3, 64, 64)
    zeroing = make(tiny_cfg(zero_invisible_parts=True)).eval()
    keeping = make(tiny_cfg(zero_invisible_parts=False)).eval()
    keeping.load_state_dict(zeroing.state_dict())
    with torch.no_grad():
        zeroing.keypoint_head.score[0].bias.fill_(-30.0)  # every max sigmoid << 0.5
        keeping.keypoint_head.score[0].bias.fill_(-30.0)
    out = zeroing(images)
    assert out[OUTPUT_KEYPOINT_SCORES].max() < 0.5
    trunk = zeroing.cls_net((images - zeroing.mean) / zeroing.std)
    holistic = F.normalize(zeroing.holistic(trunk["s32"]), dim=1)
    parts_dim = zeroing.classifier.part_dim
    scale = zeroing.classifier.scale
    expected = zeroing.classifier.fc(scale * torch.cat([torch.zeros(2, parts_dim), holistic], dim=1))
    torch.testing.assert_close(out[OUTPUT_LOGITS], expected)
    assert (keeping(images)[OUTPUT_LOGITS] - expected).abs().max() > 1e-6

    with torch.no_grad():  # all parts confidently visible: zeroing changes nothing
        zeroing.keypoint_head.score[0].bias.fill_(30.0)
        keeping.keypoint_head.score[0].bias.fill_(30.0)
    torch.testing.assert_close(zeroing(images)[OUTPUT_LOGITS], keeping(images)[OUTPUT_LOGITS])


def _grad_norms(params) -> float:
    return sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)


def test_losses_train_separate_nets_separately(tiny_cfg):
    model = make(tiny_cfg()).train()
    images = torch.rand(2, 3, 64, 64)
    cells = torch.randint(0, 256, (2, P))
    targets = one_hot_targets(cells, torch.ones(2, P), (16, 16))
    groups = model.parameter_groups()

    out = model(images, targets, torch.ones(2, P))
    F.cross_entropy(out[OUTPUT_LOGITS], torch.tensor([0, 3])).backward()
    assert _grad_norms(groups["classification"]) > 0 and _grad_norms(groups["classifier"]) > 0
    assert _grad_norms(groups["localization"]) == 0 and _grad_norms(groups["keypoint_score"]) == 0

    model.zero_grad(set_to_none=True)
    out = model(images, targets, torch.ones(2, P))
    keypoint_bce_loss(out[OUTPUT_HEATMAPS], targets).backward()
    assert _grad_norms(groups["localization"]) > 0 and _grad_norms(groups["keypoint_score"]) > 0
    assert _grad_norms(groups["classification"]) == 0 and _grad_norms(groups["classifier"]) == 0


def test_shared_backbone_gets_classification_gradient(tiny_cfg):
    model = make(tiny_cfg(shared_backbone=True)).train()
    out = model(torch.rand(2, 3, 64, 64))
    F.cross_entropy(out[OUTPUT_LOGITS], torch.tensor([1, 2])).backward()
    assert _grad_norms(model.parameter_groups()["localization"]) > 0


@pytest.mark.parametrize("overrides,part_dim,holistic_dim", [
    ({}, P * 8, 16),                                                    # s8 parts (8 ch) + GAP of s32 (16 ch)
    ({"classification": {"use_parts": False}}, 0, 16),                  # holistic only (ablation)
    ({"classification": {"holistic": "none"}}, P * 8, 0),              # parts only
    ({"classification": {"holistic": "global_avg", "holistic_layer": None}}, P * 8, 8),  # GAP of the transfer map
])
def test_classifier_input_follows_the_branches(tiny_cfg, overrides, part_dim, holistic_dim):
    model = make(tiny_cfg(**overrides)).eval()
    assert (model.classifier.part_dim, model.classifier.holistic_dim) == (part_dim, holistic_dim)
    assert model.classifier.fc.in_features == part_dim + holistic_dim
    assert model(torch.rand(1, 3, 64, 64))[OUTPUT_LOGITS].shape == (1, 5)


def test_holistic_only_model_ignores_part_locations(tiny_cfg):
    model = make(tiny_cfg(classification={"use_parts": False})).eval()
    images = torch.rand(1, 3, 64, 64)
    a = model(images, one_hot_targets(torch.zeros(1, P, dtype=torch.long), torch.ones(1, P), (16, 16)))
    b = model(images, one_hot_targets(torch.full((1, P), 200), torch.ones(1, P), (16, 16)))
    torch.testing.assert_close(a[OUTPUT_LOGITS], b[OUTPUT_LOGITS])


def test_dropout_only_in_training(tiny_cfg):
    model = make(tiny_cfg())
    images = torch.rand(4, 3, 64, 64)
    model.eval()
    torch.testing.assert_close(model(images)[OUTPUT_LOGITS], model(images)[OUTPUT_LOGITS])
    model.train()
    torch.manual_seed(1)
    a = model(images)[OUTPUT_LOGITS]
    torch.manual_seed(2)
    b = model(images)[OUTPUT_LOGITS]
    assert (a - b).abs().max() > 1e-7


def test_vgg_fc7_model_with_pretrained_trunks(tmp_path, random_vgg_state_dict):
    cfg = ModelConfig(name="tiny_vgg", input_size=256,
                      localization=LocalizationConfig(backbone="vgg16_tiny"),
                      classification=ClassificationConfig(backbone="vgg16_tiny", holistic="fc7"))
    sd = random_vgg_state_dict(((4, 4), (8, 8), (16, 16, 16), (32, 32, 32), (32, 32, 32)), 64, seed=7)
    path = tmp_path / "vgg.pth"
    torch.save(sd, path)
    model = create_model(cfg, num_classes=3, weights=path).eval()
    for trunk in (model.loc_net, model.cls_net):
        torch.testing.assert_close(trunk.fc7.weight.flatten(1), sd["classifier.3.weight"], atol=0, rtol=0)
    assert model.heatmap_size == (2, 2) and model.transfer_feature_size == (16, 16)
    assert model.classifier.fc.in_features == P * 32 + 64
    assert model(torch.rand(1, 3, 256, 256))[OUTPUT_LOGITS].shape == (1, 3)


def test_tiny_model_learns_keypoints_of_a_few_images(tiny_cfg):
    # End-to-end wiring: targets -> heatmaps -> loss -> trunk gradients -> decoded keypoints near the truth.
    model = make(tiny_cfg(), seed=4).train()
    g = torch.Generator().manual_seed(5)
    images = torch.rand(4, 3, 64, 64, generator=g)
    uv = torch.rand(4, P, 2, generator=g) * 56 + 4
    targets = keypoint_targets(uv, torch.ones(4, P), model.heatmap_size, 64)
    params = model.parameter_groups()
    opt = torch.optim.Adam(params["localization"] + params["keypoint_score"], lr=1e-2)
    first = None
    for _ in range(60):
        loss = keypoint_bce_loss(model(images, targets)[OUTPUT_HEATMAPS], targets)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        found = model(images)[OUTPUT_KEYPOINTS]
    assert loss.item() < 0.5 * first
    assert ((found - uv).norm(dim=-1) <= 4.0).float().mean() > 0.9  # within a cell of the truth


def test_feature_scale_multiplies_the_normalised_blocks():
    from fgdeploy.models.heads import FusedClassifier

    torch.manual_seed(0)
    plain = FusedClassifier(12, 5, num_classes=3, dropout=0.5).eval()
    scaled = FusedClassifier(12, 5, num_classes=3, dropout=0.5, scale=8.0).eval()
    scaled.load_state_dict(plain.state_dict())
    with torch.no_grad():
        plain.fc.bias.uniform_(-1, 1)
        scaled.fc.bias.copy_(plain.fc.bias)
    parts, holistic = torch.rand(2, 3, 4) * 7, torch.rand(2, 5) * 0.1  # block norms do not matter
    bias = plain.fc.bias
    torch.testing.assert_close(scaled(parts, holistic) - bias, 8.0 * (plain(parts, holistic) - bias))
    torch.testing.assert_close(plain(parts * 3, holistic * 5), plain(parts, holistic))
