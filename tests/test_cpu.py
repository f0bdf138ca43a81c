"""fgdeploy.cpu: threads from the cores this process may use; OpenMP idle threads sleep (issue 17 #5)."""

import os
import subprocess
import sys

import pytest

from fgdeploy.cpu import default_threads, usable_cores


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
def test_threads_follow_the_cpu_affinity_not_the_machine():
    """taskset / a Slurm allocation: torch alone would size its pool from the machine's cores."""
    code = ("import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
            "import torch; from fgdeploy.cpu import set_threads, usable_cores; "
            "print(usable_cores(), set_threads(None), torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["1", "1", "1"]


def test_torchrun_processes_share_the_cores(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(usable_cores() + 1))
    assert default_threads() == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert default_threads() == usable_cores()


@pytest.mark.parametrize("preset, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_training_commands_make_openmp_threads_sleep_unless_the_user_chose(tmp_path, preset, expected):
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    code = ("import os, sys; from click.testing import CliRunner; from fgdeploy.cli import cli; "
            f"r = CliRunner().invoke(cli, ['train', '--out', {str(tmp_path / 'run')!r}, '--pretrained', "
            f"{str(tmp_path / 'notes.txt')!r}]); print(r.exit_code, os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | ({"OMP_WAIT_POLICY": preset} if preset else {})
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120, env=env)
    assert out.stdout.split() == ["1", expected]


def test_training_dataloader_workers_get_one_thread():
    from fgdeploy.data.torch_dataset import worker_init
    from fgdeploy.train.data import make_loader

    assert make_loader([], [], workers=2).worker_init_fn is worker_init
    assert make_loader([], [], workers=0).worker_init_fn is None
