"""A Triton Inference Server model repository for an fgdeploy export (docs/deploy.md, "Triton").

``write_triton_repository`` lays out, from an ONNX export and optionally its TensorRT engine::

    REPO/README.md                       how to start tritonserver on REPO and query it (regenerated)
    REPO/libfgdeploy_plugins.so          the TensorRT plugin library (engines only; one per repository)
    REPO/NAME/config.pbtxt               backend onnxruntime
    REPO/NAME/labels.txt                 class names, one per line (``label_filename`` of ``logits``)
    REPO/NAME/1/model.onnx
    REPO/NAME_trt/config.pbtxt           platform tensorrt_plan
    REPO/NAME_trt/labels.txt
    REPO/NAME_trt/1/model.plan

Inputs, outputs, dims and data types come from the ONNX graph (the engine is built from that graph: its
sidecar records the ONNX's sha256, checked here). ``max_batch_size`` may not exceed the batch the ONNX was
exported and checked with, nor the engine's optimization profile; a fixed-batch export gets
``max_batch_size: 0`` (Triton then cannot batch requests). Each config is written as text, parsed back with
protobuf's strict text-format parser into Triton's own ``ModelConfig`` message (``tritonclient``'s
``model_config_pb2``: an unknown field or a wrong type fails), and checked against the rules Triton applies
when it loads a model (``check_config``). Every model directory is written beside the repository's and
moved into place only when complete.

The plugin: Triton's TensorRT backend ``dlopen``s the libraries named by ``--backend-config=tensorrt,plugins=``
and does nothing else; our library registers its creator through ``getCreators`` (TensorRT's
``loadLibrary``), so it registers on a plain ``dlopen`` only when ``FGDEPLOY_PLUGIN_AUTOREGISTER=1`` is set in
the server's environment (``plugins/fgdeployPlugins.cpp``). The README written into the repository gives
the exact ``docker run ... tritonserver`` line.

Command line, for files exported earlier::

    python -m fgdeploy.deploy.triton model.onnx --repo REPO [--name NAME] [--engine model.engine] [--max-batch N]
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fgdeploy import __version__
from fgdeploy.errors import BackendUnavailable, ExportError
from fgdeploy.fileio import atomic_open, atomic_write_text, file_sha256

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'fgdeploy[triton]' (or pip install 'tritonclient[grpc]')"
LABELS_FILE = "labels.txt"
PLUGIN_FILE = "libfgdeploy_plugins.so"
AUTOREGISTER_ENV = "FGDEPLOY_PLUGIN_AUTOREGISTER"   # read by the plugin library's load-time constructor
VERSION = "1"                                       # the one model version written
MARKER = "fgdeploy_version"                         # config parameter that marks a model as written by fgdeploy
ONNX_TO_TRITON = {  # onnx.TensorProto element type -> Triton DataType name
    1: "TYPE_FP32", 10: "TYPE_FP16", 11: "TYPE_FP64", 16: "TYPE_BF16", 2: "TYPE_UINT8", 3: "TYPE_INT8",
    4: "TYPE_UINT16", 5: "TYPE_INT16", 6: "TYPE_INT32", 7: "TYPE_INT64", 9: "TYPE_BOOL", 12: "TYPE_UINT32",
    13: "TYPE_UINT64",
}
METADATA_PARAMETERS = ("precision", "source_checkpoint", "source_sha256", "input_size", "input_range",
                       "normalisation", "part_names", "heatmap_size", "opset", "portable")
BACKENDS = {"onnxruntime": ("backend", "onnxruntime", "model.onnx"),
            "tensorrt": ("platform", "tensorrt_plan", "model.plan")}


class TritonConfigError(ExportError):
    """A Triton repository cannot be written as asked (batch beyond the profile, a config Triton would refuse)."""


def import_model_config() -> Any:
    """Triton's ``model_config_pb2`` module (from tritonclient), or BackendUnavailable saying what to install."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise BackendUnavailable(f"writing a Triton repository needs tritonclient's model_config_pb2 ({exc}): "
                                 f"{INSTALL_HINT}") from exc
    return model_config_pb2


# --- what the artifacts say ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorInfo:
    """One model input or output as Triton sees it: dims without the batch dimension when batched."""

    name: str
    data_type: str            # Triton DataType name, e.g. "TYPE_FP32"
    dims: tuple[int, ...]     # -1 = variable


@dataclass(frozen=True)
class OnnxInfo:
    """The graph interface and metadata of an ONNX export."""

    path: Path
    sha256: str
    inputs: tuple[TensorInfo, ...]    # dims without the batch dimension
    outputs: tuple[TensorInfo, ...]
    fixed_batch: int | None           # the batch of a fixed-batch export; None = dynamic
    metadata: dict[str, Any]
    ir_version: int = 0

    @property
    def exported_max_batch(self) -> int | None:
        """The largest batch the dynamic export was traced and checked with (metadata ``max_batch``)."""
        value = self.metadata.get("max_batch")
        return int(value) if isinstance(value, int) and self.fixed_batch is None else None


@dataclass(frozen=True)
class EngineInfo:
    """What an engine's sidecar (``<engine>.json``, written by ``fgdeploy.export.tensorrt``) records."""

    path: Path
    min_batch: int
    max_batch: int
    onnx_sha256: str
    precision: str
    tensorrt_version: str
    plugin_library: Path | None       # None: the engine has no plugin layer
    rebuild_command: str


def _dims(value_info: Any) -> list[int]:
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else -1 for d in shape.dim]


def read_onnx_info(path: str | Path) -> OnnxInfo:
    """Inputs, outputs (Triton types, dims without batch) and metadata of an fgdeploy ONNX export.

    Raises:
        TritonConfigError: not an ONNX file, a tensor type Triton has no name for, or inputs/outputs that do
            not share one leading batch dimension.
    """
    import onnx

    from fgdeploy.export.metadata import decode_metadata

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError, OSError
        raise TritonConfigError(f"{path}: cannot read it as ONNX ({exc}); export one with `fgdeploy export`") from exc
    initializers = {i.name for i in model.graph.initializer}
    batches: set[int] = set()
    groups: list[tuple[TensorInfo, ...]] = []
    for values in ([v for v in model.graph.input if v.name not in initializers], list(model.graph.output)):
        infos = []
        for value in values:
            elem = value.type.tensor_type.elem_type
            if elem not in ONNX_TO_TRITON:
                raise TritonConfigError(f"{path}: tensor {value.name} has ONNX type {elem}, which Triton has no "
                                        "type for")
            dims = _dims(value)
            if not dims:
                raise TritonConfigError(f"{path}: tensor {value.name} has no batch dimension; Triton needs one here")
            batches.add(dims[0])
            infos.append(TensorInfo(value.name, ONNX_TO_TRITON[elem], tuple(dims[1:])))
        groups.append(tuple(infos))
    if len(batches) != 1:
        raise TritonConfigError(f"{path}: inputs and outputs do not share one batch dimension ({sorted(batches)})")
    batch = batches.pop()
    metadata = decode_metadata({p.key: p.value for p in model.metadata_props})
    return OnnxInfo(path, file_sha256(path), groups[0], groups[1], None if batch < 1 else batch, metadata,
                    int(model.ir_version))


def read_engine_info(engine: str | Path) -> EngineInfo:
    """The engine's batch profile, source ONNX and plugin library from its sidecar.

    Raises:
        TritonConfigError: no sidecar (the engine was not built by fgdeploy), or an unreadable one.
    """
    from fgdeploy.backends.trt_support import read_sidecar, sidecar_path

    engine = Path(engine)
    if not engine.is_file():
        raise TritonConfigError(f"engine {engine} does not exist; build it with `fgdeploy export ... --engine`")
    try:
        sidecar = read_sidecar(engine)
    except Exception as exc:  # a damaged sidecar: say which file
        raise TritonConfigError(f"{sidecar_path(engine)}: unreadable engine sidecar ({exc})") from exc
    if not sidecar:
        raise TritonConfigError(f"{engine} has no sidecar {sidecar_path(engine).name}: Triton's config needs its batch "
                                "profile; build the engine with `fgdeploy export ... --engine`")
    profile = sidecar.get("profile") or {}
    library = (sidecar.get("plugin_library") or {}).get("path")
    plugged = (sidecar.get("coordinate_transfer") or {}).get("path") in ("plugin", "mixed")
    return EngineInfo(engine, int(profile.get("min_batch", 1)), int(profile.get("max_batch", 0)),
                      str((sidecar.get("onnx") or {}).get("sha256", "")), str(sidecar.get("precision", "")),
                      str((sidecar.get("machine") or {}).get("tensorrt_version", "")),
                      Path(library) if library and plugged else None, str(sidecar.get("rebuild_command", "")))


# --- configs ------------------------------------------------------------------------------------------
def resolve_max_batch(onnx_info: OnnxInfo, engine: EngineInfo | None, requested: int | None) -> int:
    """Triton's ``max_batch_size`` for a model from ``onnx_info`` (run by ``engine`` when given).

    A fixed-batch export gives 0 (no batching); a dynamic one its exported maximum, or ``requested``, which may
    not exceed it, nor the engine profile's maximum.

    Raises:
        TritonConfigError: ``requested`` beyond what the export or the engine takes, or an engine profile that
            does not start at batch 1 (Triton sends any batch from 1).
    """
    if requested is not None and requested < 1:
        raise TritonConfigError(f"--max-batch {requested}: give a positive batch size")
    if onnx_info.fixed_batch is not None:
        if requested is not None:
            raise TritonConfigError(f"--max-batch {requested}: {onnx_info.path} has a fixed batch of "
                                    f"{onnx_info.fixed_batch}, which Triton cannot batch (max_batch_size 0); export "
                                    "with --batch dynamic")
        return 0
    exported = onnx_info.exported_max_batch
    if requested is not None and exported is not None and requested > exported:
        raise TritonConfigError(f"--max-batch {requested} is above the batch {onnx_info.path.name} was exported and "
                                f"checked with ({exported}); export it with --max-batch {requested}")
    limit = requested or exported or 1
    if engine is None:
        return limit
    if engine.min_batch > 1:
        raise TritonConfigError(f"engine {engine.path.name} takes batches {engine.min_batch}..{engine.max_batch} only, "
                                "but Triton sends any batch from 1; rebuild it with --min-batch 1")
    if requested is not None and requested > engine.max_batch:
        rebuild = engine.rebuild_command.replace(f"--max-batch {engine.max_batch}", f"--max-batch {requested}")
        raise TritonConfigError(f"--max-batch {requested} is above engine {engine.path.name}'s optimization profile "
                                f"(batch {engine.min_batch}..{engine.max_batch}); rebuild the engine for it"
                                + (f": {rebuild}" if rebuild else " with `fgdeploy export ... --engine --max-batch N`"))
    return min(limit, engine.max_batch) if requested is None else requested


def _parameters(onnx_info: OnnxInfo, extra: Mapping[str, str]) -> dict[str, str]:
    values = {MARKER: __version__}
    for key in METADATA_PARAMETERS:
        value = onnx_info.metadata.get(key)
        if key == "portable":
            value = "true" if value else "false"
        if value is not None:
            values[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    values["onnx_sha256"] = onnx_info.sha256
    values["onnx_ir_version"] = str(onnx_info.ir_version)
    values.update(extra)
    return values


def _batch_dims(onnx_info: OnnxInfo, max_batch: int) -> list[int]:
    """What the config's dims start with: nothing when Triton batches, else the export's fixed batch."""
    return [] if max_batch > 0 else [onnx_info.fixed_batch or 1]   # unbatched: dims include the batch


def build_config(name: str, backend: str, onnx_info: OnnxInfo, max_batch: int,
                 extra_parameters: Mapping[str, str] | None = None) -> Any:
    """The ``ModelConfig`` message of one model (backend "onnxruntime" or "tensorrt")."""
    pb = import_model_config()
    field_name, value, filename = BACKENDS[backend]
    config = pb.ModelConfig(name=name, max_batch_size=max_batch, default_model_filename=filename)
    setattr(config, field_name, value)
    if backend == "tensorrt":
        config.backend = "tensorrt"
    batch = _batch_dims(onnx_info, max_batch)
    for tensor in onnx_info.inputs:
        config.input.add(name=tensor.name, data_type=pb.DataType.Value(tensor.data_type),
                         dims=[*batch, *tensor.dims])
    for tensor in onnx_info.outputs:
        output = config.output.add(name=tensor.name, data_type=pb.DataType.Value(tensor.data_type),
                                   dims=[*batch, *tensor.dims])
        if tensor.name == "logits" and onnx_info.metadata.get("class_names"):
            output.label_filename = LABELS_FILE
    if max_batch > 0:
        config.dynamic_batching.SetInParent()
    for key, text in sorted(_parameters(onnx_info, extra_parameters or {}).items()):
        config.parameters[key].string_value = text
    return config


def config_text(config: Any, source: str) -> str:
    """The config as Triton's text format, with a header saying where it came from."""
    from google.protobuf import text_format

    header = (f"# Triton model configuration written by fgdeploy {__version__} from {source}.\n"
              "# Regenerate it with `fgdeploy export ... --triton REPO` rather than editing by hand.\n")
    return header + text_format.MessageToString(config, use_short_repeated_primitives=True)


def parse_config(text: str, where: str = "config.pbtxt") -> Any:
    """Parse ``text`` into Triton's ``ModelConfig`` with protobuf's strict text-format parser.

    Raises:
        TritonConfigError: an unknown field, a wrong value type, a repeated singular field (the parser's message).
    """
    from google.protobuf import text_format

    pb = import_model_config()
    try:
        return text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as exc:
        raise TritonConfigError(f"{where}: not a valid Triton ModelConfig: {exc}") from exc


def check_config(config: Any, model_dir: Path) -> list[str]:
    """Problems Triton would report when loading ``model_dir`` with ``config`` (empty list: none found).

    The rules of Triton's model configuration checks that concern what fgdeploy writes: the name is the
    directory's, one known backend/platform, batching only with max_batch_size > 0, named and typed inputs and
    outputs with positive (or -1) dims, label files and the model file present in version ``1``.
    """
    pb = import_model_config()
    problems = []
    if config.name != model_dir.name:
        problems.append(f"name {config.name!r} differs from the directory name {model_dir.name!r}")
    known = {("onnxruntime", ""), ("onnxruntime", "onnxruntime_onnx"), ("tensorrt", "tensorrt_plan"),
             ("", "tensorrt_plan"), ("", "onnxruntime_onnx")}
    if (config.backend, config.platform) not in known:
        problems.append(f"backend {config.backend!r} / platform {config.platform!r} is not onnxruntime or tensorrt")
    if config.max_batch_size < 0:
        problems.append(f"max_batch_size {config.max_batch_size} is negative")
    if config.HasField("dynamic_batching") and config.max_batch_size == 0:
        problems.append("dynamic_batching needs max_batch_size > 0")
    for kind, tensors in (("input", config.input), ("output", config.output)):
        if not tensors:
            problems.append(f"no {kind}")
        names = [t.name for t in tensors]
        if len(set(names)) != len(names) or "" in names:
            problems.append(f"{kind} names must be unique and non-empty: {names}")
        for tensor in tensors:
            if tensor.data_type == pb.DataType.Value("TYPE_INVALID"):
                problems.append(f"{kind} {tensor.name}: no data_type")
            if not tensor.dims or any(d == 0 or d < -1 for d in tensor.dims):
                problems.append(f"{kind} {tensor.name}: dims {list(tensor.dims)} must be positive or -1")
            label = getattr(tensor, "label_filename", "")
            if label and not (model_dir / label).is_file():
                problems.append(f"{kind} {tensor.name}: label_filename {label} is missing")
    filename = config.default_model_filename or ("model.plan" if "tensorrt" in config.platform else "model.onnx")
    if not (model_dir / VERSION / filename).is_file():
        problems.append(f"version {VERSION}/{filename} is missing")
    return problems


def expected_tensors(onnx_info: OnnxInfo, max_batch: int) -> dict[str, tuple[str, list[int]]]:
    """name -> (Triton type, dims) every config for this ONNX must declare."""
    batch = _batch_dims(onnx_info, max_batch)
    return {t.name: (t.data_type, [*batch, *t.dims]) for t in (*onnx_info.inputs, *onnx_info.outputs)}


# --- writing --------------------------------------------------------------------------------------------
@dataclass
class TritonModel:
    """One model directory written."""

    name: str
    backend: str
    config_path: Path
    max_batch_size: int


@dataclass
class TritonRepository:
    """What ``write_triton_repository`` wrote."""

    root: Path
    models: list[TritonModel] = field(default_factory=list)
    plugin_library: Path | None = None
    readme: Path | None = None


def check_name(name: str) -> str:
    if not name or name.startswith(".") or any(c in name for c in "/\\ \t\n") or not name.isprintable():
        raise TritonConfigError(f"--triton-name {name!r}: give a model name without spaces or slashes, "
                                "e.g. birds")
    return name


def _write_model_dir(repo: Path, name: str, backend: str, onnx_info: OnnxInfo, model_file: Path, max_batch: int,
                     extra_parameters: Mapping[str, str], source: str) -> TritonModel:
    """Build the model directory beside its final place, check it, then move it in (replacing an older one)."""
    config = build_config(name, backend, onnx_info, max_batch, extra_parameters)
    text = config_text(config, source)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repo))
    try:
        model_dir = staging / name
        (model_dir / VERSION).mkdir(parents=True)
        shutil.copyfile(model_file, model_dir / VERSION / BACKENDS[backend][2])
        classes = onnx_info.metadata.get("class_names") or []
        if classes:
            (model_dir / LABELS_FILE).write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
        (model_dir / "config.pbtxt").write_text(text, encoding="utf-8")
        parsed = parse_config(text, f"{name}/config.pbtxt")
        problems = check_config(parsed, model_dir)
        declared = {t.name: (import_model_config().DataType.Name(t.data_type), list(t.dims))
                    for t in (*parsed.input, *parsed.output)}
        if declared != expected_tensors(onnx_info, max_batch):
            problems.append(f"declared tensors {declared} differ from the ONNX graph's")
        if problems:
            raise TritonConfigError(f"{name}/config.pbtxt would not load in Triton: {'; '.join(problems)}")
        final = repo / name
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old.", dir=repo))
            os.replace(final, old / name)
        os.replace(model_dir, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("wrote Triton model %s (%s, max_batch_size %d)", final, backend, max_batch)
    return TritonModel(name, backend, final / "config.pbtxt", max_batch)


def _copy_plugin(repo: Path, library: Path) -> tuple[Path, str]:
    """Copy the plugin library to REPO/libfgdeploy_plugins.so (one per repository: the server registers one
    creator per op name, so two different libraries would be a conflict); returns (that file, its sha256)."""
    if not library.is_file():
        raise TritonConfigError(f"the engine needs the fgdeploy TensorRT plugin library, but {library} (named in its "
                                "sidecar) does not exist; rebuild it (plugins/README.md) or the engine")
    target, sha = repo / PLUGIN_FILE, file_sha256(library)
    if target.is_file() and file_sha256(target) != sha:
        raise TritonConfigError(f"{target} is another build of the plugin library than {library}, which this engine "
                                "was built with; a server loads one: write this engine into another repository")
    if not target.is_file():
        with open(library, "rb") as source, atomic_open(target, "wb") as copy:
            shutil.copyfileobj(source, copy)
    return target, sha


def write_triton_repository(repo: str | Path, onnx: str | Path, *, name: str | None = None,
                            engine: str | Path | None = None, max_batch: int | None = None) -> TritonRepository:
    """Write (or update) a Triton model repository for an fgdeploy export.

    Args:
        repo: the repository folder (created if missing; other models in it are left alone).
        onnx: the ONNX export; becomes model ``name`` on the onnxruntime backend.
        name: model name. Defaults to the ONNX file's stem.
        engine: a TensorRT engine built from ``onnx`` (with its sidecar); becomes ``name``_trt.
        max_batch: Triton's ``max_batch_size``. Defaults to the export's (and the engine profile's) maximum.

    Returns:
        The models written, the plugin library copied (engines) and the repository README.

    Raises:
        TritonConfigError: a batch beyond what the export or engine takes, an engine built from another ONNX, a
            missing plugin library, or a config that fails the checks.
        BackendUnavailable: tritonclient is not installed.
    """
    import_model_config()
    repo, onnx_path = Path(repo), Path(onnx)
    if repo.exists() and not repo.is_dir():
        raise TritonConfigError(f"--triton {repo}: is a file; name a folder for the model repository")
    onnx_info = read_onnx_info(onnx_path)
    name = check_name(name or onnx_path.stem)
    engine_info = read_engine_info(engine) if engine is not None else None
    if engine_info is not None and engine_info.onnx_sha256 and engine_info.onnx_sha256 != onnx_info.sha256:
        raise TritonConfigError(f"engine {engine_info.path} was built from another ONNX than {onnx_path} (sha256 "
                                f"{engine_info.onnx_sha256[:12]} vs {onnx_info.sha256[:12]}); rebuild it from this one")
    onnx_batch = resolve_max_batch(onnx_info, None, max_batch)
    engine_batch = resolve_max_batch(onnx_info, engine_info, max_batch) if engine_info is not None else 0
    repo.mkdir(parents=True, exist_ok=True)
    result = TritonRepository(repo)
    source = f"{onnx_path.name} (sha256 {onnx_info.sha256[:12]})"
    result.models.append(_write_model_dir(repo, name, "onnxruntime", onnx_info, onnx_path, onnx_batch, {}, source))
    if engine_info is not None:
        extra = {"tensorrt_version": engine_info.tensorrt_version, "engine_sha256": file_sha256(engine_info.path),
                 "precision": engine_info.precision or str(onnx_info.metadata.get("precision", ""))}
        if engine_info.plugin_library is not None:
            library, sha = _copy_plugin(repo, engine_info.plugin_library)
            extra.update({"plugin_library": library.name, "plugin_library_sha256": sha})
        result.models.append(_write_model_dir(repo, f"{name}_trt", "tensorrt", onnx_info, engine_info.path,
                                              engine_batch, extra, f"{engine_info.path.name}, built from {source}"))
    if (repo / PLUGIN_FILE).is_file():
        result.plugin_library = repo / PLUGIN_FILE
    result.readme = write_readme(repo)
    return result


# --- the repository's README ------------------------------------------------------------------------------
def fgdeploy_models(repo: Path) -> list[tuple[Path, Any]]:
    """(model dir, parsed config) of every model in ``repo`` that fgdeploy wrote, by name."""
    found = []
    for config_path in sorted(repo.glob("*/config.pbtxt")):
        if config_path.parent.name.startswith("."):
            continue
        try:
            config = parse_config(config_path.read_text(encoding="utf-8"), str(config_path))
        except TritonConfigError:
            continue   # someone else's model that this tritonclient cannot parse: not ours to describe
        if MARKER in config.parameters:
            found.append((config_path.parent, config))
    return found


def server_command(with_plugin: bool, image: str = "nvcr.io/nvidia/tritonserver:<yy.mm>-py3") -> str:
    """``docker run ... tritonserver`` serving REPO (the current folder's path in $REPO) at /models."""
    gpu = "--gpus all " if with_plugin else ""
    env = f"-e {AUTOREGISTER_ENV}=1 " if with_plugin else ""
    plugin = f" \\\n    --backend-config=tensorrt,plugins=/models/{PLUGIN_FILE}" if with_plugin else ""
    return (f"docker run --rm {gpu}{env}-p 8000:8000 -p 8001:8001 -p 8002:8002 -v \"$REPO\":/models \\\n"
            f"    {image} \\\n    tritonserver --model-repository=/models{plugin}")


CLIENT_SNIPPET = '''import cv2
import numpy as np
import tritonclient.grpc as grpcclient

MODEL, SIZE = "{name}", {size}
image = cv2.cvtColor(cv2.imread("bird.jpg", cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)   # RGB, uint8
height, width = image.shape[:2]
if min(SIZE / width, SIZE / height) < 2 / 3:   # as fgdeploy infer: area-average large shrinks first
    image = cv2.resize(image, (min(SIZE, width), min(SIZE, height)), interpolation=cv2.INTER_AREA)
image = cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
batch = image.transpose(2, 0, 1)[None].astype(np.float32) / np.float32(255.0){cast}   # (1, 3, S, S)

client = grpcclient.InferenceServerClient("localhost:8001")
request = grpcclient.InferInput("images", list(batch.shape), "{client_type}")
request.set_data_from_numpy(batch)
outputs = [grpcclient.InferRequestedOutput(n) for n in ("logits", "keypoints", "keypoint_scores")]
result = client.infer(MODEL, [request], outputs=outputs)
logits = result.as_numpy("logits")[0]                                      # (classes,)
keypoints = result.as_numpy("keypoints")[0] * [width / SIZE, height / SIZE]  # (15, 2) x, y in bird.jpg pixels
scores = result.as_numpy("keypoint_scores")[0]                             # (15,) part visible when >= 0.5
top5 = client.infer(MODEL, [request], outputs=[grpcclient.InferRequestedOutput("logits", class_count=5)])
print(top5.as_numpy("logits")[0])   # b"score:index:class name" from labels.txt
'''


def client_snippet(name: str, input_size: int, input_type: str = "TYPE_FP32") -> str:
    """A tritonclient (gRPC) program that sends one image preprocessed like ``fgdeploy infer``."""
    cast = ".astype(np.float16)" if input_type == "TYPE_FP16" else ""
    return CLIENT_SNIPPET.format(name=name, size=input_size, cast=cast,
                                 client_type=input_type.removeprefix("TYPE_"))   # tritonclient's datatype string


def write_readme(repo: Path) -> Path:
    """(Re)write REPO/README.md for every fgdeploy model in ``repo``."""
    models = fgdeploy_models(repo)
    plugin = (repo / PLUGIN_FILE).is_file()
    rows = []
    for directory, config in models:
        backend = config.backend or config.platform
        parameters = {k: v.string_value for k, v in config.parameters.items()}
        rows.append(f"| `{directory.name}` | {backend} | {parameters.get('precision', '?')} | "
                    f"{config.max_batch_size} | {parameters.get('source_checkpoint', '?')} "
                    f"(sha256 {parameters.get('source_sha256', '?')[:12]}) |")
    first = next((c for _, c in models if c.backend == "onnxruntime"), models[0][1] if models else None)
    size = int(first.parameters["input_size"].string_value) if first is not None and "input_size" in \
        first.parameters else 0
    input_type = import_model_config().DataType.Name(first.input[0].data_type) if first is not None else "TYPE_FP32"
    def values(key: str) -> str:
        found = sorted({c.parameters[key].string_value for _, c in models if key in c.parameters})
        return ", ".join(found) or "?"

    tensorrt = [v for v in values("tensorrt_version").split(", ") if v != "?"]
    ir_versions, opsets = values("onnx_ir_version"), values("opset")
    lines = [
        "# Triton model repository (written by fgdeploy)", "",
        f"Written by fgdeploy {__version__}; `fgdeploy export ... --triton {repo.name}` rewrites the models it "
        "exports and this file. Nothing here was run on a Triton server by fgdeploy: it checked each "
        "`config.pbtxt` against Triton's `ModelConfig` schema (tritonclient's `model_config_pb2`, strict "
        "text-format parse), against the ONNX graph (names, dims, types) and the engine's batch profile.", "",
        "| model | backend | precision | max_batch_size | from checkpoint |", "|---|---|---|---|---|", *rows, "",
        "## Start the server", "",
        "Pick a tritonserver release (`<yy.mm>`) "
        + (f"whose TensorRT is the one the engines were built with (TensorRT {', '.join(tensorrt)}) and " if tensorrt
           else "")
        + f"whose ONNX Runtime reads ONNX IR version {ir_versions} and opset {opsets}; Triton's release notes list "
        "the versions each release ships.", "",
        "```bash", "REPO=$(pwd)   # this folder", server_command(plugin), "```", "",
        "The TensorRT models need the GPU (`--gpus all`); the ONNX models run on the CPU without it, and on the GPU "
        "with it." if plugin or tensorrt else "Add `--gpus all` to run the ONNX models on a GPU (they run on the "
        "CPU without it).", "",
    ]
    if plugin:
        lines += [
            f"TensorRT engines use fgdeploy's `CoordinateTransfer` plugin, `{PLUGIN_FILE}` in this folder (built for "
            "this GPU architecture and TensorRT major). Triton's TensorRT backend `dlopen`s the libraries given by "
            "`--backend-config=tensorrt,plugins=...` (several: separated by `;`); the library registers its creator "
            f"on that load only when `{AUTOREGISTER_ENV}=1` is in the server's environment (the `-e` above). Without "
            "it, loading the `_trt` models fails with `getPluginCreator could not find plugin CoordinateTransfer`. "
            "Outside Docker: `" + AUTOREGISTER_ENV + "=1 tritonserver --model-repository=$REPO "
            f"--backend-config=tensorrt,plugins=$REPO/{PLUGIN_FILE}`. `LD_PRELOAD` does not work: the library "
            "is loaded before TensorRT and finds no plugin registry to register with.", "",
        ]
    if first is not None:
        lines += [
            "## Query it", "",
            "Images go in as fgdeploy's models take them: RGB, resized to the model's input size, float in [0, 1] "
            "(the normalisation is inside the model).", "",
            "```python", client_snippet(first.name, size, input_type).rstrip(), "```", "",
        ]
    path = repo / "README.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def _cli(argv: Sequence[str] | None = None) -> int:
    import argparse

    from fgdeploy.errors import FgdeployError

    parser = argparse.ArgumentParser(prog="python -m fgdeploy.deploy.triton",
                                     description="Write a Triton model repository for an fgdeploy ONNX export.")
    parser.add_argument("onnx", type=Path)
    parser.add_argument("--repo", type=Path, required=True, help="model repository folder")
    parser.add_argument("--name", default=None, help="model name (default: the ONNX file's stem)")
    parser.add_argument("--engine", type=Path, default=None, help="a TensorRT engine built from the ONNX")
    parser.add_argument("--max-batch", type=int, default=None, help="Triton max_batch_size")
    args = parser.parse_args(argv)
    try:
        result = write_triton_repository(args.repo, args.onnx, name=args.name, engine=args.engine,
                                         max_batch=args.max_batch)
    except FgdeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for model in result.models:
        print(f"wrote {model.config_path} ({model.backend}, max_batch_size {model.max_batch_size})")
    print(f"see {result.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
