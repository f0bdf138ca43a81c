"""Training the part-net model: stage 0 trains the part nets alone on ground-truth boxes, stage 3 uses ground-truth
boxes with the part nets frozen, stage 4 predicted boxes (part nets trained only when the config says
end_to_end); a killed run resumes exactly."""

from __future__ import annotations

import pytest
import torch

from fgdeploy.checkpoint import model_config_from_meta, read_checkpoint
from fgdeploy.models import create_model
from fgdeploy.train.config import StageConfig
from fgdeploy.train.data import build_train_data
from fgdeploy.train.stages import STAGES, apply_stage, build_optimizer, set_train_mode, stage_is_applicable
from fgdeploy.train.trainer import Hooks, PartNetView, RunContext, compute_loss, fit, load_train_state
from .conftest import tiny_model_config, tiny_partnets_config, tiny_train_config


class Killed(RuntimeError):
    pass


def _batch(model, n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = model.input_size
    return {"images": torch.rand(n, 3, s, s, generator=g),
            "keypoints": torch.rand(n, model.config.num_parts, 2, generator=g) * s,
            "visible": (torch.rand(n, model.config.num_parts, generator=g) > 0.2).float(),
            "labels": torch.randint(0, 3, (n,), generator=g)}


def _train_two_steps(model, number):
    stage = STAGES[number]
    optimizer = build_optimizer(model, stage, StageConfig(epochs=1, lr=0.1, head_lr=0.1), tiny_train_config())
    runner = PartNetView(model) if stage.part_net_loss else model
    set_train_mode(runner)   # frozen modules in eval mode, as the trainer does
    for seed in range(2):
        loss, sums = compute_loss(runner, _batch(model, seed=seed), stage, tiny_train_config(), model.heatmap_size,
                                  model.input_size)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return sums


def _changed(before, after, prefix):
    return [k for k in after if k.startswith(prefix) and not torch.equal(before[k], after[k])]


def test_stage0_trains_only_the_part_nets_on_ground_truth_boxes():
    torch.manual_seed(0)
    model = create_model(tiny_partnets_config(), num_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sums = _train_two_steps(model, 0)
    after = model.state_dict()
    assert {"head_loss", "body_loss", "head_correct", "body_correct"} <= set(sums)
    assert _changed(before, after, "part_nets.nets.head.trunk.") and _changed(before, after, "part_nets.nets.body.")
    assert _changed(before, after, "part_nets.nets.head.classifier.")
    for prefix in ("loc_net.", "cls_net.", "keypoint_head.", "classifier.", "holistic."):
        assert not _changed(before, after, prefix), prefix


def test_stage0_applies_only_to_models_with_part_nets():
    assert stage_is_applicable(create_model(tiny_partnets_config(), num_classes=3), STAGES[0])
    assert not stage_is_applicable(create_model(tiny_model_config(), num_classes=3), STAGES[0])


@pytest.mark.parametrize("end_to_end", [True, False])
def test_stage3_uses_ground_truth_boxes_and_stage4_predicted(monkeypatch, end_to_end):
    torch.manual_seed(0)
    model = create_model(tiny_partnets_config(end_to_end=end_to_end), num_classes=3)
    seen = []
    original = model.part_boxes

    def spy(outputs, part_keypoints=None, part_visible=None):
        seen.append(part_keypoints is not None)
        return original(outputs, part_keypoints, part_visible)

    monkeypatch.setattr(model, "part_boxes", spy)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train_two_steps(model, 3)
    assert seen == [True, True]
    assert not _changed(before, model.state_dict(), "part_nets.")      # frozen: the joint classifier learns
    assert _changed(before, model.state_dict(), "classifier.")
    seen.clear()
    _train_two_steps(model, 4)
    assert seen == [False, False]
    assert bool(_changed(before, model.state_dict(), "part_nets.nets.head.trunk.")) == end_to_end
    # the part nets' own classifiers are unused after stage 0: never trained (no weight decay either)
    assert not _changed(before, model.state_dict(), "part_nets.nets.head.classifier.")
    apply_stage(model, STAGES[4])
    assert all(p.requires_grad == end_to_end for p in model.part_nets.trunk_parameters())


def _fit(data_root, out, hooks=None, resume=None):
    tcfg = tiny_train_config(epochs=2, checkpoint_every=2)
    data = build_train_data(data_root, 64, tcfg.seed, 0.2, augment=True)
    torch.manual_seed(tcfg.seed)
    cfg = tiny_partnets_config() if resume is None else resume[2]
    model = create_model(cfg, num_classes=len(data.class_names))
    if resume is not None:
        model.load_state_dict(resume[0])
    ctx = RunContext(out_dir=out, device=torch.device("cpu"), hooks=hooks or Hooks(), show_progress=False)
    state = fit(model, data, tcfg, [0, 2, 3, 4], ctx, resume=resume[1] if resume else None)
    return state, model


def test_part_net_run_resumes_after_a_kill_in_stage0_exactly(tiny_data, tmp_path):
    full_state, full_model = _fit(tiny_data, tmp_path / "full")
    assert [r["stage"] for r in full_state.history][:2] == [0, 0]
    assert "train_head_top1" in full_state.history[0] and "val_pcp_head" in full_state.history[-1]

    def kill(state):
        if state.global_step == 3:
            raise Killed("simulated kill in stage 0")

    with pytest.raises(Killed):
        _fit(tiny_data, tmp_path / "killed", hooks=Hooks(on_step=kill))
    weights, extra, _ = load_train_state(tmp_path / "killed" / "last.pt")
    cfg = model_config_from_meta(read_checkpoint(tmp_path / "killed" / "last.pt").meta)
    state, model = _fit(tiny_data, tmp_path / "killed", resume=(weights, extra, cfg))
    strip = [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in state.history]
    assert strip == [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in full_state.history]
    for (name, a), b in zip(full_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name


def test_train_without_data_runs_stage0_and_eval_reports_pcp(tmp_path):
    import yaml

    from fgdeploy.config import dataclass_to_dict
    from fgdeploy.evaluate import evaluate_checkpoint
    from fgdeploy.train.run import TrainOptions, run_training

    cfg_path = tmp_path / "tiny_partnets.yaml"
    cfg_path.write_text(yaml.safe_dump(dataclass_to_dict(tiny_partnets_config())))
    result = run_training(TrainOptions(config=str(cfg_path), out=tmp_path / "run", stage="all", epochs=1, batch=4,
                                       show_progress=False, synth_classes=3, synth_images_per_class=8,
                                       synth_size=64))
    assert [r["stage"] for r in result.state.history] == [0, 1, 2, 3, 4]
    out = evaluate_checkpoint(tmp_path / "run" / "best.pt", result.data_root, "test", tmp_path / "eval", device="cpu")
    assert set(out.result.pcp) == {"head", "body"} and "PCP head" in out.table
    assert out.grid_path is not None and out.grid_path.is_file()
