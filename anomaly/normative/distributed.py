"""torch.distributed set-up of a fit: rank, world size and device of this process.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every process joins one process group (gloo on
CPU, nccl on CUDA); rank 0 alone validates, checkpoints and writes the model. Without
``torchrun`` a fit runs as rank 0 of a world of one and nothing here touches
torch.distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from anomaly.io import resolve_device


@dataclass
class DistributedContext:
    """Rank, world size and device of this process."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistributedContext:
    """Join the torchrun process group if there is one (``WORLD_SIZE`` > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    base = resolve_device(device)
    if world_size <= 1:
        return DistributedContext(device=base)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if base.type == "cuda":
        torch.cuda.set_device(local_rank)
        base = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if base.type == "cuda" else "gloo")
    return DistributedContext(rank=rank, world_size=world_size, device=base)


def barrier(ctx: DistributedContext) -> None:
    """Wait for every rank (no-op in a single process)."""
    if ctx.world_size > 1 and dist.is_initialized():
        dist.barrier()


def agree_to_stop(requested: bool, ctx: DistributedContext) -> bool:
    """Agree across ranks to stop, so that no rank waits forever in an all-reduce."""
    if ctx.world_size <= 1:
        return requested
    flag = torch.tensor([1.0 if requested else 0.0], device=ctx.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)
