"""fgdeploy checkpoints: one ``torch.save`` file of plain data, loaded with ``weights_only=True``.

Layout of the saved mapping (every value is a tensor, a number, a string, or a list/dict of them, so
loading never executes pickled code)::

    {"format": "fgdeploy-checkpoint", "format_version": 1,
     "meta": {...CheckpointMeta fields except sha256...},
     "state_dict": model.state_dict(),
     "extra_state": {...}}   # trainer state for exact resume: optimizer, scheduler, RNG, step

Files are written atomically: a temporary file in the same folder, fsync, then ``os.replace``. A crash
while writing leaves the previous checkpoint untouched. ``sha256`` is the hash of the file's bytes,
filled in when the file is read (a file cannot contain its own hash) and returned by ``save_checkpoint``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fgdeploy import __version__
from fgdeploy.errors import CheckpointError
from fgdeploy.fileio import atomic_write_bytes, file_sha256

if TYPE_CHECKING:  # torch is imported inside functions so `import fgdeploy.checkpoint` stays light
    import torch

log = logging.getLogger(__name__)

FORMAT_NAME = "fgdeploy-checkpoint"
FORMAT_VERSION = 1


@dataclass
class CheckpointMeta:
    """What export and infer need to rebuild and feed the model, plus where training stood."""

    model_config: dict[str, Any]          # ModelConfig as a plain dict (dataclass_to_dict)
    class_names: list[str]                # index = label
    part_names: list[str]                 # parts.txt order
    input_size: int                       # S of the S x S model input
    mean: list[float]                     # RGB normalisation inside the model, for inputs in [0, 1]
    std: list[float]
    stage: int = 0                        # training stage that produced these weights (0 = untrained)
    epoch: int = 0                        # epochs completed within that stage
    fgdeploy_version: str = __version__
    sha256: str = ""                      # hash of the checkpoint file; filled in on load
    train_config: dict[str, Any] = field(default_factory=dict)  # resolved TrainConfig, for the record
    metrics: dict[str, float] = field(default_factory=dict)     # validation metrics at save time

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def for_config(cls, config: Any, class_names: Sequence[str], part_names: Sequence[str] | None = None,
                   **fields: Any) -> CheckpointMeta:
        """The metadata of a model built from ``config`` (a ModelConfig): the config itself, its input size
        and normalisation; ``part_names`` default to CUB's 15; ``fields``: stage, epoch, metrics, ..."""
        from fgdeploy.config import dataclass_to_dict
        from fgdeploy.tensors import PART_NAMES

        return cls(model_config=dataclass_to_dict(config), class_names=list(class_names),
                   part_names=list(PART_NAMES if part_names is None else part_names),
                   input_size=int(config.input_size), mean=list(config.mean), std=list(config.std), **fields)


@dataclass
class CheckpointData:
    """Everything in a checkpoint file, without building the model."""

    meta: CheckpointMeta
    state_dict: dict[str, Any]
    extra_state: dict[str, Any]


def save_checkpoint(
    path: str | Path, model: torch.nn.Module, meta: CheckpointMeta,
    extra_state: dict[str, Any] | None = None,
) -> str:
    """Save ``model``'s weights with ``meta`` (and optional trainer state) atomically.

    Args:
        path: destination file (``.pt``); its folder is created.
        model: the model (a DDP wrapper is unwrapped).
        meta: descriptive fields; ``sha256`` is ignored.
        extra_state: plain data for exact resume (optimizer/scheduler state dicts, RNG states, step).

    Returns:
        The sha256 of the written file.
    """
    import torch

    module = getattr(model, "module", model)
    meta_dict = dataclasses.asdict(meta)
    meta_dict.pop("sha256", None)
    payload = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "meta": meta_dict,
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "extra_state": extra_state or {},
    }
    # Serialise in memory first: a failure here (unsupported object) never touches the file on disk.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    digest = hashlib.sha256(data).hexdigest()
    log.debug("saved checkpoint %s (stage %s, epoch %s, sha256 %s)", path, meta.stage, meta.epoch, digest[:12])
    return digest


ONNX_MODEL = "an ONNX model"
RUN_CHECKPOINTS = ("best.pt", "last.pt")   # what a run folder given as a checkpoint stands for, in this order


def resolve_checkpoint(path: str | Path) -> Path:
    """``path``, or for a run folder its ``best.pt`` (``last.pt`` when no epoch has finished a stage yet).

    Every command that takes a checkpoint goes through here, so ``runs/NAME`` works wherever ``runs/NAME/best.pt``
    does.

    Raises:
        CheckpointError: a folder with neither file.
    """
    path = Path(path)
    if not path.is_dir():
        return path
    for name in RUN_CHECKPOINTS:
        if (path / name).is_file():
            log.debug("%s is a run folder: using its %s", path, name)
            return path / name
    raise CheckpointError(f"{path} is a folder without best.pt or last.pt, so not a run folder of fgdeploy train; "
                          "pass a checkpoint file (runs/NAME/best.pt) or a run folder")


def check_checkpoint_file(path: str | Path, what: str = "") -> Path:
    """The checkpoint file ``path`` stands for (a run folder: its best.pt), after a look at its first bytes;
    cheap, so commands call it before other work. ``what`` prefixes the message (e.g. "--pretrained").

    Raises:
        CheckpointError: missing, or plainly not a ``torch.save`` file (empty, text, ONNX, other binary).
    """
    path = resolve_checkpoint(path)
    prefix = f"{what} " if what else ""
    if not path.is_file():
        raise CheckpointError(f"{prefix}checkpoint {path} does not exist; pass the path of a .pt file written by "
                              "fgdeploy train")
    with open(path, "rb") as handle:
        kind = _not_a_torch_file(path, handle.read(512))
    if kind == ONNX_MODEL:
        raise CheckpointError(f"{prefix}{path} is not a PyTorch checkpoint ({kind}); here give the checkpoint it was "
                              "exported from (infer and bench run an ONNX model with --backend ort, parity as "
                              "onnx:PATH)")
    if kind:
        raise CheckpointError(f"{prefix}{path} is not a PyTorch checkpoint ({kind}); use a checkpoint written by "
                              "fgdeploy train (runs/NAME/best.pt or last.pt)"
                              + (" or torchvision-format backbone weights" if what == "--pretrained" else ""))
    return path


def read_checkpoint(path: str | Path) -> CheckpointData:
    """Read a checkpoint file safely (``weights_only=True``) without building the model.

    ``path`` may be a run folder (see ``resolve_checkpoint``).

    Raises:
        CheckpointError: the file is missing, unreadable, unsafe to unpickle, or not an fgdeploy checkpoint.
    """
    import torch

    path = check_checkpoint_file(path)
    use = "use a checkpoint written by fgdeploy train (runs/NAME/best.pt or last.pt)"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt file can raise almost anything from the unpickler (IndexError seen)
        text = str(exc)
        log.debug("torch.load(%s) failed: %s: %s", path, type(exc).__name__, text)
        if "unsupported global" in text.lower():   # the weights-only unpickler met a class or function
            reason = "it holds objects other than tensors and plain data, which are not loaded for safety"
        else:   # torch's own text is long and multi-line (it was cut mid-sentence here): -v shows it
            reason = "torch.load cannot read it: the file is truncated or corrupt (-v shows torch's message)"
        raise CheckpointError(f"{path} is not a loadable fgdeploy checkpoint: {reason}; {use}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        found = sorted(payload)[:8] if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{path} is not an fgdeploy checkpoint (no 'format': {FORMAT_NAME!r} entry; found {found}); "
            "use a checkpoint written by fgdeploy train, or pass plain backbone weights with --pretrained")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is newer than this fgdeploy understands "
            f"({FORMAT_VERSION}); upgrade fgdeploy")
    meta_fields = {f.name for f in dataclasses.fields(CheckpointMeta)}
    meta_dict = {k: v for k, v in payload.get("meta", {}).items() if k in meta_fields}
    try:
        meta = CheckpointMeta(**meta_dict)
    except TypeError as exc:
        raise CheckpointError(f"{path}: checkpoint metadata is incomplete ({exc}); re-save it with fgdeploy train") from exc
    meta.sha256 = file_sha256(path)
    return CheckpointData(meta=meta, state_dict=payload.get("state_dict", {}),
                          extra_state=payload.get("extra_state", {}))


def _not_a_torch_file(path: Path, head: bytes) -> str | None:
    """What ``path`` looks like when it cannot be a ``torch.save`` file (a zip archive or a pickle), else None."""
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return None
    if not head:
        return "an empty file"
    if path.suffix.lower() == ".onnx" or head[:1] == b"\x08":   # ONNX protobuf: field 1 (ir_version) first
        return ONNX_MODEL
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "unrecognised binary data; the file may be corrupt"


def sniff_model_kind(path: str | Path) -> str | None:
    """The backend a model file's first bytes say it is for: "torch" (a torch.save zip or pickle), "ort" (an
    ONNX protobuf), or None (unknown, missing, or a folder)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "torch"
    if head[:1] == b"\x08":   # ONNX ModelProto: field 1 (ir_version, a varint) comes first
        return "ort"
    return None


def model_config_from_meta(meta: CheckpointMeta) -> Any:
    """Rebuild the ``ModelConfig`` dataclass stored in ``meta``."""
    from fgdeploy.config import dataclass_from_dict
    from fgdeploy.models import ModelConfig

    return dataclass_from_dict(ModelConfig, dict(meta.model_config), source="checkpoint model_config")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, CheckpointMeta]:
    """Build the model a checkpoint describes and load its weights (eval mode).

    Returns:
        (model, meta) with ``meta.sha256`` set to the file's hash.

    Raises:
        CheckpointError: see ``read_checkpoint``; also when the weights do not fit the stored config.
    """
    from fgdeploy.models import create_model

    data = read_checkpoint(path)
    cfg = model_config_from_meta(data.meta)
    model = create_model(cfg, num_classes=data.meta.num_classes)
    try:
        model.load_state_dict(data.state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the model config stored in the checkpoint: "
                              f"{str(exc).splitlines()[0]}") from exc
    model.to(device).eval()
    return model, data.meta
