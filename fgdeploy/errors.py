"""Exception types. Every message says what failed, the value seen, and what to do next."""

from __future__ import annotations


def cuda_unavailable(device: str, detail: str = "") -> str:
    """The one wording, in every command and backend, of "this --device needs CUDA, which is not here"."""
    return f"--device {device}: CUDA is not available on this machine{detail}; use --device cpu or auto"


class FgdeployError(Exception):
    """Base class of fgdeploy's errors; the CLI turns it into a message and exit code 1."""


class ConfigError(FgdeployError):
    """A config file or option is invalid (unknown key, wrong type, bad value)."""


class DatasetError(FgdeployError):
    """A dataset file is missing or malformed. Messages name the file and line."""


class ImageError(FgdeployError):
    """An image cannot be read or decoded. Messages name the path."""


class CheckpointError(FgdeployError):
    """A checkpoint or weights file is missing, corrupt, or does not match the model."""


class ExportError(FgdeployError):
    """Exporting a model to ONNX or building an engine failed."""


class BackendUnavailable(FgdeployError):
    """A requested backend or execution provider is not installed on this machine."""
