"""``fgdeploy infer --ray`` on a multi-node Ray cluster: a head and two worker nodes on this machine
(``ray.cluster_utils.Cluster``, 1 CPU each, loopback only), started from a folder of their own, so their
workers' working directory is not the driver's. The driver is the CLI in a subprocess joining the cluster by
address, as a user's would.

Must show: relative image, model, list-file and ``--resume`` paths work from the driver's folder; an image that
makes its worker process exit every time ends the run (bounded retries) in the errors file, with every other
image once; a worker node removed mid-run -> every image exactly once. The nodes' workers decode slowly
(a test hook, 40 ms per image) so that a node can be removed while its actor has work. Each run has a hard time
limit (subprocess timeout), the module's cluster is shut down at its end.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fgdeploy.inference.results import errors_path_for, read_errors, read_results
from test_infer import _bright_spot_image, _encode
from test_infer_ray import RAY_INSTALLED, _children, _tcp_sockets, tiny_onnx  # noqa: F401 - a fixture

pytestmark = pytest.mark.skipif(not RAY_INSTALLED, reason="Ray is not installed: pip install -e '.[ray]'")

POISON = "poison_07.png"       # the nodes' workers exit (os._exit) when they meet a file of this name
DECODE_SECONDS = 0.04          # the nodes' workers sleep this long per image (a slow decoder)
RUN_TIMEOUT = 150              # seconds a driver may run before the test fails instead of hanging CI


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[object]:
    """A head and two worker nodes (1 CPU each) on 127.0.0.1, started in a folder of their own."""
    from fgdeploy.inference.ray_cluster import loopback_cluster

    hooks = {"FGDEPLOY_TEST_EXIT_ON": POISON, "FGDEPLOY_TEST_DECODE_SECONDS": str(DECODE_SECONDS)}
    with loopback_cluster(2, 1, tmp_path_factory.mktemp("nodes_cwd"), hooks) as started:
        yield started


def _images(folder: Path, names: list[str]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        (folder / name).write_bytes(_encode(_bright_spot_image(30, 40, (k % 30, 3), seed=k), ".png"))
    return names


def _driver(args: list[str], cwd: Path, address: str) -> subprocess.Popen:
    """``fgdeploy infer ... --ray ADDRESS`` in ``cwd``, as a user's shell would start it."""
    from fgdeploy.inference.ray_cluster import driver_env

    return subprocess.Popen([sys.executable, "-m", "fgdeploy", "infer", *args, "--ray", address], cwd=cwd,
                            env=driver_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> str:
    try:
        output, _ = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"the run did not end within {RUN_TIMEOUT} s: {output[-3000:]}")
    return output


def test_cluster_listens_on_loopback_only(cluster):
    sockets = _tcp_sockets(_children(os.getpid()))
    assert any(state == "LISTEN" for _, _, state in sockets)
    outside = [s for s in sockets if not ipaddress.ip_address(s[0]).is_loopback
               or (s[2] != "LISTEN" and not ipaddress.ip_address(s[1]).is_loopback)]
    assert not outside, outside


def test_relative_paths_from_a_folder_the_workers_do_not_share(tmp_path, cluster, tiny_onnx):
    """Images, model, OUT and a list file named relative to the driver's folder, which is not the nodes'
    working directory; OUT records the names as the user gave them; ``--resume`` with a list file naming the
    same images another way skips them."""
    home = tmp_path / "user"
    first = _images(home / "hb" / "images", [f"img_{k:02d}.png" for k in range(10)])
    shutil.copy(tiny_onnx, home / "m.onnx")
    common = ["--model", "m.onnx", "--batch", "4", "--topk", "2"]
    output = _finish(_driver(["hb/images", *common, "--out", "rel.jsonl"], home, cluster.address))
    assert "scored 10/10 images" in output, output
    assert [r["path"] for r in read_results(home / "rel.jsonl")] == [f"hb/images/{n}" for n in first]

    more = _images(home / "hb" / "images", [f"img_{k:02d}.png" for k in range(10, 16)])
    (home / "lists").mkdir()
    (home / "lists" / "all.txt").write_text("".join(f"../hb/images/{n}\n" for n in first + more))
    output = _finish(_driver(["lists/all.txt", *common, "--out", "rel.jsonl", "--resume"], home, cluster.address))
    assert "scored 16/16 images (10 from a previous run), failed 0" in output, output
    paths = [r["path"] for r in read_results(home / "rel.jsonl")]
    assert paths == [f"hb/images/{n}" for n in first] + [f"lists/../hb/images/{n}" for n in more]
    assert read_errors(errors_path_for(home / "rel.jsonl")) == []


def test_an_image_that_kills_its_worker_every_time_ends_in_the_errors_file(tmp_path, cluster, tiny_onnx):
    """The nodes' workers exit on POISON (a decoder crash, every time): its block is retried, then its images
    alone; POISON goes to the errors file with the reason, every other image once, exit 0."""
    names = _images(tmp_path / "imgs", [f"img_{k:02d}.png" if k != 7 else POISON for k in range(24)])
    out = tmp_path / "r.csv"
    start = time.monotonic()
    output = _finish(_driver([str(tmp_path / "imgs"), "--model", str(tiny_onnx), "--out", str(out), "--batch", "4",
                              "--max-retries", "1"], tmp_path, cluster.address))
    seconds = time.monotonic() - start
    assert "scored 23/24 images (0 from a previous run), failed 1" in output, output
    records = read_results(out)
    assert sorted(Path(r["path"]).name for r in records) == sorted(n for n in names if n != POISON)
    errors = read_errors(errors_path_for(out))
    assert [Path(e["path"]).name for e in errors] == [POISON]
    assert "worker died 2 times decoding/scoring this image" in errors[0]["error"], errors
    assert "--max-retries 1" in errors[0]["error"]
    # 2 deaths charged to its block, then 2 alone; one more when another block waited behind it the first time
    deaths = re.search(r"workers died (\d+) times", output)
    assert deaths and int(deaths[1]) in (4, 5), output
    print(f"poison image reported after {seconds:.1f} s (driver start included)")


def test_a_worker_node_removed_mid_run_every_image_once(tmp_path, cluster, tiny_onnx):
    """A worker node (its raylet, object store and the model actor on it) is removed once the first results
    are journaled: every image ends up in OUT exactly once, none in the errors file. Runs last: the cluster
    keeps two nodes afterwards."""
    names = _images(tmp_path / "imgs", [f"img_{k:03d}.png" for k in range(150)])
    out = tmp_path / "r.jsonl"
    journal = tmp_path / "r.jsonl.partial.jsonl"
    proc = _driver([str(tmp_path / "imgs"), "--model", str(tiny_onnx), "--out", str(out), "--batch", "1"],
                   tmp_path, cluster.address)
    deadline = time.monotonic() + RUN_TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline:
        if journal.exists() and journal.read_text(encoding="utf-8").count("\n") > 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before a node could be removed: {proc.communicate()[0][-3000:]}"
    done_before = journal.read_text(encoding="utf-8").count("\n") - 1
    victim = next(iter(cluster.worker_nodes))
    cluster.remove_node(victim, allow_graceful=False)
    output = _finish(proc)
    assert done_before < len(names)
    assert "scored 150/150 images (0 from a previous run), failed 0" in output, output
    paths = [Path(r["path"]).name for r in read_results(out)]
    assert sorted(paths) == names and len(set(paths)) == len(names)      # each image exactly once
    assert read_errors(errors_path_for(out)) == []
    assert "workers died" in output, output                              # the removal hit a running actor
    print(f"node removed after {done_before} of {len(names)} images were journaled")
