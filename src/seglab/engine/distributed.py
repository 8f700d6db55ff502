"""Multi-process training on torch.distributed, launched by torchrun.

One process per device; torchrun sets `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT`, and
`setup_distributed` reads them (the `env://` rendezvous), so the same command runs on one device, on N devices of
one machine, or on several machines:

    seglab train CONFIG                                                     # one process
    torchrun --nproc-per-node 4 -m seglab.cli train CONFIG                  # 4 processes on this machine
    torchrun --nnodes 2 --node-rank R --nproc-per-node 8 --master-addr HOST --master-port 29500 \\
        -m seglab.cli train CONFIG                                          # 2 machines x 8 devices

The backend is NCCL when CUDA is available and gloo otherwise. Every helper here is a no-op (or answers for a
single process) when no process group is initialised, so library code calls them unconditionally.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job.

    Args:
        rank: global rank, 0..world_size-1.
        world_size: number of processes in the job (1 without torchrun).
        local_rank: rank within this machine; the CUDA device index of this process.
        device: the device this process trains on.
        backend: the process-group backend ("nccl", "gloo"), None for a single process.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None


def is_distributed() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that logs and writes files."""
    return get_rank() == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def setup_distributed(device: torch.device | str | None = None) -> DistContext:
    """Joins the torchrun job described by the environment, once per process; later calls return the same context.

    Without torchrun (`WORLD_SIZE` unset or 1) nothing is initialised and the context describes one process on
    `device` (default: CUDA if available, else CPU).

    Args:
        device: the device of a single-process run; a distributed run uses `cuda:LOCAL_RANK` with CUDA, else CPU.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size <= 1 and not (dist.is_available() and dist.is_initialized()):
        device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        return DistContext(rank=0, world_size=1, local_rank=0, device=device, backend=None)
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world_size} asks for a distributed run, but this PyTorch build has no "
                           f"torch.distributed support")
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} CUDA "
                               f"device(s): start at most that many processes per node (--nproc-per-node)")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        for name in ("MASTER_ADDR", "MASTER_PORT", "RANK"):
            if name not in os.environ:
                raise RuntimeError(f"WORLD_SIZE={world_size} but {name} is not set: launch distributed runs with "
                                   f"torchrun (torchrun --nproc-per-node N -m seglab.cli train CONFIG)")
        backend = "nccl" if use_cuda else "gloo"
        # device_id binds NCCL to this process's GPU at once (no guessing from the rank)
        dist.init_process_group(backend=backend, init_method="env://", device_id=device if use_cuda else None)
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                       device=device, backend=dist.get_backend())


def shutdown_distributed(wait: bool = True) -> None:
    """Leaves the process group (if any).

    Args:
        wait: meet the other ranks at a barrier first, so no rank exits while another still writes; False after
            an error that may have stopped this rank alone (the launcher then ends the others).
    """
    if dist.is_available() and dist.is_initialized():
        if wait:
            barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """Waits for every rank; a no-op for a single process."""
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def shard_range(num_items: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous slice `[start, stop)` of `num_items` that `rank` handles; no padding and no duplicates.

    The first `num_items % world_size` ranks get one item more, so shards differ in size by at most one and
    together cover every item exactly once (a rank may get none when there are fewer items than ranks).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    base, extra = divmod(num_items, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over all ranks (returned as a new tensor; the input is unchanged)."""
    if not is_distributed():
        return values
    device = values.device
    if dist.get_backend() == "nccl" and device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    reduced = values.to(device, copy=True)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return (reduced / dist.get_world_size()).to(values.device)


@torch.no_grad()
def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copies `src`'s buffers (e.g. BatchNorm running statistics) to every rank.

    DDP broadcasts buffers at the start of each forward, but the forward itself then updates them with the local
    batch, so after the last step the ranks' running statistics differ; evaluating or saving needs one set.
    """
    if not is_distributed():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=src)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> tuple[nn.Module, str | None]:
    """Converts BatchNorm layers to SyncBatchNorm when that can work; returns the model and a note otherwise.

    SyncBatchNorm needs a process group of more than one process and CUDA tensors (PyTorch's kernel does not run
    on CPU); outside that the layers stay BatchNorm, per-process statistics, and the note says why, instead of
    failing with "Default process group has not been initialized".
    """
    if not any(isinstance(m, _BATCH_NORMS) for m in model.modules()):
        return model, "train.sync_bn: the model has no BatchNorm layers; nothing to convert"
    if not is_distributed():
        return model, "train.sync_bn: single process, BatchNorm layers kept (SyncBatchNorm needs torchrun with N > 1)"
    if device.type != "cuda":
        return model, (f"train.sync_bn: SyncBatchNorm runs on CUDA only; training on {device.type}, BatchNorm "
                       f"layers kept (per-process batch statistics)")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model), None

