"""Where and how a process computes: device, precision and its place among ``torchrun`` processes.

The one home of these choices, so that embedding, fine-tuning and mitigation resolve a config's
``device: auto | cpu | cuda`` and ``precision: auto | fp32 | bf16`` the same way:

* :func:`resolve_device`: ``auto`` is CUDA when available, else CPU; ``cuda`` without CUDA is a
  :class:`~ravl_med.config.ConfigError`;
* :func:`resolve_precision`: ``auto`` is bf16 on a CUDA device that supports it, else fp32;
* :func:`process_rank`: ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` as ``torchrun`` sets them (0, 1, 0
  when run alone);
* :func:`start_processes`: all three for a fine-tuning run or an audit, plus TF32 matmuls on CUDA
  (fine-tuning) and the process group under ``torchrun``, as a :class:`DistributedContext`;
* :func:`fixed_threads`: the config's ``threads`` for torch and the BLAS libraries while a stage runs
  (results depend on the thread count, so it is a setting, never the machine's core count).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.distributed as dist

from ravl_med.config import ConfigError

__all__ = [
    "DistributedContext",
    "ProcessRank",
    "fixed_threads",
    "mean_over_processes",
    "process_rank",
    "resolve_device",
    "resolve_precision",
    "start_processes",
]

PRECISIONS = ("auto", "fp32", "bf16")


@contextlib.contextmanager
def fixed_threads(threads: int) -> Iterator[None]:
    """Runs the block with ``threads`` intra-op threads in torch and in every BLAS/OpenMP pool numpy,
    scikit-learn and kmedoids use (threadpoolctl); the previous counts are restored afterwards.

    Floating-point reductions are split between threads, so the count changes results in their last
    bits, and a long training run amplifies that into a different model (measured: the demo's
    stage-1 model at 1 and at 2 threads). Pinning it makes a run's numbers the same on every machine
    whatever its core count or load.

    Args:
        threads: threads to use, >= 1.
    """
    from threadpoolctl import threadpool_limits

    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(previous)


def resolve_device(device: str) -> str:
    """A config's ``device`` (``auto`` | ``cpu`` | ``cuda``) as the device to run on.

    Raises:
        ConfigError: ``cuda`` asked for where no CUDA device is available.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but no CUDA device is available (use 'auto' or 'cpu')")
    return device


def resolve_precision(precision: str, device: str | torch.device) -> Literal["fp32", "bf16"]:
    """A config's ``precision`` (``auto`` | ``fp32`` | ``bf16``) as the precision to compute in.

    Args:
        precision: the config value; ``auto`` is bf16 on a CUDA device that supports it, else fp32.
        device: the device the computation runs on (``"cpu"``, ``"cuda:0"``, a ``torch.device``).

    Raises:
        ValueError: a value other than the three above.
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return precision  # type: ignore[return-value]


class ProcessRank(NamedTuple):
    """This process's place among ``torchrun``'s processes."""

    rank: int  #: global rank, 0 on the main process
    world_size: int  #: number of processes
    local_rank: int  #: rank on this machine (its CUDA device index)


def process_rank() -> ProcessRank:
    """``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment (0, 1, 0 when run alone)."""
    return ProcessRank(
        int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    )


@dataclass(frozen=True)
class DistributedContext:
    """Where this process runs.

    Attributes:
        rank, world_size, local_rank: from ``torchrun``'s environment (0, 1, 0 when alone).
        device: this process's device.
        autocast_dtype: ``torch.bfloat16`` under bf16 autocast, ``None`` for fp32.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    autocast_dtype: torch.dtype | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def start_processes(device: str, precision: str, *, tf32: bool = True) -> tuple[DistributedContext, bool]:
    """Resolves device and precision and joins the process group under ``torchrun``.

    On CUDA, each process takes the device of its local rank (the current device when alone) and
    TF32 matmuls are switched on (unless ``tf32`` is false); the process group uses nccl on CUDA,
    gloo on CPU.

    Args:
        device, precision: the config values (see :func:`resolve_device`, :func:`resolve_precision`).
        tf32: switch TF32 matmuls and convolutions on (fine-tuning). The audit passes ``False``: its
            embeddings are cached under a fingerprint that does not record TF32, so it leaves torch's
            settings as they are, whether it runs alone or under ``torchrun``.

    Returns:
        the context, and whether this call started the process group (and must end it with
        ``torch.distributed.destroy_process_group()``).

    Raises:
        ConfigError: ``cuda`` asked for where no CUDA device is available.
    """
    rank, world_size, local_rank = process_rank()
    use_cuda = resolve_device(device) == "cuda"
    if use_cuda:
        where = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
        torch.cuda.set_device(where)
        if tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
    else:
        where = torch.device("cpu")
    autocast_dtype = torch.bfloat16 if resolve_precision(precision, where) == "bf16" else None
    started = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        started = True
    return DistributedContext(rank, world_size, local_rank, where, autocast_dtype), started


def mean_over_processes(total: float, count: int, ctx: DistributedContext) -> float:
    """``total / count`` with both summed over all processes (all-reduce under DDP); 0 when empty."""
    if ctx.distributed:
        pair = torch.tensor([total, float(count)], dtype=torch.float64, device=ctx.device)
        dist.all_reduce(pair)
        total, count = float(pair[0]), int(pair[1])
    return total / max(count, 1)
