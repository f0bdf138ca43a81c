"""``fgdeploy infer --ray`` on a local Ray instance (2 CPUs, loopback only, one per module).

Must show: the same OUT, errors file and run record as local ``infer`` on a folder with bad files (one above
``--max-pixels``); a model actor's or decode task's process SIGKILLed mid-run -> the run finishes with each image
once (one death counted); the journal sink keeps each image's first result when the listing names it again
(under another spelling of its path); the driver SIGKILLed mid-run ->
``--resume`` finishes with each image once; without Ray, ``--ray`` is a one-line error naming what to install;
every socket of the Ray processes is on loopback. Each test runs under a time limit.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from fgdeploy.cli import cli
from fgdeploy.inference.results import errors_path_for, read_results, run_record_path
from test_infer import BAD, GOOD, _bright_spot_image, _encode, _tiny_onnx, make_mixed_folder

RAY_INSTALLED = True
try:
    import ray  # noqa: F401
except ImportError:
    RAY_INSTALLED = False
needs_ray = pytest.mark.skipif(not RAY_INSTALLED, reason="Ray is not installed: pip install -e '.[ray]'")


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Fail the test (instead of hanging CI) if the block runs longer than ``seconds``."""
    def expire(signum, frame):
        raise TimeoutError(f"test took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """One local Ray instance for the module: 2 CPUs, a small object store; shut down afterwards."""
    if not RAY_INSTALLED:
        pytest.skip("Ray is not installed: pip install -e '.[ray]'")
    from fgdeploy.inference.ray_cluster import ClusterOptions, ray_session

    with ray_session(ClusterOptions(cpus=2, object_store_bytes=256 << 20)) as ray:
        yield ray.get_runtime_context().gcs_address


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    return _tiny_onnx(tmp_path_factory.mktemp("ray_model"))


def _infer(args: list[str]):
    return CliRunner().invoke(cli, ["infer", *args])


def _run_record(out: Path) -> dict:
    record = json.loads(run_record_path(out).read_text(encoding="utf-8"))
    return {k: v for k, v in record.items() if k not in ("out", "finished")}


def _photo_folder(root: Path, count: int, size: tuple[int, int] = (900, 1200)) -> Path:
    """JPEGs large enough that decoding them takes a while (so a run can be interrupted half-way)."""
    root.mkdir(parents=True)
    h, w = size
    for k in range(count):
        image = cv2.resize(_bright_spot_image(h // 8, w // 8, (k % 20, 3), seed=k), (w, h))
        noise = np.random.default_rng(k).integers(0, 60, image.shape, dtype=np.uint8)
        (root / f"photo_{k:03d}.jpg").write_bytes(_encode(cv2.add(image, noise), ".jpg"))
    return root


# --------------------------------------------------------------------------------------------
# same results as local
@needs_ray
def test_ray_infer_writes_what_local_infer_writes_bad_files_included(tmp_path, tiny_onnx, ray_address):
    from test_max_pixels import declared_png

    images = make_mixed_folder(tmp_path / "imgs")
    (images / "bomb.png").write_bytes(declared_png(60000, 60000))   # refused from its header, on Ray too
    bad = len(BAD) + 1
    local, remote = tmp_path / "local.csv", tmp_path / "ray.csv"
    common = [str(images), "--model", str(tiny_onnx), "--batch", "3", "--topk", "3"]
    with time_limit(180):
        local_result = _infer([*common, "--out", str(local)])
        ray_result = _infer([*common, "--out", str(remote), "--ray"])
    assert local_result.exit_code == 0, local_result.output
    assert ray_result.exit_code == 0, ray_result.output
    # on CPUs one actor per CPU of the instance (2), each decoding its own images
    assert "x 2 Ray actors, batch 3" in ray_result.output and "Ray actor" not in local_result.output
    assert len(read_results(remote)) == len(GOOD)
    assert remote.read_bytes() == local.read_bytes()                                   # same rows, same order
    assert errors_path_for(remote).read_bytes() == errors_path_for(local).read_bytes()   # same bad files, reasons
    assert len(errors_path_for(remote).read_text(encoding="utf-8").splitlines()) == 1 + bad
    assert "60000 x 60000 pixels (3600 Mpx) is more than --max-pixels" in ray_result.output
    assert _run_record(remote) == _run_record(local)
    summary = f"scored {len(GOOD)}/{len(GOOD) + bad} images (0 from a previous run), failed {bad}"
    assert summary in local_result.output and summary in ray_result.output
    assert f"errors:  {errors_path_for(remote)} ({bad} images)" in ray_result.output


@needs_ray
def test_decode_tasks_pipeline_writes_what_local_infer_writes(tmp_path, tiny_onnx, ray_address):
    """The GPU actors' pipeline (decode in CPU tasks, then the model actors), run here on CPU: same OUT,
    errors file and counts as local, bad files included."""
    from fgdeploy.inference.local import InferOptions, discover_images, run_inference
    from fgdeploy.inference.predictors import open_predictor
    from fgdeploy.inference.ray_scoring import ModelSpec, RayOptions, run_ray_inference

    paths = discover_images(make_mixed_folder(tmp_path / "imgs"))
    options = InferOptions(batch=3, topk=3)
    announced: list[int] = []
    with time_limit(180):
        report = run_ray_inference(paths, ModelSpec(str(tiny_onnx), "ort", batch=3), tmp_path / "ray.csv",
                                   options=options, ray_options=RayOptions(decode_tasks=True), model_id="tiny",
                                   on_model=lambda info, actors: announced.append(actors))
        with open_predictor(tiny_onnx, "ort", device="cpu", batch=3) as loaded:
            run_inference(paths, loaded.predictor, tmp_path / "local.csv", class_names=loaded.class_names,
                          part_names=loaded.part_names, options=options, model_id="tiny")
    assert announced == [1]                      # 2 CPUs: one for a decode task, one for the model actor
    assert report.scored == len(GOOD) and report.failed == len(BAD)
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "local.csv").read_bytes()
    assert errors_path_for(tmp_path / "ray.csv").read_bytes() == errors_path_for(tmp_path / "local.csv").read_bytes()


@needs_ray
def test_ray_resume_extends_a_finished_local_run(tmp_path, tiny_onnx, ray_address):
    """Both write the same journal header and run record, so ``--resume`` carries either's results over."""
    src = tmp_path / "imgs"
    src.mkdir()
    names = [f"img_{k}.png" for k in range(6)]
    for k, name in enumerate(names[:3]):
        (src / name).write_bytes(_encode(_bright_spot_image(30, 40, (k, 3), seed=k), ".png"))
    out = tmp_path / "r.jsonl"
    args = [str(src), "--model", str(tiny_onnx), "--out", str(out), "--batch", "2"]
    with time_limit(120):
        first = _infer(args)
        for k, name in enumerate(names[3:], 3):
            (src / name).write_bytes(_encode(_bright_spot_image(30, 40, (k, 3), seed=k), ".png"))
        second = _infer([*args, "--ray", "--resume"])
    assert first.exit_code == 0 and second.exit_code == 0, second.output
    assert "(3 from a previous run)" in second.output
    assert sorted(Path(r["path"]).name for r in read_results(out)) == names


@needs_ray
def test_ray_infer_all_bad_exits_3_like_local(tmp_path, tiny_onnx, ray_address):
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.png").write_text("nope")
    with time_limit(120):
        result = _infer([str(tmp_path), "--model", str(tiny_onnx), "--out", str(tmp_path / "r.jsonl"), "--ray"])
    assert result.exit_code == 3, result.output
    assert read_results(tmp_path / "r.jsonl") == []


@needs_ray
def test_ray_infer_model_or_device_problems_are_one_line_errors(tmp_path, ray_address):
    images = make_mixed_folder(tmp_path / "imgs")
    (tmp_path / "bad.onnx").write_text("not a model")
    with time_limit(120):
        bad_model = _infer([str(images), "--model", str(tmp_path / "bad.onnx"), "--out", str(tmp_path / "r.csv"),
                            "--ray"])
        no_gpu = _infer([str(images), "--model", str(tmp_path / "bad.onnx"), "--out", str(tmp_path / "r.csv"),
                         "--ray", "--device", "cuda"])
        no_cpu_left = _infer([str(images), "--model", str(tmp_path / "bad.onnx"), "--out", str(tmp_path / "r.csv"),
                              "--ray", "--actors", "3"])
    assert bad_model.exit_code == 1
    assert bad_model.output.count("\n") == 1 and "cannot load the model" in bad_model.output, bad_model.output
    assert no_gpu.exit_code == 1 and "the Ray cluster has no GPUs" in no_gpu.output, no_gpu.output
    assert no_cpu_left.exit_code == 1 and "3 model actor(s) of 1 CPU(s) need 3 CPUs; the Ray cluster has 2" in \
        no_cpu_left.output, no_cpu_left.output
    assert not list(tmp_path.glob("r.*"))


# --------------------------------------------------------------------------------------------
# nothing lost, nothing twice
def _children(pid: int) -> list[int]:
    """All descendants of ``pid`` (Linux /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        found += kids
        frontier += kids
    return found


def _linked(target: Path, folder: Path, k: int) -> Path:
    folder.mkdir(exist_ok=True)
    link = folder / f"{k:03d}_{target.name}"
    link.symlink_to(target)
    return link


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return ""


@needs_ray
def test_ray_infer_survives_a_killed_model_actor_each_image_once(tmp_path, tiny_onnx, ray_address):
    """The model actor's process (one actor: it holds the rest of the work) is SIGKILLed after the first
    results arrive; the driver starts another and sends its block again; OUT holds every image once, with the
    values a local run writes."""
    from fgdeploy.inference.local import InferOptions, discover_images, run_inference
    from fgdeploy.inference.predictors import open_predictor
    from fgdeploy.inference.ray_scoring import ModelSpec, RayOptions, run_ray_inference

    paths = discover_images(_photo_folder(tmp_path / "photos", 40))
    paths = paths * 3   # the same files under three names each: 120 images, blocks of 30 paths
    paths = [str(_linked(Path(p), tmp_path / "links", k)) for k, p in enumerate(paths)]
    options = InferOptions(batch=2, topk=3)
    killed: list[int] = []
    after_kill: list[int] = []

    def kill_actor_once(n: int) -> None:
        if killed:
            after_kill.append(n)
            return
        actors = [p for p in _children(os.getpid()) if "ModelActor" in _cmdline(p)]
        assert len(actors) == 1, [_cmdline(p) for p in actors]
        os.kill(actors[0], signal.SIGKILL)
        killed.append(actors[0])

    with time_limit(240):
        report = run_ray_inference(paths, ModelSpec(str(tiny_onnx), "ort", batch=2), tmp_path / "ray.jsonl",
                                   options=options, ray_options=RayOptions(actors=1), model_id="tiny",
                                   on_progress=kill_actor_once)
        with open_predictor(tiny_onnx, "ort", device="cpu", batch=2) as loaded:
            run_inference(paths, loaded.predictor, tmp_path / "local.jsonl", class_names=loaded.class_names,
                          part_names=loaded.part_names, options=options, model_id="tiny")
    assert killed and not Path(f"/proc/{killed[0]}").exists()
    assert sum(after_kill) >= 30                               # at least a block came after the kill
    records = read_results(tmp_path / "ray.jsonl")
    assert sorted(r["path"] for r in records) == sorted(paths)   # each image exactly once
    assert report.scored == len(paths) and report.attempted == len(paths) and not report.errors
    assert report.worker_deaths == 1
    assert records == read_results(tmp_path / "local.jsonl")


@needs_ray
def test_ray_infer_survives_a_killed_decode_task_each_image_once(tmp_path, tiny_onnx, ray_address):
    """With decode tasks (the GPU actors' pipeline, run here on CPU), a decode task's process is SIGKILLed
    while it decodes; the driver sends its block again; OUT holds every image once."""
    from fgdeploy.inference.local import InferOptions, discover_images
    from fgdeploy.inference.ray_scoring import ModelSpec, RayOptions, run_ray_inference

    paths = discover_images(_photo_folder(tmp_path / "photos", 40))
    paths = [str(_linked(Path(p), tmp_path / "links", k)) for k, p in enumerate(paths * 3)]
    killed: list[int] = []

    def kill_a_decode_task(n: int) -> None:
        if not killed:
            busy = [p for p in _children(os.getpid()) if "decode_paths" in _cmdline(p)]
            if busy:
                os.kill(busy[0], signal.SIGKILL)
                killed.append(busy[0])

    with time_limit(240):
        report = run_ray_inference(paths, ModelSpec(str(tiny_onnx), "ort", batch=2), tmp_path / "ray.jsonl",
                                   options=InferOptions(batch=2, topk=3),
                                   ray_options=RayOptions(decode_tasks=True), model_id="tiny",
                                   on_progress=kill_a_decode_task)
    assert killed, "no decode task was running when results arrived"
    records = read_results(tmp_path / "ray.jsonl")
    assert sorted(r["path"] for r in records) == sorted(paths)   # each image exactly once
    assert report.scored == len(paths) and report.attempted == len(paths) and not report.errors
    assert report.worker_deaths == 1


@needs_ray
def test_ray_infer_driver_killed_then_resume_scores_each_image_once(tmp_path, tiny_onnx, ray_address):
    """The CLI (a subprocess joining the running instance, slowed after each journal write) is SIGKILLed
    once results are journaled; ``--resume`` finishes the run: every image once, the same as local."""
    src = tmp_path / "imgs"
    src.mkdir()
    for k in range(24):
        (src / f"img_{k:02d}.png").write_bytes(_encode(_bright_spot_image(30, 40, (k, 3), seed=k), ".png"))
    out, journal = tmp_path / "r.jsonl", tmp_path / "r.jsonl.partial.jsonl"
    args = ["infer", str(src), "--model", str(tiny_onnx), "--out", str(out), "--batch", "2"]
    slowed = ("import sys, time, fgdeploy.inference.results as m\n"
              "real = m.Journal.append_lines\n"
              "def append_lines(self, lines):\n"
              "    real(self, lines)\n"
              "    time.sleep(0.3)\n"
              "m.Journal.append_lines = append_lines\n"
              "from fgdeploy.cli import cli\n"
              f"cli({[*args, '--ray', ray_address]!r})\n")
    with time_limit(240):
        proc = subprocess.Popen([sys.executable, "-c", slowed], cwd=tmp_path, stderr=subprocess.PIPE)
        try:
            while proc.poll() is None:
                if journal.exists() and journal.read_text(encoding="utf-8").count("\n") >= 1 + 4:
                    break
                time.sleep(0.02)
            assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()[1][-2000:]!r}"
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()
        done_before = journal.read_text(encoding="utf-8").count("\n") - 1
        assert 4 <= done_before < 24 and not out.exists()
        result = CliRunner().invoke(cli, [*args, "--ray", "--resume"])
        local = CliRunner().invoke(cli, [*args[:-4], "--out", str(tmp_path / "local.jsonl"), "--batch", "2"])
    assert result.exit_code == 0, result.output
    assert f"({done_before} from a previous run)" in result.output
    records = read_results(out)
    assert sorted(Path(r["path"]).name for r in records) == [f"img_{k:02d}.png" for k in range(24)]
    assert local.exit_code == 0, local.output
    by_path = {r["path"]: r for r in read_results(tmp_path / "local.jsonl")}
    assert {r["path"]: r for r in records} == by_path
    assert not journal.exists()


# --------------------------------------------------------------------------------------------
# loopback only
def _tcp_sockets(pids: list[int]) -> list[tuple[str, str, str]]:
    """(local address, remote address, state) of the TCP sockets the processes hold (Linux /proc)."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    found.append((_hex_ip(fields[1]), _hex_ip(fields[2]), "LISTEN" if fields[3] == "0A" else fields[3]))
    return found


def _hex_ip(field: str) -> str:
    """/proc/net/tcp's hex address (little-endian 32-bit words) as text, without the port."""
    raw = bytes.fromhex(field.split(":")[0])
    packed = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(packed)
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


@needs_ray
def test_local_ray_instance_listens_and_talks_on_loopback_only_and_reports_nothing(ray_address):
    from ray._common.usage.usage_lib import usage_stats_enabled

    assert ray_address.startswith("127.0.0.1:")
    sockets = _tcp_sockets([os.getpid(), *_children(os.getpid())])
    assert any(state == "LISTEN" for _, _, state in sockets)        # the scan sees Ray's servers
    outside = [s for s in sockets if not ipaddress.ip_address(s[0]).is_loopback
               or (s[2] != "LISTEN" and not ipaddress.ip_address(s[1]).is_loopback)]
    assert not outside, outside
    assert not usage_stats_enabled()


@needs_ray
def test_joining_without_the_clusters_token_says_how_to_give_it(tmp_path, tiny_onnx, ray_address):
    """The instance runs with token authentication (Ray's default for the clusters it starts); a driver given its
    address without RAY_AUTH_MODE=token is refused: a one-line error naming the fix, not Ray's "Failed to connect"
    and its once-a-second retry lines; nothing written."""
    if os.environ.get("RAY_AUTH_MODE") != "token":
        pytest.skip("this Ray runs its instances without token authentication (RAY_AUTH_MODE is not 'token')")
    make_mixed_folder(tmp_path / "imgs")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_") and k != "RAY_ADDRESS"}
    cmd = [sys.executable, "-m", "fgdeploy", "infer", str(tmp_path / "imgs"), "--model", str(tiny_onnx),
           "--out", str(tmp_path / "r.csv"), "--ray", ray_address]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    lines = [line for line in done.stderr.strip().splitlines() if not line.startswith("INFO ")]
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr[-2000:]
    assert "token" in lines[0] and "RAY_AUTH_MODE=token" in lines[0] and "ray get-auth-token" in lines[0]
    assert not (tmp_path / "r.csv").exists() and not (tmp_path / "r.csv.partial.jsonl").exists()


def test_connection_refusals_for_a_missing_token_are_told_apart_from_other_failures():
    from fgdeploy.inference.ray_cluster import refused_for_missing_token

    class AuthenticationError(Exception):   # what Ray raises inside its GCS client, by name
        pass

    def chained(inner: BaseException) -> ConnectionError:
        try:
            try:
                raise inner
            except Exception as exc:
                raise RuntimeError("Failed to connect to GCS") from exc
        except RuntimeError as exc:
            outer = ConnectionError("Failed to connect to Ray cluster at 127.0.0.1:6379")
            outer.__cause__ = exc
            return outer

    assert refused_for_missing_token(chained(AuthenticationError("RPC error")))
    assert refused_for_missing_token(chained(RuntimeError("... InvalidAuthToken: token is missing ...")))
    assert not refused_for_missing_token(chained(TimeoutError("timed out after 60 s")))
    assert not refused_for_missing_token(ConnectionError("Failed to connect to Ray cluster at 10.0.0.5:6379"))


@pytest.mark.parametrize("user_setting", [None, "5"])
def test_joining_an_unreachable_cluster_gives_up_after_two_tries_unless_the_user_asks_for_more(
        monkeypatch, user_setting):
    """Ray's default (20 tries of ~40 s when nothing answers) would hang a mistyped address for ~13 minutes."""
    import types

    from fgdeploy.errors import FgdeployError
    from fgdeploy.inference import ray_cluster

    variable = ray_cluster.CONNECT_ATTEMPTS_VARIABLE
    if user_setting is None:
        monkeypatch.delenv(variable, raising=False)
    else:
        monkeypatch.setenv(variable, user_setting)
    seen: list[str | None] = []

    def init(**kwargs):
        seen.append(os.environ.get(variable))
        raise ConnectionError(f"Failed to connect to Ray cluster at {kwargs['address']}")

    fake = types.SimpleNamespace(is_initialized=lambda: False, init=init, shutdown=lambda: None)
    monkeypatch.setattr(ray_cluster, "import_ray", lambda needs=None: fake)
    monkeypatch.setattr(ray_cluster, "quiet_ray_logs", lambda: None)
    with pytest.raises(FgdeployError, match="cannot reach the Ray cluster at '10.9.9.9:6379'") as error:
        with ray_cluster.ray_session(ray_cluster.ClusterOptions(address="10.9.9.9:6379")):
            pass
    expected = user_setting or "2"
    assert seen == [expected] and f"{expected} attempts" in str(error.value) and variable in str(error.value)
    assert os.environ.get(variable) == user_setting          # put back as it was


# --------------------------------------------------------------------------------------------
# options and a missing Ray
def test_ray_missing_is_a_one_line_error_naming_what_to_install(tmp_path, monkeypatch, tiny_onnx):
    make_mixed_folder(tmp_path / "imgs")
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)      # `import ray` now fails as if it were not installed
    result = _infer([str(tmp_path / "imgs"), "--model", str(tiny_onnx), "--out", str(tmp_path / "r.csv"), "--ray"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "pip install ray (from a checkout" in lines[0] and "--ray" in lines[0], result.output
    assert not (tmp_path / "r.csv").exists() and not (tmp_path / "r.csv.partial.jsonl").exists()


def test_bare_ray_joins_ray_address_if_set_else_starts_a_local_instance(monkeypatch):
    from fgdeploy.inference.ray_cluster import ClusterOptions, target_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert target_address(ClusterOptions(address="")) == "local"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert target_address(ClusterOptions(address="")) == "10.0.0.5:6379"     # what `--ray` with no address passes
    assert target_address(ClusterOptions(address="local")) == "local"
    assert target_address(ClusterOptions(address="auto")) == "auto"


@pytest.mark.parametrize("extra, message", [
    (["--ray", "--workers", "2"], "--workers: not with --ray"),
    (["--ray", "--save-vis", "vis"], "--save-vis: not with --ray"),
    (["--actors", "2"], "--actors: only with --ray"),
    (["--ray", "photos/"], "is not a Ray address"),
    (["--ray", "auto", "--cpus", "2"], "--cpus: for the local instance"),
])
def test_ray_options_that_do_not_fit_are_usage_errors(tmp_path, tiny_onnx, extra, message):
    make_mixed_folder(tmp_path / "imgs")
    result = _infer([str(tmp_path / "imgs"), "--model", str(tiny_onnx), "--out", str(tmp_path / "r.csv"), *extra])
    assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.parametrize("images,batch,actors", [(2000, 16, 2), (20000, 16, 8), (40, 2, 2), (120, 2, 1), (5, 3, 2),
                                                 (257, 16, 1), (1, 16, 4)])
def test_cpu_actor_blocks_cover_the_job_in_whole_rounds_of_at_most_16_batches(images, batch, actors):
    from fgdeploy.inference.ray_scoring import ACTOR_BLOCK_BATCHES, paths_per_block

    per_block = paths_per_block(False, images, batch, actors)
    blocks = -(-images // per_block)
    assert 1 <= per_block <= ACTOR_BLOCK_BATCHES * batch
    assert blocks % actors == 0 or blocks < actors                 # no actor idle in the last round
    assert per_block * (blocks - 1) < images <= per_block * blocks


def test_decode_tasks_get_blocks_of_four_batches():
    from fgdeploy.inference.ray_scoring import paths_per_block

    assert paths_per_block(True, 10_000, 64, 8) == 256


def test_ray_console_notes_are_kept_off_stderr_and_other_lines_are_not(capfd):
    from fgdeploy.inference.ray_cluster import RAY_GCS_RETRY_NOTE, RAY_LOG_LEVEL_NOTE, without_stderr_lines

    with without_stderr_lines(RAY_LOG_LEVEL_NOTE, RAY_GCS_RETRY_NOTE):
        os.write(2, b"[I logging.cc:303] Set ray log level from environment variable RAY_BACKEND_LOG_LEVEL to 3\n")
        os.write(2, b"[W gcs_client.cc:210] Failed to get cluster ID from GCS server: Unauthenticated: ...\n")
        os.write(2, b"a real problem\n")      # C++ code writes to the file descriptor, not sys.stderr
        print("from python", file=sys.stderr)
    err = capfd.readouterr().err
    assert "a real problem" in err and "from python" in err
    assert RAY_LOG_LEVEL_NOTE not in err and RAY_GCS_RETRY_NOTE not in err


# --------------------------------------------------------------------------------------------
# the driver's journal sink: each image's first result, once
def _sink(tmp_path, already_scored=()):
    from fgdeploy.inference.ray_scoring import _JournalSink
    from fgdeploy.inference.results import Journal

    journal = Journal(tmp_path / "j.jsonl")
    journal.start({"model": "m", "topk": 1, "cwd": str(tmp_path)})
    progress: list[int] = []
    return _JournalSink(journal, str(tmp_path), set(already_scored), progress.append), journal, progress


def _result(path: str) -> str:
    return json.dumps({"path": path, "width": 4, "height": 3, "top": [], "keypoints": [{"part": "beak"}]})


def _failure(path: str, reason: str = "worker died") -> str:
    return json.dumps({"path": path, "error": reason})


def test_journal_sink_keeps_a_success_after_a_failure_and_drops_repeats(tmp_path):
    """What the sink gets for an image listed more than once (the dispatcher hands out each block once, but a
    listing may name an image again, e.g. under another spelling of its path): a failure then a success (the
    success wins, the image is counted once), a success again (dropped), a failure after a success (dropped), a
    failure again (dropped, the first reason kept); the same image under another spelling is the same image."""
    from fgdeploy.inference.results import Journal

    sink, journal, progress = _sink(tmp_path)
    sink.write(["a.png", "b.png", "c.png"], [_result("a.png"), _failure("b.png", "first"), _failure("c.png")],
               [False, True, True])
    sink.write(["b.png", "./a.png"], [_result("b.png"), _result("./a.png")], [False, False])   # success after failure;
    sink.write(["a.png", "c.png", "sub/../c.png"], [_failure("a.png"), _failure("c.png", "again"),   # repeated success
                _failure("sub/../c.png", "again")], [True, True, True])                          # failures after ...
    journal.close()
    lines = [json.loads(line) for line in (tmp_path / "j.jsonl").read_text(encoding="utf-8").splitlines()[1:]]
    assert [(r["path"], "error" in r) for r in lines] == [("a.png", False), ("b.png", True), ("c.png", True),
                                                          ("b.png", False)]
    assert sink.attempted == 3 and sum(progress) == 3 and progress == [3]   # each image counted once
    assert sink.errors() == [("c.png", "worker died")]                       # b was scored in the end
    assert sink.part_names == ["beak"]
    assert Journal(tmp_path / "j.jsonl").reopen({"model": "m", "topk": 1, "cwd": str(tmp_path)}) == {
        str(tmp_path / "a.png"), str(tmp_path / "b.png")}


def test_journal_sink_skips_images_scored_by_a_previous_run(tmp_path):
    sink, journal, progress = _sink(tmp_path, already_scored=[str(tmp_path / "a.png")])
    sink.write(["a.png", "b.png"], [_result("a.png"), _result("b.png")], [False, False])
    journal.close()
    lines = (tmp_path / "j.jsonl").read_text(encoding="utf-8").splitlines()[1:]
    assert [json.loads(line)["path"] for line in lines] == ["b.png"] and sink.attempted == 1 and progress == [1]
