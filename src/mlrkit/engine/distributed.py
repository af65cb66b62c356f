"""DistributedDataParallel plumbing for runs launched by ``torchrun`` (gloo on CPU, nccl on GPU)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


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


class GlobalBatchSampler(Sampler[list[tuple[int, bool]]]):
    """Batches of ``(index, real)`` pairs that make N ranks see one process's batches.

    Every epoch draws one permutation of the ``n`` rows from ``(seed, epoch)`` (identity
    when ``shuffle`` is off) and cuts it into global batches of ``batch_size`` rows, the
    last one shorter, exactly as a single process would. Rank ``r`` of ``world`` takes
    rows ``r, r + world, ...`` of each global batch. When a global batch does not divide
    by ``world``, it is padded with repeats of its first rows marked ``real=False`` so
    that every rank has a batch at every step (DDP needs every rank in every step); the
    trainer gives padded rows no weight in the loss.
    """

    def __init__(self, n: int, batch_size: int, world: int = 1, rank: int = 0,
                 shuffle: bool = False, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.world, self.rank = n, batch_size, world, rank
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        if self.shuffle:  # the same draw as torch's DistributedSampler
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        for start in range(0, self.n, self.batch_size):
            batch = order[start:start + self.batch_size]
            m = len(batch)
            padded = math.ceil(m / self.world) * self.world
            rows = [(batch[j % m], j < m) for j in range(padded)]
            yield rows[self.rank::self.world]


def all_reduce_sum(value: float, info: DistInfo) -> float:
    """The sum of ``value`` over all ranks (``value`` itself on one process)."""
    if not info.enabled:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
