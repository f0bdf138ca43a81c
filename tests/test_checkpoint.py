"""Checkpoint files: safe loading, atomic writes, metadata and hash."""

from __future__ import annotations

import hashlib
import os
import pickle

import pytest
import torch

from fgdeploy import fileio
from fgdeploy.checkpoint import CheckpointMeta, read_checkpoint, save_checkpoint
from fgdeploy.errors import CheckpointError


def _meta(epoch: int = 1) -> CheckpointMeta:
    return CheckpointMeta(model_config={"name": "tiny", "input_size": 32}, class_names=["a", "b", "c"],
                          part_names=["p0", "p1"], input_size=32, mean=[0.4, 0.5, 0.6], std=[0.2, 0.2, 0.3],
                          stage=2, epoch=epoch)


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))


def test_checkpoint_roundtrip_keeps_weights_meta_and_extra_state(tmp_path):
    model = _model(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(2, 3, 8, 8)).sum().backward()
    opt.step()
    extra = {"optimizer": opt.state_dict(), "rng": torch.get_rng_state(), "step": 7}
    path = tmp_path / "sub" / "last.pt"
    digest = save_checkpoint(path, model, _meta(epoch=3), extra)
    data = read_checkpoint(path)
    for name, value in model.state_dict().items():
        assert torch.equal(data.state_dict[name], value)
    assert data.meta.epoch == 3 and data.meta.stage == 2 and data.meta.class_names == ["a", "b", "c"]
    assert data.meta.num_classes == 3
    assert data.meta.sha256 == digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert data.extra_state["step"] == 7
    opt2 = torch.optim.SGD(_model(1).parameters(), lr=0.5, momentum=0.9)
    opt2.load_state_dict(data.extra_state["optimizer"])
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.1)


@pytest.mark.parametrize("hook", ["fsync", "replace"])
def test_checkpoint_crash_while_writing_leaves_previous_loadable(tmp_path, monkeypatch, hook):
    path = tmp_path / "last.pt"
    old = _model(0)
    save_checkpoint(path, old, _meta(epoch=1))
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(fileio.os, hook, crash)  # the atomic write lives in fgdeploy.fileio
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, _model(1), _meta(epoch=2))
    monkeypatch.undo()
    assert path.read_bytes() == before
    data = read_checkpoint(path)
    assert data.meta.epoch == 1
    assert torch.equal(data.state_dict["0.weight"], old.state_dict()["0.weight"])
    assert os.listdir(tmp_path) == ["last.pt"]  # no temp file left behind


def test_checkpoint_plain_state_dict_is_rejected_with_checkpoint_error(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(_model(0).state_dict(), path)
    with pytest.raises(CheckpointError, match="not an fgdeploy checkpoint"):
        read_checkpoint(path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_pickled_code_is_not_executed(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"format": "fgdeploy-checkpoint", "x": _Evil()}, fh, protocol=2)
    with pytest.raises(CheckpointError, match="objects other than tensors and plain data, which are not loaded"):
        read_checkpoint(path)


def test_checkpoint_garbage_and_missing_files_raise_checkpoint_error(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(bytes(range(256)) * 2)  # fixed garbage (random bytes made the unpickler raise IndexError)
    with pytest.raises(CheckpointError, match=r"not a PyTorch checkpoint \(unrecognised binary data"):
        read_checkpoint(path)
    path.write_bytes(b"\x80\x02" + bytes(range(256)))   # a pickle header, then garbage: the unpickler fails
    with pytest.raises(CheckpointError, match="not a loadable fgdeploy checkpoint: torch.load cannot read it"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pt")


def test_load_checkpoint_rebuilds_the_model_with_equal_outputs(tmp_path):
    from fgdeploy.checkpoint import load_checkpoint
    from fgdeploy.models import create_model, load_model_config, with_backbone_options

    cfg = with_backbone_options(load_model_config("demo"), {"widths": [4, 8, 8, 16, 16], "depth": 1}, input_size=64)
    torch.manual_seed(0)
    model = create_model(cfg, num_classes=3).eval()
    meta = CheckpointMeta.for_config(cfg, ["a", "b", "c"], [f"p{i}" for i in range(15)], stage=4, epoch=2)
    assert (meta.input_size, meta.mean, meta.part_names[1]) == (64, list(cfg.mean), "p1")
    save_checkpoint(tmp_path / "best.pt", model, meta)
    loaded, meta2 = load_checkpoint(tmp_path / "best.pt")
    images = torch.rand(2, 3, cfg.input_size, cfg.input_size)
    with torch.no_grad():
        a, b = model(images), loaded(images)
    assert not loaded.training and loaded.config == cfg and meta2.stage == 4
    for key in ("logits", "keypoints", "keypoint_scores"):
        torch.testing.assert_close(a[key], b[key])

    wrong = CheckpointMeta(**{**meta.__dict__, "class_names": ["a", "b"]})
    save_checkpoint(tmp_path / "wrong.pt", model, wrong)
    with pytest.raises(CheckpointError, match="do not match the model config"):
        load_checkpoint(tmp_path / "wrong.pt")


@pytest.mark.parametrize("name, content, kind", [
    ("model.onnx", b"\x08\x08\x12\x07pytorch", "an ONNX model"),
    ("notes.pt", b"just some text\n", "a text file"),
    ("empty.pt", b"", "an empty file"),
])
def test_checkpoint_error_says_what_the_file_looks_like(tmp_path, name, content, kind):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(CheckpointError, match=f"is not a PyTorch checkpoint \\({kind}"):
        read_checkpoint(tmp_path / name)


def test_cli_eval_of_an_onnx_file_points_at_parity(tmp_path):
    from click.testing import CliRunner

    from fgdeploy.cli import cli

    (tmp_path / "model.onnx").write_bytes(b"\x08\x08")
    result = CliRunner().invoke(cli, ["eval", str(tmp_path / "model.onnx")])
    assert result.exit_code == 1 and "eval takes a .pt checkpoint" in result.output and "fgdeploy parity" in \
        result.output


def test_truncated_checkpoint_message_is_whole(tmp_path):
    """Issue 17 #6: torch's text was cut mid-sentence ("...your checkpoint file is); use ...")."""
    import torch

    full = tmp_path / "full.pt"
    torch.save({"format": "fgdeploy-checkpoint", "w": torch.arange(10000.0)}, full)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(full.read_bytes()[:20000])
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(cut)
    message = str(info.value)
    assert message == (f"{cut} is not a loadable fgdeploy checkpoint: torch.load cannot read it: the file is truncated "
                       "or corrupt (-v shows torch's message); use a checkpoint written by fgdeploy train "
                       "(runs/NAME/best.pt or last.pt)")
