"""Where this process sits in a torchrun job (or alone), and the few collectives
training needs.

torchrun (PyTorch's elastic launcher) sets RANK, WORLD_SIZE and LOCAL_RANK and
the rendezvous variables; without them the trainer is one process of one.
Backends: NCCL between GPUs, gloo on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Rank:
    rank: int  # this process among all: 0 checkpoints, exports and publishes
    world: int  # processes in the job
    local_rank: int  # this process on its machine: picks the GPU
    local_world: int  # processes on this machine: they share its CPUs
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def _env(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def start(device: str) -> Rank:
    """Join the torchrun job, if any, on the asked device ('auto', 'cpu', 'cuda')."""
    world, local_rank = _env("WORLD_SIZE", 1), _env("LOCAL_RANK", 0)
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    use_cuda = cuda and device != "cpu"
    on = torch.device("cuda", local_rank % torch.cuda.device_count()) if use_cuda else None
    if on is not None:
        torch.cuda.set_device(on)  # before NCCL starts, so each rank owns its GPU
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=on)
    return Rank(
        rank=_env("RANK", 0),
        world=world,
        local_rank=local_rank,
        local_world=_env("LOCAL_WORLD_SIZE", world),
        device=on or torch.device("cpu"),
    )


def stop(rank: Rank) -> None:
    if rank.distributed and dist.is_initialized():
        dist.barrier()  # nobody leaves while another rank still needs the group
        dist.destroy_process_group()


def total(rank: Rank, *values: torch.Tensor | float) -> list[float]:
    """Sums over every rank (one all-reduce for all of them): the one sync per epoch."""
    packed = torch.stack(
        [torch.as_tensor(v, dtype=torch.float64, device=rank.device) for v in values]
    )
    if rank.distributed:
        dist.all_reduce(packed)
    return packed.tolist()


def gather(rank: Rank, value: Any) -> list[Any]:
    """Every rank's `value` (picklable), in rank order, on every rank."""
    if not rank.distributed:
        return [value]
    out: list[Any] = [None] * rank.world
    dist.all_gather_object(out, value)
    return out


def replica_drift(rank: Rank, module: torch.nn.Module) -> float:
    """The largest difference between any rank's weights and rank 0's (0.0 when DDP
    kept the replicas in step, as it must: every rank applies the same averaged
    gradients to the same broadcast weights)."""
    if not rank.distributed:
        return 0.0
    flat = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, 0)
    drift = (flat - reference).abs().max()
    dist.all_reduce(drift, dist.ReduceOp.MAX)
    return float(drift)
