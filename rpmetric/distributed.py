"""torch.distributed helpers for sharded evaluation; in a single process they do nothing.

Launched by ``torchrun`` (``RANK``/``WORLD_SIZE`` in the environment), :func:`init_from_env`
joins the process group: gloo on the CPU, nccl when CUDA is available.
"""

from __future__ import annotations

import os
from typing import List, Sequence, Tuple

import torch
import torch.distributed as dist

__all__ = ["init_from_env", "local_device", "is_distributed", "rank_and_world", "shard", "gather_records", "broadcast_object",
           "barrier", "shutdown"]


def init_from_env() -> Tuple[int, int]:
    """``(rank, world_size)``, joining the process group first when launched by torchrun.

    Example:
        >>> init_from_env()  # a plain process
        (0, 1)
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and dist.is_available() and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return rank_and_world()


def local_device(device=None):
    """``device`` if given; under torchrun with CUDA, this process's own GPU (``cuda:LOCAL_RANK``);
    else None, which lets the model choose."""
    if device is None and rank_and_world()[1] > 1 and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return device


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> Tuple[int, int]:
    """``(rank, world_size)`` of the current process group, ``(0, 1)`` without one."""
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(indices: Sequence, rank: int, world: int) -> list:
    """Every ``world``-th element starting at ``rank``, so shard sizes differ by at most one.

    Example:
        >>> shard(list(range(7)), 1, 3)
        [1, 4]
    """
    if not 0 <= rank < world:
        raise ValueError(f"Argument `rank` must be in [0, {world}), but got {rank}.")
    return list(indices)[rank::world]


def gather_records(records: List[dict]) -> List[dict]:
    """All ranks' records, concatenated in rank order, on every rank (a copy in one process).

    Example:
        >>> gather_records([{"key": "a"}])
        [{'key': 'a'}]
    """
    if not is_distributed():
        return list(records)
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(records))
    return [record for part in parts for record in part]


def broadcast_object(obj, src: int = 0):
    """``obj`` from rank ``src`` on every rank (returned unchanged in one process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (if this process joined one), so torchrun exits cleanly."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
