"""Which shard of the examples this process runs: torchrun, SLURM tasks or arrays, or alone."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Shard:
    """This process's place among ``world`` processes.

    Attributes:
        rank: Index of this process.
        world: Number of processes.
        synchronised: Whether a ``torch.distributed`` process group joins them (torchrun), so
            rank 0 can wait at a barrier; SLURM arrays have none and rank 0 polls for files.
        local_rank: Index on this node (picks the GPU).
    """

    rank: int = 0
    world: int = 1
    synchronised: bool = False
    local_rank: int = 0

    def owns(self, index: int) -> bool:
        """Whether example ``index`` is this process's."""
        return index % self.world == self.rank

    def barrier(self) -> None:
        """Wait for every process (no-op without a process group)."""
        if self.synchronised:
            torch.distributed.barrier()


def current_shard() -> Shard:
    """Read the shard from the environment and join torchrun's process group if there is one.

    Order: torchrun (``RANK``/``WORLD_SIZE``), a SLURM array (``SLURM_ARRAY_TASK_ID``), SLURM
    tasks (``SLURM_PROCID``/``SLURM_NTASKS``), else a single process.
    """
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", 0))
        if world > 1 and "MASTER_ADDR" in env and not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            torch.distributed.init_process_group(backend)
        return Shard(rank, world, world > 1 and torch.distributed.is_initialized(), local)
    if "SLURM_ARRAY_TASK_ID" in env:
        first = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        world = int(env.get("SLURM_ARRAY_TASK_COUNT", 1))
        return Shard(int(env["SLURM_ARRAY_TASK_ID"]) - first, world)
    if "SLURM_PROCID" in env:
        return Shard(
            int(env["SLURM_PROCID"]),
            int(env.get("SLURM_NTASKS", 1)),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
        )
    return Shard()
