"""DDP under torchrun on CPU (gloo): 2 processes train a few steps; only rank 0 writes run files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import yaml

from fgdeploy.config import dataclass_to_dict

from .conftest import tiny_model_config

WORKER = textwrap.dedent('''
    import hashlib, os, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    import fgdeploy.checkpoint as ck
    import fgdeploy.fileio as fileio
    from fgdeploy.train.run import TrainOptions, run_training

    spy_dir, cfg, data, out = (Path(a) for a in sys.argv[1:5])
    rank = os.environ["RANK"]
    original = fileio.atomic_write_bytes

    def spy(path, payload):  # record every run-file write with the writing rank
        with open(spy_dir / f"writes_rank{rank}.txt", "a") as fh:
            fh.write(f"{Path(path).name}\\n")
        return original(path, payload)

    # every atomic write goes through fgdeploy.fileio; checkpoint.py holds its own reference to it
    fileio.atomic_write_bytes = ck.atomic_write_bytes = spy
    result = run_training(TrainOptions(config=str(cfg), data=data, out=out, stage="all", epochs=1, batch=4,
                                       device="cpu", show_progress=False))
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in result.model.state_dict().values()))
    (spy_dir / f"weights_rank{rank}.txt").write_text(digest.hexdigest())
    (spy_dir / f"steps_rank{rank}.txt").write_text(str(result.state.global_step))
''')


def test_ddp_two_cpu_processes_train_and_only_rank0_writes(tiny_data, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(dataclass_to_dict(tiny_model_config())))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    spy, out = tmp_path / "spy", tmp_path / "run"
    spy.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
           str(script), str(spy), str(cfg), str(tiny_data), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "find_unused_parameters=True was specified" not in proc.stderr   # issue 17 #16: no DDP warning noise

    assert not (spy / "writes_rank1.txt").exists(), (spy / "writes_rank1.txt").read_text()
    written = set((spy / "writes_rank0.txt").read_text().split())
    assert {"config.yaml", "last.pt", "best.pt", "metrics.jsonl"} <= written
    assert (out / "train.log").is_file()
    # DDP kept both replicas identical, and both took the same number of steps.
    assert (spy / "weights_rank0.txt").read_text() == (spy / "weights_rank1.txt").read_text()
    assert (spy / "steps_rank0.txt").read_text() == (spy / "steps_rank1.txt").read_text() != "0"
    log = (out / "train.log").read_text()
    assert "2 process(es)" in log and "stage 4 epoch 1/1" in log
