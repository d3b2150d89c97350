"""Process-group setup from the environment: torchrun (single or multi node), SLURM ``srun``, or one process.

torchrun exports RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT. Under plain ``srun`` (one task per
GPU) we read SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID instead; MASTER_ADDR comes from the environment or
SLURM's launch node. DDP only: nccl on CUDA, gloo on CPU. DataParallel is never used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Dist", "setup", "cleanup", "all_gather_object", "all_reduce_sum", "barrier"]


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_from_slurm() -> None:
    """Map SLURM's task variables onto torch's names when torchrun did not set them."""
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    if "MASTER_ADDR" not in os.environ:
        launch = os.environ.get("SLURM_LAUNCH_NODE_IPADDR")
        if not launch:
            raise RuntimeError("under SLURM set MASTER_ADDR (e.g. the first host of "
                               "`scontrol show hostnames $SLURM_JOB_NODELIST`)")
        os.environ["MASTER_ADDR"] = launch
    os.environ.setdefault("MASTER_PORT", "29500")


def setup(device: str = "auto", backend: str = "auto") -> Dist:
    _env_from_slurm()
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    torch_device = torch.device(device)
    if torch_device.type == "cuda":
        if torch_device.index is None:
            torch_device = torch.device("cuda", local_rank)
        torch.cuda.set_device(torch_device)
    if world_size > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if torch_device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                                device_id=torch_device if torch_device.type == "cuda" else None)
    return Dist(rank, world_size, local_rank, torch_device)


def cleanup(d: Dist) -> None:
    if d.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.distributed:
        dist.barrier()


def all_gather_object(obj: Any, d: Dist) -> list[Any]:
    """Every rank's ``obj`` (small state: data positions, RNG states), in rank order."""
    if not d.distributed:
        return [obj]
    out: list[Any] = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: list[float], d: Dist) -> list[float]:
    if not d.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return t.tolist()
