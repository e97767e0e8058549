"""torch.distributed plumbing for re-training: one process per device, launched by
``torchrun`` (``python -m torch.distributed.run``), gloo on CPU and NCCL on GPU.

:func:`init_distributed` reads the variables torchrun sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). Without them it is a single process (world
size 1, no process group). A half-set or broken set-up is a :class:`DistributedSetupError`
saying what is missing and how to launch.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

__all__ = ["DistributedContext", "DistributedSetupError", "close_distributed", "init_distributed"]

LAUNCH_HINT = ("launch with torchrun, e.g. `torchrun --standalone --nproc_per_node=2 -m pf_deploy.retrain ...` on "
               "one machine, or `torchrun --nnodes=M --nproc_per_node=N --rdzv-backend=c10d "
               "--rdzv-endpoint=HOST:PORT -m pf_deploy.retrain ...` on every machine; or run without torchrun "
               "(and without RANK/WORLD_SIZE in the environment) for a single process")


class DistributedSetupError(RuntimeError):
    """The distributed environment is incomplete or the process group cannot be formed."""


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: ``rank`` of ``world_size``, its ``device``, the ``backend``
    (None for a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over every process."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        if self.backend == "nccl":
            t = t.to(self.device)
        torch.distributed.all_reduce(t)
        return t.cpu().tolist()


def _int_env(name: str) -> int:
    raw = os.environ[name]
    try:
        return int(raw)
    except ValueError:
        raise DistributedSetupError(f"{name}={raw!r} is not an integer; {LAUNCH_HINT}") from None


def init_distributed(device: str = "auto", *, timeout_s: float = 300.0) -> DistributedContext:
    """Join the process group torchrun set up, or return a single-process context.

    Args:
        device: ``cpu``, ``cuda`` or ``auto`` (CUDA when available). Under torchrun each
            process takes ``cuda:LOCAL_RANK``; NCCL on CUDA, gloo on CPU.
        timeout_s: how long to wait for the other processes.

    Raises:
        DistributedSetupError: some of torchrun's variables are set and others missing or
            malformed, CUDA was asked for but is unavailable, or the group cannot be formed.
    """
    want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise DistributedSetupError(f"device={device!r} but CUDA is not available here; pass --device cpu")
    keys = ("RANK", "WORLD_SIZE")
    present = [k for k in keys if k in os.environ]
    if not present:
        dev = torch.device(device if device not in ("auto",) else ("cuda" if want_cuda else "cpu"))
        return DistributedContext(device=dev)
    if len(present) < len(keys):
        missing = sorted(set(keys) - set(present))
        raise DistributedSetupError(f"{present} set in the environment but not {missing}: a broken distributed "
                                    f"set-up; {LAUNCH_HINT}")
    rank, world = _int_env("RANK"), _int_env("WORLD_SIZE")
    local_rank = _int_env("LOCAL_RANK") if "LOCAL_RANK" in os.environ else rank
    if world < 1 or not 0 <= rank < world:
        raise DistributedSetupError(f"RANK={rank}, WORLD_SIZE={world}: need 0 <= RANK < WORLD_SIZE; {LAUNCH_HINT}")
    if world == 1:
        dev = torch.device(f"cuda:{local_rank}" if want_cuda else "cpu")
        return DistributedContext(device=dev)
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise DistributedSetupError(
            f"WORLD_SIZE={world} but {missing} not set: there is no rendezvous to meet the other processes at; "
            f"{LAUNCH_HINT}")
    backend = "nccl" if want_cuda else "gloo"
    if want_cuda:
        if local_rank >= torch.cuda.device_count():
            raise DistributedSetupError(f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} "
                                        "CUDA devices: pass --nproc_per_node at most that")
        torch.cuda.set_device(local_rank)
        dev = torch.device(f"cuda:{local_rank}")
    else:
        dev = torch.device("cpu")
    try:
        torch.distributed.init_process_group(backend, rank=rank, world_size=world,
                                             timeout=datetime.timedelta(seconds=timeout_s))
    except Exception as exc:  # noqa: BLE001 - c10d raises RuntimeError, DistNetworkError, ValueError, ...
        raise DistributedSetupError(
            f"cannot form the {backend} process group (rank {rank} of {world} at "
            f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}): {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}; check that every process was started with the same "
            f"rendezvous and can reach it; {LAUNCH_HINT}") from exc
    return DistributedContext(rank, world, local_rank, dev, backend)


def close_distributed(ctx: DistributedContext) -> None:
    """Leave the process group (no-op for a single process)."""
    if ctx.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
