"""Process-group setup for ``torchrun`` and the collective operations the training loop needs.

Without ``WORLD_SIZE`` > 1 in the environment everything here is a single-process no-op.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from spikemo.errors import ConfigError


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str) -> torch.device:
    """``auto`` picks CUDA when available; under torchrun each process takes the GPU ``LOCAL_RANK``."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError("the device is 'cuda' but no CUDA device is available; set the device to auto or cpu")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


@contextmanager
def distributed_context(device_preference: str) -> Iterator[DistributedContext]:
    """Join the process group that ``torchrun`` describes (NCCL on CUDA, gloo on CPU), and leave it after."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_preference)
    if world_size == 1:
        yield DistributedContext(rank=0, world_size=1, device=device)
        return
    owns_group = not dist.is_initialized()
    if owns_group:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)
    finally:
        if owns_group:
            dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Element-wise sum over ranks (the tensor itself on one process)."""
    if context.is_distributed:
        values = values.to(_collective_device(context))
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values.cpu()


def all_reduce_min(values: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    if context.is_distributed:
        values = values.to(_collective_device(context))
        dist.all_reduce(values, op=dist.ReduceOp.MIN)
    return values.cpu()


def gather_predictions(
    rows: np.ndarray, predictions: np.ndarray, total: int, context: DistributedContext
) -> np.ndarray:
    """Every rank's predictions placed at their rows of a ``total``-long vector, summed over ranks.

    Each row is predicted by exactly one rank; rows no rank predicted are -1.
    """
    placed = torch.zeros(total, dtype=torch.int64)
    placed[torch.from_numpy(rows)] = torch.from_numpy(predictions.astype(np.int64)) + 1
    return all_reduce_sum(placed, context).numpy() - 1


def broadcast_from_main(value: Any, context: DistributedContext) -> Any:
    """Rank 0's ``value`` (any picklable object) on every rank; the value itself on one process."""
    if not context.is_distributed:
        return value
    holder = [value if context.is_main else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def broadcast_module(module: torch.nn.Module, context: DistributedContext) -> None:
    """Rank 0's parameters and buffers copied into ``module`` on every rank (what DistributedDataParallel does
    when it wraps a module)."""
    if context.is_distributed:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def average_gradients(parameters: list[torch.nn.Parameter], context: DistributedContext) -> None:
    """Each gradient replaced by its mean over ranks, as DistributedDataParallel averages them; a parameter that
    got no gradient on some rank counts zero there, and one that got none anywhere keeps none."""
    if not context.is_distributed:
        return
    received = torch.tensor([parameter.grad is not None for parameter in parameters], dtype=torch.int64)
    received = all_reduce_sum(received, context) > 0
    updated = [parameter for parameter, anywhere in zip(parameters, received.tolist()) if anywhere]
    gradients = [p.grad if p.grad is not None else torch.zeros_like(p) for p in updated]
    if not gradients:
        return
    flat = torch._utils._flatten_dense_tensors(gradients)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= context.world_size
    for parameter, mean in zip(updated, torch._utils._unflatten_dense_tensors(flat, gradients)):
        parameter.grad = mean


def barrier(context: DistributedContext) -> None:
    if context.is_distributed:
        dist.barrier()


def _collective_device(context: DistributedContext) -> torch.device:
    return context.device if dist.get_backend() == "nccl" else torch.device("cpu")
