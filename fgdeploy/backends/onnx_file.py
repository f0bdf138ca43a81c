"""What every runner of an fgdeploy .onnx file shares (ONNX Runtime, OpenVINO): the file or its bytes, the
metadata's precision check, the input specs and output names it fills in on activation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fgdeploy.backends.base import Runner, RunnerError, TensorSpec


class OnnxFileRunner(Runner):
    """Base of the runners that load an fgdeploy ONNX export.

    Args:
        model: path of the .onnx file, or its bytes.
        fp16: if given, the precision recorded in the model must match it (``_check_precision`` on activation).
        threads: CPU inference threads. Defaults to the runtime's choice.
        debug: also output each CoordinateTransfer's heatmaps input and result, for divergence localisation.
        name: label for reports; ``None``: the subclass names it once the model's precision is known.
        default_name: the label until then.
    """

    def __init__(self, model: str | Path | bytes, *, fp16: bool | None, threads: int | None, debug: bool,
                 name: str | None, default_name: str) -> None:
        self.model = Path(model) if isinstance(model, str) else model
        self.fp16 = fp16
        self.threads = threads
        self.debug = debug
        self._explicit_name = name
        super().__init__(name or default_name)
        self._meta: dict[str, Any] = {}
        self._specs: dict[str, TensorSpec] = {}
        self._output_names: list[str] = []

    def _input_specs(self) -> dict[str, TensorSpec]:
        return dict(self._specs)

    def _metadata(self) -> dict[str, Any]:
        return dict(self._meta)

    @property
    def output_names(self) -> list[str]:
        """Output names in graph order (after activation)."""
        return list(self._output_names)

    def _label(self) -> str:
        return str(self.model) if isinstance(self.model, Path) else f"<{len(self.model)} bytes of ONNX>"

    def _model_bytes(self) -> bytes:
        """The serialized model; RunnerError saying how to make one when the file is missing."""
        if isinstance(self.model, Path):
            if not self.model.is_file():
                raise RunnerError(f"ONNX model {self.model} does not exist; export one with `fgdeploy export`")
            return self.model.read_bytes()
        return bytes(self.model)

    def _model_proto(self) -> Any:
        """The model parsed (``onnx.ModelProto``); RunnerError when the bytes are not an ONNX model."""
        import onnx

        data = self._model_bytes()
        try:
            return onnx.load_from_string(data)
        except Exception as exc:  # DecodeError and friends
            raise RunnerError(f"{self._label()}: not an ONNX file ({first_line(exc)}); fgdeploy runs its ONNX "
                              "exports (`fgdeploy export CKPT -o model.onnx [--portable]`)") from exc

    def _check_precision(self) -> None:
        if self.fp16 is None:
            return
        stored = self._meta.get("precision", "fp32")
        wanted = "fp16" if self.fp16 else "fp32"
        if stored != wanted:
            raise RunnerError(f"{self._label()}: {wanted} requested but the model is {stored}; ONNX precision is "
                              "fixed at export (`fgdeploy export --fp16` makes an fp16 model)")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (runtimes raise long multi-line messages), at most 400 characters."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:400]
