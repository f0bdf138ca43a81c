"""torchrun / DistributedDataParallel support: process group setup, sharding, rank-0-only file writes.

Under ``torchrun --nproc_per_node N`` the environment carries RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT; ``init_distributed`` joins the group (gloo on CPU, nccl on CUDA). Without those variables
everything runs as a single process (rank 0 of 1) and these helpers are no-ops.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and logs summaries."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_dist_info() -> DistInfo:
    """Read RANK / WORLD_SIZE / LOCAL_RANK set by torchrun (defaults: one process)."""
    return DistInfo(rank=int(os.environ.get("RANK", 0)), world_size=int(os.environ.get("WORLD_SIZE", 1)),
                    local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def resolve_device(name: str, info: DistInfo | None = None) -> torch.device:
    """"auto" -> cuda (the local rank's GPU) if available, else cpu.

    Raises:
        ConfigError: a CUDA device this machine does not have.
    """
    info = info or DistInfo()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        from fgdeploy.errors import ConfigError, cuda_unavailable

        if not torch.cuda.is_available():
            raise ConfigError(cuda_unavailable(name))
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to "
                              f"cuda:{count - 1}; pick one of them or use --device cpu")
        if device.index is None:
            device = torch.device("cuda", info.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


def init_distributed(device: torch.device) -> DistInfo:
    """Join the torchrun process group if the environment asks for one (idempotent)."""
    info = env_dist_info()
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
        log.info("joined process group: rank %d of %d (%s)", info.rank, info.world_size, backend)
    return info


def cleanup_distributed() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def wrap_ddp(model: nn.Module, device: torch.device, info: DistInfo) -> nn.Module:
    """Wrap in DDP (re-done every stage: DDP registers the parameters that require grad when built)."""
    if not info.enabled:
        return model
    module = getattr(model, "module", model)
    if not any(p.requires_grad for p in module.parameters()):
        return module
    ids = [device.index] if device.type == "cuda" else None
    # static_graph: each stage (wrapped anew) uses the same parameters every step, so DDP learns in the first step
    # which ones get no gradient (if any) instead of searching the autograd graph every step, which
    # find_unused_parameters=True did, warning on every rank that it found none (issue 17).
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, static_graph=True)


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def broadcast_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts them at the start of each forward, so after the last step of an epoch the replicas'
    statistics differ by one update; syncing before validation and saving keeps every rank identical.
    """
    if dist.is_available() and dist.is_initialized():
        for buf in unwrap(model).buffers():
            dist.broadcast(buf.data, src=0)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over processes (identity without a process group)."""
    if dist.is_available() and dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather_objects(obj: Any) -> list[Any]:
    """Gather a picklable object from every process (``[obj]`` without a process group)."""
    if dist.is_available() and dist.is_initialized():
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def shard_indices(indices: list[int], info: DistInfo, pad: bool = True) -> list[int]:
    """This rank's slice (strided) of ``indices``; padded by wrap-around so every rank takes the same steps."""
    if not info.enabled:
        return list(indices)
    n = len(indices)
    per_rank = -(-n // info.world_size)
    if pad and n:
        indices = list(indices) + list(indices[: per_rank * info.world_size - n])
    return list(indices[info.rank::info.world_size])
