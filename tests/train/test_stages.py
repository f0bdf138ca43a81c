"""The stage schedule: which parameters learn, that frozen ones (and their BatchNorm statistics) do not move."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fgdeploy.errors import ConfigError
from fgdeploy.models import create_model
from fgdeploy.models.losses import keypoint_targets
from fgdeploy.train.config import StageConfig
from fgdeploy.train.stages import (
    STAGES, WarmupCosine, apply_stage, build_optimizer, model_groups, parse_stages, set_train_mode,
    stage_is_applicable,
)
from fgdeploy.train.trainer import HeatmapView, compute_loss

from .conftest import tiny_model_config, tiny_train_config


def _batch(model, n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = model.input_size
    return {"images": torch.rand(n, 3, s, s, generator=g),
            "keypoints": torch.rand(n, model.config.num_parts, 2, generator=g) * s,
            "visible": (torch.rand(n, model.config.num_parts, generator=g) > 0.2).float(),
            "labels": torch.randint(0, 3, (n,), generator=g)}


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("number", [1, 2, 3, 4])
def test_stage_trains_exactly_its_groups_and_frozen_state_is_unchanged(number):
    torch.manual_seed(0)
    model = create_model(tiny_model_config(), num_classes=3)
    stage = STAGES[number]
    tcfg = tiny_train_config()
    optimizer = build_optimizer(model, stage, StageConfig(epochs=1, lr=0.1, head_lr=0.1), tcfg)
    groups = model_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    trainable = {names[id(p)] for g in stage.trainable for p in groups[g]}
    assert trainable, "every stage trains something on the full model"
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable

    set_train_mode(model)
    # Frozen trunks are in eval mode (BatchNorm keeps its running statistics), trained ones in train mode.
    frozen_trunks = [m for g, m in (("localization", model.loc_net), ("classification", model.cls_net))
                     if g not in stage.trainable]
    for trunk in frozen_trunks:
        assert not any(m.training for m in trunk.modules())
    for g, trunk in (("localization", model.loc_net), ("classification", model.cls_net)):
        if g in stage.trainable:
            assert trunk.training

    before = _snapshot(model)
    runner = model if stage.classification_loss else HeatmapView(model)
    for seed in range(2):
        loss, _ = compute_loss(runner, _batch(model, seed=seed), stage, tcfg, model.heatmap_size, model.input_size)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.state_dict()
    param_names = {n for n, _ in model.named_parameters()}
    for name, value in after.items():
        if name in trainable:
            assert not torch.equal(value, before[name]), f"stage {number}: trainable {name} did not change"
        elif name in param_names:
            assert torch.equal(value, before[name]), f"stage {number}: frozen parameter {name} changed"
    # BatchNorm buffers: frozen trunks keep their running statistics exactly.
    for trunk_name, group in (("loc_net", "localization"), ("cls_net", "classification")):
        keys = [k for k in after if k.startswith(trunk_name + ".") and "running_" in k]
        assert keys
        changed = [k for k in keys if not torch.equal(after[k], before[k])]
        if group in stage.trainable:
            assert changed, f"stage {number}: trained trunk {trunk_name} should update BatchNorm statistics"
        else:
            assert not changed, f"stage {number}: frozen {trunk_name} BatchNorm statistics changed: {changed[:3]}"


def test_stage_learning_rates_head_vs_trunk():
    model = create_model(tiny_model_config(), num_classes=3)
    opt = build_optimizer(model, STAGES[2], StageConfig(epochs=1, lr=0.001, head_lr=0.1), tiny_train_config())
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"keypoint_score": 0.1, "localization": 0.001}
    opt = build_optimizer(model, STAGES[3], StageConfig(epochs=1, lr=0.001, head_lr=1.0), tiny_train_config())
    assert {g["name"]: g["lr"] for g in opt.param_groups} == {"classification": 0.001, "classifier": 1.0}


def test_stage_holistic_only_model_skips_keypoint_stages_and_keeps_localizer_frozen():
    model = create_model(tiny_model_config(use_parts=False), num_classes=3)
    assert not stage_is_applicable(model, STAGES[1]) and not stage_is_applicable(model, STAGES[2])
    assert stage_is_applicable(model, STAGES[3]) and stage_is_applicable(model, STAGES[4])
    apply_stage(model, STAGES[4])
    assert not any(p.requires_grad for p in model.loc_net.parameters())
    assert all(p.requires_grad for p in model.cls_net.parameters())


def test_stage_ground_truth_parts_in_stage3_predicted_in_stage4(monkeypatch):
    model = create_model(tiny_model_config(), num_classes=3)
    seen = []
    original = model.forward

    def spy(images, part_heatmaps=None, part_visible=None):
        seen.append(part_heatmaps is not None)
        return original(images, part_heatmaps, part_visible)

    monkeypatch.setattr(model, "forward", spy)
    batch = _batch(model)
    for number in (3, 4):
        compute_loss(model, batch, STAGES[number], tiny_train_config(), model.heatmap_size, model.input_size)
    assert seen == [True, False]
    targets = keypoint_targets(batch["keypoints"], batch["visible"], model.heatmap_size, model.input_size)
    assert targets.shape[-2:] == model.heatmap_size


@pytest.mark.parametrize("text,expected", [("all", [1, 2, 3, 4]), ("3", [3]), ("3-4", [3, 4]), ("1,2", [1, 2])])
def test_parse_stages_accepts_numbers_ranges_and_all(text, expected):
    assert parse_stages(text) == expected


@pytest.mark.parametrize("text", ["5", "0", "4-3", "x", "2,1"])
def test_parse_stages_rejects_bad_values(text):
    with pytest.raises(ConfigError, match="--stage"):
        parse_stages(text)


def test_warmup_cosine_schedule_shape():
    f = WarmupCosine(total=10, warmup=2)
    assert f(0) == pytest.approx(1 / 3) and f(1) == pytest.approx(2 / 3)
    assert f(2) == pytest.approx(1.0)
    values = [f(s) for s in range(2, 11)]
    assert all(a >= b for a, b in zip(values, values[1:])) and f(10) == pytest.approx(0.0)
    assert WarmupCosine(total=5, schedule="constant")(4) == 1.0


def test_epoch_line_shows_no_top1_while_the_classifier_is_not_trained():
    """Issue 17 #16: stages 1-2 logged "val top1 5 %" for an untrained classifier."""
    from fgdeploy.train.state import format_record

    record = {"stage": 2, "epoch": 1, "epochs": 1, "train_loss": 0.5, "val_top1": 0.05, "lr": 0.1,
              "images_per_s": 10.0, "seconds": 1.0}
    assert "val top1 –" in format_record(record) and "5.0%" not in format_record(record)
    assert "val top1 5.0%" in format_record({**record, "stage": 3})
