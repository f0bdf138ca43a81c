"""Reading weight files and copying them into modules, with errors that name the keys.

Split in small steps (as timm's ``_helpers``): ``read_state_dict`` turns a local file into a
flat ``{key: tensor}`` dict (``torch.load(weights_only=True)``, common wrappers unwrapped);
``copy_weights`` checks every wanted key for presence and shape *before* copying anything, and
raises one ``CheckpointError`` listing all missing and mismatched keys.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from fgdeploy.errors import CheckpointError

logger = logging.getLogger(__name__)

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
_PREFIXES = ("module.", "_orig_mod.")
_MAX_LISTED = 12


@dataclass(frozen=True)
class WeightTarget:
    """Where one source key goes: ``param`` (a tensor of the module) viewed as its own shape."""

    param: torch.Tensor
    target_name: str


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a local weights file into a flat ``{key: tensor}`` dict.

    Accepts a plain state dict or one wrapped under "state_dict"/"model"/"model_state_dict";
    strips "module." (DataParallel) and "_orig_mod." (torch.compile) prefixes.

    Raises:
        CheckpointError: the file is missing, unreadable/truncated, or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} not found; give the path of a local .pth/.pt file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/foreign files
        raise CheckpointError(
            f"cannot read weights file {path} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "the file may be truncated or not a torch.save file: download it again"
        ) from exc
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"weights file {path} holds a {type(obj).__name__}, expected a state dict of tensors")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        name = str(key)
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
        out[name] = value
    if not out:
        raise CheckpointError(f"weights file {path} holds no tensors; expected a state dict")
    return out


def copy_weights(
    source: Mapping[str, torch.Tensor],
    targets: Mapping[str, WeightTarget],
    origin: str,
) -> None:
    """Copy ``source[key]`` into ``targets[key].param`` for every wanted key, reshaping when sizes match.

    A source tensor may be reshaped into the target (torchvision's Linear fc6 (4096, 25088) into
    the conv (4096, 512, 7, 7)) only if the element count is equal and the leading (output)
    dimension agrees. Extra source keys are ignored (e.g. the 1000-way ``classifier.6``).

    Raises:
        CheckpointError: naming every missing key and every key whose shape does not fit.
    """
    missing = [k for k in targets if k not in source]
    mismatched = []
    for key, target in targets.items():
        if key not in source:
            continue
        src, dst = source[key], target.param
        if src.numel() != dst.numel() or src.shape[:1] != dst.shape[:1]:
            mismatched.append(f"{key}: file {tuple(src.shape)} vs model {target.target_name} {tuple(dst.shape)}")
    if missing or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_listing(missing)}")
        if mismatched:
            parts.append(f"mismatched shapes ({len(mismatched)}): {_listing(mismatched)}")
        raise CheckpointError(
            f"{origin} does not fit the model: " + "; ".join(parts)
            + ". Use a complete checkpoint of the same architecture (e.g. torchvision's vgg16-397923af.pth for vgg16)"
        )
    with torch.no_grad():
        for key, target in targets.items():
            target.param.copy_(source[key].reshape(target.param.shape).to(target.param.dtype))
    logger.info("loaded %d tensors from %s", len(targets), origin)


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")
