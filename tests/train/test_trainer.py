"""The trainer: learning on a fixed batch, exact resume after a kill, the run folder and the CLI."""

from __future__ import annotations

import json
import dataclasses
import math

import numpy as np

import pytest
import torch
import yaml
from click.testing import CliRunner

from fgdeploy.checkpoint import model_config_from_meta, read_checkpoint
from fgdeploy.cli import cli
from fgdeploy.models import create_model
from fgdeploy.train.config import StageConfig
from fgdeploy.train.data import build_train_data, collate_items, epoch_batches
from fgdeploy.train.distributed import DistInfo
from fgdeploy.train.stages import STAGES, build_optimizer, set_train_mode
from fgdeploy.train.trainer import HeatmapView, Hooks, RunContext, compute_loss, fit, load_train_state

from .conftest import tiny_model_config, tiny_train_config


class Killed(RuntimeError):
    pass


@pytest.mark.parametrize("number", [2, 3])
def test_trainer_loss_decreases_on_a_fixed_batch(tiny_data, number):
    torch.manual_seed(0)
    data = build_train_data(tiny_data, 64, seed=0, val_fraction=0.0, augment=False)
    batch = collate_items([data.train_dataset[k] for k in epoch_batches(data.train_indices, 8, 0, 1, 0, DistInfo())[0]])
    model = create_model(tiny_model_config(), num_classes=len(data.class_names))
    stage = STAGES[number]
    tcfg = tiny_train_config()
    lr, head_lr = {2: (0.05, 0.5), 3: (0.02, 0.02)}[number]  # classifier inputs are scaled unit-norm blocks
    opt = build_optimizer(model, stage, StageConfig(epochs=1, lr=lr, head_lr=head_lr), tcfg)
    runner = model if stage.classification_loss else HeatmapView(model)
    losses = []
    for _ in range(25):
        set_train_mode(model)
        loss, _ = compute_loss(runner, batch, stage, tcfg, model.heatmap_size, model.input_size)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses


def _fit(tiny_data, out, hooks=None, resume=None):
    tcfg = tiny_train_config(epochs=2, checkpoint_every=2)
    data = build_train_data(tiny_data, 64, tcfg.seed, 0.2, augment=True)
    assert len(data.train_indices) // tcfg.batch_size == STEPS_PER_EPOCH
    torch.manual_seed(tcfg.seed)
    cfg = tiny_model_config() if resume is None else resume[2]  # as run.py: the config saved in last.pt
    model = create_model(cfg, num_classes=len(data.class_names))
    if resume is not None:
        model.load_state_dict(resume[0])
    ctx = RunContext(out_dir=out, device=torch.device("cpu"), hooks=hooks or Hooks(), show_progress=False)
    state = fit(model, data, tcfg, [2, 3, 4], ctx, resume=resume[1] if resume else None)
    return state, model


def _comparable(history):
    return [{k: v for k, v in rec.items() if k not in ("seconds", "images_per_s")} for rec in history]


STEPS_PER_EPOCH = 3  # 3 classes x ~6 train images, 20 % held out, batch 4


# Checkpoints every 2 steps and at epoch ends. Step 3: mid-epoch in stage 2 (resumes from the mid-epoch
# checkpoint at step 2); step 13: first step of stage 4 (resumes from the end of stage 3 at step 12).
@pytest.mark.parametrize("kill_after", [3, 4 * STEPS_PER_EPOCH + 1])
def test_trainer_resume_after_kill_matches_uninterrupted_run(tiny_data, tmp_path, kill_after):
    full_state, full_model = _fit(tiny_data, tmp_path / "full")

    def kill(state):
        if state.global_step == kill_after:
            raise Killed(f"simulated kill after {kill_after} steps")

    with pytest.raises(Killed):
        _fit(tiny_data, tmp_path / "killed", hooks=Hooks(on_step=kill))
    weights, extra, saved = load_train_state(tmp_path / "killed" / "last.pt")
    assert saved.global_step < kill_after  # the kill lost some work that resume must redo
    cfg = model_config_from_meta(read_checkpoint(tmp_path / "killed" / "last.pt").meta)
    state, model = _fit(tiny_data, tmp_path / "killed", resume=(weights, extra, cfg))

    assert _comparable(state.history) == _comparable(full_state.history)
    for (name, a), b in zip(full_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    assert model.config == full_model.config  # incl. the visibility threshold fitted on held-out data
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert _comparable([json.loads(x) for x in lines]) == _comparable(full_state.history)


def test_train_cli_writes_run_folder_and_eval_cli_reports(tiny_data, tmp_path):
    cfg_path = tmp_path / "tiny.yaml"
    cfg = tiny_model_config()
    from fgdeploy.config import dataclass_to_dict
    cfg_path.write_text(yaml.safe_dump(dataclass_to_dict(cfg)))
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, ["-q", "train", "--config", str(cfg_path), "--data", str(tiny_data), "--out",
                                   str(out), "--stage", "3-4", "--epochs", "1", "--batch", "4", "--seed", "3"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "finished: stage 4 epoch 1/1" in res.output
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "train.log"):
        assert (out / name).is_file(), name
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["stages"] == [3, 4] and resolved["train"]["seed"] == 3
    assert resolved["model"]["input_size"] == 64
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in records] == [(3, 1), (4, 1)]
    assert "stage 3 epoch 1/1" in (out / "train.log").read_text()
    best = read_checkpoint(out / "best.pt")
    assert best.meta.input_size == 64 and len(best.meta.class_names) == 3 and len(best.meta.part_names) == 15
    assert best.meta.mean == list(cfg.mean) and best.meta.model_config["name"] == "tiny"

    res = CliRunner().invoke(cli, ["-q", "eval", str(out / "best.pt"), "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "top-1 accuracy" in res.output and "pck@0.1" in res.output and "throat" in res.output
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert report["num_images"] > 0 and set(report["pck"]) == {"pck@0.02", "pck@0.05", "pck@0.08", "pck@0.1"}
    assert (tmp_path / "ev" / "eval_grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # eval judges visibility with the checkpoint's (calibrated) threshold: at 0.001 every part is called
    # visible, at 0.999 none, so the two visibility accuracies are the visible and hidden shares (sum 1)
    from fgdeploy.checkpoint import load_checkpoint, save_checkpoint
    from fgdeploy.evaluate import evaluate_checkpoint

    accuracy = []
    for threshold in (0.001, 0.999):
        model, meta = load_checkpoint(out / "best.pt")
        model.config = dataclasses.replace(model.config, visibility_threshold=threshold)
        meta = dataclasses.replace(meta, model_config={**meta.model_config, "visibility_threshold": threshold})
        save_checkpoint(tmp_path / f"t{threshold}.pt", model, meta)
        accuracy.append(evaluate_checkpoint(tmp_path / f"t{threshold}.pt", tiny_data).result.visibility_acc)
    assert 0 < accuracy[0] < 1 and accuracy[0] + accuracy[1] == pytest.approx(1.0)


def test_train_cli_refuses_to_overwrite_a_run_unless_asked(tiny_data, tmp_path):
    """Issue 17 #1: a second `train --out RUN` without --resume used to replace best.pt, last.pt, metrics.jsonl."""
    from fgdeploy.config import dataclass_to_dict

    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(dataclass_to_dict(tiny_model_config())))
    out = tmp_path / "run"
    args = ["-q", "train", "--config", str(cfg_path), "--data", str(tiny_data), "--out", str(out), "--stage", "3",
            "--epochs", "1", "--batch", "4"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    before = {name: (out / name).read_bytes() for name in ("best.pt", "last.pt", "metrics.jsonl")}

    res = CliRunner().invoke(cli, [*args, "--seed", "5"])
    assert res.exit_code == 1, res.output
    assert f"{out} already holds a training run (best.pt, last.pt, metrics.jsonl)" in res.output
    assert "--resume" in res.output and "new --out" in res.output and "--overwrite" in res.output
    assert {name: (out / name).read_bytes() for name in before} == before     # nothing replaced

    res = CliRunner().invoke(cli, [*args, "--resume", "--overwrite"])
    assert res.exit_code == 2 and "give one of them" in res.output

    res = CliRunner().invoke(cli, [*args, "--seed", "5", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert (out / "best.pt").read_bytes() != before["best.pt"]
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["seed"] == 5


@pytest.mark.parametrize("has_last", [True, False])
def test_train_cli_ctrl_c_says_how_to_go_on_and_exits_130(tmp_path, monkeypatch, has_last):
    import fgdeploy.train.run as run

    def interrupted(opts):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "run_training", interrupted)
    (tmp_path / "run").mkdir()
    if has_last:
        (tmp_path / "run" / "last.pt").write_bytes(b"x")
    res = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "run")])
    assert res.exit_code == 130
    assert ("rerun with --resume to go on" if has_last else "rerun without --resume") in res.output


def test_train_cli_resume_needs_a_last_checkpoint(tmp_path):
    res = CliRunner().invoke(cli, ["train", "--config", "demo", "--out", str(tmp_path / "none"), "--resume"])
    assert res.exit_code == 1 and "does not exist" in res.output


def test_train_cli_epochs_zero_is_a_usage_error(tmp_path):
    res = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "run"), "--epochs", "0"])
    assert res.exit_code == 2 and "--epochs" in res.output, res.output
    assert not (tmp_path / "run").exists()


def test_train_cli_names_only_the_run_files_that_exist(tmp_path, monkeypatch):
    import fgdeploy.train.run as run_module
    from fgdeploy.train.run import TrainResult

    def no_epochs(opts):  # a run that ended before its first epoch: config.yaml and train.log only
        opts.out.mkdir(parents=True)
        for name in ("config.yaml", "train.log"):
            (opts.out / name).write_text("x")
        return TrainResult(out_dir=opts.out, state=None, data_root=tmp_path, last_metrics={})

    monkeypatch.setattr(run_module, "run_training", no_epochs)
    res = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"run folder: {tmp_path / 'run'} (config.yaml, train.log)"


def test_train_cli_resume_refuses_options_that_differ_from_the_run(tiny_data, tmp_path):
    from fgdeploy.config import dataclass_to_dict

    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(dataclass_to_dict(tiny_model_config())))
    out = tmp_path / "run"
    made_with = ["--config", str(cfg_path), "--data", str(tiny_data), "--stage", "3", "--epochs", "1", "--batch", "4",
                 "--seed", "1"]
    res = CliRunner().invoke(cli, ["-q", "train", "--out", str(out), *made_with])
    assert res.exit_code == 0, res.output + repr(res.exception)
    other = tmp_path / "big"
    other.mkdir()
    for given, message in [
        (["--data", str(other)], f"--data {other} differs from the run's {tiny_data.resolve()}; resume without it or "
                                 "start a new --out"),
        (["--epochs", "2"], "--epochs 2 differs from the run's 1;"),
        (["--batch", "8"], "--batch 8 differs from the run's 4;"),
        (["--lr", "0.5"], "--lr 0.5 differs from the run's 0.05;"),  # the small preset's stage-3 LR
        (["--stage", "3-4"], "--stage 3-4 differs from the run's 3;"),
        (["--config", "demo"], f"--config demo differs from the run's {cfg_path};"),
        (["--seed", "2", "--epochs", "3"], "--epochs 3 differs from the run's 1; --seed 2 differs from the run's 1; "
                                           "resume without them"),
    ]:
        res = CliRunner().invoke(cli, ["-q", "train", "--out", str(out), "--resume", *given])
        assert res.exit_code == 1 and message in res.output, (given, res.output)
        assert len(res.output.strip().splitlines()) == 1
    res = CliRunner().invoke(cli, ["-q", "train", "--out", str(out), "--resume", *made_with, "--lr", "0.05",
                                   "--device", "cpu", "--workers", "0"])  # same values, and device/workers may change
    assert res.exit_code == 0 and "finished: stage 3 epoch 1/1" in res.output, res.output + repr(res.exception)


class _ScoreStub(torch.nn.Module):
    """keypoint_scores = the first pixel row's red values (the samples encode visibility there)."""

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images):
        n, p = images.shape[0], self.config.num_parts
        return {"logits": torch.zeros(n, 3), "keypoints": torch.zeros(n, p, 2),
                "keypoint_scores": images[:, 0, 0, :p]}


def test_calibrate_visibility_picks_threshold_separating_visible_parts():
    from fgdeploy.data.sample import Sample
    from fgdeploy.data.transforms import EvalTransform
    from fgdeploy.train.data import EvalItems, TrainData
    from fgdeploy.train.trainer import calibrate_visibility

    rng = np.random.default_rng(0)
    samples = []
    for k in range(6):
        visible = rng.random(15) > 0.3
        image = np.zeros((64, 64, 3), np.uint8)
        image[0, :15, 0] = np.where(visible, 0.6, 0.2) * 255  # scores 0.6 (visible) / 0.2 (hidden)
        samples.append(Sample(image=image, keypoints=np.full((15, 2), 8, np.float32), visible=visible,
                              bbox=np.array([0, 0, 64, 64], np.float32), label=k % 3, image_id=k + 1, path="x.jpg",
                              orig_size=(64, 64)))
    data = TrainData(train_dataset=None, eval_dataset=EvalItems(samples, EvalTransform(64)),  # type: ignore
                     train_indices=[], val_indices=list(range(6)), class_names=["a", "b", "c"],
                     part_names=[str(p) for p in range(15)])
    net = _ScoreStub(dataclasses.replace(tiny_model_config(), zero_invisible_parts=True))
    assert net.config.visibility_threshold == 0.5
    t = calibrate_visibility(net, data, torch.device("cpu"), DistInfo(), amp=False)
    assert t is not None and 0.2 < t <= 0.6 and net.config.visibility_threshold == t


def test_run_training_without_data_generates_synth_birds_and_resume_continues_exactly(tmp_path):
    from fgdeploy.config import dataclass_to_dict
    from fgdeploy.train.run import TrainOptions, run_training
    from fgdeploy.train.state import Hooks

    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(dataclass_to_dict(tiny_model_config())))

    def options(out, **kw):
        return TrainOptions(config=str(cfg_path), out=out, stage="2-3", epochs=2, batch=4, seed=1,
                            show_progress=False, synth_classes=3, synth_images_per_class=10, synth_size=64, **kw)

    full = run_training(options(tmp_path / "full"))
    assert (tmp_path / "full" / "synth-birds" / "images.txt").is_file()
    assert full.data_root == tmp_path / "full" / "synth-birds"

    def kill(state):
        if state.global_step == 5:
            raise Killed("simulated kill")

    with pytest.raises(Killed):
        run_training(options(tmp_path / "run", hooks=Hooks(on_step=kill)))
    resumed = run_training(TrainOptions(config=str(cfg_path), out=tmp_path / "run", resume=True, show_progress=False))
    assert _comparable(resumed.state.history) == _comparable(full.state.history)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
