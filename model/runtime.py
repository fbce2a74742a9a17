"""Where training runs: device, rank and precision, in one place.

A single process picks CUDA when present and the CPU otherwise. Under ``torchrun`` the
``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` variables select the GPU, start the process group (NCCL on
CUDA, gloo on CPU) and shard the batches; everything else in the trainer is the same code.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from model.cpus import thread_count

T = TypeVar("T")


def pick_device(device: str = "auto") -> torch.device:
    """``"auto"``: this rank's local GPU (``LOCAL_RANK``) when CUDA is available, else the CPU;
    otherwise any torch device string, refused by name when it asks for CUDA that is not there.
    On the CPU, torch's thread pool is sized by :func:`model.cpus.thread_count` (the CPUs this
    process may use, or ``ARGUS_THREADS``)."""
    if device == "auto":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        chosen = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        chosen = torch.device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    if chosen.type == "cpu":
        torch.set_num_threads(thread_count())
    return chosen


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @classmethod
    def setup(cls, device: str = "auto") -> Runtime:
        """Read the ``torchrun`` environment (if any), pick the device, join the process group.

        ``device`` is ``"auto"`` (CUDA of this rank's local GPU when available, else CPU), or any
        torch device string.
        """
        rank = int(os.environ.get("RANK", "0"))
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        chosen = pick_device(device)
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        if world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
        return cls(chosen, rank, world_size)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, writes checkpoints and shows progress."""
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """bf16 autocast on CUDA; full precision on CPU."""
        if self.cuda:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` on the device, in DistributedDataParallel when there is more than one rank."""
        module = module.to(self.device)
        if self.world_size > 1:
            ids = [self.device.index] if self.cuda else None
            return nn.parallel.DistributedDataParallel(module, device_ids=ids)
        return module

    def fully_shard(self, model: nn.Module, units: Sequence[nn.Module]) -> list[nn.Parameter]:
        """Shard ``model`` in place with FSDP (PyTorch's ``fully_shard``): each of ``units`` is
        gathered for its own forward and backward and freed after. The units must cover every
        parameter that is used through a module call (a head called outside ``model.forward``
        would otherwise see its shard). Parameters, gradients and optimizer state are then
        split over the ranks. Works on CPU (gloo) as on CUDA (NCCL).

        Scalar parameters (the temperature) cannot be sharded: they stay whole on every rank and
        are returned, for :meth:`average_gradients` after each backward."""
        from torch.distributed.fsdp import fully_shard

        model.to(self.device)
        scalars = [p for p in model.parameters() if p.ndim == 0]
        for unit in units:
            fully_shard(unit)
        fully_shard(model, ignored_params=set(scalars))
        return scalars

    def average_gradients(self, parameters: Sequence[nn.Parameter]) -> None:
        """Average the gradients of ``parameters`` over the ranks (as FSDP and DDP do theirs)."""
        for p in parameters:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world_size

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share; every rank gets as many items as the others (the rest is dropped)."""
        usable = len(items) - len(items) % self.world_size
        return list(items[self.rank : usable : self.world_size])

    def sum(self, value: float) -> float:
        """Sum of ``value`` over all ranks (e.g. events processed)."""
        if self.world_size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return float(tensor.item())

    def synchronize(self) -> None:
        """Wait for queued GPU work, so that wall-clock timings are honest."""
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def close(self) -> None:
        """Leave the process group together: without the barrier, a rank that finishes first
        can tear gloo's connections down under one still writing its checkpoint, and the other
        aborts ("terminate called without an active exception") — seen on a loaded 2-core VM."""
        if self.world_size > 1 and dist.is_initialized():
            with contextlib.suppress(Exception):  # a rank that died must not hang the others
                if dist.get_backend() == "gloo":
                    dist.monitored_barrier(timeout=datetime.timedelta(seconds=120))
                else:
                    dist.barrier()
            dist.destroy_process_group()

    @contextlib.contextmanager
    def session(self) -> Iterator[Runtime]:
        try:
            yield self
        finally:
            self.close()


@dataclass(frozen=True)
class MemoryPlan:
    """Per-rank training memory of a model, estimated from its parameter counts (``argus
    pretrain --dry-run``). fp32 weights and gradients, AdamW's two moments; under FSDP those
    are split over the ranks and one unit at a time is gathered whole. Activations: 34 bytes
    per token per layer per unit of width (bf16 with fused attention: Korthikanti et al. 2022,
    "Reducing Activation Recomputation in Large Transformer Models"; twice that in fp32 on a
    CPU), plus the sampled softmax's logits and their gradient."""

    parameters: int
    largest_unit: int  # parameters of the largest FSDP unit (gathered whole in its turn)
    ranks: int
    fsdp: bool
    tokens: int  # per rank per step: batch_size * max_len
    layers: int
    width: int
    negatives: int  # uniform negatives per step, beside the in-batch ones
    bf16: bool = True

    def rows(self) -> list[tuple[str, float]]:
        split = self.ranks if self.fsdp else 1
        act = 2 if self.bf16 else 4
        rows = [
            ("parameters (fp32)", 4 * self.parameters / split),
            ("gradients (fp32)", 4 * self.parameters / split),
            ("optimizer state (AdamW, fp32)", 8 * self.parameters / split),
        ]
        if self.fsdp:
            rows.append(("one unit gathered (weights + gradients)", 2 * act * self.largest_unit))
        rows.append(("activations", 17 * act * self.tokens * self.layers * self.width))
        rows.append(
            ("softmax logits + gradient", 2 * 4 * self.tokens * (self.tokens + self.negatives))
        )
        return rows

    def total(self) -> float:
        return sum(value for _, value in self.rows())

    def table(self) -> str:
        mode = (
            f"FSDP over {self.ranks} ranks"
            if self.fsdp
            else ("one process" if self.ranks == 1 else f"DDP over {self.ranks} ranks")
        )
        lines = [
            f"per-rank memory, {mode}, {self.tokens:,} tokens per rank per step "
            f"({'bf16' if self.bf16 else 'fp32'} activations):"
        ]
        lines += [f"  {name:<42} {value / 2**30:10.2f} GiB" for name, value in self.rows()]
        lines.append(f"  {'total':<42} {self.total() / 2**30:10.2f} GiB")
        return "\n".join(lines)
