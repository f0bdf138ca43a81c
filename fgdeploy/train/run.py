"""``fgdeploy train`` as a function: resolve configs, prepare the run folder and data, build the model, fit.

Run folder ``OUT``::

    config.yaml     the resolved model + training config, data folder and stages (written at start)
    metrics.jsonl   one JSON record per epoch (rewritten atomically after each epoch)
    last.pt         full trainer state (every epoch and every ``checkpoint_every`` steps) for --resume
    best.pt         best validation weights of the current stage
    train.log       human-readable log
    synth-birds/    the generated dataset, when no --data was given
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fgdeploy.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

SYNTH_DIRNAME = "synth-birds"
DEFAULT_CONFIG = "demo"
# Options that define a run: on --resume each may be given only with the value the run recorded.
# (--device and --workers may change: they do not change the result.)
RESUME_FIXED = ("config", "data", "stage", "epochs", "batch", "lr", "seed", "pretrained")


@dataclass
class TrainOptions:
    """The command line of ``fgdeploy train`` (None = take the config's value)."""

    config: str | None = None           # None: DEFAULT_CONFIG for a new run, the run's own on resume
    out: Path = Path("runs/demo")
    data: Path | None = None
    stage: str | None = None            # "1".."4", "3-4", "all" (default all)
    epochs: int | None = None           # every stage
    batch: int | None = None
    lr: float | None = None             # every stage's base LR (head LR keeps its ratio)
    device: str | None = None
    resume: bool = False
    overwrite: bool = False             # replace a run already in ``out`` (else: refused, see check_run_folder)
    pretrained: Path | None = None      # backbone weights, or an fgdeploy checkpoint to start from
    seed: int | None = None
    workers: int | None = None
    threads: int | None = None          # CPU threads (None: fgdeploy.cpu.default_threads())
    show_progress: bool | None = None   # None = when stderr is a terminal
    synth_classes: int = 20             # generated data set, when data is None
    synth_images_per_class: int = 30
    synth_size: int = 256
    hooks: Any = None                   # fgdeploy.train.state.Hooks (tests: simulate a kill)


@dataclass
class TrainResult:
    out_dir: Path
    state: Any                          # fgdeploy.train.trainer.TrainState
    data_root: Path
    last_metrics: dict[str, Any]
    is_main: bool = True                # False on torchrun ranks > 0 (they print nothing)
    model: Any = None                   # the trained model (unwrapped), on its device


def run_training(opts: TrainOptions) -> TrainResult:
    """Train as ``fgdeploy train`` does (also under torchrun: rank 0 writes files)."""
    from fgdeploy.train import distributed as D

    from fgdeploy.checkpoint import check_checkpoint_file

    if not opts.resume:
        check_run_folder(Path(opts.out), opts.overwrite)
    if opts.pretrained is not None:   # before data generation and training
        check_checkpoint_file(opts.pretrained, "--pretrained")
    info = D.env_dist_info()
    device = D.resolve_device(opts.device or "auto", info)
    D.init_distributed(device)
    pkg_log = logging.getLogger("fgdeploy")
    level = pkg_log.level
    if not info.is_main:  # one copy of the log: rank 0's
        pkg_log.setLevel(logging.WARNING)
    try:
        return _run(opts, info, device)
    finally:
        pkg_log.setLevel(level)
        D.cleanup_distributed()


def _run(opts: TrainOptions, info: Any, device: Any) -> TrainResult:
    import torch

    from fgdeploy.cpu import set_threads
    from fgdeploy.models import create_model
    from fgdeploy.train import distributed as D
    from fgdeploy.train.data import build_train_data
    from fgdeploy.train.stages import parse_stages
    from fgdeploy.train.state import Hooks, RunContext, log_to_file
    from fgdeploy.train.trainer import fit

    out = Path(opts.out)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    D.barrier()
    resume_state: dict[str, Any] | None = None
    weights: dict[str, Any] | None = None
    if opts.resume:
        model_cfg, tcfg, stages, data_root, weights, resume_state = _resume_setup(opts, out)
    else:
        model_cfg, tcfg = _fresh_configs(opts)
        stages = parse_stages(opts.stage or "all")
        data_root = Path(opts.data) if opts.data is not None else _synth_data(opts, out, info, tcfg.seed)
    if opts.workers is not None or opts.device is not None:  # not part of the result: may change on resume
        tcfg = dataclasses.replace(tcfg, **{k: v for k, v in (("workers", opts.workers), ("device", opts.device))
                                            if v is not None})
    threads = set_threads(opts.threads, tcfg.workers)
    with log_to_file(out / "train.log", info.is_main):
        log.debug("%d CPU thread(s), %d DataLoader worker(s)", threads, tcfg.workers)
        data = build_train_data(data_root, model_cfg.input_size, tcfg.seed, tcfg.val_fraction, tcfg.augment)
        torch.manual_seed(tcfg.seed)  # same initial weights in every process
        pretrained = opts.pretrained if opts.pretrained is not None and weights is None else None
        start = _initial_weights(pretrained) if pretrained is not None else None
        model = create_model(model_cfg, len(data.class_names),
                             weights=str(pretrained) if pretrained is not None and start is None else None)
        initial = weights if weights is not None else start
        if initial is not None:
            _load_weights(model, initial, out / "last.pt" if weights is not None else opts.pretrained)
        model.to(device)
        if tcfg.channels_last and device.type == "cuda":
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if info.is_main and not opts.resume:
            _write_run_config(out / "config.yaml", model_cfg, tcfg, stages, data_root, opts)
        log.info("run %s: model %s (%d classes), stages %s, device %s, %d process(es)", out, model_cfg.name,
                 len(data.class_names), stages, device, info.world_size)
        ctx = RunContext(out_dir=out, device=device, info=info, hooks=opts.hooks or Hooks(),
                         show_progress=opts.show_progress)
        state = fit(model, data, tcfg, stages, ctx, resume=resume_state)
    last = state.history[-1] if state.history else {}
    return TrainResult(out_dir=out, state=state, data_root=data_root, last_metrics=last, is_main=info.is_main,
                       model=model)


RUN_FILES = ("best.pt", "last.pt", "metrics.jsonl")   # what makes a folder hold a (started) training run


def check_run_folder(out: Path, overwrite: bool) -> None:
    """Refuse to train a new run into a folder that holds one (its checkpoints would be replaced), unless
    ``overwrite``: then its run files are removed now, so nothing of the old run is mixed into the new one.

    Raises:
        ConfigError: ``out`` holds best.pt, last.pt or metrics.jsonl and ``overwrite`` is False.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; name a folder for the run")
    found = [name for name in RUN_FILES if (out / name).is_file()]
    if not found:
        return
    if not overwrite:
        raise ConfigError(f"{out} already holds a training run ({', '.join(found)}); continue it with --resume, "
                          "train into a new --out, or pass --overwrite to replace it")
    for name in (*RUN_FILES, "config.yaml"):
        (out / name).unlink(missing_ok=True)
    log.info("--overwrite: removed the previous run's %s from %s", ", ".join(found), out)


def _fresh_configs(opts: TrainOptions) -> tuple[Any, Any]:
    from fgdeploy.models import load_model_config
    from fgdeploy.train.config import build_train_config, preset_for_backbone

    model_cfg = load_model_config(opts.config or DEFAULT_CONFIG)
    overrides = {"epochs": opts.epochs, "batch_size": opts.batch, "lr": opts.lr, "seed": opts.seed}
    tcfg = build_train_config(preset_for_backbone(model_cfg.localization.backbone), None, overrides)
    return model_cfg, tcfg


def _resume_setup(opts: TrainOptions, out: Path) -> tuple[Any, Any, list[int], Path, dict[str, Any], dict[str, Any]]:
    from fgdeploy.checkpoint import model_config_from_meta, read_checkpoint
    from fgdeploy.config import dataclass_from_dict, load_yaml
    from fgdeploy.train.config import TrainConfig

    last = out / "last.pt"
    if not last.is_file():
        raise CheckpointError(f"--resume: {last} does not exist; start the run without --resume first")
    ckpt = read_checkpoint(last)
    if "train_state" not in ckpt.extra_state:
        raise CheckpointError(f"--resume: {last} holds no trainer state; it was not written by fgdeploy train")
    run_cfg = load_yaml(out / "config.yaml")
    model_cfg = model_config_from_meta(ckpt.meta)
    tcfg = dataclass_from_dict(TrainConfig, dict(ckpt.meta.train_config), source=f"{last} train_config")
    stages = [int(s) for s in run_cfg["stages"]]
    _check_resume_options(opts, run_cfg, tcfg, stages)
    data_root = Path(run_cfg["data"])
    log.info("resuming %s at stage %s, epoch %s, step %s", out, ckpt.extra_state["train_state"]["stage"],
             ckpt.extra_state["train_state"]["epoch"] + 1, ckpt.extra_state["train_state"]["step_in_epoch"])
    return model_cfg, tcfg, stages, data_root, ckpt.state_dict, ckpt.extra_state


def _check_resume_options(opts: TrainOptions, run_cfg: dict[str, Any], tcfg: Any, stages: list[int]) -> None:
    """--resume continues the run as recorded: an option given with another value is an error naming it.

    Raises:
        ConfigError: one or more of ``RESUME_FIXED`` differ from the run's config.yaml / last.pt.
    """
    differ = []
    for name in RESUME_FIXED:
        given = getattr(opts, name)
        if given is not None and not _same_as_run(name, given, run_cfg, tcfg, stages):
            differ.append(f"--{name} {given} differs from the run's {_run_value(name, run_cfg, tcfg, stages)}")
    if differ:
        them = "them" if len(differ) > 1 else "it"
        raise ConfigError(f"{'; '.join(differ)}; resume without {them} or start a new --out")


def _same_as_run(name: str, given: Any, run_cfg: dict[str, Any], tcfg: Any, stages: list[int]) -> bool:
    """Whether option ``name`` = ``given`` would have made the recorded run."""
    from fgdeploy.train.stages import parse_stages

    if name in ("data", "pretrained"):
        recorded = run_cfg.get(name)
        return recorded is not None and Path(given).resolve() == Path(recorded).resolve()
    if name == "config":
        return _same_config(str(given), run_cfg.get("config_source"))
    if name == "stage":
        return parse_stages(given) == stages
    if name in ("epochs", "lr"):
        return all(math.isclose(v, given, rel_tol=1e-9) for v in _stage_values(name, tcfg, stages))
    return bool(getattr(tcfg, "batch_size" if name == "batch" else name) == given)


def _same_config(given: str, recorded: str | None) -> bool:
    """Same text, or both name the same file (a config name and its models/ path, relative and absolute)."""
    from fgdeploy.config import resolve_config_path

    if recorded is None or given == recorded:
        return given == recorded
    try:
        return resolve_config_path(given).resolve() == resolve_config_path(recorded).resolve()
    except ConfigError:
        return False


def _stage_values(name: str, tcfg: Any, stages: list[int]) -> list[float]:
    """Per run stage: its epochs, or its base LR as ``--lr`` sets it (``scale_lr``: head_lr where lr is 0)."""
    configs = [tcfg.stage(n) for n in stages]
    return [c.epochs if name == "epochs" else (c.lr or c.head_lr) for c in configs]


def _stages_text(stages: list[int]) -> str:
    """[3, 4] -> "3-4", [2] -> "2", [1, 3] -> "1,3" (as --stage takes them)."""
    if len(stages) > 1 and stages == list(range(stages[0], stages[-1] + 1)):
        return f"{stages[0]}-{stages[-1]}"
    return ",".join(map(str, stages))


def _run_value(name: str, run_cfg: dict[str, Any], tcfg: Any, stages: list[int]) -> Any:
    """The run's value of option ``name``, as it reads in an error message."""
    if name in ("data", "pretrained", "config"):
        return run_cfg.get("config_source" if name == "config" else name) or "none"
    if name == "stage":
        return _stages_text(stages)
    if name in ("epochs", "lr"):
        values = _stage_values(name, tcfg, stages)
        return values[0] if len(set(values)) == 1 else f"{'/'.join(map(str, values))} (stages {_stages_text(stages)})"
    return getattr(tcfg, "batch_size" if name == "batch" else name)


def _synth_data(opts: TrainOptions, out: Path, info: Any, seed: int) -> Path:
    """Generate synth-birds into the run folder once (rank 0), then everyone reads it."""
    from fgdeploy.train import distributed as D

    root = out / SYNTH_DIRNAME
    if info.is_main and not (root / "images.txt").is_file():
        from fgdeploy.data.synthetic import generate_synth_birds

        log.info("no --data given: generating synth-birds (%d classes x %d images) into %s", opts.synth_classes,
                 opts.synth_images_per_class, root)
        root = Path(generate_synth_birds(root, classes=opts.synth_classes,
                                         images_per_class=opts.synth_images_per_class, size=opts.synth_size,
                                         seed=seed))
    D.barrier()
    return root


def _initial_weights(path: Path) -> dict[str, Any] | None:
    """State dict of an fgdeploy checkpoint given as --pretrained, or None for plain backbone weights."""
    from fgdeploy.checkpoint import check_checkpoint_file, read_checkpoint

    if not Path(path).is_file():
        raise ConfigError(f"--pretrained {path}: file not found")
    check_checkpoint_file(path, "--pretrained")   # a text or ONNX file: say so, not a KeyError from the loader
    try:
        return read_checkpoint(path).state_dict   # read (and hashed) once
    except CheckpointError:   # not an fgdeploy checkpoint: torchvision-format backbone weights
        return None


def _load_weights(model: Any, state_dict: dict[str, Any], source: Path) -> None:
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: weights do not fit the model config: {str(exc).splitlines()[0]}; "
                              "use the same --config (and data classes) as the run that wrote it") from exc


def _write_run_config(path: Path, model_cfg: Any, tcfg: Any, stages: list[int], data_root: Path,
                      opts: TrainOptions) -> None:
    from fgdeploy.fileio import atomic_write_bytes
    from fgdeploy.config import dataclass_to_dict

    doc = {"model": dataclass_to_dict(model_cfg), "train": dataclass_to_dict(tcfg), "stages": list(stages),
           "data": str(Path(data_root).resolve()), "config_source": str(opts.config or DEFAULT_CONFIG),
           "pretrained": str(opts.pretrained) if opts.pretrained else None}
    atomic_write_bytes(path, yaml.safe_dump(doc, sort_keys=False).encode("utf-8"))
