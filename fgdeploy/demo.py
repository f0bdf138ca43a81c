"""The end-to-end demo: synth-birds -> train -> eval -> export (fp32, fp16, int8) -> infer -> parity -> bench.

Runs on a fresh CPU-only machine with no data. Every step records its result in
``OUT/demo_state.json``, together with the settings that determine the results (every ``DemoOptions``
field but ``out`` and ``device``, plus the config file's sha256). A rerun with the same settings skips
steps whose result and files are there (training that was interrupted continues from ``last.pt``), so a
killed demo picks up where it stopped; a rerun with other settings is refused. Delete the folder to start
over. ``summary_table`` renders one table: accuracy, PCK, head/body PCP, the INT8 guard and which convs are
INT8, parity verdicts and throughput per backend and precision.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fgdeploy.errors import ConfigError
from fgdeploy.fileio import atomic_write_json, file_sha256
from fgdeploy.text import plural, settings_text

logger = logging.getLogger(__name__)

STATE_FILE = "demo_state.json"
VIS_IMAGES = 4   # test images the infer step also draws (OUT/infer/vis)
STEPS: tuple[str, ...] = ("data", "train", "eval", "export", "infer", "parity", "bench")
NOT_SETTINGS = ("out", "device", "threads")  # where the demo runs and on what: the results do not depend on them


@dataclass(frozen=True)
class DemoOptions:
    """Sizes of the demo; ``quick`` shrinks every default for a smoke run (about a minute)."""

    out: Path = Path("runs/demo")
    quick: bool = False
    config: str = "demo_partnets"          # model config name in models/ or a YAML path (default: the paper's
                                           # best system, CPU-sized: parts + head/body part nets)
    device: str = "auto"                   # training/eval device; export, infer and parity run on CPU
    classes: int | None = None             # synth-birds classes (None: 20, quick 4)
    images_per_class: int | None = None    # (None: 30, quick 6)
    image_size: int | None = None          # synth image side (None: 256, quick 128)
    epochs: int | None = None              # every training stage (None: the config's preset, quick 1)
    train_batch: int | None = None         # training batch (None: the preset's, quick 4)
    batch: int = 16                        # infer/parity/bench batch size
    bench_iters: int | None = None         # timed model-only calls per backend (None: 10, quick 2)
    seed: int = 0
    threads: int | None = None             # CPU threads (None: the cores this process may use)

    def resolved(self) -> dict[str, Any]:
        q = self.quick
        pick = lambda value, full, quick: value if value is not None else (quick if q else full)  # noqa: E731
        return {"classes": pick(self.classes, 20, 4), "images_per_class": pick(self.images_per_class, 30, 6),
                "image_size": pick(self.image_size, 256, 128), "epochs": pick(self.epochs, None, 1),
                "train_batch": pick(self.train_batch, None, 4),
                "bench_iters": pick(self.bench_iters, 10, 2)}


@dataclass
class DemoResult:
    """Every step's result (plain JSON data), as stored in demo_state.json."""

    out: Path
    steps: dict[str, Any] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)        # steps run now (others came from the state file)
    seconds: dict[str, float] = field(default_factory=dict)   # wall time of each step when it ran

    @property
    def passed(self) -> bool:
        """True when every parity comparison passed."""
        return all(p["passed"] for p in self.steps.get("parity", []))


def run_demo(options: DemoOptions, echo: Callable[[str], None] = logger.info) -> DemoResult:
    """Run (or finish) the demo in ``options.out``; ``echo`` gets one line per step.

    Raises:
        ConfigError: before any step runs: a CUDA ``device`` this machine lacks, a bad ``config``, or an
        ``out`` whose state file records other settings (or none).
    """
    from fgdeploy.train.distributed import resolve_device

    from fgdeploy.cpu import set_threads

    resolve_device(options.device)   # a CUDA device this machine lacks fails now, not after the data step
    set_threads(options.threads)
    settings = demo_settings(options)
    out = Path(options.out)
    state_path = out / STATE_FILE
    state = _load_steps(state_path, settings)
    seconds = _load_seconds(state_path)
    out.mkdir(parents=True, exist_ok=True)
    _save_state(state_path, settings, state, seconds)  # the settings are claimed before the first step writes
    result = DemoResult(out, steps=state, seconds=seconds)
    sizes = options.resolved()
    actions: dict[str, Callable[[], Any]] = {
        "data": lambda: _step_data(out, sizes, options.seed),
        "train": lambda: _step_train(out, options, sizes),
        "eval": lambda: _step_eval(out, options),
        "export": lambda: _step_export(out),
        "infer": lambda: _step_infer(out, options.batch),
        "parity": lambda: _step_parity(out, options.batch),
        "bench": lambda: _step_bench(out, options.batch, sizes["bench_iters"]),
    }
    for name in STEPS:
        if name in state and _outputs_exist(state[name]):
            echo(f"[{name}] done before, skipped")
            continue
        echo(f"[{name}] running")
        started = time.perf_counter()
        state[name] = actions[name]()
        seconds[name] = round(time.perf_counter() - started, 1)
        result.ran.append(name)
        _save_state(state_path, settings, state, seconds)
    return result


def demo_settings(options: DemoOptions) -> dict[str, Any]:
    """The options that determine the demo's results, plus the config file's sha256 (an edited YAML counts).

    Raises:
        ConfigError: the config is not found or is invalid.
    """
    from fgdeploy.config import resolve_config_path
    from fgdeploy.models import load_model_config

    load_model_config(options.config)  # a bad config fails now, not after the data step
    settings = {f.name: getattr(options, f.name) for f in fields(options) if f.name not in NOT_SETTINGS}
    settings["config_sha256"] = file_sha256(resolve_config_path(options.config))
    return settings


def _load_steps(state_path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The finished steps recorded in ``state_path`` ({} if none), after checking they were made with ``settings``."""
    if not state_path.is_file():
        return {}
    folder = state_path.parent
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{state_path}: unreadable ({exc}); use another --out or delete {folder}") from exc
    if not isinstance(state, dict) or not isinstance(state.get("settings"), dict) \
            or not isinstance(state.get("steps"), dict):
        raise ConfigError(f"{state_path} records no demo settings (an older fgdeploy wrote it), so its results may "
                          f"come from other options; use another --out or delete {folder}")
    theirs = state["settings"]
    differ = [k for k in settings | theirs if theirs.get(k) != settings.get(k)]
    if differ:
        raise ConfigError(f"{folder} holds a demo made with {settings_text(_shown(theirs, differ))}, not "
                          f"{settings_text(_shown(settings, differ))}; "
                          f"use another --out or delete {folder}")
    return dict(state["steps"])


def _load_seconds(state_path: Path) -> dict[str, float]:
    """Each finished step's recorded wall time ({} for a new demo or an older state file)."""
    try:
        seconds = json.loads(state_path.read_text(encoding="utf-8")).get("seconds", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {k: float(v) for k, v in seconds.items()} if isinstance(seconds, dict) else {}


def _shown(settings: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """``settings`` restricted to ``keys``, the hash shortened, for an error message."""
    shown = {k: settings.get(k) for k in keys}
    sha = shown.get("config_sha256")
    if isinstance(sha, str):
        shown["config_sha256"] = sha[:12]
    return shown


def _outputs_exist(step: Any) -> bool:
    paths = step.get("files", []) if isinstance(step, dict) else []
    return all(Path(p).exists() for p in paths)


def _save_state(path: Path, settings: dict[str, Any], steps: dict[str, Any],
                seconds: dict[str, float] | None = None) -> None:
    atomic_write_json(path, {"settings": settings, "steps": steps, "seconds": seconds or {}})


# --- steps -------------------------------------------------------------------------------------
def _step_data(out: Path, sizes: dict[str, Any], seed: int) -> dict[str, Any]:
    from fgdeploy.data.synthetic import generate_synth_birds

    root = out / "synth-birds"
    if not (root / "images.txt").is_file():
        generate_synth_birds(root, classes=sizes["classes"], images_per_class=sizes["images_per_class"],
                             size=sizes["image_size"], seed=seed)
    return {"root": str(root), "classes": sizes["classes"], "images": sizes["classes"] * sizes["images_per_class"],
            "files": [str(root / "images.txt")]}


def _step_train(out: Path, options: DemoOptions, sizes: dict[str, Any]) -> dict[str, Any]:
    from fgdeploy.train.run import TrainOptions, run_training

    run_dir = out / "train"
    # on resume the trainer checks these options against the run's (they match: the demo settings did)
    train = TrainOptions(config=options.config, out=run_dir, data=out / "synth-birds", epochs=sizes["epochs"],
                         seed=options.seed, batch=sizes["train_batch"],
                         device=None if options.device == "auto" else options.device,
                         resume=(run_dir / "last.pt").is_file(), show_progress=False, threads=options.threads)
    trained = run_training(train)
    best = run_dir / "best.pt"
    checkpoint = best if best.is_file() else run_dir / "last.pt"
    return {"checkpoint": str(checkpoint), "last_metrics": _plain(trained.last_metrics), "files": [str(checkpoint)]}


def _step_eval(out: Path, options: DemoOptions) -> dict[str, Any]:
    from fgdeploy.evaluate import evaluate_checkpoint, pck_key

    ckpt = _checkpoint(out)
    res = evaluate_checkpoint(ckpt, out / "synth-birds", "test", out_dir=out / "eval",
                              device=options.device, progress=False).result
    pck = {str(a): res.pck[pck_key(a)]["mean"] for a in (0.05, 0.1) if pck_key(a) in res.pck}
    return {"images": res.num_images, "top1": res.top1, "mean_class_acc": res.mean_class_acc, "pck": pck,
            "pcp": res.pcp, "files": [str(out / "eval" / "eval.json")]}


def _step_export(out: Path) -> dict[str, Any]:
    from fgdeploy.export.exporter import ExportOptions, export_checkpoint
    from fgdeploy.export.precision import PrecisionOptions

    files = {}
    for name, precision in (("model.onnx", "fp32"), ("model_fp16.onnx", "fp16")):
        path = out / name
        if not path.is_file():
            export_checkpoint(_checkpoint(out), path, ExportOptions(precision=PrecisionOptions(precision)))
        files[name] = str(path)
    int8 = _export_int8(out, files)
    return {"onnx": files, "int8": int8, "files": list(files.values())}


def _export_int8(out: Path, files: dict[str, str]) -> dict[str, Any]:
    """model_int8.onnx from model.onnx (no re-trace): calibrated on the train split, guarded on half the test
    split (default thresholds; the parity step checks on the other half). Skipped, with the reason, when the train
    split is too small to calibrate on."""
    from fgdeploy.data.cub import CubDataset
    from fgdeploy.export.exporter import ExportOptions, reduce_exported
    from fgdeploy.export.precision import CalibrationOptions, GuardOptions, PrecisionOptions
    from fgdeploy.export.precision.images import MIN_CALIBRATION_IMAGES
    from fgdeploy.fileio import atomic_write_json

    data = out / "synth-birds"
    train = len(CubDataset(data, "train", validate=False))
    if train < MIN_CALIBRATION_IMAGES:
        return {"skipped": f"{train} train images, INT8 calibration needs {MIN_CALIBRATION_IMAGES}"}
    path = out / "model_int8.onnx"
    record = out / "model_int8.export.json"
    if not (path.is_file() and record.is_file()):
        precision = PrecisionOptions("int8", CalibrationOptions(data), GuardOptions())
        result = reduce_exported(out / "model.onnx", path, ExportOptions(precision=precision))
        atomic_write_json(record, {"guard_passed": result.guard_passed, "guard_kept": result.guard_kept,
                                   "guard_report": str(result.guard_report), "nodes": result.precision_summary,
                                   "scheme": precision.calibration.settings.scheme if precision.calibration else None})
    files["model_int8.onnx"] = str(path)
    return json.loads(record.read_text(encoding="utf-8"))


def _test_image_list(out: Path) -> Path:
    """A text file listing the synth-birds test images (the input of ``fgdeploy infer``)."""
    from fgdeploy.data.cub import CubDataset

    dataset = CubDataset(out / "synth-birds", "test", validate=False)
    listing = out / "test_images.txt"
    listing.write_text("".join(f"{dataset.image_path(i).resolve()}\n" for i in range(len(dataset))),
                       encoding="utf-8")
    return listing


def _step_infer(out: Path, batch: int) -> dict[str, Any]:
    from fgdeploy.inference.local import InferOptions, discover_images, model_identity, run_inference
    from fgdeploy.inference.predictors import open_predictor

    paths = discover_images(_test_image_list(out))
    results = out / "infer" / "results.csv"
    with open_predictor(out / "model.onnx", "ort", device="cpu", batch=batch) as loaded:
        report = run_inference(paths, loaded.predictor, results, class_names=loaded.class_names,
                               part_names=loaded.part_names, options=InferOptions(batch=batch, topk=3, resume=True),
                               visibility_threshold=loaded.visibility_threshold,
                               model_id=model_identity(out / "model.onnx"))  # resume: a killed demo goes on
        # a few pictures with the keypoints, part labels and top-1 class drawn (as `infer --save-vis` writes them)
        vis = out / "infer" / "vis"
        run_inference(paths[:VIS_IMAGES], loaded.predictor, vis / "results.csv", class_names=loaded.class_names,
                      part_names=loaded.part_names, options=InferOptions(batch=batch, topk=3, save_vis=vis),
                      visibility_threshold=loaded.visibility_threshold, model_id=model_identity(out / "model.onnx"))
    return {"backend": loaded.name, "scored": report.scored, "failed": report.failed,
            "images_per_s": round(report.images_per_s, 2), "results": str(results), "vis": str(vis),
            "files": [str(results)]}


def _onnx_models(out: Path) -> list[str]:
    """The ONNX files the export step wrote (fp32, fp16 and, unless skipped, int8), by file name."""
    return [n for n in ("model.onnx", "model_fp16.onnx", "model_int8.onnx") if (out / n).is_file()]


def _step_parity(out: Path, batch: int) -> list[dict[str, Any]]:
    from fgdeploy.backends import open_runner
    from fgdeploy.export.precision.images import held_out_images
    from fgdeploy.parity import ParityConfig, run_parity

    ckpt = _checkpoint(out)
    ref = lambda debug: open_runner("torch", str(ckpt), debug=debug)  # noqa: E731
    verdicts = []
    data = out / "synth-birds"
    for name in _onnx_models(out):
        test = lambda debug, n=name: open_runner("ort", str(out / n), debug=debug)  # noqa: E731
        with test(False) as runner:
            meta = runner.metadata()
            size = int(meta.get("input_size") or runner.input_specs()["images"].shape[-1])
        # a guarded model: checked on the test images its guard did not use
        images, held_out = held_out_images(data, size, meta)
        report = run_parity(ref, test, images, ParityConfig(batch_size=min(batch, 8)))
        report.dump(out / "parity" / f"{Path(name).stem}.json")
        verdicts.append({"ref": report.ref, "test": report.test, "precision": report.precision,
                         "passed": report.passed, "top1_agreement": report.task.top1_agreement,
                         "class_near_ties": report.task.class_near_ties or 0, "images": report.n_images,
                         "held_out": held_out, "guard_overlap": report.guard_overlap,
                         "failed_checks": [c.name for c in report.checks if not c.passed]})
    return verdicts


def _step_bench(out: Path, batch: int, iters: int) -> dict[str, Any]:
    from fgdeploy.bench import bench_end_to_end, bench_model, write_json

    rows = []
    listing = _test_image_list(out)
    for model in [_checkpoint(out)] + [out / name for name in _onnx_models(out)]:
        from fgdeploy.inference.predictors import open_predictor

        with open_predictor(model, "auto", device="cpu", batch=None) as loaded:
            rows.append(bench_model(loaded.predictor, loaded.name, batch, iters=iters, warmup=1))
            rows.append(bench_end_to_end(loaded.predictor, loaded.name, listing, batch))
    path = write_json(out / "bench.json", rows)
    return {"rows": [r.__dict__ for r in rows], "files": [str(path)]}


def _checkpoint(out: Path) -> Path:
    best = out / "train" / "best.pt"
    return best if best.is_file() else out / "train" / "last.pt"


def _plain(value: Any) -> Any:
    """JSON-safe copy (numbers, strings, lists, dicts)."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


# --- summary -------------------------------------------------------------------------------------
def summary_rows(result: DemoResult) -> list[tuple[str, str]]:
    """(item, value) rows of the summary table."""
    s = result.steps
    rows: list[tuple[str, str]] = []
    if "data" in s:
        rows.append(("data", f"synth-birds, {s['data']['classes']} classes, {s['data']['images']} images"))
    if "eval" in s:
        e = s["eval"]
        rows.append((f"top-1 accuracy (torch, {e['images']} test images)", f"{100 * e['top1']:.1f} %"))
        rows.append(("mean per-class accuracy", f"{100 * e['mean_class_acc']:.1f} %"))
        rows += [(f"PCK@{alpha} (mean over parts)", f"{100 * v:.1f} %") for alpha, v in e["pck"].items()]
        rows += [(f"PCP {part} box (IoU >= 0.5)", f"{100 * v:.1f} %") for part, v in (e.get("pcp") or {}).items()]
    int8 = s.get("export", {}).get("int8")
    if int8 and int8.get("skipped"):
        rows.append(("export int8", f"skipped: {int8['skipped']}"))
    elif int8:
        kept = ", ".join(int8.get("guard_kept") or []) or "none"
        verdict = "PASS" if int8.get("guard_passed") else "not run" if int8.get("guard_passed") is None else "FAIL"
        rows.append(("int8 guard (vs fp32, half the test split)", f"{verdict}; {_int8_convs(int8)}; convs kept "
                                                                  f"float by the guard: {kept}"))
    if "infer" in s:
        i = s["infer"]
        rows.append((f"fgdeploy infer ({i['backend']})", f"{i['scored']} scored, {i['failed']} failed"))
    for p in s.get("parity", []):
        verdict = "PASS" if p["passed"] else "FAIL: " + "; ".join(p["failed_checks"])
        ties = p.get("class_near_ties", 0)
        tie_text = f", {plural(ties, 'near-tie')} of the reference's logits" if ties else ""
        images = (f", {p['images']} test images the guard did not use" if p.get("held_out")
                  else f", {p['images']} test images" if p.get("images") else "")
        rows.append((f"parity {p['ref']} vs {p['test']}", f"{verdict} (top-1 agreement "
                                                          f"{100 * p['top1_agreement']:.1f} %{tie_text}{images})"))
    by_backend: dict[str, dict[str, Any]] = {}
    for r in s.get("bench", {}).get("rows", []):
        by_backend.setdefault(r["backend"], {})[r["mode"]] = r
    for backend, modes in by_backend.items():
        m, e2e = modes.get("model"), modes.get("end-to-end")
        text = f"model {m['images_per_s']:.1f} img/s (batch {m['batch']}, p50 {m['p50_ms']:.1f} ms)" if m else ""
        text += f", end-to-end {e2e['images_per_s']:.1f} img/s" if e2e else ""
        rows.append((f"throughput {backend}", text))
    if result.seconds:
        rows.append(("time per step", ", ".join(f"{name} {result.seconds[name]:.1f} s" for name in STEPS
                                                if name in result.seconds)))
    rows += _artefact_rows(result)
    return rows


def _int8_convs(int8: dict[str, Any]) -> str:
    """"14 of 18 convs int8 (part nets 12 of 12), scheme u8s8" from the export record."""
    nodes = (int8.get("nodes") or {}).get("nodes") or {}
    quantized, float_ = nodes.get("Conv int8", 0), nodes.get("Conv float", 0)
    text = f"{quantized} of {quantized + float_} convs int8"
    part_int8, part_float = nodes.get("part-net Conv int8", 0), nodes.get("part-net Conv float", 0)
    if part_int8 or part_float:
        text += f" (part nets {part_int8} of {part_int8 + part_float})"
    return text + (f", scheme {int8['scheme']}" if int8.get("scheme") else "")


def _artefact_rows(result: DemoResult) -> list[tuple[str, str]]:
    """Where the demo's results are, for people to open."""
    s, out = result.steps, result.out
    rows = []
    if "train" in s:
        rows.append(("trained model", str(s["train"]["checkpoint"])))
    if "eval" in s:
        rows.append(("eval grid (GT vs predicted parts)", str(out / "eval" / "eval_grid.png")))
    if "infer" in s:
        rows.append(("infer results", str(s["infer"]["results"])))
        if s["infer"].get("vis"):
            rows.append(("pictures (infer --save-vis)", str(s["infer"]["vis"])))
    if "export" in s:
        rows.append(("ONNX models", ", ".join(s["export"]["onnx"].values())))
    if "parity" in s:
        rows.append(("parity reports", str(out / "parity")))
    if "bench" in s:
        rows.append(("benchmark", str(out / "bench.json")))
    return rows


def summary_table(result: DemoResult) -> str:
    """The demo's one summary table."""
    rows = [("item", "value")] + summary_rows(result)
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines.insert(1, f"{'-' * width}  {'-' * max(len(v) for _, v in rows)}")
    return "\n".join(lines)
