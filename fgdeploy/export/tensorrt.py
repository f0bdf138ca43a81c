"""ONNX -> TensorRT engine (10.7+ and 11.x), with the CoordinateTransfer plugin.

The same FP32, FP16 or INT8 (QDQ: explicit quantization) ONNX builds the same strongly typed network on
10.x and 11.x (precision comes from the ONNX, never from builder flags; TensorRT 11 has none). Steps (``build_engine``):

1. load ``libfgdeploy_plugins.so`` into TensorRT's registry (once per process);
2. parse the ONNX, with ``OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE`` where it exists (10.15+);
3. check that every ``fgdeploy::CoordinateTransfer`` node became a PLUGIN_V3 layer: otherwise the parser
   silently inlined the ONNX local function (reported, and an error unless ``require_plugin=False``);
4. one optimisation profile over the dynamic batch (min/opt/max), workspace limit, timing cache;
5. write the plan and its JSON sidecar (``<engine>.json``) atomically.

Command line (for rebuilding from an ONNX file)::

    python -m fgdeploy.export.tensorrt model.onnx --engine model.engine --min-batch 1 --opt-batch 8 --max-batch 32
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from fgdeploy import __version__
from fgdeploy.backends.trt_support import (
    SIDECAR_FORMAT, SIDECAR_VERSION, dims_tuple, import_tensorrt, load_plugin_library, machine_info, sidecar_path,
    tensorrt_major, tensorrt_version,
)
from fgdeploy.errors import ExportError, FgdeployError
from fgdeploy.fileio import atomic_write_bytes, atomic_write_json, file_sha256
from fgdeploy.tensors import OP_DOMAIN, OP_NAME, PLUGIN_NAMESPACE

if TYPE_CHECKING:  # annotations only; the real import is lazy, inside the functions
    import tensorrt as trt  # type: ignore[import-not-found,unused-ignore]

logger = logging.getLogger(__name__)

# ONNX metadata keys copied into the sidecar (written by fgdeploy.export.metadata).
SIDECAR_METADATA_KEYS = ("class_names", "part_names", "input_name", "input_size", "input_dtype", "input_range",
                         "normalisation", "heatmap_size", "precision", "outputs", "model_config",
                         "source_checkpoint", "source_sha256", "stage", "epoch", "fp32_kept", "quantization",
                         "float_kept_nodes", "precision_guard")


@dataclass(frozen=True)
class EngineBuildConfig:
    """How to build an engine."""

    min_batch: int = 1                  # smallest batch the engine accepts
    opt_batch: int = 8                  # batch TensorRT tunes tactics for
    max_batch: int = 32                 # largest batch the engine accepts
    workspace_mib: int = 2048           # builder workspace (scratch) memory limit
    timing_cache: Path | None = None    # read when present, written after the build; None = no cache
    plugin_library: Path | None = None  # None: fgdeploy.native.build.find_plugin_library()
    require_plugin: bool = True         # fail when CoordinateTransfer nodes were inlined instead of plugged
    optimization_level: int | None = None  # builder_optimization_level 0-5; None = TensorRT's default (3)
    device: int = 0                     # CUDA device the engine is built on (recorded in the sidecar)

    def validate(self) -> None:
        """Raise ExportError when the profile or limits make no sense."""
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ExportError(f"batch profile must satisfy 1 <= min <= opt <= max, got min={self.min_batch} "
                              f"opt={self.opt_batch} max={self.max_batch}")
        if self.workspace_mib < 1:
            raise ExportError(f"workspace must be >= 1 MiB, got {self.workspace_mib}")
        if self.optimization_level is not None and not 0 <= self.optimization_level <= 5:
            raise ExportError(f"optimization_level must be in 0..5, got {self.optimization_level}")


@dataclass
class EngineBuildReport:
    """What ``build_engine`` did."""

    engine_path: Path
    sidecar_path: Path
    op_nodes: int             # CoordinateTransfer nodes in the ONNX
    plugin_layers: list[str]  # names of our PLUGIN_V3 layers in the parsed network
    op_path: str              # "plugin", "inlined" (local function used), "mixed" or "none" (no such node)
    precision: str            # "int8" (Q/DQ layers), "fp16" (half tensors) or "fp32"
    parser_flags: list[str]
    build_seconds: float
    sidecar: dict[str, Any] = field(repr=False, default_factory=dict)


# --- ONNX inspection ----------------------------------------------------------------------------------
def inspect_onnx(onnx_path: Path) -> tuple[int, list[str], dict[str, Any]]:
    """(number of CoordinateTransfer nodes, names of those lacking plugin_namespace, decoded metadata)."""
    import onnx

    from fgdeploy.export.metadata import decode_metadata

    model = onnx.load(str(onnx_path), load_external_data=False)
    nodes = [n for n in model.graph.node if n.op_type == OP_NAME and n.domain == OP_DOMAIN]
    lacking = [n.name or f"#{i}" for i, n in enumerate(nodes)
               if not any(a.name == "plugin_namespace" and a.s.decode() == PLUGIN_NAMESPACE for a in n.attribute)]
    metadata = decode_metadata({p.key: p.value for p in model.metadata_props})
    return len(nodes), lacking, metadata


# --- network helpers ----------------------------------------------------------------------------------
def network_flags() -> int:
    """Creation flags: strongly typed on 10.x (11.x is always strongly typed and ignores the flag)."""
    import tensorrt as trt  # type: ignore[import-not-found,unused-ignore]

    if tensorrt_major() < 11:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0


def set_parser_flags(parser: trt.OnnxParser) -> list[str]:
    """Prefer registered plugins over ONNX local functions where the parser has the flag (10.15+)."""
    import tensorrt as trt  # type: ignore[import-not-found,unused-ignore]

    flag = getattr(trt.OnnxParserFlag, "ENABLE_PLUGIN_OVERRIDE", None)
    if flag is None:
        return []
    parser.set_flag(flag)
    return ["ENABLE_PLUGIN_OVERRIDE"]


def plugin_layers(network: trt.INetworkDefinition) -> list[str]:
    """Names of PLUGIN_V3 layers that are ``fgdeploy::CoordinateTransfer`` (or whose identity is hidden)."""
    import tensorrt as trt  # type: ignore[import-not-found,unused-ignore]

    names = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type != trt.LayerType.PLUGIN_V3:
            continue
        try:  # Python returns ILayer; downcast as Polygraphy does to reach the plugin's identity
            layer.__class__ = trt.IPluginV3Layer
            core = cast("trt.IPluginV3Layer", layer).plugin.get_capability_interface(trt.PluginCapabilityType.CORE)
            identity = (core.plugin_name, core.plugin_namespace)
        except Exception as exc:  # binding differences: count the layer, say why identity is unknown
            logger.debug("cannot read the plugin identity of layer %s: %s", layer.name, exc)
            identity = (OP_NAME, PLUGIN_NAMESPACE)
        if identity == (OP_NAME, PLUGIN_NAMESPACE):
            names.append(str(layer.name))
    return names


def network_precision(network: trt.INetworkDefinition) -> str:
    """"int8" when any layer outputs INT8 tensors (the QuantizeLinear layers of a QDQ ONNX), else "fp16" when
    any outputs HALF tensors (strongly typed: types come from the ONNX), else "fp32"."""
    import tensorrt as trt  # type: ignore[import-not-found,unused-ignore]

    found = set()
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            found.add(layer.get_output(j).dtype)
    return "int8" if trt.DataType.INT8 in found else "fp16" if trt.DataType.HALF in found else "fp32"


def check_qdq_for_tensorrt(onnx_path: Path) -> None:
    """TensorRT's explicit quantization takes signed INT8 Q/DQ with zero point 0 only: refuse anything else
    with a message saying how to re-export (instead of a parser error deep in the build)."""
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        zero_point = inits.get(node.input[2])
        if zero_point is None:
            continue
        if zero_point.data_type != TensorProto.INT8 or numpy_helper.to_array(zero_point).any():
            kind = TensorProto.DataType.Name(zero_point.data_type)
            raise ExportError(f"{onnx_path}: node {node.name} quantizes to {kind} with a zero point that is not 0 or "
                              "not INT8; TensorRT takes only symmetric signed INT8 Q/DQ. Re-export with "
                              "`fgdeploy export --int8 --int8-target tensorrt`")


def classify_op_path(op_nodes: int, plugged: int) -> str:
    """How the CoordinateTransfer nodes were imported."""
    if op_nodes == 0:
        return "none"
    if plugged >= op_nodes:
        return "plugin"
    return "inlined" if plugged == 0 else "mixed"


def add_batch_profile(builder: trt.Builder, network: trt.INetworkDefinition,
                      cfg: EngineBuildConfig) -> tuple[trt.IOptimizationProfile, dict[str, Any]]:
    """One optimisation profile: dim 0 of every input from min to max batch; returns it and its shapes."""
    import tensorrt as trt  # type: ignore[import-not-found,unused-ignore]

    profile = builder.create_optimization_profile()
    shapes: dict[str, Any] = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = dims_tuple(tensor.shape)
        if any(d < 0 for d in dims[1:]):
            raise ExportError(f"input {tensor.name} has dynamic non-batch dims {dims}; export with a fixed input size")
        if dims and dims[0] >= 0 and not cfg.min_batch == cfg.max_batch == dims[0]:
            raise ExportError(f"input {tensor.name} has a fixed batch {dims[0]} but the profile asks for "
                              f"{cfg.min_batch}..{cfg.max_batch}; export with a dynamic batch")
        rest = dims[1:]
        mn, opt, mx = (cfg.min_batch, *rest), (cfg.opt_batch, *rest), (cfg.max_batch, *rest)
        profile.set_shape(tensor.name, trt.Dims(list(mn)), trt.Dims(list(opt)), trt.Dims(list(mx)))
        shapes[tensor.name] = {"min": list(mn), "opt": list(opt), "max": list(mx)}
    return profile, shapes


def rebuild_command(onnx_path: Path, engine_path: Path, cfg: EngineBuildConfig) -> str:
    """The shell command that rebuilds this engine from its ONNX (put in the sidecar and in errors)."""
    args = ["python", "-m", "fgdeploy.export.tensorrt", str(onnx_path.resolve()), "--engine",
            str(engine_path.resolve()), "--min-batch", str(cfg.min_batch), "--opt-batch", str(cfg.opt_batch),
            "--max-batch", str(cfg.max_batch), "--workspace-mib", str(cfg.workspace_mib)]
    return " ".join(shlex.quote(a) for a in args)


def resolve_plugin_library(cfg: EngineBuildConfig, op_nodes: int) -> Path | None:
    """The plugin library to load: configured, found (matching this TensorRT), or built from headers.

    Raises:
        ExportError: the ONNX needs the plugin, ``require_plugin`` is set and no library can be had.
    """
    from fgdeploy.native.build import PluginBuildError, build_plugin_library, find_plugin_library, find_tensorrt_include

    try:
        found = find_plugin_library(cfg.plugin_library, tensorrt_version=tensorrt_version())
        if found is None and op_nodes and find_tensorrt_include() is not None:
            found = build_plugin_library()
    except PluginBuildError as exc:
        raise ExportError(str(exc)) from exc
    if found is None and op_nodes and cfg.require_plugin:
        raise ExportError(
            f"the ONNX has {op_nodes} {OP_DOMAIN}::{OP_NAME} node(s) but no TensorRT plugin library was found: set "
            "TENSORRT_INCLUDE_DIR (TensorRT headers) so it is built automatically, build it with CMake "
            "(plugins/README.md) or pass its path (--plugin-lib / FGDEPLOY_PLUGIN_LIB); or allow the slower "
            "inlined ONNX function with require_plugin=False (--allow-inlined)")
    return found


def _report_op_path(op_path: str, op_nodes: int, plugged: list[str], lacking: list[str], cfg: EngineBuildConfig,
                    plugin_lib: Path | None) -> None:
    if op_path in ("plugin", "none"):
        logger.info("CoordinateTransfer: %d ONNX node(s), %d plugin layer(s) %s: path=%s", op_nodes, len(plugged),
                    plugged, op_path)
        return
    why = ("the plugin library was not loaded" if plugin_lib is None else
           f"nodes {lacking} lack the attribute plugin_namespace='{PLUGIN_NAMESPACE}' (re-export them)" if lacking else
           "TensorRT did not match the registered creator (see its log)")
    message = (f"the ONNX parser inlined the ONNX local function for {op_nodes - len(plugged)} of {op_nodes} "
               f"CoordinateTransfer node(s) instead of using the plugin: {why}")
    if cfg.require_plugin:
        raise ExportError(message + "; pass require_plugin=False (--allow-inlined) to accept the inlined version")
    logger.warning("%s; building anyway (require_plugin=False)", message)


def _timing_cache(config: trt.IBuilderConfig, path: Path | None) -> None:
    blob = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(blob)
    if not config.set_timing_cache(cache, False):
        logger.warning("timing cache %s does not match this TensorRT/GPU; starting an empty one", path)
        config.set_timing_cache(config.create_timing_cache(b""), True)


def build_engine(onnx_path: str | Path, engine_path: str | Path, config: EngineBuildConfig | None = None,
                 extra_metadata: dict[str, Any] | None = None) -> EngineBuildReport:
    """Build a TensorRT engine from an fgdeploy ONNX and write ``engine_path`` plus its JSON sidecar.

    Args:
        onnx_path: FP32 or FP16 ONNX from ``fgdeploy export`` (dynamic batch).
        engine_path: output plan file; the sidecar goes to ``<engine_path>.json``.
        config: profile, workspace, timing cache, plugin library; defaults to ``EngineBuildConfig()``.
        extra_metadata: merged over the ONNX metadata in the sidecar (class_names, part_names, ...).

    Raises:
        BackendUnavailable: TensorRT is not installed.
        ExportError: bad config, parse/build failure, or CoordinateTransfer not mapped to the plugin.
    """
    cfg = config or EngineBuildConfig()
    cfg.validate()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise ExportError(f"ONNX file {onnx_path} does not exist; create it with `fgdeploy export CHECKPOINT`")
    import_tensorrt()
    import tensorrt as trt  # type: ignore[import-not-found,unused-ignore]

    op_nodes, lacking, metadata = inspect_onnx(onnx_path)
    metadata.update(extra_metadata or {})
    check_qdq_for_tensorrt(onnx_path)
    plugin_lib = resolve_plugin_library(cfg, op_nodes)
    trt_logger = trt.Logger(trt.Logger.WARNING)
    if plugin_lib is not None:
        load_plugin_library(plugin_lib)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(network_flags())
    parser = trt.OnnxParser(network, trt_logger)
    parser_flags = set_parser_flags(parser)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT {trt.__version__} cannot parse {onnx_path}:\n{errors}")
    plugged = plugin_layers(network)
    op_path = classify_op_path(op_nodes, len(plugged))
    _report_op_path(op_path, op_nodes, plugged, lacking, cfg, plugin_lib)
    precision = network_precision(network)
    if metadata.get("precision") not in (None, precision):
        logger.warning("ONNX metadata says %s but the network computes in %s", metadata["precision"], precision)
    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mib << 20)
    if cfg.optimization_level is not None:
        builder_config.builder_optimization_level = cfg.optimization_level
    profile, shapes = add_batch_profile(builder, network, cfg)
    builder_config.add_optimization_profile(profile)
    _timing_cache(builder_config, cfg.timing_cache)
    start = time.perf_counter()
    plan = builder.build_serialized_network(network, builder_config)
    seconds = time.perf_counter() - start
    if plan is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path}; see the TensorRT errors above")
    atomic_write_bytes(engine_path, bytes(plan))
    if cfg.timing_cache is not None:
        atomic_write_bytes(cfg.timing_cache, bytes(builder_config.get_timing_cache().serialize()))
    report = EngineBuildReport(engine_path, sidecar_path(engine_path), op_nodes, plugged, op_path, precision,
                               parser_flags, seconds)
    report.sidecar = make_sidecar(onnx_path, engine_path, cfg, report, shapes, metadata, plugin_lib)
    atomic_write_json(report.sidecar_path, report.sidecar, sort_keys=True)
    logger.info("engine %s (%s, %s) built in %.1f s", engine_path, precision, op_path, seconds)
    return report


def make_sidecar(onnx_path: Path, engine_path: Path, cfg: EngineBuildConfig, report: EngineBuildReport,
                 shapes: dict[str, Any], metadata: dict[str, Any], plugin_lib: Path | None) -> dict[str, Any]:
    """The JSON written next to the engine (read back by ``TrtRunner``)."""
    from fgdeploy.native.build import describe_library

    return {
        "format": SIDECAR_FORMAT, "format_version": SIDECAR_VERSION, "fgdeploy_version": __version__,
        "created_unix": int(time.time()),
        "engine": {"file": engine_path.name, **{k: v for k, v in describe_library(engine_path).items() if k != "path"}},
        "machine": machine_info(cfg.device),
        "plugin_library": describe_library(plugin_lib) if plugin_lib is not None else None,
        "onnx": {"path": str(onnx_path.resolve()), "sha256": file_sha256(onnx_path)},
        "profile": {"min_batch": cfg.min_batch, "opt_batch": cfg.opt_batch, "max_batch": cfg.max_batch,
                    "shapes": shapes},
        "precision": report.precision,
        "builder": {"workspace_mib": cfg.workspace_mib, "optimization_level": cfg.optimization_level,
                    "timing_cache": str(cfg.timing_cache) if cfg.timing_cache else None, "strongly_typed": True,
                    "parser_flags": report.parser_flags, "build_seconds": round(report.build_seconds, 3)},
        "coordinate_transfer": {"onnx_nodes": report.op_nodes, "plugin_layers": report.plugin_layers,
                                "path": report.op_path},
        "class_names": metadata.get("class_names"),
        "part_names": metadata.get("part_names"),
        "preprocessing": {k: metadata.get(k) for k in ("input_name", "input_size", "input_dtype", "input_range",
                                                          "normalisation")},
        "metadata": {k: metadata[k] for k in SIDECAR_METADATA_KEYS if k in metadata},
        "rebuild_command": rebuild_command(onnx_path, engine_path, cfg),
    }


def _cli() -> Any:
    import click

    defaults = EngineBuildConfig()

    @click.command(help="Build a TensorRT engine (+ JSON sidecar) from an fgdeploy ONNX file.")
    @click.argument("onnx", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--engine", type=click.Path(dir_okay=False, path_type=Path), help="default: ONNX path, .engine")
    @click.option("--min-batch", type=int, default=defaults.min_batch, show_default=True)
    @click.option("--opt-batch", type=int, default=defaults.opt_batch, show_default=True)
    @click.option("--max-batch", type=int, default=defaults.max_batch, show_default=True)
    @click.option("--workspace-mib", type=int, default=defaults.workspace_mib, show_default=True)
    @click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--plugin-lib", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--allow-inlined", is_flag=True, help="accept the inlined ONNX function instead of the plugin")
    def command(onnx: Path, engine: Path | None, min_batch: int, opt_batch: int, max_batch: int,
                workspace_mib: int, timing_cache: Path | None, plugin_lib: Path | None, allow_inlined: bool) -> None:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        cfg = EngineBuildConfig(min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                                workspace_mib=workspace_mib, timing_cache=timing_cache, plugin_library=plugin_lib,
                                require_plugin=not allow_inlined)
        try:
            report = build_engine(onnx, engine or onnx.with_suffix(".engine"), cfg)
        except FgdeployError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"{report.engine_path} ({report.precision}, CoordinateTransfer via {report.op_path}) in "
                   f"{report.build_seconds:.1f} s; sidecar {report.sidecar_path}")

    return command


if __name__ == "__main__":
    _cli()()
