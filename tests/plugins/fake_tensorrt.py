"""A small stand-in for the ``tensorrt`` module that records what the builder asks for.

It models only what ``fgdeploy.export.tensorrt`` and ``trt_support`` touch, plus the ONNX parser's
plugin dispatch as read in the parser sources (docs/deploy.md, "TensorRT and the plugin"): a
``fgdeploy::CoordinateTransfer`` node becomes a PLUGIN_V3 layer when a matching creator is registered and
the node carries ``plugin_namespace`` or the parser flag ENABLE_PLUGIN_OVERRIDE is set; otherwise its
local function is inlined into ordinary layers.
"""

from __future__ import annotations

import enum
import json
import types
from pathlib import Path
from typing import Any

import onnx


class LayerType(enum.Enum):
    PLUGIN_V3 = 46
    GATHER = 16
    REDUCE = 14
    CONVOLUTION = 0
    CAST = 1
    QUANTIZE = 33
    DEQUANTIZE = 34


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    INT64 = 10
    BOOL = 4


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0


class PluginCapabilityType(enum.Enum):
    CORE = 0
    BUILD = 1
    RUNTIME = 2


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class Tensor:
    def __init__(self, name: str, shape: tuple[int, ...], dtype: DataType) -> None:
        self.name, self.shape, self.dtype = name, shape, dtype


class _Core:
    plugin_name = "CoordinateTransfer"
    plugin_namespace = "fgdeploy"


class _Plugin:
    def get_capability_interface(self, kind: PluginCapabilityType) -> Any:
        assert kind == PluginCapabilityType.CORE
        return _Core()


class Layer:
    def __init__(self, name: str, type_: LayerType, dtype: DataType) -> None:
        self.name, self.type, self._dtype = name, type_, dtype
        self.num_outputs = 1

    def get_output(self, i: int) -> Tensor:
        return Tensor(f"{self.name}:{i}", (), self._dtype)


class IPluginV3Layer(Layer):
    @property
    def plugin(self) -> _Plugin:
        return _Plugin()


class Network:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.layers: list[Layer] = []
        self.inputs: list[Tensor] = []

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_layer(self, i: int) -> Layer:
        return self.layers[i]

    def get_input(self, i: int) -> Tensor:
        return self.inputs[i]


class Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[Any, Any, Any]] = {}

    def set_shape(self, name: str, mn: Any, opt: Any, mx: Any) -> None:
        self.shapes[name] = (list(mn), list(opt), list(mx))


class TimingCache:
    def __init__(self, blob: bytes) -> None:
        self.blob = bytes(blob)

    def serialize(self) -> bytes:
        return self.blob + b"+timed"


class BuilderConfig:
    def __init__(self) -> None:
        self.pool_limits: dict[Any, int] = {}
        self.profiles: list[Profile] = []
        self.timing_cache: TimingCache | None = None
        self.ignore_mismatch: bool | None = None
        self.builder_optimization_level = 3

    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        self.pool_limits[pool] = size

    def add_optimization_profile(self, profile: Profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, blob: bytes) -> TimingCache:
        return TimingCache(blob)

    def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
        self.timing_cache, self.ignore_mismatch = cache, ignore_mismatch
        return True

    def get_timing_cache(self) -> TimingCache:
        assert self.timing_cache is not None
        return self.timing_cache


class Registry:
    def __init__(self) -> None:
        self.creators: set[tuple[str, str, str]] = set()
        self.loaded: list[str] = []
        self.library_registers = True  # False: a library without our creator

    def get_creator(self, name: str, version: str, namespace: str = "") -> Any:
        return object() if (name, version, namespace) in self.creators else None

    def load_library(self, path: str) -> Any:
        if not Path(path).is_file():
            return None
        self.loaded.append(path)
        if self.library_registers:
            self.creators.add(("CoordinateTransfer", "1", "fgdeploy"))
        return object()


def make_fake_tensorrt(version: str = "10.13.0.35", override_flag: bool = False) -> types.ModuleType:
    """A fresh fake module. ``override_flag``: the parser has ENABLE_PLUGIN_OVERRIDE (10.15+)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version  # type: ignore[attr-defined]
    major = int(version.split(".")[0])
    record: dict[str, Any] = {"parser_flags": [], "networks": [], "configs": [], "build_result": b"PLAN"}
    registry = Registry()
    strongly = 0 if major >= 11 else 1
    flag_members = {"NATIVE_INSTANCENORM": 0, **({"ENABLE_PLUGIN_OVERRIDE": 2} if override_flag else {})}

    class Logger:
        WARNING = "WARNING"

        def __init__(self, severity: Any = None) -> None:
            self.severity = severity

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.network, self.errors = network, []

        def set_flag(self, flag: Any) -> None:
            record["parser_flags"].append(flag)

        def parse_from_file(self, path: str) -> bool:
            model = onnx.load(path)
            if record.get("parse_error"):
                self.errors = [record["parse_error"]]
                return False
            half = any(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for i in model.graph.input)
            dtype = DataType.HALF if half else DataType.FLOAT
            for i in model.graph.input:
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim)
                self.network.inputs.append(Tensor(i.name, dims, dtype))
            override = OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE in record["parser_flags"] if override_flag else False
            for k, node in enumerate(model.graph.node):
                ours = node.op_type == "CoordinateTransfer" and node.domain == "fgdeploy"
                attrs = {a.name: a.s.decode() for a in node.attribute if a.type == onnx.AttributeProto.STRING}
                namespace = attrs.get("plugin_namespace", "")
                plugged = ours and ((override and registry.get_creator("CoordinateTransfer", "1", "fgdeploy"))
                                    or registry.get_creator("CoordinateTransfer", "1", namespace))
                if plugged:
                    self.network.layers.append(IPluginV3Layer(node.name or f"n{k}", LayerType.PLUGIN_V3, dtype))
                elif ours:  # local function inlined
                    self.network.layers += [Layer(f"{node.name}/gather", LayerType.GATHER, dtype),
                                            Layer(f"{node.name}/reduce", LayerType.REDUCE, dtype)]
                elif node.op_type == "QuantizeLinear":  # explicit quantization: an INT8 tensor out
                    self.network.layers.append(Layer(node.name or f"n{k}", LayerType.QUANTIZE, DataType.INT8))
                elif node.op_type == "DequantizeLinear":
                    self.network.layers.append(Layer(node.name or f"n{k}", LayerType.DEQUANTIZE, dtype))
                else:
                    self.network.layers.append(Layer(node.name or f"n{k}", LayerType.CONVOLUTION, dtype))
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> str:
            return self.errors[i]

    class Builder:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def create_network(self, flags: int = 0) -> Network:
            network = Network(flags)
            record["networks"].append(network)
            return network

        def create_builder_config(self) -> BuilderConfig:
            config = BuilderConfig()
            record["configs"].append(config)
            return config

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: BuilderConfig) -> Any:
            result = record["build_result"]
            if result is None:
                return None
            return result + json.dumps({"layers": [lay.type.name for lay in network.layers]}).encode()

    OnnxParserFlag = enum.Enum("OnnxParserFlag", flag_members)  # type: ignore[misc]
    NetworkDefinitionCreationFlag = enum.Enum(  # type: ignore[misc]
        "NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": strongly, "PREFER_JIT_PYTHON_PLUGINS": 2})

    def _int(self: Any) -> int:
        return int(self.value)

    NetworkDefinitionCreationFlag.__int__ = _int  # type: ignore[attr-defined]
    for name, value in {
        "Logger": Logger, "OnnxParser": OnnxParser, "Builder": Builder, "OnnxParserFlag": OnnxParserFlag,
        "NetworkDefinitionCreationFlag": NetworkDefinitionCreationFlag, "LayerType": LayerType, "DataType": DataType,
        "MemoryPoolType": MemoryPoolType, "PluginCapabilityType": PluginCapabilityType, "TensorIOMode": TensorIOMode,
        "IPluginV3Layer": IPluginV3Layer, "Dims": lambda shape: tuple(shape),
        "get_plugin_registry": lambda: registry, "record": record, "registry": registry,
    }.items():
        setattr(trt, name, value)
    return trt
