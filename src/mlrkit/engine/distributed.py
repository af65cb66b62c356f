"""DistributedDataParallel plumbing for runs launched by ``torchrun`` (gloo on CPU, nccl on GPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo(world, rank, local_rank)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def gather_predictions(indices: torch.Tensor, scores: torch.Tensor, info: DistInfo,
                       total: int) -> torch.Tensor:
    """Collect ``scores`` rows held by each rank into one (total, C) tensor in dataset order.

    Rows a ``DistributedSampler`` padded in twice are written once.
    """
    if not info.enabled:
        out = torch.empty((total, scores.shape[1]), dtype=scores.dtype)
        out[indices] = scores
        return out
    parts: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * info.world_size
    dist.all_gather_object(parts, (indices.cpu(), scores.cpu()))
    out = torch.empty((total, scores.shape[1]), dtype=scores.dtype)
    for part in parts:
        assert part is not None
        out[part[0]] = part[1]
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
